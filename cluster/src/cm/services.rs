//! The services a call can reach besides another user: the IVR (its sessions, to route digits
//! back), queues and their agents (who waits, who is idle, who is skipped for a while), meeting
//! rooms (which node holds each room's participants); and what each kind of call asks its
//! node to do with the audio.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use pbxlab_balancer::{AffinityKey, Request, Role, ServerId};

use super::calls::{CallRef, Kind, Placement};
use super::registrar::Registrar;
use super::teardown::Side;
use super::{CallManager, Config, MediaSession, Nanos, NodeCommand, NodeEvent, Stats, ns};

/// How long an agent that did not answer is skipped.
const AGENT_RETRY: Duration = Duration::from_secs(5);

/// How long an agent's phone may ring before it is CANCELled and the caller offered to the
/// next agent: an ACD's "no answer" time, far shorter than a callee's ring limit.
pub(super) const AGENT_RING_LIMIT: Duration = Duration::from_secs(30);

/// IVR sessions, to route digits back to their calls.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
pub(super) struct Ivr {
    sessions: HashMap<MediaSession, CallRef>,
}

/// Callers waiting in each queue and the agents who serve them.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub(super) struct Queues {
    first_user: u32,
    agents_per_queue: u32,
    /// Per queue, first come first served.
    waiting: Vec<VecDeque<CallRef>>,
    /// Per queue, the agent the next search for an idle one starts from (round robin).
    cursor: Vec<u32>,
    /// Agents who did not answer, skipped until then.
    retry_at: HashMap<u32, Nanos>,
    /// Calls each of our users is in now: an agent is offered a caller only when idle, and
    /// an agent may be on a call of its own.
    busy: Vec<u16>,
}

/// Participants of each meeting room per node, and whether the balancer's affinity kept each
/// room on one node.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
pub(super) struct Rooms {
    nodes: HashMap<u64, Vec<(ServerId, u32)>>,
    seen: u64,
    joins: u64,
    split_joins: u64,
    largest: u32,
}

impl Queues {
    pub(super) fn new(cfg: &Config) -> Queues {
        let queues = cfg.queues as usize;
        Queues {
            first_user: cfg.first_user,
            agents_per_queue: cfg.agents_per_queue,
            waiting: vec![VecDeque::new(); queues],
            cursor: vec![0; queues],
            retry_at: HashMap::new(),
            busy: vec![0; cfg.users as usize],
        }
    }

    /// How many queues there are: `queue-1..=queue-{count}`.
    pub(super) fn count(&self) -> u32 {
        self.waiting.len() as u32
    }

