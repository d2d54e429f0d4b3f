//! The Call Manager's side of the control link: nodes in their own processes (`pbxlab node`)
//! join here, and their commands, acknowledgements, events and figures pass through here.
//!
//! The Call Manager's thread hands the hub every link datagram from its SIP socket
//! ([`Hub::handle`]), lets it move commands and retransmissions on ([`Hub::advance`]) and
//! sends what it queued ([`Hub::transmit_all`]). A joined node gets a [`NodeHandle`] like an
//! in-process one, so the thread routes its commands the same way, into the handle's channel;
//! the hub drains that channel onto the link.
//!
//! A node comes in with a JOIN sealed with the join token, a role the scenario has a pool for
//! (it gets that pool's capacity) and a name and address no other server has; it is offered a
//! session of its own (see [`link`]), and it is added to the cluster only once a datagram
//! sealed for that session arrives (its first figures, sent as soon as the JOINED is in): a
//! JOIN proves that its sender knew the token once, not that it knows it now, so a captured
//! JOIN replayed to a Call Manager that lacks the name (after a restart of the Call Manager, an
//! `rm`, or before the real node came) would otherwise join the replayer. Every later datagram
//! must be sealed for the session and numbered above the last one taken, or it is dropped and
//! counted. The same name from the same address with a new process (instance and nonce) claims
//! a restart: it is offered a new session, and only once a datagram sealed for that session
//! arrives is the node marked down (its sessions died with the old process and move now) and
//! brought back by its probes. A JOIN replayed, or one without the token, changes nothing.
//!
//! With several Call Managers, every replica has a hub, and only the serving one's is used: a
//! node joins, is marked down or sends an event through [`NodeTable`], which in a group logs
//! each as an input, so that every replica's node table holds the node and its process
//! `instance`. The sessions stay the hub's (their keys never leave its process). A new active
//! takes every remote node of the table with no session yet ([`Hub::advance`]; commands for it
//! wait) and sends each a RELINK sealed with the join key, again while it stays without one, and
//! at once when a datagram of a session it does not have comes from the node's address. The
//! node JOINs again with its own instance and a new nonce; once it proves the new session, the
//! Call Manager is told ([`NodeTable::relinked`]): the same instance is the same process, told
//! again what it carries (a command sent on the old link may have been lost with it), another
//! one a restart. A replayed RELINK costs the node a new session, at most one a second.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use pbxlab_balancer::{Role, ServerId};

use super::cm::{CallManager, NewNode};
use super::ha::Replica;
use super::link::{self, Delivery, Incoming, Lost, Message, Outgoing};
use super::node::{self, NodeControl, NodeHandle, Place};
use super::{Nanos, NodeCommand, NodeEvent};
use pbxlab_scenario::Verb;

/// Remote nodes one Call Manager takes.
const MAX_REMOTES: usize = 1_000;
/// Addresses whose refusals are logged (the first one each); later refusals are only counted.
const MAX_REFUSALS_LOGGED: usize = 256;
/// Datagrams queued between two calls of [`Hub::transmit_all`].
const MAX_OUT: usize = 65_536;
/// Restart claims kept per node (see [`Remote::claims`]), and offers kept per name for a node
/// not yet in (see [`Hub::pending`]).
const MAX_CLAIMS: usize = 4;
/// Offers to nodes not yet in, in all; the oldest goes first.
const MAX_PENDING: usize = 64;
/// An offer not taken up (no datagram sealed for its session) within this long is forgotten.
const PENDING_NS: Nanos = 10_000_000_000;
/// A node not heard from for this long (it sends its figures every second) is shown as not
/// running. Its probes decide whether it is down; this is only the status.
const SILENT_NS: Nanos = 3_000_000_000;
/// How often a node this hub has no session with is sent a RELINK.
const HINT_EVERY: Nanos = 200_000_000;
/// A node still without a session this long after a takeover is marked down, as a link lost
/// (its commands wait meanwhile): as long as a command goes unacknowledged before that.
const SESSIONLESS_NS: Nanos = link::RETRY * link::ATTEMPTS as u64;
/// RELINKs to addresses of no node this Call Manager has (a node whose join was lost in a
/// takeover), per second in all; each address at most once per [`HINT_EVERY`].
const STRANGER_HINTS_PER_S: u32 = 50;

/// What the hub reads of the Call Manager, and the changes it makes there: the Call Manager
/// itself alone, the replica in a group (each change an input every replica applies).
pub trait NodeTable {
    /// The Call Manager's state; none while a replica has none.
    fn table(&self) -> Option<&CallManager>;
    /// Adds a node: its server id, or why not.
    fn admit(&mut self, now: Nanos, node: NewNode) -> Result<ServerId, String>;
    /// The node is down (its link is lost): its sessions move.
    fn down(&mut self, now: Nanos, server: ServerId);
    fn event(&mut self, now: Nanos, server: ServerId, event: NodeEvent);
    /// The node's link was made again by process `instance` (see [`CallManager::relink`]).
    fn relinked(&mut self, now: Nanos, server: ServerId, instance: u64);
    /// The sequence number of the last change taken, and the last one a standby holds: an
    /// event is acknowledged to its node only once the change it made is held (0 and 0 alone:
    /// nothing to wait for).
    fn logged(&self) -> u64 {
        0
    }
    fn committed(&self) -> u64 {
        0
    }
}

impl NodeTable for CallManager {
    fn table(&self) -> Option<&CallManager> {
        Some(self)
    }

    fn admit(&mut self, _now: Nanos, node: NewNode) -> Result<ServerId, String> {
        self.add_node(&node).map_err(|e| e.to_string())
    }

    fn down(&mut self, now: Nanos, server: ServerId) {
        let _ = self.admin(now, server, Verb::Stop);
    }

    fn event(&mut self, now: Nanos, server: ServerId, event: NodeEvent) {
        self.on_node_event(now, server, event);
    }

    fn relinked(&mut self, now: Nanos, server: ServerId, instance: u64) {
        self.relink(now, server, instance);
    }
}

impl NodeTable for Replica {
    fn logged(&self) -> u64 {
        if self.in_group() { self.applied() } else { 0 }
    }

    fn committed(&self) -> u64 {
        if self.in_group() { self.commit() } else { 0 }
    }

    fn table(&self) -> Option<&CallManager> {
        self.cm()
    }

    fn admit(&mut self, now: Nanos, node: NewNode) -> Result<ServerId, String> {
        self.add_node(now, node)
    }

    fn down(&mut self, now: Nanos, server: ServerId) {
        let _ = self.admin(now, server, Verb::Stop);
    }

    fn event(&mut self, now: Nanos, server: ServerId, event: NodeEvent) {
        self.node_event(now, server, event);
    }

    fn relinked(&mut self, now: Nanos, server: ServerId, instance: u64) {
        self.relink(now, server, instance);
    }
}

/// What the hub has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    pub joins: u64,
    pub rejoins: u64,
    pub refused: u64,
    /// Links given up on (commands unacknowledged after every attempt).
    pub lost: u64,
    pub commands_sent: u64,
    pub events: u64,
    /// Link datagrams that did not decode.
    pub malformed: u64,
    /// Link datagrams from no joined node, or not meant for the Call Manager.
    pub ignored: u64,
    /// Link datagrams not sealed with the key they need (a JOIN without the join token, a
    /// message not of the node's session): dropped, never acted on.
    pub unauthenticated: u64,
    /// Sealed datagrams numbered at or below one taken before (replays): dropped.
    pub replayed: u64,
    /// JOINs that claimed a restart of a live node and were sent a session: the node is
    /// taken down only once its new process proves that session.
    pub restart_claims: u64,
    /// Links made again by the node's same process (after a takeover, or a RELINK replayed).
    pub relinks: u64,
    /// RELINKs sent to nodes this hub has no session with.
    pub hints: u64,
    /// Datagrams from a remote node's address while this hub has no session with it (sealed
    /// for one of an earlier active's, most likely): not opened, answered with a RELINK.
    pub sessionless: u64,
    /// Sealed link datagrams from addresses of no node of the cluster (a node whose join was
    /// lost in a takeover, or anyone): answered with a RELINK, within a rate.
    pub strangers: u64,
    /// Datagrams dropped because the outbox was full.
    pub dropped: u64,
}

