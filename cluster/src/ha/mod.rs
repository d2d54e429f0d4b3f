//! Call Manager high availability: one active Call Manager and its standbys behind one
//! virtual IP, sans-IO like the Call Manager itself.
//!
//! **Replication by replay.** The Call Manager is deterministic: what it does follows from
//! the inputs it is handed (datagrams, timer rounds, node events, operator actions, each
//! with its `now`) and its key. So the active does not describe its state to the standbys;
//! it logs every input with a sequence number and sends the log, and each standby hands the
//! same inputs, with the active's `now`, to its own Call Manager, discarding what that one
//! would send. Registrations, both legs of every dialog, transactions and their timers, the
//! balancer's placements, the node table, queue positions and how each nonce has been used
//! are then the same on every replica, without a line of code per kind of state (the
//! primary-backup replication of Bressoud and Schneider's hypervisor-based fault tolerance
//! and VMware FT, on the Call Manager's inputs rather than a machine's).
//!
//! **Output commit.** Nothing the active's Call Manager sends (a 200 to a REGISTER or an
//! INVITE, a re-INVITE, a command to a node) leaves before a majority of the Call Managers
//! (the active and one standby of three) hold the input that caused it: outputs wait in
//! `held` until a standby acknowledges that input's sequence number. What a failure can lose
//! is therefore only work no one outside has seen: an input the active took and no standby
//! acknowledged, whose answer never left, and which the sender's retransmission brings to
//! the new active (SIP's timers do this for every request; an INVITE already answered 100
//! by the new active's predecessor is in the standby's log with its 100).
//!
//! **Election and fencing.** The active sends a heartbeat every `heartbeat`; each standby
//! acknowledges it, echoing its send time. The active *serves* (takes inputs at the virtual
//! IP and lets outputs out) only while it holds a lease: until the send time of a heartbeat a
//! majority acknowledged plus `lease`, which is shorter than the standbys' `silence`
//! (`misses` x `heartbeat`). A standby that has heard nothing from the active for `silence`
//! (plus a skew that grows with its index, as VRRP's does with priority, so that standbys do
//! not all stand at once) becomes a candidate of a new term and asks the others for votes; a
//! replica grants one vote per term, only if it too has not heard the active for `lease`, and
//! only to a candidate whose log is at least as long as its own (Raft's rule: whoever wins
//! holds every input that was committed). A candidate with a majority is active and starts
//! serving once a majority acknowledges its first heartbeat. The old active's lease was
//! renewed by some acknowledgement of a replica that stood or voted only `silence` or
//! `lease` after receiving it, so the old lease has run out before the new one starts: at
//! most one Call Manager serves at any moment, also when the old active is cut off but alive.
//! A minority side never serves: the cut-off active stops at the end of its lease.
//!
//! **Catching up.** A replica that starts afresh (after `fail` and `recover`, or an upgrade)
//! has no usable state: it asks for a sync, and the serving active sends it a snapshot (its
//! Call Manager with the sequence number it stands at, in chunks over the same link: see
//! `snapshot.rs`) and then the log from there. A
//! replica that is syncing acknowledges heartbeats but neither votes nor stands. An old active
//! that finds a newer term steps down with its state; every append names the term of the entry
//! before it, so a standby whose log went another way (inputs nobody else took) is found before
//! anything is applied on top, and takes a snapshot instead (Raft's log matching).

mod election;
mod log;
mod snapshot;
pub mod wire;

pub use snapshot::SnapshotCost;

use std::collections::VecDeque;
use std::net::SocketAddr;

use pbxlab_balancer::ServerId;
use pbxlab_proto::mac::Key;
use pbxlab_scenario::Verb;

use crate::cm::CallManager;
use crate::{Nanos, NodeCommand, NodeEvent};
use wire::{Input, Msg};

/// Log entries a replica keeps, in bytes of encoded inputs: what a standby that fell behind
/// can be sent again; one further behind is sent a snapshot.
pub const LOG_CAP: usize = 64 << 20;
/// Appends a standby keeps that arrived ahead of a gap (each at most [`wire::MAX_APPEND`]
/// bytes).
const MAX_AHEAD: usize = 256;
/// Outputs a standby keeps of inputs it does not know to be committed.
const MAX_KEPT: usize = 65_536;
/// Unacknowledged bytes of log in flight to one standby.
const WINDOW: usize = 4 << 20;

/// Log entries as an append carries them: each one's term and its encoded input.
type Entries = Vec<(u64, Vec<u8>)>;

/// How one replica is set up.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// This replica's number: 0 for `cm-1`.
    pub index: u8,
    /// Every replica's own address (not the virtual IP's), by number.
    pub addrs: Vec<SocketAddr>,
    pub heartbeat: Nanos,
    pub misses: u32,
    /// What replication datagrams are sealed with (derived from the cluster's key).
    pub key: Key,
    /// The Call Manager's key and credentials ([`crate::cm::Config::secrets`]), the same on
    /// every replica: a snapshot does not carry them, and its taker puts these in.
    pub cm_secrets: crate::cm::Secrets,
}

