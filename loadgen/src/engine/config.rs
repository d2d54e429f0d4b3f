//! What a run asks of the engine: the [`Config`], its workloads and their distributions, and
//! the wake grid that intended starts are rounded up to.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::users::{UserOrder, Users};

/// How long calls are held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hold {
    Fixed(Duration),
    /// Exponential with this mean.
    Exponential(Duration),
}

/// Whom calls go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callee {
    /// A fixed user part at the target: `echo`, `ivr-1`, `queue-1`, `meeting-7`, or anything a
    /// plain UAS accepts.
    Service(String),
    /// Another of the generator's own registered users, who answers.
    Users,
}

/// How the attempts of a workload are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    /// Attempt k is due at k / rate, as SIPp and wrk2 schedule.
    Fixed,
    /// A Poisson process: exponential gaps with mean 1 / rate, drawn from the workload's own
    /// seeded stream, so the schedule does not depend on what the target answers.
    Poisson,
}

/// The RFC 4733 digits a workload's calls send once answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Dtmf {
    None,
    /// Every call sends these.
    Digits(String),
    /// IVR callers asking for a queue: with probability `fraction` a call sends one digit, '1'
    /// to `queues` (at most '9') uniformly; the other calls send nothing.
    Queue {
        fraction: f64,
        queues: u32,
    },
}

/// One stream of calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// How the report names it: `calls`, `ivr`, `queue-1`, `meetings`, a service.
    pub name: String,
    /// Call attempts of this workload in this shard.
    pub calls: u64,
    /// Attempts per second in this shard.
    pub rate: f64,
    pub arrivals: Arrivals,
    pub callee: Callee,
    /// How long calls are held; for queue calls, the talk with the agent once connected.
    pub hold: Hold,
    /// The talk with the agent of IVR calls transferred to a queue (`None`: `hold`).
    pub agent_hold: Option<Hold>,
    pub dtmf: Dtmf,
    /// Mean of a queue caller's exponential patience; `None`: callers never abandon.
    pub patience: Option<Duration>,
}

impl Workload {
    /// A workload of `calls` attempts at `rate` per second on the fixed schedule, held for
    /// `hold`, sending no digits, with callers that never abandon.
    pub fn new(name: &str, callee: Callee, calls: u64, rate: f64, hold: Hold) -> Workload {
        Workload {
            name: name.to_owned(),
            calls,
            rate,
            arrivals: Arrivals::Fixed,
            callee,
            hold,
            agent_hold: None,
            dtmf: Dtmf::None,
            patience: None,
        }
    }
}

/// Everything the engine needs to know about the run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where requests go: a proxy, registrar or UAS.
    pub target: SocketAddr,
    /// Our SIP socket's address, as written in Via and Contact.
    pub local: SocketAddr,
    /// Our RTP socket's address, offered in SDP.
    pub rtp_local: SocketAddr,
    /// Host part of our users' addresses of record.
    pub domain: String,
    /// Users of this shard (already sliced), with their digest credentials, in the order they
    /// register.
    pub users: Users,
    /// Which users place and receive our calls.
    pub user_order: UserOrder,
    pub register: bool,
    pub register_rate: f64,
    pub expires_s: u32,
    /// The calls of this shard: every workload's attempts, merged by intended start.
    pub workloads: Vec<Workload>,
    /// The first this-many of `users` register (queue agents, say) but are never chosen as
    /// caller or callee of our own calls, so they stay free for the calls the target places to
    /// them. If every user is reserved, callers are chosen among all of them.
    pub reserved: usize,
    /// This process's slice of the run: (i, n) for `--shard i/n`. Meeting rooms interleave by it.
    pub shard: (u32, u32),
    /// Fraction of calls that send and receive RTP (calls that send digits always do).
    pub rtp_fraction: f64,
    /// How long an incoming call rings before we answer.
    pub ring_delay: Duration,
    /// Queue callers answered within this wait count in `answered_within_sl`.
    pub service_level: Duration,
    /// At most this many calls at once (SIPp's -l): later attempts wait, and their wait counts
    /// in `setup`, which is measured from the intended start.
    pub max_concurrent: Option<usize>,
    /// RFC 3261 T1 and T2.
    pub t1: Duration,
    pub t2: Duration,
    /// Every random choice of the engine derives from this and the shard's index, so one seed
    /// and shard repeat a run's choices (against a target that answers alike).
    pub seed: u64,
    /// Distinguishes this run's (and shard's) Call-IDs from any other's: [`run_id`] of the
    /// seed and the shard, for a run whose datagrams the seed repeats too.
    ///
    /// [`run_id`]: super::run_id
    pub run_id: u32,
    /// The driver's wake period: intended starts are rounded up to a multiple of it, so an
    /// attempt is due when the driver wakes, and its latency is not charged with the wait for
    /// the next wake.
    pub arrival_grid: Grid,
    /// How long the calls still in progress once the last attempt has started may take to end:
    /// then the run gives up on them (each fails as [`DRAINED`]). [`Config::longest_call`] is
    /// the usual figure.
    ///
    /// [`DRAINED`]: super::DRAINED
    pub drain_limit: Duration,
    /// The password rule of the numbered callers of a run without users (1000 to 1999, as
    /// `wire::UserPart` writes them): a digest challenge to their INVITE is answered as user N
    /// with the rule's password for N, as SIPp answers one with `-au`/`-ap`. Users from a table
    /// carry their own passwords.
    pub callers_password: crate::users::Password,
}

