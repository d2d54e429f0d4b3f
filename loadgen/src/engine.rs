//! The user-agent engine: registrations, outgoing and incoming calls, their SIP transactions and
//! timers, and every measurement — with no sockets and no clock.
//!
//! The driver feeds it datagrams and the time (`handle`, `advance`), sends what it queues
//! (`transmit`), passes media commands to the RTP worker (`media_commands`) and sleeps until
//! `next_deadline`. Tests drive it with a fake clock and a fake peer.
//!
//! Open-model load: attempt k of a phase is *intended* to start at `phase_start + k / rate`,
//! whatever happened to attempt k-1, and every latency is measured from that intended start. A
//! generator that falls behind (or a target that stalls it) therefore shows up in the figures
//! instead of silently stretching the schedule — the coordinated omission wrk2 corrects for.
//! The intended start is rounded up to the driver's wake grid (`Config::arrival_grid`, by
//! default a tick of 1 to 2 ms chosen from the phase's rate, [`Grid::Auto`]): the driver sends
//! only when it wakes, and an attempt due between two wakes would otherwise be charged the wait
//! for the next one, which is the generator's, not the target's.
//!
//! A run is a small list of workloads (plain calls, IVR, queue, meetings), each with its own
//! arrival schedule; arrivals of all workloads are merged by intended start time.
//!
//! Services of pbxlab's cluster are recognised by the called user part, and change what a call
//! measures and when it hangs up:
//! - `queue-N`: after the 200 the caller waits for an agent. The first re-INVITE connects it
//!   (`queue_wait`, from the 200), and only then does the hold (the talk with the agent) start.
//!   If the caller's patience (exponential, drawn per call) runs out first, it hangs up: the call
//!   is *abandoned*, counted apart from succeeded and failed.
//! - `ivr-N`: the digits go out once answered (every call that sends digits gets RTP, whatever
//!   the RTP fraction: RFC 4733 events travel in the RTP stream). If they ask for a queue (first
//!   digit '1'..='9'), the first re-INVITE is the transfer (`ivr_route`, from when the digits were
//!   handed to the RTP worker, which starts them about a second later), and from then on the call
//!   is a queue call: patience from the transfer, the second re-INVITE connects it to an agent.
//!   The call waits for the transfer for its hold time, and at least 64 x T1; without a transfer
//!   by then it hangs up as a plain call would.
//! - `meeting-N` (N a number) means rooms of N participants: the k-th call of the workload
//!   (0-based, in this shard) joins room `k / N * shards + shard + 1`, so consecutive calls fill
//!   a room and shards never share one.
//! - anything else (`echo`, a UAS's user part): held for the hold time, then BYE.
//!
//! A re-INVITE counts as a transfer or a connect only when its CSeq is new, so a retransmission
//! does not advance a call; a re-INVITE that merely moves media (a node failing over) while a
//! caller waits cannot be told from a connect and is counted as one.
//!
//! Calls live in a slab; the slot and its generation are encoded in the Call-ID and branch, so a
//! response finds its call without a map lookup.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use pbxlab_proto::builder::{Decimal, Template, write_response};
use pbxlab_proto::digest;
use pbxlab_proto::sdp::{self, Offer, OfferTemplate, SessionDescription};
use pbxlab_proto::sip::{self, HeaderName, Message, Method};
use pbxlab_proto::uri::{Host, NameAddr, SipUri};

use crate::metrics::{Metric, Metrics, Outcomes};
use crate::wheel::Wheel;

/// Nanoseconds since the start of the run.
pub type Nanos = u64;

fn ns(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

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
    /// Users of this shard (already sliced): their numbers.
    pub users: Vec<u32>,
    /// Digest password of user N is this prefix followed by N.
    pub password_prefix: String,
    pub register: bool,
    pub register_rate: f64,
    pub expires_s: u32,
    /// The calls of this shard: every workload's attempts, merged by intended start.
    pub workloads: Vec<Workload>,
    /// Users registered (queue agents, say) but never chosen as caller or callee of our own
    /// calls, so they stay free for the calls the target places to them. If every user is
    /// reserved, callers are chosen among all of them.
    pub reserved: Range<u32>,
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
    pub seed: u64,
    /// Distinguishes this run's (and shard's) Call-IDs from any other's.
    pub run_id: u32,
    /// The driver's wake period: intended starts are rounded up to a multiple of it, so an
    /// attempt is due when the driver wakes, and its latency is not charged with the wait for
    /// the next wake.
    pub arrival_grid: Grid,
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
fn phase_grids(cfg: &Config) -> (Duration, Duration) {
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

/// What the engine asks of the RTP worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCommand {
    /// Start sending G.711 every 20 ms to `dest` and receiving (demultiplexed by SSRC).
    Start {
        stream: u64,
        ssrc: u32,
        dest: SocketAddr,
        payload_type: u8,
    },
    /// The far end moved (re-INVITE): send to the new address from now on.
    Redirect {
        stream: u64,
        dest: SocketAddr,
    },
    /// Send these digits as RFC 4733 events.
    Dtmf {
        stream: u64,
        digits: String,
    },
    Stop {
        stream: u64,
    },
}

/// Where an outgoing call is in its service's flow while established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Held until `hold_until`, then BYE: plain calls, meetings, IVR calls that are not routed.
    Hold,
    /// An IVR call that asked for a queue, waiting for the transfer (re-INVITE).
    Menu,
    /// Waiting for an agent; `hold_until` is when patience runs out.
    Queued,
    /// Talking to an agent until `hold_until`.
    Agent,
    /// Hung up out of patience: the BYE's 200 counts the call as abandoned.
    Abandoned,
}

/// What the engine makes of a workload's callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Ivr,
    Queue,
    /// Rooms of this many participants.
    Meeting(u32),
}

