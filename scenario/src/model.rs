//! The validated output of a scenario file: the cluster's pools and servers, health probing,
//! offered traffic, faults, the drill, SLOs and sizing costs, with every default filled in,
//! and the names these values go by in files and reports.

use std::time::Duration;

use pbxlab_balancer::{FailoverMode, Policy, Role};

use crate::diagnostics::Diagnostic;
use crate::verb::Verb;

/// A fully validated scenario; every default has been filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    /// Simulated time of the whole run.
    pub duration: Duration,
    /// Leading part of the run excluded from statistics; always `< duration`.
    pub warmup: Duration,
    /// Number of batches for batch-means confidence intervals.
    pub batches: u32,
    pub pools: Vec<PoolSpec>,
    pub health: HealthSpec,
    pub traffic: Traffic,
    /// In file order, not sorted by time.
    pub faults: Vec<FaultSpec>,
    /// The `[[fault]]`s that act on the network rather than on a server, in file order, not
    /// sorted by time. Only the virtual drill carries them out.
    pub net_faults: Vec<NetFaultSpec>,
    pub slo: Slo,
    pub sizing: SizingCosts,
    /// How `pbxlab drill` runs this scenario live; `plan` ignores it.
    pub drill: Option<DrillSpec>,
    /// Whom the live cluster lets in without credentials; `plan` ignores it.
    pub cluster: ClusterSpec,
    /// How many Call Managers serve the cluster's one address, and how they watch each other.
    pub callmanager: CallManagerSpec,
    /// How an explorer varies this scenario from seed to seed; defaults when absent.
    pub explore: ExploreSpec,
    /// Things worth telling the user that do not stop the run.
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub role: Role,
    pub servers: Vec<ServerSpec>,
    /// Concurrent sessions per server (meeting: participants; im: online users).
    pub capacity: u32,
    pub policy: Policy,
    pub failover: FailoverMode,
    pub first_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSpec {
    pub name: String,
    /// Only consulted by [`Policy::Weighted`]; 1 unless the file says otherwise.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// Consecutive failed probes before a server is marked down.
    pub down_after: u32,
    /// Consecutive good probes before a down server is marked up again.
    pub up_after: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    pub calls: Option<CallTraffic>,
    pub ivr: Option<IvrTraffic>,
    pub queue: Option<QueueTraffic>,
    pub meetings: Option<MeetingTraffic>,
    pub registrations: Option<RegistrationTraffic>,
    /// Instant messaging and presence among the registered users.
    pub im: Option<ImTraffic>,
}

impl Traffic {
    /// Whether the scenario offers no traffic at all (a cluster for other tools to load).
    pub fn is_empty(&self) -> bool {
        self.calls.is_none()
            && self.ivr.is_none()
            && self.queue.is_none()
            && self.meetings.is_none()
            && self.registrations.is_none()
            && self.im.is_none()
    }
}

/// Distribution of a holding (or handle, or meeting) time, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HoldDist {
    Exponential {
        mean_s: f64,
    },
    /// `mean_s` is the mean of the distribution itself, not its median, so
    /// the underlying normal has `mu = ln(mean_s) - sigma^2 / 2`.
    LogNormal {
        mean_s: f64,
        sigma: f64,
    },
    Fixed {
        s: f64,
    },
}

