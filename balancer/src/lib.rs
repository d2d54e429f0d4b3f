//! The load-balancing core of pbxlab: which server of a pool takes a call, a meeting, an IVR or a
//! queue session, and where the sessions of a failed server go.
//!
//! It is sans-IO. It opens no sockets, reads no clock, owns no task and draws no random numbers:
//! every input is a method call (time-dependent ones take `now`, the driver's time since its
//! epoch) and every decision comes back as a value the caller must act on — an [`Assignment`] or a
//! typed [`Reject`], and on failure an [`Outcome`] holding a reassignment [`Plan`] and [`Event`]s.
//! The same code therefore decides in virtual time (`pbxlab plan`) and live (`pbxlab cluster`).
//!
//! It does not send probes, re-INVITE anybody or decide when a server is failed: drivers feed it
//! probe results and operator actions and carry out the moves it returns.

mod balancer;
pub mod hash;
mod heap;
mod prober;

pub use balancer::{Balancer, Released, ServerView, SessionView};
pub use prober::{MAX_INCONCLUSIVE_ROUNDS, PANIC_MIN_WATCHED, ProbeAction, Prober, ProberStats};

use std::fmt;
use std::time::Duration;

/// What a server does; each server runs exactly one role.
#[derive(
    serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum Role {
    Media,
    Meeting,
    Ivr,
    Queue,
    Im,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Media, Role::Meeting, Role::Ivr, Role::Queue, Role::Im];

    pub fn name(self) -> &'static str {
        match self {
            Role::Media => "media",
            Role::Meeting => "meeting",
            Role::Ivr => "ivr",
            Role::Queue => "queue",
            Role::Im => "im",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Dense index (0..5) for per-role tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a pool picks the server for a new session (or a new affinity group).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Lowest utilisation (load / capacity) among servers with room; never above capacity.
    LeastLoaded,
    /// Next server in turn that has room.
    RoundRobin,
    /// Smooth weighted round robin over servers with room.
    Weighted,
    /// Rendezvous (highest-random-weight) hashing of the affinity key; the next-ranked server
    /// with room when the first choice is full.
    Affinity,
}

impl Policy {
    pub const ALL: [Policy; 4] = [
        Policy::LeastLoaded,
        Policy::RoundRobin,
        Policy::Weighted,
        Policy::Affinity,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::LeastLoaded => "least-loaded",
            Policy::RoundRobin => "round-robin",
            Policy::Weighted => "weighted",
            Policy::Affinity => "affinity",
        }
    }

    pub fn from_name(name: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// What happens to the sessions of a server that health checks mark down.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailoverMode {
    /// Move them at once (the vendor's behaviour for media servers).
    Auto,
    /// Raise an alert and leave them until an operator disables the server (the vendor's
    /// behaviour for IVR, queue and meeting servers when auto-disable is off).
    Operator,
}

impl FailoverMode {
    pub fn name(self) -> &'static str {
        match self {
            FailoverMode::Auto => "auto",
            FailoverMode::Operator => "operator",
        }
    }

    pub fn from_name(name: &str) -> Option<FailoverMode> {
        [FailoverMode::Auto, FailoverMode::Operator]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

/// A server's state as operators see it. Only `Online` servers take new sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerState {
    Online,
    /// Takes no new sessions; existing ones finish where they are.
    Draining,
    /// Taken out of service by an operator; its sessions were moved away.
    Disabled,
    /// Failed its health checks (or was failed explicitly).
    Down,
}

impl ServerState {
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Online => "online",
            ServerState::Draining => "draining",
            ServerState::Disabled => "disabled",
            ServerState::Down => "down",
        }
    }
}

/// Index of a server in one [`Balancer`]; never reused, even after the server is removed.
#[derive(
    serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct ServerId(pub u32);

/// Handle of a placed session. Stale handles (released, dropped) are recognised, not reused.
#[derive(
    serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct SessionId {
    slot: u32,
    generation: u32,
}

impl SessionId {
    /// A dense index (below the most sessions ever placed at once) for drivers' side tables.
    /// Reused after release, so keep the whole id beside it to tell generations apart.
    pub fn index(self) -> usize {
        self.slot as usize
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}.{}", self.slot, self.generation)
    }
}

/// Sessions with the same key live on one server: a meeting room, a queue.
#[derive(
    serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct AffinityKey(pub u64);