impl Kind {
    fn of(callee: &Callee) -> Kind {
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

/// The arrival schedule of one workload.
#[derive(Debug, Clone)]
struct Schedule {
    kind: Kind,
    started: u64,
    /// Intended start of the next attempt, from the start of the call phase.
    next_at: Nanos,
    /// Poisson gaps come from here, apart from the engine's stream.
    rng: Rng,
}

/// How one of our calls ended, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Succeeded,
    Failed,
    Abandoned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Free,
    /// INVITE sent, nothing heard yet.
    Calling,
    /// A provisional response came; waiting for the final one.
    Proceeding,
    Established,
    ByeSent,
    /// We answer this call: ringing, the 200 not yet sent.
    Ringing,
    /// Our 200 is out; waiting for the ACK.
    Answered,
    UasEstablished,
}

/// One call leg. Kept small: the Call-ID, branches and our tags are derived from the slot and
/// generation, not stored.
#[derive(Debug, Clone)]
struct Call {
    generation: u32,
    state: CallState,
    intended: Nanos,
    cseq: u32,
    /// Number of INVITEs sent in this call (a digest retry sends a second one).
    invite_round: u8,
    caller: u32,
    callee: u32,
    /// Index of the call's workload in `Config::workloads`.
    workload: u32,
    stage: Stage,
    /// When the current wait began: digits requested (`Menu`), queue entered (`Queued`).
    stage_at: Nanos,
    /// The digit an IVR caller chose (`Dtmf::Queue`), 0 for none.
    digit: u8,
    /// Meeting room number, 0 if not a meeting call.
    room: u32,
    /// Highest CSeq of a request from the far end in this dialog, so a retransmitted
    /// re-INVITE does not advance the call.
    remote_cseq: u32,
    pdd_seen: bool,
    /// When the first INVITE actually left, for the uncorrected setup time.
    sent: Nanos,
    retransmit_at: Nanos,
    rto: Nanos,
    timeout_at: Nanos,
    hold_until: Nanos,
    /// Deadline of this call's one live entry in the timer heap (MAX: none). Entries that do
    /// not match are stale and skipped, so finished calls leave nothing behind for 32 s.
    armed_at: Nanos,
    bye_sent_at: Nanos,
    /// Their tag, their target URI and the route set (UAC: reversed Record-Route).
    remote_tag: String,
    remote_target: String,
    routes: Vec<String>,
    next_hop: SocketAddr,
    /// Authorization header line for INVITE retransmissions after a challenge.
    auth: String,
    rtp: bool,
    /// UAS only: the Call-ID and the header block our responses repeat (Via, From, To with our
    /// tag, Call-ID, CSeq, Record-Route).
    uas_call_id: String,
    uas_headers: String,
    uas_offer_addr: Option<SocketAddr>,
}

impl Call {
    fn free() -> Call {
        Call {
            generation: 0,
            state: CallState::Free,
            intended: 0,
            cseq: 0,
            invite_round: 0,
            caller: 0,
            callee: 0,
            workload: 0,
            stage: Stage::Hold,
            stage_at: 0,
            digit: 0,
            room: 0,
            remote_cseq: 0,
            pdd_seen: false,
            sent: 0,
            retransmit_at: Nanos::MAX,
            rto: 0,
            timeout_at: Nanos::MAX,
            hold_until: Nanos::MAX,
            armed_at: Nanos::MAX,
            bye_sent_at: 0,
            remote_tag: String::new(),
            remote_target: String::new(),
            routes: Vec::new(),
            next_hop: SocketAddr::from(([0, 0, 0, 0], 0)),
            auth: String::new(),
            rtp: false,
            uas_call_id: String::new(),
            uas_headers: String::new(),
            uas_offer_addr: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegState {
    Idle,
    Sent,
    Done,
}

#[derive(Debug, Clone)]
struct Registration {
    state: RegState,
    intended: Nanos,
    cseq: u32,
    authed: bool,
    retransmit_at: Nanos,
    rto: Nanos,
    timeout_at: Nanos,
    armed_at: Nanos,
    auth: String,
    /// When the binding is refreshed (at 80% of its lifetime, as phones do), while the run
    /// goes on; `Nanos::MAX` when not yet registered.
    refresh_at: Nanos,
    /// This attempt is a refresh, not the user's first registration.
    refreshing: bool,
    /// When this attempt's first REGISTER left.
    sent: Nanos,
}

/// How long after a request its digest challenge (401/407) comes back: smoothed as RFC 6298
/// smooths TCP's round trip, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct ChallengeRtt {
    srtt: u64,
    rttvar: u64,
}

impl ChallengeRtt {
    fn first(sample: Nanos) -> ChallengeRtt {
        ChallengeRtt {
            srtt: sample,
            rttvar: sample / 2,
        }
    }

    /// Takes one round trip into `rtt` (the first one starts it).
    fn sample(rtt: &mut Option<ChallengeRtt>, sample: Nanos) {
        match rtt {
            Some(r) => {
                r.rttvar = (3 * r.rttvar + r.srtt.abs_diff(sample)) / 4;
                r.srtt = (7 * r.srtt + sample) / 8;
            }
            None => *rtt = Some(ChallengeRtt::first(sample)),
        }
    }

    /// By then most challenges to a request sent now have come back.
    fn expected(&self) -> Nanos {
        self.srtt + 2 * self.rttvar
    }
}

/// Timer ids: call slots below this, registrations (index + this) above.
const REG_TIMER: u32 = 1 << 31;

/// SplitMix64: small, seeded, enough for hold times, RTP choice and cnonces.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponential draw with this mean.
    fn exponential(&mut self, mean: Nanos) -> Nanos {
        (-(1.0 - self.uniform()).ln() * mean as f64) as Nanos
    }
}

/// The requests every call sends, compiled once: a message is then fixed pieces copied around
/// the call's numbers, with no `core::fmt` on the way (it was the largest part of the
/// generator's own CPU after the timers). The run's constants are holes too, so the template
/// texts are literals and cannot fail to compile whatever the configuration holds.
struct Wire {
    invite: Template,
    in_dialog: Template,
    offer: OfferTemplate,
    /// Our SIP address and the run id, as text.
    local: Vec<u8>,
    run: Vec<u8>,
}

/// {0} request URI, {1} our address, {2} slot, {3} generation, {4} CSeq, {5} run id,
/// {6} caller, {7} domain, {8} Authorization line (or nothing).
const INVITE: &str = "INVITE {0} SIP/2.0\r\n\
    Via: SIP/2.0/UDP {1};branch=z9hG4bK{2}x{3}x{4}x{5};rport\r\n\
    Max-Forwards: 70\r\n\
    From: <sip:{6}@{7}>;tag={2}x{3}\r\n\
    To: <{0}>\r\n\
    Call-ID: {2}-{3}-{5}@pbxlab\r\n\
    CSeq: {4} INVITE\r\n\
    Contact: <sip:{6}@{1}>\r\n\
    {8}Content-Type: application/sdp\r\n\
    User-Agent: pbxlab";

/// {0} method, {1} request URI, {2} our address, {3} slot, {4} generation, {5} CSeq,
/// {6} run id, {7} the method's initial (branches differ per method), {8} caller, {9} domain,
/// {10} the To URI, {11} their tag, {12} Route lines (or nothing).
const IN_DIALOG: &str = "{0} {1} SIP/2.0\r\n\
    Via: SIP/2.0/UDP {2};branch=z9hG4bK{3}x{4}x{5}x{6}{7};rport\r\n\
    Max-Forwards: 70\r\n\
    From: <sip:{8}@{9}>;tag={3}x{4}\r\n\
    To: <{10}>;tag={11}\r\n\
    Call-ID: {3}-{4}-{6}@pbxlab\r\n\
    CSeq: {5} {0}\r\n\
    {12}User-Agent: pbxlab";

impl Wire {
    fn new(cfg: &Config) -> Wire {
        // The texts are the literals above, which the tests render: compiling cannot fail.
        let compile = |text| Template::compile(text).expect("a literal request template");
        Wire {
            invite: compile(INVITE),
            in_dialog: compile(IN_DIALOG),
            offer: OfferTemplate::new(&Offer {
                session_id: 0,
                version: 1,
                addr: cfg.rtp_local,
                payload_types: vec![sdp::PT_PCMU, sdp::PT_PCMA],
                telephone_event: true,
                ptime_ms: 20,
                ssrc: None,
            }),
            local: cfg.local.to_string().into_bytes(),
            run: cfg.run_id.to_string().into_bytes(),
        }
    }
}

pub struct Engine {
    cfg: Config,
    calls: Vec<Call>,
    free: Vec<u32>,
    uas_calls: HashMap<String, u32>,
    user_index: HashMap<u32, u32>,
    /// Users that place calls: all but the reserved ones.
    callers: Vec<u32>,
    schedules: Vec<Schedule>,
    regs: Vec<Registration>,
    timers: Wheel,
    /// Outgoing datagrams: (destination, their bytes' range in `arena`).
    out: Vec<(SocketAddr, Range<usize>)>,
    arena: Vec<u8>,
    media: Vec<MediaCommand>,
    pub metrics: Metrics,
    rng: Rng,
    regs_started: usize,
    regs_finished: usize,
    reg_phase: Nanos,
    /// `Engine::grids`.
    grids: (Duration, Duration),
    calls_started: u64,
    call_phase: Option<Nanos>,
    /// Challenge round trips of REGISTERs and of INVITEs, once one has been challenged.
    register_challenges: Option<ChallengeRtt>,
    invite_challenges: Option<ChallengeRtt>,
    /// When the challenges to the requests sent last are due back (see `challenges_due`).
    challenges_due: Option<Nanos>,
    active_calls: usize,
    stopping: bool,
    scratch: Vec<u8>,
    body: Vec<u8>,
    /// The request URI being written (reused).
    uri: Vec<u8>,
    wire: Wire,
    /// Datagrams that did not parse, for the report.
    pub malformed: u64,
    /// Responses for calls or registrations we no longer know (late retransmissions).
    pub stray: u64,
}

/// Stream id of a call for the RTP worker.
fn stream_id(slot: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(slot)
}

impl Engine {
    pub fn new(cfg: Config) -> Engine {
        let regs = cfg
            .users
            .iter()
            .map(|_| Registration {
                state: RegState::Idle,
                intended: 0,
                cseq: 0,
                authed: false,
                retransmit_at: Nanos::MAX,
                rto: 0,
                timeout_at: Nanos::MAX,
                armed_at: Nanos::MAX,
                auth: String::new(),
                refresh_at: Nanos::MAX,
                refreshing: false,
                sent: 0,
            })
            .collect();
        let user_index = cfg
            .users
            .iter()
            .enumerate()
            .map(|(i, &u)| (u, i as u32))
            .collect();
        let rng = Rng(cfg.seed ^ u64::from(cfg.run_id).rotate_left(32));
        let call_phase = (!cfg.register || cfg.users.is_empty()).then_some(0);
        let grids = phase_grids(&cfg);
        let mut callers: Vec<u32> = cfg
            .users
            .iter()
            .copied()
            .filter(|u| !cfg.reserved.contains(u))
            .collect();
        if callers.is_empty() {
            callers = cfg.users.clone();
        }
        let schedules = cfg
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut rng = Rng(rng.0 ^ (i as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03));
                let next_at = match w.arrivals {
                    Arrivals::Fixed => 0,
                    Arrivals::Poisson => poisson_gap(&mut rng, w.rate),
                };
                Schedule {
                    kind: Kind::of(&w.callee),
                    started: 0,
                    next_at,
                    rng,
                }
            })
            .collect();
        let mut metrics = Metrics::new();
        metrics.workloads = vec![Outcomes::default(); cfg.workloads.len()];
        let wire = Wire::new(&cfg);
        Engine {
            cfg,
            calls: Vec::new(),
            free: Vec::new(),
            uas_calls: HashMap::new(),
            user_index,
            callers,
            schedules,
            regs,
            timers: Wheel::new(),
            out: Vec::new(),
            arena: Vec::new(),
            media: Vec::new(),
            metrics,
            rng,
            regs_started: 0,
            regs_finished: 0,
            reg_phase: 0,
            grids,
            calls_started: 0,
            call_phase,
            register_challenges: None,
            invite_challenges: None,
            challenges_due: None,
            active_calls: 0,
            stopping: false,
            scratch: Vec::with_capacity(2048),
            body: Vec::with_capacity(512),
            uri: Vec::with_capacity(128),
            wire,
            malformed: 0,
            stray: 0,
        }
    }

