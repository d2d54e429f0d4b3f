//! The back-to-back user agent's call flows: a caller's INVITE routed to a node and, for a user
//! or an agent, on to leg B; requests inside a call's dialogs; the answers to our own requests
//! and the timers of both; re-INVITEs that point a leg at its media's node. How a call ends is
//! in `teardown`.

use std::net::SocketAddr;
use std::time::Duration;

use pbxlab_balancer::{AffinityKey, Assignment, Reject, Request, Role, ServerId};
use pbxlab_proto::builder::{ResponseHeaders, reason_phrase, write_request, write_response};
use pbxlab_proto::sdp::{self, Offer, SessionDescription};
use pbxlab_proto::sip::{HeaderName, Message, Method};
use pbxlab_proto::uri::{NameAddr, SipUri};

use super::auth::{Asker, Attempt, Verdict};
use super::calls::{AState, Call, CallRef, Dialog, Kind, Placement};
use super::services::AGENT_RING_LIMIT;
use super::teardown::Side;
use super::transactions::{Branch, Expiry, Purpose, TxId};

use super::{CallManager, Keyed, Leg, Nanos, STATELESS_TAG, ns, probes, room_key};

/// Calls one source address (not whitelisted, not a node) may hold at once, and of them how
/// many may wait for their ACK. A PBX's phone holds a few calls; a trunk or an SBC in front of
/// the Call Manager is whitelisted.
pub(super) const MAX_CALLS_PER_SOURCE: u32 = 200;
pub(super) const MAX_UNCONFIRMED_PER_SOURCE: u32 = 32;

/// The shortest session interval we accept (RFC 4028 4, Min-SE's default): a caller asking
/// for less gets 422.
const MIN_SE_S: u32 = 90;

/// How long a callee's phone may ring before the call is given up with a 408 (RFC 3261 Timer
/// C, 16.6 step 11: more than 3 minutes). Counted from our INVITE, not restarted by each 1xx.
const RING_LIMIT: Duration = Duration::from_secs(180);