impl HoldDist {
    /// Mean in seconds, whatever the shape.
    pub fn mean_s(&self) -> f64 {
        match *self {
            HoldDist::Exponential { mean_s } | HoldDist::LogNormal { mean_s, .. } => mean_s,
            HoldDist::Fixed { s } => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CallTraffic {
    pub rate_per_s: f64,
    pub hold: HoldDist,
    /// Hourly multipliers of `rate_per_s`, hour 0 first.
    pub profile: Option<[f64; 24]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IvrTraffic {
    pub rate_per_s: f64,
    pub hold: HoldDist,
    /// Fraction of IVR sessions transferred into a queue afterwards.
    pub then_queue: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueTraffic {
    pub rate_per_s: f64,
    pub queues: u32,
    /// Agents per queue.
    pub agents: u32,
    pub handle: HoldDist,
    /// Mean of the exponential patience; `None` means callers never abandon.
    pub patience_s: Option<f64>,
    pub service_level_s: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MeetingTraffic {
    pub rate_per_s: f64,
    /// Mean participants per meeting; a meeting has `1 + Poisson(mean - 1)`.
    pub participants_mean: f64,
    pub duration: HoldDist,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationTraffic {
    pub users: u32,
    pub expires: Duration,
    /// Users are numbered `first_user..first_user + users`.
    pub first_user: u32,
}

/// `[traffic.im]`: what each online (registered) user does on the IM servers, per hour.
#[derive(Debug, Clone, PartialEq)]
pub struct ImTraffic {
    /// SIP MESSAGEs (RFC 3428, page mode) each online user sends per hour.
    pub messages_per_user_hour: f64,
    /// The body of each message, in bytes (a page-mode MESSAGE over UDP carries at most
    /// [`ImTraffic::MAX_MESSAGE_BYTES`]).
    pub message_bytes: u32,
    /// How many other users each one watches (its buddy list), by presence subscriptions.
    pub buddies: u32,
    /// Presence changes (PUBLISH) each online user makes per hour.
    pub presence_per_user_hour: f64,
    /// Files each online user shares per hour, and the size of each (file sharing: stored on
    /// the IM server and sent on to the recipient).
    pub attachments_per_user_hour: f64,
    pub attachment_bytes: u64,
}

impl ImTraffic {
    /// RFC 3428 section 7: a MESSAGE must not exceed 1300 bytes unless the path's MTU is
    /// known to be larger; the body's share of that, leaving room for the headers.
    pub const MAX_MESSAGE_BYTES: u32 = 1024;

    /// Messages per second the whole population of `users` online users sends.
    pub fn messages_per_s(&self, users: u32) -> f64 {
        self.messages_per_user_hour * f64::from(users) / 3600.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub at: Duration,
    pub action: Verb,
    pub server: String,
}

/// A fault of the network between endpoints, carried out only by the virtual drill.
///
/// Endpoints are the servers of the pools by name, `cm` (the Call Manager) and `load` (the load
/// generator).
#[derive(Debug, Clone, PartialEq)]
pub struct NetFaultSpec {
    pub at: Duration,
    pub kind: NetKind,
    /// The fault ends by itself this long after `at`. `None`: it lasts until the run ends, or a
    /// partition until the heal of the same endpoints. Always `None` for a heal.
    pub lasts: Option<Duration>,
    /// For loss, delay, duplicate and reorder: the datagrams from or to any of these endpoints
    /// are affected; empty means every datagram. For partition and heal: the set cut off from
    /// (or reconnected to) every endpoint outside it; never empty. No name appears twice.
    pub endpoints: Vec<String>,
}

/// What a network fault does to the datagrams it affects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NetKind {
    /// Each datagram is dropped with probability `fraction` (0 to 1).
    Loss { fraction: f64 },
    /// Each datagram is held back `delay` plus a uniform draw from `[0, jitter]`.
    Delay { delay: Duration, jitter: Duration },
    /// Each datagram is delivered twice with probability `fraction` (0 to 1).
    Duplicate { fraction: f64 },
    /// Each datagram, with probability `fraction` (0 to 1), is held back `by` longer than the
    /// others, so that the ones sent after it overtake it.
    Reorder { fraction: f64, by: Duration },
    /// No datagram crosses between the endpoints and the rest.
    Partition,
    /// The partition of exactly these endpoints that is in effect ends.
    Heal,
}

impl NetKind {
    /// The `action` a scenario file names it by.
    pub fn name(&self) -> &'static str {
        match self {
            NetKind::Loss { .. } => "loss",
            NetKind::Delay { .. } => "delay",
            NetKind::Duplicate { .. } => "duplicate",
            NetKind::Reorder { .. } => "reorder",
            NetKind::Partition => "partition",
            NetKind::Heal => "heal",
        }
    }
}

/// The endpoint name of the Call Manager in a network fault.
pub const CM_ENDPOINT: &str = "cm";
/// The endpoint name of the load generator in a network fault.
pub const LOAD_ENDPOINT: &str = "load";

/// `[explore]`: how an explorer that runs a scenario under many seeds varies it from seed to
/// seed. Every range is `(min, max)` with `min <= max`, drawn uniformly.
#[derive(Debug, Clone, PartialEq)]
pub struct ExploreSpec {
    /// Each fault's time is moved by a uniform draw from `[-shift, +shift]`.
    pub shift: Duration,
    /// At most this many random network faults per seed.
    pub network: u32,
    /// When random network faults may start, `[start, end)`; `None`: see
    /// [`Scenario::explore_window`].
    pub window: Option<(Duration, Duration)>,
    /// The fraction of a random loss.
    pub loss: (f64, f64),
    /// The delay and jitter of a random delay.
    pub delay: (Duration, Duration),
    pub jitter: (Duration, Duration),
    /// The fraction of a random duplicate or reorder.
    pub duplicate: (f64, f64),
    pub reorder: (f64, f64),
    /// How long a random network fault lasts; `min > 0`.
    pub lasts: (Duration, Duration),
    /// Whether random partitions of single servers may be drawn.
    pub partitions: bool,
}

impl Default for ExploreSpec {
    /// What an `[explore]` table with no keys means, and what a scenario without one gets.
    fn default() -> Self {
        ExploreSpec {
            shift: Duration::from_secs(2),
            network: 2,
            window: None,
            loss: (0.0, 0.05),
            delay: (Duration::ZERO, Duration::from_millis(40)),
            jitter: (Duration::ZERO, Duration::from_millis(10)),
            duplicate: (0.0, 0.02),
            reorder: (0.0, 0.02),
            lasts: (Duration::from_millis(500), Duration::from_secs(5)),
            partitions: true,
        }
    }
}

/// `[callmanager]`: the Call Managers behind the cluster's one (virtual) address. One is active
/// at a time; the others are standbys that hold its state and take over when its heartbeats
/// stop (`misses` heartbeats of `heartbeat` each in a row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallManagerSpec {
    /// 1 (no standby), 3 or 5; named `cm-1` .. `cm-N`.
    pub nodes: u32,
    pub heartbeat: Duration,
    pub misses: u32,
}

impl Default for CallManagerSpec {
    fn default() -> CallManagerSpec {
        CallManagerSpec {
            nodes: 1,
            heartbeat: Duration::from_millis(100),
            misses: 3,
        }
    }
}

impl CallManagerSpec {
    /// The Call Managers' names, `cm-1` .. `cm-N`; empty without standbys (one Call Manager
    /// is not a fault target: nothing would take over).
    pub fn names(&self) -> Vec<String> {
        if self.nodes < 2 {
            return Vec::new();
        }
        (1..=self.nodes).map(|i| format!("cm-{i}")).collect()
    }

    /// How long standbys wait without a heartbeat before they elect a new active.
    pub fn silence(&self) -> Duration {
        self.heartbeat.saturating_mul(self.misses)
    }
}

/// `[cluster]`: whom the live cluster's Call Manager lets call without credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterSpec {
    /// The services a caller without credentials may reach, by user part: a name (`echo`) or
    /// a prefix ending in `*` (`ivr-*`). `None`: every service, as inbound numbers are.
    /// Users are never public.
    pub public: Option<Vec<String>>,
    /// Sources whose calls are never challenged (a proxy or trunk in front that authenticates
    /// its own users).
    pub trusted: Vec<std::net::IpAddr>,
}

/// `[drill]`: the live load a drill runs against the cluster and what it must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillSpec {
    /// The drill's traffic, `[drill.load]`.
    pub load: DrillLoad,
    /// The window before the first fault in which the steady-state hypothesis is checked.
    pub steady: Duration,
    /// How long after a fault (once detected) the cluster gets before "after" checks start.
    pub settle: Duration,
    /// SLOs checked in every phase: media gap p99 of the affected calls, setup p99, calls
    /// dropped by failover, failed calls.
    pub media_gap_p99: Duration,
    pub setup_p99: Duration,
    pub dropped: u64,
    pub failed: u64,
    /// The longest a Call Manager takeover may take: from the active's failure to the new
    /// active's first answer at the virtual IP.
    pub takeover: Duration,
}

impl Default for DrillSpec {
    /// What a `[drill]` table with no keys means, and what `pbxlab drill` uses without one.
    fn default() -> Self {
        DrillSpec {
            load: DrillLoad::default(),
            steady: Duration::from_secs(10),
            settle: Duration::from_secs(5),
            media_gap_p99: Duration::from_millis(300),
            setup_p99: Duration::from_secs(2),
            dropped: 0,
            failed: 0,
            takeover: Duration::from_secs(1),
        }
    }
}

/// `[drill.load]`: the load `pbxlab drill` runs, set as `pbxlab load`'s flags of the same
/// names would set it. What is `None` comes from the scenario's [traffic] as it does for
/// `pbxlab load SCENARIO` (registrations, the call mix and its rates and holds), else from
/// `pbxlab load`'s defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DrillLoad {
    /// One of the cluster's services as the only workload, instead of [traffic]'s mix.
    pub service: Option<Service>,
    /// Users that register; 0: calls without registering.
    pub users: Option<u32>,
    pub register_rate_per_s: Option<f64>,
    /// Call attempts in all (default: rate x duration per workload).
    pub calls: Option<u64>,
    /// Attempts per second of the user-to-user (or `service`) workload.
    pub call_rate_per_s: Option<f64>,
    /// Fixed or exponential only: the shapes the generator draws.
    pub hold: Option<HoldDist>,
    /// Fraction of calls with G.711 RTP both ways.
    pub rtp_fraction: f64,
    /// At most this many calls at once.
    pub max_concurrent: Option<u32>,
    /// Default: Poisson for [traffic]'s mix, fixed for one workload.
    pub arrivals: Option<Arrivals>,
    /// RFC 4733 digits each call sends once answered (0-9, *, #, A-D).
    pub dtmf: Option<String>,
}

/// A service of pbxlab's own cluster, called by its user part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `echo`: the caller's RTP comes back from a media node.
    Echo,
    /// `ivr-N`.
    Ivr(u32),
    /// `queue-N`, 1-based.
    Queue(u32),
    /// `meeting-N`: rooms of N participants.
    Meeting(u32),
}

impl Service {
    /// The user part to call, as `pbxlab load --service` takes it.
    pub fn user(self) -> String {
        match self {
            Service::Echo => "echo".to_owned(),
            Service::Ivr(n) => format!("ivr-{n}"),
            Service::Queue(n) => format!("queue-{n}"),
            Service::Meeting(n) => format!("meeting-{n}"),
        }
    }