impl HaConfig {
    /// How long a standby waits without hearing the active before it stands.
    pub fn silence(&self) -> Nanos {
        self.heartbeat.saturating_mul(u64::from(self.misses))
    }

    /// How long an acknowledged heartbeat lets the active serve: half a heartbeat less than
    /// the silence, the margin against a standby's clock running ahead.
    pub fn lease(&self) -> Nanos {
        self.silence().saturating_sub(self.heartbeat / 2)
    }

    /// How much later than the silence this replica stands: its number in Nths of a
    /// heartbeat (of N replicas), so the standbys of one failure do not stand at one instant.
    fn skew(&self) -> Nanos {
        let n = u64::try_from(self.addrs.len().max(1)).unwrap_or(1);
        self.heartbeat * u64::from(self.index) / n
    }

    /// How long entries go unacknowledged before they are sent again.
    fn resend(&self) -> Nanos {
        (self.heartbeat / 10).max(1_000_000)
    }

    fn quorum(&self) -> usize {
        self.addrs.len() / 2 + 1
    }
}

/// What a replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes the inputs at the virtual IP (while its lease holds) and sends the log.
    Active,
    /// Replays the active's log.
    Standby,
    /// Asks for votes to become the active of a new term.
    Candidate,
    /// Has no usable state; waits for a snapshot.
    Syncing,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
            Role::Candidate => "candidate",
            Role::Syncing => "syncing",
        }
    }
}

/// A health probe among a Call Manager's outputs: an OPTIONS to one of its nodes.
fn is_probe(cm: &CallManager, to: SocketAddr, datagram: &[u8]) -> bool {
    datagram.starts_with(b"OPTIONS ") && cm.node_at(to).is_some()
}

/// Counters for the status and the drill.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HaStats {
    pub elections: u64,
    pub takeovers: u64,
    pub snapshots_sent: u64,
    pub snapshots_taken: u64,
    /// Snapshots that could not be written, or were unreadable when taken.
    pub snapshot_errors: u64,
    /// The size of the last snapshot sent or taken.
    pub snapshot_bytes: u64,
    /// Inputs at the virtual IP dropped because this replica was not serving.
    pub fenced_inputs: u64,
    /// Replication datagrams dropped: bad seal, replayed counter, malformed.
    pub rejected: u64,
    pub entries_sent: u64,
    pub entries_resent: u64,
    /// Outputs thrown away by an active that lost its place before they were committed.
    pub outputs_discarded: u64,
}

/// What the active knows of another replica.
#[derive(Debug, Clone, Default)]
struct Peer {
    /// The highest sequence number it acknowledged in this term, consistent with our log.
    acked: u64,
    /// The newest heartbeat send time it echoed in this term.
    echo: Option<Nanos>,
    /// The next sequence number to send it.
    next_send: u64,
    /// Since when it has had entries in flight without acknowledging more: entries
    /// unacknowledged a resend interval after it are sent again.
    progress: Nanos,
    /// It has no usable state, or a log that is not ours: it gets a snapshot.
    needs_sync: bool,
    /// When its last acknowledgement came: entries are sent again only to a replica heard
    /// within a heartbeat (one cut off hears of them again once it answers a heartbeat).
    heard: Nanos,
    /// The counters taken from it (replays are dropped).
    replay: ReplayWindow,
    /// Where the snapshot it was handed leaves it.
    floor: u64,
    /// The snapshot on its way to it.
    snapshot: Option<snapshot::Outgoing>,
    /// No new snapshot for it before this (one was refused, or could not be written).
    snapshot_after: Nanos,
}

/// Which of a sender's counters were taken: the highest, and the 64 below it as bits (the
/// anti-replay window of IPsec and DTLS). A datagram overtaken on the way is still taken
/// once; one older than the window, or seen before, is refused.
#[derive(Debug, Clone, Copy, Default)]
struct ReplayWindow {
    highest: u64,
    /// Bit i: counter `highest - i` was taken.
    seen: u64,
}

