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
//!
//! The state is divided by owner, each part in its own file with its own fields: `registrar`
//! (bindings), `auth` (nonces and what answers to them came to), `admission` (the rate limit and whitelist), `transactions` (our client
//! transactions and their timers), `calls` (the call table, dialogs and A's 200), `services`
//! (IVR sessions, queues and agents, meeting rooms) and `probes`; `failover` keeps the records
//! of moved and dropped calls. What needs several parts is a method of [`CallManager`] in the
//! file of its main concern: `b2bua` for the call flows, `teardown` for the ways a call ends,
//! `failover` for the balancer's decisions, `services` for transfers and queue dispatch,
//! `probes` for the probe rounds.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pbxlab_balancer::{Balancer, Event, Role, ServerId};
use pbxlab_proto::builder::{reason_phrase, write_response, write_status};
use pbxlab_proto::mac::Key;
use pbxlab_proto::sip::{HeaderName, Message, Method, parse_datagram};

use super::node::Place;
use super::{Leg, MediaSession, Nanos, NodeCommand, NodeEvent};

mod admission;
mod auth;
mod b2bua;
mod calls;
mod failover;
mod interned;
mod probes;
mod registrar;
mod services;
mod teardown;
mod transactions;

pub use auth::Trust;
pub use failover::{AdminError, DroppedCall, Reassigned};

use admission::{Admission, Verdict};
use auth::Auth;
use calls::{CallRef, Calls};
use failover::Records;
use registrar::Registrar;
use services::{Ivr, Queues, Rooms};
use transactions::{Transactions, TxId};

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
    /// Requests per second all sources that are neither whitelisted nor nodes may send
    /// together before they earn 503s, and what they may send at once: a flood spread over
    /// many addresses stays under each one's own limit.
    pub global_rate_limit_per_s: f64,
    pub global_rate_burst: f64,
    /// Sources never limited: the cluster's own nodes and trusted edges.
    pub whitelist: Vec<IpAddr>,
    /// Which calls need no credentials: anonymous callers' public services, trusted sources.
    pub trust: Trust,
    /// RFC 3261 T1 and T2.
    pub t1: Duration,
    pub t2: Duration,
    /// Calls in progress at once; beyond it new calls get 503.
    pub max_calls: usize,
    /// Registrations are capped at this many seconds.
    pub max_expires_s: u32,
    /// A call still up this many seconds after its INVITE is ended with a BYE on each leg
    /// and its media session ended: a caller that never hangs up (or an INVITE that only
    /// wanted the media aimed somewhere) holds nothing for ever. 0: no limit.
    pub max_call_s: u64,
    /// Keys everything the Call Manager hands out and must recognise later (nonces, branches,
    /// tags, Call-IDs): nothing else in it is random. [`Config::new`] derives it from seed 1
    /// (`Key::from_seed`), which replays a run; a cluster others can reach draws it at random
    /// ([`crate::random_key`]), so nothing it sent can be forged from the scenario.
    pub key: Key,
}

/// What a Call Manager holds that a snapshot never carries: every replica of a group is made
/// with the same, and the taker of a snapshot puts its own back ([`CallManager::rekey`]).
#[derive(Clone)]
pub struct Secrets {
    pub key: Key,
    /// The users' digest passwords are this prefix and their number.
    pub password_prefix: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

impl Config {
    pub fn secrets(&self) -> Secrets {
        Secrets {
            key: self.key.clone(),
            password_prefix: self.password_prefix.clone(),
        }
    }
}

/// The default longest call, three hours: longer than any scenario's hold time, short enough
/// that a call nobody ends does not hold its media session for a day.
pub const MAX_CALL_S: u64 = 3 * 3600;

/// The global rate limit's default, in per-source limits: five phones' worth of requests from
/// all untrusted sources together. The headline load comes from whitelisted sources (the
/// generator, a trusted edge), which the global limit does not count.
pub const GLOBAL_RATE_FACTOR: f64 = 5.0;

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
            global_rate_limit_per_s: GLOBAL_RATE_FACTOR * 200.0,
            global_rate_burst: GLOBAL_RATE_FACTOR * 400.0,
            whitelist: Vec::new(),
            trust: Trust::default(),
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            max_calls: 100_000,
            max_expires_s: 7200,
            max_call_s: MAX_CALL_S,
            key: Key::from_seed(1),
        }
    }
}

