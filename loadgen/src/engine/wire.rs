//! The bytes on the wire: every request and response the engine sends, rendered into reused
//! buffers and queued for the driver, and the ids it writes into Call-IDs, tags, branches, SSRCs
//! and SDP (and reads back from what the far end returns).

use std::io::Write as _;
use std::net::SocketAddr;
use std::ops::Range;

use pbxlab_proto::builder::{Decimal, Template, write_response};
use pbxlab_proto::sdp::{self, Offer, OfferTemplate};
use pbxlab_proto::sip::Message;

use super::calls::Call;
use super::config::{Callee, Config};
use super::register::Registration;

/// The requests every call sends, compiled once: a message is then fixed pieces copied around
/// the call's numbers, with no `core::fmt` on the way (it was the largest part of the
/// generator's own CPU after the timers). The run's constants are holes too, so the template
/// texts are literals and cannot fail to compile whatever the configuration holds.
///
/// It also owns the outgoing queue and the buffers messages are written in, so rendering
/// borrows nothing but the call or registration it renders.
pub(super) struct Wire {
    invite: Template,
    in_dialog: Template,
    offer: OfferTemplate,
    /// Our SIP address and the run id, as text.
    local: Vec<u8>,
    run: Vec<u8>,
    /// Outgoing datagrams: (destination, their bytes' range in `arena`).
    out: Vec<(SocketAddr, Range<usize>)>,
    arena: Vec<u8>,
    scratch: Vec<u8>,
    body: Vec<u8>,
    /// The request URI being written (reused).
    uri: Vec<u8>,
}

/// {0} request URI, {1} our address, {2} slot, {3} generation, {4} CSeq, {5} run id,
/// {6} caller, {7} domain, {8} Authorization line (or nothing).
const INVITE: &str = "INVITE {0} SIP/2.0\r\n\
    Via: SIP/2.0/UDP {1};branch=z9hG4bK{2}x{3}x{4}x{5};rport\r\n\
    Max-Forwards: 70\r\n\
    From: <sip:{6}@{7}>;tag={2}x{3}\r\n\
    To: <{0}>\r\n\
    Call-ID: {2}-{3}-{5}@pbxlab\r\n\
    CSeq: {4} INVITE\r\n\
    Contact: <sip:{6}@{1}>\r\n\
    {8}Content-Type: application/sdp\r\n\
    User-Agent: pbxlab";

/// {0} method, {1} request URI, {2} our address, {3} slot, {4} generation, {5} CSeq,
/// {6} run id, {7} the method's initial (branches differ per method), {8} caller, {9} domain,
/// {10} the To URI, {11} their tag, {12} Route lines (or nothing).
const IN_DIALOG: &str = "{0} {1} SIP/2.0\r\n\
    Via: SIP/2.0/UDP {2};branch=z9hG4bK{3}x{4}x{5}x{6}{7};rport\r\n\
    Max-Forwards: 70\r\n\
    From: <sip:{8}@{9}>;tag={3}x{4}\r\n\
    To: <{10}>;tag={11}\r\n\
    Call-ID: {3}-{4}-{6}@pbxlab\r\n\
    CSeq: {5} {0}\r\n\
    {12}User-Agent: pbxlab";

impl Wire {
    pub(super) fn new(cfg: &Config) -> Wire {
        // The texts are the literals above, which the tests render: compiling cannot fail.
        let compile = |text| Template::compile(text).expect("a literal request template");
        Wire {
            invite: compile(INVITE),
            in_dialog: compile(IN_DIALOG),
            offer: OfferTemplate::new(&Offer {
                session_id: 0,
                version: 1,
                addr: cfg.rtp_local,
                payload_types: vec![sdp::PT_PCMU, sdp::PT_PCMA],
                telephone_event: true,
                ptime_ms: 20,
                ssrc: None,
                direction: sdp::Direction::SendRecv,
            }),
            local: cfg.local.to_string().into_bytes(),
            run: cfg.run_id.to_string().into_bytes(),
            out: Vec::new(),
            arena: Vec::new(),
            scratch: Vec::with_capacity(2048),
            body: Vec::with_capacity(512),
            uri: Vec::with_capacity(128),
        }
    }

    /// Datagrams queued so far.
    pub(super) fn queued(&self) -> usize {
        self.out.len()
    }

    /// Moves the datagrams queued after the first `before` ahead of those.
    pub(super) fn move_to_front(&mut self, before: usize) {
        let started = self.out.len() - before;
        self.out.rotate_right(started);
    }

    /// Hands every queued datagram to `send` at once (for batched sending), then forgets them.
    pub(super) fn transmit_all(&mut self, send: impl FnOnce(&[(SocketAddr, &[u8])])) {
        let batch: Vec<(SocketAddr, &[u8])> = self
            .out
            .iter()
            .filter_map(|(to, range)| Some((*to, self.arena.get(range.clone())?)))
            .collect();
        if !batch.is_empty() {
            send(&batch);
        }
        self.out.clear();
        self.arena.clear();
    }