/// A remote node's link. Who the node is (name, role, address) is the Call Manager's node
/// table's to say; this is only what the link needs.
#[derive(Debug)]
struct Remote {
    id: ServerId,
    /// None: taken over from another active, waiting for the node to JOIN again.
    session: Option<Session>,
    /// JOINs that claimed the node restarted: the sessions offered to their processes (the
    /// newest last, at most [`MAX_CLAIMS`]), until one proves its own (and the node is taken
    /// down). Several are kept so that a few replayed JOINs cannot push out a real one.
    claims: Vec<Session>,
    control: NodeControl,
    out: Outgoing<NodeCommand>,
    events: Incoming<NodeEvent>,
    last_heard: Nanos,
    /// The link was lost and its queue dropped: the node may hold sessions the Call Manager
    /// has moved away, so the next command is preceded by a Reset.
    resync: bool,
    lost: bool,
    /// The next RELINK while it has no session.
    next_hint: Nanos,
    /// Since when it has had no session (taken over), until it links again or is given up.
    sessionless_since: Option<Nanos>,
}

/// One process of a node, as its JOIN named it, and the session it was given.
#[derive(Debug)]
struct Session {
    instance: u64,
    nonce: link::Nonce,
    first_seq: u64,
    /// The JOINED it was sent, sealed, for a repeated JOIN.
    joined: Vec<u8>,
    tx: link::Sealer,
    rx: link::Opener,
}

/// A session offered to a JOIN for a name the cluster does not have, until a datagram sealed for
/// it comes back from the JOIN's address (and the node is added) or [`PENDING_NS`] passes.
#[derive(Debug)]
struct Pending {
    from: SocketAddr,
    name: String,
    role: Role,
    capacity: u32,
    /// The server id its JOINED named (the one the balancer gives next, unless another server
    /// is added first; the node uses it only to tell its own streams and tags apart).
    id: ServerId,
    session: Session,
    since: Nanos,
}

/// The Call Manager's end of every remote node's link.
#[derive(Debug)]
pub struct Hub {
    join_key: Option<pbxlab_proto::mac::Key>,
    /// Draws the Call Manager's half of each session key.
    nonce_key: pbxlab_proto::mac::Key,
    nonces: u64,
    capacities: Vec<(Role, u32)>,
    remotes: Vec<Remote>,
    /// Sessions offered to new nodes and not yet proved, oldest first.
    pending: Vec<Pending>,
    out: Vec<(SocketAddr, Vec<u8>)>,
    joined: Vec<NodeHandle>,
    log: Vec<String>,
    refusals_logged: BTreeSet<SocketAddr>,
    /// Event acknowledgements waiting until the change they made is held by a standby: the
    /// sequence number it needs, where to, the datagram.
    held_acks: std::collections::VecDeque<(u64, SocketAddr, Vec<u8>)>,
    /// When each address of no node was last sent a RELINK (at most [`MAX_REFUSALS_LOGGED`]),
    /// and the current second's count of them.
    strangers: std::collections::BTreeMap<SocketAddr, Nanos>,
    stranger_hints: (Nanos, u32),
    stats: HubStats,
}

impl Hub {
    /// A hub that admits nodes that prove the join token `token` (none: it admits nobody) into
    /// the pools in `capacities`, each node with its pool's capacity. `key` draws the Call
    /// Manager's halves of session keys (random per process in a live cluster).
    pub fn new(
        token: Option<&str>,
        key: &pbxlab_proto::mac::Key,
        capacities: Vec<(Role, u32)>,
    ) -> Hub {
        Hub {
            join_key: token.map(link::join_key),
            nonce_key: key.derive("link nonce"),
            nonces: 0,
            capacities,
            remotes: Vec::new(),
            pending: Vec::new(),
            out: Vec::new(),
            joined: Vec::new(),
            log: Vec::new(),
            refusals_logged: BTreeSet::new(),
            held_acks: std::collections::VecDeque::new(),
            strangers: std::collections::BTreeMap::new(),
            stranger_hints: (0, 0),
            stats: HubStats::default(),
        }
    }

    pub fn stats(&self) -> HubStats {
        self.stats
    }

    /// Handles of the nodes that joined since the last call, for the cluster's node list.
    pub fn take_joined(&mut self) -> Vec<NodeHandle> {
        std::mem::take(&mut self.joined)
    }

    /// Log lines (joins, refusals, lost links) since the last call.
    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    /// Takes one link datagram that arrived at the Call Manager's socket.
    pub fn handle(
        &mut self,
        cm: &mut impl NodeTable,
        now: Nanos,
        from: SocketAddr,
        datagram: &[u8],
    ) {
        let Some((sealed, msg)) = link::unseal(datagram)
            .ok()
            .and_then(|s| Some((s, link::decode(s.body).ok()?)))
        else {
            self.stats.malformed += 1;
            return;
        };
        self.adopt(cm, now);
        if let Message::Join {
            name,
            role,
            instance,
            nonce,
        } = msg
        {
            let Some(key) = &self.join_key else {
                let reason = "this Call Manager takes no remote nodes (start it with --join-token)";
                return self.refuse(now, from, &name, reason.into());
            };
            if !sealed.verify(key) {
                self.stats.unauthenticated += 1;
                return self.refuse(now, from, &name, "wrong token".into());
            }
            let asked = Asked {
                from,
                name: &name,
                role,
                instance,
                nonce,
            };
            self.join(cm, now, &asked);
            return;
        }
        let proved = self
            .pending
            .iter_mut()
            .position(|p| p.from == from && p.session.rx.open(&sealed).is_ok());
        if let Some(p) = proved {
            self.admit(cm, now, p);
        }
        let Some(table) = cm.table() else {
            return;
        };
        let Some(node) = table.node_at(from).filter(|n| n.place == Place::Remote) else {
            if proved.is_none() && !self.pending.iter().any(|p| p.from == from) {
                // A node this Call Manager does not have, still linked to an earlier active
                // (its join was lost in the takeover), or anyone: asked to JOIN, within a rate.
                self.stats.strangers += 1;
                self.hint_stranger(now, from);
            } else {
                self.stats.ignored += 1;
            }
            return;
        };
        let (id, name) = (node.id, node.name.clone());
        let Some(i) = self.remotes.iter().position(|r| r.id == id) else {
            self.stats.ignored += 1;
            return;
        };
        let Some(r) = self.remotes.get_mut(i) else {
            return;
        };
        let opened = match (proved.is_some(), r.session.as_mut()) {
            (true, _) => Ok(()),
            (false, Some(s)) => s.rx.open(&sealed),
            (false, None) => Err(link::Unsealed::Forged),
        };
        match opened {
            Ok(()) => {}
            Err(link::Unsealed::Replayed) => {
                self.stats.replayed += 1;
                return;
            }
            Err(link::Unsealed::Forged) => {
                // The process of a JOIN proves the session it was offered: a restart or a
                // new link is real now.
                let Some(proved) = r.claims.iter_mut().position(|s| s.rx.open(&sealed).is_ok())
                else {
                    if r.session.is_none() {
                        // Sealed for a session of an earlier active's, most likely.
                        self.stats.sessionless += 1;
                        if now >= r.next_hint {
                            let key = self.join_key.as_ref();
                            let to = (from, node.instance);
                            hint(r, now, to, key, &mut self.out, &mut self.stats);
                        }
                    } else {
                        self.stats.unauthenticated += 1;
                    }
                    return;
                };
                self.relinked(cm, now, i, proved);
            }
        }
        let Hub {
            remotes,
            out,
            log,
            stats,
            held_acks,
            ..
        } = self;
        let Some(r) = remotes.get_mut(i) else {
            return;
        };
        heard(r, now, &name, log);
        let Some(session) = r.session.as_mut() else {
            return;
        };
        match msg {
            Message::Ack { seq } => {
                r.out.ack(seq);
            }
            Message::Event { seq, event } => {
                let delivery = r.events.receive(seq, event);
                while let Some(event) = r.events.pop() {
                    stats.events += 1;
                    cm.event(now, r.id, event);
                }
                // Acknowledged once handed to the Call Manager (one ahead of a gap comes again)
                // and once a standby holds what it changed: an event a takeover loses is one
                // its node sends again.
                if delivery != Delivery::TooFar && seq < r.events.next() {
                    let ack = session.tx.seal(&Message::Ack { seq });
                    if cm.logged() > cm.committed() {
                        if held_acks.len() < MAX_OUT {
                            held_acks.push_back((cm.logged(), from, ack));
                        } else {
                            stats.dropped += 1;
                        }
                    } else {
                        queue(out, stats, from, ack);
                    }
                }
            }
            Message::Stats {
                stats: figures,
                io_errors,
            } => r.control.counters.publish(&figures, io_errors),
            // JOINED, REFUSED, RELINK and CMD go the other way.
            _ => stats.ignored += 1,
        }
    }