impl CallManager {
    pub(super) fn invite(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let target = msg
            .request_uri()
            .and_then(|u| SipUri::parse(u).ok())
            .and_then(|u| u.user)
            .unwrap_or_default();
        let Some(caller) = self.caller(now, from, msg, "INVITE", target) else {
            return;
        };
        let kind = if let Some(user) = self.registrar.user_number(target) {
            if !self.registrar.is_registered(user, now) {
                self.reply(from, msg, 480, &[]);
                return;
            }
            Kind::User(user)
        } else if target == "echo" {
            Kind::Echo
        } else if let Some(n) = target.strip_prefix("ivr-") {
            if n.parse::<u32>().is_err() {
                self.reply(from, msg, 404, &[]);
                return;
            }
            Kind::Ivr
        } else if let Some(q) = target
            .strip_prefix("queue-")
            .and_then(|q| q.parse::<u32>().ok())
        {
            if q == 0 || q > self.queues.count() {
                self.reply(from, msg, 404, &[]);
                return;
            }
            Kind::Queue(q)
        } else if let Some(room) = target.strip_prefix("meeting-").filter(|r| !r.is_empty()) {
            Kind::Meeting(room_key(room))
        } else {
            self.reply(from, msg, 404, &[]);
            return;
        };
        if self.calls.active() >= self.max_calls {
            self.fail("call limit");
            self.reply(from, msg, 503, &[("Retry-After", "5")]);
            return;
        }
        // One address may hold only so many calls, and fewer still unconfirmed: INVITEs never
        // ACKed once filled the media pool from one source and made us retransmit 200s to
        // whatever address it claimed (a reflector). As Kamailio's pike and dialog limits do.
        if !self.admission.exempt(from, &self.nodes) {
            let s = self.calls.of_source(from.ip());
            if s.unconfirmed >= MAX_UNCONFIRMED_PER_SOURCE || s.calls >= MAX_CALLS_PER_SOURCE {
                self.stats.source_limited += 1;
                self.fail("per-source call limit");
                self.reply(from, msg, 503, &[("Retry-After", "5")]);
                return;
            }
        }
        let session_expires = session_timer(msg);
        if session_expires.is_some_and(|s| s < MIN_SE_S) {
            self.reply(from, msg, 422, &[("Min-SE", "90")]);
            return;
        }
        // No body: a delayed offer (RFC 3261 13.2.1). Our 200 carries the offer and the ACK
        // the answer; the media starts with the ACK.
        let delayed = msg.body().is_empty();
        let offer = match SessionDescription::parse(msg.body()) {
            Ok(offer) => Some(offer),
            Err(_) if delayed => None,
            Err(_) => {
                self.fail("no usable SDP offer");
                self.reply(from, msg, 488, &[]);
                return;
            }
        };
        let role = match kind {
            Kind::User(_) | Kind::Echo => Role::Media,
            Kind::Ivr => Role::Ivr,
            Kind::Queue(_) => Role::Queue,
            Kind::Meeting(_) => Role::Meeting,
        };
        let request = match kind {
            Kind::Queue(q) => Request::keyed(role, AffinityKey(u64::from(q)), 1),
            Kind::Meeting(room) => Request::keyed(role, AffinityKey(room), 1),
            _ => Request::new(role),
        };
        let assignment = match self.balancer.assign(request) {
            Ok(a) => a,
            Err(reject) => {
                self.fail(match reject {
                    Reject::NoCapacity { .. } => "no capacity",
                    _ => "no server in service",
                });
                self.reply(from, msg, 503, &[("Retry-After", "1")]);
                return;
            }
        };
        let Some(node_addr) = self.node_addr(assignment.server) else {
            self.release(now, assignment.session);
            self.reply(from, msg, 500, &[]);
            return;
        };
        // The answer to the caller, made now: it fixes the caller's codec and where its audio
        // goes, and fails early (488) on an offer we cannot take.
        let mut body = Vec::new();
        let media_id = self.calls.peek_media();
        let leg = match &offer {
            Some(offer) => match sdp::write_answer(&mut body, offer, node_addr, media_id, 1) {
                Ok(answer) => Leg {
                    remote: answer.remote,
                    ssrc: offer.audio.and_then(|a| a.ssrc),
                    codec_pt: answer.codec_pt,
                    dtmf_pt: answer.telephone_event_pt,
                },
                Err(_) => {
                    self.release(now, assignment.session);
                    self.fail("no usable SDP offer");
                    self.reply(from, msg, 488, &[]);
                    return;
                }
            },
            None => delayed_offer(&mut body, media_id, node_addr, &kind),
        };
        let media = self.calls.new_media();
        let call = self.calls.next_ref();
        let (index, generation) = call;
        let mac = Keyed::TAG_A.mac(&self.keys.tag, index, generation);
        let local_tag = format!("a{index}x{generation}x{mac:016x}");
        let a_headers = ResponseHeaders::new(msg, Some(&local_tag));
        let remote_uri = msg
            .contact()
            .map(|c| c.uri.to_owned())
            .unwrap_or_else(|| format!("sip:{from}"));
        let call_id = msg.call_id().unwrap_or_default();
        let dialog = Dialog {
            call_id: call_id.to_owned(),
            remote_tag: msg
                .from()
                .and_then(|f| f.tag())
                .unwrap_or_default()
                .to_owned(),
            remote_uri,
            remote_addr: from,
            local_party: format!(
                "{};tag={local_tag}",
                msg.to()
                    .map(|t| t.uri)
                    .map_or_else(String::new, |u| format!("<{u}>"))
            ),
            remote_party: msg.header(HeaderName::From).unwrap_or_default().to_owned(),
            local_cseq: 0,
            sdp_id: media_id,
            sdp_version: 1,
        };
        let placement = Placement {
            server: assignment.server,
            session: assignment.session,
            media,
        };
        let mut c = Call::new(generation);
        c.started = now;
        c.awaiting_answer = delayed;
        c.session_expires_s = session_expires.unwrap_or(0);
        c.refreshed = now;
        c.kind = kind.clone();
        c.a = dialog;
        c.a_leg = leg;
        c.a_direction = offer
            .and_then(|o| o.audio)
            .map_or(sdp::Direction::SendRecv, |a| a.direction);
        c.a_headers = a_headers;
        c.a_invite_cseq = msg.cseq().map_or(0, |c| c.seq);
        c.caller = caller;
        c.media = Some(placement);
        if matches!(kind, Kind::Queue(_)) {
            c.queue = Some(placement);
            c.waiting_since = Some(now);
        }
        self.calls.insert(c);
        self.calls.index_call_id(call_id.to_owned(), call, true);
        self.calls.index_session(assignment.session, call);
        self.stats.calls_total += 1;
        if let Kind::Meeting(room) = kind {
            self.rooms.join(room, assignment.server, true);
        }
        if let Some(u) = caller {
            self.queues.mark_busy(u, true);
        }
        match kind {
            Kind::User(user) => {
                self.reply_in_call(call, 100);
                self.invite_b(now, call, user, assignment);
            }
            // The media, and a queue caller's place in the queue, wait for the ACK's answer.
            _ if delayed => self.answer_a(now, call, &body),
            Kind::Queue(q) => {
                self.answer_a(now, call, &body);
                self.start_media(call, placement);
                self.queues.enqueue(q, call);
                self.dispatch_queues(now);
            }
            _ => {
                self.answer_a(now, call, &body);
                self.start_media(call, placement);
            }
        }
    }