    /// Queues what `scratch` holds for `to`.
    fn queue(&mut self, to: SocketAddr) {
        let start = self.arena.len();
        self.arena.extend_from_slice(&self.scratch);
        self.out.push((to, start..self.arena.len()));
    }

    /// REGISTER (or its retransmission, or its answer to a challenge) for user `i`.
    pub(super) fn register(&mut self, cfg: &Config, i: usize, r: &Registration) {
        let Some(user) = cfg.users.get(i) else { return };
        let user = user.name;
        let (local, domain, run, expires) = (cfg.local, &cfg.domain, cfg.run_id, cfg.expires_s);
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKr{i}x{cseq}x{run};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=r{i}x{run}\r\nTo: <sip:{user}@{domain}>\r\n\
             Call-ID: r{i}-{run}@pbxlab\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{local}>\r\nExpires: {expires}\r\n",
            cseq = r.cseq
        );
        if !r.auth.is_empty() {
            self.scratch.extend_from_slice(r.auth.as_bytes());
        }
        self.scratch
            .extend_from_slice(b"User-Agent: pbxlab\r\nContent-Length: 0\r\n\r\n");
        self.queue(cfg.target);
    }

    /// The INVITE of our call `c` in `slot` (first, retransmitted, or after a challenge).
    pub(super) fn invite(&mut self, cfg: &Config, slot: u32, c: &Call) {
        let mut uri = std::mem::take(&mut self.uri);
        uri.clear();
        write_request_uri(&mut uri, cfg, c);
        let caller = UserPart::of(cfg, c.caller);
        self.body.clear();
        self.offer.render(
            &mut self.body,
            SESSION_ID_BASE + u64::from(slot),
            Some(ssrc(slot, c.generation)),
        );
        let start = self.arena.len();
        let rendered = self.invite.render_append(
            &mut self.arena,
            &[
                &uri,
                &self.local,
                slot_digits(slot).as_bytes(),
                generation_digits(c.generation).as_bytes(),
                Decimal::new(c.cseq.into()).as_bytes(),
                &self.run,
                caller.as_bytes(),
                cfg.domain.as_bytes(),
                c.auth.as_bytes(),
            ],
            &self.body,
        );
        self.uri = uri;
        // Only a wrong number of values fails, and these are fixed here (the tests send them).
        if rendered.is_ok() {
            self.out.push((c.next_hop, start..self.arena.len()));
        }
    }

    /// ACK or BYE inside the dialog, along the route set to the next hop.
    pub(super) fn in_dialog(&mut self, cfg: &Config, slot: u32, c: &Call, method: &str, cseq: u32) {
        let (mut uri, mut to_uri) = (
            std::mem::take(&mut self.uri),
            std::mem::take(&mut self.scratch),
        );
        uri.clear();
        to_uri.clear();
        write_request_uri(&mut to_uri, cfg, c);
        if c.remote_target.is_empty() {
            uri.extend_from_slice(&to_uri);
        } else {
            uri.extend_from_slice(c.remote_target.as_bytes());
        }
        // No body here: its buffer takes the Route lines.
        self.body.clear();
        for r in &c.routes {
            self.body.extend_from_slice(b"Route: ");
            self.body.extend_from_slice(r.as_bytes());
            self.body.extend_from_slice(b"\r\n");
        }
        let method = method.as_bytes();
        let caller = UserPart::of(cfg, c.caller);
        let start = self.arena.len();
        let rendered = self.in_dialog.render_append(
            &mut self.arena,
            &[
                method,
                &uri,
                &self.local,
                slot_digits(slot).as_bytes(),
                generation_digits(c.generation).as_bytes(),
                Decimal::new(cseq.into()).as_bytes(),
                &self.run,
                method.get(..1).unwrap_or_default(),
                caller.as_bytes(),
                cfg.domain.as_bytes(),
                &to_uri,
                c.remote_tag.as_bytes(),
                &self.body,
            ],
            b"",
        );
        (self.uri, self.scratch) = (uri, to_uri);
        if rendered.is_ok() {
            self.out.push((c.next_hop, start..self.arena.len()));
        }
    }

    /// The ACK for a non-2xx final response: same branch as the INVITE, to the same place.
    pub(super) fn error_ack(&mut self, cfg: &Config, slot: u32, c: &Call, to_header: &str) {
        let ruri = request_uri(cfg, c);
        let (local, domain, run) = (cfg.local, &cfg.domain, cfg.run_id);
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{slot}x{g}x{cseq}x{run};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{caller}@{domain}>;tag={slot}x{g}\r\nTo: {to_header}\r\n\
             Call-ID: {slot}-{g}-{run}@pbxlab\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            slot = slot_digits(slot),
            g = generation_digits(c.generation),
            cseq = c.cseq,
            caller = UserPart::of(cfg, c.caller),
        );
        let to = c.next_hop;
        self.queue(to);
    }

    /// The header block every response on a call we answer repeats: Via, From, To (with
    /// `to_tag`), Call-ID, CSeq and, for the dialog, Record-Route — built as a 180, because
    /// Record-Route is copied into 18x and 2xx responses only (RFC 3261 12.1.1).
    pub(super) fn uas_headers(&mut self, invite: &Message<'_>, to_tag: &str) -> String {
        self.scratch.clear();
        write_response(
            &mut self.scratch,
            invite,
            180,
            "Ringing",
            Some(to_tag),
            &[],
            b"",
        );
        let block = String::from_utf8_lossy(&self.scratch).into_owned();
        block
            .split_once("\r\n")
            .map(|(_, rest)| {
                rest.trim_end_matches("\r\n")
                    .trim_end_matches("Content-Length: 0")
                    .to_owned()
            })
            .unwrap_or_default()
    }

    /// A response on a call we answer, from the stored header block.
    pub(super) fn uas_response(
        &mut self,
        cfg: &Config,
        slot: u32,
        c: &Call,
        code: u16,
        reason: &str,
        with_sdp: bool,
    ) {
        self.body.clear();
        if with_sdp {
            sdp::write_offer(
                &mut self.body,
                &Offer {
                    session_id: u64::from(slot),
                    version: 1,
                    addr: cfg.rtp_local,
                    payload_types: vec![sdp::PT_PCMU],
                    telephone_event: true,
                    ptime_ms: 20,
                    ssrc: Some(ssrc(slot, c.generation)),
                    direction: if c.uas_inactive {
                        sdp::Direction::Inactive
                    } else {
                        sdp::Direction::SendRecv
                    },
                },
            );
        }
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "SIP/2.0 {code} {reason}\r\n{}Contact: <sip:{}@{}>\r\n",
            c.uas_headers,
            UserPart::of(cfg, c.callee.unwrap_or_default()),
            cfg.local
        );
        if with_sdp {
            self.scratch
                .extend_from_slice(b"Content-Type: application/sdp\r\n");
        }
        let _ = write!(self.scratch, "Content-Length: {}\r\n\r\n", self.body.len());
        self.scratch.extend_from_slice(&self.body);
        let to = c.next_hop;
        self.queue(to);
    }

    /// The 200 to a re-INVITE on the call in `slot`: our media address, for our user `user`
    /// (an index into `Config::users`); `inactive` for a call set up without audio.
    pub(super) fn reinvite_ok(
        &mut self,
        cfg: &Config,
        to: SocketAddr,
        req: &Message<'_>,
        (slot, generation, inactive): (u32, u32, bool),
        user: u32,
    ) {
        self.body.clear();
        sdp::write_offer(
            &mut self.body,
            &Offer {
                session_id: u64::from(slot),
                version: 2,
                addr: cfg.rtp_local,
                payload_types: vec![sdp::PT_PCMU],
                telephone_event: true,
                ptime_ms: 20,
                ssrc: Some(ssrc(slot, generation)),
                direction: if inactive {
                    sdp::Direction::Inactive
                } else {
                    sdp::Direction::SendRecv
                },
            },
        );
        let body = std::mem::take(&mut self.body);
        let contact = format!("<sip:{}@{}>", UserPart::of(cfg, user), cfg.local);
        self.respond(
            to,
            req,
            200,
            "OK",
            &[("Contact", &contact), ("Content-Type", "application/sdp")],
            &body,
        );
        self.body = body;
    }

    pub(super) fn respond(
        &mut self,
        to: SocketAddr,
        req: &Message<'_>,
        code: u16,
        reason: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) {
        self.scratch.clear();
        write_response(&mut self.scratch, req, code, reason, None, extra, body);
        // Responses go back where the request came from (rport behaviour), which is also the
        // top Via's address for every peer we talk to on loopback.
        self.queue(to);
    }
}