    /// Stops starting new attempts and hangs up established calls; `finished` turns true once
    /// what is in flight has ended or timed out.
    pub fn stop(&mut self, now: Nanos) {
        self.stopping = true;
        // Hang up over a second rather than in one burst that would overflow the far end's
        // receive buffer and cost retransmissions.
        let mut k = 0;
        for slot in 0..self.calls.len() as u32 {
            let c = &mut self.calls[slot as usize];
            if c.state == CallState::Established && c.hold_until > now {
                // A caller still waiting was cut short by the stop, not by its patience: it
                // hangs up as a plain call and is not counted as abandoned.
                if matches!(c.stage, Stage::Menu | Stage::Queued) {
                    c.stage = Stage::Hold;
                }
                c.hold_until = now + (k % 1000) * 1_000_000;
                k += 1;
                self.arm(slot);
            }
        }
    }

    /// Attempts not started because the run was stopped count as neither.
    pub fn finished(&self) -> bool {
        let regs_done = !self.cfg.register
            || self.regs_finished == self.regs.len()
            || (self.stopping && self.regs_finished == self.regs_started);
        let calls_done = self.stopping
            || self
                .schedules
                .iter()
                .zip(&self.cfg.workloads)
                .all(|(s, w)| s.started >= w.calls);
        regs_done && calls_done && self.active_calls == 0
    }

    /// Whether the registration phase is over (and calls may start).
    pub fn registered(&self) -> bool {
        self.call_phase.is_some()
    }

    /// The next instant anything is due: a timer or a scheduled start.
    pub fn next_deadline(&self) -> Option<Nanos> {
        let timer = self.timers.peek();
        [timer, self.next_start()].into_iter().flatten().min()
    }

    fn next_start(&self) -> Option<Nanos> {
        if self.stopping {
            return None;
        }
        if self.cfg.register && self.regs_started < self.regs.len() {
            let at = self.reg_phase + gap(self.regs_started as u64, self.cfg.register_rate);
            return Some(Engine::on_grid(at, self.grids.0));
        }
        self.next_call().map(|(at, _)| at)
    }

    /// `at` rounded up to `grid` (zero: not rounded).
    fn on_grid(at: Nanos, grid: Duration) -> Nanos {
        match u64::try_from(grid.as_nanos()) {
            Ok(grid) if grid > 0 => at.div_ceil(grid).saturating_mul(grid),
            _ => at,
        }
    }

    /// The wake grids of the registration phase and of the call phase (zero: exact schedule).
    pub fn grids(&self) -> (Duration, Duration) {
        self.grids
    }

    /// The wake grid of the phase in progress: the period the driver keeps while traffic flows.
    pub fn grid(&self) -> Duration {
        let (registrations, calls) = self.grids;
        if self.call_phase.is_some() {
            calls
        } else {
            registrations
        }
    }

    /// The intended start of the next call and its workload: the earliest due of all
    /// workloads, the first listed on a tie.
    fn next_call(&self) -> Option<(Nanos, usize)> {
        let phase = self.call_phase?;
        if self
            .cfg
            .max_concurrent
            .is_some_and(|limit| self.active_calls >= limit)
        {
            // Held back until a call ends; the attempt keeps its intended start.
            return None;
        }
        self.schedules
            .iter()
            .zip(&self.cfg.workloads)
            .enumerate()
            .filter(|(_, (s, w))| s.started < w.calls)
            .map(|(i, (s, _))| {
                (
                    Engine::on_grid(phase.saturating_add(s.next_at), self.grids.1),
                    i,
                )
            })
            .min()
    }

    /// Starts every attempt whose intended time has come and fires due timers.
    ///
    /// The new attempts' requests are queued ahead of everything else: their latency counts
    /// from the intended start, so they leave first. What follows them is in-dialog (the ACKs
    /// the last read left, then the timers' BYEs), so requests of one kind and length are
    /// adjacent, for the sender to batch.
    pub fn advance(&mut self, now: Nanos) {
        let queued = self.out.len();
        while let Some(at) = self.next_start().filter(|&t| t <= now) {
            if self.cfg.register && self.regs_started < self.regs.len() {
                let i = self.regs_started;
                self.regs_started += 1;
                self.start_register(now, at, i);
            } else if let Some((_, w)) = self.next_call() {
                self.calls_started += 1;
                let k = self.schedules[w].started;
                let (rate, arrivals) = (self.cfg.workloads[w].rate, self.cfg.workloads[w].arrivals);
                let s = &mut self.schedules[w];
                s.started += 1;
                s.next_at = match arrivals {
                    Arrivals::Fixed => gap(s.started, rate),
                    Arrivals::Poisson => s.next_at.saturating_add(poisson_gap(&mut s.rng, rate)),
                };
                self.start_call(now, at, w, k);
            }
        }
        let started = self.out.len() - queued;
        self.out.rotate_right(started);
        while let Some((at, id)) = self.timers.pop_due(now) {
            if !self.take_armed(at, id) {
                continue;
            }
            if id >= REG_TIMER {
                self.reg_timer(now, (id - REG_TIMER) as usize);
            } else {
                self.call_timer(now, id);
            }
            // Whatever the timer did, the next deadline (if any) gets its entry.
            self.arm(id);
        }
    }

    /// Hands every queued datagram to `send` at once (for batched sending), then forgets them.
    pub fn transmit_all(&mut self, send: impl FnOnce(&[(SocketAddr, &[u8])])) {
        let batch: Vec<(SocketAddr, &[u8])> = self
            .out
            .iter()
            .filter_map(|(to, range)| Some((*to, self.arena.get(range.clone())?)))
            .collect();
        if !batch.is_empty() {
            send(&batch);
        }
        self.out.clear();
        self.arena.clear();
    }