    /// The pool that serves it.
    pub fn role(self) -> Role {
        match self {
            Service::Echo => Role::Media,
            Service::Ivr(_) => Role::Ivr,
            Service::Queue(_) => Role::Queue,
            Service::Meeting(_) => Role::Meeting,
        }
    }

    /// Reads `echo`, `ivr-N`, `queue-N` or `meeting-N` (N >= 1).
    pub fn parse(user: &str) -> Option<Service> {
        if user == "echo" {
            return Some(Service::Echo);
        }
        let (kind, n) = user.split_once('-')?;
        // `u32::from_str` would also take "+1".
        if !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u32 = n.parse().ok().filter(|&n| n >= 1)?;
        match kind {
            "ivr" => Some(Service::Ivr(n)),
            "queue" => Some(Service::Queue(n)),
            "meeting" => Some(Service::Meeting(n)),
            _ => None,
        }
    }
}

/// When a workload's attempts start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrivals {
    /// Attempt k at k / rate.
    Fixed,
    Poisson,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    /// Max blocking fraction per role.
    pub blocking: Option<f64>,
    /// Min fraction of queued callers answered within the service level.
    pub queue_service_level: Option<f64>,
    pub queue_abandoned: Option<f64>,
    pub queue_asa_s: Option<f64>,
    /// Min 5th-percentile MOS of the RTP streams (E-model, 1 to 4.5): a load check only, as
    /// the simulator carries no audio.
    pub mos_p5: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    G711,
    G729,
    Opus,
}