impl ReplayWindow {
    /// Whether `counter` is new; if so it is marked taken.
    fn take(&mut self, counter: u64) -> bool {
        if counter == 0 {
            return false;
        }
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = counter;
            return true;
        }
        let back = self.highest - counter;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

/// Outputs of one input, waiting for the input to be committed.
struct Held {
    seq: u64,
    datagrams: Vec<(SocketAddr, Vec<u8>)>,
    commands: Vec<(ServerId, NodeCommand)>,
}

/// One Call Manager of the group and its part in the replication.
pub struct Replica {
    cfg: HaConfig,
    cm: Option<CallManager>,
    role: Role,
    term: u64,
    /// The newest term this replica voted in.
    voted_in: u64,
    applied: u64,
    applied_term: u64,
    /// The first sequence number of each term whose inputs this replica applied.
    history: Vec<(u64, u64)>,
    /// Appends that arrived ahead of a gap, by their first sequence number, with the term of
    /// the entry before them.
    ahead: std::collections::BTreeMap<u64, (u64, Entries)>,
    /// The tail of the log: entries from `log_first` on, each with its term.
    log: VecDeque<(u64, Vec<u8>)>,
    log_first: u64,
    log_bytes: usize,
    commit: u64,
    held: VecDeque<Held>,
    sip_out: Vec<(SocketAddr, Vec<u8>)>,
    commands_out: Vec<(ServerId, NodeCommand)>,
    peer_out: Vec<(SocketAddr, Vec<u8>)>,
    peers: Vec<Peer>,
    /// The active this replica follows, and when it last heard from it.
    active: Option<u8>,
    heard: Nanos,
    votes: Vec<bool>,
    /// The candidate is still asking whether it would be voted for.
    pre_vote: bool,
    election_deadline: Nanos,
    next_heartbeat: Nanos,
    lease_until: Nanos,
    next_sync_request: Nanos,
    counter: u64,
    /// The latest `now` this replica was handed.
    seen: Nanos,
    became_active: Option<Nanos>,
    /// The Call Manager's own timers wait (see [`Replica::hold_timers`]).
    timers_held: bool,
    scratch: Vec<u8>,
    /// The snapshot this replica is taking, and the term and place of the last it took.
    incoming: Option<snapshot::Incoming>,
    taken: Option<(u64, u64)>,
    /// Why the last snapshot could not be written.
    pub last_snapshot_error: Option<String>,
    pub stats: HaStats,
}

impl Replica {
    /// Replica `cfg.index` of a group starting at `now`. With `cm`, it starts with that
    /// state: the first replica as the active of term 1, the others as its standbys (every
    /// replica of a new group is handed the same new Call Manager). Without, it syncs.
    pub fn new(cfg: HaConfig, cm: Option<CallManager>, now: Nanos) -> Replica {
        let n = cfg.addrs.len();
        let role = match (&cm, cfg.index) {
            (None, _) => Role::Syncing,
            (Some(_), 0) => Role::Active,
            (Some(_), _) => Role::Standby,
        };
        let term = u64::from(cm.is_some());
        let mut r = Replica {
            cm,
            role,
            term,
            voted_in: term,
            applied: 0,
            applied_term: 0,
            history: Vec::new(),
            log: VecDeque::new(),
            ahead: std::collections::BTreeMap::new(),
            log_first: 1,
            log_bytes: 0,
            commit: 0,
            held: VecDeque::new(),
            sip_out: Vec::new(),
            commands_out: Vec::new(),
            peer_out: Vec::new(),
            peers: vec![
                Peer {
                    next_send: 1,
                    ..Peer::default()
                };
                n
            ],
            active: (term == 1).then_some(0),
            heard: now,
            votes: vec![false; n],
            pre_vote: false,
            election_deadline: 0,
            next_heartbeat: now,
            lease_until: 0,
            next_sync_request: now,
            counter: now,
            seen: now,
            became_active: (role == Role::Active).then_some(now),
            timers_held: false,
            scratch: Vec::new(),
            incoming: None,
            taken: None,
            last_snapshot_error: None,
            stats: HaStats::default(),
            cfg,
        };
        if r.role == Role::Active {
            r.history.push((1, 1));
        }
        r
    }

    /// Replica `cfg.index` of a group whose others may be running already (a Call Manager in a
    /// process of its own): a standby of no term yet with `cm` as its state (without, it
    /// syncs). An election makes the first active; one whose log is shorter than a majority's
    /// (a process started again with a new state into a running group) is never elected, and
    /// follows the active it hears, from a snapshot.
    pub fn joining(cfg: HaConfig, cm: Option<CallManager>, now: Nanos) -> Replica {
        let mut r = Replica::new(cfg, cm, now);
        if r.role != Role::Syncing {
            r.role = Role::Standby;
            r.term = 0;
            r.voted_in = 0;
            r.active = None;
            r.became_active = None;
            r.history.clear();
        }
        r
    }

    pub fn index(&self) -> u8 {
        self.cfg.index
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// The sequence number of the last input applied, and the highest known committed.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn commit(&self) -> u64 {
        self.commit
    }

    /// This replica's Call Manager; `None` while it syncs.
    pub fn cm(&self) -> Option<&CallManager> {
        self.cm.as_ref()
    }

    /// The Call Manager itself, for a test to plant a bug in.
    #[cfg(test)]
    pub(crate) fn cm_mut(&mut self) -> Option<&mut CallManager> {
        self.cm.as_mut()
    }

    /// When this replica last became the active.
    pub fn became_active(&self) -> Option<Nanos> {
        self.became_active
    }

