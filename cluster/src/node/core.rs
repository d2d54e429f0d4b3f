//! The node's sans-IO core: [`Node`] takes commands, datagrams and 20 ms ticks, and hands back
//! datagrams (one arena) and digit events; no sockets and no clock. Here live its sessions and
//! how a packet finds one (SSRC, else source address), where a leg's media goes (latching),
//! relay, echo, IVR digits, hold, meeting rooms, the OPTIONS answer, the send queue and its
//! counters ([`NodeStats`]).
//!
//! A leg's media goes only to the address its own media came from, and nothing goes before
//! its first packet has come (symmetric RTP with latching, as rtpengine and Asterisk's
//! `strictrtp` learn the far end): the address in the SDP is whatever the INVITE said, and an
//! unauthenticated INVITE naming someone else's address once made an IVR node stream its
//! prompt there for minutes. A peer that never sends media gets none. The latch is one
//! field of the leg, set by the leg's first packet and read by every send: a compare per
//! packet, no lookup.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use pbxlab_balancer::Role;
use pbxlab_balancer::hash::mix64;
use pbxlab_proto::dtmf::DtmfReceiver;
use pbxlab_proto::{builder, rtp, sip};

use super::audio::{Codec, HOLD, Mix, PROMPT, SAMPLES};
use crate::{Leg, MediaSession, Nanos, NodeCommand, NodeEvent};

/// Sessions a node holds unless told otherwise; commands beyond the limit are refused.
pub const MAX_SESSIONS: usize = 65_536;
/// Datagrams queued between two calls of [`Node::transmit_all`]. The driver drains the queue
/// after every read and every tick, so only a driver that stopped draining reaches it; four
/// per session covers a tick of every session plus relayed traffic.
const MAX_QUEUED: usize = 4 * MAX_SESSIONS;
/// Events kept until [`Node::events`] drains them; a digit a second per IVR caller is far below.
const MAX_EVENTS: usize = 4_096;
/// The tick period.
pub const FRAME_NS: Nanos = 20_000_000;
/// RFC 4733 telephone-event payload type when the leg's SDP did not give one.
const DEFAULT_DTMF_PT: u8 = 101;

/// What a node has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Sessions now on the node.
    pub sessions: u64,
    /// Meeting rooms now on the node.
    pub rooms: u64,
    /// RTP packets that belonged to a session.
    pub packets_in: u64,
    /// Datagrams queued for sending (relayed, echoed, generated, OPTIONS answers).
    pub packets_out: u64,
    /// RTP packets that matched no session (or an ambiguous source address).
    pub unknown_packets: u64,
    /// Datagrams that are neither valid RTP nor valid SIP.
    pub malformed: u64,
    /// OPTIONS probes answered.
    pub options_answered: u64,
    /// RFC 4733 digits reported.
    pub digits: u64,
    /// Commands refused: session limit reached, or a codec the node cannot generate.
    pub refused: u64,
    /// Valid datagrams with nothing to do: RTCP, SIP other than OPTIONS, CRLF keepalives.
    pub ignored: u64,
    /// Datagrams or events dropped because their queue was full.
    pub dropped: u64,
}

/// An RTP stream the node sends from its own SSRC (prompt, hold audio, a meeting mix).
#[derive(Debug, Clone, Copy)]
struct Stream {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    codec: Codec,
    /// Frames since the stream started: the position in a tone pattern.
    frame: u64,
    /// Whether a packet has been sent: the first one carries the marker bit and keeps its
    /// initial sequence number and timestamp.
    sent: bool,
}

impl Stream {
    /// Moves to the next packet, `frames` 20 ms frames after the previous one. The timestamp
    /// follows the sampling clock across ticks the driver skipped; the sequence number counts
    /// packets, so it advances by one (RFC 3550 5.1).
    fn advance(&mut self, frames: u64) {
        if self.sent {
            self.seq = self.seq.wrapping_add(1);
            let units = (frames as u32).wrapping_mul(SAMPLES as u32);
            self.timestamp = self.timestamp.wrapping_add(units);
            self.frame = self.frame.wrapping_add(frames);
        }
    }
}

/// One leg of a session and how its packets are found.
#[derive(Debug, Clone, Copy)]
struct LegState {
    leg: Leg,
    /// The SSRC under which this leg is in `by_ssrc` (announced or learnt).
    ssrc: Option<u32>,
    /// Whether this leg is in `by_addr`, waiting for its first packet.
    by_addr: bool,
    /// Where the leg's media goes: the source of its first packet. Nothing is sent to the
    /// leg before then.
    latched: Option<SocketAddr>,
}

#[derive(Debug)]
enum Kind {
    Relay,
    Echo,
    Ivr {
        out: Stream,
        digits: DtmfReceiver,
        dtmf_pt: u8,
        /// Position in `Node::players`.
        player: usize,
    },
    Hold {
        out: Stream,
        player: usize,
    },
    Meeting {
        room: u64,
        out: Stream,
        /// The participant's latest frame, decoded; boxed because it would make every other
        /// session as big.
        pcm: Box<[i16; SAMPLES]>,
        /// Whether `pcm` arrived since the last tick; otherwise the participant is silent.
        fresh: bool,
    },
}

impl Kind {
    fn stream(&self) -> Option<Stream> {
        match self {
            Kind::Relay | Kind::Echo => None,
            Kind::Ivr { out, .. } | Kind::Hold { out, .. } | Kind::Meeting { out, .. } => {
                Some(*out)
            }
        }
    }
}

#[derive(Debug)]
struct Session {
    id: MediaSession,
    /// Relay: both; every other kind: the first only.
    legs: [Option<LegState>; 2],
    kind: Kind,
}

/// A leg on this node: its session's slot and which of the session's legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LegRef {
    slot: u32,
    leg: u8,
}

#[derive(Debug, Default)]
struct Room {
    /// Slots of the participants' sessions.
    members: Vec<u32>,
}

/// Datagrams waiting to be sent: one arena of bytes and where each ends, so queueing a packet
/// allocates nothing once the buffers have grown to the node's traffic.
#[derive(Debug, Default)]
struct Outbox {
    arena: Vec<u8>,
    ends: Vec<(SocketAddr, usize)>,
    sent: u64,
    dropped: u64,
}