impl Config {
    /// The longest one of this run's calls may take, from its INVITE to the answer to its BYE,
    /// with its draws at ten times their means: a call may wait for an IVR transfer, then for
    /// an agent, then talk. Past this a call in progress is stuck, not slow.
    pub fn longest_call(&self) -> Duration {
        let bound = |h: Hold| match h {
            Hold::Fixed(d) => d,
            Hold::Exponential(m) => m * 10,
        };
        // An INVITE and a BYE transaction, each at most 64 x T1.
        self.t1 * 128
            + self
                .workloads
                .iter()
                .map(|w| {
                    bound(w.hold)
                        + w.agent_hold.map_or(Duration::ZERO, bound)
                        + w.patience.unwrap_or_default() * 10
                })
                .max()
                .unwrap_or_default()
    }
}

/// The grid intended starts are rounded up to, which is the period the driver wakes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grid {
    /// No rounding: the exact schedule, for a driver that wakes for each attempt.
    Exact,
    /// One period for the whole run (`--tick`).
    Every(Duration),
    /// A period per phase (registrations, then calls) from its rate: see [`auto_grid`].
    Auto,
}

/// The shortest and the longest period [`auto_grid`] chooses.
pub const AUTO_GRID: RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_millis(2);

/// The grids of the registration phase and of the call phase that `cfg` asks for.
pub(super) fn phase_grids(cfg: &Config) -> (Duration, Duration) {
    let calls: f64 = cfg.workloads.iter().map(|w| w.rate).sum();
    match cfg.arrival_grid {
        Grid::Exact => (Duration::ZERO, Duration::ZERO),
        Grid::Every(d) => (d, d),
        Grid::Auto => (auto_grid(cfg.register_rate), auto_grid(calls)),
    }
}

/// The wake period for a phase that starts `rate` attempts a second: the time in which two fall
/// due, within [`AUTO_GRID`].
///
/// A timer wakeup costs the generator about what an attempt's half-dozen datagrams do (16 µs on
/// the machine BENCHMARKS.md describes), so a driver that wakes for every attempt spends most
/// of its CPU waking. From 2,000 attempts a second a 1 ms tick already has two or more to a
/// wake, and a longer one would only send bigger bursts at the target; below that, the period
/// stretches to keep two to a wake, up to 2 ms, half the 4 ms bursts SIPp sends in. A
/// generator for which bursts of two matter more than CPU sets the tick itself.
pub fn auto_grid(rate: f64) -> Duration {
    let two = if rate > 0.0 {
        Duration::try_from_secs_f64(2.0 / rate).unwrap_or(*AUTO_GRID.end())
    } else {
        *AUTO_GRID.end()
    };
    // Whole microseconds, so the tick reads plainly in reports.
    let two = Duration::from_micros(two.as_micros() as u64);
    two.clamp(*AUTO_GRID.start(), *AUTO_GRID.end())
}

/// What the engine makes of a workload's callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Plain,
    Ivr,
    Queue,
    /// Rooms of this many participants.
    Meeting(u32),
}

impl Kind {
    pub(super) fn of(callee: &Callee) -> Kind {
        let Callee::Service(s) = callee else {
            return Kind::Plain;
        };
        if s.starts_with("queue-") {
            Kind::Queue
        } else if s.starts_with("ivr-") {
            Kind::Ivr
        } else if let Some(size) = s
            .strip_prefix("meeting-")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| n > 0)
        {
            Kind::Meeting(size)
        } else {
            Kind::Plain
        }
    }
}