/// Per-session hardware costs used by the sizing report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SizingCosts {
    pub core_ghz: f64,
    pub target_cpu: f64,
    pub codec: Codec,
    pub media_calls_per_ghz: f64,
    pub meeting_cores_per_participant: f64,
    pub ivr_sessions_per_ghz: f64,
    pub queue_sessions_per_ghz: f64,
    pub im_users_per_core: f64,
    pub im_ram_mb_per_user: f64,
    pub im_kbps_per_user: f64,
    pub ram_gb_base: f64,
    pub ram_mb_per_session: f64,
    pub disk_gb_base: f64,
}

impl Default for SizingCosts {
    fn default() -> Self {
        SizingCosts {
            core_ghz: 3.0,
            target_cpu: 0.7,
            codec: Codec::G711,
            media_calls_per_ghz: 100.0,
            meeting_cores_per_participant: 0.045,
            ivr_sessions_per_ghz: 100.0,
            queue_sessions_per_ghz: 100.0,
            im_users_per_core: 2500.0,
            im_ram_mb_per_user: 0.33,
            im_kbps_per_user: 20.0,
            ram_gb_base: 4.0,
            ram_mb_per_session: 0.5,
            disk_gb_base: 40.0,
        }
    }
}

/// How far the default explore window reaches before the first fault and after the last.
const EXPLORE_BEFORE: Duration = Duration::from_secs(5);
const EXPLORE_AFTER: Duration = Duration::from_secs(10);