    /// Takes every remote node of the Call Manager's table it has no link for (a group's new
    /// active: they joined under another), with no session yet: commands for it wait, and it
    /// is asked to JOIN again.
    fn adopt(&mut self, cm: &impl NodeTable, now: Nanos) {
        let Some(table) = cm.table() else {
            return;
        };
        let live = |n: &&crate::cm::NodeSpec| {
            n.place == Place::Remote && table.balancer().server(n.id).is_some()
        };
        // Removed servers (`rm`) go; then every remote is a live remote node of the table, so
        // equal counts are the same nodes.
        self.remotes
            .retain(|r| table.balancer().server(r.id).is_some());
        if table.nodes().iter().filter(live).count() == self.remotes.len() {
            return;
        }
        for n in table.nodes().iter().filter(live) {
            if self.remotes.len() >= MAX_REMOTES {
                break;
            }
            if self.remotes.iter().any(|r| r.id == n.id) {
                continue;
            }
            let (handle, control) = node::remote(n.id.0);
            self.joined.push(handle);
            self.remotes.push(Remote {
                id: n.id,
                session: None,
                claims: Vec::new(),
                control,
                out: Outgoing::new(1),
                events: Incoming::new(1),
                last_heard: now,
                resync: false,
                lost: false,
                next_hint: now,
                sessionless_since: Some(now),
            });
            self.log.push(line(
                now,
                &n.name,
                &format!("taken over at {}: asked to join again", n.addr),
            ));
        }
    }

    /// Asks every node it has no session with to JOIN again now (the virtual IP's address has
    /// just reached this host: RELINKs sent before went out from an address the nodes' answers
    /// did not reach).
    pub fn hint_now(&mut self) {
        for r in self.remotes.iter_mut().filter(|r| r.session.is_none()) {
            r.next_hint = 0;
        }
    }

    /// Forgets every link and offer: this replica stopped serving, and the next active makes
    /// its own. What is queued for the nodes is dropped (acknowledgements too: their nodes send
    /// again to the next active); their handles go dead.
    pub fn forget(&mut self) {
        self.remotes.clear();
        self.pending.clear();
        self.out.clear();
        self.joined.clear();
        self.held_acks.clear();
        self.strangers.clear();
    }