    /// Who places this request, once they have shown it: `Some(Some(user))` for one of our
    /// users who answered our challenge (or the From of a trusted source), `Some(None)` for an
    /// anonymous caller of a public service; `None` when the request has been answered
    /// instead (407, 403).
    ///
    /// As a Kamailio proxy's usual script does (`from_uri==myself` is challenged, and
    /// strangers may only reach local destinations): a request whose From is one of our users
    /// must prove it, whatever it calls; a stranger reaches the public services only, and
    /// anything else (a user, a number we do not have) is challenged, so the answers do not
    /// tell our users' numbers from others.
    pub(super) fn caller(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        msg: &Message<'_>,
        method: &str,
        target: &str,
    ) -> Option<Option<u32>> {
        let from_user = msg
            .from()
            .and_then(|f| f.sip_uri().ok())
            .and_then(|u| u.user)
            .and_then(|u| self.registrar.user_number(u));
        if self.trust.trusted.contains(&from.ip()) || self.node_at.contains_key(&from) {
            return Some(from_user);
        }
        let public = self.registrar.user_number(target).is_none() && self.trust.is_public(target);
        if from_user.is_none() && public {
            return Some(None);
        }
        let attempt = Attempt::of(msg, method, HeaderName::ProxyAuthorization, from);
        let registrar = &self.registrar;
        let verdict = self
            .auth
            .check(now, &attempt, |name| registrar.credentials(name));
        match verdict {
            Verdict::User(user) if from_user == Some(user) => return Some(Some(user)),
            Verdict::User(_) => {
                // Right credentials, someone else's name in From: not theirs to use.
                self.auth.failed();
                self.reply(from, msg, 403, &[]);
            }
            Verdict::Forbidden => self.reply(from, msg, 403, &[]),
            Verdict::Banned => {}
            // The 407's ACK (hop by hop, RFC 3261 17.1.1.3) names no call, or carries our
            // stateless tag once the Call-ID is one: either way it is absorbed.
            Verdict::Challenge { stale } => self.challenge(now, from, msg, Asker::Proxy, stale),
            Verdict::Replay => self.challenge(now, from, msg, Asker::Proxy, true),
        }
        None
    }

    /// Leg B: our INVITE to `user`, offering the node of assignment `a`.
    pub(super) fn invite_b(&mut self, now: Nanos, call: CallRef, user: u32, a: Assignment) {
        let Some(binding) = self.registrar.binding(user).cloned() else {
            self.reject_a(now, call, 480, "callee not registered");
            return;
        };
        let Some(node) = self.node_addr(a.server) else {
            return;
        };
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let domain = &self.domain;
        let caller_party = c.caller.map_or_else(|| "cm".to_owned(), |u| u.to_string());
        let (leg, direction) = (c.a_leg, c.a_direction);
        let ring_limit = if matches!(c.kind, Kind::Queue(_)) {
            AGENT_RING_LIMIT
        } else {
            RING_LIMIT
        };
        let tag_mac = Keyed::TAG_B.mac(&self.keys.tag, call.0, call.1);
        let local_tag = format!("b{}x{}x{tag_mac:016x}", call.0, call.1);
        let id_mac = Keyed::CALL_ID_B.mac(&self.keys.call_id, call.0, call.1);
        let dialog = Dialog {
            call_id: format!("b{}-{}-{id_mac:016x}@cm", call.0, call.1),
            remote_tag: String::new(),
            remote_uri: binding.uri.clone(),
            remote_addr: binding.addr,
            local_party: format!("<sip:{caller_party}@{domain}>;tag={local_tag}"),
            remote_party: format!("<sip:{user}@{domain}>"),
            local_cseq: 1,
            sdp_id: u64::from(call.0),
            sdp_version: 1,
        };
        let tx = self
            .txs
            .open(now, call, Purpose::InviteB, binding.addr, true);
        self.txs.limit_ringing(tx, now + ns(ring_limit));
        let mut body = Vec::new();
        write_sdp(
            &mut body,
            (dialog.sdp_id, dialog.sdp_version),
            node,
            leg,
            direction,
        );
        self.send_invite(tx, &dialog, &body);
        self.calls
            .index_call_id(dialog.call_id.clone(), call, false);
        self.queues.mark_busy(user, true);
        if let Some(c) = self.calls.get_mut(call) {
            c.b = Some(dialog);
            c.b_user = Some(user);
            c.b_invite = Some(tx);
            c.b_answered = false;
            c.b_offered = Some(a.server);
        }
    }