    pub fn media_commands(&mut self) -> std::vec::Drain<'_, MediaCommand> {
        self.media.drain(..)
    }

    /// Calls in progress (either side).
    pub fn active_calls(&self) -> usize {
        self.active_calls
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Ends whatever is still in progress without a word to the far end (the run is over):
    /// our own calls count as failed with `reason`, calls to our users are just dropped.
    /// Returns how many of our calls that was.
    pub fn give_up(&mut self, reason: &str) -> u64 {
        let mut n = 0;
        for slot in 0..self.calls.len() as u32 {
            let c = &self.calls[slot as usize];
            if c.state == CallState::Free {
                continue;
            }
            if c.uas_call_id.is_empty() {
                n += 1;
                self.fail_call(slot, reason);
            } else {
                self.release(slot);
            }
        }
        n
    }

    fn queue(&mut self, to: SocketAddr) {
        let start = self.arena.len();
        self.arena.extend_from_slice(&self.scratch);
        self.out.push((to, start..self.arena.len()));
    }

    /// Makes sure `id` (a call slot, or `REG_TIMER` + a registration) has a live timer entry no
    /// later than its next deadline. Each keeps one entry: a later deadline is armed when the
    /// current entry fires, an earlier one replaces it (the old entry is skipped as stale).
    fn arm(&mut self, id: u32) {
        let (next, armed) = if id >= REG_TIMER {
            let Some(r) = self.regs.get_mut((id - REG_TIMER) as usize) else {
                return;
            };
            let next = match r.state {
                RegState::Sent => r.retransmit_at.min(r.timeout_at),
                RegState::Done => r.refresh_at,
                RegState::Idle => Nanos::MAX,
            };
            (next, &mut r.armed_at)
        } else {
            let Some(c) = self.calls.get_mut(id as usize) else {
                return;
            };
            let next = match c.state {
                CallState::Calling | CallState::ByeSent | CallState::Answered => {
                    c.retransmit_at.min(c.timeout_at)
                }
                CallState::Proceeding => c.timeout_at,
                CallState::Established => c.hold_until,
                CallState::Ringing => c.retransmit_at,
                CallState::UasEstablished | CallState::Free => Nanos::MAX,
            };
            (next, &mut c.armed_at)
        };
        if next < *armed {
            *armed = next;
            self.timers.push(next, id);
        }
    }

    /// Whether a popped timer entry is the live one of its call or registration.
    fn take_armed(&mut self, at: Nanos, id: u32) -> bool {
        let armed = if id >= REG_TIMER {
            self.regs
                .get_mut((id - REG_TIMER) as usize)
                .map(|r| &mut r.armed_at)
        } else {
            self.calls.get_mut(id as usize).map(|c| &mut c.armed_at)
        };
        match armed {
            Some(a) if *a == at => {
                *a = Nanos::MAX;
                true
            }
            _ => false,
        }
    }

    fn t1(&self) -> Nanos {
        ns(self.cfg.t1)
    }

    // ---- registrations -------------------------------------------------------------------

    fn start_register(&mut self, now: Nanos, intended: Nanos, i: usize) {
        self.begin_register(now, intended, i, 1, false);
    }

    /// Renews a binding before it lapses: the same Call-ID, the next CSeq (RFC 3261 10.2.4).
    fn refresh_register(&mut self, now: Nanos, i: usize) {
        let cseq = self.regs.get(i).map_or(1, |r| r.cseq + 1);
        self.begin_register(now, now, i, cseq, true);
    }

    fn begin_register(&mut self, now: Nanos, intended: Nanos, i: usize, cseq: u32, refresh: bool) {
        self.metrics.registrations.attempted += 1;
        let t1 = self.t1();
        let r = &mut self.regs[i];
        r.state = RegState::Sent;
        r.refreshing = refresh;
        r.intended = intended;
        r.cseq = cseq;
        r.authed = false;
        r.auth.clear();
        r.rto = t1;
        r.retransmit_at = now + t1;
        r.timeout_at = now + 64 * t1;
        r.sent = now;
        self.send_register(i);
        self.arm(REG_TIMER + i as u32);
        self.expect_challenges(now, self.register_challenges);
    }

    /// A request that may be challenged left at `now`: its challenge, if it comes back as the
    /// others did, is due at `now` plus their round trip.
    fn expect_challenges(&mut self, now: Nanos, rtt: Option<ChallengeRtt>) {
        let Some(rtt) = rtt else { return };
        let at = now.saturating_add(rtt.expected());
        self.challenges_due = Some(match self.challenges_due {
            Some(due) if due > now => due.min(at),
            _ => at,
        });
    }

    /// When the driver should read once more before its next tick, to answer the digest
    /// challenges to requests it has just sent: the challenges of the run so far came back by
    /// then. `None` until a request has been challenged. Answered at the next tick instead, a
    /// challenge would add up to a tick of the generator's own turnaround to `register` (or
    /// `setup`), which run from the first request to the final response.
    pub fn challenges_due(&self) -> Option<Nanos> {
        self.challenges_due
    }

    fn send_register(&mut self, i: usize) {
        let user = self.cfg.users[i];
        let r = &self.regs[i];
        let (local, domain, run, expires) = (
            self.cfg.local,
            &self.cfg.domain,
            self.cfg.run_id,
            self.cfg.expires_s,
        );
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKr{i}x{cseq}x{run};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=r{i}x{run}\r\nTo: <sip:{user}@{domain}>\r\n\
             Call-ID: r{i}-{run}@pbxlab\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{local}>\r\nExpires: {expires}\r\n",
            cseq = r.cseq
        );
        if !r.auth.is_empty() {
            self.scratch.extend_from_slice(r.auth.as_bytes());
        }
        self.scratch
            .extend_from_slice(b"User-Agent: pbxlab\r\nContent-Length: 0\r\n\r\n");
        self.queue(self.cfg.target);
    }

    fn reg_timer(&mut self, now: Nanos, i: usize) {
        let t2 = ns(self.cfg.t2);
        let stopping = self.stopping;
        let Some(r) = self.regs.get_mut(i) else {
            return;
        };
        if r.state == RegState::Done && now >= r.refresh_at {
            r.refresh_at = Nanos::MAX;
            if !stopping {
                self.refresh_register(now, i);
            }
            return;
        }
        if r.state != RegState::Sent {
            return;
        }
        if now >= r.timeout_at {
            self.finish_register(i, Err("REGISTER timeout"));
            return;
        }
        if now >= r.retransmit_at {
            r.rto = (r.rto * 2).min(t2);
            r.retransmit_at = now + r.rto;
            self.send_register(i);
            self.arm(REG_TIMER + i as u32);
        }
    }

    fn finish_register(&mut self, i: usize, result: Result<Nanos, &str>) {
        let lifetime = u64::from(self.cfg.expires_s) * 800_000_000;
        let r = &mut self.regs[i];
        r.state = RegState::Done;
        r.auth = String::new();
        let intended = r.intended;
        let refreshed = std::mem::take(&mut r.refreshing);
        if let Ok(now) = result
            && lifetime > 0
        {
            r.refresh_at = now.saturating_add(lifetime);
        }
        match result {
            Ok(now) => {
                self.metrics.registrations.succeeded += 1;
                if refreshed {
                    self.metrics.registrations_refreshed += 1;
                }
                self.metrics.record(
                    Metric::Register,
                    Duration::from_nanos(now.saturating_sub(intended)),
                );
            }
            Err(reason) => {
                self.metrics.registrations.failed += 1;
                self.metrics.fail(reason);
            }
        }
        if refreshed {
            // A refresh is not a first registration: the phase bookkeeping below is done.
            return;
        }
        self.regs_finished += 1;
        if self.regs_finished == self.regs.len() && self.call_phase.is_none() {
            self.call_phase = Some(match result {
                Ok(now) => now,
                Err(_) => self.regs.iter().map(|r| r.intended).max().unwrap_or(0),
            });
        }
    }

    fn on_register_response(&mut self, now: Nanos, i: usize, msg: &Message<'_>) {
        let Some(code) = msg.code() else { return };
        let Some(r) = self.regs.get(i) else { return };
        if r.state != RegState::Sent || msg.cseq().map(|c| c.seq) != Some(r.cseq) || code < 200 {
            return;
        }
        match code {
            200..=299 => self.finish_register(i, Ok(now)),
            401 | 407 if !r.authed => {
                // Only a request sent once times its challenge (Karn's rule).
                if r.rto == self.t1() {
                    ChallengeRtt::sample(&mut self.register_challenges, now.saturating_sub(r.sent));
                }
                let header = if code == 401 {
                    HeaderName::WwwAuthenticate
                } else {
                    HeaderName::ProxyAuthenticate
                };
                let user = self.cfg.users[i];
                let uri = format!("sip:{}", self.cfg.domain);
                let Some(line) = self.authorization(msg, header, code, user, "REGISTER", &uri)
                else {
                    self.finish_register(i, Err("unusable digest challenge"));
                    return;
                };
                let t1 = self.t1();
                let r = &mut self.regs[i];
                r.authed = true;
                r.auth = line;
                r.cseq += 1;
                r.rto = t1;
                r.retransmit_at = now + t1;
                self.send_register(i);
                self.arm(REG_TIMER + i as u32);
            }
            _ => self.finish_register(i, Err(status_reason(code))),
        }
    }

    /// The Authorization (or Proxy-Authorization) header line answering a challenge.
    fn authorization(
        &mut self,
        msg: &Message<'_>,
        header: HeaderName,
        code: u16,
        user: u32,
        method: &str,
        uri: &str,
    ) -> Option<String> {
        let value = msg.header(header)?;
        let challenge = digest::parse_challenge(value).ok()?;
        let password = format!("{}{user}", self.cfg.password_prefix);
        let cnonce = format!("{:016x}", self.rng.next());
        let mut out = String::with_capacity(300);
        out.push_str(if code == 401 {
            "Authorization: "
        } else {
            "Proxy-Authorization: "
        });
        digest::write_authorization(
            &mut out,
            &challenge,
            &user.to_string(),
            &password,
            method,
            uri,
            &cnonce,
            1,
        );
        out.push_str("\r\n");
        Some(out)
    }

    // ---- outgoing calls ------------------------------------------------------------------

    fn alloc(&mut self) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.calls.push(Call::free());
                (self.calls.len() - 1) as u32
            }
        };
        let c = &mut self.calls[slot as usize];
        let generation = c.generation.wrapping_add(1);
        *c = Call {
            generation,
            ..Call::free()
        };
        self.active_calls += 1;
        slot
    }

    fn release(&mut self, slot: u32) {
        let c = &mut self.calls[slot as usize];
        if c.state == CallState::Free {
            return;
        }
        if c.rtp {
            self.media.push(MediaCommand::Stop {
                stream: stream_id(slot, c.generation),
            });
        }
        if !c.uas_call_id.is_empty() {
            let id = std::mem::take(&mut c.uas_call_id);
            self.uas_calls.remove(&id);
        }
        let generation = c.generation;
        *c = Call {
            generation,
            ..Call::free()
        };
        self.free.push(slot);
        self.active_calls = self.active_calls.saturating_sub(1);
    }

    /// Starts attempt `k` (0-based) of workload `w`.
    fn start_call(&mut self, now: Nanos, intended: Nanos, w: usize, k: u64) {
        self.metrics.calls.attempted += 1;
        self.metrics.workloads[w].attempted += 1;
        let n = self.calls_started - 1;
        let users = self.callers.len() as u64;
        let workload = &self.cfg.workloads[w];
        let (caller, callee) = match (&workload.callee, users) {
            (_, 0) => (1000 + (n % 1000) as u32, 0),
            (Callee::Users, u) if u >= 2 => {
                // Pair user k with the one half the population away, so caller and callee differ.
                let a = (n % u) as usize;
                let b = (a + (u as usize) / 2) % u as usize;
                (self.callers[a], self.callers[b])
            }
            _ => (self.callers[(n % users) as usize], 0),
        };
        let kind = self.schedules[w].kind;
        let room = match kind {
            Kind::Meeting(size) => {
                let (shard, shards) = self.cfg.shard;
                let room = (k / u64::from(size)) * u64::from(shards.max(1)) + u64::from(shard) + 1;
                u32::try_from(room).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        let drawn = self.cfg.rtp_fraction > 0.0 && self.rng.uniform() < self.cfg.rtp_fraction;
        let (digit, digits) = match &workload.dtmf {
            Dtmf::None => (0, false),
            Dtmf::Digits(d) => (0, !d.is_empty()),
            &Dtmf::Queue { fraction, queues } => {
                if queues > 0 && self.rng.uniform() < fraction {
                    let q = self.rng.next() % u64::from(queues.min(9));
                    (b'1' + q as u8, true)
                } else {
                    (0, false)
                }
            }
        };
        // RFC 4733 events travel in the RTP stream: a call that sends digits needs one.
        let rtp = drawn || digits;
        let routes = kind == Kind::Ivr
            && match (&workload.dtmf, digit) {
                (_, b'1'..=b'9') => true,
                (Dtmf::Digits(d), _) => d.starts_with(|c: char| ('1'..='9').contains(&c)),
                _ => false,
            };
        let stage = match kind {
            Kind::Queue => Stage::Queued,
            Kind::Ivr if routes => Stage::Menu,
            _ => Stage::Hold,
        };
        let slot = self.alloc();
        let t1 = self.t1();
        let target = self.cfg.target;
        let c = &mut self.calls[slot as usize];
        c.state = CallState::Calling;
        c.intended = intended;
        c.sent = now;
        c.cseq = 1;
        c.invite_round = 1;
        c.caller = caller;
        c.callee = callee;
        c.workload = w as u32;
        c.stage = stage;
        c.digit = digit;
        c.room = room;
        c.rtp = rtp;
        c.rto = t1;
        c.retransmit_at = now + t1;
        c.timeout_at = now + 64 * t1;
        c.next_hop = target;
        self.send_invite(slot);
        self.arm(slot);
        self.expect_challenges(now, self.invite_challenges);
    }

    fn request_uri(&self, c: &Call) -> String {
        let mut uri = Vec::new();
        self.write_request_uri(&mut uri, c);
        String::from_utf8_lossy(&uri).into_owned()
    }

    /// Appends the URI call `c` dials: a user, a service, or a meeting room, at our domain.
    fn write_request_uri(&self, out: &mut Vec<u8>, c: &Call) {
        let callee = self
            .cfg
            .workloads
            .get(c.workload as usize)
            .map(|w| &w.callee);
        out.extend_from_slice(b"sip:");
        match callee {
            Some(Callee::Service(_)) if c.callee == 0 && c.room > 0 => {
                out.extend_from_slice(b"meeting-");
                out.extend_from_slice(Decimal::new(c.room.into()).as_bytes());
            }
            Some(Callee::Service(s)) if c.callee == 0 => out.extend_from_slice(s.as_bytes()),
            _ => out.extend_from_slice(Decimal::new(c.callee.into()).as_bytes()),
        }
        out.push(b'@');
        out.extend_from_slice(self.cfg.domain.as_bytes());
    }

    /// The digits call `c` sends once answered.
    fn digits(&self, c: &Call) -> Option<String> {
        if c.digit != 0 {
            return Some(char::from(c.digit).to_string());
        }
        match &self.cfg.workloads.get(c.workload as usize)?.dtmf {
            Dtmf::Digits(d) if !d.is_empty() => Some(d.clone()),
            _ => None,
        }
    }

    /// A hold (or talk, or patience) time drawn from `hold`.
    fn draw(&mut self, hold: Hold) -> Nanos {
        match hold {
            Hold::Fixed(d) => ns(d),
            Hold::Exponential(mean) => self.rng.exponential(ns(mean)),
        }
    }

    /// Call `slot` enters its queue now: it waits for an agent until its patience runs out.
    fn enter_queue(&mut self, now: Nanos, slot: u32) {
        self.metrics.queue.offered += 1;
        let w = self.calls[slot as usize].workload as usize;
        let patience = self
            .cfg
            .workloads
            .get(w)
            .and_then(|w| w.patience)
            .map(|p| self.rng.exponential(ns(p)));
        let c = &mut self.calls[slot as usize];
        c.stage = Stage::Queued;
        c.stage_at = now;
        c.hold_until = patience.map_or(Nanos::MAX, |p| now.saturating_add(p));
    }

    /// Counts how our call `slot` ended (it must be one of ours).
    fn count_end(&mut self, slot: u32, ended: End) {
        let c = &self.calls[slot as usize];
        let ended = if ended == End::Succeeded && c.stage == Stage::Abandoned {
            End::Abandoned
        } else {
            ended
        };
        let m = &mut self.metrics;
        let workload = m.workloads.get_mut(c.workload as usize);
        for o in std::iter::once(&mut m.calls).chain(workload) {
            match ended {
                End::Succeeded => o.succeeded += 1,
                End::Failed => o.failed += 1,
                End::Abandoned => o.abandoned += 1,
            }
        }
    }

    fn send_invite(&mut self, slot: u32) {
        let c = &self.calls[slot as usize];
        let mut uri = std::mem::take(&mut self.uri);
        uri.clear();
        self.write_request_uri(&mut uri, c);
        self.body.clear();
        self.wire.offer.render(
            &mut self.body,
            SESSION_ID_BASE + u64::from(slot),
            Some(ssrc(slot, c.generation)),
        );
        let start = self.arena.len();
        let rendered = self.wire.invite.render_append(
            &mut self.arena,
            &[
                &uri,
                &self.wire.local,
                slot_digits(slot).as_bytes(),
                generation_digits(c.generation).as_bytes(),
                Decimal::new(c.cseq.into()).as_bytes(),
                &self.wire.run,
                Decimal::new(c.caller.into()).as_bytes(),
                self.cfg.domain.as_bytes(),
                c.auth.as_bytes(),
            ],
            &self.body,
        );
        self.uri = uri;
        // Only a wrong number of values fails, and these are fixed here (the tests send them).
        if rendered.is_ok() {
            self.out.push((c.next_hop, start..self.arena.len()));
        }
    }

    /// ACK or BYE inside the dialog, along the route set to the next hop.
    fn send_in_dialog(&mut self, slot: u32, method: &str, cseq: u32) {
        let c = &self.calls[slot as usize];
        let (mut uri, mut to_uri) = (
            std::mem::take(&mut self.uri),
            std::mem::take(&mut self.scratch),
        );
        uri.clear();
        to_uri.clear();
        self.write_request_uri(&mut to_uri, c);
        if c.remote_target.is_empty() {
            uri.extend_from_slice(&to_uri);
        } else {
            uri.extend_from_slice(c.remote_target.as_bytes());
        }
        // No body here: its buffer takes the Route lines.
        self.body.clear();
        for r in &c.routes {
            self.body.extend_from_slice(b"Route: ");
            self.body.extend_from_slice(r.as_bytes());
            self.body.extend_from_slice(b"\r\n");
        }
        let method = method.as_bytes();
        let start = self.arena.len();
        let rendered = self.wire.in_dialog.render_append(
            &mut self.arena,
            &[
                method,
                &uri,
                &self.wire.local,
                slot_digits(slot).as_bytes(),
                generation_digits(c.generation).as_bytes(),
                Decimal::new(cseq.into()).as_bytes(),
                &self.wire.run,
                method.get(..1).unwrap_or_default(),
                Decimal::new(c.caller.into()).as_bytes(),
                self.cfg.domain.as_bytes(),
                &to_uri,
                c.remote_tag.as_bytes(),
                &self.body,
            ],
            b"",
        );
        (self.uri, self.scratch) = (uri, to_uri);
        if rendered.is_ok() {
            self.out.push((c.next_hop, start..self.arena.len()));
        }
    }

    /// The ACK for a non-2xx final response: same branch as the INVITE, to the same place.
    fn send_error_ack(&mut self, slot: u32, to_header: &str) {
        let c = &self.calls[slot as usize];
        let ruri = self.request_uri(c);
        let (local, domain, run) = (self.cfg.local, &self.cfg.domain, self.cfg.run_id);
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{slot}x{g}x{cseq}x{run};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{caller}@{domain}>;tag={slot}x{g}\r\nTo: {to_header}\r\n\
             Call-ID: {slot}-{g}-{run}@pbxlab\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            slot = slot_digits(slot),
            g = generation_digits(c.generation),
            cseq = c.cseq,
            caller = c.caller,
        );
        let to = c.next_hop;
        self.queue(to);
    }

    fn fail_call(&mut self, slot: u32, reason: &str) {
        self.count_end(slot, End::Failed);
        self.metrics.fail(reason);
        self.release(slot);
    }

    fn call_timer(&mut self, now: Nanos, slot: u32) {
        let t2 = ns(self.cfg.t2);
        let Some(c) = self.calls.get_mut(slot as usize) else {
            return;
        };
        match c.state {
            CallState::Calling | CallState::Proceeding => {
                if now >= c.timeout_at {
                    self.fail_call(slot, "INVITE timeout");
                } else if c.state == CallState::Calling && now >= c.retransmit_at {
                    // Timer A: INVITE retransmissions double without a cap.
                    c.rto *= 2;
                    c.retransmit_at = now + c.rto;
                    self.send_invite(slot);
                    self.arm(slot);
                }
            }
            CallState::Established if now >= c.hold_until => {
                if c.stage == Stage::Queued {
                    // Patience ran out before an agent answered.
                    c.stage = Stage::Abandoned;
                    self.metrics.queue.abandoned += 1;
                }
                c.state = CallState::ByeSent;
                c.cseq += 1;
                c.bye_sent_at = now;
                c.rto = ns(self.cfg.t1);
                c.retransmit_at = now + c.rto;
                c.timeout_at = now + 64 * c.rto;
                let cseq = c.cseq;
                if c.rtp {
                    self.media.push(MediaCommand::Stop {
                        stream: stream_id(slot, c.generation),
                    });
                }
                self.send_in_dialog(slot, "BYE", cseq);
                self.arm(slot);
            }
            CallState::ByeSent => {
                if now >= c.timeout_at {
                    self.fail_call(slot, "BYE timeout");
                } else if now >= c.retransmit_at {
                    // Timer E: non-INVITE retransmissions double up to T2.
                    c.rto = (c.rto * 2).min(t2);
                    c.retransmit_at = now + c.rto;
                    let cseq = c.cseq;
                    self.send_in_dialog(slot, "BYE", cseq);
                    self.arm(slot);
                }
            }
            CallState::Ringing if now >= c.retransmit_at => {
                // The ring delay is over: answer.
                c.state = CallState::Answered;
                c.rto = ns(self.cfg.t1);
                c.retransmit_at = now + c.rto;
                c.timeout_at = now + 64 * c.rto;
                self.send_uas_response(slot, 200, "OK", true);
                self.arm(slot);
            }
            CallState::Answered => {
                if now >= c.timeout_at {
                    // Timer H: no ACK for our 200.
                    self.metrics.fail("no ACK for 200");
                    self.release(slot);
                } else if now >= c.retransmit_at {
                    // Timer G: 200 retransmissions double up to T2.
                    c.rto = (c.rto * 2).min(t2);
                    c.retransmit_at = now + c.rto;
                    self.send_uas_response(slot, 200, "OK", true);
                    self.arm(slot);
                }
            }
            _ => {}
        }
    }

    fn on_call_response(&mut self, now: Nanos, slot: u32, msg: &Message<'_>) {
        let Some(code) = msg.code() else { return };
        let Some(cseq) = msg.cseq() else { return };
        let c = &self.calls[slot as usize];
        if cseq.seq != c.cseq {
            // A response to an earlier INVITE (the one before the digest retry): absorb it, but
            // a final one still needs its ACK.
            if cseq.method == Method::Invite
                && code >= 300
                && c.state != CallState::Free
                && let Some(to) = msg.header(HeaderName::To)
            {
                let to = to.to_owned();
                let cur = self.calls[slot as usize].cseq;
                self.calls[slot as usize].cseq = cseq.seq;
                self.send_error_ack(slot, &to);
                self.calls[slot as usize].cseq = cur;
            }
            return;
        }
        match (cseq.method, c.state) {
            (Method::Invite, CallState::Calling | CallState::Proceeding) => {
                self.on_invite_response(now, slot, code, msg)
            }
            // A retransmitted 200: our ACK was lost.
            (Method::Invite, CallState::Established | CallState::ByeSent)
                if (200..300).contains(&code) =>
            {
                let invite_cseq = if c.state == CallState::ByeSent {
                    c.cseq - 1
                } else {
                    c.cseq
                };
                self.send_in_dialog(slot, "ACK", invite_cseq);
            }
            (Method::Bye, CallState::ByeSent) if code >= 200 => {
                let elapsed = now.saturating_sub(c.bye_sent_at);
                if (200..300).contains(&code) || code == 481 {
                    self.metrics
                        .record(Metric::Bye, Duration::from_nanos(elapsed));
                    self.count_end(slot, End::Succeeded);
                    self.release(slot);
                } else {
                    self.fail_call(slot, &format!("BYE {}", status_reason(code)));
                }
            }
            _ => {}
        }
    }

    fn on_invite_response(&mut self, now: Nanos, slot: u32, code: u16, msg: &Message<'_>) {
        let c = &mut self.calls[slot as usize];
        let since_intended = Duration::from_nanos(now.saturating_sub(c.intended));
        match code {
            100..=199 => {
                c.state = CallState::Proceeding;
                if (code == 180 || code == 183) && !c.pdd_seen {
                    c.pdd_seen = true;
                    self.metrics.record(Metric::Pdd, since_intended);
                }
            }
            200..=299 => {
                self.metrics.record(Metric::Setup, since_intended);
                self.metrics.record(
                    Metric::SetupUncorrected,
                    Duration::from_nanos(now.saturating_sub(c.sent)),
                );
                if !c.pdd_seen {
                    // Answered without ringing: post-dial delay is the setup time.
                    c.pdd_seen = true;
                    self.metrics.record(Metric::Pdd, since_intended);
                }
                c.state = CallState::Established;
                c.auth = String::new();
                c.remote_tag = msg
                    .to()
                    .and_then(|t| t.tag())
                    .unwrap_or_default()
                    .to_owned();
                c.remote_target = msg.contact().map(|a| a.uri.to_owned()).unwrap_or_default();
                // UAC route set: Record-Route in reverse order (RFC 3261 12.1.2).
                let mut routes: Vec<String> = msg
                    .values(HeaderName::RecordRoute)
                    .map(str::to_owned)
                    .collect();
                routes.reverse();
                c.routes = routes;
                c.next_hop = next_hop(&c.routes, &c.remote_target).unwrap_or(self.cfg.target);
                let (w, stage) = (c.workload as usize, c.stage);
                let Some(workload) = self.cfg.workloads.get(w) else {
                    return;
                };
                let hold = workload.hold;
                if self.schedules[w].kind == Kind::Ivr {
                    self.metrics.ivr.calls += 1;
                }
                match stage {
                    Stage::Queued => self.enter_queue(now, slot),
                    Stage::Menu => {
                        // Waits for the transfer; a short hold must not hang up before the
                        // digits have even been played.
                        let wait = self.draw(hold).max(64 * self.t1());
                        let c = &mut self.calls[slot as usize];
                        c.stage_at = now;
                        c.hold_until = now.saturating_add(wait);
                    }
                    _ => {
                        let hold = self.draw(hold);
                        self.calls[slot as usize].hold_until = now.saturating_add(hold);
                    }
                }
                let c = &self.calls[slot as usize];
                let (invite_cseq, rtp, generation) = (c.cseq, c.rtp, c.generation);
                let digits = self.digits(c);
                self.send_in_dialog(slot, "ACK", invite_cseq);
                if rtp {
                    match SessionDescription::parse(msg.body())
                        .ok()
                        .and_then(|s| s.audio_addr())
                    {
                        Some(dest) => {
                            let stream = stream_id(slot, generation);
                            self.media.push(MediaCommand::Start {
                                stream,
                                ssrc: ssrc(slot, generation),
                                dest,
                                payload_type: sdp::PT_PCMU,
                            });
                            if let Some(digits) = digits {
                                self.media.push(MediaCommand::Dtmf { stream, digits });
                            }
                        }
                        None => {
                            self.calls[slot as usize].rtp = false;
                            self.metrics.fail("no usable SDP answer");
                        }
                    }
                }
                self.arm(slot);
            }
            _ => {
                let to = msg.header(HeaderName::To).unwrap_or_default().to_owned();
                self.send_error_ack(slot, &to);
                let c = &self.calls[slot as usize];
                if (code == 401 || code == 407) && c.invite_round == 1 && !self.cfg.users.is_empty()
                {
                    // Karn's rule, as for REGISTER.
                    if c.rto == self.t1() {
                        ChallengeRtt::sample(
                            &mut self.invite_challenges,
                            now.saturating_sub(c.sent),
                        );
                    }
                    let header = if code == 401 {
                        HeaderName::WwwAuthenticate
                    } else {
                        HeaderName::ProxyAuthenticate
                    };
                    let (caller, ruri) = (c.caller, self.request_uri(c));
                    match self.authorization(msg, header, code, caller, "INVITE", &ruri) {
                        Some(line) => {
                            let t1 = self.t1();
                            let c = &mut self.calls[slot as usize];
                            c.auth = line;
                            c.cseq += 1;
                            c.invite_round = 2;
                            c.state = CallState::Calling;
                            c.rto = t1;
                            c.retransmit_at = now + t1;
                            c.timeout_at = now + 64 * t1;
                            self.send_invite(slot);
                            self.arm(slot);
                        }
                        None => self.fail_call(slot, "unusable digest challenge"),
                    }
                } else {
                    self.fail_call(slot, status_reason(code));
                }
            }
        }
    }

    // ---- incoming requests (we are the UAS) ---------------------------------------------

    fn on_request(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let Some(method) = msg.method() else { return };
        let call_id = msg.call_id().unwrap_or_default();
        let to_tag = msg.to().and_then(|t| t.tag());
        // Requests inside a dialog we started (BYE or re-INVITE from the far end) carry our
        // caller-side tag. The Call-ID alone does not tell: when our users call each other
        // through a proxy, the incoming INVITE for the callee has the caller's Call-ID too.
        // Callee-side tags start with 'u'.
        if let Some(tag) = to_tag
            && !tag.starts_with('u')
            && let Some((slot, generation)) = self.own_call(call_id)
            && tag
                .split_once('x')
                .and_then(|(s, g)| Some((s.parse().ok()?, g.parse().ok()?)))
                == Some((slot, generation))
        {
            self.in_dialog_request(now, from, slot, method, msg);
            return;
        }
        let known = self.uas_calls.get(call_id).copied();
        match (method, known, to_tag) {
            (Method::Invite, None, None) => self.incoming_invite(now, from, msg),
            (Method::Invite, Some(slot), None) => {
                // A retransmitted INVITE: repeat where we are.
                match self.calls[slot as usize].state {
                    CallState::Ringing => self.send_uas_response(slot, 180, "Ringing", false),
                    CallState::Answered | CallState::UasEstablished => {
                        self.send_uas_response(slot, 200, "OK", true)
                    }
                    _ => {}
                }
            }
            (Method::Ack, Some(slot), _) => {
                let c = &mut self.calls[slot as usize];
                if c.state == CallState::Answered {
                    c.state = CallState::UasEstablished;
                    c.retransmit_at = Nanos::MAX;
                    c.timeout_at = Nanos::MAX;
                    let (rtp, generation, dest) = (c.rtp, c.generation, c.uas_offer_addr);
                    if let (true, Some(dest)) = (rtp, dest) {
                        self.media.push(MediaCommand::Start {
                            stream: stream_id(slot, generation),
                            ssrc: ssrc(slot, generation),
                            dest,
                            payload_type: sdp::PT_PCMU,
                        });
                    }
                }
            }
            (_, Some(slot), _) => self.in_dialog_request(now, from, slot, method, msg),
            (Method::Options, _, _) | (Method::Register, _, _) => {
                self.respond(from, msg, 200, "OK", &[], b"")
            }
            (Method::Ack, None, _) => {}
            (_, None, Some(_)) => {
                self.respond(from, msg, 481, "Call/Transaction Does Not Exist", &[], b"")
            }
            (Method::Cancel, None, None) => {
                self.respond(from, msg, 481, "Call/Transaction Does Not Exist", &[], b"")
            }
            _ => self.respond(from, msg, 501, "Not Implemented", &[], b""),
        }
    }

    fn incoming_invite(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let callee = msg
            .request_uri()
            .and_then(|u| SipUri::parse(u).ok())
            .and_then(|u| u.user)
            .and_then(|u| u.parse::<u32>().ok());
        if callee.is_none_or(|u| !self.user_index.contains_key(&u)) {
            self.respond(from, msg, 404, "Not Found", &[], b"");
            return;
        }
        let offer = SessionDescription::parse(msg.body())
            .ok()
            .and_then(|s| s.audio_addr());
        let slot = self.alloc();
        let generation = self.calls[slot as usize].generation;
        let to_tag = format!("u{slot}x{generation}");
        // The header block every response repeats: Via, From, To (with our tag), Call-ID, CSeq
        // and, for the dialog, Record-Route — built as a 180, because Record-Route is copied
        // into 18x and 2xx responses only (RFC 3261 12.1.1).
        self.scratch.clear();
        write_response(
            &mut self.scratch,
            msg,
            180,
            "Ringing",
            Some(&to_tag),
            &[],
            b"",
        );
        let block = String::from_utf8_lossy(&self.scratch).into_owned();
        let headers = block
            .split_once("\r\n")
            .map(|(_, rest)| {
                rest.trim_end_matches("\r\n")
                    .trim_end_matches("Content-Length: 0")
                    .to_owned()
            })
            .unwrap_or_default();
        let remote_target = msg.contact().map(|a| a.uri.to_owned()).unwrap_or_default();
        let routes: Vec<String> = msg
            .values(HeaderName::RecordRoute)
            .map(str::to_owned)
            .collect();
        let call_id = msg.call_id().unwrap_or_default().to_owned();
        let ring = ns(self.cfg.ring_delay);
        // The answering side draws too, so `--rtp 0.1` means a tenth of the streams on both
        // sides of calls between our own users, not a tenth of callers and every callee.
        let rtp = offer.is_some()
            && self.cfg.rtp_fraction > 0.0
            && (self.cfg.rtp_fraction >= 1.0 || self.rng.uniform() < self.cfg.rtp_fraction);
        let c = &mut self.calls[slot as usize];
        c.state = CallState::Ringing;
        c.intended = now;
        c.uas_headers = headers;
        c.uas_call_id = call_id.clone();
        c.uas_offer_addr = offer;
        c.rtp = rtp;
        c.remote_tag = msg
            .from()
            .and_then(|f| f.tag())
            .unwrap_or_default()
            .to_owned();
        c.remote_target = remote_target;
        c.next_hop = from;
        c.routes = routes;
        c.retransmit_at = now + ring;
        self.uas_calls.insert(call_id, slot);
        self.send_uas_response(slot, 180, "Ringing", false);
        self.arm(slot);
    }

    /// A response on a call we answer, from the stored header block.
    fn send_uas_response(&mut self, slot: u32, code: u16, reason: &str, with_sdp: bool) {
        let c = &self.calls[slot as usize];
        self.body.clear();
        if with_sdp {
            sdp::write_offer(
                &mut self.body,
                &Offer {
                    session_id: u64::from(slot),
                    version: 1,
                    addr: self.cfg.rtp_local,
                    payload_types: vec![sdp::PT_PCMU],
                    telephone_event: true,
                    ptime_ms: 20,
                    ssrc: Some(ssrc(slot, c.generation)),
                },
            );
        }
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "SIP/2.0 {code} {reason}\r\n{}Contact: <sip:{}@{}>\r\n",
            c.uas_headers, c.callee, self.cfg.local
        );
        if with_sdp {
            self.scratch
                .extend_from_slice(b"Content-Type: application/sdp\r\n");
        }
        let _ = write!(self.scratch, "Content-Length: {}\r\n\r\n", self.body.len());
        self.scratch.extend_from_slice(&self.body);
        let to = c.next_hop;
        self.queue(to);
    }

    fn in_dialog_request(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        slot: u32,
        method: Method,
        msg: &Message<'_>,
    ) {
        let c = &mut self.calls[slot as usize];
        let (generation, state, rtp, uac) =
            (c.generation, c.state, c.rtp, c.uas_call_id.is_empty());
        let user = c.caller.max(c.callee);
        // Only a request with a new CSeq moves the call on; a retransmission is answered again.
        let seq = msg.cseq().map_or(0, |s| s.seq);
        let fresh = seq > c.remote_cseq;
        c.remote_cseq = c.remote_cseq.max(seq);
        match method {
            Method::Bye => {
                self.respond(from, msg, 200, "OK", &[], b"");
                let c = &self.calls[slot as usize];
                let sends_digits = self
                    .cfg
                    .workloads
                    .get(c.workload as usize)
                    .is_some_and(|w| w.dtmf != Dtmf::None);
                if uac
                    && state == CallState::Established
                    && c.stage == Stage::Hold
                    && !sends_digits
                    && now < c.hold_until
                {
                    // A plain call the far end (or a cluster that lost its media node) ended
                    // before its hold time: dropped, not completed.
                    self.fail_call(slot, "BYE from the far end before the hold ended");
                    return;
                }
                if uac && matches!(state, CallState::Established | CallState::ByeSent) {
                    // The far end hung up first (an IVR after '#', say): the call still
                    // completed, unless we were already hanging up out of patience.
                    self.count_end(slot, End::Succeeded);
                }
                self.release(slot);
            }
            Method::Invite => {
                if uac && fresh && state == CallState::Established {
                    self.advance_stage(now, slot);
                }
                // A re-INVITE moves our media: answer with our address, send to the new one.
                let dest = SessionDescription::parse(msg.body())
                    .ok()
                    .and_then(|s| s.audio_addr());
                self.body.clear();
                sdp::write_offer(
                    &mut self.body,
                    &Offer {
                        session_id: u64::from(slot),
                        version: 2,
                        addr: self.cfg.rtp_local,
                        payload_types: vec![sdp::PT_PCMU],
                        telephone_event: true,
                        ptime_ms: 20,
                        ssrc: Some(ssrc(slot, generation)),
                    },
                );
                let body = std::mem::take(&mut self.body);
                let contact = format!("<sip:{user}@{}>", self.cfg.local);
                self.respond(
                    from,
                    msg,
                    200,
                    "OK",
                    &[("Contact", &contact), ("Content-Type", "application/sdp")],
                    &body,
                );
                self.body = body;
                if let (true, Some(dest)) = (rtp, dest) {
                    self.media.push(MediaCommand::Redirect {
                        stream: stream_id(slot, generation),
                        dest,
                    });
                }
            }
            Method::Ack => {}
            Method::Cancel => {
                self.respond(from, msg, 200, "OK", &[], b"");
                if state == CallState::Ringing {
                    self.send_uas_response(slot, 487, "Request Terminated", false);
                    self.release(slot);
                }
            }
            _ => self.respond(from, msg, 200, "OK", &[], b""),
        }
    }

    /// A new re-INVITE on our established call `slot`: an IVR's transfer to a queue, or a
    /// queue's connect to an agent.
    fn advance_stage(&mut self, now: Nanos, slot: u32) {
        let c = &self.calls[slot as usize];
        let since = Duration::from_nanos(now.saturating_sub(c.stage_at));
        match c.stage {
            Stage::Menu => {
                self.metrics.record(Metric::IvrRoute, since);
                self.metrics.ivr.routed += 1;
                self.enter_queue(now, slot);
                self.arm(slot);
            }
            Stage::Queued => {
                self.metrics.record(Metric::QueueWait, since);
                self.metrics.queue.answered += 1;
                if since <= self.cfg.service_level {
                    self.metrics.queue.answered_within_sl += 1;
                }
                let Some(w) = self.cfg.workloads.get(c.workload as usize) else {
                    return;
                };
                let talk = w
                    .agent_hold
                    .filter(|_| self.schedules[c.workload as usize].kind == Kind::Ivr)
                    .unwrap_or(w.hold);
                let talk = self.draw(talk);
                let c = &mut self.calls[slot as usize];
                c.stage = Stage::Agent;
                c.hold_until = now.saturating_add(talk);
                self.arm(slot);
            }
            Stage::Hold | Stage::Agent | Stage::Abandoned => {}
        }
    }

    fn respond(
        &mut self,
        to: SocketAddr,
        req: &Message<'_>,
        code: u16,
        reason: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) {
        self.scratch.clear();
        write_response(&mut self.scratch, req, code, reason, None, extra, body);
        // Responses go back where the request came from (rport behaviour), which is also the
        // top Via's address for every peer we talk to on loopback.
        self.queue(to);
    }

    /// A Call-ID of ours: (slot, generation) for a live call of this run.
    fn own_call(&self, call_id: &str) -> Option<(u32, u32)> {
        let rest = call_id.strip_suffix("@pbxlab")?;
        let mut parts = rest.split('-');
        let slot: u32 = parts.next()?.parse().ok()?;
        let generation: u32 = parts.next()?.parse().ok()?;
        let run: u32 = parts.next()?.parse().ok()?;
        let c = self.calls.get(slot as usize)?;
        (run == self.cfg.run_id
            && c.generation == generation
            && c.state != CallState::Free
            && c.uas_call_id.is_empty())
        .then_some((slot, generation))
    }

    fn own_registration(&self, call_id: &str) -> Option<usize> {
        let rest = call_id.strip_suffix("@pbxlab")?.strip_prefix('r')?;
        let (i, run) = rest.split_once('-')?;
        let run: u32 = run.parse().ok()?;
        let i: usize = i.parse().ok()?;
        (run == self.cfg.run_id && i < self.regs.len()).then_some(i)
    }

    /// One datagram from the network.
    pub fn handle(&mut self, now: Nanos, from: SocketAddr, datagram: &[u8]) {
        // Keepalives (CRLF) are not messages.
        if datagram.iter().all(|b| b.is_ascii_whitespace()) {
            return;
        }
        // Parsed in place: returning a message by value copies its 2.7 KB header table.
        let mut msg = Message::empty();
        if sip::parse_datagram_into(&mut msg, datagram).is_err() {
            self.malformed += 1;
            self.metrics.fail("malformed message");
            return;
        }
        if msg.is_request() {
            self.on_request(now, from, &msg);
            return;
        }
        let call_id = msg.call_id().unwrap_or_default();
        if let Some((slot, _)) = self.own_call(call_id) {
            self.on_call_response(now, slot, &msg);
        } else if let Some(i) = self.own_registration(call_id) {
            self.on_register_response(now, i, &msg);
        } else {
            self.stray += 1;
        }
    }
}

