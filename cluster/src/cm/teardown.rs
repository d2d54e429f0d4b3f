//! The ways a call ends: an error to a caller whose call never connected, a BYE to each leg
//! that is up and a CANCEL to one still ringing, and forgetting the call in every part that
//! knew it (sessions released, node sessions ended, queue and room left, users freed).

use pbxlab_proto::sip::Method;

use super::calls::{AState, CallRef, Kind};
use super::transactions::{Purpose, TxId};
use super::{CallManager, Nanos};

/// Which leg ended a call by its own BYE, so it is not sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    A,
    B,
    Neither,
}

impl CallManager {
    /// Ends A's INVITE with an error (the call never connected).
    pub(super) fn reject_a(&mut self, now: Nanos, call: CallRef, code: u16, why: &'static str) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        if c.a_state != AState::Proceeding {
            self.hang_up(now, call, why);
            return;
        }
        let ringing = c.b_invite;
        self.fail(why);
        self.reply_in_call(call, code);
        // A callee still ringing must stop (RFC 3261 9.1); without the CANCEL it could answer
        // a call that is gone (a caller's CANCEL, a failover that found no node for the media).
        if let Some(tx) = ringing {
            self.cancel_b(now, call, tx);
        }
        self.cleanup(now, call);
    }

    /// Ends an established (or half-established) call from our side: BYE to every leg that is
    /// up, CANCEL to one still ringing.
    pub(super) fn hang_up(&mut self, now: Nanos, call: CallRef, why: &'static str) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        if c.a_state == AState::Proceeding {
            self.reject_a(now, call, 500, why);
            return;
        }
        self.fail(why);
        self.end(now, call, Side::Neither);
    }

    /// Ends every call older than the longest call, or whose caller asked for a session
    /// timer (RFC 4028) and did not refresh it: BYE to each leg, media session ended. A call
    /// whose parties never hang up, or that was made only to aim a node's media somewhere,
    /// ends. Run with the once-a-second sweep, so a call lasts at most a second longer.
    pub(super) fn end_overlong_calls(&mut self, now: Nanos) {
        for call in self.calls.due_to_end(now, self.max_call) {
            let expired = self.calls.get(call).is_some_and(|c| {
                c.session_expires_s > 0
                    && (self.max_call == 0 || now.saturating_sub(c.started) < self.max_call)
            });
            let why = if expired {
                "session timer expired"
            } else {
                "longest call reached"
            };
            self.hang_up(now, call, why);
        }
    }

    pub(super) fn end(&mut self, now: Nanos, call: CallRef, hung_up: Side) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let (b_up, b_ringing) = (c.b_answered, c.b_invite);
        if hung_up != Side::A && c.a_state != AState::Proceeding {
            self.bye(now, call, true);
        }
        if hung_up != Side::B {
            if b_up {
                self.bye(now, call, false);
            } else if let Some(tx) = b_ringing {
                self.cancel_b(now, call, tx);
            }
        }
        self.cleanup(now, call);
    }

    fn bye(&mut self, now: Nanos, call: CallRef, to_a: bool) {
        let Some(d) = self.calls.get_mut(call).and_then(|c| c.dialog_mut(to_a)) else {
            return;
        };
        d.local_cseq += 1;
        let purpose = if to_a { Purpose::ByeA } else { Purpose::ByeB };
        let tx = self.txs.open(now, call, purpose, d.remote_addr, false);
        let via = self.txs.via(tx, self.addr);
        d.write_request(&mut self.scratch, Method::Bye, &via, d.local_cseq, &[], b"");
        self.txs.send(tx, &self.scratch, &mut self.out);
    }

    pub(super) fn cancel_b(&mut self, now: Nanos, call: CallRef, invite: TxId) {
        if !self.txs.is_open(invite) {
            return;
        }
        self.txs.close(invite);
        let Some(d) = self.calls.get(call).and_then(|c| c.b.clone()) else {
            return;
        };
        let tx = self
            .txs
            .open(now, call, Purpose::CancelB, d.remote_addr, false);
        // The INVITE's Via, branch and all, and its CSeq number (RFC 3261 9.1). Answers come
        // back on that branch, which no longer names a live transaction: the abandoned
        // INVITE's record below leads them to this one.
        let via = self.txs.via(invite, self.addr);
        d.write_request(&mut self.scratch, Method::Cancel, &via, 1, &[], b"");
        self.txs.send(tx, &self.scratch, &mut self.out);
        // The callee may have answered already; its answer must still be ACKed.
        self.calls.abandon(now, invite, Some(tx), call, d);
    }

    /// Forgets a call: node sessions ended, balancer sessions released, users freed.
    fn cleanup(&mut self, now: Nanos, call: CallRef) {
        let Some(c) = self.calls.remove(call) else {
            return;
        };
        if let Some(tx) = c.b_invite {
            self.txs.close(tx);
        }
        if let Some(a) = c.agent_media {
            self.calls.forget_session(a.session);
            self.release(now, a.session);
        }
        self.calls.forget_call_id(&c.a.call_id);
        if let Some(b) = &c.b {
            self.calls.forget_call_id(&b.call_id);
        }
        if let Some(p) = c.media {
            self.calls.forget_session(p.session);
            self.release(now, p.session);
        }
        if let Some(q) = c.queue
            && c.media.is_none_or(|m| m.session != q.session)
        {
            self.calls.forget_session(q.session);
            self.release(now, q.session);
        }
        if let Some(p) = c.media {
            self.end_media(p);
        }
        if let Some(q) = c.queue
            && c.media.is_none_or(|m| m.media != q.media)
        {
            self.end_media(q);
        }
        if let (Kind::Meeting(room), Some(p)) = (&c.kind, c.media) {
            self.rooms.leave(*room, p.server);
        }
        if let Kind::Queue(q) = c.kind {
            self.queues.leave(q, call);
        }
        if let Some(u) = c.caller {
            self.queues.mark_busy(u, false);
        }
        let freed_agent = c.b_user;
        if let Some(u) = freed_agent {
            self.queues.mark_busy(u, false);
        }
        if freed_agent.is_some_and(|u| self.queues.is_agent(u).is_some()) {
            self.dispatch_queues(now);
        }
    }
}