    /// A RELINK to `from`, which has no node here: each address at most once per
    /// [`HINT_EVERY`], at most [`STRANGER_HINTS_PER_S`] a second in all.
    fn hint_stranger(&mut self, now: Nanos, from: SocketAddr) {
        let Some(key) = self.join_key.as_ref() else {
            return;
        };
        if self
            .strangers
            .get(&from)
            .is_some_and(|&t| now < t + HINT_EVERY)
        {
            return;
        }
        let (second, sent) = &mut self.stranger_hints;
        if now >= *second + 1_000_000_000 {
            (*second, *sent) = (now, 0);
        }
        if *sent >= STRANGER_HINTS_PER_S {
            return;
        }
        *sent += 1;
        if self.strangers.len() >= MAX_REFUSALS_LOGGED
            && let Some(oldest) = self
                .strangers
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(a, _)| *a)
        {
            self.strangers.remove(&oldest);
        }
        self.strangers.insert(from, now);
        self.stats.hints += 1;
        let hint = relink(key, self.stats.hints, 0, now);
        queue(&mut self.out, &mut self.stats, from, hint);
    }

    /// A session for a JOIN: the Call Manager's half drawn, the JOINED sealed.
    fn session(&mut self, id: ServerId, asked: &Asked<'_>, first_seq: u64) -> Option<Session> {
        let join_key = self.join_key.as_ref()?;
        self.nonces += 1;
        let nonce = link::Nonce::from_key(&self.nonce_key, &[&self.nonces.to_be_bytes()]);
        let keys = link::SessionKeys::new(join_key, &asked.nonce, &nonce);
        let mut joined = Vec::new();
        let msg = Message::Joined {
            id: id.0,
            first_seq,
            nonce,
        };
        link::seal(&keys.to_node, 0, &msg, &mut joined);
        Some(Session {
            instance: asked.instance,
            nonce: asked.nonce,
            first_seq,
            joined,
            tx: link::Sealer::new(keys.to_node),
            rx: link::Opener::new(keys.to_cm),
        })
    }

    fn join(&mut self, cm: &mut impl NodeTable, now: Nanos, asked: &Asked<'_>) {
        let &Asked {
            from,
            name,
            role,
            instance,
            nonce,
        } = asked;
        let Some(capacity) = self
            .capacities
            .iter()
            .find(|(r, _)| *r == role)
            .map(|&(_, c)| c)
        else {
            return self.refuse(now, from, name, format!("the cluster has no {role} pool"));
        };
        let Some(table) = cm.table() else {
            return;
        };
        let known = |r: &Remote| table.node(r.id).filter(|n| n.name == name).cloned();
        if let Some((i, row)) = self
            .remotes
            .iter()
            .enumerate()
            .find_map(|(i, r)| known(r).map(|row| (i, row)))
        {
            let r = &self.remotes[i];
            if table.balancer().server(r.id).is_none() {
                // Removed from the cluster (`rm`): it may join again, as a new server.
                self.remotes.remove(i);
            } else if row.addr != from {
                let reason = format!("the name {name} is taken by the node at {}", row.addr);
                return self.refuse(now, from, name, reason);
            } else if row.role != role {
                let reason = format!("{name} joined as a {} node before", row.role);
                return self.refuse(now, from, name, reason);
            } else {
                let same = |s: &Session| s.instance == instance && s.nonce == nonce;
                // Our JOINED was lost, or is on its way (or the JOIN is a replay): the same
                // answer again, and nothing changes.
                let again = r
                    .session
                    .iter()
                    .chain(&r.claims)
                    .find(|s| same(s))
                    .map(|s| s.joined.clone());
                if let Some(joined) = again {
                    return queue(&mut self.out, &mut self.stats, from, joined);
                }
                // A new session, for a new process (a restart) or the same one (a new link):
                // the node keeps its old one until that process proves the new session. A
                // replayed JOIN of another process never can.
                let id = r.id;
                let restart = row.instance != instance;
                let Some(session) = self.session(id, asked, 1) else {
                    return;
                };
                let joined = session.joined.clone();
                if let Some(r) = self.remotes.get_mut(i) {
                    if r.claims.len() >= MAX_CLAIMS {
                        r.claims.remove(0);
                    }
                    r.claims.push(session);
                }
                if restart {
                    self.stats.restart_claims += 1;
                }
                return queue(&mut self.out, &mut self.stats, from, joined);
            }
        }
        let Some(table) = cm.table() else {
            return;
        };
        let live = |id: ServerId| table.balancer().server(id).is_some();
        if table.nodes().iter().any(|n| n.name == name && live(n.id)) {
            let reason = format!("a server named {name} already exists");
            return self.refuse(now, from, name, reason);
        }
        if let Some(n) = table.nodes().iter().find(|n| n.addr == from && live(n.id)) {
            let reason = format!("address {from} is taken by {}", n.name);
            return self.refuse(now, from, name, reason);
        }
        if self.remotes.len() >= MAX_REMOTES {
            let reason = format!("this Call Manager takes at most {MAX_REMOTES} remote nodes");
            return self.refuse(now, from, name, reason);
        }
        let next_id = ServerId(table.nodes().len() as u32);
        let same = |p: &Pending| {
            p.name == name
                && p.from == from
                && p.session.instance == instance
                && p.session.nonce == nonce
        };
        if let Some(p) = self.pending.iter().find(|p| same(p)) {
            // Our JOINED was lost (or the JOIN is a replay): the same offer again.
            let joined = p.session.joined.clone();
            return queue(&mut self.out, &mut self.stats, from, joined);
        }
        // Offers for one name are kept apart from each other, a few of them, so that replayed
        // JOINs cannot push out the real node's offer; in all, at most MAX_PENDING.
        if self.pending.iter().filter(|p| p.name == name).count() >= MAX_CLAIMS
            && let Some(oldest) = self.pending.iter().position(|p| p.name == name)
        {
            self.pending.remove(oldest);
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
        }
        let Some(session) = self.session(next_id, asked, 1) else {
            return;
        };
        let joined = session.joined.clone();
        self.pending.push(Pending {
            from,
            name: name.to_owned(),
            role,
            capacity,
            id: next_id,
            session,
            since: now,
        });
        queue(&mut self.out, &mut self.stats, from, joined);
    }

    /// The node offered `self.pending[p]` proved it: it is added to the cluster now, with that
    /// session, unless its name or address was taken meanwhile (then it is refused).
    fn admit(&mut self, cm: &mut impl NodeTable, now: Nanos, p: usize) {
        if p >= self.pending.len() {
            return;
        }
        let offer = self.pending.remove(p);
        self.pending
            .retain(|q| q.name != offer.name && q.from != offer.from);
        let Pending {
            from,
            name,
            role,
            capacity,
            id: offered,
            session,
            ..
        } = offer;
        let Some(table) = cm.table() else {
            return;
        };
        let live = |id: ServerId| table.balancer().server(id).is_some();
        if table
            .nodes()
            .iter()
            .any(|n| (n.name == name || n.addr == from) && live(n.id))
        {
            let reason = format!("the name {name} or the address {from} was taken meanwhile");
            return self.refuse(now, from, &name, reason);
        }
        if self.remotes.len() >= MAX_REMOTES {
            let reason = format!("this Call Manager takes at most {MAX_REMOTES} remote nodes");
            return self.refuse(now, from, &name, reason);
        }
        let node = NewNode {
            name: name.clone(),
            role,
            addr: from,
            capacity,
            place: Place::Remote,
            instance: session.instance,
        };
        let id = match cm.admit(now, node) {
            Ok(id) => id,
            Err(e) => return self.refuse(now, from, &name, e),
        };
        let (handle, control) = node::remote(id.0);
        self.joined.push(handle);
        self.remotes.push(Remote {
            id,
            session: Some(session),
            claims: Vec::new(),
            control,
            out: Outgoing::new(1),
            events: Incoming::new(1),
            last_heard: now,
            resync: false,
            lost: false,
            next_hint: now,
            sessionless_since: None,
        });
        self.stats.joins += 1;
        let note = if id == offered {
            String::new()
        } else {
            format!(
                " (its JOINED said server {}, another was added first)",
                offered.0
            )
        };
        self.log.push(line(
            now,
            &name,
            &format!("joined as {role} from {from}{note}"),
        ));
    }

    /// A known node's process proved the session its JOIN was given. A new process (a
    /// restart): whatever the old one had is gone, and so is whatever was queued for it. The
    /// same process (a new link): what is queued goes on the new session, and the Call Manager
    /// tells it again what it carries.
    fn relinked(&mut self, cm: &mut impl NodeTable, now: Nanos, i: usize, claim: usize) {
        let Hub {
            remotes,
            log,
            stats,
            ..
        } = self;
        let Some(r) = remotes.get_mut(i) else { return };
        let Some(node) = cm.table().and_then(|t| t.node(r.id)) else {
            return;
        };
        if claim >= r.claims.len() {
            return;
        }
        let session = r.claims.swap_remove(claim);
        r.claims.clear();
        let (name, addr) = (node.name.clone(), node.addr);
        let restart = node.instance != session.instance;
        let instance = session.instance;
        // With a session of its own the hub lost nothing: what was not acknowledged is still
        // queued and goes on the new one. Taken over, the node may have lost what the last
        // active sent: the Call Manager tells it again.
        let taken_over = r.session.is_none();
        if restart {
            while r.control.commands.try_recv().is_ok() {}
            r.out.clear();
        }
        r.out.restart(session.first_seq);
        r.session = Some(session);
        r.sessionless_since = None;
        r.events = Incoming::new(1);
        r.resync = false;
        r.lost = false;
        heard(r, now, &name, log);
        let id = r.id;
        let what = if restart {
            stats.rejoins += 1;
            // Its sessions died with the old process: they move now, as after a failed probe.
            format!("rejoined from {addr} (restarted): down until its probes bring it back")
        } else {
            stats.relinks += 1;
            if taken_over {
                format!("linked again from {addr}: told again what it carries")
            } else {
                format!("linked again from {addr}, on a new session")
            }
        };
        log.push(line(now, &name, &what));
        if restart || taken_over {
            cm.relinked(now, id, instance);
        }
    }

    fn refuse(&mut self, now: Nanos, from: SocketAddr, name: &str, reason: String) {
        self.stats.refused += 1;
        if self.refusals_logged.len() < MAX_REFUSALS_LOGGED && self.refusals_logged.insert(from) {
            self.log
                .push(line(now, name, &format!("refused from {from}: {reason}")));
        }
        // The reason must fit the link's limit (the decoder takes up to 256 characters).
        let mut reason = reason;
        if reason.len() > 4 * link::MAX_WORD {
            let mut end = 4 * link::MAX_WORD;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        // The node shares no key with us (that is often why it is refused): the seal is a
        // public one, and the node believes a refusal only while it is joining.
        let mut refused = Vec::new();
        link::seal(
            &link::refusal_key(),
            0,
            &Message::Refused { reason },
            &mut refused,
        );
        queue(&mut self.out, &mut self.stats, from, refused);
    }

    /// Moves the commands routed to remote nodes onto their links, and sends what is due.
    pub fn advance(&mut self, cm: &mut impl NodeTable, now: Nanos) {
        self.pending
            .retain(|p| now.saturating_sub(p.since) <= PENDING_NS);
        self.adopt(cm, now);
        while let Some((need, to, ack)) = self.held_acks.pop_front() {
            if need > cm.committed() {
                self.held_acks.push_front((need, to, ack));
                break;
            }
            queue(&mut self.out, &mut self.stats, to, ack);
        }
        let Hub {
            remotes,
            out,
            log,
            stats,
            join_key,
            ..
        } = self;
        for r in remotes.iter_mut() {
            let Some((addr, instance)) = cm
                .table()
                .and_then(|t| t.node(r.id))
                .map(|n| (n.addr, n.instance))
            else {
                continue;
            };
            let mut lost = None;
            while let Ok(command) = r.control.commands.try_recv() {
                if r.resync {
                    r.resync = false;
                    if let Err(e) = r.out.push(NodeCommand::Reset) {
                        lost = Some(e);
                    }
                }
                if let Err(e) = r.out.push(command) {
                    lost = Some(e);
                }
            }
            let mut due = Vec::new();
            match r.session.as_mut() {
                None if now >= r.next_hint => {
                    hint(r, now, (addr, instance), join_key.as_ref(), out, stats);
                }
                None => {}
                Some(session) => {
                    if lost.is_none()
                        && let Err(e) = r
                            .out
                            .poll_transmit(now, |seq, command| due.push((seq, command.clone())))
                    {
                        lost = Some(e);
                    }
                    for (seq, command) in due {
                        stats.commands_sent += 1;
                        let sealed = session.tx.seal(&Message::Command { seq, command });
                        queue(out, stats, addr, sealed);
                    }
                }
            }
            if lost.is_none()
                && r.sessionless_since
                    .is_some_and(|t| now.saturating_sub(t) > SESSIONLESS_NS)
            {
                // Taken over and never linked again: down, as a link lost; still asked.
                r.sessionless_since = None;
                lost = Some(Lost::NoSession);
            }
            if let Some(e) = lost {
                lose(cm, now, r, e, log, stats);
            }
            if now.saturating_sub(r.last_heard) > SILENT_NS {
                r.control.alive.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Hands every queued datagram to `send`, once.
    pub fn transmit_all(&mut self, send: impl FnOnce(&[(SocketAddr, &[u8])])) {
        if self.out.is_empty() {
            return;
        }
        let batch: Vec<(SocketAddr, &[u8])> = self.out.iter().map(|(a, d)| (*a, &d[..])).collect();
        send(&batch);
        self.out.clear();
    }
}

/// A JOIN and where it came from.
struct Asked<'a> {
    from: SocketAddr,
    name: &'a str,
    role: Role,
    instance: u64,
    nonce: link::Nonce,
}

fn queue(
    out: &mut Vec<(SocketAddr, Vec<u8>)>,
    stats: &mut HubStats,
    to: SocketAddr,
    datagram: Vec<u8>,
) {
    if out.len() >= MAX_OUT {
        stats.dropped += 1;
        return;
    }
    out.push((to, datagram));
}

fn line(now: Nanos, name: &str, what: &str) -> String {
    format!("{:.3}s {name} {what}", now as f64 / 1e9)
}

fn heard(r: &mut Remote, now: Nanos, name: &str, log: &mut Vec<String>) {
    r.last_heard = now;
    r.control.alive.store(true, Ordering::Relaxed);
    if r.lost {
        r.lost = false;
        log.push(line(now, name, "link back"));
    }
}

/// Asks a node this hub has no session with to JOIN again (sealed with the join key: only a
/// Call Manager that knows the token can ask).
fn hint(
    r: &mut Remote,
    now: Nanos,
    (to, instance): (SocketAddr, u64),
    join_key: Option<&pbxlab_proto::mac::Key>,
    out: &mut Vec<(SocketAddr, Vec<u8>)>,
    stats: &mut HubStats,
) {
    let Some(key) = join_key else {
        return;
    };
    r.next_hint = now + HINT_EVERY;
    stats.hints += 1;
    queue(out, stats, to, relink(key, stats.hints, instance, now));
}

/// A RELINK for process `instance`, stamped `now` on the group's clock.
fn relink(key: &pbxlab_proto::mac::Key, counter: u64, instance: u64, now: Nanos) -> Vec<u8> {
    let mut relink = Vec::new();
    link::seal(
        key,
        counter,
        &Message::Relink { instance, at: now },
        &mut relink,
    );
    relink
}

/// Gives up on what was queued for `r`: the node is marked down (its probes have most likely
/// done so already) and is told to start afresh with the next command.
fn lose(
    cm: &mut impl NodeTable,
    now: Nanos,
    r: &mut Remote,
    why: Lost,
    log: &mut Vec<String>,
    stats: &mut HubStats,
) {
    r.out.clear();
    r.resync = true;
    r.control.alive.store(false, Ordering::Relaxed);
    if !r.lost {
        r.lost = true;
        stats.lost += 1;
        let name = cm
            .table()
            .and_then(|t| t.node(r.id))
            .map_or("?", |n| n.name.as_str());
        log.push(line(now, name, &format!("link lost ({why}): marked down")));
    }
    cm.down(now, r.id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cm::{Config, NodeSpec};
    use crate::remote::{JoinSpec, Member, MemberState};
    use crate::{Leg, MediaSession};
    use pbxlab_balancer::{Balancer, FailoverMode, HealthConfig, Policy};
    use pbxlab_proto::mac::Key;

    fn cm_addr() -> SocketAddr {
        SocketAddr::from(([10, 211, 0, 1], 5060))
    }

    fn node_addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 211, 0, last], 7000))
    }

    fn call_manager() -> CallManager {
        let mut b = Balancer::new(HealthConfig::default());
        b.set_pool(Role::Media, Policy::LeastLoaded, FailoverMode::Auto);
        CallManager::new(Config::new(cm_addr()), b, Vec::<NodeSpec>::new())
    }

    fn hub() -> Hub {
        Hub::new(Some("tok"), &Key::from_seed(1), vec![(Role::Media, 50)])
    }

    fn member(name: &str, role: Role, token: &str) -> Member {
        Member::new(JoinSpec::new(cm_addr(), name, role, token).unwrap())
    }

    /// What `m` queued, handed to the hub as from `from`; returns the datagrams (to replay).
    fn to_hub(
        h: &mut Hub,
        cm: &mut CallManager,
        now: Nanos,
        from: SocketAddr,
        m: &mut Member,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        m.transmit_all(|d| out.extend(d.iter().map(|(_, b)| b.to_vec())));
        for d in &out {
            h.handle(cm, now, from, d);
        }
        out
    }

    /// What the hub queued, decoded.
    fn sent(h: &mut Hub) -> Vec<(SocketAddr, Message)> {
        raw(h)
            .into_iter()
            .map(|(to, b)| (to, link::decode(link::unseal(&b).unwrap().body).unwrap()))
            .collect()
    }

    fn raw(h: &mut Hub) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        h.transmit_all(|d| out.extend(d.iter().map(|(to, b)| (*to, b.to_vec()))));
        out
    }

    /// What the hub queued for `at`, handed to `m`; returns the commands it applied.
    fn to_member(h: &mut Hub, now: Nanos, at: SocketAddr, m: &mut Member) -> Vec<NodeCommand> {
        let mut got = Vec::new();
        for (to, d) in raw(h) {
            if to == at {
                m.handle(now, cm_addr(), &d, |c| got.push(c));
            }
        }
        got
    }

    /// `m` joins from `at`: its JOIN, our JOINED, and its first figures, which prove the session.
    fn joined(h: &mut Hub, cm: &mut CallManager, now: Nanos, at: SocketAddr, m: &mut Member) {
        m.advance(now, &node::NodeStats::default(), 0);
        to_hub(h, cm, now, at, m);
        to_member(h, now, at, m);
        m.advance(now, &node::NodeStats::default(), 0);
        to_hub(h, cm, now, at, m);
    }

    fn healthy(cm: &CallManager) -> bool {
        cm.balancer().server(ServerId(0)).unwrap().healthy
    }

    #[test]
    fn a_node_with_the_token_joins_and_one_without_is_refused() {
        let (mut cm, mut h) = (call_manager(), hub());
        let mut a = member("media-a", Role::Media, "tok");
        a.advance(0, &node::NodeStats::default(), 0);
        let join = to_hub(&mut h, &mut cm, 0, node_addr(2), &mut a);
        assert!(
            !String::from_utf8_lossy(&join[0]).contains("tok"),
            "the token travels"
        );
        let answer = raw(&mut h);
        assert!(matches!(
            &answer[..],
            [(to, b)] if *to == node_addr(2)
                && matches!(link::decode(link::unseal(b).unwrap().body), Ok(Message::Joined { id: 0, first_seq: 1, .. }))
        ));
        a.handle(0, cm_addr(), &answer[0].1, |_| {});
        assert_eq!(a.state(), &MemberState::Joined(0));
        // Not in yet: the JOIN proved only that its sender knew the token once.
        assert!(h.take_joined().is_empty() && cm.nodes().is_empty());
        // Its first figures, sealed for the session it was offered, prove it.
        a.advance(0, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 0, node_addr(2), &mut a);
        let joined = h.take_joined();
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0].id, 0);
        assert_eq!(cm.nodes()[0].place, node::Place::Remote);
        assert_eq!(cm.nodes()[0].addr, node_addr(2));
        assert_eq!(cm.balancer().server(ServerId(0)).unwrap().capacity, 50);
        // The same JOIN again (our answer was lost): the same answer, no second node.
        h.handle(&mut cm, 1, node_addr(2), &join[0]);
        assert_eq!(raw(&mut h), answer);
        assert!(h.take_joined().is_empty());

        let mut b = member("media-b", Role::Media, "nope");
        b.advance(2, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 2, node_addr(3), &mut b);
        let refused = sent(&mut h);
        assert_eq!(
            refused,
            [(
                node_addr(3),
                Message::Refused {
                    reason: "wrong token".into()
                }
            )]
        );
        let log = h.take_log();
        assert!(
            log[0].contains("media-a joined as media from 10.211.0.2:7000"),
            "{log:?}"
        );
        assert!(
            log[1].contains("media-b refused from 10.211.0.3:7000: wrong token"),
            "{log:?}"
        );
        // Its repeats are refused, and not logged again.
        b.advance(300_000_000, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 3, node_addr(3), &mut b);
        to_member(&mut h, 3, node_addr(3), &mut b);
        assert_eq!(b.state(), &MemberState::Refused("wrong token".into()));
        assert!(h.take_log().is_empty());
        assert_eq!(h.stats().refused, 2);
        assert_eq!(h.stats().unauthenticated, 2);
        assert_eq!(cm.nodes().len(), 1);
    }

    #[test]
    fn names_roles_and_addresses_are_checked() {
        let (mut cm, mut h) = (call_manager(), hub());
        joined(
            &mut h,
            &mut cm,
            0,
            node_addr(2),
            &mut member("media-a", Role::Media, "tok"),
        );
        let refused = |h: &mut Hub, cm: &mut CallManager, at, name, role| {
            let mut m = member(name, role, "tok");
            m.advance(1, &node::NodeStats::default(), 0);
            to_hub(h, cm, 1, at, &mut m);
            match &sent(h)[..] {
                [(_, Message::Refused { reason })] => reason.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            refused(&mut h, &mut cm, node_addr(3), "media-a", Role::Media),
            "the name media-a is taken by the node at 10.211.0.2:7000"
        );
        assert_eq!(
            refused(&mut h, &mut cm, node_addr(2), "media-z", Role::Media),
            "address 10.211.0.2:7000 is taken by media-a"
        );
        assert_eq!(
            refused(&mut h, &mut cm, node_addr(4), "ivr-a", Role::Ivr),
            "the cluster has no ivr pool"
        );
        let mut closed = Hub::new(None, &Key::from_seed(1), vec![(Role::Media, 50)]);
        assert!(
            refused(&mut closed, &mut cm, node_addr(5), "media-q", Role::Media)
                .contains("takes no remote nodes")
        );
    }

    fn echo(session: u64) -> NodeCommand {
        NodeCommand::Echo {
            session: MediaSession(session),
            leg: Leg {
                remote: node_addr(9),
                ssrc: Some(1),
                codec_pt: 0,
                dtmf_pt: None,
            },
        }
    }

    fn command_seqs(sent: &[(SocketAddr, Message)]) -> Vec<u64> {
        sent.iter()
            .map(|(_, m)| match m {
                Message::Command { seq, .. } => *seq,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn commands_are_resent_until_acknowledged_and_a_restart_starts_over() {
        let (mut cm, mut h) = (call_manager(), hub());
        let mut a = member("media-a", Role::Media, "tok");
        joined(&mut h, &mut cm, 0, node_addr(2), &mut a);
        let handle = h.take_joined().remove(0);
        assert!(handle.send(echo(1)));
        assert!(handle.send(echo(2)));
        h.advance(&mut cm, 0);
        let cmds = raw(&mut h);
        let decoded: Vec<_> = cmds
            .iter()
            .map(|(to, b)| (*to, link::decode(link::unseal(b).unwrap().body).unwrap()))
            .collect();
        assert_eq!(command_seqs(&decoded), [1, 2]);
        // Only the first arrives; the node acknowledges it.
        let mut applied = Vec::new();
        a.handle(1, cm_addr(), &cmds[0].1, |c| applied.push(c));
        assert_eq!(applied, [echo(1)]);
        to_hub(&mut h, &mut cm, 1, node_addr(2), &mut a);
        h.advance(&mut cm, link::RETRY);
        assert_eq!(command_seqs(&sent(&mut h)), [2]);
        // The node restarts: its new process joins; the node stays up until that process
        // proves its session (its first figures), then what was queued for the old one is
        // dropped.
        assert!(handle.send(echo(3)));
        assert!(healthy(&cm));
        let mut a2 = member("media-a", Role::Media, "tok");
        a2.advance(2, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 2, node_addr(2), &mut a2);
        assert!(matches!(
            &sent(&mut h)[..],
            [(to, Message::Joined { id: 0, first_seq: 1, .. })] if *to == node_addr(2)
        ));
        assert_eq!((h.stats().rejoins, h.stats().restart_claims), (0, 1));
        assert!(healthy(&cm));
        // (the JOINED again, as it was lost above)
        a2.advance(2 + 300_000_000, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 2 + 300_000_000, node_addr(2), &mut a2);
        to_member(&mut h, 3, node_addr(2), &mut a2);
        assert_eq!(a2.state(), &MemberState::Joined(0));
        a2.advance(3, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 3, node_addr(2), &mut a2);
        assert_eq!(h.stats().rejoins, 1);
        h.advance(&mut cm, 3 * link::RETRY);
        assert!(sent(&mut h).is_empty());
        // The balancer took it down; its probes bring it back.
        assert!(!healthy(&cm));
        // The new process gets commands numbered from where its JOINED said.
        assert!(handle.send(echo(4)));
        h.advance(&mut cm, 4 * link::RETRY);
        assert_eq!(to_member(&mut h, 4, node_addr(2), &mut a2), [echo(4)]);
        assert_eq!(a2.stats().unauthenticated, 0);
    }

    #[test]
    fn a_new_active_links_again_with_the_same_process_which_keeps_its_sessions() {
        let (mut cm, mut h1) = (call_manager(), hub());
        let mut a = member("media-a", Role::Media, "tok");
        joined(&mut h1, &mut cm, 0, node_addr(2), &mut a);
        assert_eq!(cm.node(ServerId(0)).unwrap().instance, a.spec().instance);
        // An event the old active never acknowledged.
        a.push_event(NodeEvent::Digit {
            session: MediaSession(7),
            digit: '5',
        });
        a.advance(1, &node::NodeStats::default(), 0);
        let _lost = to_hub(&mut h1, &mut cm.clone(), 1, node_addr(2), &mut a);
        // The new active's hub, over the same table (replicated), with a key of its own.
        let mut h2 = Hub::new(Some("tok"), &Key::from_seed(2), vec![(Role::Media, 50)]);
        let handle = {
            h2.advance(&mut cm, 10);
            let mut handles = h2.take_joined();
            assert_eq!(handles.len(), 1, "{:?}", h2.take_log());
            handles.remove(0)
        };
        // Commands for it wait for its session; it is asked to join again.
        assert!(handle.send(echo(1)));
        h2.advance(&mut cm, 11);
        let hints = sent(&mut h2);
        assert!(
            matches!(&hints[..], [(to, Message::Relink { instance, .. })]
                if *to == node_addr(2) && *instance == a.spec().instance),
            "{hints:?}"
        );
        // The node's next datagram, sealed for the old session, gets another one.
        a.advance(1_000_000_001, &node::NodeStats::default(), 0);
        to_hub(&mut h2, &mut cm, 12, node_addr(2), &mut a);
        assert!(h2.stats().sessionless >= 1);
        assert!(sent(&mut h2).is_empty(), "at most one RELINK per interval");
        // The node takes the RELINK, joins again with its instance and a new nonce.
        let mut hint = Vec::new();
        link::seal(
            &link::join_key("tok"),
            1,
            &Message::Relink {
                instance: a.spec().instance,
                at: 20,
            },
            &mut hint,
        );
        a.handle(20, cm_addr(), &hint, |_| {});
        assert_eq!(a.state(), &MemberState::Joining);
        a.advance(20, &node::NodeStats::default(), 0);
        to_hub(&mut h2, &mut cm, 20, node_addr(2), &mut a);
        assert_eq!(h2.stats().restart_claims, 0);
        to_member(&mut h2, 21, node_addr(2), &mut a);
        assert_eq!(a.state(), &MemberState::Joined(0));
        assert!(healthy(&cm));
        // Its first figures prove the session: a new link, not a restart; the node stays up,
        // the waiting command goes, and the event comes again on the new session, once.
        a.advance(22, &node::NodeStats::default(), 0);
        to_hub(&mut h2, &mut cm, 22, node_addr(2), &mut a);
        let st = h2.stats();
        assert_eq!((st.relinks, st.rejoins, st.events), (1, 0, 1), "{st:?}");
        assert!(healthy(&cm));
        h2.advance(&mut cm, 23);
        assert_eq!(to_member(&mut h2, 24, node_addr(2), &mut a), [echo(1)]);
        assert_eq!(a.stats().unauthenticated, 0);
        assert!(
            h2.take_log()
                .iter()
                .any(|l| l.contains("media-a linked again from 10.211.0.2:7000")),
        );
        // A RELINK replayed now is taken at most once a second.
        a.handle(25, cm_addr(), &hint, |_| {});
        assert!(matches!(a.state(), MemberState::Joined(_)));
    }

    /// The Call Manager as a group's replica would be: changes logged, held from `committed`.
    struct Replicated {
        cm: CallManager,
        logged: u64,
        committed: u64,
    }

    impl NodeTable for Replicated {
        fn table(&self) -> Option<&CallManager> {
            Some(&self.cm)
        }
        fn admit(&mut self, now: Nanos, node: NewNode) -> Result<ServerId, String> {
            self.logged += 1;
            self.cm.admit(now, node)
        }
        fn down(&mut self, now: Nanos, server: ServerId) {
            self.logged += 1;
            self.cm.down(now, server);
        }
        fn event(&mut self, now: Nanos, server: ServerId, event: NodeEvent) {
            self.logged += 1;
            self.cm.event(now, server, event);
        }
        fn relinked(&mut self, now: Nanos, server: ServerId, instance: u64) {
            self.logged += 1;
            self.cm.relinked(now, server, instance);
        }
        fn logged(&self) -> u64 {
            self.logged
        }
        fn committed(&self) -> u64 {
            self.committed
        }
    }

    #[test]
    fn an_event_is_acknowledged_only_once_a_standby_holds_what_it_changed() {
        let (mut plain, mut h) = (call_manager(), hub());
        let mut a = member("media-a", Role::Media, "tok");
        joined(&mut h, &mut plain, 0, node_addr(2), &mut a);
        raw(&mut h);
        let mut g = Replicated {
            cm: plain,
            logged: 7,
            committed: 7,
        };
        a.push_event(NodeEvent::Digit {
            session: MediaSession(5),
            digit: '1',
        });
        a.advance(1, &node::NodeStats::default(), 0);
        let mut out = Vec::new();
        a.transmit_all(|d| out.extend(d.iter().map(|(_, b)| b.to_vec())));
        for d in &out {
            h.handle(&mut g, 1, node_addr(2), d);
        }
        assert_eq!((h.stats().events, g.logged), (1, 8));
        h.advance(&mut g, 2);
        assert!(
            sent(&mut h).is_empty(),
            "acknowledged before a standby held it"
        );
        g.committed = 8;
        h.advance(&mut g, 3);
        assert_eq!(sent(&mut h), [(node_addr(2), Message::Ack { seq: 1 })]);
    }

    #[test]
    fn a_node_that_never_links_again_after_a_takeover_is_marked_down() {
        let (mut cm, mut h1) = (call_manager(), hub());
        let mut a = member("media-a", Role::Media, "tok");
        joined(&mut h1, &mut cm, 0, node_addr(2), &mut a);
        let mut h2 = Hub::new(Some("tok"), &Key::from_seed(2), vec![(Role::Media, 50)]);
        h2.advance(&mut cm, 10);
        assert!(healthy(&cm));
        h2.advance(&mut cm, 10 + SESSIONLESS_NS);
        assert!(healthy(&cm), "given up too early");
        h2.advance(&mut cm, 11 + SESSIONLESS_NS);
        assert!(!healthy(&cm));
        assert_eq!(h2.stats().lost, 1);
        assert!(h2.take_log().iter().any(|l| l.contains("no session")));
        // Still asked to join again.
        let hints = sent(&mut h2)
            .into_iter()
            .filter(|(_, m)| matches!(m, Message::Relink { .. }))
            .count();
        assert!(hints > 1);
    }

    #[test]
    fn a_node_made_to_join_again_under_a_live_session_loses_nothing_and_is_told_nothing() {
        let (mut cm, mut h) = (call_manager(), hub());
        let mut a = member("media-a", Role::Media, "tok");
        joined(&mut h, &mut cm, 0, node_addr(2), &mut a);
        let handle = h.take_joined().remove(0);
        assert!(handle.send(echo(1)));
        h.advance(&mut cm, 1);
        raw(&mut h);
        // A RELINK the node takes (a stray or replayed one): it joins again; the hub had a
        // session, so the unacknowledged command goes on the new one, and nothing else.
        let mut hint = Vec::new();
        let msg = Message::Relink {
            instance: 0,
            at: 99,
        };
        link::seal(&link::join_key("tok"), 1, &msg, &mut hint);
        a.handle(2, cm_addr(), &hint, |_| {});
        a.advance(2, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 2, node_addr(2), &mut a);
        to_member(&mut h, 3, node_addr(2), &mut a);
        a.advance(4, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 4, node_addr(2), &mut a);
        assert_eq!(h.stats().relinks, 1);
        assert!(
            cm.node_commands().next().is_none(),
            "the node was told again"
        );
        h.advance(&mut cm, 5);
        assert_eq!(to_member(&mut h, 6, node_addr(2), &mut a), [echo(1)]);
        assert!(healthy(&cm));
    }

    #[test]
    fn a_silent_link_is_lost_then_resynchronised_with_a_reset() {
        let (mut cm, mut h) = (call_manager(), hub());
        let mut a = member("media-a", Role::Media, "tok");
        joined(&mut h, &mut cm, 0, node_addr(2), &mut a);
        let handle = h.take_joined().remove(0);
        handle.send(echo(1));
        let mut now = 0;
        for _ in 0..=link::ATTEMPTS {
            h.advance(&mut cm, now);
            now += link::RETRY;
        }
        assert_eq!(h.stats().lost, 1);
        assert!(!handle.is_alive());
        assert!(h.take_log().iter().any(|l| l.contains("media-a link lost")));
        sent(&mut h);
        handle.send(echo(2));
        h.advance(&mut cm, now);
        let got: Vec<NodeCommand> = sent(&mut h)
            .into_iter()
            .filter_map(|(_, m)| match m {
                Message::Command { command, .. } => Some(command),
                _ => None,
            })
            .collect();
        assert_eq!(got, [NodeCommand::Reset, echo(2)]);
        // Its figures show it is back.
        let figures = node::NodeStats {
            sessions: 1,
            ..Default::default()
        };
        a.advance(now, &figures, 0);
        to_hub(&mut h, &mut cm, now, node_addr(2), &mut a);
        assert!(handle.is_alive());
        assert_eq!(handle.counters.load().sessions, 1);
        assert!(h.take_log().iter().any(|l| l.contains("media-a link back")));
    }

    #[test]
    fn events_reach_the_call_manager_once() {
        let (mut cm, mut h) = (call_manager(), hub());
        let mut a = member("media-a", Role::Media, "tok");
        joined(&mut h, &mut cm, 0, node_addr(2), &mut a);
        a.advance(0, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 0, node_addr(2), &mut a);
        a.push_event(NodeEvent::Digit {
            session: MediaSession(77),
            digit: '3',
        });
        a.advance(1, &node::NodeStats::default(), 0);
        let digit = to_hub(&mut h, &mut cm, 1, node_addr(2), &mut a);
        // The same datagram again is a replay: dropped, not acknowledged.
        h.handle(&mut cm, 2, node_addr(2), &digit[0]);
        assert_eq!(h.stats().replayed, 1);
        // Sent again (its ACK is not through yet): a duplicate, acknowledged again.
        a.advance(1 + link::RETRY, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 2, node_addr(2), &mut a);
        assert_eq!(h.stats().events, 1);
        assert_eq!(
            sent(&mut h),
            [
                (node_addr(2), Message::Ack { seq: 1 }),
                (node_addr(2), Message::Ack { seq: 1 })
            ]
        );
        // From an address of no node: not opened, answered with a RELINK (within a rate).
        h.handle(&mut cm, 3, node_addr(8), &digit[0]);
        h.handle(&mut cm, 4, node_addr(8), &digit[0]);
        assert_eq!(h.stats().strangers, 2);
        assert!(matches!(
            &sent(&mut h)[..],
            [(to, Message::Relink { instance: 0, at: 3 })] if *to == node_addr(8)
        ));
        h.handle(&mut cm, 3, node_addr(2), b"PBXL/1 EVENT");
        assert_eq!(h.stats().malformed, 1);
    }

    #[test]
    fn a_captured_join_replayed_where_the_name_is_free_joins_nobody() {
        // The node's JOIN and first figures, captured on the path by someone without the token.
        let (mut cm, mut h) = (call_manager(), hub());
        let mut a = member("media-a", Role::Media, "tok");
        a.advance(0, &node::NodeStats::default(), 0);
        let captured_join = to_hub(&mut h, &mut cm, 0, node_addr(2), &mut a);
        to_member(&mut h, 0, node_addr(2), &mut a);
        a.advance(0, &node::NodeStats::default(), 0);
        let captured_stats = to_hub(&mut h, &mut cm, 0, node_addr(2), &mut a);
        assert_eq!(h.take_joined().len(), 1);

        // A Call Manager that does not have the name: restarted (so its key is drawn afresh),
        // the JOIN replayed from the attacker's address, then the figures.
        let mut cm = call_manager();
        let mut h = Hub::new(Some("tok"), &Key::from_seed(2), vec![(Role::Media, 50)]);
        let attacker = node_addr(66);
        for at in [1, 2, 3] {
            h.handle(&mut cm, at, attacker, &captured_join[0]);
            h.handle(&mut cm, at, attacker, &captured_stats[0]);
        }
        h.advance(&mut cm, 4);
        assert!(
            cm.nodes().is_empty() && h.take_joined().is_empty(),
            "a replayed JOIN put the replayer in the pool (it would get callers' media, and its \
             address would be trusted as a node's)"
        );
        assert_eq!(h.stats().joins, 0);
        assert!(h.stats().unauthenticated + h.stats().ignored >= 3);
        // The offer lapses; the real node, joining afresh, still gets in.
        h.advance(&mut cm, 4 + PENDING_NS + 1);
        assert!(h.pending.is_empty(), "an offer never taken up is kept");
        let mut real = member("media-a", Role::Media, "tok");
        joined(&mut h, &mut cm, 5 + PENDING_NS, node_addr(2), &mut real);
        assert_eq!(h.take_joined().len(), 1);
        assert_eq!(cm.nodes()[0].addr, node_addr(2));
    }

    #[test]
    fn spoofed_and_replayed_joins_and_forged_stats_from_the_nodes_address_change_nothing() {
        let (mut cm, mut h) = (call_manager(), hub());
        let mut a = member("media-a", Role::Media, "tok");
        a.advance(0, &node::NodeStats::default(), 0);
        let captured_join = to_hub(&mut h, &mut cm, 0, node_addr(2), &mut a);
        to_member(&mut h, 0, node_addr(2), &mut a);
        let figures = node::NodeStats {
            sessions: 5,
            ..Default::default()
        };
        a.advance(1, &figures, 0);
        // Its first figures prove its session: it is in.
        let captured_stats = to_hub(&mut h, &mut cm, 1, node_addr(2), &mut a);
        let handle = h.take_joined().remove(0);
        assert_eq!(handle.counters.load().sessions, 5);
        assert!(healthy(&cm) && handle.is_alive());
        let unchanged = |h: &mut Hub, cm: &CallManager, what: &str| {
            assert!(healthy(cm), "{what}: the node went down");
            assert_eq!(h.stats().rejoins, 0, "{what}");
            assert_eq!(handle.counters.load().sessions, 5, "{what}");
        };

        // A JOIN with a new instance from the node's address, without the token.
        let mut spoof = member("media-a", Role::Media, "guess");
        spoof.advance(2, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 2, node_addr(2), &mut spoof);
        unchanged(&mut h, &cm, "spoofed JOIN");
        assert_eq!(h.stats().unauthenticated, 1);
        // The captured JOIN of the node's process, replayed: the same JOINED, which its
        // process takes as a repeat.
        h.handle(&mut cm, 3, node_addr(2), &captured_join[0]);
        to_member(&mut h, 3, node_addr(2), &mut a);
        unchanged(&mut h, &cm, "replayed JOIN");
        // A captured JOIN of another process (an earlier one, say): it is offered a session
        // it cannot prove without the token.
        let mut earlier = member("media-a", Role::Media, "tok");
        earlier.advance(0, &node::NodeStats::default(), 0);
        let mut old_join = Vec::new();
        earlier.transmit_all(|d| old_join.extend(d.iter().map(|(_, b)| b.to_vec())));
        for at in [4, 5, 6] {
            h.handle(&mut cm, at, node_addr(2), &old_join[0]);
        }
        unchanged(&mut h, &cm, "a JOIN of another process, replayed");

        // Forged and replayed figures.
        let forged = b"PBXL/1 STATS 99 0 0 0 0 0 0 0 0 0 0 0";
        h.handle(&mut cm, 7, node_addr(2), forged);
        let mut sealed = Vec::new();
        let text = String::from_utf8_lossy(&captured_stats[0]).into_owned();
        let body = text
            .rsplitn(3, ' ')
            .nth(2)
            .unwrap()
            .replacen("STATS 5 ", "STATS 99 ", 1);
        link::seal(
            &Key::from_seed(9),
            50,
            &link::decode(body.as_bytes()).unwrap(),
            &mut sealed,
        );
        h.handle(&mut cm, 7, node_addr(2), &sealed);
        let bumped = text.replacen("STATS 5 ", "STATS 99 ", 1);
        h.handle(&mut cm, 7, node_addr(2), bumped.as_bytes());
        h.handle(&mut cm, 8, node_addr(2), &captured_stats[0]);
        unchanged(&mut h, &cm, "forged STATS");
        assert_eq!(h.stats().malformed, 1);
        assert_eq!(h.stats().unauthenticated, 3);
        assert_eq!(h.stats().replayed, 1);

        // The real node is still in its session.
        let figures = node::NodeStats {
            sessions: 6,
            ..Default::default()
        };
        a.advance(2_000_000_000, &figures, 0);
        to_hub(&mut h, &mut cm, 9, node_addr(2), &mut a);
        assert_eq!(handle.counters.load().sessions, 6);
        assert!(healthy(&cm));
        // It dropped what reached it: the refusal the spoofer drew, and the JOINED again.
        let st = a.stats();
        assert_eq!((st.unauthenticated, st.replayed), (1, 1));

        // A real restart, with replayed JOINs around it, still rejoins.
        raw(&mut h);
        let mut a2 = member("media-a", Role::Media, "tok");
        a2.advance(10, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 10, node_addr(2), &mut a2);
        h.handle(&mut cm, 11, node_addr(2), &old_join[0]);
        let mut another = member("media-a", Role::Media, "tok");
        another.advance(0, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 11, node_addr(2), &mut another);
        to_member(&mut h, 12, node_addr(2), &mut a2);
        assert_eq!(a2.state(), &MemberState::Joined(0));
        assert!(healthy(&cm));
        a2.advance(12, &node::NodeStats::default(), 0);
        to_hub(&mut h, &mut cm, 12, node_addr(2), &mut a2);
        assert_eq!(h.stats().rejoins, 1);
        assert!(!healthy(&cm));
        // The old process's session is over.
        let before = h.stats().unauthenticated;
        a.advance(3_000_000_000, &figures, 0);
        to_hub(&mut h, &mut cm, 13, node_addr(2), &mut a);
        assert_eq!(h.stats().unauthenticated, before + 1);
    }
}
