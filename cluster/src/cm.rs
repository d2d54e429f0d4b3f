//! The Call Manager, sans-IO: registrar with digest authentication, a back-to-back user agent
//! that routes every call through a node the balancer chose, per-source request-rate limiting,
//! and OPTIONS health probes of the nodes.
//!
//! It is driven like the load generator's engine: [`CallManager::handle`] with each datagram
//! and its arrival time, [`CallManager::advance`] when the clock passes
//! [`CallManager::next_deadline`], [`CallManager::on_node_event`] with what nodes report; it
//! hands back datagrams ([`CallManager::transmit_all`]) and node commands
//! ([`CallManager::node_commands`]). It reads no clock and opens no socket, so tests run it with
//! a fake clock and scripted peers.
//!
//! Every call is two dialogs (RFC 3261 B2BUA): the caller's (leg A, where we are the UAS) and,
//! for calls to a user or a queue agent, ours towards the callee (leg B, where we are the UAC).
//! Both legs' SDP name the chosen node's one address, so the node relays, echoes, plays or mixes
//! the audio. Moving a session (a transfer from IVR to queue, a queue caller reaching an agent,
//! a failover plan) is a node command plus a re-INVITE of each leg with the new node's address.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pbxlab_balancer::{
    AffinityKey, Assignment, Balancer, Event, EventKind, Outcome, Probe, Reject, Request, Role,
    ServerId, SessionId,
};
use pbxlab_proto::builder::write_response;
use pbxlab_proto::digest::{self, Algorithm};
use pbxlab_proto::sdp::{self, Offer, SessionDescription};
use pbxlab_proto::sip::{HeaderName, Message, Method, parse_datagram};
use pbxlab_proto::uri::{NameAddr, SipUri};

use super::{Leg, MediaSession, Nanos, NodeCommand, NodeEvent};

/// Everything the Call Manager needs besides its balancer and its nodes.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our SIP address (Via, Contact).
    pub addr: SocketAddr,
    /// Digest realm and the domain of every address of record.
    pub domain: String,
    /// Users `first_user..first_user + users` may register.
    pub first_user: u32,
    pub users: u32,
    /// User N's digest password is this prefix followed by N (the rule the load generator and
    /// the Kamailio interop test use).
    pub password_prefix: String,
    /// Queues `queue-1..=queue-{queues}`; agents of queue q are users
    /// `first_user + (q-1)*agents_per_queue .. first_user + q*agents_per_queue`.
    pub queues: u32,
    pub agents_per_queue: u32,
    /// Requests per second a source address may send before it earns 503s.
    pub rate_limit_per_s: f64,
    /// Requests a quiet source may send at once.
    pub rate_burst: f64,
    /// Sources never limited: the cluster's own nodes and trusted edges.
    pub whitelist: Vec<IpAddr>,
    /// RFC 3261 T1 and T2.
    pub t1: Duration,
    pub t2: Duration,
    /// Calls in progress at once; beyond it new calls get 503.
    pub max_calls: usize,
    /// Registrations are capped at this many seconds.
    pub max_expires_s: u32,
    /// Seeds the nonce secret and tags; everything random derives from it.
    pub seed: u64,
}

impl Config {
    pub fn new(addr: SocketAddr) -> Config {
        Config {
            addr,
            domain: "pbxlab.test".into(),
            first_user: 1000,
            users: 0,
            password_prefix: "pw-".into(),
            queues: 0,
            agents_per_queue: 0,
            rate_limit_per_s: 200.0,
            rate_burst: 400.0,
            whitelist: Vec::new(),
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            max_calls: 100_000,
            max_expires_s: 7200,
            seed: 1,
        }
    }
}

/// One node as the Call Manager sees it: the balancer's server and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: ServerId,
    pub name: String,
    pub role: Role,
    pub addr: SocketAddr,
}

/// Counters for the status line and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub registered: usize,
    pub registrations: u64,
    pub auth_failures: u64,
    pub calls_active: usize,
    pub calls_total: u64,
    pub calls_completed: u64,
    /// Calls ended without reaching their purpose, by reason.
    pub failures: std::collections::BTreeMap<&'static str, u64>,
    pub rate_limited: u64,
    pub malformed: u64,
    pub queue_waiting: usize,
    pub queue_answered: u64,
    pub queue_abandoned: u64,
    pub ivr_digits: u64,
    pub ivr_routed: u64,
    pub moved: u64,
    /// Meeting rooms seen, participants who joined one, and joins that found the room's other
    /// participants on another node (affinity broken: must stay 0).
    pub meeting_rooms: u64,
    pub meeting_joins: u64,
    pub meeting_split_joins: u64,
    /// The most participants one room had at once.
    pub meeting_largest: u32,
    pub dropped: u64,
    /// Probe answers that came after their timeout, and the longest round trip seen.
    pub probes_late: u64,
    /// Probe rounds not counted because most of the cluster was silent at once.
    pub probe_rounds_ignored: u64,
    pub probe_rtt_max_us: u64,
}

/// What an operator (or a drill) does to a server through the Call Manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// Mark it down now, as if its probes had failed: the operator stopped it.
    Fail,
    Disable,
    Enable,
    Drain,
    /// Take it out of the cluster for good, moving its sessions first.
    Remove,
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

/// The most reassignment and drop records kept for a report; later ones are counted only.
const MAX_RECORDS: usize = 1 << 20;