/// The BYEs that ended calls, kept for as long as their sender may send them again (Timer J,
/// 64 x T1): a retransmitted BYE, whose 200 was lost (on the way, or in a Call Manager
/// takeover), is answered 200 again rather than 481 for a dialog it ended itself. Keyed by
/// Call-ID, From tag and CSeq, and only for the address the BYE came from; bounded.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
pub(super) struct EndedByes {
    by_key: std::collections::HashMap<(String, String, u32), (std::net::SocketAddr, Nanos)>,
    order: std::collections::VecDeque<(Nanos, (String, String, u32))>,
}

/// BYEs remembered at once; beyond, the oldest is forgotten early (its retransmission then
/// gets a 481, as before).
const MAX_ENDED_BYES: usize = 65_536;

impl EndedByes {
    pub(super) fn remember(
        &mut self,
        key: (String, String, u32),
        from: std::net::SocketAddr,
        until: Nanos,
    ) {
        if self.order.len() >= MAX_ENDED_BYES
            && let Some((_, old)) = self.order.pop_front()
        {
            self.by_key.remove(&old);
        }
        self.by_key.insert(key.clone(), (from, until));
        self.order.push_back((until, key));
    }

    /// The Call-IDs of the calls these BYEs ended that are still kept at `now`.
    pub(super) fn call_ids(&self, now: Nanos) -> impl Iterator<Item = &str> {
        self.by_key
            .iter()
            .filter(move |(_, (_, until))| *until > now)
            .map(|((id, _, _), _)| id.as_str())
    }

    /// Whether this BYE, from `from`, already ended a call and may be a retransmission.
    pub(super) fn seen(
        &mut self,
        key: &(String, String, u32),
        from: std::net::SocketAddr,
        now: Nanos,
    ) -> bool {
        while let Some((until, _)) = self.order.front() {
            if *until > now {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
        self.by_key
            .get(key)
            .is_some_and(|&(addr, until)| addr == from && until > now)
    }
}

/// A BYE's key in [`EndedByes`].
pub(super) fn bye_key(msg: &pbxlab_proto::sip::Message<'_>) -> Option<(String, String, u32)> {
    Some((
        msg.call_id()?.to_owned(),
        msg.from()?.tag()?.to_owned(),
        msg.cseq()?.seq,
    ))
}