/// A gap of a Poisson process of `rate` per second (none at a rate of 0: all at once).
fn poisson_gap(rng: &mut Rng, rate: f64) -> Nanos {
    if rate <= 0.0 {
        0
    } else {
        rng.exponential((1e9 / rate) as Nanos)
    }
}

/// Intended offset of attempt `k` at `rate` per second.
fn gap(k: u64, rate: f64) -> Nanos {
    if rate <= 0.0 {
        0
    } else {
        (k as f64 * 1e9 / rate) as Nanos
    }
}

fn ssrc(slot: u32, generation: u32) -> u32 {
    // Distinct for live calls (they have distinct slots, and the multiplier is odd, so the low
    // 24 bits are a bijection of slots below 2^24); mixed so streams do not share low bits; the
    // generation tells a slot's successive calls apart. The top bit set gives every SSRC ten
    // digits, so offers have one length (see `slot_digits`).
    0x8000_0000 | (generation & 0x7f) << 24 | (slot.wrapping_mul(0x9e37_79b1) & 0xff_ffff)
}

/// Digits of a call's slot and generation in its Call-ID, tags and branches. Zero-padded, so
/// the INVITEs of a run have one length, and so do its ACKs and BYEs: consecutive requests of
/// one length leave as one segmented buffer (`pbxlab_udp::Sender::send_connected_segmented`),
/// which costs the kernel one pass through the stack instead of one per datagram.
const SLOT_DIGITS: usize = 6;
const GENERATION_DIGITS: usize = 4;
/// The SDP session id is this plus the slot: ten digits, for the same reason.
const SESSION_ID_BASE: u64 = 1_000_000_000;