    /// A request inside one of our calls' dialogs (or a retransmitted INVITE).
    pub(super) fn in_call(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        call: CallRef,
        is_a: bool,
        method: Method,
        msg: &Message<'_>,
    ) {
        // The ACK of a 407 (or other refusal) we sent before this Call-ID became a call: it
        // carries the tag of our stateless answers and belongs to no dialog.
        if method == Method::Ack && msg.to().and_then(|t| t.tag()) == Some(STATELESS_TAG) {
            return;
        }
        let first_invite_again =
            method == Method::Invite && is_a && msg.to().and_then(|t| t.tag()).is_none();
        if !first_invite_again && !self.in_dialog(call, is_a, msg) {
            // A request naming the Call-ID but not the dialog's tags (a BYE from elsewhere with
            // made-up tags once ended the call): RFC 3261 12.2.2.
            self.stats.unmatched_in_dialog += 1;
            if method != Method::Ack {
                self.reply(from, msg, 481, &[]);
            }
            return;
        }
        match method {
            Method::Invite if is_a && msg.to().and_then(|t| t.tag()).is_none() => {
                // A retransmission of the first INVITE: repeat our last answer.
                let Some(c) = self.calls.get(call) else {
                    return;
                };
                match c.a_state {
                    AState::Proceeding => self.reply_in_call(call, 100),
                    _ => self.out.push(c.a.remote_addr, &c.a_final),
                }
            }
            Method::Ack if is_a => {
                self.calls.confirm(call);
                self.answer_in_ack(now, call, msg);
            }
            Method::Ack => {}
            Method::Bye => {
                self.reply(from, msg, 200, &[]);
                if let Some(key) = super::teardown::bye_key(msg) {
                    let until = now.saturating_add(self.txs.timer_b());
                    self.ended_byes.remember(key, from, until);
                }
                let abandoned = self
                    .calls
                    .get(call)
                    .is_some_and(|c| c.waiting_since.is_some());
                if abandoned {
                    self.stats.queue_abandoned += 1;
                } else {
                    self.stats.calls_completed += 1;
                }
                self.end(now, call, if is_a { Side::A } else { Side::B });
            }
            Method::Invite => self.reinvited(now, from, call, is_a, msg),
            Method::Cancel if is_a => {
                self.reply(from, msg, 200, &[]);
                if self
                    .calls
                    .get(call)
                    .is_some_and(|c| c.a_state == AState::Proceeding)
                {
                    self.reject_a(now, call, 487, "cancelled");
                }
            }
            Method::Options => self.reply(from, msg, 200, &[]),
            _ => self.reply(from, msg, 501, &[]),
        }
    }

    /// Whether `msg` belongs to the call's dialog with that leg: its From tag is the peer's and
    /// its To tag, when it has one (a CANCEL has none), ours.
    fn in_dialog(&self, call: CallRef, is_a: bool, msg: &Message<'_>) -> bool {
        let Some(d) = self.calls.get(call).and_then(|c| c.dialog(is_a)) else {
            return false;
        };
        let from_tag = msg.from().and_then(|f| f.tag());
        if d.remote_tag.is_empty() || from_tag != Some(d.remote_tag.as_str()) {
            return false;
        }
        let ours = NameAddr::parse(&d.local_party).ok().and_then(|n| n.tag());
        match msg.to().and_then(|t| t.tag()) {
            None => msg.method() == Some(Method::Cancel),
            Some(tag) => ours == Some(tag),
        }
    }

    /// A re-INVITE from a leg: the media stays where it is; the answer names the node's
    /// address again (a new SDP version, as RFC 3264 asks for any change).
    fn reinvited(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        call: CallRef,
        is_a: bool,
        msg: &Message<'_>,
    ) {
        let node = self
            .calls
            .get(call)
            .and_then(|c| c.media)
            .and_then(|p| self.node_addr(p.server));
        let Some(node) = node else {
            self.reply(from, msg, 488, &[]);
            return;
        };
        // No body: the re-INVITE leaves the offer to us (RFC 3261 14.1), as a session-timer
        // refresh may. Ours names the node and the leg's codec again; the answer in the ACK
        // changes nothing, as an answer to a re-INVITE's offer does not.
        let offer = if msg.body().is_empty() {
            None
        } else {
            let Ok(offer) = SessionDescription::parse(msg.body()) else {
                self.reply(from, msg, 488, &[]);
                return;
            };
            Some(offer)
        };
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let leg = if is_a { Some(c.a_leg) } else { c.b_leg };
        let direction = c.direction_towards(is_a);
        let Some(d) = c.dialog_mut(is_a) else {
            return;
        };
        d.sdp_version += 1;
        let (id, version) = (d.sdp_id, d.sdp_version);
        let mut body = Vec::new();
        let written = match (&offer, leg) {
            (Some(offer), _) => sdp::write_answer(&mut body, offer, node, id, version).is_ok(),
            (None, Some(leg)) => {
                write_sdp(&mut body, (id, version), node, leg, direction);
                true
            }
            (None, None) => false,
        };
        if !written {
            self.reply(from, msg, 488, &[]);
            return;
        }
        // A re-INVITE from the caller refreshes its session timer (RFC 4028 7.4), if it has one.
        let mut timer = String::new();
        if let Some(c) = self.calls.get_mut(call)
            && is_a
            && c.session_expires_s > 0
        {
            c.refreshed = now;
            timer = format!("{};refresher=uac", c.session_expires_s);
        }
        let mut headers = vec![
            ("Contact", self.contact.as_str()),
            ("Content-Type", "application/sdp"),
        ];
        if !timer.is_empty() {
            headers.extend([("Session-Expires", timer.as_str()), ("Require", "timer")]);
        }
        write_response(
            &mut self.scratch,
            msg,
            200,
            reason_phrase(200),
            None,
            &headers,
            &body,
        );
        self.out.push(from, &self.scratch);
    }