    /// Callers waiting in all queues.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.iter().map(VecDeque::len).sum()
    }

    fn queue_mut(&mut self, q: u32) -> Option<&mut VecDeque<CallRef>> {
        let i = q.checked_sub(1)?;
        self.waiting.get_mut(i as usize)
    }

    /// The queue `user` is an agent of.
    pub(super) fn is_agent(&self, user: u32) -> Option<u32> {
        let per = self.agents_per_queue;
        if per == 0 {
            return None;
        }
        let k = user.checked_sub(self.first_user)?;
        let q = k / per + 1;
        (q <= self.count()).then_some(q)
    }

    /// `user` is in one more call (or one fewer).
    pub(super) fn mark_busy(&mut self, user: u32, busy: bool) {
        let Some(k) = user.checked_sub(self.first_user) else {
            return;
        };
        if let Some(b) = self.busy.get_mut(k as usize) {
            *b = if busy {
                b.saturating_add(1)
            } else {
                b.saturating_sub(1)
            };
        }
    }

    /// A caller joins the end of queue `q`.
    pub(super) fn enqueue(&mut self, q: u32, call: CallRef) {
        if let Some(queue) = self.queue_mut(q) {
            queue.push_back(call);
        }
    }

    /// A caller goes back to the head of queue `q`: its agent could not be reached.
    pub(super) fn requeue(&mut self, q: u32, call: CallRef) {
        if let Some(queue) = self.queue_mut(q) {
            queue.push_front(call);
        }
    }

    pub(super) fn leave(&mut self, q: u32, call: CallRef) {
        if let Some(queue) = self.queue_mut(q) {
            queue.retain(|&r| r != call);
        }
    }

    /// Callers waiting in queue `q`.
    fn len(&mut self, q: u32) -> usize {
        self.queue_mut(q).map_or(0, |queue| queue.len())
    }

    fn front(&mut self, q: u32) -> Option<CallRef> {
        self.queue_mut(q)?.front().copied()
    }

    fn pop_front(&mut self, q: u32) {
        if let Some(queue) = self.queue_mut(q) {
            queue.pop_front();
        }
    }

    /// An agent who did not answer: no longer busy, and skipped for [`AGENT_RETRY`].
    fn agent_failed(&mut self, now: Nanos, user: u32) {
        self.mark_busy(user, false);
        self.retry_at.insert(user, now + ns(AGENT_RETRY));
    }

    /// The next idle, registered agent of queue `q` after the last one offered a caller.
    fn free_agent(&mut self, now: Nanos, q: u32, registrar: &Registrar) -> Option<u32> {
        let per = self.agents_per_queue;
        let first = self.first_user + (q - 1) * per;
        let slot = q as usize - 1;
        let cursor = self.cursor.get(slot).copied().unwrap_or(0);
        for k in 0..per {
            let i = (cursor + k) % per;
            let user = first + i;
            let idle = self
                .busy
                .get((user - self.first_user) as usize)
                .is_some_and(|&b| b == 0);
            if idle
                && registrar.is_registered(user, now)
                && self.retry_at.get(&user).is_none_or(|&t| t <= now)
            {
                if let Some(c) = self.cursor.get_mut(slot) {
                    *c = (i + 1) % per;
                }
                return Some(user);
            }
        }
        None
    }
}

impl Rooms {
    /// Counts a participant of `room` on `server`; a first join that finds the room's other
    /// participants elsewhere is a split (the balancer's affinity should make that impossible).
    pub(super) fn join(&mut self, room: u64, server: ServerId, first_join: bool) {
        let nodes = self.nodes.entry(room).or_default();
        if first_join {
            if nodes.is_empty() {
                self.seen += 1;
            }
            self.joins += 1;
            if nodes.iter().any(|&(s, n)| s != server && n > 0) {
                self.split_joins += 1;
            }
        }
        match nodes.iter_mut().find(|(s, _)| *s == server) {
            Some((_, n)) => *n += 1,
            None => nodes.push((server, 1)),
        }
        let total = nodes.iter().map(|&(_, n)| n).sum::<u32>();
        self.largest = self.largest.max(total);
    }

    pub(super) fn leave(&mut self, room: u64, server: ServerId) {
        if let Some(nodes) = self.nodes.get_mut(&room) {
            if let Some((_, n)) = nodes.iter_mut().find(|(s, _)| *s == server) {
                *n = n.saturating_sub(1);
            }
            nodes.retain(|&(_, n)| n > 0);
            if nodes.is_empty() {
                self.nodes.remove(&room);
            }
        }
    }

    pub(super) fn report(&self, s: &mut Stats) {
        s.meeting_rooms = self.seen;
        s.meeting_joins = self.joins;
        s.meeting_split_joins = self.split_joins;
        s.meeting_largest = self.largest;
    }
}

impl CallManager {
    /// A digit from an IVR node: 1-9 transfer to that queue, # ends the call.
    pub fn on_node_event(&mut self, now: Nanos, server: ServerId, event: NodeEvent) {
        let NodeEvent::Digit { session, digit } = event;
        let Some(&call) = self.ivr.sessions.get(&session) else {
            return;
        };
        if self
            .calls
            .get(call)
            .is_none_or(|c| c.media.is_none_or(|p| p.server != server))
        {
            return;
        }
        self.stats.ivr_digits += 1;
        match digit {
            '#' => {
                self.stats.calls_completed += 1;
                self.end(now, call, Side::Neither);
            }
            '1'..='9' => {
                let q = digit as u32 - '0' as u32;
                if q <= self.queues.count() {
                    self.transfer_to_queue(now, call, q);
                }
            }
            _ => {}
        }
    }