impl Outbox {
    fn room(&mut self) -> bool {
        if self.ends.len() >= MAX_QUEUED {
            self.dropped += 1;
            return false;
        }
        true
    }

    fn push(&mut self, to: SocketAddr, bytes: &[u8]) -> bool {
        if !self.room() {
            return false;
        }
        self.arena.extend_from_slice(bytes);
        self.ends.push((to, self.arena.len()));
        self.sent += 1;
        true
    }

    fn push_rtp(&mut self, s: &Stream, dest: SocketAddr, payload: &[u8]) -> bool {
        if !self.room() {
            return false;
        }
        let start = self.arena.len();
        self.arena
            .resize(start + rtp::HEADER_LEN + payload.len(), 0);
        let written = self.arena.get_mut(start..).map(|buf| {
            rtp::write_rtp(
                buf,
                s.ssrc,
                s.seq,
                s.timestamp,
                s.codec.pt(),
                !s.sent,
                payload,
            )
        });
        match written {
            Some(Ok(n)) => {
                self.arena.truncate(start + n);
                self.ends.push((dest, self.arena.len()));
                self.sent += 1;
                true
            }
            _ => {
                self.arena.truncate(start);
                false
            }
        }
    }
}

/// One emulated node: its sessions, meeting rooms and the datagrams it has to send.
#[derive(Debug)]
pub struct Node {
    id: u32,
    role: Role,
    name: String,
    addr: SocketAddr,
    max_sessions: usize,
    /// Sessions by slot; a slot is reused after its session ends.
    slots: Vec<Option<Session>>,
    free: Vec<u32>,
    by_session: HashMap<MediaSession, u32>,
    /// Sessions marked by [`NodeCommand::Mark`] and not started since.
    marked: HashSet<MediaSession>,
    by_ssrc: HashMap<u32, LegRef>,
    /// Legs without a known SSRC, by their remote address. More than one leg at an address
    /// is ambiguous: their packets are unknown until one of them ends.
    by_addr: HashMap<SocketAddr, Vec<LegRef>>,
    /// Slots of the sessions that play a tone (IVR, hold), visited every tick.
    players: Vec<u32>,
    rooms: HashMap<u64, Room>,
    outbox: Outbox,
    /// Reused to render SIP responses.
    scratch: Vec<u8>,
    events: Vec<NodeEvent>,
    /// The To tag of OPTIONS answers: no dialog is made, so one per node is enough.
    to_tag: String,
    last_tick: Option<Nanos>,
    stats: NodeStats,
    /// Datagrams not sent because the leg they were for has sent no media yet (not latched).
    /// Kept apart from [`NodeStats`], whose fields the control link carries.
    unlatched: u64,
}

impl Node {
    /// A node with no sessions, holding at most [`MAX_SESSIONS`].
    pub fn new(id: u32, role: Role, name: String, addr: SocketAddr) -> Node {
        Node {
            id,
            role,
            name,
            addr,
            max_sessions: MAX_SESSIONS,
            slots: Vec::new(),
            free: Vec::new(),
            by_session: HashMap::new(),
            marked: HashSet::new(),
            by_ssrc: HashMap::new(),
            by_addr: HashMap::new(),
            players: Vec::new(),
            rooms: HashMap::new(),
            outbox: Outbox::default(),
            scratch: Vec::new(),
            events: Vec::new(),
            to_tag: format!("{:08x}", mix64(u64::from(id)) as u32),
            last_tick: None,
            stats: NodeStats::default(),
            unlatched: 0,
        }
    }

