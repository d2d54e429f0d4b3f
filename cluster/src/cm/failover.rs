//! Carrying out what the balancer decided, after a failed probe or an operator's action: moved
//! sessions re-anchored on their new node, dropped ones ended; and the records a drill reads
//! back (how long each move took, which calls were dropped and why).

use std::time::Duration;

use pbxlab_balancer::{Event, EventKind, Outcome, Reject, ServerId, SessionId};

use super::calls::{CallRef, Kind, Placement};
use pbxlab_scenario::Verb;

use super::{CallManager, Nanos};

/// The most reassignment and drop records kept for a report; later ones are counted only.
const MAX_RECORDS: usize = 1 << 20;

/// A verb the Call Manager cannot carry out itself: it acts on a server's process, which the
/// Call Manager learns of only through the probes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("{0} acts on the server's process; the Call Manager learns of it by its probes")]
    NotMine(Verb),
    #[error(transparent)]
    Balancer(#[from] pbxlab_balancer::Error),
}

/// One call whose media a failover or an operator moved: when, and how long until every leg
/// had accepted the new node (re-INVITE answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reassigned {
    pub at: Nanos,
    pub took: Nanos,
}

/// A call the cluster ended because its session could not be placed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedCall {
    pub at: Nanos,
    /// The caller's Call-ID (leg A), as the caller's logs know it.
    pub call_id: String,
    /// The server the session was on.
    pub server: ServerId,
    pub reason: &'static str,
}

/// Moved and dropped calls since a report last took them, each list bounded.
#[derive(Debug, Clone, Default)]
pub(super) struct Records {
    reassigned: Vec<Reassigned>,
    dropped: Vec<DroppedCall>,
}

impl Records {
    fn reassigned(&mut self, at: Nanos, now: Nanos) {
        if self.reassigned.len() < MAX_RECORDS {
            self.reassigned.push(Reassigned {
                at,
                took: now.saturating_sub(at),
            });
        }
    }

    fn dropped(&mut self, at: Nanos, call_id: &str, server: ServerId, reason: &'static str) {
        if self.dropped.len() < MAX_RECORDS {
            self.dropped.push(DroppedCall {
                at,
                call_id: call_id.to_owned(),
                server,
                reason,
            });
        }
    }
}

impl CallManager {
    /// Calls whose media was moved and re-INVITEd since the last call, with how long it took.
    pub fn take_reassigned(&mut self) -> Vec<Reassigned> {
        std::mem::take(&mut self.records.reassigned)
    }

    /// Calls ended because failover found no place for them, since the last call.
    pub fn take_dropped_calls(&mut self) -> Vec<DroppedCall> {
        std::mem::take(&mut self.records.dropped)
    }

    /// Carries out an operator's action on `server`: the balancer decides, and moved sessions
    /// are re-anchored (node commands and re-INVITEs) as after a failed probe.
    pub fn admin(&mut self, now: Nanos, server: ServerId, verb: Verb) -> Result<(), AdminError> {
        let at = Duration::from_nanos(now);
        let outcome = match verb {
            // Told rather than probed: down at once, its sessions move.
            Verb::Fail | Verb::Stop | Verb::Restart => self.balancer.fail(at, server)?,
            // An upgrade starts by taking the server out of service.
            Verb::Disable | Verb::Upgrade => self.balancer.disable(at, server)?,
            Verb::Enable => self.balancer.enable(at, server)?,
            Verb::Drain => self.balancer.drain(at, server)?,
            Verb::Remove => self.balancer.remove_server(at, server)?,
            Verb::Partition | Verb::Heal | Verb::Recover => return Err(AdminError::NotMine(verb)),
        };
        self.apply(now, outcome);
        Ok(())
    }