/// One row of the Call Manager's node table, the one place a node's identity is kept: the
/// balancer's number for it, its name and role, where it listens and where it runs. Its health
/// is the prober's and the balancer's; the hub keeps only a remote node's link, and a node's
/// handle only the channel, the `alive` switch and the counters.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: ServerId,
    pub name: String,
    pub role: Role,
    pub addr: SocketAddr,
    pub place: Place,
    /// The node's process, as its JOIN named it (remote nodes; 0 in this process): a JOIN
    /// with another is a restart, one with the same a link made anew.
    #[serde(default)]
    pub instance: u64,
}

/// A server added while the cluster runs (`ctl add`, a node joining over the link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    pub name: String,
    pub role: Role,
    pub addr: SocketAddr,
    pub capacity: u32,
    pub place: Place,
    /// The node's process (see [`NodeSpec::instance`]).
    pub instance: u64,
}

/// How the Call Manager holds one call ([`CallManager::call_view`]), for checks against what
/// its peers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallView {
    /// The server its media is anchored on, if any.
    pub media: Option<ServerId>,
    /// A re-INVITE of ours is open (or waits to be sent) in the dialog of this Call-ID.
    pub reinviting: bool,
    /// Re-INVITEs of a move sent and not yet answered.
    pub reinvites_open: u8,
    /// When its media began to move, while the move has not finished.
    pub moving_since: Option<Nanos>,
}

/// Whom a Call Manager holds (see [`CallManager::census`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Leg A's Call-ID of each call answered (with leg B's, if it has one), and of each not
    /// yet answered.
    pub up: std::collections::HashMap<String, Option<String>>,
    pub setting_up: std::collections::HashSet<String>,
    /// Calls ended by a BYE within the last Timer J (32 s), by leg A's or B's Call-ID.
    pub ended: std::collections::HashSet<String>,
    /// Users with a binding in force, and when it expires.
    pub users: std::collections::HashMap<u32, Nanos>,
}

/// Counters for the status line and the tests.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub registered: usize,
    pub registrations: u64,
    /// Answers to a challenge refused 403: a wrong password, a user we do not have, another
    /// user's credentials.
    pub auth_failures: u64,
    /// Right credentials on an expired nonce: challenged again with `stale=true`.
    pub auth_stale: u64,
    /// Credentials on a nonce we did not make (forged, or from before a restart).
    pub auth_forged_nonces: u64,
    /// Right credentials on a nonce and count already used by another request (a captured
    /// request sent again): challenged again.
    pub auth_replays: u64,
    /// Bans so far of a source address, and of a user, for ten wrong answers within a minute.
    pub auth_banned_sources: u64,
    pub auth_banned_users: u64,
    /// Requests refused because their source or user was banned (password not checked).
    pub auth_refused_banned: u64,
    pub calls_active: usize,
    pub calls_total: u64,
    pub calls_completed: u64,
    /// Calls ended without reaching their purpose, by reason.
    #[serde(deserialize_with = "interned::counts")]
    pub failures: std::collections::BTreeMap<&'static str, u64>,
    /// Requests refused 503 because their source sent above its own rate.
    pub rate_limited: u64,
    /// Requests refused 503 because the untrusted sources together sent above the global rate.
    pub global_rate_limited: u64,
    /// Idle or long-quiet sources forgotten from the full rate table to make room.
    pub rate_sources_evicted: u64,
    pub malformed: u64,
    /// In-dialog requests whose tags named no dialog of their Call-ID (forged or stale): 481.
    pub unmatched_in_dialog: u64,
    /// BYEs for a call they had already ended (their 200 lost), answered 200 again.
    pub bye_retransmissions: u64,
    /// INVITEs refused because their source held too many calls, or too many unconfirmed.
    pub source_limited: u64,
    /// Responses to our requests from an address the request did not go to: ignored.
    pub responses_foreign: u64,
    /// Responses whose branch is shaped like one of our transactions' or probes' but does not
    /// carry its MAC (guessed, forged, or from before a restart): ignored.
    pub responses_forged: u64,
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
    /// Probe answers that matched no probe sent to that node (stale, repeated or made up).
    pub probes_unmatched: u64,
    /// Probe answers from an address that is not the node's (forged, or misrouted).
    pub probes_foreign: u64,
    /// Probe rounds not counted because most of the cluster was silent at once.
    pub probe_rounds_ignored: u64,
    pub probe_rtt_max_us: u64,
}