    /// Whether this replica answers at the virtual IP at `now`: the active, within its lease.
    /// A group of one always serves.
    pub fn serving(&self, now: Nanos) -> bool {
        self.role == Role::Active && (!self.replicated() || now < self.lease_until)
    }

    /// Nothing this replica's Call Manager did waits to go out: what its state says it sent,
    /// it sent (of the active; a standby keeps what it would send should it take over).
    pub fn settled(&self) -> bool {
        self.held.is_empty() && self.sip_out.is_empty() && self.commands_out.is_empty()
    }

    /// How far behind the active this replica's log is, as the active sees it (the active's
    /// own view; `None` for itself or when this is not the active).
    pub fn behind(&self, peer: u8) -> Option<u64> {
        if self.role != Role::Active || peer == self.cfg.index {
            return None;
        }
        let p = self.peers.get(usize::from(peer))?;
        // What a snapshot left it holding counts as held.
        Some(self.applied.saturating_sub(p.acked.max(p.floor)))
    }

    /// One input at the virtual IP (or from a node, or the operator) at `now`. False if this
    /// replica is not serving: the input is dropped, as a fenced server drops it.
    pub fn input(&mut self, now: Nanos, input: Input) -> bool {
        self.take_input(now, input).is_some()
    }

    /// A SIP datagram at the virtual IP (see [`Replica::input`]); a group of one hands it to
    /// its Call Manager without a copy.
    pub fn handle(&mut self, now: Nanos, from: SocketAddr, bytes: &[u8]) -> bool {
        if !self.replicated()
            && let Some(cm) = self.cm.as_mut()
        {
            cm.handle(now, from, bytes);
            self.applied += 1;
            return true;
        }
        self.input(
            now,
            Input::Datagram {
                from,
                bytes: bytes.to_vec(),
            },
        )
    }

    /// [`Replica::input`], with an operator action's answer (`Some(Ok)` for every other
    /// input taken).
    fn take_input(&mut self, now: Nanos, input: Input) -> Option<Result<(), String>> {
        if !self.serving(now) || self.cm.is_none() {
            self.stats.fenced_inputs += 1;
            return None;
        }
        if !self.replicated() {
            // A group of one: nothing to log, nothing to hold.
            self.applied += 1;
            return Some(self.apply(now, &input));
        }
        self.seen = self.seen.max(now);
        let mut entry = Vec::new();
        wire::encode_input(now, &input, &mut entry);
        let answer = self.apply(now, &input);
        self.applied += 1;
        self.applied_term = self.term;
        self.push_log(self.term, entry);
        self.hold_outputs();
        self.release(now);
        Some(answer)
    }

    /// Whether there are standbys to replicate to.
    fn replicated(&self) -> bool {
        self.cfg.addrs.len() > 1
    }

    /// An operator action through the active: the Call Manager's answer, or why it was not
    /// taken. A refusal changes nothing, so it is logged and replayed like any input.
    pub fn admin(&mut self, now: Nanos, server: ServerId, verb: Verb) -> Result<(), String> {
        self.take_input(now, Input::Admin { server, verb })
            .unwrap_or_else(|| {
                Err(format!(
                    "cm-{} is not the serving Call Manager",
                    self.cfg.index + 1
                ))
            })
    }

    /// Adds a server (`ctl add`), as an input: the number the balancer gave it, or why not.
    pub fn add_node(&mut self, now: Nanos, node: crate::cm::NewNode) -> Result<ServerId, String> {
        let addr = node.addr;
        let input = Input::AddNode(node);
        let index = self.cfg.index;
        let not_serving = || format!("cm-{} is not the serving Call Manager", index + 1);
        self.take_input(now, input)
            .unwrap_or_else(|| Err(not_serving()))?;
        self.cm
            .as_ref()
            .and_then(|cm| cm.node_at(addr))
            .map(|n| n.id)
            .ok_or_else(not_serving)
    }

    /// Adds `ip` to the rate limit's whitelist (`add`) or removes it, as an input.
    pub fn whitelist(&mut self, now: Nanos, ip: std::net::IpAddr, add: bool) -> Result<(), String> {
        let index = self.cfg.index;
        self.take_input(now, Input::Whitelist { ip, add })
            .unwrap_or_else(|| Err(format!("cm-{} is not the serving Call Manager", index + 1)))
    }

    /// A node's event, as an input.
    pub fn node_event(&mut self, now: Nanos, server: ServerId, event: NodeEvent) {
        self.input(now, Input::Digit { server, event });
    }

    /// A remote node's link made again, as an input (see [`CallManager::relink`]).
    pub fn relink(&mut self, now: Nanos, server: ServerId, instance: u64) {
        self.input(now, Input::Relink { server, instance });
    }