pub(super) fn request_uri(cfg: &Config, c: &Call) -> String {
    let mut uri = Vec::new();
    write_request_uri(&mut uri, cfg, c);
    String::from_utf8_lossy(&uri).into_owned()
}

/// Appends the URI call `c` dials: a user, a service, or a meeting room, at our domain.
fn write_request_uri(out: &mut Vec<u8>, cfg: &Config, c: &Call) {
    let callee = cfg.workloads.get(c.workload as usize).map(|w| &w.callee);
    out.extend_from_slice(b"sip:");
    match callee {
        Some(Callee::Service(_)) if c.callee.is_none() && c.room > 0 => {
            out.extend_from_slice(b"meeting-");
            out.extend_from_slice(Decimal::new(c.room.into()).as_bytes());
        }
        Some(Callee::Service(s)) if c.callee.is_none() => out.extend_from_slice(s.as_bytes()),
        _ => out.extend_from_slice(UserPart::of(cfg, c.callee.unwrap_or(c.caller)).as_bytes()),
    }
    out.push(b'@');
    out.extend_from_slice(cfg.domain.as_bytes());
}

/// How a message names our user: by its user part, or, in a run with no users (calls placed
/// without registering), by the number 1000 + the caller's index, which is below 1000.
pub(super) enum UserPart<'a> {
    Name(&'a str),
    Number(Decimal),
}