const NS: Nanos = 1_000_000_000;

/// The To tag of every answer sent outside a call (a challenge, a refusal): no dialog's.
const STATELESS_TAG: &str = "cm";

fn ns(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(Nanos::MAX)
}

/// The Call Manager: the balancer, the nodes it places sessions on, and the parts that keep
/// the rest of the state. A clone is a standby's copy of the whole state ([`crate::ha`]).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct CallManager {
    balancer: Balancer,
    /// The node table, in the order the balancer numbered the servers (removed ones stay).
    nodes: Vec<NodeSpec>,
    /// The newest node at each address: link datagrams and probe answers are matched by source.
    node_at: HashMap<SocketAddr, ServerId>,
    /// Our SIP address (Via, Contact) and the domain of our users' addresses.
    addr: SocketAddr,
    domain: String,
    /// Our Contact value, `<sip:cm@{addr}>`, in every INVITE and 2xx to one.
    contact: String,
    max_calls: usize,
    /// How long a call may last (0: for ever).
    max_call: Nanos,
    /// What our tags, Call-IDs and the branches of probes and ACKs are keyed with (the
    /// transactions keep the key of theirs): nothing we hand out can be guessed.
    /// Never in a snapshot: its taker holds the same key and puts it back
    /// ([`CallManager::rekey`]).
    #[serde(skip, default = "Keys::unset")]
    keys: Keys,
    registrar: Registrar,
    auth: Auth,
    trust: Trust,
    admission: Admission,
    calls: Calls,
    txs: Transactions,
    ivr: Ivr,
    queues: Queues,
    rooms: Rooms,
    /// The health prober: when each node is probed and what its silence means.
    prober: pbxlab_balancer::Prober,
    probe_actions: Vec<pbxlab_balancer::ProbeAction>,
    /// Not in a snapshot: what was moved and dropped is the reporting replica's to hand over
    /// (the live cluster takes them before every sync), not its taker's.
    #[serde(skip)]
    records: Records,
    /// When expired bindings are next dropped and the queues looked at again without a cause.
    next_sweep: Nanos,
    out: Outbox,
    /// One message being rendered, before it is queued (and kept, if it is retransmitted).
    scratch: Vec<u8>,
    commands: Vec<(ServerId, NodeCommand)>,
    /// The BYEs that ended calls, for their retransmissions.
    ended_byes: teardown::EndedByes,
    /// Every media session a node was told to hold and not yet told to end, by node: what
    /// each node's own session count should say once it has applied its commands.
    anchored: HashMap<MediaSession, ServerId>,
    anchored_on: HashMap<ServerId, u64>,
    events: Vec<Event>,
    /// The counters no part keeps itself; [`CallManager::stats`] adds the parts' own.
    stats: Stats,
    /// A bug planted for the explorer's test to find: this many failover re-INVITEs to
    /// callers are not sent.
    #[cfg(test)]
    pub(crate) skip_failover_reinvites: u32,
}