/// A server to add to a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    pub role: Role,
    /// Concurrent session weight it can hold (calls; meeting participants; online IM users).
    pub capacity: u32,
    /// Relative share for [`Policy::Weighted`]; ignored by other policies.
    pub weight: u32,
}

/// A request for placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub role: Role,
    pub key: Option<AffinityKey>,
    /// Capacity the session uses: 1 for a call, the participant count for a whole meeting.
    pub weight: u32,
}

impl Request {
    pub fn new(role: Role) -> Request {
        Request {
            role,
            key: None,
            weight: 1,
        }
    }

    pub fn keyed(role: Role, key: AffinityKey, weight: u32) -> Request {
        Request {
            role,
            key: Some(key),
            weight,
        }
    }
}

/// A placed session.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Assignment {
    pub session: SessionId,
    pub server: ServerId,
}

/// Why a session could not be placed; the caller answers 503, counts it blocked, and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    #[error("no {role} server has room for {weight} more")]
    NoCapacity { role: Role, weight: u32 },
    #[error("no {role} server is in service")]
    NoServerInService { role: Role },
    #[error("the cluster has no {role} pool")]
    NoPool { role: Role },
}

/// A session a plan moved from one server to another; the driver re-points its media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub session: SessionId,
    pub from: ServerId,
    pub to: ServerId,
}

/// A session a plan could not place; the balancer has forgotten it and the driver ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub session: SessionId,
    pub from: ServerId,
    pub reason: Reject,
}

/// Where the sessions of a server that left service went. Moves of one affinity group are
/// adjacent and go to one server; within a role, moves keep the sessions' arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Plan {
    pub moves: Vec<Move>,
    pub dropped: Vec<Dropped>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty() && self.dropped.is_empty()
    }

    /// Sessions that were on the server when it left service.
    pub fn affected(&self) -> usize {
        self.moves.len() + self.dropped.len()
    }
}

/// Something that happened to a server.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: Duration,
    pub server: ServerId,
    pub kind: EventKind,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    Down,
    Up,
    Disabled,
    Enabled,
    Draining,
    /// A draining server has no sessions left.
    Drained,
    Added,
    Removed,
    /// Needs an operator: a server of a role whose failures the vendor reports as alerts.
    Alert(String),
}

/// The result of an operation that can change where sessions live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Outcome {
    pub plan: Plan,
    pub events: Vec<Event>,
}

/// One health probe's result.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Ok,
    /// No answer within the probe timeout.
    Timeout,
    /// An answer that says the server is unwell (e.g. a 5xx to OPTIONS).
    Failed,
}

/// Health-check settings. A probe's timeout must be shorter than the interval so probes never
/// overlap and detection time has a bound.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes that mark a server down.
    pub down_after: u32,
    /// Consecutive good probes that bring it back.
    pub up_after: u32,
}

impl HealthConfig {
    pub fn new(
        interval: Duration,
        timeout: Duration,
        down_after: u32,
        up_after: u32,
    ) -> Result<HealthConfig, Error> {
        if timeout >= interval {
            return Err(Error::InvalidHealth(
                "probe timeout must be shorter than the probe interval",
            ));
        }
        if down_after == 0 || up_after == 0 {
            return Err(Error::InvalidHealth(
                "down_after and up_after must be at least 1",
            ));
        }
        Ok(HealthConfig {
            interval,
            timeout,
            down_after,
            up_after,
        })
    }

    /// The longest a failed server can go unnoticed: `down_after` probes plus a timeout.
    pub fn detection_bound(&self) -> Duration {
        self.interval * self.down_after + self.timeout
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            down_after: 3,
            up_after: 2,
        }
    }
}

/// Errors of misuse: unknown ids, duplicate names, bad settings. Normal placement failures are
/// [`Reject`]s instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no server with id {0:?}")]
    UnknownServer(ServerId),
    #[error("session {0} is not placed (released, dropped, or never assigned)")]
    UnknownSession(SessionId),
    #[error("a server named {0:?} already exists")]
    DuplicateName(String),
    #[error("server {name:?} needs a capacity of at least 1")]
    ZeroCapacity { name: String },
    #[error("server {name:?} is {role} but the pool is configured as {pool}")]
    RoleMismatch {
        name: String,
        role: Role,
        pool: Role,
    },
    #[error("invalid health settings: {0}")]
    InvalidHealth(&'static str),
    #[error("invariant broken: {0}")]
    Invariant(String),
}