    /// Carries out what the balancer decided: moved sessions are re-anchored on their new
    /// node (node command plus re-INVITEs), dropped ones are ended.
    pub fn apply(&mut self, now: Nanos, outcome: Outcome) {
        for m in outcome.plan.moves {
            self.stats.moved += 1;
            if let Some(call) = self.calls.by_session(m.session) {
                self.reanchor(now, call, m.session, m.to);
            }
        }
        for d in outcome.plan.dropped {
            self.stats.dropped += 1;
            let Some(call) = self.calls.forget_session(d.session) else {
                continue;
            };
            // A queue session whose caller already talks to an agent through a media node
            // is only accounting: losing it costs the call nothing.
            if let Some(c) = self.calls.get_mut(call)
                && c.queue.is_some_and(|p| p.session == d.session)
                && c.media.is_some_and(|p| p.session != d.session)
            {
                c.queue = None;
                continue;
            }
            let reason = match d.reason {
                Reject::NoCapacity { .. } => "failover: no capacity",
                _ => "failover: no server in service",
            };
            let mut media = None;
            if let Some(c) = self.calls.get_mut(call) {
                self.records.dropped(now, &c.a.call_id, d.from, reason);
                // The balancer has forgotten the session already; the node is told to let
                // its media go (a node still alive, drained or disabled, would keep it).
                if c.media.is_some_and(|p| p.session == d.session) {
                    media = c.media.take();
                }
                if c.queue.is_some_and(|p| p.session == d.session) {
                    c.queue = None;
                }
            }
            if let Some(p) = media {
                self.end_media(p);
            }
            self.hang_up(now, call, reason);
        }
        self.events.extend(outcome.events);
    }

    /// Moves `call`'s `session` to server `to`: a fresh media session there, the old one
    /// ended, and every established leg re-INVITEd towards it.
    fn reanchor(&mut self, now: Nanos, call: CallRef, session: SessionId, to: ServerId) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        if let Some(a) = c.agent_media.as_mut().filter(|a| a.session == session) {
            // Media for an agent who is still ringing: nothing runs on the node yet. The agent
            // was offered the old node, so it is re-INVITEd when it answers (`b_offered`).
            a.server = to;
            c.moved_at.get_or_insert(now);
            return;
        }
        if c.queue.is_some_and(|p| p.session == session)
            && c.media.is_none_or(|p| p.session != session)
        {
            // A queue session whose caller already talks to an agent: only the accounting moved.
            if let Some(q) = c.queue.as_mut() {
                q.server = to;
            }
            return;
        }
        let Some(old) = c.media.filter(|p| p.session == session) else {
            return;
        };
        let placement = Placement {
            server: to,
            session,
            media: self.calls.new_media(),
        };
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        c.media = Some(placement);
        if c.queue.is_some_and(|p| p.session == session) {
            c.queue = Some(placement);
        }
        // A second move before the first finished counts from the first.
        c.moved_at.get_or_insert(now);
        if let Kind::Meeting(room) = c.kind {
            self.rooms.leave(room, old.server);
            self.rooms.join(room, to, false);
        }
        self.end_media(old);
        self.start_media(call, placement);
        self.reinvite_legs(now, call);
    }

    /// One leg answered its re-INVITE; when it was the last of a move, the move is recorded.
    pub(super) fn reinvite_answered(&mut self, now: Nanos, call: CallRef) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        c.reinvites_open = c.reinvites_open.saturating_sub(1);
        if c.reinvites_open > 0 {
            return;
        }
        if let Some(at) = c.moved_at.take() {
            self.records.reassigned(at, now);
        }
    }

    /// Gives a session back to the balancer. The last session of a draining server ending
    /// is what tells an operator that server can be stopped, so it becomes a `Drained` event.
    pub(super) fn release(&mut self, now: Nanos, session: SessionId) {
        if let Ok(r) = self.balancer.release(session)
            && r.drained
        {
            self.events.push(Event {
                at: Duration::from_nanos(now),
                server: r.server,
                kind: EventKind::Drained,
            });
        }
    }
}