    /// A remote node's link was made again, by process `instance`. Another instance than the
    /// one it joined with is a restart: every session it held died with the old process, so
    /// it is down (they move) until its probes bring it back. The same one is a new link to
    /// the same process (after a takeover, whose new active has no session with it): what it
    /// was last told may have been lost with the old link, so it is told again what it
    /// carries (a node takes a repeated start as the same session's, keeping its stream).
    pub fn relink(&mut self, now: Nanos, server: ServerId, instance: u64) {
        let Some(spec) = self.nodes.iter_mut().find(|n| n.id == server) else {
            return;
        };
        if spec.instance != instance {
            spec.instance = instance;
            let _ = self.admin(now, server, pbxlab_scenario::Verb::Stop);
            return;
        }
        // In order on the link: whatever the node holds that is not started again here was
        // ended on a lost link, and goes at the sweep.
        self.commands.push((server, NodeCommand::Mark));
        for (call, p) in self.calls.with_media_on(server) {
            if self.anchored.get(&p.media) == Some(&server) {
                self.start_media(call, p);
            }
        }
        self.commands.push((server, NodeCommand::Sweep));
    }

    /// Tells the node what to do with the call's audio.
    pub(super) fn start_media(&mut self, call: CallRef, p: Placement) {
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let (session, leg) = (p.media, c.a_leg);
        let cmd = match (&c.kind, c.b_leg) {
            (Kind::User(_), Some(b)) | (Kind::Queue(_), Some(b)) => {
                NodeCommand::Relay { session, a: leg, b }
            }
            (Kind::User(_), None) => return,
            (Kind::Echo, _) => NodeCommand::Echo { session, leg },
            (Kind::Ivr, _) => {
                self.ivr.sessions.insert(session, call);
                NodeCommand::Ivr { session, leg }
            }
            (Kind::Queue(_), None) => NodeCommand::Hold { session, leg },
            (Kind::Meeting(room), _) => NodeCommand::Join {
                session,
                room: *room,
                leg,
            },
        };
        self.commands.push((p.server, cmd));
        if let Some(old) = self.anchored.insert(session, p.server) {
            self.unanchor(old);
        }
        *self.anchored_on.entry(p.server).or_default() += 1;
    }

    fn unanchor(&mut self, server: ServerId) {
        if let Some(n) = self.anchored_on.get_mut(&server) {
            *n = n.saturating_sub(1);
        }
    }

    pub(super) fn end_media(&mut self, p: Placement) {
        if self.anchored.get(&p.media) == Some(&p.server) {
            self.anchored.remove(&p.media);
            self.unanchor(p.server);
        }
        self.ivr.sessions.remove(&p.media);
        self.commands
            .push((p.server, NodeCommand::End { session: p.media }));
    }

    fn transfer_to_queue(&mut self, now: Nanos, call: CallRef, q: u32) {
        let assignment =
            match self
                .balancer
                .assign(Request::keyed(Role::Queue, AffinityKey(u64::from(q)), 1))
            {
                Ok(a) => a,
                Err(_) => {
                    // Nowhere to wait: the caller stays in the menu.
                    self.fail("queue full");
                    return;
                }
            };
        let Some(old) = self.calls.get(call).and_then(|c| c.media) else {
            self.release(now, assignment.session);
            return;
        };
        self.stats.ivr_routed += 1;
        self.release(now, old.session);
        self.calls.forget_session(old.session);
        self.end_media(old);
        let placement = Placement {
            server: assignment.server,
            session: assignment.session,
            media: self.calls.new_media(),
        };
        self.calls.index_session(assignment.session, call);
        if let Some(c) = self.calls.get_mut(call) {
            c.kind = Kind::Queue(q);
            c.media = Some(placement);
            c.queue = Some(placement);
            c.waiting_since = Some(now);
        }
        self.start_media(call, placement);
        self.reinvite(now, call, true);
        self.queues.enqueue(q, call);
        self.dispatch_queues(now);
    }