fn slot_digits(slot: u32) -> Decimal {
    Decimal::padded(slot.into(), SLOT_DIGITS)
}

fn generation_digits(generation: u32) -> Decimal {
    Decimal::padded(generation.into(), GENERATION_DIGITS)
}

/// The address of the first hop of a request inside a dialog: the first route (loose routing),
/// else the remote target. Only literal IP addresses are used; a name falls back to the target.
fn next_hop(routes: &[String], remote_target: &str) -> Option<SocketAddr> {
    let first = match routes.first() {
        Some(r) => NameAddr::parse(r).ok().map(|a| a.uri)?,
        None => remote_target,
    };
    let uri = SipUri::parse(first).ok()?;
    let ip: IpAddr = match uri.host {
        Host::V4(a) => a.into(),
        Host::V6(a) => a.into(),
        Host::Name(_) => return None,
    };
    Some(SocketAddr::new(ip, uri.port.unwrap_or(5060)))
}

/// A failure reason for a final status code: the common codes by name, the rest by class, so
/// reports group well.
fn status_reason(code: u16) -> &'static str {
    let named = match code {
        400 => Some("400 Bad Request"),
        401 => Some("401 Unauthorized"),
        403 => Some("403 Forbidden"),
        404 => Some("404 Not Found"),
        407 => Some("407 Proxy Authentication Required"),
        408 => Some("408 Request Timeout"),
        480 => Some("480 Temporarily Unavailable"),
        481 => Some("481 Call Does Not Exist"),
        486 => Some("486 Busy Here"),
        487 => Some("487 Request Terminated"),
        488 => Some("488 Not Acceptable Here"),
        500 => Some("500 Server Internal Error"),
        503 => Some("503 Service Unavailable"),
        504 => Some("504 Server Time-out"),
        _ => None,
    };
    named.unwrap_or(match code / 100 {
        3 => "3xx redirect",
        4 => "other 4xx",
        5 => "other 5xx",
        6 => "6xx global failure",
        _ => "unexpected status",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssrcs_are_distinct_across_live_calls_and_ten_digits_long() {
        let mut seen = std::collections::HashSet::new();
        for slot in 0..200_000u32 {
            let s = ssrc(slot, slot % 300);
            assert!(seen.insert(s), "slot {slot}: {s} again");
            assert_eq!(s.to_string().len(), 10, "{s}");
        }
        assert_ne!(ssrc(5, 1), ssrc(5, 2), "a slot's next call");
    }
}