    /// A response to one of our requests: a probe's, or one of a call's transactions.
    pub(super) fn on_response(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let Some(code) = msg.code() else { return };
        let Some(branch) = msg.top_via().and_then(|v| v.branch) else {
            return;
        };
        if let Some(rest) = branch.strip_prefix(probes::BRANCH) {
            self.probe_response(now, from, rest, code);
            return;
        }
        let id = match self.txs.branch(branch) {
            Branch::Ours(id) => id,
            // The right slot and generation without the MAC: someone guessed (the branches
            // were `{slot}x{generation}` once, easy to walk), or a stale answer from before a
            // restart. Nothing it says counts.
            Branch::Forged => {
                self.stats.responses_forged += 1;
                return;
            }
            Branch::Other => return,
        };
        // An answer counts only from where its request went (a forged 486 from elsewhere once
        // ended a ringing call).
        if self.txs.dest(id).is_some_and(|dest| dest != from) {
            self.stats.responses_foreign += 1;
            return;
        }
        let Some((call, purpose)) = self.txs.on_response(id, code) else {
            // The answer to our CANCEL of a given-up INVITE, on the INVITE's branch: it ends
            // the CANCEL's own transaction, which would otherwise be sent until Timer F.
            if code >= 200 && msg.cseq().is_some_and(|c| c.method == Method::Cancel) {
                if let Some(cancel) = self.calls.cancel_of(id) {
                    self.txs.close(cancel);
                }
                return;
            }
            // A retransmitted 200 to an INVITE whose transaction is over: ACK it again.
            if code >= 200
                && msg.cseq().is_some_and(|c| c.method == Method::Invite)
                && !self.abandoned_answer(now, id, code, msg)
            {
                self.ack_stray(msg);
            }
            return;
        };
        if code < 200 {
            if purpose == Purpose::InviteB && (180..=189).contains(&code) {
                self.reply_in_call(call, 180);
            }
            return;
        }
        match purpose {
            Purpose::InviteB => self.invite_b_final(now, call, code, msg),
            Purpose::ReinviteA | Purpose::ReinviteB => {
                let to_a = purpose == Purpose::ReinviteA;
                self.ack(call, to_a, msg);
                let side = usize::from(!to_a);
                let again = self.calls.get_mut(call).is_some_and(|c| {
                    c.reinviting[side] = false;
                    std::mem::take(&mut c.reinvite_again[side])
                });
                if code >= 300 {
                    self.hang_up(now, call, "re-INVITE refused");
                } else {
                    if again {
                        // The media moved while this one was pending: send where it is now.
                        self.reinvite(now, call, to_a);
                    }
                    self.reinvite_answered(now, call);
                }
            }
            Purpose::ByeA | Purpose::ByeB | Purpose::CancelB => {}
        }
    }

    fn invite_b_final(&mut self, now: Nanos, call: CallRef, code: u16, msg: &Message<'_>) {
        let Some(c) = self.calls.get_mut(call) else {
            // A call that ends closes its ringing INVITE (and CANCELs it), so answers that
            // come later go to `abandoned_answer` instead.
            return;
        };
        c.b_invite = None;
        if code >= 300 {
            // Non-2xx: the ACK belongs to the transaction (same branch, RFC 3261 17.1.1.3).
            self.ack_error(msg);
            if let Some(Kind::Queue(q)) = self.calls.get(call).map(|c| c.kind.clone()) {
                self.agent_failed(now, call, q);
            } else {
                self.reject_a(now, call, code, "callee refused");
            }
            return;
        }
        let leg = SessionDescription::parse(msg.body()).ok().and_then(|sd| {
            let audio = sd.audio?;
            Some(Leg {
                remote: sd.audio_addr()?,
                ssrc: audio.ssrc,
                codec_pt: audio.payload_types.as_slice().first().copied()?,
                dtmf_pt: audio.telephone_event_pt,
            })
        });
        if let Some(b) = self.calls.get_mut(call).and_then(|c| c.b.as_mut()) {
            b.learn_answer(msg);
        }
        self.ack(call, false, msg);
        let Some(leg) = leg else {
            self.hang_up(now, call, "callee answered without usable SDP");
            return;
        };
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        c.b_leg = Some(leg);
        c.b_answered = true;
        if matches!(c.kind, Kind::Queue(_)) {
            self.agent_answered(now, call);
            return;
        }
        let Some(p) = c.media else {
            return;
        };
        if !c.awaiting_answer {
            self.start_media(call, p);
        }
        let Some(node) = self.node_addr(p.server) else {
            return;
        };
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let mut body = Vec::new();
        write_sdp(
            &mut body,
            (c.a.sdp_id, c.a.sdp_version),
            node,
            c.a_leg,
            c.direction_towards(true),
        );
        self.answer_a(now, call, &body);
        self.reinvite_b_if_moved(now, call, p.server);
    }