    /// Sets the session limit (at most [`MAX_SESSIONS`]: the send queue is sized for it).
    pub fn with_max_sessions(mut self, max: usize) -> Node {
        self.max_sessions = max.min(MAX_SESSIONS);
        self
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn sessions(&self) -> usize {
        self.by_session.len()
    }

    /// Participants in meeting `room` on this node (0 if there is no such room).
    pub fn room_members(&self, room: u64) -> usize {
        self.rooms.get(&room).map_or(0, |r| r.members.len())
    }

    /// Whether any session needs ticks (a prompt, hold audio or a meeting): the driver keeps
    /// its ticks punctual only then.
    pub fn generating(&self) -> bool {
        !self.players.is_empty() || !self.rooms.is_empty()
    }

    /// Datagrams not sent because their leg had sent no media yet: relayed packets, prompt,
    /// hold and mix frames.
    pub fn unlatched(&self) -> u64 {
        self.unlatched
    }

    pub fn stats(&self) -> NodeStats {
        NodeStats {
            sessions: self.by_session.len() as u64,
            rooms: self.rooms.len() as u64,
            packets_out: self.outbox.sent,
            dropped: self.stats.dropped + self.outbox.dropped,
            ..self.stats
        }
    }

    /// The SSRC the node sends from for `session`: derived from both ids, so it is the same
    /// in every run and differs between nodes (a session moved by failover gets a new one,
    /// as it would from a different server).
    fn stream_for(&self, session: MediaSession, codec: Codec) -> Stream {
        let h = mix64(mix64(session.0) ^ u64::from(self.id));
        Stream {
            ssrc: (h >> 32) as u32,
            // RFC 3550 wants random initial values; these are arbitrary but reproducible.
            seq: (h >> 16) as u16,
            timestamp: (h as u32) & 0xffff_0000,
            codec,
            frame: 0,
            sent: false,
        }
    }

    /// Applies a command. A command for a session the node already has replaces it (the Call
    /// Manager re-points a session, after a re-INVITE, by sending it again); a stream the
    /// node was sending keeps its SSRC, sequence and timestamp.
    ///
    /// Takes no `now`: nothing a command does depends on the time.
    pub fn command(&mut self, cmd: NodeCommand) {
        match cmd {
            NodeCommand::End { session } => {
                self.end(session);
            }
            NodeCommand::Reset => {
                let all: Vec<MediaSession> = self.by_session.keys().copied().collect();
                for session in all {
                    self.end(session);
                }
            }
            NodeCommand::Mark => self.marked = self.by_session.keys().copied().collect(),
            NodeCommand::Sweep => {
                for session in std::mem::take(&mut self.marked) {
                    self.end(session);
                }
            }
            NodeCommand::Relay { session, a, b } => self.start(session, a, Some(b), Setup::Relay),
            NodeCommand::Echo { session, leg } => self.start(session, leg, None, Setup::Echo),
            NodeCommand::Ivr { session, leg } => self.start(session, leg, None, Setup::Ivr),
            NodeCommand::Hold { session, leg } => self.start(session, leg, None, Setup::Hold),
            NodeCommand::Join { session, room, leg } => {
                self.start(session, leg, None, Setup::Join(room))
            }
        }
    }

    fn start(&mut self, id: MediaSession, leg: Leg, other: Option<Leg>, setup: Setup) {
        self.marked.remove(&id);
        let (previous, latched) = match self.end_keeping(id) {
            Some((stream, latched)) => (stream, latched),
            None => (None, [None; 2]),
        };
        let generated = !matches!(setup, Setup::Relay | Setup::Echo);
        let codec = Codec::from_pt(leg.codec_pt);
        if self.by_session.len() >= self.max_sessions || (generated && codec.is_none()) {
            self.stats.refused += 1;
            return;
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                // At most max_sessions (≤ 65,536) slots exist, so the index fits.
                (self.slots.len() - 1) as u32
            }
        };
        let out = codec.map(|codec| match previous {
            Some(s) => Stream { codec, ..s },
            None => self.stream_for(id, codec),
        });
        let kind = match (setup, out) {
            (Setup::Relay, _) => Kind::Relay,
            (Setup::Echo, _) => Kind::Echo,
            (Setup::Ivr, Some(out)) => {
                self.players.push(slot);
                Kind::Ivr {
                    out,
                    digits: DtmfReceiver::new(),
                    dtmf_pt: leg.dtmf_pt.unwrap_or(DEFAULT_DTMF_PT),
                    player: self.players.len() - 1,
                }
            }
            (Setup::Hold, Some(out)) => {
                self.players.push(slot);
                Kind::Hold {
                    out,
                    player: self.players.len() - 1,
                }
            }
            (Setup::Join(room), Some(out)) => {
                self.rooms.entry(room).or_default().members.push(slot);
                Kind::Meeting {
                    room,
                    out,
                    pcm: Box::new([0; SAMPLES]),
                    fresh: false,
                }
            }
            // Generated audio without a codec is refused above; should that change, the slot
            // goes back rather than leaking.
            (Setup::Ivr | Setup::Hold | Setup::Join(_), None) => {
                self.free.push(slot);
                self.stats.refused += 1;
                return;
            }
        };
        // A leg the command repeats (same SDP address) keeps its latch; a leg whose address
        // changed has moved and is learnt again, as after a re-INVITE.
        let keep = |i: usize, l: &Leg| {
            latched
                .get(i)
                .copied()
                .flatten()
                .filter(|(remote, _)| *remote == l.remote)
                .map(|(_, at)| at)
        };
        let legs = [
            Some(self.register(LegRef { slot, leg: 0 }, leg, keep(0, &leg))),
            other.map(|b| self.register(LegRef { slot, leg: 1 }, b, keep(1, &b))),
        ];
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(Session { id, legs, kind });
        }
        self.by_session.insert(id, slot);
    }

    fn register(&mut self, r: LegRef, leg: Leg, latched: Option<SocketAddr>) -> LegState {
        if let Some(ssrc) = leg.ssrc
            && let Entry::Vacant(v) = self.by_ssrc.entry(ssrc)
        {
            v.insert(r);
            return LegState {
                leg,
                ssrc: Some(ssrc),
                by_addr: false,
                latched,
            };
        }
        // No SSRC announced, or another leg already has it: find the leg by its address
        // until its first packet tells its SSRC.
        self.by_addr.entry(leg.remote).or_default().push(r);
        LegState {
            leg,
            ssrc: None,
            by_addr: true,
            latched,
        }
    }

    fn unregister(&mut self, r: LegRef, st: &LegState) {
        if let Some(ssrc) = st.ssrc
            && self.by_ssrc.get(&ssrc) == Some(&r)
        {
            self.by_ssrc.remove(&ssrc);
        }
        if st.by_addr
            && let Entry::Occupied(mut e) = self.by_addr.entry(st.leg.remote)
        {
            e.get_mut().retain(|&o| o != r);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// Forgets a session; returns the stream it was sending, if any.
    fn end(&mut self, id: MediaSession) -> Option<Stream> {
        self.end_keeping(id).and_then(|(stream, _)| stream)
    }

    /// Forgets a session; returns the stream it was sending, if any, and each leg's SDP
    /// address with the address it latched to.
    fn end_keeping(&mut self, id: MediaSession) -> Option<(Option<Stream>, [Latch; 2])> {
        let slot = self.by_session.remove(&id)?;
        let session = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        for (i, st) in session.legs.iter().enumerate() {
            if let Some(st) = st {
                self.unregister(LegRef { slot, leg: i as u8 }, st);
            }
        }
        match &session.kind {
            Kind::Ivr { player, .. } | Kind::Hold { player, .. } => self.remove_player(*player),
            Kind::Meeting { room, .. } => {
                if let Entry::Occupied(mut e) = self.rooms.entry(*room) {
                    e.get_mut().members.retain(|&m| m != slot);
                    if e.get().members.is_empty() {
                        e.remove();
                    }
                }
            }
            Kind::Relay | Kind::Echo => {}
        }
        let latch = |st: &Option<LegState>| st.and_then(|st| Some((st.leg.remote, st.latched?)));
        let latches = [latch(&session.legs[0]), latch(&session.legs[1])];
        Some((session.kind.stream(), latches))
    }

    fn remove_player(&mut self, pos: usize) {
        if pos >= self.players.len() {
            return;
        }
        self.players.swap_remove(pos);
        // The last player moved into `pos`: tell it.
        if let Some(&moved) = self.players.get(pos)
            && let Some(Some(s)) = self.slots.get_mut(moved as usize)
            && let Kind::Ivr { player, .. } | Kind::Hold { player, .. } = &mut s.kind
        {
            *player = pos;
        }
    }

    /// Takes one datagram from `from`: RTP for a session, or a SIP probe.
    ///
    /// Takes no `now`: nothing here depends on when a packet arrived (meeting frames are
    /// "since the last tick", digits are reported as they end).
    pub fn handle(&mut self, from: SocketAddr, datagram: &[u8]) {
        match datagram.first() {
            Some(0x80..=0xbf) => self.handle_rtp(from, datagram),
            Some(b) if b.is_ascii_alphabetic() => self.handle_sip(from, datagram),
            // RFC 5626 keepalive: CRLF pairs, nothing to answer over UDP.
            Some(_) if datagram.iter().all(|&b| b == b'\r' || b == b'\n') => {
                self.stats.ignored += 1
            }
            _ => self.stats.malformed += 1,
        }
    }

    fn handle_rtp(&mut self, from: SocketAddr, datagram: &[u8]) {
        if !rtp::looks_like_rtp(datagram) {
            // RTCP (payload types 64-95 once the marker bit is off) is let through but not
            // used; anything shorter than an RTP header is not RTP.
            if datagram.len() >= rtp::HEADER_LEN {
                self.stats.ignored += 1;
            } else {
                self.stats.malformed += 1;
            }
            return;
        }
        let Ok(p) = rtp::read_rtp(datagram) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(r) = self.find_leg(p.ssrc, from) else {
            self.stats.unknown_packets += 1;
            return;
        };
        let Some(Some(session)) = self.slots.get_mut(r.slot as usize) else {
            // The maps only name live sessions (End removes a session's entries); count a
            // miss as unknown rather than trust that here.
            self.stats.unknown_packets += 1;
            return;
        };
        self.stats.packets_in += 1;
        // The leg's first packet fixes where its media goes (latching).
        if let Some(Some(me)) = session.legs.get_mut(usize::from(r.leg))
            && me.latched.is_none()
        {
            me.latched = Some(from);
        }
        match &mut session.kind {
            Kind::Relay => {
                let other = if r.leg == 0 { 1 } else { 0 };
                match session.legs.get(other) {
                    Some(Some(LegState {
                        latched: Some(to), ..
                    })) => {
                        self.outbox.push(*to, datagram);
                    }
                    _ => self.unlatched += 1,
                }
            }
            Kind::Echo => {
                if let Some(Some(LegState {
                    latched: Some(to), ..
                })) = session.legs.first()
                {
                    self.outbox.push(*to, datagram);
                }
            }
            Kind::Ivr {
                digits, dtmf_pt, ..
            } => {
                // Audio from the caller is not listened to; only its telephone-events are.
                // A short event payload is ignored like any other packet the IVR has no use for.
                if p.payload_type == *dtmf_pt
                    && let Ok(Some(digit)) = digits.on_packet(p.timestamp, p.payload)
                {
                    if self.events.len() < MAX_EVENTS {
                        self.events.push(NodeEvent::Digit {
                            session: session.id,
                            digit,
                        });
                        self.stats.digits += 1;
                    } else {
                        self.stats.dropped += 1;
                    }
                }
            }
            Kind::Hold { .. } => {}
            Kind::Meeting {
                out, pcm, fresh, ..
            } => {
                if p.payload_type == out.codec.pt() {
                    // A longer packet (another ptime) gives its first 20 ms, a shorter one
                    // is padded with silence: the mix runs on 20 ms frames.
                    pcm.fill(0);
                    out.codec.decode(p.payload, &mut pcm[..]);
                    *fresh = true;
                }
            }
        }
    }

    /// The leg an RTP packet belongs to: by SSRC, else by source address when exactly one
    /// leg without a known SSRC is there, which then learns the SSRC.
    fn find_leg(&mut self, ssrc: u32, from: SocketAddr) -> Option<LegRef> {
        if let Some(&r) = self.by_ssrc.get(&ssrc) {
            return Some(r);
        }
        let r = match self.by_addr.get(&from).map(Vec::as_slice) {
            Some(&[r]) => r,
            _ => return None,
        };
        self.by_addr.remove(&from);
        self.by_ssrc.insert(ssrc, r);
        if let Some(Some(s)) = self.slots.get_mut(r.slot as usize)
            && let Some(Some(st)) = s.legs.get_mut(usize::from(r.leg))
        {
            st.ssrc = Some(ssrc);
            st.by_addr = false;
        }
        Some(r)
    }

    fn handle_sip(&mut self, from: SocketAddr, datagram: &[u8]) {
        let Ok(msg) = sip::parse_datagram(datagram) else {
            self.stats.malformed += 1;
            return;
        };
        if msg.method() != Some(sip::Method::Options) {
            self.stats.ignored += 1;
            return;
        }
        // Sent back to the source address, which is where RFC 3581's rport would send it too.
        builder::write_response(
            &mut self.scratch,
            &msg,
            200,
            "OK",
            Some(&self.to_tag),
            &[("Allow", "OPTIONS")],
            b"",
        );
        if self.outbox.push(from, &self.scratch) {
            self.stats.options_answered += 1;
        }
    }

    /// The 20 ms tick: a frame of prompt or hold audio to every IVR and hold session, and a
    /// mix to every meeting participant.
    ///
    /// A participant hears the sum of every other participant's latest frame (a participant
    /// with no frame since the last tick is silent). A participant alone in a room is sent
    /// silence rather than nothing, so its stream, and what the far end measures of it, does
    /// not stop while it waits for others.
    pub fn tick(&mut self, now: Nanos) {
        // Frames since the previous tick: one, or more after a stall the driver skipped.
        let frames = self.last_tick.map_or(1, |t| {
            (now.saturating_sub(t).saturating_add(FRAME_NS / 2) / FRAME_NS).max(1)
        });
        self.last_tick = Some(now);
        for &slot in &self.players {
            let Some(Some(s)) = self.slots.get_mut(slot as usize) else {
                continue;
            };
            let Some(dest) = latched(s) else {
                // The caller has sent nothing yet: its prompt or hold audio starts, from its
                // beginning, once it has.
                self.unlatched += 1;
                continue;
            };
            let (out, tone) = match &mut s.kind {
                Kind::Ivr { out, .. } => (out, &*PROMPT),
                Kind::Hold { out, .. } => (out, &*HOLD),
                _ => continue,
            };
            out.advance(frames);
            self.outbox
                .push_rtp(out, dest, tone.frame(out.codec, out.frame));
            out.sent = true;
        }
        for room in self.rooms.values() {
            self.unlatched += mix(&room.members, &mut self.slots, &mut self.outbox, frames);
        }
    }

    /// Hands every queued datagram to `send` once, then forgets them.
    pub fn transmit_all(&mut self, send: impl FnOnce(&[(SocketAddr, &[u8])])) {
        if self.outbox.ends.is_empty() {
            return;
        }
        let mut start = 0;
        let arena = &self.outbox.arena;
        let batch: Vec<(SocketAddr, &[u8])> = self
            .outbox
            .ends
            .iter()
            .map(|&(to, end)| {
                let bytes = arena.get(start..end).unwrap_or(&[]);
                start = end;
                (to, bytes)
            })
            .collect();
        send(&batch);
        self.outbox.ends.clear();
        self.outbox.arena.clear();
    }

    /// Events since the last call.
    pub fn events(&mut self) -> std::vec::Drain<'_, NodeEvent> {
        self.events.drain(..)
    }
}