impl UserPart<'_> {
    pub(super) fn of(cfg: &Config, user: u32) -> UserPart<'_> {
        if cfg.users.is_empty() {
            UserPart::Number(Decimal::new(1000 + u64::from(user)))
        } else {
            UserPart::Name(cfg.users.name(user as usize))
        }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            UserPart::Name(name) => name.as_bytes(),
            UserPart::Number(n) => n.as_bytes(),
        }
    }
}

impl std::fmt::Display for UserPart<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserPart::Name(name) => f.write_str(name),
            UserPart::Number(n) => n.fmt(f),
        }
    }
}

/// Stream id of a call for the RTP worker.
pub(super) fn stream_id(slot: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(slot)
}

pub(super) fn ssrc(slot: u32, generation: u32) -> u32 {
    // Distinct for live calls (they have distinct slots, and the multiplier is odd, so the low
    // 24 bits are a bijection of slots below 2^24); mixed so streams do not share low bits; the
    // generation tells a slot's successive calls apart. The top bit set gives every SSRC ten
    // digits, so offers have one length (see `slot_digits`).
    0x8000_0000 | (generation & 0x7f) << 24 | (slot.wrapping_mul(0x9e37_79b1) & 0xff_ffff)
}

/// Digits of a call's slot and generation in its Call-ID, tags and branches. Zero-padded, so
/// the INVITEs of a run have one length, and so do its ACKs and BYEs: consecutive requests of
/// one length leave as one segmented buffer (`pbxlab_udp::Sender::send_connected_segmented`),
/// which costs the kernel one pass through the stack instead of one per datagram.
const SLOT_DIGITS: usize = 6;
const GENERATION_DIGITS: usize = 4;
/// The SDP session id is this plus the slot: ten digits, for the same reason.
const SESSION_ID_BASE: u64 = 1_000_000_000;

fn slot_digits(slot: u32) -> Decimal {
    Decimal::padded(slot.into(), SLOT_DIGITS)
}

fn generation_digits(generation: u32) -> Decimal {
    Decimal::padded(generation.into(), GENERATION_DIGITS)
}

/// The Call-ID of our call in `slot` of `generation`, in run `run`.
pub(super) fn call_id(slot: u32, generation: u32, run: u32) -> String {
    format!(
        "{}-{}-{run}@pbxlab",
        slot_digits(slot),
        generation_digits(generation)
    )
}

/// (slot, generation, run id) from the Call-ID of one of our calls:
/// `{slot}-{generation}-{run}@pbxlab`.
pub(super) fn parse_call_id(call_id: &str) -> Option<(u32, u32, u32)> {
    let rest = call_id.strip_suffix("@pbxlab")?;
    let mut parts = rest.split('-');
    let slot: u32 = parts.next()?.parse().ok()?;
    let generation: u32 = parts.next()?.parse().ok()?;
    let run: u32 = parts.next()?.parse().ok()?;
    Some((slot, generation, run))
}

/// (user index, run id) from the Call-ID of one of our registrations, `r{i}-{run}@pbxlab`.
pub(super) fn parse_registration_call_id(call_id: &str) -> Option<(usize, u32)> {
    let rest = call_id.strip_suffix("@pbxlab")?.strip_prefix('r')?;
    let (i, run) = rest.split_once('-')?;
    let run: u32 = run.parse().ok()?;
    let i: usize = i.parse().ok()?;
    Some((i, run))
}

/// (slot, generation) from the tag of our caller side, `{slot}x{generation}`.
pub(super) fn parse_tag(tag: &str) -> Option<(u32, u32)> {
    tag.split_once('x')
        .and_then(|(s, g)| Some((s.parse().ok()?, g.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssrcs_are_distinct_across_live_calls_and_ten_digits_long() {
        let mut seen = std::collections::HashSet::new();
        for slot in 0..200_000u32 {
            let s = ssrc(slot, slot % 300);
            assert!(seen.insert(s), "slot {slot}: {s} again");
            assert_eq!(s.to_string().len(), 10, "{s}");
        }
        assert_ne!(ssrc(5, 1), ssrc(5, 2), "a slot's next call");
    }
}