impl CallManager {
    /// A Call Manager over `balancer`, whose servers are `nodes`.
    pub fn new(cfg: Config, balancer: Balancer, nodes: Vec<NodeSpec>) -> CallManager {
        let (t1, t2) = (ns(cfg.t1), ns(cfg.t2));
        CallManager {
            prober: {
                let mut p = pbxlab_balancer::Prober::new(balancer.health(), Duration::ZERO);
                for n in &nodes {
                    p.watch(n.id);
                }
                p
            },
            probe_actions: Vec::new(),
            node_at: nodes.iter().map(|n| (n.addr, n.id)).collect(),
            nodes,
            balancer,
            registrar: Registrar::new(&cfg),
            auth: Auth::new(&cfg.domain, &cfg.key),
            trust: cfg.trust.clone(),
            admission: Admission::new(&cfg),
            calls: Calls::new(t1, t2),
            txs: Transactions::new(t1, t2, cfg.key.derive("branch")),
            ivr: Ivr::default(),
            queues: Queues::new(&cfg),
            rooms: Rooms::default(),
            records: Records::default(),
            next_sweep: 0,
            out: Outbox::default(),
            scratch: Vec::new(),
            commands: Vec::new(),
            ended_byes: teardown::EndedByes::default(),
            anchored: HashMap::new(),
            anchored_on: HashMap::new(),
            events: Vec::new(),
            stats: Stats::default(),
            #[cfg(test)]
            skip_failover_reinvites: 0,
            contact: format!("<sip:cm@{}>", cfg.addr),
            addr: cfg.addr,
            max_calls: cfg.max_calls,
            max_call: cfg.max_call_s.saturating_mul(NS),
            keys: Keys::of(&cfg.key),
            domain: cfg.domain,
        }
    }

    /// Puts the secrets it was made with ([`Config::secrets`]) back into a Call Manager read
    /// from a snapshot, which carries none: every replica of a group holds the same.
    pub(crate) fn rekey(&mut self, secrets: &Secrets) {
        let key = &secrets.key;
        self.keys = Keys::of(key);
        self.auth.rekey(key);
        self.txs.rekey(key.derive("branch"));
        self.registrar.rekey(&secrets.password_prefix);
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// How we hold the call one of whose legs has this Call-ID, if we hold it.
    pub fn call_view(&self, call_id: &str) -> Option<CallView> {
        let (r, is_a) = self.calls.find(call_id)?;
        let c = self.calls.get(r)?;
        Some(CallView {
            media: c.media.map(|p| p.server),
            reinviting: c.reinviting[usize::from(!is_a)] || c.reinvite_again[usize::from(!is_a)],
            reinvites_open: c.reinvites_open,
            moving_since: c.moved_at,
        })
    }

    /// How long one of our transactions waits for its final response before it is given up
    /// (64 x T1, RFC 3261 Timers B and F).
    pub fn transaction_timeout(&self) -> Nanos {
        self.txs.timer_b()
    }

    /// Whether the user with this user part holds a binding in force at `now`.
    pub fn is_registered(&self, user: &str, now: Nanos) -> bool {
        self.registrar
            .user_number(user)
            .is_some_and(|n| self.registrar.is_registered(n, now))
    }

    /// Whom this Call Manager holds at `now`, for a drill to compare the Call Managers before
    /// and after a takeover.
    pub fn census(&self, now: Nanos) -> Census {
        let mut c = Census::default();
        for (id, b, answered) in self.calls.a_legs() {
            if answered {
                c.up.insert(id.to_owned(), b.map(str::to_owned));
            } else {
                c.setting_up.insert(id.to_owned());
            }
        }
        c.ended = self.ended_byes.call_ids(now).map(str::to_owned).collect();
        c.users = self.registrar.registered(now).collect();
        c
    }

    /// The row of node `id`.
    pub fn node(&self, id: ServerId) -> Option<&NodeSpec> {
        // Rows are pushed in the balancer's numbering, so the id is normally the index.
        match self.nodes.get(id.0 as usize) {
            Some(n) if n.id == id => Some(n),
            _ => self.nodes.iter().find(|n| n.id == id),
        }
    }

    /// The newest node that listens at `addr`.
    pub fn node_at(&self, addr: SocketAddr) -> Option<&NodeSpec> {
        self.node(*self.node_at.get(&addr)?)
    }

    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.calls_active = self.calls.active();
        s.queue_waiting = self.queues.waiting();
        s.rate_sources_evicted = self.admission.evicted();
        self.registrar.report(&mut s);
        self.auth.report(&mut s);
        self.rooms.report(&mut s);
        probes::report(&self.prober, &mut s);
        s
    }