    fn apply(&mut self, now: Nanos, input: &Input) -> Result<(), String> {
        let Some(cm) = self.cm.as_mut() else {
            return Err("no state".into());
        };
        match input {
            Input::Datagram { from, bytes } => cm.handle(now, *from, bytes),
            Input::Advance => cm.advance(now),
            Input::Digit { server, event } => cm.on_node_event(now, *server, *event),
            Input::Admin { server, verb } => {
                return cm.admin(now, *server, *verb).map_err(|e| e.to_string());
            }
            Input::AddNode(node) => {
                return cm.add_node(node).map(|_| ()).map_err(|e| e.to_string());
            }
            Input::Relink { server, instance } => cm.relink(now, *server, *instance),
            Input::Whitelist { ip, add: true } => {
                cm.whitelist_add(*ip);
            }
            Input::Whitelist { ip, add: false } => {
                cm.whitelist_remove(*ip);
            }
        }
        Ok(())
    }

    fn push_log(&mut self, term: u64, entry: Vec<u8>) {
        self.log_bytes += entry.len();
        self.log.push_back((term, entry));
        while self.log_bytes > LOG_CAP {
            let Some((_, e)) = self.log.pop_front() else {
                break;
            };
            self.log_bytes -= e.len();
            self.log_first += 1;
        }
    }

    /// Moves what the Call Manager queued into `held` (the active), or throws it away (a
    /// standby's replay: the active sent it).
    fn hold_outputs(&mut self) {
        let serving = self.serving(self.seen);
        let Some(cm) = self.cm.as_mut() else {
            return;
        };
        let mut datagrams = Vec::new();
        cm.transmit_all(|list| {
            datagrams.extend(list.iter().map(|&(to, b)| (to, b.to_vec())));
        });
        let commands: Vec<_> = cm.node_commands().collect();
        if self.role != Role::Active {
            // A standby's records are the active's too: the active's are the ones kept.
            cm.take_events();
            cm.take_reassigned();
            cm.take_dropped_calls();
            // What the active sent for inputs it has committed, it sent. For the others it
            // may not have: a standby keeps their outputs, and should it become the active,
            // sends them (again, perhaps). SIP takes a repeated message as a retransmission
            // and a node a repeated command as the same session's; a lost one would leave a
            // call with no media, or a caller with no answer until its next retransmission.
            if self.applied > self.commit && (!datagrams.is_empty() || !commands.is_empty()) {
                let datagrams = datagrams
                    .into_iter()
                    .filter(|(to, b)| !is_probe(cm, *to, b))
                    .collect();
                self.held.push_back(Held {
                    seq: self.applied,
                    datagrams,
                    commands,
                });
                if self.held.len() > MAX_KEPT {
                    self.held.pop_front();
                }
            }
            return;
        }
        // A health probe goes at once: its only effect is its answer, which comes back as an
        // input, and a takeover that loses it costs the new active one unanswered probe,
        // which it would count the same had the probe waited. Held for a standby's
        // acknowledgement, every probe's round trip would carry the replication's, and a
        // slow link between Call Managers would mark healthy nodes down.
        let (probes, datagrams): (Vec<_>, Vec<_>) = datagrams
            .into_iter()
            .partition(|(to, b)| is_probe(cm, *to, b));
        if serving {
            self.sip_out.extend(probes);
        }
        if !datagrams.is_empty() || !commands.is_empty() {
            self.held.push_back(Held {
                seq: self.applied,
                datagrams,
                commands,
            });
        }
    }

    /// A standby's kept outputs of inputs now known committed: the active sent them.
    fn forget_committed(&mut self) {
        while self.held.front().is_some_and(|h| h.seq <= self.commit) {
            self.held.pop_front();
        }
    }

    /// Lets out the outputs of committed inputs, within the lease.
    fn release(&mut self, now: Nanos) {
        if !self.serving(now) {
            return;
        }
        while self.held.front().is_some_and(|h| h.seq <= self.commit) {
            if let Some(h) = self.held.pop_front() {
                self.sip_out.extend(h.datagrams);
                self.commands_out.extend(h.commands);
            }
        }
    }

    /// Hands every SIP datagram let out to `send` (to send from the virtual IP), once.
    pub fn transmit(&mut self, mut send: impl FnMut(SocketAddr, &[u8])) {
        if !self.replicated() {
            if let Some(cm) = self.cm.as_mut() {
                cm.transmit_all(|list| {
                    for &(to, bytes) in list {
                        send(to, bytes);
                    }
                });
            }
            return;
        }
        for (to, bytes) in self.sip_out.drain(..) {
            send(to, &bytes);
        }
    }

    /// [`Replica::transmit`] in one batch (to send with one system call).
    pub fn transmit_all(&mut self, send: impl FnOnce(&[(SocketAddr, &[u8])])) {
        if !self.replicated() {
            if let Some(cm) = self.cm.as_mut() {
                cm.transmit_all(send);
            }
            return;
        }
        if self.sip_out.is_empty() {
            return;
        }
        let list: Vec<(SocketAddr, &[u8])> = self
            .sip_out
            .iter()
            .map(|(to, b)| (*to, b.as_slice()))
            .collect();
        send(&list);
        self.sip_out.clear();
    }