#[derive(Debug, Clone, Copy)]
enum Setup {
    Relay,
    Echo,
    Ivr,
    Hold,
    Join(u64),
}

/// A leg's SDP address and the address its media is sent to, kept over a repeated command.
type Latch = Option<(SocketAddr, SocketAddr)>;

/// Where a one-leg session's generated audio goes: where its leg's media came from.
fn latched(s: &Session) -> Option<SocketAddr> {
    s.legs.first().copied().flatten()?.latched
}

/// Sends each member of a room the sum of the others' latest frames; a member that has sent
/// nothing yet is sent nothing (and counted, the return value). Allocates nothing: the sum
/// and each output frame live on the stack.
fn mix(members: &[u32], slots: &mut [Option<Session>], outbox: &mut Outbox, frames: u64) -> u64 {
    let mut sum = Mix::new();
    for &m in members {
        if let Some(Some(Session {
            kind: Kind::Meeting {
                pcm, fresh: true, ..
            },
            ..
        })) = slots.get(m as usize)
        {
            sum.add(pcm);
        }
    }
    let mut payload = [0u8; SAMPLES];
    let mut unlatched = 0;
    for &m in members {
        let Some(Some(s)) = slots.get_mut(m as usize) else {
            continue;
        };
        let dest = latched(s);
        let Kind::Meeting {
            out, pcm, fresh, ..
        } = &mut s.kind
        else {
            continue;
        };
        let Some(dest) = dest else {
            unlatched += 1;
            continue;
        };
        sum.encode_without(fresh.then_some(&**pcm), out.codec, &mut payload);
        out.advance(frames);
        outbox.push_rtp(out, dest, &payload);
        out.sent = true;
        *fresh = false;
    }
    unlatched
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::fixtures::{OPTIONS, audio, packet, session};
    use pbxlab_proto::{dtmf, g711};
    use proptest::prelude::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn node() -> Node {
        Node::new(7, Role::Media, "media-1".into(), addr(4000))
    }

    fn leg(port: u16, ssrc: Option<u32>, codec_pt: u8) -> Leg {
        Leg {
            remote: addr(port),
            ssrc,
            codec_pt,
            dtmf_pt: Some(101),
        }
    }

    fn sent(n: &mut Node) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        n.transmit_all(|d| out.extend(d.iter().map(|(a, b)| (*a, b.to_vec()))));
        out
    }

    #[test]
    fn relays_by_ssrc_both_ways_unchanged() {
        let mut n = node();
        n.command(NodeCommand::Relay {
            session: session(1),
            a: leg(5000, Some(0xaaaa), 0),
            b: leg(6000, Some(0xbbbb), 0),
        });
        // The load generator sends every stream from one address: only the SSRC tells them
        // apart. Each leg's media goes where that leg's came from; A's first packet, before B
        // has sent anything, goes nowhere.
        let a = audio(0xaaaa, 1);
        let b = audio(0xbbbb, 9);
        n.handle(addr(9999), &a);
        n.handle(addr(9998), &b);
        assert_eq!(sent(&mut n), vec![(addr(9999), b.clone())]);
        assert_eq!(n.unlatched(), 1);
        let a2 = audio(0xaaaa, 2);
        n.handle(addr(9999), &a2);
        n.handle(addr(9998), &b);
        assert_eq!(sent(&mut n), vec![(addr(9998), a2), (addr(9999), b)]);
        let s = n.stats();
        assert_eq!((s.packets_in, s.packets_out, s.unknown_packets), (4, 3, 0));
        assert!(
            sent(&mut n).is_empty(),
            "transmit_all hands out each datagram once"
        );
    }

    #[test]
    fn learns_the_ssrc_of_a_leg_found_by_address() {
        let mut n = node();
        // SIPp style: no a=ssrc, one media port per call.
        n.command(NodeCommand::Relay {
            session: session(1),
            a: leg(5000, None, 0),
            b: leg(6000, None, 8),
        });
        let a = audio(0x1234, 1);
        n.handle(addr(5000), &a);
        let b = audio(0x5678, 1);
        n.handle(addr(6000), &b);
        // A's first packet came before B had sent: nowhere to send it yet.
        assert_eq!(sent(&mut n), vec![(addr(5000), b)]);
        n.handle(addr(5000), &a);
        assert_eq!(sent(&mut n), vec![(addr(6000), a)]);
        // Learnt: the SSRC now finds the leg from any address; what goes to A still goes
        // where A's first packet came from.
        let moved = audio(0x1234, 2);
        n.handle(addr(5001), &moved);
        assert_eq!(sent(&mut n), vec![(addr(6000), moved)]);
        let back = audio(0x5678, 2);
        n.handle(addr(6000), &back);
        assert_eq!(sent(&mut n), vec![(addr(5000), back)]);
        // And the address alone no longer does.
        n.handle(addr(5000), &audio(0x9999, 1));
        assert!(sent(&mut n).is_empty());
        assert_eq!(n.stats().unknown_packets, 1);
    }

    #[test]
    fn a_sweep_ends_the_sessions_not_started_again_since_the_mark() {
        let mut n = node();
        for s in 1..=3 {
            n.command(NodeCommand::Echo {
                session: session(s),
                leg: leg(5000 + 2 * s as u16, Some(s as u32), 0),
            });
        }
        n.command(NodeCommand::Mark);
        n.command(NodeCommand::Echo {
            session: session(2),
            leg: leg(5004, Some(2), 0),
        });
        // Started after the mark: not marked.
        n.command(NodeCommand::Echo {
            session: session(4),
            leg: leg(5008, Some(4), 0),
        });
        n.command(NodeCommand::End {
            session: session(3),
        });
        n.command(NodeCommand::Sweep);
        assert_eq!(n.stats().sessions, 2);
        n.handle(addr(5004), &audio(2, 1));
        assert_eq!(sent(&mut n).len(), 1, "session 2 kept its leg");
        n.handle(addr(5002), &audio(1, 1));
        assert!(sent(&mut n).is_empty(), "session 1 was swept");
        // A sweep without a mark ends nothing.
        n.command(NodeCommand::Sweep);
        assert_eq!(n.stats().sessions, 2);
    }

    #[test]
    fn a_shared_address_without_ssrc_is_ambiguous() {
        let mut n = node();
        n.command(NodeCommand::Echo {
            session: session(1),
            leg: leg(5000, None, 0),
        });
        n.command(NodeCommand::Echo {
            session: session(2),
            leg: leg(5000, None, 0),
        });
        n.handle(addr(5000), &audio(0x1234, 1));
        assert!(sent(&mut n).is_empty());
        assert_eq!(n.stats().unknown_packets, 1);
        // Once one of them ends, the other is the only leg at the address.
        n.command(NodeCommand::End {
            session: session(1),
        });
        let p = audio(0x1234, 2);
        n.handle(addr(5000), &p);
        assert_eq!(sent(&mut n), vec![(addr(5000), p)]);
    }

    #[test]
    fn echoes_to_the_leg() {
        let mut n = node();
        n.command(NodeCommand::Echo {
            session: session(3),
            leg: leg(5000, Some(42), 8),
        });
        // Back to where it came from (the SDP named 5000; the media says 7777).
        let p = packet(42, 7, 1120, 8, &[0xd5; 160]);
        n.handle(addr(7777), &p);
        assert_eq!(sent(&mut n), vec![(addr(7777), p.clone())]);
        assert_eq!(n.sessions(), 1);
        // Latched: a packet of the stream from elsewhere is echoed to the first source.
        n.handle(addr(7778), &p);
        assert_eq!(sent(&mut n), vec![(addr(7777), p)]);
    }

    /// Sends one digit as RFC 4733 schedules it: updates, then the end packet three times.
    fn press(n: &mut Node, ssrc: u32, digit: char, ts: u32, seq: &mut u16) {
        let event = dtmf::digit_to_event(digit).unwrap();
        for p in dtmf::digit_packets(event, 100, 20, 10) {
            let mut buf = vec![0u8; 16];
            rtp::write_rtp(&mut buf, ssrc, *seq, ts, 101, p.marker, &p.payload).unwrap();
            *seq = seq.wrapping_add(1);
            n.handle(addr(5000), &buf);
        }
    }

    #[test]
    fn ivr_reports_each_digit_once() {
        let mut n = node();
        n.command(NodeCommand::Ivr {
            session: session(4),
            leg: leg(5000, Some(77), 0),
        });
        let mut seq = 1;
        press(&mut n, 77, '5', 8000, &mut seq);
        assert_eq!(
            n.events().collect::<Vec<_>>(),
            vec![NodeEvent::Digit {
                session: session(4),
                digit: '5'
            }]
        );
        // Audio from the caller is counted and dropped; two keys give two events.
        n.handle(addr(5000), &audio(77, 100));
        press(&mut n, 77, '#', 16000, &mut seq);
        press(&mut n, 77, '0', 24000, &mut seq);
        let digits: Vec<char> = n
            .events()
            .map(|e| match e {
                NodeEvent::Digit { digit, .. } => digit,
            })
            .collect();
        assert_eq!(digits, vec!['#', '0']);
        assert_eq!(n.stats().digits, 3);
        assert!(
            sent(&mut n).is_empty(),
            "nothing is sent back between ticks"
        );
        // The prompt: 400 ms of tone, then silence.
        let mut frames = Vec::new();
        for k in 0..50u64 {
            n.tick(k * FRAME_NS);
            frames.extend(sent(&mut n));
        }
        assert_eq!(frames.len(), 50);
        let loud = |b: &[u8]| {
            let mut pcm = [0i16; 160];
            g711::decode_ulaw(&b[rtp::HEADER_LEN..], &mut pcm);
            pcm.iter().map(|s| i32::from(*s).abs()).max().unwrap_or(0)
        };
        assert!(frames[..20].iter().all(|(_, b)| loud(b) > 5000));
        assert!(frames[20..].iter().all(|(_, b)| loud(b) < 100));
    }

    #[test]
    fn hold_audio_advances_by_one_packet_and_160_samples() {
        let mut n = node();
        n.command(NodeCommand::Hold {
            session: session(5),
            leg: leg(5000, None, 8),
        });
        // The caller speaks first: hold audio goes where its media comes from.
        n.handle(addr(5000), &audio(1, 0));
        let mut got = Vec::new();
        for k in 0..5u64 {
            n.tick(1_000_000 + k * FRAME_NS);
            got.extend(sent(&mut n));
        }
        // A stall: the driver skipped four ticks; the timestamp follows the clock.
        n.tick(1_000_000 + 9 * FRAME_NS);
        got.extend(sent(&mut n));
        let views: Vec<_> = got
            .iter()
            .map(|(to, b)| {
                assert_eq!(*to, addr(5000));
                rtp::read_rtp(b).unwrap()
            })
            .collect();
        assert_eq!(views.len(), 6);
        for (i, v) in views.iter().enumerate() {
            assert_eq!(v.payload_type, 8);
            assert_eq!(v.payload.len(), 160);
            assert_eq!(v.ssrc, views[0].ssrc);
            assert_eq!(v.marker, i == 0);
            assert_eq!(v.seq, views[0].seq.wrapping_add(i as u16));
        }
        for w in views[..5].windows(2) {
            assert_eq!(w[1].timestamp.wrapping_sub(w[0].timestamp), 160);
        }
        assert_eq!(views[5].timestamp.wrapping_sub(views[4].timestamp), 800);
        // What the caller sends is counted and discarded.
        n.handle(addr(5000), &audio(1, 1));
        assert!(sent(&mut n).is_empty());
        assert_eq!(n.stats().packets_in, 2);
        // Another node sends this session from another SSRC.
        let mut other = Node::new(8, Role::Queue, "queue-2".into(), addr(4001));
        other.command(NodeCommand::Hold {
            session: session(5),
            leg: leg(5000, None, 8),
        });
        other.handle(addr(5000), &audio(1, 2));
        other.tick(0);
        let o = sent(&mut other);
        assert_ne!(rtp::read_rtp(&o[0].1).unwrap().ssrc, views[0].ssrc);
    }

    fn level(codec: Codec, payload: &[u8]) -> f64 {
        let mut pcm = [0i16; 160];
        codec.decode(payload, &mut pcm);
        pcm.iter().map(|&s| f64::from(s)).sum::<f64>() / 160.0
    }

    fn constant(codec: Codec, level: i16) -> [u8; 160] {
        let mut out = [0u8; 160];
        codec.encode(&[level; 160], &mut out);
        out
    }

    #[test]
    fn meeting_participants_hear_the_others() {
        let mut n = node();
        // (port, ssrc, codec, level)
        let people = [
            (5001u16, 11u32, Codec::Pcmu, 1000i16),
            (5002, 12, Codec::Pcma, 2000),
            (5003, 13, Codec::Pcmu, -4000),
        ];
        for (i, &(port, ssrc, codec, _)) in people.iter().enumerate() {
            n.command(NodeCommand::Join {
                session: session(10 + i as u64),
                room: 99,
                leg: leg(port, Some(ssrc), codec.pt()),
            });
        }
        assert_eq!(n.room_members(99), 3);
        assert_eq!(n.stats().rooms, 1);
        for &(port, ssrc, codec, lvl) in &people {
            n.handle(
                addr(port),
                &packet(ssrc, 1, 0, codec.pt(), &constant(codec, lvl)),
            );
        }
        n.tick(0);
        let out = sent(&mut n);
        assert_eq!(out.len(), 3);
        let total: i32 = people.iter().map(|p| i32::from(p.3)).sum();
        for &(port, _, codec, lvl) in &people {
            let (_, b) = out.iter().find(|(a, _)| *a == addr(port)).unwrap();
            let v = rtp::read_rtp(b).unwrap();
            assert_eq!(v.payload_type, codec.pt());
            let want = f64::from(total - i32::from(lvl));
            let got = level(codec, v.payload);
            // G.711 quantises each input and the mix again: a few percent at these levels.
            assert!(
                (got - want).abs() <= want.abs() * 0.05 + 64.0,
                "participant at {port} heard {got}, expected {want}"
            );
        }
        // Nothing new arrived: everyone hears silence.
        n.tick(FRAME_NS);
        for (_, b) in sent(&mut n) {
            let v = rtp::read_rtp(&b).unwrap();
            assert!(level(Codec::from_pt(v.payload_type).unwrap(), v.payload).abs() < 16.0);
        }
        // Alone in the room: silence, still on time.
        n.command(NodeCommand::End {
            session: session(10),
        });
        n.command(NodeCommand::End {
            session: session(11),
        });
        assert_eq!(n.room_members(99), 1);
        n.handle(
            addr(5003),
            &packet(13, 2, 160, 0, &constant(Codec::Pcmu, 8000)),
        );
        n.tick(2 * FRAME_NS);
        let alone = sent(&mut n);
        assert_eq!(alone.len(), 1);
        assert!(level(Codec::Pcmu, rtp::read_rtp(&alone[0].1).unwrap().payload).abs() < 16.0);
        n.command(NodeCommand::End {
            session: session(12),
        });
        assert_eq!((n.room_members(99), n.stats().rooms), (0, 0));
        assert!(!n.generating());
    }

    #[test]
    fn end_forgets_every_mapping() {
        let mut n = node();
        n.command(NodeCommand::Relay {
            session: session(1),
            a: leg(5000, Some(1), 0),
            b: leg(6000, None, 0),
        });
        n.command(NodeCommand::End {
            session: session(1),
        });
        n.handle(addr(5000), &audio(1, 1));
        n.handle(addr(6000), &audio(2, 1));
        assert!(sent(&mut n).is_empty());
        let s = n.stats();
        assert_eq!((s.sessions, s.unknown_packets), (0, 2));
        // Ending twice, or a session never started, is harmless.
        n.command(NodeCommand::End {
            session: session(1),
        });
        n.command(NodeCommand::End {
            session: session(2),
        });
        // The slot is reused cleanly.
        n.command(NodeCommand::Echo {
            session: session(3),
            leg: leg(6000, None, 0),
        });
        let p = audio(3, 1);
        n.handle(addr(6000), &p);
        assert_eq!(sent(&mut n), vec![(addr(6000), p)]);
    }

    /// An INVITE may name anyone's address in its SDP: the IVR once streamed its prompt,
    /// 50 packets a second for minutes, to whatever `c=` said. Nothing goes to an address
    /// that has not sent the session's media: not the prompt, hold audio or a meeting mix,
    /// not a relayed or echoed packet. A caller that never sends media gets none.
    #[test]
    fn a_third_party_named_in_the_sdp_is_sent_nothing() {
        let victim = 9000;
        let mut n = node();
        n.command(NodeCommand::Ivr {
            session: session(1),
            leg: leg(victim, Some(11), 0),
        });
        n.command(NodeCommand::Hold {
            session: session(2),
            leg: leg(victim, Some(12), 0),
        });
        n.command(NodeCommand::Join {
            session: session(3),
            room: 5,
            leg: leg(victim, Some(13), 0),
        });
        n.command(NodeCommand::Relay {
            session: session(4),
            a: leg(victim, Some(14), 0),
            b: leg(victim + 1, Some(15), 0),
        });
        n.command(NodeCommand::Echo {
            session: session(5),
            leg: leg(victim + 2, None, 0),
        });
        for k in 0..300u64 {
            n.tick(k * FRAME_NS);
        }
        // The one who made the call sends B's stream from its own address: it is relayed to
        // nobody, since A's address has sent nothing.
        n.handle(addr(7000), &audio(15, 1));
        assert!(sent(&mut n).is_empty(), "nothing to anyone");
        assert_eq!(n.unlatched(), 3 * 300 + 1);
        // The IVR's caller speaks (from its own address): the prompt goes there, not to the
        // SDP's address, from its first frame.
        n.handle(addr(7001), &audio(11, 1));
        n.tick(300 * FRAME_NS);
        let out = sent(&mut n);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, addr(7001));
        assert!(rtp::read_rtp(&out[0].1).unwrap().marker);
    }

    #[test]
    fn a_repeated_command_repoints_the_session() {
        let mut n = node();
        n.command(NodeCommand::Hold {
            session: session(1),
            leg: leg(5000, None, 0),
        });
        n.handle(addr(5000), &audio(1, 0));
        n.tick(0);
        let first = rtp::read_rtp(&sent(&mut n)[0].1).unwrap().seq;
        // The same leg again (a re-INVITE that changed nothing here) keeps its latch.
        n.command(NodeCommand::Hold {
            session: session(1),
            leg: leg(5000, None, 0),
        });
        n.tick(FRAME_NS);
        assert_eq!(sent(&mut n)[0].0, addr(5000));
        // A new address: the leg moved, and is learnt again from its first packet there.
        n.command(NodeCommand::Hold {
            session: session(1),
            leg: leg(5100, None, 0),
        });
        n.tick(2 * FRAME_NS);
        assert!(sent(&mut n).is_empty());
        n.handle(addr(5100), &audio(1, 1));
        n.tick(3 * FRAME_NS);
        let out = sent(&mut n);
        assert_eq!(n.sessions(), 1);
        assert_eq!(out[0].0, addr(5100));
        // The stream goes on: same SSRC, next sequence number, no marker.
        let v = rtp::read_rtp(&out[0].1).unwrap();
        assert_eq!((v.seq, v.marker), (first.wrapping_add(2), false));
    }

    #[test]
    fn refuses_beyond_the_limit_and_unknown_codecs() {
        let mut n = node().with_max_sessions(2);
        for s in 0..3 {
            n.command(NodeCommand::Echo {
                session: session(s),
                leg: leg(5000 + s as u16, None, 0),
            });
        }
        n.command(NodeCommand::Ivr {
            session: session(1),
            leg: leg(5000, None, 18),
        });
        let s = n.stats();
        assert_eq!((s.sessions, s.refused), (1, 2));
    }

    #[test]
    fn answers_options() {
        let mut n = node();
        n.handle(addr(5060), OPTIONS.as_bytes());
        let out = sent(&mut n);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, addr(5060));
        let m = sip::parse_datagram(&out[0].1).unwrap();
        assert_eq!(m.code(), Some(200));
        assert_eq!(m.call_id(), Some("probe-17@cm"));
        let cseq = m.cseq().unwrap();
        assert_eq!((cseq.seq, cseq.method), (17, sip::Method::Options));
        let vias: Vec<_> = m.vias().map(|v| v.branch).collect();
        assert_eq!(vias, vec![Some("z9hG4bKprobe17"), Some("z9hG4bKouter")]);
        assert_eq!(m.from().unwrap().tag(), Some("cm1"));
        assert!(m.to().unwrap().tag().is_some());
        assert_eq!(m.content_length(), Some(0));
        assert_eq!(n.stats().options_answered, 1);
        // Other requests and responses are not answered.
        n.handle(addr(5060), OPTIONS.replace("OPTIONS", "INFO").as_bytes());
        n.handle(
            addr(5060),
            b"SIP/2.0 200 OK\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n",
        );
        assert!(sent(&mut n).is_empty());
    }

    #[test]
    fn odd_datagrams_are_counted() {
        let mut n = node();
        n.command(NodeCommand::Relay {
            session: session(1),
            a: leg(5000, Some(1), 0),
            b: leg(6000, None, 0),
        });
        let rtcp = [0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let cases: [&[u8]; 8] = [
            b"",
            &[0x80],
            &[0x80; 11],
            &[0x00, 0x01, 0, 0],
            b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP",
            b"\r\n\r\n",
            &rtcp,
            // Two CSRCs claimed, none present.
            &[0x82, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
        ];
        for c in cases {
            n.handle(addr(5000), c);
        }
        assert!(sent(&mut n).is_empty());
        let s = n.stats();
        assert_eq!((s.malformed, s.ignored, s.packets_in), (6, 2, 0));
    }

    proptest! {
        #[test]
        fn any_datagram_is_counted_once_and_never_panics(
            datagrams in proptest::collection::vec(
                (0u8..4, proptest::collection::vec(any::<u8>(), 0..200)), 1..40),
        ) {
            let mut n = node();
            n.command(NodeCommand::Relay {
                session: session(1),
                a: leg(5000, Some(1), 0),
                b: leg(6000, None, 0),
            });
            n.command(NodeCommand::Ivr { session: session(2), leg: leg(5000, Some(2), 8) });
            n.command(NodeCommand::Join { session: session(3), room: 1, leg: leg(5001, None, 0) });
            for (i, (kind, mut bytes)) in datagrams.iter().cloned().enumerate() {
                // Steer some towards the RTP and SIP paths, with SSRCs the node knows.
                match kind {
                    1 if !bytes.is_empty() => bytes[0] = 0x80 | (bytes[0] & 0x3f),
                    2 if !bytes.is_empty() => bytes[0] = b'O',
                    3 if bytes.len() >= 12 => {
                        bytes[0] = 0x80;
                        bytes[8..12].copy_from_slice(&(1 + (i as u32 % 3)).to_be_bytes());
                    }
                    _ => {}
                }
                n.handle(addr(5000 + (i as u16 % 3)), &bytes);
                if i % 7 == 0 {
                    n.tick(i as u64 * FRAME_NS);
                }
            }
            let _ = sent(&mut n);
            let _ = n.events().count();
            let s = n.stats();
            prop_assert_eq!(
                s.packets_in + s.unknown_packets + s.malformed + s.ignored + s.options_answered,
                datagrams.len() as u64
            );
        }
    }
}