    pub fn whitelist(&self) -> &[IpAddr] {
        self.admission.whitelist()
    }

    /// Adds a source to the whitelist; false if it was there already.
    pub fn whitelist_add(&mut self, ip: IpAddr) -> bool {
        self.admission.whitelist_add(ip)
    }

    /// Takes a source off the whitelist; false if it was not on it.
    pub fn whitelist_remove(&mut self, ip: IpAddr) -> bool {
        self.admission.whitelist_remove(ip)
    }

    /// Adds a node to the cluster, online; the balancer places sessions on it from now on and
    /// the probes watch it from the next round.
    pub fn add_node(&mut self, n: &NewNode) -> Result<ServerId, pbxlab_balancer::Error> {
        let NewNode {
            name,
            role,
            addr,
            capacity,
            place,
            instance,
        } = n;
        let (role, addr, capacity, place, instance) = (*role, *addr, *capacity, *place, *instance);
        let id = self.balancer.add_server(pbxlab_balancer::ServerSpec {
            name: name.clone(),
            role,
            capacity,
            weight: 1,
        })?;
        self.nodes.push(NodeSpec {
            id,
            name: name.to_owned(),
            role,
            addr,
            place,
            instance,
        });
        self.node_at.insert(addr, id);
        self.prober.watch(id);
        Ok(id)
    }

    /// Balancer events (server down or up, alerts) since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Media sessions the Call Manager has told `server` to hold and not yet to end: what the
    /// node's own count of sessions should match.
    pub fn media_sessions(&self, server: ServerId) -> u64 {
        self.anchored_on.get(&server).copied().unwrap_or(0)
    }