    /// The Call Manager of a group of one, for what is not replicated and so must not touch
    /// a replicated one: nodes joining over the control link. `None` in a group of several.
    pub fn solo_mut(&mut self) -> Option<&mut CallManager> {
        if self.replicated() {
            return None;
        }
        self.cm.as_mut()
    }

    /// Holds the Call Manager's own timers (probe rounds and timeouts, retransmissions) while
    /// `held`: an active whose virtual IP has not reached it yet (a VRRP daemon moves the
    /// address after the election) would otherwise time out every probe whose answer still
    /// goes to the old host, and mark healthy nodes down. Replication and the lease go on.
    pub fn hold_timers(&mut self, held: bool) {
        self.timers_held = held;
    }

    /// Whether this replica is one of a group of several.
    pub fn in_group(&self) -> bool {
        self.replicated()
    }

    /// Commands for the nodes, let out.
    pub fn take_commands(&mut self) -> Vec<(ServerId, NodeCommand)> {
        if !self.replicated() {
            return self
                .cm
                .as_mut()
                .map(|cm| cm.node_commands().collect())
                .unwrap_or_default();
        }
        std::mem::take(&mut self.commands_out)
    }

    /// What the Call Manager recorded (events, moved and dropped calls) since the last call.
    pub(crate) fn take_records(&mut self, log: &mut Vec<String>) -> crate::cluster::Records {
        self.cm
            .as_mut()
            .map(|cm| crate::cluster::take_records(cm, log))
            .unwrap_or_default()
    }

    /// Replication datagrams to send from this replica's own address.
    pub fn take_peer(&mut self, now: Nanos) -> Vec<(SocketAddr, Vec<u8>)> {
        if self.role == Role::Active && self.replicated() {
            self.send_entries(now);
            self.send_chunks(now);
        }
        std::mem::take(&mut self.peer_out)
    }

    /// Replica `peer` took the snapshot at `applied` it was sent: the log goes on from there.
    fn handed(&mut self, peer: u8, applied: u64) {
        let seen = self.seen;
        if let Some(p) = self.peers.get_mut(usize::from(peer))
            && p.snapshot.as_ref().is_some_and(|s| s.applied == applied)
        {
            p.snapshot = None;
            p.needs_sync = false;
            p.next_send = applied + 1;
            p.acked = 0;
            // What it holds now: never sent again, but not counted towards a commit until it
            // says so.
            p.floor = applied;
            p.progress = seen;
        }
    }

    /// Takes a snapshot: this replica becomes a standby at the snapshot's place in the log.
    /// True if it was taken: by a replica with no state, or a standby whose log the active
    /// found to have gone another way (an active, or one in a newer term than the snapshot's,
    /// refuses it).
    fn install(&mut self, now: Nanos, snap: snapshot::Snapshot) -> bool {
        if self.role == Role::Active || snap.term < self.term {
            return false;
        }
        // A standby that stands exactly where the snapshot does, in a log that agrees with it,
        // has nothing to take (a second snapshot for one sync request, after the first).
        if self.role == Role::Standby
            && snap.term == self.term
            && snap.applied == self.applied
            && self.applied_term == snap.applied_term
        {
            return false;
        }
        self.cm = Some(snap.cm);
        self.held.clear();
        self.commit = snap.applied;
        self.voted_in = self.voted_in.max(snap.term);
        self.applied = snap.applied;
        self.applied_term = snap.applied_term;
        self.history = snap.history;
        self.term = snap.term;
        self.log.clear();
        self.ahead.clear();
        self.log_bytes = 0;
        self.log_first = self.applied + 1;
        self.role = Role::Standby;
        self.heard = now;
        self.stats.snapshots_taken += 1;
        if let Some(a) = self.active {
            self.ack(a, None);
        }
        true
    }

    /// Stops serving at once and tells the standbys, so that one takes over without waiting
    /// for the silence (a graceful stop: an upgrade). The replica then holds no state.
    pub fn resign(&mut self) {
        if self.role != Role::Active || !self.replicated() {
            return;
        }
        let term = self.term;
        self.step_down(term);
        // It is about to stop: it must not stand again in the meantime.
        self.become_syncing();
        self.broadcast(&Msg::Resign { term });
    }