/// Where one of a call's sessions lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    server: ServerId,
    session: SessionId,
    media: MediaSession,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// To a registered user, media relayed by a media node.
    User(u32),
    Echo,
    Ivr,
    /// Waiting in (or served from) queue q.
    Queue(u32),
    Meeting(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AState {
    /// INVITE received, no final response yet.
    Proceeding,
    /// 200 sent, waiting for the ACK (retransmitting).
    Answered,
    Confirmed,
}

/// Our view of one dialog.
#[derive(Debug, Clone)]
struct Dialog {
    call_id: String,
    remote_tag: String,
    /// Where in-dialog requests go (the peer's Contact).
    remote_uri: String,
    /// The transport address we send to.
    remote_addr: SocketAddr,
    /// From and To values for requests we send in the dialog.
    local_party: String,
    remote_party: String,
    local_cseq: u32,
    /// The `o=` session id and version of the last SDP we sent in this dialog: a changed SDP
    /// keeps the id and raises the version (RFC 3264 8), or the peer may take it for another
    /// session and refuse the re-INVITE that moves its media.
    sdp_id: u64,
    sdp_version: u64,
}

impl Dialog {
    fn empty() -> Dialog {
        Dialog {
            call_id: String::new(),
            remote_tag: String::new(),
            remote_uri: String::new(),
            remote_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            local_party: String::new(),
            remote_party: String::new(),
            local_cseq: 0,
            sdp_id: 0,
            sdp_version: 1,
        }
    }
}

#[derive(Debug, Clone)]
struct Call {
    generation: u32,
    live: bool,
    kind: Kind,
    a: Dialog,
    a_state: AState,
    a_leg: Leg,
    /// The response block (Via..CSeq with our tag) answering A's INVITE.
    a_block: String,
    a_invite_cseq: u32,
    /// The last final response to A's INVITE, for retransmission until the ACK.
    a_final: Vec<u8>,
    a_rto: Nanos,
    a_next: Nanos,
    a_deadline: Nanos,
    /// The caller's user number, when it is one of ours (busy tracking for agents).
    caller: Option<u32>,
    b: Option<Dialog>,
    b_leg: Option<Leg>,
    b_user: Option<u32>,
    b_answered: bool,
    b_invite: Option<TxId>,
    /// The node our INVITE to leg B named. A failover can move the media while B rings; B
    /// then answers towards this node, so it is re-INVITEd once it has answered.
    b_offered: Option<ServerId>,
    /// Where the audio of the call is handled now.
    media: Option<Placement>,
    /// The queue session, held from arrival until the call ends.
    queue: Option<Placement>,
    waiting_since: Option<Nanos>,
    /// When a failover or operator action moved the call's media, until every leg answered
    /// the re-INVITE: the reassignment time the drill reports.
    moved_at: Option<Nanos>,
    reinvites_open: u8,
    /// Per leg (A, B): a re-INVITE of ours is in progress, and the media moved again meanwhile.
    /// RFC 3261 14.1: no second INVITE in a dialog while one is pending; the newer SDP goes
    /// once the first is answered.
    reinviting: [bool; 2],
    reinvite_again: [bool; 2],
}

impl Call {
    fn new(generation: u32) -> Call {
        Call {
            generation,
            live: false,
            kind: Kind::Echo,
            a: Dialog::empty(),
            a_state: AState::Proceeding,
            a_leg: Leg {
                remote: SocketAddr::from(([0, 0, 0, 0], 0)),
                ssrc: None,
                codec_pt: 0,
                dtmf_pt: None,
            },
            a_block: String::new(),
            a_invite_cseq: 0,
            a_final: Vec::new(),
            a_rto: 0,
            a_next: Nanos::MAX,
            a_deadline: Nanos::MAX,
            caller: None,
            b: None,
            b_leg: None,
            b_user: None,
            b_answered: false,
            b_invite: None,
            b_offered: None,
            media: None,
            queue: None,
            waiting_since: None,
            moved_at: None,
            reinvites_open: 0,
            reinviting: [false; 2],
            reinvite_again: [false; 2],
        }
    }
}

type CallRef = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TxId(u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    InviteB,
    ReinviteA,
    ReinviteB,
    ByeA,
    ByeB,
    CancelB,
}

/// A client transaction we started (RFC 3261 17.1), retransmitted until answered.
#[derive(Debug, Clone)]
struct ClientTx {
    generation: u32,
    live: bool,
    call: CallRef,
    purpose: Purpose,
    dest: SocketAddr,
    bytes: Vec<u8>,
    invite: bool,
    rto: Nanos,
    next: Nanos,
    deadline: Nanos,
    /// An INVITE stops retransmitting on a provisional response (Timer A ends).
    proceeding: bool,
}

#[derive(Debug, Clone)]
struct Binding {
    uri: String,
    addr: SocketAddr,
    expires_at: Nanos,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Nanos,
}

#[derive(Debug, Clone, Copy, Default)]
struct ProbeState {
    seq: u32,
    sent_at: Nanos,
    pending: bool,
    /// Round-trip time of the last answered probe.
    last_rtt: Option<Nanos>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Look for probes that went unanswered for the timeout.
    ProbeCheck,
    Call(u32, u32),
    Tx(u32, u32),
}

/// Source-rate table entries kept at most; past it the table starts afresh (a flood from
/// spoofed addresses must not grow memory without bound).
const MAX_BUCKETS: usize = 65_536;
/// Seconds a nonce stays valid.
const NONCE_LIFETIME_S: u64 = 300;
/// How long an agent that did not answer is skipped.
const AGENT_RETRY: Duration = Duration::from_secs(5);

const NS: Nanos = 1_000_000_000;

fn ns(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(Nanos::MAX)
}

/// The Call Manager.
pub struct CallManager {
    cfg: Config,
    balancer: Balancer,
    nodes: Vec<NodeSpec>,
    probes: Vec<ProbeState>,
    next_probe: Nanos,
    secret: u64,
    bindings: HashMap<u32, Binding>,
    /// Calls each of our users is in now (agents are picked only when idle).
    busy: Vec<u16>,
    agent_retry_at: HashMap<u32, Nanos>,
    calls: Vec<Call>,
    free_calls: Vec<u32>,
    by_call_id: HashMap<String, (u32, bool)>,
    by_session: HashMap<SessionId, CallRef>,
    /// IVR sessions, to route digits back to their calls.
    ivr: HashMap<MediaSession, CallRef>,
    /// Participants of each meeting room per node.
    rooms: HashMap<u64, Vec<(ServerId, u32)>>,
    /// Media placed for a queue caller while its agent's phone rings.
    pending_media: HashMap<CallRef, Assignment>,
    txs: Vec<ClientTx>,
    free_txs: Vec<u32>,
    timers: BinaryHeap<Reverse<(Nanos, Timer)>>,
    queues: Vec<VecDeque<CallRef>>,
    agent_cursor: Vec<u32>,
    buckets: HashMap<IpAddr, Bucket>,
    next_media: u64,
    next_sweep: Nanos,
    out_buf: Vec<u8>,
    out: Vec<(SocketAddr, usize, usize)>,
    commands: Vec<(ServerId, NodeCommand)>,
    events: Vec<Event>,
    scratch: Vec<u8>,
    stats: Stats,
    reassigned: Vec<Reassigned>,
    dropped_calls: Vec<DroppedCall>,
    /// Consecutive probe rounds in which most nodes were silent.
    inconclusive_rounds: u32,
}

/// Consecutive rounds with most of the cluster silent that are put down to the Call Manager's
/// own trouble; after that many, the silence is believed.
const MAX_INCONCLUSIVE: u32 = 5;

impl CallManager {
    /// A Call Manager over `balancer`, whose servers are `nodes`.
    pub fn new(cfg: Config, balancer: Balancer, nodes: Vec<NodeSpec>) -> CallManager {
        let queues = cfg.queues as usize;
        let users = cfg.users as usize;
        let secret = cfg.seed ^ 0x9e37_79b9_7f4a_7c15;
        CallManager {
            probes: vec![ProbeState::default(); nodes.len()],
            nodes,
            balancer,
            next_probe: 0,
            secret,
            bindings: HashMap::new(),
            busy: vec![0; users],
            agent_retry_at: HashMap::new(),
            calls: Vec::new(),
            free_calls: Vec::new(),
            by_call_id: HashMap::new(),
            by_session: HashMap::new(),
            ivr: HashMap::new(),
            rooms: HashMap::new(),
            pending_media: HashMap::new(),
            txs: Vec::new(),
            free_txs: Vec::new(),
            timers: BinaryHeap::new(),
            queues: vec![VecDeque::new(); queues],
            agent_cursor: vec![0; queues],
            buckets: HashMap::new(),
            next_media: 1,
            next_sweep: 0,
            out_buf: Vec::new(),
            out: Vec::new(),
            commands: Vec::new(),
            events: Vec::new(),
            scratch: Vec::new(),
            stats: Stats::default(),
            reassigned: Vec::new(),
            dropped_calls: Vec::new(),
            inconclusive_rounds: 0,
            cfg,
        }
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.registered = self.bindings.len();
        s.calls_active = self.calls.len() - self.free_calls.len();
        s.queue_waiting = self.queues.iter().map(VecDeque::len).sum();
        s
    }

    /// Calls whose media was moved and re-INVITEd since the last call, with how long it took.
    pub fn take_reassigned(&mut self) -> Vec<Reassigned> {
        std::mem::take(&mut self.reassigned)
    }

    /// Calls ended because failover found no place for them, since the last call.
    pub fn take_dropped_calls(&mut self) -> Vec<DroppedCall> {
        std::mem::take(&mut self.dropped_calls)
    }

    /// The round-trip time of the last answered probe of `server`.
    pub fn probe_rtt(&self, server: ServerId) -> Option<Duration> {
        let i = self.nodes.iter().position(|n| n.id == server)?;
        self.probes.get(i)?.last_rtt.map(Duration::from_nanos)
    }

    pub fn whitelist(&self) -> &[IpAddr] {
        &self.cfg.whitelist
    }

    /// Adds a source to the whitelist; false if it was there already.
    pub fn whitelist_add(&mut self, ip: IpAddr) -> bool {
        if self.cfg.whitelist.contains(&ip) {
            return false;
        }
        self.cfg.whitelist.push(ip);
        self.buckets.remove(&ip);
        true
    }

    /// Takes a source off the whitelist; false if it was not on it.
    pub fn whitelist_remove(&mut self, ip: IpAddr) -> bool {
        let before = self.cfg.whitelist.len();
        self.cfg.whitelist.retain(|&w| w != ip);
        before != self.cfg.whitelist.len()
    }

    /// Carries out an operator's action on `server`: the balancer decides, and moved sessions
    /// are re-anchored (node commands and re-INVITEs) as after a failed probe.
    pub fn admin(
        &mut self,
        now: Nanos,
        server: ServerId,
        action: Admin,
    ) -> Result<(), pbxlab_balancer::Error> {
        let at = Duration::from_nanos(now);
        let outcome = match action {
            Admin::Fail => self.balancer.fail(at, server)?,
            Admin::Disable => self.balancer.disable(at, server)?,
            Admin::Enable => self.balancer.enable(at, server)?,
            Admin::Drain => self.balancer.drain(at, server)?,
            Admin::Remove => self.balancer.remove_server(at, server)?,
        };
        self.apply(now, outcome);
        Ok(())
    }

    /// Adds a node to the cluster, online; the balancer places sessions on it from now on and
    /// the probes watch it from the next round.
    pub fn add_node(
        &mut self,
        name: &str,
        role: Role,
        addr: SocketAddr,
        capacity: u32,
    ) -> Result<ServerId, pbxlab_balancer::Error> {
        let id = self.balancer.add_server(pbxlab_balancer::ServerSpec {
            name: name.to_owned(),
            role,
            capacity,
            weight: 1,
        })?;
        self.nodes.push(NodeSpec {
            id,
            name: name.to_owned(),
            role,
            addr,
        });
        self.probes.push(ProbeState::default());
        Ok(id)
    }

    /// Balancer events (server down or up, alerts) since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Commands for the nodes, in order.
    pub fn node_commands(&mut self) -> std::vec::Drain<'_, (ServerId, NodeCommand)> {
        self.commands.drain(..)
    }

    /// Hands every queued datagram to `send`, once.
    pub fn transmit_all(&mut self, send: impl FnOnce(&[(SocketAddr, &[u8])])) {
        if self.out.is_empty() {
            return;
        }
        let buf = &self.out_buf;
        let list: Vec<(SocketAddr, &[u8])> = self
            .out
            .iter()
            .map(|&(to, s, e)| (to, buf.get(s..e).unwrap_or_default()))
            .collect();
        send(&list);
        self.out.clear();
        self.out_buf.clear();
    }

    /// When [`CallManager::advance`] next has something to do.
    pub fn next_deadline(&self) -> Nanos {
        let timer = self.timers.peek().map_or(Nanos::MAX, |Reverse((t, _))| *t);
        timer.min(self.next_probe).min(self.next_sweep)
    }

    fn send(&mut self, to: SocketAddr, bytes: &[u8]) {
        let s = self.out_buf.len();
        self.out_buf.extend_from_slice(bytes);
        self.out.push((to, s, self.out_buf.len()));
    }

    fn send_scratch(&mut self, to: SocketAddr) {
        let s = self.out_buf.len();
        self.out_buf.extend_from_slice(&self.scratch);
        self.out.push((to, s, self.out_buf.len()));
    }

    // ---------------------------------------------------------------- time

    /// Runs every timer due at `now`: retransmissions, transaction timeouts, probes, expiries.
    pub fn advance(&mut self, now: Nanos) {
        if now >= self.next_probe {
            self.probe_round(now);
        }
        if now >= self.next_sweep {
            self.next_sweep = now + NS;
            self.bindings.retain(|_, b| b.expires_at > now);
            self.dispatch_queues(now);
        }
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::ProbeCheck => self.probe_timeouts(now),
                Timer::Call(i, g) => self.call_timer(now, (i, g)),
                Timer::Tx(i, g) => self.tx_timer(now, TxId(i, g)),
            }
        }
    }

    fn probe_round(&mut self, now: Nanos) {
        let health = self.balancer.health();
        self.probe_timeouts(now);
        for i in 0..self.nodes.len() {
            if self.balancer.server(self.nodes[i].id).is_none() {
                // Removed from the cluster: nobody watches it any more.
                continue;
            }
            let p = &mut self.probes[i];
            p.seq = p.seq.wrapping_add(1);
            p.sent_at = now;
            p.pending = true;
            let seq = p.seq;
            let node = &self.nodes[i];
            let to = node.addr;
            self.scratch.clear();
            let _ = write!(
                Bytes(&mut self.scratch),
                "OPTIONS sip:{name}@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {us};branch=z9hG4bKp{i}x{seq}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:cm@{domain}>;tag=p{i}\r\nTo: <sip:{name}@{to}>\r\n\
                 Call-ID: p{i}-{seq}@cm\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n",
                name = node.name,
                us = self.cfg.addr,
                domain = self.cfg.domain,
            );
            self.send_scratch(to);
        }
        // The timeout is shorter than the interval (HealthConfig checks), so each round's
        // probes are judged before the next round starts. Rounds keep to a fixed grid: timed
        // from when each actually ran, a thread woken a millisecond late would stretch every
        // interval and detection would drift past its bound.
        let interval = ns(health.interval);
        self.next_probe = if self.next_probe == 0 || now >= self.next_probe + interval {
            now + interval
        } else {
            self.next_probe + interval
        };
        self.timers
            .push(Reverse((now + ns(health.timeout), Timer::ProbeCheck)));
    }

    fn probe_timeouts(&mut self, now: Nanos) {
        let timeout = ns(self.balancer.health().timeout);
        let mut late = Vec::new();
        let mut probed = 0;
        for i in 0..self.nodes.len() {
            if self.balancer.server(self.nodes[i].id).is_none() {
                continue;
            }
            probed += 1;
            if self.probes[i].pending && self.probes[i].sent_at + timeout <= now {
                self.probes[i].pending = false;
                late.push(self.nodes[i].id);
            }
        }
        // More than half the cluster silent in the same round says more about the Call
        // Manager's own host or network (a stalled thread, a saturated machine) than about the
        // nodes: such a round is not counted, as a load balancer's panic threshold would have
        // it, for a few rounds. Longer, it is a real outage and counts.
        if probed >= 3 && late.len() * 2 > probed && self.inconclusive_rounds < MAX_INCONCLUSIVE {
            self.inconclusive_rounds += 1;
            self.stats.probe_rounds_ignored += 1;
            return;
        }
        self.inconclusive_rounds = 0;
        for id in late {
            self.probe_result(now, id, Probe::Timeout);
        }
    }

    fn probe_result(&mut self, now: Nanos, server: ServerId, result: Probe) {
        let at = Duration::from_nanos(now);
        if let Ok(outcome) = self.balancer.probe(at, server, result) {
            self.apply(now, outcome);
        }
    }

    /// Gives a session back to the balancer. The last session of a draining server ending
    /// is what tells an operator that server can be stopped, so it becomes a `Drained` event.
    fn release(&mut self, now: Nanos, session: SessionId) {
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

    /// Carries out what the balancer decided: moved sessions are re-anchored on their new
    /// node (node command plus re-INVITEs), dropped ones are ended.
    pub fn apply(&mut self, now: Nanos, outcome: Outcome) {
        for m in outcome.plan.moves {
            self.stats.moved += 1;
            if let Some(&call) = self.by_session.get(&m.session) {
                self.reanchor(now, call, m.session, m.to);
            }
        }
        for d in outcome.plan.dropped {
            self.stats.dropped += 1;
            if let Some(call) = self.by_session.remove(&d.session) {
                // A queue session whose caller already talks to an agent through a media node
                // is only accounting: losing it costs the call nothing.
                if let Some(c) = self.call_mut(call)
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
                if self.dropped_calls.len() < MAX_RECORDS
                    && let Some(c) = self.call(call)
                {
                    self.dropped_calls.push(DroppedCall {
                        at: now,
                        call_id: c.a.call_id.clone(),
                        server: d.from,
                        reason,
                    });
                }
                // The balancer has forgotten the session already.
                if let Some(c) = self.call_mut(call) {
                    if c.media.is_some_and(|p| p.session == d.session) {
                        c.media = None;
                    }
                    if c.queue.is_some_and(|p| p.session == d.session) {
                        c.queue = None;
                    }
                }
                self.hang_up(now, call, reason);
            }
        }
        self.events.extend(outcome.events);
    }

    fn reanchor(&mut self, now: Nanos, call: CallRef, session: SessionId, to: ServerId) {
        if let Some(a) = self
            .pending_media
            .get_mut(&call)
            .filter(|a| a.session == session)
        {
            // Media for an agent who is still ringing: nothing runs on the node yet. The agent
            // was offered the old node, so it is re-INVITEd when it answers (`b_offered`).
            a.server = to;
            if let Some(c) = self.call_mut(call) {
                c.moved_at.get_or_insert(now);
            }
            return;
        }
        let Some(c) = self.call_mut(call) else { return };
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
        let fresh = MediaSession(self.next_media);
        self.next_media += 1;
        let placement = Placement {
            server: to,
            session,
            media: fresh,
        };
        if let Some(c) = self.call_mut(call) {
            c.media = Some(placement);
            if c.queue.is_some_and(|p| p.session == session) {
                c.queue = Some(placement);
            }
            // A second move before the first finished counts from the first.
            c.moved_at.get_or_insert(now);
        }
        if let Some(Kind::Meeting(room)) = self.call(call).map(|c| c.kind.clone()) {
            self.leave_room(room, old.server);
            self.join_room(room, to, false);
        }
        self.end_media(old);
        self.start_media(call, placement);
        self.reinvite_legs(now, call);
    }

    fn call_timer(&mut self, now: Nanos, call: CallRef) {
        let t2 = ns(self.cfg.t2);
        let Some(c) = self.call_mut(call) else { return };
        if c.a_state != AState::Answered || c.a_next > now {
            return;
        }
        if now >= c.a_deadline {
            // No ACK for our 200 (RFC 3261 13.3.1.4): the call is over.
            self.hang_up(now, call, "no ACK");
            return;
        }
        c.a_rto = (c.a_rto * 2).min(t2);
        c.a_next = now + c.a_rto;
        let at = c.a_next;
        let (to, bytes) = (c.a.remote_addr, std::mem::take(&mut c.a_final));
        self.send(to, &bytes);
        if let Some(c) = self.call_mut(call) {
            c.a_final = bytes;
        }
        self.timers.push(Reverse((at, Timer::Call(call.0, call.1))));
    }

    fn tx_timer(&mut self, now: Nanos, id: TxId) {
        let t2 = ns(self.cfg.t2);
        let Some(tx) = self.tx_mut(id) else { return };
        if now >= tx.deadline {
            let (call, purpose) = (tx.call, tx.purpose);
            self.free_tx(id);
            self.tx_timed_out(now, call, purpose);
            return;
        }
        if tx.proceeding || tx.next > now {
            return;
        }
        tx.rto = if tx.invite {
            tx.rto * 2
        } else {
            (tx.rto * 2).min(t2)
        };
        tx.next = now + tx.rto;
        let at = tx.next.min(tx.deadline);
        let (dest, bytes) = (tx.dest, std::mem::take(&mut tx.bytes));
        self.send(dest, &bytes);
        if let Some(tx) = self.tx_mut(id) {
            tx.bytes = bytes;
        }
        self.timers.push(Reverse((at, Timer::Tx(id.0, id.1))));
    }

    fn tx_timed_out(&mut self, now: Nanos, call: CallRef, purpose: Purpose) {
        match purpose {
            Purpose::InviteB => {
                if let Some(c) = self.call_mut(call) {
                    c.b_invite = None;
                }
                if let Some(Kind::Queue(q)) = self.call(call).map(|c| c.kind.clone()) {
                    self.agent_failed(now, call, q);
                } else {
                    self.reject_a(now, call, 408, "Request Timeout", "callee timeout");
                }
            }
            Purpose::ReinviteA | Purpose::ReinviteB => self.hang_up(now, call, "re-INVITE timeout"),
            Purpose::ByeA | Purpose::ByeB | Purpose::CancelB => {}
        }
    }

    // ---------------------------------------------------------------- input

    /// One datagram from `from`, arrived at `now`.
    pub fn handle(&mut self, now: Nanos, from: SocketAddr, datagram: &[u8]) {
        let msg = match parse_datagram(datagram) {
            Ok(msg) => msg,
            Err(e) => {
                self.stats.malformed += 1;
                let why = match e {
                    pbxlab_proto::sip::ParseError::Invalid(i) => i.reason,
                    pbxlab_proto::sip::ParseError::Incomplete => "incomplete message",
                };
                if self.admit(now, from) {
                    self.bad_request(from, datagram, why);
                }
                return;
            }
        };
        if msg.is_request() {
            if !self.admit(now, from) {
                self.stats.rate_limited += 1;
                if msg.method() != Some(Method::Ack) {
                    self.reply(
                        from,
                        &msg,
                        503,
                        "Service Unavailable",
                        &[("Retry-After", "1")],
                    );
                }
                return;
            }
            if msg.call_id().is_none() || msg.cseq().is_none() || msg.top_via().is_none() {
                self.stats.malformed += 1;
                if msg.top_via().is_some() {
                    self.reply(from, &msg, 400, "Bad Request", &[]);
                }
                return;
            }
            self.on_request(now, from, &msg);
        } else {
            self.on_response(now, &msg);
        }
    }

    /// Token bucket per source address; whitelisted sources always pass.
    fn admit(&mut self, now: Nanos, from: SocketAddr) -> bool {
        let ip = from.ip();
        if self.cfg.whitelist.contains(&ip) || self.nodes.iter().any(|n| n.addr == from) {
            return true;
        }
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&ip) {
            self.buckets.clear();
        }
        let (rate, burst) = (self.cfg.rate_limit_per_s, self.cfg.rate_burst);
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let dt = now.saturating_sub(b.at) as f64 / NS as f64;
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A 400 for a request the parser refused, naming the parser's reason, when the request
    /// still has the five headers a response is built from; anything less cannot be answered
    /// (RFC 3261 8.2: the response must be routable) and is dropped.
    fn bad_request(&mut self, to: SocketAddr, datagram: &[u8], why: &str) {
        let Ok(text) = std::str::from_utf8(datagram) else {
            return;
        };
        let mut lines = text.split("\r\n");
        let first = lines.next().unwrap_or_default();
        if first.starts_with("SIP/") || !first.ends_with("SIP/2.0") {
            return;
        }
        const WANTED: [HeaderName; 5] = [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ];
        self.scratch.clear();
        let _ = write!(
            Bytes(&mut self.scratch),
            "SIP/2.0 400 Bad Request ({why})\r\n"
        );
        let mut seen = [false; WANTED.len()];
        for line in lines.take_while(|l| !l.is_empty()) {
            let name = HeaderName::parse(line.split_once(':').map_or("", |(n, _)| n.trim()));
            if let Some(i) = WANTED.iter().position(|&w| w == name) {
                seen[i] = true;
                self.scratch.extend_from_slice(line.as_bytes());
                self.scratch.extend_from_slice(b"\r\n");
            }
        }
        if seen.contains(&false) {
            return;
        }
        self.scratch.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        self.send_scratch(to);
    }

    fn reply(
        &mut self,
        to: SocketAddr,
        req: &Message<'_>,
        code: u16,
        reason: &str,
        extra: &[(&str, &str)],
    ) {
        let tag = if req.to().and_then(|t| t.tag()).is_none() && code > 100 {
            Some("cm")
        } else {
            None
        };
        write_response(&mut self.scratch, req, code, reason, tag, extra, b"");
        self.send_scratch(to);
    }

    fn on_request(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let Some(method) = msg.method() else { return };
        let call_id = msg.call_id().unwrap_or_default();
        let known = self.by_call_id.get(call_id).copied();
        match (method, known) {
            (Method::Register, _) => self.register(now, from, msg),
            (Method::Options, None) => {
                self.reply(from, msg, 200, "OK", &[("Accept", "application/sdp")])
            }
            (Method::Invite, None) => {
                if msg.to().and_then(|t| t.tag()).is_some() {
                    self.reply(from, msg, 481, "Call/Transaction Does Not Exist", &[]);
                } else {
                    self.invite(now, from, msg);
                }
            }
            (Method::Ack, None) => {}
            (_, Some((index, is_a))) => {
                let Some(generation) = self.calls.get(index as usize).map(|c| c.generation) else {
                    return;
                };
                self.in_call(now, from, (index, generation), is_a, method, msg);
            }
            (Method::Bye | Method::Cancel, None) => {
                self.reply(from, msg, 481, "Call/Transaction Does Not Exist", &[])
            }
            _ => self.reply(from, msg, 501, "Not Implemented", &[]),
        }
    }

    // ---------------------------------------------------------------- registrar

    fn user_number(&self, user: &str) -> Option<u32> {
        let n = user.parse::<u32>().ok()?;
        let first = self.cfg.first_user;
        (n >= first && n - first < self.cfg.users).then_some(n)
    }

    fn nonce(&self, now: Nanos) -> String {
        let t = now / NS;
        format!("{t:x}.{:016x}", mix(self.secret ^ t))
    }

    fn nonce_fresh(&self, now: Nanos, nonce: &str) -> bool {
        let Some((t, mac)) = nonce.split_once('.') else {
            return false;
        };
        let (Ok(t), Ok(mac)) = (u64::from_str_radix(t, 16), u64::from_str_radix(mac, 16)) else {
            return false;
        };
        mac == mix(self.secret ^ t) && now / NS <= t + NONCE_LIFETIME_S
    }

    fn challenge(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>, stale: bool) {
        let mut value = String::new();
        digest::write_challenge(
            &mut value,
            &self.cfg.domain,
            &self.nonce(now),
            Algorithm::Md5,
            None,
        );
        if stale {
            value.push_str(", stale=true");
        }
        self.reply(
            from,
            msg,
            401,
            "Unauthorized",
            &[("WWW-Authenticate", &value)],
        );
    }

    fn register(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let user = msg
            .to()
            .and_then(|t| t.sip_uri().ok())
            .and_then(|u| u.user)
            .and_then(|u| self.user_number(u));
        let Some(user) = user else {
            self.reply(from, msg, 404, "Not Found", &[]);
            return;
        };
        let Some(auth) = msg
            .header(HeaderName::Authorization)
            .and_then(|v| digest::parse_authorization(v).ok())
        else {
            self.challenge(now, from, msg, false);
            return;
        };
        if !self.nonce_fresh(now, auth.nonce) {
            self.challenge(now, from, msg, true);
            return;
        }
        let password = format!("{}{user}", self.cfg.password_prefix);
        if auth.username != user.to_string()
            || auth.realm != self.cfg.domain
            || !digest::verify(&auth, "REGISTER", &password)
        {
            self.stats.auth_failures += 1;
            self.reply(from, msg, 403, "Forbidden", &[]);
            return;
        }
        let contact = msg.contact();
        let expires = contact
            .and_then(|c| NameAddr::param(&c, "expires").flatten())
            .and_then(|e| e.parse::<u32>().ok())
            .or(msg.expires())
            .unwrap_or(3600)
            .min(self.cfg.max_expires_s);
        self.stats.registrations += 1;
        match contact {
            Some(c) if !c.star && expires > 0 => {
                let uri = c.uri.to_owned();
                self.bindings.insert(
                    user,
                    Binding {
                        uri: uri.clone(),
                        addr: from,
                        expires_at: now + u64::from(expires) * NS,
                    },
                );
                let contact = format!("<{uri}>;expires={expires}");
                self.reply(from, msg, 200, "OK", &[("Contact", &contact)]);
                if self.is_agent(user).is_some() {
                    self.dispatch_queues(now);
                }
            }
            Some(_) => {
                // Expires 0 or `Contact: *`: unregister.
                self.bindings.remove(&user);
                self.reply(from, msg, 200, "OK", &[]);
            }
            None => {
                // A query: answer with the current binding.
                let contact = self.bindings.get(&user).map(|b| {
                    let left = b.expires_at.saturating_sub(now) / NS;
                    format!("<{}>;expires={left}", b.uri)
                });
                match contact {
                    Some(c) => self.reply(from, msg, 200, "OK", &[("Contact", &c)]),
                    None => self.reply(from, msg, 200, "OK", &[]),
                }
            }
        }
    }

    fn is_agent(&self, user: u32) -> Option<u32> {
        let per = self.cfg.agents_per_queue;
        if per == 0 {
            return None;
        }
        let k = user.checked_sub(self.cfg.first_user)?;
        let q = k / per + 1;
        (q <= self.cfg.queues).then_some(q)
    }

    // ---------------------------------------------------------------- calls

    fn call(&self, r: CallRef) -> Option<&Call> {
        self.calls
            .get(r.0 as usize)
            .filter(|c| c.live && c.generation == r.1)
    }

    fn call_mut(&mut self, r: CallRef) -> Option<&mut Call> {
        self.calls
            .get_mut(r.0 as usize)
            .filter(|c| c.live && c.generation == r.1)
    }

    fn tx_mut(&mut self, id: TxId) -> Option<&mut ClientTx> {
        self.txs
            .get_mut(id.0 as usize)
            .filter(|t| t.live && t.generation == id.1)
    }

    fn free_tx(&mut self, id: TxId) {
        if let Some(tx) = self.tx_mut(id) {
            tx.live = false;
            tx.bytes.clear();
            self.free_txs.push(id.0);
        }
    }

    fn invite(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let target = msg
            .request_uri()
            .and_then(|u| SipUri::parse(u).ok())
            .and_then(|u| u.user)
            .unwrap_or_default();
        let kind = if let Some(user) = self.user_number(target) {
            if self.bindings.get(&user).is_none_or(|b| b.expires_at <= now) {
                self.reply(from, msg, 480, "Temporarily Unavailable", &[]);
                return;
            }
            Kind::User(user)
        } else if target == "echo" {
            Kind::Echo
        } else if let Some(n) = target.strip_prefix("ivr-") {
            if n.parse::<u32>().is_err() {
                self.reply(from, msg, 404, "Not Found", &[]);
                return;
            }
            Kind::Ivr
        } else if let Some(q) = target
            .strip_prefix("queue-")
            .and_then(|q| q.parse::<u32>().ok())
        {
            if q == 0 || q > self.cfg.queues {
                self.reply(from, msg, 404, "Not Found", &[]);
                return;
            }
            Kind::Queue(q)
        } else if let Some(room) = target.strip_prefix("meeting-").filter(|r| !r.is_empty()) {
            Kind::Meeting(room_key(room))
        } else {
            self.reply(from, msg, 404, "Not Found", &[]);
            return;
        };
        if self.calls.len() - self.free_calls.len() >= self.cfg.max_calls {
            self.fail("call limit");
            self.reply(
                from,
                msg,
                503,
                "Service Unavailable",
                &[("Retry-After", "5")],
            );
            return;
        }
        let Ok(offer) = SessionDescription::parse(msg.body()) else {
            self.fail("no usable SDP offer");
            self.reply(from, msg, 488, "Not Acceptable Here", &[]);
            return;
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
                self.reply(
                    from,
                    msg,
                    503,
                    "Service Unavailable",
                    &[("Retry-After", "1")],
                );
                return;
            }
        };
        let Some(node_addr) = self.node_addr(assignment.server) else {
            self.release(now, assignment.session);
            self.reply(from, msg, 500, "Server Internal Error", &[]);
            return;
        };
        // The answer to the caller, made now: it fixes the caller's codec and where its audio
        // goes, and fails early (488) on an offer we cannot take.
        let mut body = Vec::new();
        let media_id = self.next_media;
        let answer = match sdp::write_answer(&mut body, &offer, node_addr, media_id, 1) {
            Ok(a) => a,
            Err(_) => {
                self.release(now, assignment.session);
                self.fail("no usable SDP offer");
                self.reply(from, msg, 488, "Not Acceptable Here", &[]);
                return;
            }
        };
        self.next_media += 1;
        let leg = Leg {
            remote: answer.remote,
            ssrc: offer.audio.and_then(|a| a.ssrc),
            codec_pt: answer.codec_pt,
            dtmf_pt: answer.telephone_event_pt,
        };
        let index = match self.free_calls.pop() {
            Some(i) => i,
            None => {
                self.calls.push(Call::new(0));
                (self.calls.len() - 1) as u32
            }
        };
        let generation = self.calls[index as usize].generation;
        let call = (index, generation);
        let local_tag = format!("a{index}x{generation}");
        write_response(
            &mut self.scratch,
            msg,
            180,
            "Ringing",
            Some(&local_tag),
            &[],
            b"",
        );
        let block = response_block(&self.scratch);
        let caller = msg
            .from()
            .and_then(|f| f.sip_uri().ok())
            .and_then(|u| u.user)
            .and_then(|u| self.user_number(u));
        let remote_uri = msg
            .contact()
            .map(|c| c.uri.to_owned())
            .unwrap_or_else(|| format!("sip:{from}"));
        let dialog = Dialog {
            call_id: msg.call_id().unwrap_or_default().to_owned(),
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
            media: MediaSession(media_id),
        };
        {
            let c = &mut self.calls[index as usize];
            *c = Call::new(generation);
            c.live = true;
            c.kind = kind.clone();
            c.a = dialog;
            c.a_leg = leg;
            c.a_block = block;
            c.a_invite_cseq = msg.cseq().map_or(0, |c| c.seq);
            c.caller = caller;
            c.media = Some(placement);
            if matches!(kind, Kind::Queue(_)) {
                c.queue = Some(placement);
                c.waiting_since = Some(now);
            }
        }
        self.by_call_id
            .insert(msg.call_id().unwrap_or_default().to_owned(), (index, true));
        self.by_session.insert(assignment.session, call);
        self.stats.calls_total += 1;
        if let Kind::Meeting(room) = kind {
            self.join_room(room, assignment.server, true);
        }
        if let Some(u) = caller {
            self.mark_busy(u, true);
        }
        match kind {
            Kind::User(user) => {
                self.reply_in_call(call, 100, "Trying");
                self.invite_b(now, call, user, assignment);
            }
            Kind::Queue(q) => {
                self.answer_a(now, call, &body);
                self.start_media(call, placement);
                if let Some(queue) = self.queues.get_mut(q as usize - 1) {
                    queue.push_back(call);
                }
                self.dispatch_queues(now);
            }
            _ => {
                self.answer_a(now, call, &body);
                self.start_media(call, placement);
            }
        }
    }

    fn node_addr(&self, server: ServerId) -> Option<SocketAddr> {
        self.nodes.iter().find(|n| n.id == server).map(|n| n.addr)
    }

    fn fail(&mut self, reason: &'static str) {
        *self.stats.failures.entry(reason).or_default() += 1;
    }

    fn mark_busy(&mut self, user: u32, busy: bool) {
        let Some(k) = user.checked_sub(self.cfg.first_user) else {
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

    /// A response to A's INVITE from the stored block, with an SDP body or none.
    fn reply_in_call(&mut self, call: CallRef, code: u16, reason: &str) {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let Some(c) = self.call(call) else { return };
        let _ = write!(
            Bytes(&mut buf),
            "SIP/2.0 {code} {reason}\r\n{}Content-Length: 0\r\n\r\n",
            c.a_block
        );
        let to = c.a.remote_addr;
        self.send(to, &buf);
        self.scratch = buf;
    }

    /// The 200 OK for A's INVITE, retransmitted until the ACK comes.
    fn answer_a(&mut self, now: Nanos, call: CallRef, body: &[u8]) {
        let (us, t1) = (self.cfg.addr, ns(self.cfg.t1));
        let Some(c) = self.call_mut(call) else { return };
        let mut bytes = Vec::with_capacity(c.a_block.len() + body.len() + 160);
        let _ = write!(
            Bytes(&mut bytes),
            "SIP/2.0 200 OK\r\n{}Contact: <sip:cm@{us}>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n",
            c.a_block,
            body.len()
        );
        bytes.extend_from_slice(body);
        c.a_state = AState::Answered;
        c.a_rto = t1;
        c.a_next = now + t1;
        c.a_deadline = now + 64 * t1;
        let to = c.a.remote_addr;
        self.send(to, &bytes);
        if let Some(c) = self.call_mut(call) {
            c.a_final = bytes;
        }
        self.timers
            .push(Reverse((now + t1, Timer::Call(call.0, call.1))));
    }

    /// Counts a participant of `room` on `server`; a first join that finds the room's other
    /// participants elsewhere is a split (the balancer's affinity should make that impossible).
    fn join_room(&mut self, room: u64, server: ServerId, first_join: bool) {
        let nodes = self.rooms.entry(room).or_default();
        if first_join {
            if nodes.is_empty() {
                self.stats.meeting_rooms += 1;
            }
            self.stats.meeting_joins += 1;
            if nodes.iter().any(|&(s, n)| s != server && n > 0) {
                self.stats.meeting_split_joins += 1;
            }
        }
        match nodes.iter_mut().find(|(s, _)| *s == server) {
            Some((_, n)) => *n += 1,
            None => nodes.push((server, 1)),
        }
        let total = nodes.iter().map(|&(_, n)| n).sum::<u32>();
        self.stats.meeting_largest = self.stats.meeting_largest.max(total);
    }

    fn leave_room(&mut self, room: u64, server: ServerId) {
        if let Some(nodes) = self.rooms.get_mut(&room) {
            if let Some((_, n)) = nodes.iter_mut().find(|(s, _)| *s == server) {
                *n = n.saturating_sub(1);
            }
            nodes.retain(|&(_, n)| n > 0);
            if nodes.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }

    fn end_media(&mut self, p: Placement) {
        self.ivr.remove(&p.media);
        self.commands
            .push((p.server, NodeCommand::End { session: p.media }));
    }

    /// Tells the node what to do with the call's audio.
    fn start_media(&mut self, call: CallRef, p: Placement) {
        let Some(c) = self.call(call) else { return };
        let (session, leg) = (p.media, c.a_leg);
        let cmd = match (&c.kind, c.b_leg) {
            (Kind::User(_), Some(b)) | (Kind::Queue(_), Some(b)) => {
                NodeCommand::Relay { session, a: leg, b }
            }
            (Kind::User(_), None) => return,
            (Kind::Echo, _) => NodeCommand::Echo { session, leg },
            (Kind::Ivr, _) => {
                self.ivr.insert(session, call);
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
    }

    fn new_tx(
        &mut self,
        now: Nanos,
        call: CallRef,
        purpose: Purpose,
        dest: SocketAddr,
        invite: bool,
    ) -> TxId {
        let t1 = ns(self.cfg.t1);
        let fresh = ClientTx {
            generation: 0,
            live: true,
            call,
            purpose,
            dest,
            bytes: Vec::new(),
            invite,
            rto: t1,
            next: now + t1,
            deadline: now + 64 * t1,
            proceeding: false,
        };
        let index = match self.free_txs.pop() {
            Some(i) => i,
            None => {
                self.txs.push(fresh.clone());
                (self.txs.len() - 1) as u32
            }
        };
        let tx = &mut self.txs[index as usize];
        // Reuse the slot's buffer; the generation tells a stale id from this one.
        let generation = tx.generation.wrapping_add(1);
        let bytes = std::mem::take(&mut tx.bytes);
        *tx = ClientTx {
            generation,
            bytes,
            ..fresh
        };
        let id = TxId(index, tx.generation);
        self.timers.push(Reverse((now + t1, Timer::Tx(id.0, id.1))));
        id
    }

    /// Sends `self.scratch` as the transaction's request and keeps it for retransmission.
    fn start_tx(&mut self, id: TxId) {
        let bytes = self.scratch.clone();
        if let Some(tx) = self.tx_mut(id) {
            let dest = tx.dest;
            tx.bytes = bytes;
            self.send_scratch(dest);
        }
    }

    fn invite_b(&mut self, now: Nanos, call: CallRef, user: u32, a: Assignment) {
        let Some(binding) = self.bindings.get(&user).cloned() else {
            self.reject_a(
                now,
                call,
                480,
                "Temporarily Unavailable",
                "callee not registered",
            );
            return;
        };
        let Some(node) = self.node_addr(a.server) else {
            return;
        };
        let domain = self.cfg.domain.clone();
        let Some(c) = self.call(call) else { return };
        let caller_party = c.caller.map_or_else(|| "cm".to_owned(), |u| u.to_string());
        let leg = c.a_leg;
        let local_tag = format!("b{}x{}", call.0, call.1);
        let dialog = Dialog {
            call_id: format!("b{}-{}-{:x}@cm", call.0, call.1, self.secret & 0xffff_ffff),
            remote_tag: String::new(),
            remote_uri: binding.uri.clone(),
            remote_addr: binding.addr,
            local_party: format!("<sip:{caller_party}@{domain}>;tag={local_tag}"),
            remote_party: format!("<sip:{user}@{domain}>"),
            local_cseq: 1,
            sdp_id: u64::from(call.0),
            sdp_version: 1,
        };
        let tx = self.new_tx(now, call, Purpose::InviteB, binding.addr, true);
        let mut body = Vec::new();
        write_sdp(&mut body, dialog.sdp_id, dialog.sdp_version, node, leg);
        self.send_invite(tx, &dialog, &body);
        self.by_call_id
            .insert(dialog.call_id.clone(), (call.0, false));
        self.mark_busy(user, true);
        if let Some(c) = self.call_mut(call) {
            c.b = Some(dialog);
            c.b_user = Some(user);
            c.b_invite = Some(tx);
            c.b_answered = false;
            c.b_offered = Some(a.server);
        }
    }

    /// A request inside one of our calls' dialogs (or a retransmitted INVITE).
    fn in_call(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        call: CallRef,
        is_a: bool,
        method: Method,
        msg: &Message<'_>,
    ) {
        match method {
            Method::Invite if is_a && msg.to().and_then(|t| t.tag()).is_none() => {
                // A retransmission of the first INVITE: repeat our last answer.
                let Some(c) = self.call(call) else { return };
                match c.a_state {
                    AState::Proceeding => self.reply_in_call(call, 100, "Trying"),
                    _ => {
                        let (to, bytes) = (c.a.remote_addr, c.a_final.clone());
                        self.send(to, &bytes);
                    }
                }
            }
            Method::Ack if is_a => {
                if let Some(c) = self.call_mut(call)
                    && c.a_state == AState::Answered
                {
                    c.a_state = AState::Confirmed;
                    c.a_final = Vec::new();
                    c.a_next = Nanos::MAX;
                }
            }
            Method::Ack => {}
            Method::Bye => {
                self.reply(from, msg, 200, "OK", &[]);
                let abandoned = self.call(call).is_some_and(|c| c.waiting_since.is_some());
                if abandoned {
                    self.stats.queue_abandoned += 1;
                } else {
                    self.stats.calls_completed += 1;
                }
                self.end(now, call, if is_a { Side::A } else { Side::B });
            }
            Method::Invite => {
                // A re-INVITE from a leg: keep the media where it is; answer with the node's
                // address again (a new SDP version, as RFC 3264 asks for any change).
                let node = self
                    .call(call)
                    .and_then(|c| c.media)
                    .and_then(|p| self.node_addr(p.server));
                let Some(node) = node else {
                    self.reply(from, msg, 488, "Not Acceptable Here", &[]);
                    return;
                };
                let Ok(offer) = SessionDescription::parse(msg.body()) else {
                    self.reply(from, msg, 488, "Not Acceptable Here", &[]);
                    return;
                };
                let Some(d) = self
                    .call_mut(call)
                    .and_then(|c| if is_a { Some(&mut c.a) } else { c.b.as_mut() })
                else {
                    return;
                };
                d.sdp_version += 1;
                let (id, version) = (d.sdp_id, d.sdp_version);
                let mut body = Vec::new();
                if sdp::write_answer(&mut body, &offer, node, id, version).is_err() {
                    self.reply(from, msg, 488, "Not Acceptable Here", &[]);
                    return;
                }
                let contact = format!("<sip:cm@{}>", self.cfg.addr);
                write_response(
                    &mut self.scratch,
                    msg,
                    200,
                    "OK",
                    None,
                    &[("Contact", &contact), ("Content-Type", "application/sdp")],
                    &body,
                );
                self.send_scratch(from);
            }
            Method::Cancel if is_a => {
                self.reply(from, msg, 200, "OK", &[]);
                if self
                    .call(call)
                    .is_some_and(|c| c.a_state == AState::Proceeding)
                {
                    self.reject_a(now, call, 487, "Request Terminated", "cancelled");
                }
            }
            Method::Options => self.reply(from, msg, 200, "OK", &[]),
            _ => self.reply(from, msg, 501, "Not Implemented", &[]),
        }
    }

    // ---------------------------------------------------------------- responses

    fn on_response(&mut self, now: Nanos, msg: &Message<'_>) {
        let Some(code) = msg.code() else { return };
        let Some(branch) = msg.top_via().and_then(|v| v.branch) else {
            return;
        };
        if let Some(rest) = branch.strip_prefix("z9hG4bKp") {
            self.probe_response(now, rest, code);
            return;
        }
        let Some(id) = branch.strip_prefix("z9hG4bKc").and_then(parse_pair) else {
            return;
        };
        let id = TxId(id.0, id.1);
        let Some(tx) = self.tx_mut(id) else {
            // A retransmitted 200 to an INVITE whose transaction is over: ACK it again.
            if code >= 200 && msg.cseq().is_some_and(|c| c.method == Method::Invite) {
                self.ack_stray(msg);
            }
            return;
        };
        let (call, purpose, invite) = (tx.call, tx.purpose, tx.invite);
        if code < 200 {
            if invite {
                tx.proceeding = true;
            }
            if purpose == Purpose::InviteB && (180..=189).contains(&code) {
                self.reply_in_call(call, 180, "Ringing");
            }
            return;
        }
        self.free_tx(id);
        match purpose {
            Purpose::InviteB => self.invite_b_final(now, call, code, msg),
            Purpose::ReinviteA | Purpose::ReinviteB => {
                let to_a = purpose == Purpose::ReinviteA;
                self.ack(call, to_a, msg);
                let side = usize::from(!to_a);
                let again = self.call_mut(call).is_some_and(|c| {
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

    fn probe_response(&mut self, now: Nanos, rest: &str, code: u16) {
        let Some((node, seq)) = parse_pair(rest) else {
            return;
        };
        let Some(p) = self.probes.get_mut(node as usize) else {
            return;
        };
        if p.seq == seq {
            let rtt = now.saturating_sub(p.sent_at);
            self.stats.probe_rtt_max_us = self.stats.probe_rtt_max_us.max(rtt / 1000);
        }
        if !p.pending || p.seq != seq || now > p.sent_at + ns(self.balancer.health().timeout) {
            if p.seq == seq && !p.pending {
                // Answered, but after its timeout had been counted.
                self.stats.probes_late += 1;
            }
            return;
        }
        p.pending = false;
        p.last_rtt = Some(now.saturating_sub(p.sent_at));
        let id = self.nodes[node as usize].id;
        let result = if (200..300).contains(&code) {
            Probe::Ok
        } else {
            Probe::Failed
        };
        self.probe_result(now, id, result);
    }

    fn invite_b_final(&mut self, now: Nanos, call: CallRef, code: u16, msg: &Message<'_>) {
        let Some(c) = self.call_mut(call) else {
            // The caller left meanwhile; a late 200 still needs an ACK and a BYE.
            return;
        };
        c.b_invite = None;
        if code >= 300 {
            // Non-2xx: the ACK belongs to the transaction (same branch, RFC 3261 17.1.1.3).
            self.ack_error(msg);
            if let Some(Kind::Queue(q)) = self.call(call).map(|c| c.kind.clone()) {
                self.agent_failed(now, call, q);
            } else {
                let reason = status_reason(code);
                self.reject_a(now, call, code, reason, "callee refused");
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
        if let Some(c) = self.call_mut(call)
            && let Some(b) = c.b.as_mut()
        {
            b.remote_tag = msg
                .to()
                .and_then(|t| t.tag())
                .unwrap_or_default()
                .to_owned();
            b.remote_party = msg.header(HeaderName::To).unwrap_or_default().to_owned();
            if let Some(contact) = msg.contact() {
                b.remote_uri = contact.uri.to_owned();
            }
        }
        self.ack(call, false, msg);
        let Some(leg) = leg else {
            self.hang_up(now, call, "callee answered without usable SDP");
            return;
        };
        let Some(c) = self.call_mut(call) else { return };
        c.b_leg = Some(leg);
        c.b_answered = true;
        let kind = c.kind.clone();
        match kind {
            Kind::Queue(q) => self.agent_answered(now, call, q),
            _ => {
                let Some(p) = self.call(call).and_then(|c| c.media) else {
                    return;
                };
                self.start_media(call, p);
                let Some(node) = self.node_addr(p.server) else {
                    return;
                };
                let Some(c) = self.call(call) else { return };
                let leg = c.a_leg;
                let mut body = Vec::new();
                write_sdp(&mut body, c.a.sdp_id, c.a.sdp_version, node, leg);
                self.answer_a(now, call, &body);
                self.reinvite_b_if_moved(now, call, p.server);
            }
        }
    }

    /// ACK for a 2xx: a new transaction-less request to the remote target.
    fn ack(&mut self, call: CallRef, to_a: bool, msg: &Message<'_>) {
        let us = self.cfg.addr;
        let seq = msg.cseq().map_or(1, |c| c.seq);
        let branch = mix(u64::from(seq) ^ (u64::from(call.0) << 32) ^ self.secret);
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let Some(c) = self.call(call) else { return };
        let Some(d) = (if to_a { Some(&c.a) } else { c.b.as_ref() }) else {
            return;
        };
        let _ = write!(
            Bytes(&mut buf),
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {us};branch=z9hG4bKk{branch:x}\r\nMax-Forwards: 70\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {seq} ACK\r\nContent-Length: 0\r\n\r\n",
            uri = d.remote_uri,
            from = d.local_party,
            to = d.remote_party,
            cid = d.call_id,
        );
        let dest = d.remote_addr;
        self.send(dest, &buf);
        self.scratch = buf;
    }

    /// ACK for a non-2xx final response, built from the response itself.
    fn ack_error(&mut self, msg: &Message<'_>) {
        let (Some(via), Some(cseq)) = (msg.header(HeaderName::Via), msg.cseq()) else {
            return;
        };
        let Some(dest) = self.dest_of_response(msg) else {
            return;
        };
        let uri = msg.to().map(|t| t.uri).unwrap_or("sip:invalid");
        self.scratch.clear();
        let _ = write!(
            Bytes(&mut self.scratch),
            "ACK {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            msg.header(HeaderName::From).unwrap_or_default(),
            msg.header(HeaderName::To).unwrap_or_default(),
            msg.call_id().unwrap_or_default(),
            cseq.seq,
        );
        self.send_scratch(dest);
    }

    fn ack_stray(&mut self, msg: &Message<'_>) {
        let Some(dest) = self.dest_of_response(msg) else {
            return;
        };
        let uri = msg.contact().map(|c| c.uri).unwrap_or("sip:invalid");
        let seq = msg.cseq().map_or(1, |c| c.seq);
        let us = self.cfg.addr;
        self.scratch.clear();
        let _ = write!(
            Bytes(&mut self.scratch),
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {us};branch=z9hG4bKs{seq}\r\nMax-Forwards: 70\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {seq} ACK\r\nContent-Length: 0\r\n\r\n",
            msg.header(HeaderName::From).unwrap_or_default(),
            msg.header(HeaderName::To).unwrap_or_default(),
            msg.call_id().unwrap_or_default(),
        );
        self.send_scratch(dest);
    }

    /// Where the peer that sent `msg` is, from the dialog its Call-ID names.
    fn dest_of_response(&self, msg: &Message<'_>) -> Option<SocketAddr> {
        let (index, is_a) = self.by_call_id.get(msg.call_id()?).copied()?;
        let c = self.calls.get(index as usize)?;
        if is_a {
            Some(c.a.remote_addr)
        } else {
            c.b.as_ref().map(|b| b.remote_addr)
        }
    }

    /// Ends A's INVITE with an error (the call never connected).
    fn reject_a(&mut self, now: Nanos, call: CallRef, code: u16, reason: &str, why: &'static str) {
        let Some(c) = self.call(call) else { return };
        if c.a_state != AState::Proceeding {
            self.hang_up(now, call, why);
            return;
        }
        let ringing = c.b_invite;
        self.fail(why);
        self.reply_in_call(call, code, reason);
        // A callee still ringing must stop (RFC 3261 9.1); without the CANCEL it could answer
        // a call that is gone (a caller's CANCEL, a failover that found no node for the media).
        if let Some(tx) = ringing {
            self.cancel_b(now, call, tx);
        }
        self.cleanup(now, call);
    }

    /// Ends an established (or half-established) call from our side: BYE to every leg that is
    /// up, CANCEL to one still ringing.
    fn hang_up(&mut self, now: Nanos, call: CallRef, why: &'static str) {
        let Some(c) = self.call(call) else { return };
        if c.a_state == AState::Proceeding {
            self.reject_a(now, call, 500, "Server Internal Error", why);
            return;
        }
        self.fail(why);
        self.end(now, call, Side::Neither);
    }

    fn end(&mut self, now: Nanos, call: CallRef, hung_up: Side) {
        let Some(c) = self.call(call) else { return };
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
        let us = self.cfg.addr;
        let Some(c) = self.call_mut(call) else { return };
        let Some(d) = (if to_a { Some(&mut c.a) } else { c.b.as_mut() }) else {
            return;
        };
        d.local_cseq += 1;
        let d = d.clone();
        let purpose = if to_a { Purpose::ByeA } else { Purpose::ByeB };
        let tx = self.new_tx(now, call, purpose, d.remote_addr, false);
        self.scratch.clear();
        let _ = write!(
            Bytes(&mut self.scratch),
            "BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {us};branch=z9hG4bKc{}x{};rport\r\nMax-Forwards: 70\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {seq} BYE\r\nContent-Length: 0\r\n\r\n",
            tx.0,
            tx.1,
            uri = d.remote_uri,
            from = d.local_party,
            to = d.remote_party,
            cid = d.call_id,
            seq = d.local_cseq,
        );
        self.start_tx(tx);
    }

    fn cancel_b(&mut self, now: Nanos, call: CallRef, invite: TxId) {
        let Some(bytes) = self.tx_mut(invite).map(|t| t.bytes.clone()) else {
            return;
        };
        self.free_tx(invite);
        let Ok(msg) = parse_datagram(&bytes) else {
            return;
        };
        let Some(c) = self.call(call) else { return };
        let Some(d) = c.b.clone() else { return };
        let via = msg.header(HeaderName::Via).unwrap_or_default().to_owned();
        let tx = self.new_tx(now, call, Purpose::CancelB, d.remote_addr, false);
        self.scratch.clear();
        let _ = write!(
            Bytes(&mut self.scratch),
            "CANCEL {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
             Call-ID: {cid}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
            uri = d.remote_uri,
            from = d.local_party,
            to = d.remote_party,
            cid = d.call_id,
        );
        // The CANCEL has the INVITE's branch; answers to it come back on that branch, which no
        // longer names a live transaction, so this one simply times out quietly.
        self.start_tx(tx);
    }

    /// Forgets a call: node sessions ended, balancer sessions released, users freed.
    fn cleanup(&mut self, now: Nanos, call: CallRef) {
        let Some(slot) = self.call_mut(call) else {
            return;
        };
        // The slot keeps only its next generation; the ended call's strings go with `c`.
        let c = std::mem::replace(slot, Call::new(call.1.wrapping_add(1)));
        if let Some(tx) = c.b_invite {
            self.free_tx(tx);
        }
        if let Some(a) = self.pending_media.remove(&call) {
            self.by_session.remove(&a.session);
            self.release(now, a.session);
        }
        self.by_call_id.remove(&c.a.call_id);
        if let Some(b) = &c.b {
            self.by_call_id.remove(&b.call_id);
        }
        let mut released = Vec::new();
        for p in [c.media, c.queue].into_iter().flatten() {
            if released.contains(&p.session) {
                continue;
            }
            released.push(p.session);
            self.by_session.remove(&p.session);
            self.release(now, p.session);
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
            self.leave_room(*room, p.server);
        }
        if let Kind::Queue(q) = c.kind
            && let Some(queue) = self.queues.get_mut(q as usize - 1)
        {
            queue.retain(|&r| r != call);
        }
        if let Some(u) = c.caller {
            self.mark_busy(u, false);
        }
        let freed_agent = c.b_user;
        if let Some(u) = freed_agent {
            self.mark_busy(u, false);
        }
        self.free_calls.push(call.0);
        if freed_agent.is_some_and(|u| self.is_agent(u).is_some()) {
            self.dispatch_queues(now);
        }
    }

    // ---------------------------------------------------------------- transfers

    /// Re-INVITEs every established leg so its audio goes to the call's current node.
    fn reinvite_answered(&mut self, now: Nanos, call: CallRef) {
        let Some(c) = self.call_mut(call) else { return };
        c.reinvites_open = c.reinvites_open.saturating_sub(1);
        if c.reinvites_open > 0 {
            return;
        }
        if let Some(at) = c.moved_at.take()
            && self.reassigned.len() < MAX_RECORDS
        {
            self.reassigned.push(Reassigned {
                at,
                took: now.saturating_sub(at),
            });
        }
    }

    fn reinvite_legs(&mut self, now: Nanos, call: CallRef) {
        let Some(c) = self.call(call) else { return };
        let b = c.b_answered;
        if c.a_state != AState::Proceeding {
            self.reinvite(now, call, true);
        }
        if b {
            self.reinvite(now, call, false);
        }
    }

    fn reinvite(&mut self, now: Nanos, call: CallRef, to_a: bool) {
        let Some(node) = self
            .call(call)
            .and_then(|c| c.media)
            .and_then(|p| self.node_addr(p.server))
        else {
            return;
        };
        let Some(c) = self.call_mut(call) else { return };
        let leg = if to_a { Some(c.a_leg) } else { c.b_leg };
        let Some(leg) = leg else { return };
        let side = usize::from(!to_a);
        if c.reinviting[side] {
            c.reinvite_again[side] = true;
            return;
        }
        c.reinviting[side] = true;
        let Some(d) = (if to_a { Some(&mut c.a) } else { c.b.as_mut() }) else {
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
        let tx = self.new_tx(now, call, purpose, d.remote_addr, true);
        let mut body = Vec::new();
        write_sdp(&mut body, d.sdp_id, d.sdp_version, node, leg);
        self.send_invite(tx, &d, &body);
    }

    /// An INVITE (first or re-) in dialog `d` with CSeq `d.local_cseq`, as transaction `tx`.
    fn send_invite(&mut self, tx: TxId, d: &Dialog, body: &[u8]) {
        let us = self.cfg.addr;
        self.scratch.clear();
        let _ = write!(
            Bytes(&mut self.scratch),
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {us};branch=z9hG4bKc{}x{};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {seq} INVITE\r\n\
             Contact: <sip:cm@{us}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
            tx.0,
            tx.1,
            body.len(),
            uri = d.remote_uri,
            from = d.local_party,
            to = d.remote_party,
            cid = d.call_id,
            seq = d.local_cseq,
        );
        self.scratch.extend_from_slice(body);
        self.start_tx(tx);
    }

    /// A digit from an IVR node: 1-9 transfer to that queue, # ends the call.
    pub fn on_node_event(&mut self, now: Nanos, server: ServerId, event: NodeEvent) {
        let NodeEvent::Digit { session, digit } = event;
        let Some(&call) = self.ivr.get(&session) else {
            return;
        };
        if self
            .call(call)
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
                if q <= self.cfg.queues {
                    self.transfer_to_queue(now, call, q);
                }
            }
            _ => {}
        }
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
        let Some(old) = self.call(call).and_then(|c| c.media) else {
            self.release(now, assignment.session);
            return;
        };
        self.stats.ivr_routed += 1;
        self.release(now, old.session);
        self.by_session.remove(&old.session);
        self.end_media(old);
        let placement = Placement {
            server: assignment.server,
            session: assignment.session,
            media: MediaSession(self.next_media),
        };
        self.next_media += 1;
        self.by_session.insert(assignment.session, call);
        if let Some(c) = self.call_mut(call) {
            c.kind = Kind::Queue(q);
            c.media = Some(placement);
            c.queue = Some(placement);
            c.waiting_since = Some(now);
        }
        self.start_media(call, placement);
        self.reinvite(now, call, true);
        if let Some(queue) = self.queues.get_mut(q as usize - 1) {
            queue.push_back(call);
        }
        self.dispatch_queues(now);
    }

    /// Connects waiting callers to idle agents, first come first served per queue.
    fn dispatch_queues(&mut self, now: Nanos) {
        for qi in 0..self.queues.len() {
            while let Some(&call) = self.queues[qi].front() {
                if self.call(call).is_none() {
                    self.queues[qi].pop_front();
                    continue;
                }
                let Some(agent) = self.free_agent(now, qi as u32 + 1) else {
                    break;
                };
                self.queues[qi].pop_front();
                self.connect_agent(now, call, agent);
            }
        }
    }

    fn free_agent(&mut self, now: Nanos, q: u32) -> Option<u32> {
        let per = self.cfg.agents_per_queue;
        let first = self.cfg.first_user + (q - 1) * per;
        let cursor = self.agent_cursor.get(q as usize - 1).copied().unwrap_or(0);
        for k in 0..per {
            let i = (cursor + k) % per;
            let user = first + i;
            let idle = self
                .busy
                .get((user - self.cfg.first_user) as usize)
                .is_some_and(|&b| b == 0);
            if idle
                && self.bindings.get(&user).is_some_and(|b| b.expires_at > now)
                && self.agent_retry_at.get(&user).is_none_or(|&t| t <= now)
            {
                if let Some(c) = self.agent_cursor.get_mut(q as usize - 1) {
                    *c = (i + 1) % per;
                }
                return Some(user);
            }
        }
        None
    }

    fn connect_agent(&mut self, now: Nanos, call: CallRef, agent: u32) {
        // The agent leg's audio is anchored on a media node from the start.
        let a = match self.balancer.assign(Request::new(Role::Media)) {
            Ok(a) => a,
            Err(_) => {
                self.fail("no media for agent");
                if let Some(Kind::Queue(q)) = self.call(call).map(|c| c.kind.clone())
                    && let Some(queue) = self.queues.get_mut(q as usize - 1)
                {
                    queue.push_front(call);
                }
                return;
            }
        };
        self.pending_media.insert(call, a);
        // Known by session from now on, so a failover of its node while the agent rings
        // reaches it (`reanchor`, `apply`).
        self.by_session.insert(a.session, call);
        self.invite_b(now, call, agent, a);
    }

    fn agent_failed(&mut self, now: Nanos, call: CallRef, q: u32) {
        if let Some(a) = self.pending_media.remove(&call) {
            self.by_session.remove(&a.session);
            self.release(now, a.session);
        }
        if let Some(c) = self.call_mut(call)
            && let Some(u) = c.b_user.take()
        {
            if let Some(b) = c.b.take() {
                self.by_call_id.remove(&b.call_id);
            }
            self.mark_busy(u, false);
            self.agent_retry_at.insert(u, now + ns(AGENT_RETRY));
        }
        if let Some(queue) = self.queues.get_mut(q as usize - 1) {
            queue.push_front(call);
        }
        self.dispatch_queues(now);
    }

    fn agent_answered(&mut self, now: Nanos, call: CallRef, _q: u32) {
        let Some(a) = self.pending_media.remove(&call) else {
            return;
        };
        let placement = Placement {
            server: a.server,
            session: a.session,
            media: MediaSession(self.next_media),
        };
        self.next_media += 1;
        let Some(c) = self.call_mut(call) else {
            self.release(now, a.session);
            return;
        };
        let hold = c.media;
        c.media = Some(placement);
        c.waiting_since = None;
        if let Some(h) = hold {
            self.end_media(h);
        }
        self.by_session.insert(a.session, call);
        self.stats.queue_answered += 1;
        self.start_media(call, placement);
        self.reinvite(now, call, true);
        self.reinvite_b_if_moved(now, call, placement.server);
    }

    /// Re-INVITEs leg B, just answered, when its media is no longer on the node our INVITE
    /// named (a failover moved it while B rang); otherwise B would send its audio to the
    /// failed node for the whole call.
    fn reinvite_b_if_moved(&mut self, now: Nanos, call: CallRef, server: ServerId) {
        if self
            .call(call)
            .is_some_and(|c| c.b_offered.is_some_and(|s| s != server))
        {
            self.reinvite(now, call, false);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
    Neither,
}

/// `fmt::Write` over a byte buffer, so messages are formatted straight into reused buffers.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The header lines of a rendered response between the status line and Content-Length.
fn response_block(rendered: &[u8]) -> String {
    let text = String::from_utf8_lossy(rendered);
    let body = text.split_once("\r\n").map_or("", |(_, rest)| rest);
    let end = body.find("Content-Length:").unwrap_or(body.len());
    body.get(..end).unwrap_or_default().to_owned()
}

/// SDP naming `node` as the audio address, with the leg's codec (and telephone-event).
fn write_sdp(out: &mut Vec<u8>, session_id: u64, version: u64, node: SocketAddr, leg: Leg) {
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
        },
    );
}

fn parse_pair(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('x')?;
    let b = b.split(|c: char| !c.is_ascii_digit()).next()?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A meeting room's affinity key: FNV-1a of its name, so every participant of a room maps to
/// the same key in any process.
fn room_key(room: &str) -> u64 {
    room.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A 64-bit finaliser (splitmix64's): nonces and branches that look random but are reproducible
/// from the seed. Not cryptographic; an emulator's nonce only has to be checkable.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn status_reason(code: u16) -> &'static str {
    match code {
        404 => "Not Found",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => "Error",
    }
}

#[cfg(test)]
#[path = "cm_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "failover_tests.rs"]
mod failover_tests;