    /// Commands for the nodes, in order.
    pub fn node_commands(&mut self) -> std::vec::Drain<'_, (ServerId, NodeCommand)> {
        self.commands.drain(..)
    }

    /// Hands every queued datagram to `send`, once.
    pub fn transmit_all(&mut self, send: impl FnOnce(&[(SocketAddr, &[u8])])) {
        self.out.transmit_all(send);
    }

    /// When [`CallManager::advance`] next has something to do.
    pub fn next_deadline(&self) -> Nanos {
        let prober = u64::try_from(self.prober.next_deadline().as_nanos()).unwrap_or(Nanos::MAX);
        let timers = [
            Some(prober),
            self.calls.next_timer().map(|(at, _)| at),
            self.txs.next_timer().map(|(at, _)| at),
        ];
        let timer = timers.into_iter().flatten().min().unwrap_or(Nanos::MAX);
        timer.min(self.next_sweep)
    }

    /// Runs every timer due at `now`: retransmissions, transaction timeouts, probes, expiries.
    pub fn advance(&mut self, now: Nanos) {
        self.run_prober(now);
        if now >= self.next_sweep {
            self.next_sweep = now + NS;
            self.registrar.expire(now);
            self.end_overlong_calls(now);
            self.dispatch_queues(now);
        }
        while let Some(timer) = self.take_due(now) {
            match timer {
                Timer::Call(call) => self.call_timer(now, call),
                Timer::Tx(id) => self.tx_timer(now, id),
            }
        }
    }

    /// The earliest timer due at `now`, taken off its part. Each part keeps its own timers;
    /// the earliest goes first and ties go to probe checks, then calls, then transactions,
    /// so timers run in one order whatever part they belong to.
    fn take_due(&mut self, now: Nanos) -> Option<Timer> {
        let due = [
            self.calls.next_timer().map(|(at, c)| (at, Timer::Call(c))),
            self.txs.next_timer().map(|(at, id)| (at, Timer::Tx(id))),
        ];
        let (at, timer) = due.into_iter().flatten().min()?;
        if at > now {
            return None;
        }
        match timer {
            Timer::Call(_) => self.calls.pop_timer(),
            Timer::Tx(_) => self.txs.pop_timer(),
        }
        Some(timer)
    }

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
                if self.admission.admit(now, from, &self.nodes) == Verdict::Admit {
                    self.bad_request(from, datagram, why);
                }
                return;
            }
        };
        if msg.is_request() {
            let verdict = self.admission.admit(now, from, &self.nodes);
            if verdict != Verdict::Admit {
                if verdict == Verdict::GlobalLimited {
                    self.stats.global_rate_limited += 1;
                } else {
                    self.stats.rate_limited += 1;
                }
                if msg.method() != Some(Method::Ack) {
                    self.reply(from, &msg, 503, &[("Retry-After", "1")]);
                }
                return;
            }
            if msg.call_id().is_none() || msg.cseq().is_none() || msg.top_via().is_none() {
                self.stats.malformed += 1;
                if msg.top_via().is_some() {
                    self.reply(from, &msg, 400, &[]);
                }
                return;
            }
            let is_ack = msg.method() == Some(Method::Ack);
            // A Request-URI that is no SIP URI (`sip:@:;;;`) names nobody: 400, as the parser's
            // other refusals.
            if msg
                .request_uri()
                .is_none_or(|u| pbxlab_proto::uri::SipUri::parse(u).is_err())
            {
                self.stats.malformed += 1;
                if !is_ack {
                    self.reply(from, &msg, 400, &[]);
                }
                return;
            }
            // RFC 3261 16.3 step 3, and Kamailio's maxfwd check: a request out of hops gets 483.
            if msg.max_forwards() == Some(0) && !is_ack {
                self.reply(from, &msg, 483, &[]);
                return;
            }
            self.on_request(now, from, &msg);
        } else {
            self.on_response(now, from, &msg);
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
        let mut headers = Vec::new();
        let mut seen = [false; WANTED.len()];
        for line in lines.take_while(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = HeaderName::parse(name.trim());
            if let Some(i) = WANTED.iter().position(|&w| w == name) {
                seen[i] = true;
                headers.push((name.as_str(), value.trim()));
            }
        }
        if seen.contains(&false) {
            return;
        }
        let reason = format!("{} ({why})", reason_phrase(400));
        write_status(&mut self.scratch, 400, &reason, &headers, b"");
        self.out.push(to, &self.scratch);
    }

    /// A response to `req` with the standard phrase of `code`. Outside a call the request's
    /// To has no tag; every response but a 100 then gets ours.
    fn reply(&mut self, to: SocketAddr, req: &Message<'_>, code: u16, extra: &[(&str, &str)]) {
        let tag = if req.to().and_then(|t| t.tag()).is_none() && code > 100 {
            Some(STATELESS_TAG)
        } else {
            None
        };
        write_response(
            &mut self.scratch,
            req,
            code,
            reason_phrase(code),
            tag,
            extra,
            b"",
        );
        self.out.push(to, &self.scratch);
    }

    fn on_request(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let Some(method) = msg.method() else { return };
        let call_id = msg.call_id().unwrap_or_default();
        match (method, self.calls.find(call_id)) {
            (Method::Register, _) => self.register(now, from, msg),
            (Method::Options, None) => self.reply(from, msg, 200, &[("Accept", "application/sdp")]),
            (Method::Invite, None) => {
                if msg.to().and_then(|t| t.tag()).is_some() {
                    self.reply(from, msg, 481, &[]);
                } else {
                    self.invite(now, from, msg);
                }
            }
            (Method::Ack, None) => {}
            (_, Some((call, is_a))) => self.in_call(now, from, call, is_a, method, msg),
            (Method::Bye, None)
                if teardown::bye_key(msg).is_some_and(|k| self.ended_byes.seen(&k, from, now)) =>
            {
                // The BYE that ended this call, again: its 200 was lost.
                self.stats.bye_retransmissions += 1;
                self.reply(from, msg, 200, &[]);
            }
            (Method::Bye | Method::Cancel, None) => self.reply(from, msg, 481, &[]),
            _ => self.reply(from, msg, 501, &[]),
        }
    }

    fn node_addr(&self, server: ServerId) -> Option<SocketAddr> {
        self.nodes.iter().find(|n| n.id == server).map(|n| n.addr)
    }

    fn fail(&mut self, reason: &'static str) {
        *self.stats.failures.entry(reason).or_default() += 1;
    }
}

/// What a part's timer is for; the order of the variants breaks ties between parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Call(CallRef),
    Tx(TxId),
}