    /// The caller's ACK, when our 200 made the offer (a delayed offer): its SDP is the answer
    /// (RFC 3264 5), which fixes where the caller's audio goes, and the media starts. An ACK
    /// without a usable answer ends the call with a BYE (RFC 3261 13.3.1.4 leaves the dialog
    /// up, but with no media agreed it is good for nothing).
    fn answer_in_ack(&mut self, now: Nanos, call: CallRef, msg: &Message<'_>) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        if !c.awaiting_answer {
            return;
        }
        c.awaiting_answer = false;
        // The answer must take a codec we offered: the caller's own, for a user's call (the
        // node relays unchanged), PCMU or PCMA otherwise.
        let offered: &[u8] = if matches!(c.kind, Kind::User(_)) {
            &[c.a_leg.codec_pt]
        } else {
            &[sdp::PT_PCMU, sdp::PT_PCMA]
        };
        let leg = SessionDescription::parse(msg.body()).ok().and_then(|sd| {
            let audio = sd.audio?;
            Some(Leg {
                remote: sd.audio_addr()?,
                ssrc: audio.ssrc,
                codec_pt: audio
                    .payload_types
                    .as_slice()
                    .iter()
                    .copied()
                    .find(|pt| offered.contains(pt))?,
                dtmf_pt: audio.telephone_event_pt,
            })
        });
        let Some(leg) = leg else {
            self.hang_up(now, call, "no usable SDP answer in the ACK");
            return;
        };
        c.a_leg = leg;
        let (kind, media) = (c.kind.clone(), c.media);
        let Some(p) = media else {
            return;
        };
        match kind {
            // Leg B not answered yet is impossible here (our 200 follows B's), but then its
            // answer starts the relay as usual.
            Kind::User(_) if c.b_leg.is_none() => {}
            Kind::Queue(q) => {
                self.start_media(call, p);
                self.queues.enqueue(q, call);
                self.dispatch_queues(now);
            }
            _ => self.start_media(call, p),
        }
    }

    /// ACK for a 2xx: a new transaction-less request to the remote target.
    fn ack(&mut self, call: CallRef, to_a: bool, msg: &Message<'_>) {
        let seq = msg.cseq().map_or(1, |c| c.seq);
        let via = self.ack_via(call, seq);
        let Some(d) = self.calls.get(call).and_then(|c| c.dialog(to_a)) else {
            return;
        };
        d.write_request(&mut self.scratch, Method::Ack, &via, seq, &[], b"");
        self.out.push(d.remote_addr, &self.scratch);
    }

    /// The Via of our ACK for a 2xx to the INVITE with CSeq `seq` in `call`: an ACK for a 2xx
    /// is a transaction of its own (RFC 3261 13.2.2.4), so its branch is new, and keyed.
    fn ack_via(&self, call: CallRef, seq: u32) -> String {
        let (slot, generation, seq) = (
            call.0.to_be_bytes(),
            call.1.to_be_bytes(),
            seq.to_be_bytes(),
        );
        let mac = self.keys.branch.mac64(&[b"ack", &slot, &generation, &seq]);
        format!("SIP/2.0/UDP {};branch=z9hG4bKk{mac:016x}", self.addr)
    }

    /// A final answer to a leg B INVITE given up while it rang (the call is over or moved on
    /// to another agent): a non-2xx gets its ACK; a 2xx made a dialog nobody wants, so it
    /// gets an ACK and, the first time, a BYE (RFC 3261 13.2.2.4, 15). False when `id` is no
    /// such INVITE.
    fn abandoned_answer(&mut self, now: Nanos, id: TxId, code: u16, msg: &Message<'_>) -> bool {
        let Some((call, mut d, first)) = self.calls.abandoned_answer(now, id, code < 300) else {
            return false;
        };
        if code >= 300 {
            self.ack_error_to(d.remote_addr, msg);
            return true;
        }
        d.learn_answer(msg);
        let seq = msg.cseq().map_or(1, |c| c.seq);
        let via = self.ack_via(call, seq);
        d.write_request(&mut self.scratch, Method::Ack, &via, seq, &[], b"");
        self.out.push(d.remote_addr, &self.scratch);
        if first {
            d.local_cseq = seq + 1;
            let tx = self
                .txs
                .open(now, call, Purpose::ByeB, d.remote_addr, false);
            let via = self.txs.via(tx, self.addr);
            d.write_request(&mut self.scratch, Method::Bye, &via, d.local_cseq, &[], b"");
            self.txs.send(tx, &self.scratch, &mut self.out);
        }
        true
    }

    /// ACK for a non-2xx final response, built from the response itself.
    fn ack_error(&mut self, msg: &Message<'_>) {
        if let Some(dest) = msg.call_id().and_then(|id| self.calls.peer_of(id)) {
            self.ack_error_to(dest, msg);
        }
    }

    /// ACK for a non-2xx final response to `dest`, built from the response itself: same
    /// branch as the INVITE, part of its transaction (RFC 3261 17.1.1.3).
    fn ack_error_to(&mut self, dest: SocketAddr, msg: &Message<'_>) {
        let (Some(via), Some(cseq)) = (msg.header(HeaderName::Via), msg.cseq()) else {
            return;
        };
        let uri = msg.to().map(|t| t.uri).unwrap_or("sip:invalid");
        self.ack_from(msg, uri, via, cseq.seq);
        self.out.push(dest, &self.scratch);
    }

    /// ACK for a 2xx whose transaction is over (the 200 came again), built from the 200.
    fn ack_stray(&mut self, msg: &Message<'_>) {
        let Some(dest) = msg.call_id().and_then(|id| self.calls.peer_of(id)) else {
            return;
        };
        let uri = msg.contact().map(|c| c.uri).unwrap_or("sip:invalid");
        let seq = msg.cseq().map_or(1, |c| c.seq);
        let call_id = msg.call_id().unwrap_or_default().as_bytes();
        let mac = self
            .keys
            .branch
            .mac64(&[b"stray ack", call_id, &seq.to_be_bytes()]);
        let via = format!("SIP/2.0/UDP {};branch=z9hG4bKs{mac:016x}", self.addr);
        self.ack_from(msg, uri, &via, seq);
        self.out.push(dest, &self.scratch);
    }

    /// Renders an ACK to `uri` that takes From, To and Call-ID from the response `msg`.
    fn ack_from(&mut self, msg: &Message<'_>, uri: &str, via: &str, seq: u32) {
        let cseq = format!("{seq} ACK");
        write_request(
            &mut self.scratch,
            "ACK",
            uri,
            &[
                ("Via", via),
                ("Max-Forwards", "70"),
                ("From", msg.header(HeaderName::From).unwrap_or_default()),
                ("To", msg.header(HeaderName::To).unwrap_or_default()),
                ("Call-ID", msg.call_id().unwrap_or_default()),
                ("CSeq", &cseq),
            ],
            b"",
        );
    }

    /// A response to A's INVITE without a body: a provisional one, or an error.
    pub(super) fn reply_in_call(&mut self, call: CallRef, code: u16) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        c.a_headers
            .write(&mut self.scratch, code, reason_phrase(code), &[], b"");
        self.out.push(c.a.remote_addr, &self.scratch);
    }

    /// The 200 OK for A's INVITE, retransmitted until the ACK comes.
    fn answer_a(&mut self, now: Nanos, call: CallRef, body: &[u8]) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        // The session timer starts with the 2xx (RFC 4028 7.2), not while the callee rang.
        c.refreshed = now;
        let c = &*c;
        let mut bytes = Vec::new();
        let timer = format!("{};refresher=uac", c.session_expires_s);
        let mut headers = vec![
            ("Contact", self.contact.as_str()),
            ("Content-Type", "application/sdp"),
        ];
        if c.session_expires_s > 0 {
            headers.extend([("Session-Expires", timer.as_str()), ("Require", "timer")]);
        }
        c.a_headers
            .write(&mut bytes, 200, reason_phrase(200), &headers, body);
        self.calls.answer(now, call, bytes, &mut self.out);
    }

    /// Runs A's 200 retransmission timer; no ACK in time ends the call.
    pub(super) fn call_timer(&mut self, now: Nanos, call: CallRef) {
        if self.calls.fire(now, call, &mut self.out) {
            // No ACK for our 200 (RFC 3261 13.3.1.4): the call is over.
            self.hang_up(now, call, "no ACK");
        }
    }

    /// Runs a transaction's timer; one that timed out, or a phone that rang too long, ends
    /// what it was for. An agent who does not answer is skipped and the caller waits again.
    pub(super) fn tx_timer(&mut self, now: Nanos, id: TxId) {
        let Some((call, purpose, expiry)) = self.txs.fire(now, id, &mut self.out) else {
            return;
        };
        match purpose {
            Purpose::InviteB => {
                let rang_out = expiry == Expiry::RingLimit;
                if rang_out {
                    self.cancel_b(now, call, id);
                }
                if let Some(c) = self.calls.get_mut(call) {
                    c.b_invite = None;
                }
                if let Some(Kind::Queue(q)) = self.calls.get(call).map(|c| c.kind.clone()) {
                    self.agent_failed(now, call, q);
                } else if rang_out {
                    self.reject_a(now, call, 408, "no answer");
                } else {
                    self.reject_a(now, call, 408, "callee timeout");
                }
            }
            Purpose::ReinviteA | Purpose::ReinviteB => {
                if expiry == Expiry::RingLimit {
                    self.txs.close(id);
                }
                self.hang_up(now, call, "re-INVITE timeout");
            }
            Purpose::ByeA | Purpose::ByeB | Purpose::CancelB => {}
        }
    }

    /// Re-INVITEs every established leg so its audio goes to the call's current node.
    pub(super) fn reinvite_legs(&mut self, now: Nanos, call: CallRef) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let b = c.b_answered;
        if c.a_state != AState::Proceeding {
            self.reinvite(now, call, true);
        }
        if b {
            self.reinvite(now, call, false);
        }
    }

    pub(super) fn reinvite(&mut self, now: Nanos, call: CallRef, to_a: bool) {
        let Some(node) = self
            .calls
            .get(call)
            .and_then(|c| c.media)
            .and_then(|p| self.node_addr(p.server))
        else {
            return;
        };
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        #[cfg(test)]
        if to_a && c.moved_at.is_some() && self.skip_failover_reinvites > 0 {
            self.skip_failover_reinvites -= 1;
            return;
        }
        let leg = if to_a { Some(c.a_leg) } else { c.b_leg };
        let Some(leg) = leg else { return };
        let direction = c.direction_towards(to_a);
        let side = usize::from(!to_a);
        if c.reinviting[side] {
            c.reinvite_again[side] = true;
            return;
        }
        c.reinviting[side] = true;
        let Some(d) = c.dialog_mut(to_a) else {
            return;
        };
        d.local_cseq += 1;
        d.sdp_version += 1;
        let d = d.clone();
        if c.moved_at.is_some() {
            c.reinvites_open += 1;
        }
        let purpose = if to_a {
            Purpose::ReinviteA
        } else {
            Purpose::ReinviteB
        };
        let tx = self.txs.open(now, call, purpose, d.remote_addr, true);
        // A re-INVITE that gets a 1xx and then nothing is given up like one that gets nothing
        // at all, after Timer B: otherwise its slot is held forever, and the dialog, which
        // takes one INVITE at a time, never moves again.
        let limit = now + self.txs.timer_b();
        self.txs.limit_ringing(tx, limit);
        let mut body = Vec::new();
        write_sdp(&mut body, (d.sdp_id, d.sdp_version), node, leg, direction);
        self.send_invite(tx, &d, &body);
    }

    /// An INVITE (first or re-) in dialog `d` with CSeq `d.local_cseq`, as transaction `tx`.
    fn send_invite(&mut self, tx: TxId, d: &Dialog, body: &[u8]) {
        d.write_request(
            &mut self.scratch,
            Method::Invite,
            &self.txs.via(tx, self.addr),
            d.local_cseq,
            &[
                ("Contact", &self.contact),
                ("Content-Type", "application/sdp"),
            ],
            body,
        );
        self.txs.send(tx, &self.scratch, &mut self.out);
    }

    /// Re-INVITEs leg B, just answered, when its media is no longer on the node our INVITE
    /// named (a failover moved it while B rang); otherwise B would send its audio to the
    /// failed node for the whole call.
    pub(super) fn reinvite_b_if_moved(&mut self, now: Nanos, call: CallRef, server: ServerId) {
        if self
            .calls
            .get(call)
            .is_some_and(|c| c.b_offered.is_some_and(|s| s != server))
        {
            self.reinvite(now, call, false);
        }
    }
}