    /// When [`Replica::advance`] next has something to do.
    pub fn next_deadline(&self) -> Nanos {
        match self.role {
            Role::Active => {
                // Not serving, its timers wait: only a renewed lease lets them run.
                let cm = if self.serving(self.seen) && !self.timers_held {
                    self.cm.as_ref().map_or(Nanos::MAX, |c| c.next_deadline())
                } else {
                    Nanos::MAX
                };
                if self.replicated() {
                    let resend = self
                        .peers
                        .iter()
                        .filter(|p| {
                            p.acked.max(p.floor) < self.applied
                                && !p.needs_sync
                                && p.next_send > p.acked.max(p.floor) + 1
                                && self.seen < p.heard.saturating_add(self.cfg.heartbeat)
                        })
                        .map(|p| p.progress + self.cfg.resend())
                        .chain(self.snapshot_deadlines())
                        .min()
                        .unwrap_or(Nanos::MAX);
                    // A stall ends by an acknowledgement, or lets the timers run again when
                    // its outputs go: either way the step that brings it is an event.
                    // The lease running out is an event too: serving stops then, to the
                    // nanosecond, whether or not anything else happens.
                    let lease = if self.lease_until > self.seen {
                        self.lease_until
                    } else {
                        Nanos::MAX
                    };
                    self.next_heartbeat.min(cm).min(resend).min(lease)
                } else {
                    cm
                }
            }
            Role::Standby => self.stand_at(),
            Role::Candidate => self.election_deadline,
            Role::Syncing => self.next_sync_request,
        }
    }

    fn stand_at(&self) -> Nanos {
        self.heard
            .saturating_add(self.cfg.silence())
            .saturating_add(self.cfg.skew())
    }

    /// Runs what is due at `now`: heartbeats, elections, sync requests, and the Call
    /// Manager's own timers on the active (an input like any other).
    pub fn advance(&mut self, now: Nanos) {
        self.seen = self.seen.max(now);
        match self.role {
            Role::Active => {
                if self.replicated() && now >= self.next_heartbeat {
                    self.next_heartbeat = now + self.cfg.heartbeat;
                    self.heartbeat(now);
                }
                if self.replicated() {
                    self.resend_due(now);
                }
                if self.serving(now)
                    && !self.timers_held
                    && self.cm.as_ref().is_some_and(|c| c.next_deadline() <= now)
                {
                    self.input(now, Input::Advance);
                }
                self.release(now);
            }
            Role::Standby if now >= self.stand_at() => self.stand(now),
            Role::Candidate if now >= self.election_deadline => self.stand(now),
            Role::Syncing if now >= self.next_sync_request => {
                self.next_sync_request = now + self.cfg.heartbeat;
                let term = self.term;
                self.broadcast(&Msg::SyncRequest { term });
            }
            _ => {}
        }
    }

    fn heartbeat(&mut self, now: Nanos) {
        let (term, commit) = (self.term, self.commit);
        self.broadcast(&Msg::Heartbeat {
            term,
            sent_at: now,
            commit,
        });
    }

    /// The term of the entry at `seq` by this replica's history (0 before every term).
    fn term_at(&self, seq: u64) -> u64 {
        self.history
            .iter()
            .rev()
            .find(|&&(_, first)| first <= seq)
            .map_or(0, |&(t, _)| t)
    }

    fn broadcast(&mut self, msg: &Msg) {
        for i in 0..self.cfg.addrs.len() {
            if i != usize::from(self.cfg.index) {
                self.send(i, msg);
            }
        }
    }

    fn send(&mut self, to: usize, msg: &Msg) {
        let Some(&addr) = self.cfg.addrs.get(to) else {
            return;
        };
        self.counter += 1;
        wire::encode(
            &self.cfg.key,
            self.cfg.index,
            self.counter,
            msg,
            &mut self.scratch,
        );
        self.peer_out.push((addr, self.scratch.clone()));
    }

    fn ack(&mut self, to: u8, echo: Option<Nanos>) {
        let msg = Msg::Ack {
            term: self.term,
            echo,
            applied: if self.role == Role::Syncing {
                0
            } else {
                self.applied
            },
            applied_term: self.applied_term,
        };
        self.send(usize::from(to), &msg);
    }