/// Datagrams waiting for [`CallManager::transmit_all`], back to back in one buffer.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
struct Outbox {
    buf: Vec<u8>,
    list: Vec<(SocketAddr, usize, usize)>,
}

impl Outbox {
    fn push(&mut self, to: SocketAddr, datagram: &[u8]) {
        let s = self.buf.len();
        self.buf.extend_from_slice(datagram);
        self.list.push((to, s, self.buf.len()));
    }

    fn transmit_all(&mut self, send: impl FnOnce(&[(SocketAddr, &[u8])])) {
        if self.list.is_empty() {
            return;
        }
        let buf = &self.buf;
        let list: Vec<(SocketAddr, &[u8])> = self
            .list
            .iter()
            .map(|&(to, s, e)| (to, buf.get(s..e).unwrap_or_default()))
            .collect();
        send(&list);
        self.list.clear();
        self.buf.clear();
    }
}

/// The keys of what the Call Manager hands out and must recognise (or at least not have
/// guessed) later, one per kind of field; [`Keyed`] labels keep the uses of one key apart.
#[derive(Clone)]
struct Keys {
    /// Probe and ACK branches (transactions keep their own copy).
    branch: Key,
    /// Our To tags on leg A, our From tags on leg B.
    tag: Key,
    /// Leg B's Call-IDs.
    call_id: Key,
}

impl Keys {
    fn of(key: &Key) -> Keys {
        Keys {
            branch: key.derive("branch"),
            tag: key.derive("tag"),
            call_id: key.derive("call-id"),
        }
    }

    /// What a Call Manager read from a snapshot holds until [`CallManager::rekey`].
    fn unset() -> Keys {
        Keys::of(&unkeyed())
    }
}

/// The key of a Call Manager read from a snapshot until its taker puts its own back: made
/// from nothing secret, so nothing made with it is trusted by a replica that has its key.
fn unkeyed() -> Key {
    Key::from_seed(u64::MAX).derive("unset: a snapshot's Call Manager before rekey")
}

/// One kind of keyed identifier, `{a}x{b}x{mac}`: two numbers that find what it names, and
/// the first 64 bits of the MAC of its label and both numbers as 16 hex digits, so that only
/// someone who saw it can name it (RFC 3261 8.1.1.7 and 19.3 ask branches, tags and Call-IDs
/// to be unique; being unguessable is what keeps an off-path forger from answering for a
/// peer or joining a dialog).
#[derive(Debug, Clone, Copy)]
struct Keyed(&'static [u8]);

impl Keyed {
    const TRANSACTION: Keyed = Keyed(b"transaction");
    const PROBE: Keyed = Keyed(b"probe");
    const TAG_A: Keyed = Keyed(b"tag a");
    const TAG_B: Keyed = Keyed(b"tag b");
    const CALL_ID_B: Keyed = Keyed(b"call-id b");

    fn mac(self, key: &Key, a: u32, b: u32) -> u64 {
        key.mac64(&[self.0, &a.to_be_bytes(), &b.to_be_bytes()])
    }

    /// The two numbers of `{a}x{b}x{16 hex digits}` when the digits are their MAC.
    fn check(self, key: &Key, s: &str) -> Option<(u32, u32)> {
        let mut parts = s.splitn(3, 'x');
        let a: u32 = parts.next()?.parse().ok()?;
        let b: u32 = parts.next()?.parse().ok()?;
        let mac = parts.next()?;
        if mac.len() != 16 {
            return None;
        }
        let (bytes, _) = pbxlab_proto::mac::parse_hex::<8>(mac)?;
        key.verify(&[self.0, &a.to_be_bytes(), &b.to_be_bytes()], &bytes)
            .then_some((a, b))
    }
}

/// A meeting room's affinity key: FNV-1a of its name, so every participant of a room maps to
/// the same key in any process.
fn room_key(room: &str) -> u64 {
    pbxlab_balancer::hash::fnv1a(room.as_bytes())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod failover_tests;

#[cfg(test)]
mod leg_b_tests;

#[cfg(test)]
mod auth_tests;