/// The session interval an INVITE asks for (RFC 4028 `Session-Expires`, compact `x`), when
/// its sender can refresh it (`Supported: timer`): we take the interval with the caller as
/// refresher and end the call if no re-INVITE refreshes it. A caller that does not support
/// timers (a proxy added the header) gets none; the longest call still bounds its call.
fn session_timer(msg: &Message<'_>) -> Option<u32> {
    let supported = msg
        .values(HeaderName::Supported)
        .any(|v| v.eq_ignore_ascii_case("timer"));
    let value = msg
        .headers()
        .iter()
        .find(|h| {
            h.raw_name.eq_ignore_ascii_case("Session-Expires")
                || h.raw_name.eq_ignore_ascii_case("x")
        })?
        .value;
    let seconds = value.split(';').next()?.trim().parse::<u32>().ok()?;
    supported.then_some(seconds)
}

/// Our offer in the 200 to a caller's INVITE without SDP, naming the node; the leg it returns
/// stands in for the caller's until the ACK's answer replaces it. A user's call offers the
/// callee (and then the caller) PCMU, so both legs agree on one codec the node relays
/// unchanged; a service offers PCMU and PCMA and takes the caller's pick.
fn delayed_offer(out: &mut Vec<u8>, session_id: u64, node: SocketAddr, kind: &Kind) -> Leg {
    let leg = Leg {
        remote: SocketAddr::from(([0, 0, 0, 0], 0)),
        ssrc: None,
        codec_pt: sdp::PT_PCMU,
        dtmf_pt: Some(sdp::PT_TELEPHONE_EVENT),
    };
    let payload_types = if matches!(kind, Kind::User(_)) {
        vec![sdp::PT_PCMU]
    } else {
        vec![sdp::PT_PCMU, sdp::PT_PCMA]
    };
    sdp::write_offer(
        out,
        &Offer {
            session_id,
            version: 1,
            addr: node,
            payload_types,
            telephone_event: true,
            ptime_ms: 20,
            ssrc: None,
            direction: sdp::Direction::SendRecv,
        },
    );
    leg
}

/// SDP naming `node` as the audio address, with the leg's codec (and telephone-event), `o=`'s
/// session id and version, and `direction`.
fn write_sdp(
    out: &mut Vec<u8>,
    (session_id, version): (u64, u64),
    node: SocketAddr,
    leg: Leg,
    direction: sdp::Direction,
) {
    sdp::write_offer(
        out,
        &Offer {
            session_id,
            version,
            addr: node,
            payload_types: vec![leg.codec_pt],
            telephone_event: leg.dtmf_pt.is_some(),
            ptime_ms: 20,
            ssrc: None,
            direction,
        },
    );
}