    /// A replication datagram from another Call Manager.
    pub fn on_peer(&mut self, now: Nanos, datagram: &[u8]) {
        self.seen = self.seen.max(now);
        let Ok(sealed) = wire::decode(&self.cfg.key, datagram) else {
            self.stats.rejected += 1;
            return;
        };
        let from = sealed.from;
        let Some(peer) = self.peers.get_mut(usize::from(from)) else {
            self.stats.rejected += 1;
            return;
        };
        if from == self.cfg.index || !peer.replay.take(sealed.counter) {
            self.stats.rejected += 1;
            return;
        }
        match sealed.msg {
            Msg::Heartbeat {
                term,
                sent_at,
                commit,
            } => {
                if self.follow(now, from, term) {
                    self.commit = self.commit.max(commit.min(self.applied));
                    self.forget_committed();
                    self.ack(from, Some(sent_at));
                } else {
                    self.ack(from, None);
                }
            }
            Msg::Append {
                term,
                commit,
                first_seq,
                prev_term,
                entries,
            } => {
                if !self.follow(now, from, term) {
                    self.ack(from, None);
                    return;
                }
                self.replay(first_seq, prev_term, entries);
                self.commit = self.commit.max(commit.min(self.applied));
                self.forget_committed();
                self.ack(from, None);
            }
            Msg::Ack {
                term,
                echo,
                applied,
                applied_term,
            } => self.on_ack(now, from, term, echo, applied, applied_term),
            Msg::VoteRequest {
                term,
                applied,
                applied_term,
                pre,
            } => {
                let granted = self.grant(now, term, applied, applied_term, pre);
                // A granted pre-vote is answered in the term asked about, so the asker can match
                // it; a refusal carries the voter's own newest term (and the one it voted in),
                // so a candidate that asks about a spent term learns the current one.
                let t = match (pre, granted) {
                    (true, true) => term,
                    (true, false) => self.term.max(self.voted_in),
                    (false, _) => self.term.max(term),
                };
                self.send(
                    usize::from(from),
                    &Msg::Vote {
                        term: t,
                        granted,
                        pre,
                    },
                );
            }
            Msg::Vote { term, granted, pre } => {
                if pre {
                    if !granted && term > self.term && self.role == Role::Candidate {
                        // Asked about a term already spent (voted in, or current): the next
                        // pre-vote asks past it.
                        self.term = term;
                        return;
                    }
                    if granted
                        && self.role == Role::Candidate
                        && self.pre_vote
                        && term == self.term + 1
                        && let Some(v) = self.votes.get_mut(usize::from(from))
                    {
                        *v = true;
                        self.count_votes(now);
                    }
                    return;
                }
                if term > self.term && self.role != Role::Active {
                    self.term = term;
                    self.role = if self.cm.is_some() {
                        Role::Standby
                    } else {
                        Role::Syncing
                    };
                    return;
                }
                if granted && term == self.term && self.role == Role::Candidate && !self.pre_vote {
                    if let Some(v) = self.votes.get_mut(usize::from(from)) {
                        *v = true;
                    }
                    self.count_votes(now);
                }
            }
            Msg::Resign { term } => {
                if term == self.term && self.active == Some(from) && self.role != Role::Active {
                    // Its lease is given up: stand after the skew alone, so the first standby
                    // stands (and is voted for) before the next.
                    self.heard = now.saturating_sub(self.cfg.silence());
                    self.active = None;
                }
            }
            Msg::Chunk {
                term,
                applied,
                total,
                offset,
                data,
            } => self.on_chunk(now, from, term, applied, total, offset, &data),
            Msg::ChunkAck {
                term,
                applied,
                got,
                installed,
            } => self.on_chunk_ack(now, from, term, applied, got, installed),
            Msg::SyncRequest { term } => {
                if self.role == Role::Active
                    && term <= self.term
                    && let Some(p) = self.peers.get_mut(usize::from(from))
                {
                    p.needs_sync = true;
                }
            }
        }
    }

    /// A heartbeat or append of `term` from `from`: true if this replica follows it (its term
    /// is current), after stepping down if it was another term's active or a candidate.
    fn follow(&mut self, now: Nanos, from: u8, term: u64) -> bool {
        if term < self.term {
            return false;
        }
        if self.role == Role::Active {
            // Another active of the same or a newer term: ours is over, and our log may hold
            // inputs nobody else has.
            self.step_down(term);
        } else if self.role == Role::Candidate || term > self.term {
            self.role = if self.cm.is_some() {
                Role::Standby
            } else {
                Role::Syncing
            };
        }
        if self.active != Some(from) || term > self.term {
            // What an earlier active sent ahead of a gap is not this one's log.
            self.ahead.clear();
        }
        self.term = term;
        self.active = Some(from);
        self.heard = now;
        true
    }

    /// An active that finds a newer term: a standby with its state and log, whose outputs
    /// never left (they were not committed) and never will. Its log may hold inputs nobody
    /// else took; the next active's appends find that out (their `prev_term`) and sync it.
    /// Keeping the state lets it vote and stand if no other holds a newer log.
    fn step_down(&mut self, term: u64) {
        self.term = term;
        self.role = if self.cm.is_some() {
            Role::Standby
        } else {
            Role::Syncing
        };
        self.lease_until = 0;
        self.active = None;
        // It has just learnt of a newer term: its active gets a whole silence to be heard
        // before this one stands (an active never set `heard`, so it would stand at once).
        self.heard = self.seen;
        self.stats.outputs_discarded += self.held.len() as u64;
        self.held.clear();
        self.sip_out.clear();
        self.commands_out.clear();
        self.ahead.clear();
        for p in &mut self.peers {
            p.snapshot = None;
        }
    }

    /// No usable state: everything derived from it goes, and a snapshot is asked for.
    fn become_syncing(&mut self) {
        self.role = Role::Syncing;
        self.cm = None;
        self.lease_until = 0;
        self.held.clear();
        self.sip_out.clear();
        self.commands_out.clear();
        self.ahead.clear();
        self.log.clear();
        self.log_bytes = 0;
        self.commit = 0;
        self.incoming = None;
        self.taken = None;
        for p in &mut self.peers {
            p.snapshot = None;
        }
    }
}

#[cfg(test)]
mod tests;