impl Scenario {
    /// The balancer this scenario describes: its pools, servers and health settings. `plan`
    /// and the live cluster both start from it.
    pub fn balancer(&self) -> Result<pbxlab_balancer::Balancer, pbxlab_balancer::Error> {
        let health = pbxlab_balancer::HealthConfig::new(
            self.health.probe_interval,
            self.health.probe_timeout,
            self.health.down_after,
            self.health.up_after,
        )?;
        let mut b = pbxlab_balancer::Balancer::new(health);
        for pool in &self.pools {
            b.set_pool(pool.role, pool.policy, pool.failover);
            for s in &pool.servers {
                b.add_server(pbxlab_balancer::ServerSpec {
                    name: s.name.clone(),
                    role: pool.role,
                    capacity: pool.capacity,
                    weight: s.weight,
                })?;
            }
        }
        Ok(b)
    }

    /// When an explorer's random network faults may start, `[start, end)`: `[explore]`'s
    /// window, else from 5 s before the first fault (server or network) to 10 s after the
    /// last, clamped to the run; the whole run when there is no fault.
    pub fn explore_window(&self) -> (Duration, Duration) {
        if let Some(window) = self.explore.window {
            return window;
        }
        let times = self
            .faults
            .iter()
            .map(|f| f.at)
            .chain(self.net_faults.iter().map(|f| f.at));
        let (first, last) = times
            .fold(None, |span: Option<(Duration, Duration)>, at| {
                Some(span.map_or((at, at), |(lo, hi)| (lo.min(at), hi.max(at))))
            })
            .unwrap_or((Duration::ZERO, self.duration));
        (
            first.saturating_sub(EXPLORE_BEFORE),
            (last + EXPLORE_AFTER).min(self.duration),
        )
    }

    /// Every server with its role, in pool order.
    pub fn server_names(&self) -> impl Iterator<Item = (&str, Role)> {
        self.pools.iter().flat_map(|pool| {
            pool.servers
                .iter()
                .map(move |server| (server.name.as_str(), pool.role))
        })
    }
}

// ---------------------------------------------------------------------------
// Names on the wire
// ---------------------------------------------------------------------------

pub fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::G711 => "g711",
        Codec::G729 => "g729",
        Codec::Opus => "opus",
    }
}

pub fn parse_codec(text: &str) -> Option<Codec> {
    match text {
        "g711" => Some(Codec::G711),
        "g729" => Some(Codec::G729),
        "opus" => Some(Codec::Opus),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for role in [Role::Media, Role::Meeting, Role::Ivr, Role::Queue, Role::Im] {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
        for policy in [
            Policy::LeastLoaded,
            Policy::RoundRobin,
            Policy::Weighted,
            Policy::Affinity,
        ] {
            assert_eq!(Policy::from_name(policy.name()), Some(policy));
        }
        for mode in [FailoverMode::Auto, FailoverMode::Operator] {
            assert_eq!(FailoverMode::from_name(mode.name()), Some(mode));
        }
        for codec in [Codec::G711, Codec::G729, Codec::Opus] {
            assert_eq!(parse_codec(codec_name(codec)), Some(codec));
        }
        assert_eq!(Role::from_name("Media"), None);
    }
}