    /// Connects waiting callers to idle agents, first come first served per queue. When an
    /// agent's leg finds no media node the caller goes back to the head of its queue and
    /// dispatch stops until the next sweep: every queue draws on the same media pool, and
    /// offering the same agent again at once would find it just as full.
    pub(super) fn dispatch_queues(&mut self, now: Nanos) {
        for q in 1..=self.queues.count() {
            // Each turn takes its caller off the queue, gone or offered to an agent, so the
            // callers waiting now bound the turns.
            for _ in 0..self.queues.len(q) {
                let Some(call) = self.queues.front(q) else {
                    break;
                };
                if self.calls.get(call).is_none() {
                    self.queues.pop_front(q);
                    continue;
                }
                let Some(agent) = self.queues.free_agent(now, q, &self.registrar) else {
                    break;
                };
                self.queues.pop_front(q);
                if !self.connect_agent(now, call, agent) {
                    return;
                }
            }
        }
    }

    /// Offers `call` to `agent`; false when no media node could take the agent's leg and the
    /// caller went back to the head of its queue.
    fn connect_agent(&mut self, now: Nanos, call: CallRef, agent: u32) -> bool {
        // The agent leg's audio is anchored on a media node from the start.
        let a = match self.balancer.assign(Request::new(Role::Media)) {
            Ok(a) => a,
            Err(_) => {
                self.fail("no media for agent");
                if let Some(Kind::Queue(q)) = self.calls.get(call).map(|c| c.kind.clone()) {
                    self.queues.requeue(q, call);
                }
                return false;
            }
        };
        if let Some(c) = self.calls.get_mut(call) {
            c.agent_media = Some(a);
        }
        // Known by session from now on, so a failover of its node while the agent rings
        // reaches it (`reanchor`, `apply`).
        self.calls.index_session(a.session, call);
        self.invite_b(now, call, agent, a);
        true
    }

    /// The agent offered `call` did not answer (refused or timed out): the caller goes back
    /// to the head of queue `q` and the agent is skipped for a while.
    pub(super) fn agent_failed(&mut self, now: Nanos, call: CallRef, q: u32) {
        if let Some(a) = self.calls.get_mut(call).and_then(|c| c.agent_media.take()) {
            self.calls.forget_session(a.session);
            self.release(now, a.session);
        }
        if let Some(c) = self.calls.get_mut(call)
            && let Some(u) = c.b_user.take()
        {
            if let Some(b) = c.b.take() {
                self.calls.forget_call_id(&b.call_id);
            }
            self.queues.agent_failed(now, u);
        }
        self.queues.requeue(q, call);
        self.dispatch_queues(now);
    }

    /// The agent answered: the caller leaves hold for the media placed for the agent, and
    /// both legs are re-INVITEd there.
    pub(super) fn agent_answered(&mut self, now: Nanos, call: CallRef) {
        let Some(a) = self.calls.get_mut(call).and_then(|c| c.agent_media.take()) else {
            return;
        };
        let placement = Placement {
            server: a.server,
            session: a.session,
            media: self.calls.new_media(),
        };
        let Some(c) = self.calls.get_mut(call) else {
            self.release(now, a.session);
            return;
        };
        let hold = c.media;
        c.media = Some(placement);
        c.waiting_since = None;
        if let Some(h) = hold {
            self.end_media(h);
        }
        self.calls.index_session(a.session, call);
        self.stats.queue_answered += 1;
        self.start_media(call, placement);
        self.reinvite(now, call, true);
        self.reinvite_b_if_moved(now, call, placement.server);
    }
}

#[cfg(test)]
impl Rooms {
    /// Participants of `room` per node.
    pub(super) fn get(&self, room: &u64) -> Option<&Vec<(ServerId, u32)>> {
        self.nodes.get(room)
    }
}
