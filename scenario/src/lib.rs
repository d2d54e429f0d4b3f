//! pbxlab's scenario files: the TOML format describing one pbxlab run (server pools,
//! health probing, offered traffic, injected faults, SLO targets and sizing
//! costs), its parser, and the validation that turns a file into either a
//! [`Scenario`] or a single [`Diagnostic`] pointing at the offending line and
//! column. Every driver reads it: `plan` (pbxlab-sim), `cluster` and `drill`
//! (pbxlab-cluster), `load` (pbxlab-loadgen). It runs nothing and owns no socket.
//!
//! Parsing happens in two steps. Serde reads the document into "raw" structs
//! whose leaves are `Spanned<toml::Value>`, so serde itself only rejects
//! unknown keys and a wrong overall shape; every value is then checked by hand,
//! which keeps the messages and source positions under our control.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::{Spanned, Value};

pub use pbxlab_balancer::{FailoverMode, Policy, Role};

/// The embedded reference cluster, used when no scenario file is given.
pub const REFERENCE_SCENARIO: &str = include_str!("../../scenarios/reference.toml");
pub const REFERENCE_SCENARIO_NAME: &str = "<embedded reference>";

/// The embedded failover drill, used by `pbxlab drill` when no scenario file is given.
pub const DRILL_SCENARIO: &str = include_str!("../../scenarios/drill.toml");
pub const DRILL_SCENARIO_NAME: &str = "<embedded drill>";

/// Loads the failover drill that ships inside the binary.
pub fn drill_scenario() -> Result<Scenario, ScenarioError> {
    Scenario::from_toml(DRILL_SCENARIO_NAME, DRILL_SCENARIO)
}

/// Loads the reference cluster that ships inside the binary.
pub fn reference_scenario() -> Result<Scenario, ScenarioError> {
    Scenario::from_toml(REFERENCE_SCENARIO_NAME, REFERENCE_SCENARIO)
}

// ---------------------------------------------------------------------------
// Validated output
// ---------------------------------------------------------------------------

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
    pub slo: Slo,
    pub sizing: SizingCosts,
    /// How `pbxlab drill` runs this scenario live; `plan` ignores it.
    pub drill: Option<DrillSpec>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// The server stops abruptly; only its probes tell.
    Fail,
    Recover,
    Disable,
    Enable,
    Drain,
    /// Its packets are dropped both ways; it keeps running.
    Partition,
    /// The partition ends.
    Heal,
    /// Rolling upgrade of one server: disable (sessions move), restart, enable.
    Upgrade,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub at: Duration,
    pub action: FaultAction,
    pub server: String,
}

/// `[drill]`: the live load a drill runs against the cluster and what it must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillSpec {
    /// Flags of `pbxlab load` for the drill's traffic (the scenario's [traffic] fills in the
    /// rest, as it does for `pbxlab load SCENARIO`).
    pub load: Vec<String>,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    /// Max blocking fraction per role.
    pub blocking: Option<f64>,
    /// Min fraction of queued callers answered within the service level.
    pub queue_service_level: Option<f64>,
    pub queue_abandoned: Option<f64>,
    pub queue_asa_s: Option<f64>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One located problem in a scenario file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, counted in chars.
    pub column: usize,
    /// Dotted path such as `pool[1].capacity` (indices 0-based), or "".
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: ",
            self.file, self.line, self.column
        )?;
        // An empty key would otherwise print as a dangling ": ".
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The first problem found, with its location.
    #[error("{0}")]
    Invalid(Diagnostic),
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

impl Scenario {
    /// Parses and validates scenario text. `file` is only used for messages
    /// (a path, or e.g. "<embedded reference>").
    pub fn from_toml(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let checker = Checker {
            file,
            text,
            warnings: Vec::new(),
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| checker.toml_error(&e))?;
        checker.scenario(&raw)
    }

    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        Scenario::from_toml(&shown, &text)
    }

    /// Every server with its role, in pool order.
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

pub fn fault_action_name(action: FaultAction) -> &'static str {
    match action {
        FaultAction::Fail => "fail",
        FaultAction::Recover => "recover",
        FaultAction::Disable => "disable",
        FaultAction::Enable => "enable",
        FaultAction::Drain => "drain",
        FaultAction::Partition => "partition",
        FaultAction::Heal => "heal",
        FaultAction::Upgrade => "upgrade",
    }
}

pub fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::G711 => "g711",
        Codec::G729 => "g729",
        Codec::Opus => "opus",
    }
}

pub fn parse_fault_action(text: &str) -> Option<FaultAction> {
    match text {
        "fail" => Some(FaultAction::Fail),
        "recover" => Some(FaultAction::Recover),
        "disable" => Some(FaultAction::Disable),
        "enable" => Some(FaultAction::Enable),
        "drain" => Some(FaultAction::Drain),
        "partition" => Some(FaultAction::Partition),
        "heal" => Some(FaultAction::Heal),
        "upgrade" => Some(FaultAction::Upgrade),
        _ => None,
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

/// The shape of a holding-time distribution, before its parameters are known.
#[derive(Clone, Copy, PartialEq)]
enum DistKind {
    Exponential,
    LogNormal,
    Fixed,
}

fn parse_dist_kind(text: &str) -> Option<DistKind> {
    match text {
        "exponential" => Some(DistKind::Exponential),
        "lognormal" => Some(DistKind::LogNormal),
        "fixed" => Some(DistKind::Fixed),
        _ => None,
    }
}

const ROLES: &str = "media, meeting, ivr, queue, im";
const POLICIES: &str = "least-loaded, round-robin, weighted, affinity";
const FAILOVERS: &str = "auto, operator";
const FAULT_ACTIONS: &str = "fail, recover, disable, enable, drain, partition, heal, upgrade";
const CODECS: &str = "g711, g729, opus";
const DISTS: &str = "exponential, lognormal, fixed";

// ---------------------------------------------------------------------------
// Durations and rates
// ---------------------------------------------------------------------------

const DURATION_HELP: &str =
    "accepted units are ns, us, ms, s, m or min, h, d (e.g. \"1.5s\", \"10m\", \"2h\")";
const RATE_HELP: &str = "write NUMBER/UNIT with unit s, sec, m, min, h or hour (e.g. \"55/s\", \
     \"3/min\", \"200000/h\"), or a bare number meaning per second";
const NANOS_PER_SEC: u128 = 1_000_000_000;
/// Fraction digits beyond this cannot change a whole-nanosecond result even
/// with the largest unit (a day), so they are ignored rather than overflowing.
const MAX_FRACTION_DIGITS: usize = 18;

/// Parses a duration such as "1.5s", "10m", "2h", "500ms" or a bare integer
/// number of seconds ("30"). The error is a sentence for humans.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("it is empty; {DURATION_HELP}"));
    }
    if text.starts_with('-') {
        return Err("durations cannot be negative".to_owned());
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let Some((whole, fraction)) = split_decimal(number) else {
        return Err(format!("it does not start with a number; {DURATION_HELP}"));
    };
    let nanos_per_unit: u128 = match unit {
        "" if fraction.is_empty() => NANOS_PER_SEC,
        "" => return Err(format!("a decimal number needs a unit; {DURATION_HELP}")),
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" | "min" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        "d" => 86_400 * NANOS_PER_SEC,
        other => return Err(format!("unknown unit \"{other}\"; {DURATION_HELP}")),
    };
    let too_large = || "it is too large".to_owned();
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let digits: u128 = fraction.parse().map_err(|_| too_large())?;
        let scale = 10u128.pow(fraction.len() as u32);
        digits * nanos_per_unit / scale
    };
    let total = whole
        .checked_mul(nanos_per_unit)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(too_large)?;
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| too_large())?;
    // The remainder is below 10^9 and therefore always fits.
    let nanos = u32::try_from(total % NANOS_PER_SEC).map_err(|_| too_large())?;
    Ok(Duration::new(secs, nanos))
}

/// Splits "12.5" into ("12", "5"); `None` unless it is digits with at most one
/// dot and at least one digit overall.
fn split_decimal(number: &str) -> Option<(&str, &str)> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    (all_digits(whole) && all_digits(fraction) && !(whole.is_empty() && fraction.is_empty()))
        .then_some((whole, fraction))
}

/// Parses an arrival rate such as "55/s", "3/min", "200000/h" or a bare
/// number (per second) into events per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, per) = match text.split_once('/') {
        Some((number, unit)) => {
            let seconds = match unit.trim() {
                "s" | "sec" => 1.0,
                "m" | "min" => 60.0,
                "h" | "hour" => 3_600.0,
                other => return Err(format!("unknown unit \"{other}\"; {RATE_HELP}")),
            };
            (number.trim(), seconds)
        }
        None => (text, 1.0),
    };
    // f64's own parser would also take "inf" and "NaN", which are not rates.
    let looks_numeric = number
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    let value: f64 = match number.parse() {
        Ok(value) if looks_numeric => value,
        _ => return Err(format!("\"{number}\" is not a number; {RATE_HELP}")),
    };
    if !value.is_finite() {
        return Err("it is too large".to_owned());
    }
    if value < 0.0 {
        return Err("rates cannot be negative".to_owned());
    }
    // Adding 0.0 turns a "-0" into +0.
    Ok(value / per + 0.0)
}

/// Renders a duration compactly for messages ("2h", "40m", "1.5s").
fn show_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}s", d.as_secs_f64())
    } else if secs != 0 && secs.is_multiple_of(3_600) {
        format!("{}h", secs / 3_600)
    } else if secs != 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

// ---------------------------------------------------------------------------
// Raw document shape
// ---------------------------------------------------------------------------

/// A leaf value together with where it sits in the text.
type Leaf = Spanned<Value>;
/// An array whose elements keep their own positions, so a bad element can be
/// pointed at exactly.
type LeafList = Spanned<Vec<Spanned<Value>>>;

/// A sub-table with its position.
type Tab<T> = Spanned<TableOnly<T>>;

/// Accepts `T` only when written as a TOML table. Serde's derived struct
/// visitors also take arrays as positional fields, which would quietly let
/// e.g. `slo = [0.01, 0.8]` through.
struct TableOnly<T>(T);

impl<T> std::ops::Deref for TableOnly<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for TableOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for TableVisitor<T> {
            type Value = TableOnly<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(TableOnly)
            }
        }

        deserializer.deserialize_map(TableVisitor(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<Leaf>,
    seed: Option<Leaf>,
    duration: Option<Leaf>,
    warmup: Option<Leaf>,
    batches: Option<Leaf>,
    pool: Option<Spanned<Vec<Tab<RawPool>>>>,
    health: Option<Tab<RawHealth>>,
    traffic: Option<Tab<RawTraffic>>,
    fault: Option<Spanned<Vec<Tab<RawFault>>>>,
    slo: Option<Tab<RawSlo>>,
    sizing: Option<Tab<RawSizing>>,
    drill: Option<Tab<RawDrill>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    load: Option<LeafList>,
    steady: Option<Leaf>,
    settle: Option<Leaf>,
    media_gap_p99: Option<Leaf>,
    setup_p99: Option<Leaf>,
    dropped: Option<Leaf>,
    failed: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    role: Option<Leaf>,
    servers: Option<Leaf>,
    names: Option<LeafList>,
    capacity: Option<Leaf>,
    policy: Option<Leaf>,
    weights: Option<LeafList>,
    failover: Option<Leaf>,
    first_port: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    probe_interval: Option<Leaf>,
    probe_timeout: Option<Leaf>,
    down_after: Option<Leaf>,
    up_after: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraffic {
    calls: Option<Tab<RawCalls>>,
    ivr: Option<Tab<RawIvr>>,
    queue: Option<Tab<RawQueue>>,
    meetings: Option<Tab<RawMeetings>>,
    registrations: Option<Tab<RawRegistrations>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalls {
    rate: Option<Leaf>,
    hold: Option<Leaf>,
    hold_dist: Option<Leaf>,
    hold_sigma: Option<Leaf>,
    profile: Option<LeafList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIvr {
    rate: Option<Leaf>,
    hold: Option<Leaf>,
    hold_dist: Option<Leaf>,
    hold_sigma: Option<Leaf>,
    then_queue: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    rate: Option<Leaf>,
    queues: Option<Leaf>,
    agents: Option<Leaf>,
    handle: Option<Leaf>,
    handle_dist: Option<Leaf>,
    handle_sigma: Option<Leaf>,
    patience: Option<Leaf>,
    service_level: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeetings {
    rate: Option<Leaf>,
    participants: Option<Leaf>,
    duration: Option<Leaf>,
    duration_dist: Option<Leaf>,
    duration_sigma: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistrations {
    users: Option<Leaf>,
    expires: Option<Leaf>,
    first_user: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    at: Option<Leaf>,
    action: Option<Leaf>,
    server: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlo {
    blocking: Option<Leaf>,
    queue_service_level: Option<Leaf>,
    queue_abandoned: Option<Leaf>,
    queue_asa: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSizing {
    core_ghz: Option<Leaf>,
    target_cpu: Option<Leaf>,
    codec: Option<Leaf>,
    media_calls_per_ghz: Option<Leaf>,
    meeting_cores_per_participant: Option<Leaf>,
    ivr_sessions_per_ghz: Option<Leaf>,
    queue_sessions_per_ghz: Option<Leaf>,
    im_users_per_core: Option<Leaf>,
    im_ram_mb_per_user: Option<Leaf>,
    im_kbps_per_user: Option<Leaf>,
    ram_gb_base: Option<Leaf>,
    ram_mb_per_session: Option<Leaf>,
    disk_gb_base: Option<Leaf>,
}

// ---------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------

/// 1-based line and column (in chars) of a byte offset; offsets past the end
/// or inside a multi-byte char land on the next char boundary.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in text.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// Dotted key path of whatever sits at byte `offset`, found by re-parsing the
/// document into toml's spanned tree. Serde errors carry a span but no path,
/// and the span is exact, so this is reliable where the parse succeeds.
fn key_path_at(text: &str, offset: usize) -> String {
    match DeTable::parse(text) {
        Ok(root) => path_in_table(root.get_ref(), offset, "").unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn path_in_table(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let path = join(prefix, key.get_ref());
        if key.span().contains(&offset) {
            Some(path)
        } else {
            path_in_value(value, offset, &path)
        }
    })
}

fn path_in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &str) -> Option<String> {
    // Nested entries first: a table's span can cover its own children.
    let nested = match value.get_ref() {
        DeValue::Table(table) => path_in_table(table, offset, path),
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| path_in_value(item, offset, &format!("{path}[{i}]"))),
        _ => None,
    };
    nested.or_else(|| value.span().contains(&offset).then(|| path.to_owned()))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A value as the user wrote it, short enough for a one-line message.
fn render(value: &Value) -> String {
    match value {
        Value::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!("\"{head}...\"")
        }
        Value::String(s) => format!("{s:?}"),
        Value::Integer(n) => n.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => format!("the date-time {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// Rewords serde's vocabulary into the file's: users write keys and arrays,
/// not fields and sequences.
fn polish(message: &str) -> String {
    let first_line = message.lines().next().unwrap_or_default();
    first_line
        .replace("unknown field", "unknown key")
        .replace("expected one of", "allowed keys are")
        .replace("there are no fields", "this table takes no keys")
        .replace("a sequence", "an array")
        .replace("sequence", "array")
        .replace("invalid type: map", "invalid type: table")
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

type Res<T> = Result<T, ScenarioError>;

/// Accepted ranges for floating-point settings.
#[derive(Clone, Copy)]
enum Bound {
    Positive,
    NonNegative,
    AtLeastOne,
    Fraction,
    PositiveFraction,
}

impl Bound {
    fn admits(self, x: f64) -> bool {
        x.is_finite()
            && match self {
                Bound::Positive => x > 0.0,
                Bound::NonNegative => x >= 0.0,
                Bound::AtLeastOne => x >= 1.0,
                Bound::Fraction => (0.0..=1.0).contains(&x),
                Bound::PositiveFraction => x > 0.0 && x <= 1.0,
            }
    }

    fn describe(self) -> &'static str {
        match self {
            Bound::Positive => "greater than 0",
            Bound::NonNegative => "at least 0",
            Bound::AtLeastOne => "at least 1",
            Bound::Fraction => "between 0 and 1",
            Bound::PositiveFraction => "greater than 0 and at most 1",
        }
    }
}

/// Upper limit on `servers = N`, so a typo cannot make us allocate millions
/// of names.
const MAX_SERVERS_PER_POOL: i64 = 1_000;
const MEDIA_CAPACITY_GUIDE: u32 = 5_000;
const DEFAULT_DURATION: Duration = Duration::from_secs(3_600);
const DEFAULT_BATCHES: u32 = 20;
/// How many server names an "unknown server" message lists.
const NAMES_SHOWN: usize = 10;

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    warnings: Vec<Diagnostic>,
}

/// Where a table starts and what it is called, for keys that are missing.
struct Table<'k> {
    span: Range<usize>,
    key: &'k str,
}

impl Checker<'_> {
    fn diagnostic(
        &self,
        severity: Severity,
        span: Range<usize>,
        key: &str,
        message: String,
    ) -> Diagnostic {
        let (line, column) = line_col(self.text, span.start);
        Diagnostic {
            severity,
            file: self.file.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message,
        }
    }

    fn error(&self, span: Range<usize>, key: &str, message: String) -> ScenarioError {
        ScenarioError::Invalid(self.diagnostic(Severity::Error, span, key, message))
    }

    fn warn(&mut self, span: Range<usize>, key: &str, message: String) {
        let warning = self.diagnostic(Severity::Warning, span, key, message);
        self.warnings.push(warning);
    }

    fn toml_error(&self, error: &toml::de::Error) -> ScenarioError {
        let span = error.span().unwrap_or(0..0);
        let key = key_path_at(self.text, span.start);
        self.error(span, &key, polish(error.message()))
    }

    // --- leaves -----------------------------------------------------------

    fn required<'v>(
        &self,
        value: &'v Option<Leaf>,
        table: &Table<'_>,
        name: &str,
        what: &str,
    ) -> Res<&'v Leaf> {
        value.as_ref().ok_or_else(|| {
            let message = if table.key.is_empty() {
                format!("missing required key `{name}` ({what})")
            } else {
                format!("missing required key `{name}` in {} ({what})", table.key)
            };
            self.error(table.span.clone(), &join(table.key, name), message)
        })
    }

    fn integer(&self, value: &Leaf, prefix: &str, name: &str, min: i64, max: i64) -> Res<i64> {
        let open_ended = max >= i64::from(u32::MAX);
        let message = match value.get_ref() {
            Value::Integer(n) if (min..=max).contains(n) => return Ok(*n),
            Value::Integer(n) if *n > max && open_ended => {
                format!("{name} must be at most {max}, found {n}")
            }
            other => {
                let wanted = if open_ended {
                    format!("a whole number of at least {min}")
                } else {
                    format!("a whole number from {min} to {max}")
                };
                format!("{name} must be {wanted}, found {}", render(other))
            }
        };
        Err(self.error(value.span(), &join(prefix, name), message))
    }

    fn count(&self, value: &Leaf, prefix: &str, name: &str, min: u32) -> Res<u32> {
        let n = self.integer(value, prefix, name, i64::from(min), i64::from(u32::MAX))?;
        // The range check above makes this conversion infallible.
        u32::try_from(n).map_err(|_| {
            self.error(
                value.span(),
                &join(prefix, name),
                format!("{name} is too large"),
            )
        })
    }

    fn opt_count(
        &self,
        value: &Option<Leaf>,
        prefix: &str,
        name: &str,
        min: u32,
        default: u32,
    ) -> Res<u32> {
        match value {
            Some(value) => self.count(value, prefix, name, min),
            None => Ok(default),
        }
    }

    fn number(&self, value: &Leaf, prefix: &str, name: &str, bound: Bound) -> Res<f64> {
        let x = match value.get_ref() {
            Value::Float(x) => *x,
            // Integers are fine wherever a number is expected; the loss of
            // precision above 2^53 is irrelevant for these settings.
            Value::Integer(n) => *n as f64,
            other => {
                return Err(self.error(
                    value.span(),
                    &join(prefix, name),
                    format!(
                        "{name} must be a number {}, found {}",
                        bound.describe(),
                        render(other)
                    ),
                ));
            }
        };
        if bound.admits(x) {
            Ok(x)
        } else {
            Err(self.error(
                value.span(),
                &join(prefix, name),
                format!("{name} must be {}, found {x}", bound.describe()),
            ))
        }
    }

    fn opt_number(
        &self,
        value: &Option<Leaf>,
        prefix: &str,
        name: &str,
        bound: Bound,
    ) -> Res<Option<f64>> {
        value
            .as_ref()
            .map(|value| self.number(value, prefix, name, bound))
            .transpose()
    }

    fn string<'v>(&self, value: &'v Leaf, prefix: &str, name: &str) -> Res<&'v str> {
        match value.get_ref() {
            Value::String(s) => Ok(s),
            other => Err(self.error(
                value.span(),
                &join(prefix, name),
                format!("{name} must be a string, found {}", render(other)),
            )),
        }
    }

    fn choice<T>(
        &self,
        value: &Leaf,
        prefix: &str,
        name: &str,
        parse: fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Res<T> {
        if let Value::String(s) = value.get_ref()
            && let Some(choice) = parse(s)
        {
            return Ok(choice);
        }
        Err(self.error(
            value.span(),
            &join(prefix, name),
            format!(
                "{name} must be one of {allowed}, found {}",
                render(value.get_ref())
            ),
        ))
    }

    fn opt_choice<T>(
        &self,
        value: &Option<Leaf>,
        prefix: &str,
        name: &str,
        parse: fn(&str) -> Option<T>,
        allowed: &str,
    ) -> Res<Option<T>> {
        value
            .as_ref()
            .map(|value| self.choice(value, prefix, name, parse, allowed))
            .transpose()
    }

    fn duration(&self, value: &Leaf, prefix: &str, name: &str, positive: bool) -> Res<Duration> {
        let key = join(prefix, name);
        let fail = |message: String| Err(self.error(value.span(), &key, message));
        let d = match value.get_ref() {
            Value::String(s) => match parse_duration(s) {
                Ok(d) => d,
                Err(why) => return fail(format!("{name} = {s:?} is not a valid duration: {why}")),
            },
            Value::Integer(n) => match u64::try_from(*n) {
                Ok(secs) => Duration::from_secs(secs),
                Err(_) => return fail(format!("{name} cannot be negative, found {n}")),
            },
            other => {
                return fail(format!(
                    "{name} must be a duration such as \"30s\" or \"1.5h\", found {}",
                    render(other)
                ));
            }
        };
        if positive && d.is_zero() {
            return fail(format!("{name} must be greater than 0"));
        }
        Ok(d)
    }

    fn opt_duration(
        &self,
        value: &Option<Leaf>,
        prefix: &str,
        name: &str,
        positive: bool,
    ) -> Res<Option<Duration>> {
        value
            .as_ref()
            .map(|value| self.duration(value, prefix, name, positive))
            .transpose()
    }

    fn rate(&self, value: &Leaf, prefix: &str, name: &str) -> Res<f64> {
        let key = join(prefix, name);
        let fail = |message: String| Err(self.error(value.span(), &key, message));
        match value.get_ref() {
            Value::String(s) => match parse_rate(s) {
                Ok(rate) => Ok(rate),
                Err(why) => fail(format!("{name} = {s:?} is not a valid rate: {why}")),
            },
            Value::Integer(_) | Value::Float(_) => {
                self.number(value, prefix, name, Bound::NonNegative)
            }
            other => fail(format!(
                "{name} must be a rate such as \"55/s\" or \"3/min\", found {}",
                render(other)
            )),
        }
    }

    // --- tables -----------------------------------------------------------

    fn scenario(mut self, raw: &RawScenario) -> Res<Scenario> {
        let top = Table {
            span: 0..0,
            key: "",
        };
        let name_value = self.required(&raw.name, &top, "name", "a name for the scenario")?;
        let name = self.string(name_value, "", "name")?;
        if name.trim().is_empty() {
            return Err(self.error(
                name_value.span(),
                "name",
                "name must not be empty".to_owned(),
            ));
        }
        let seed_value = self.required(&raw.seed, &top, "seed", "a whole number >= 0")?;
        let seed = self.integer(seed_value, "", "seed", 0, i64::MAX)?;
        let seed = u64::try_from(seed).unwrap_or_default();

        let duration = self
            .opt_duration(&raw.duration, "", "duration", true)?
            .unwrap_or(DEFAULT_DURATION);
        // Without an explicit warmup, drop the first tenth: the simulated
        // cluster starts empty, and that transient would bias every mean.
        let warmup = self
            .opt_duration(&raw.warmup, "", "warmup", false)?
            .unwrap_or(duration / 10);
        if warmup >= duration
            && let Some(value) = &raw.warmup
        {
            return Err(self.error(
                value.span(),
                "warmup",
                format!(
                    "warmup ({}) must be shorter than duration ({})",
                    show_duration(warmup),
                    show_duration(duration)
                ),
            ));
        }
        let batches = match &raw.batches {
            Some(value) => u32::try_from(self.integer(value, "", "batches", 2, 1_000)?)
                .unwrap_or(DEFAULT_BATCHES),
            None => DEFAULT_BATCHES,
        };

        let pools = self.pools(raw.pool.as_ref())?;
        let health = self.health(raw.health.as_ref())?;
        let traffic = self.traffic(raw.traffic.as_ref(), &pools)?;
        let faults = self.faults(raw.fault.as_ref(), &pools, duration)?;
        let slo = self.slo(raw.slo.as_ref())?;
        let sizing = self.sizing(raw.sizing.as_ref())?;
        let drill = self.drill(raw.drill.as_ref())?;

        Ok(Scenario {
            name: name.to_owned(),
            seed,
            duration,
            warmup,
            batches,
            pools,
            health,
            traffic,
            faults,
            slo,
            sizing,
            drill,
            warnings: self.warnings,
        })
    }

    fn pools(&mut self, raw: Option<&Spanned<Vec<Tab<RawPool>>>>) -> Res<Vec<PoolSpec>> {
        let Some(raw) = raw.filter(|list| !list.get_ref().is_empty()) else {
            let span = raw.map_or(0..0, |list| list.span());
            return Err(self.error(
                span,
                "pool",
                "at least one [[pool]] table is required".to_owned(),
            ));
        };
        let mut pools: Vec<PoolSpec> = Vec::new();
        // Server name -> the key that first defined it.
        let mut defined: HashMap<String, String> = HashMap::new();
        for (index, entry) in raw.get_ref().iter().enumerate() {
            let key = format!("pool[{index}]");
            let pool = self.pool(entry, &key, &pools, &mut defined)?;
            pools.push(pool);
        }
        Ok(pools)
    }

    fn pool(
        &mut self,
        entry: &Tab<RawPool>,
        key: &str,
        earlier: &[PoolSpec],
        defined: &mut HashMap<String, String>,
    ) -> Res<PoolSpec> {
        let raw = entry.get_ref();
        let table = Table {
            span: entry.span(),
            key,
        };
        let role_value = self.required(&raw.role, &table, "role", ROLES)?;
        let role = self.choice(role_value, key, "role", Role::from_name, ROLES)?;
        if let Some(first) = earlier.iter().position(|pool| pool.role == role) {
            let role = role.name();
            return Err(self.error(
                role_value.span(),
                &join(key, "role"),
                format!(
                    "there is already a {role} pool (pool[{first}]); put all {role} servers in one pool"
                ),
            ));
        }
        let capacity_value = self.required(
            &raw.capacity,
            &table,
            "capacity",
            "concurrent sessions per server, at least 1",
        )?;
        let capacity = self.count(capacity_value, key, "capacity", 1)?;

        let names = self.server_list(raw, &table, role)?;
        let mut servers = Vec::with_capacity(names.len());
        for (name, span, name_key) in names {
            if let Some(first) = defined.get(&name) {
                return Err(self.error(
                    span,
                    &name_key,
                    format!("server name {name:?} is already used by {first}"),
                ));
            }
            defined.insert(name.clone(), name_key);
            servers.push(ServerSpec { name, weight: 1 });
        }

        let policy = self
            .opt_choice(&raw.policy, key, "policy", Policy::from_name, POLICIES)?
            .unwrap_or(match role {
                Role::Meeting | Role::Queue => Policy::Affinity,
                Role::Media | Role::Ivr | Role::Im => Policy::LeastLoaded,
            });
        if let Some(weights) = &raw.weights {
            let list = weights.get_ref();
            if list.len() != servers.len() {
                return Err(self.error(
                    weights.span(),
                    &join(key, "weights"),
                    format!(
                        "weights must have one entry per server ({}), found {}",
                        servers.len(),
                        list.len()
                    ),
                ));
            }
            for (i, (value, server)) in list.iter().zip(servers.iter_mut()).enumerate() {
                server.weight = self.count(value, key, &format!("weights[{i}]"), 1)?;
            }
        }
        let failover = self
            .opt_choice(
                &raw.failover,
                key,
                "failover",
                FailoverMode::from_name,
                FAILOVERS,
            )?
            .unwrap_or(FailoverMode::Auto);
        let first_port = match &raw.first_port {
            Some(value) => {
                let port = self.integer(value, key, "first_port", 1, i64::from(u16::MAX))?;
                u16::try_from(port).ok()
            }
            None => None,
        };

        if role == Role::Media && capacity > MEDIA_CAPACITY_GUIDE {
            self.warn(
                capacity_value.span(),
                &join(key, "capacity"),
                format!(
                    "capacity {capacity} is above {MEDIA_CAPACITY_GUIDE}: the vendor's cluster guide \
                     keeps a media server at or below 5,000 concurrent call sessions"
                ),
            );
        }
        if servers.is_empty()
            && let Some(value) = &raw.servers
        {
            self.warn(
                value.span(),
                &join(key, "servers"),
                format!(
                    "no {} servers: only nodes that join the live cluster (`pbxlab node`) serve \
                     this pool, and `plan` places none of its sessions",
                    role.name()
                ),
            );
        }
        if let [only] = servers.as_slice() {
            let (span, at) = match (&raw.servers, &raw.names) {
                (Some(value), _) => (value.span(), join(key, "servers")),
                (None, Some(list)) => (list.span(), join(key, "names")),
                (None, None) => (entry.span(), key.to_owned()),
            };
            let message = format!(
                "no N+1: losing {} loses the {} role",
                only.name,
                role.name()
            );
            self.warn(span, &at, message);
        }

        Ok(PoolSpec {
            role,
            servers,
            capacity,
            policy,
            failover,
            first_port,
        })
    }

    /// The pool's server names, each with the span and key to blame if the
    /// name turns out to be taken.
    fn server_list(
        &self,
        raw: &RawPool,
        table: &Table<'_>,
        role: Role,
    ) -> Res<Vec<(String, Range<usize>, String)>> {
        let key = table.key;
        match (&raw.servers, &raw.names) {
            (Some(_), Some(names)) => Err(self.error(
                names.span(),
                &join(key, "names"),
                "give either servers = N or names = [...], not both".to_owned(),
            )),
            (None, None) => Err(self.error(
                table.span.clone(),
                &join(key, "servers"),
                format!("missing required key `servers` in {key} (or give `names` instead)"),
            )),
            (Some(count), None) => {
                // 0: a pool only nodes in their own processes (`pbxlab node`) join.
                let n = self.integer(count, key, "servers", 0, MAX_SERVERS_PER_POOL)?;
                let servers_key = join(key, "servers");
                Ok((1..=n)
                    .map(|i| {
                        let name = format!("{}-{i}", role.name());
                        (name, count.span(), servers_key.clone())
                    })
                    .collect())
            }
            (None, Some(names)) => {
                let list = names.get_ref();
                if list.is_empty() {
                    return Err(self.error(
                        names.span(),
                        &join(key, "names"),
                        "names must list at least one server".to_owned(),
                    ));
                }
                let mut out = Vec::with_capacity(list.len());
                for (i, value) in list.iter().enumerate() {
                    let element = format!("names[{i}]");
                    let name = self.string(value, key, &element)?;
                    if name.trim().is_empty() {
                        return Err(self.error(
                            value.span(),
                            &join(key, &element),
                            format!("{element} must not be empty"),
                        ));
                    }
                    out.push((name.to_owned(), value.span(), join(key, &element)));
                }
                Ok(out)
            }
        }
    }

    fn health(&self, raw: Option<&Tab<RawHealth>>) -> Res<HealthSpec> {
        let key = "health";
        let Some(raw) = raw else {
            return Ok(HealthSpec {
                probe_interval: Duration::from_secs(1),
                probe_timeout: Duration::from_millis(500),
                down_after: 3,
                up_after: 2,
            });
        };
        let raw = raw.get_ref();
        let probe_interval = self
            .opt_duration(&raw.probe_interval, key, "probe_interval", true)?
            .unwrap_or(Duration::from_secs(1));
        let probe_timeout = match &raw.probe_timeout {
            Some(value) => {
                let timeout = self.duration(value, key, "probe_timeout", true)?;
                if timeout >= probe_interval {
                    return Err(self.error(
                        value.span(),
                        "health.probe_timeout",
                        format!(
                            "probe_timeout ({}) must be shorter than probe_interval ({})",
                            show_duration(timeout),
                            show_duration(probe_interval)
                        ),
                    ));
                }
                timeout
            }
            None => probe_interval / 2,
        };
        Ok(HealthSpec {
            probe_interval,
            probe_timeout,
            down_after: self.opt_count(&raw.down_after, key, "down_after", 1, 3)?,
            up_after: self.opt_count(&raw.up_after, key, "up_after", 1, 2)?,
        })
    }

    /// Fails unless some pool serves `role`; traffic for a role nobody serves
    /// would be blocked wholesale, which is never what the author meant.
    fn need_pool(
        &self,
        pools: &[PoolSpec],
        role: Role,
        span: Range<usize>,
        key: &str,
        what: &str,
    ) -> Res<()> {
        if pools.iter().any(|pool| pool.role == role) {
            return Ok(());
        }
        let role = role.name();
        Err(self.error(
            span,
            key,
            format!("{what} needs a {role} pool, but no [[pool]] has role = \"{role}\""),
        ))
    }

    /// A holding-time distribution from its `<name>`, `<name>_dist` and
    /// `<name>_sigma` keys.
    fn hold(
        &mut self,
        table: &Table<'_>,
        name: &str,
        mean: &Option<Leaf>,
        dist: &Option<Leaf>,
        sigma: &Option<Leaf>,
    ) -> Res<HoldDist> {
        let prefix = table.key;
        let mean_value = self.required(mean, table, name, "a mean time such as \"180s\"")?;
        let mean_s = self.duration(mean_value, prefix, name, true)?.as_secs_f64();
        let dist_name = format!("{name}_dist");
        let sigma_name = format!("{name}_sigma");
        let kind = self
            .opt_choice(dist, prefix, &dist_name, parse_dist_kind, DISTS)?
            .unwrap_or(DistKind::Exponential);
        let given_sigma = self.opt_number(sigma, prefix, &sigma_name, Bound::Positive)?;
        Ok(match kind {
            DistKind::Exponential => HoldDist::Exponential { mean_s },
            DistKind::LogNormal => HoldDist::LogNormal {
                mean_s,
                sigma: given_sigma.unwrap_or(1.0),
            },
            DistKind::Fixed => HoldDist::Fixed { s: mean_s },
        })
    }

    fn traffic(&mut self, raw: Option<&Tab<RawTraffic>>, pools: &[PoolSpec]) -> Res<Traffic> {
        let mut traffic = Traffic {
            calls: None,
            ivr: None,
            queue: None,
            meetings: None,
            registrations: None,
        };
        let Some(raw) = raw else {
            return Ok(traffic);
        };
        let raw = raw.get_ref();
        if let Some(calls) = &raw.calls {
            traffic.calls = Some(self.calls(calls, pools)?);
        }
        if let Some(ivr) = &raw.ivr {
            traffic.ivr = Some(self.ivr(ivr, pools, raw.queue.is_some())?);
        }
        if let Some(queue) = &raw.queue {
            let fed_by_ivr = traffic.ivr.as_ref().is_some_and(|ivr| ivr.then_queue > 0.0);
            traffic.queue = Some(self.queue(queue, pools, fed_by_ivr)?);
        }
        if let Some(meetings) = &raw.meetings {
            traffic.meetings = Some(self.meetings(meetings, pools)?);
        }
        if let Some(registrations) = &raw.registrations {
            traffic.registrations = Some(self.registrations(registrations)?);
        }
        Ok(traffic)
    }

    fn calls(&mut self, entry: &Tab<RawCalls>, pools: &[PoolSpec]) -> Res<CallTraffic> {
        let table = Table {
            span: entry.span(),
            key: "traffic.calls",
        };
        self.need_pool(pools, Role::Media, entry.span(), table.key, "call traffic")?;
        let raw = entry.get_ref();
        let rate_value =
            self.required(&raw.rate, &table, "rate", "calls per time, e.g. \"55/s\"")?;
        let rate_per_s = self.rate(rate_value, table.key, "rate")?;
        let hold = self.hold(&table, "hold", &raw.hold, &raw.hold_dist, &raw.hold_sigma)?;
        let profile = match &raw.profile {
            Some(list) => Some(self.profile(list, table.key)?),
            None => None,
        };
        Ok(CallTraffic {
            rate_per_s,
            hold,
            profile,
        })
    }

    fn profile(&self, list: &LeafList, prefix: &str) -> Res<[f64; 24]> {
        let items = list.get_ref();
        if items.len() != 24 {
            return Err(self.error(
                list.span(),
                &join(prefix, "profile"),
                format!(
                    "profile must have exactly 24 hourly multipliers, found {}",
                    items.len()
                ),
            ));
        }
        let mut hours = [0.0; 24];
        for ((i, value), slot) in items.iter().enumerate().zip(hours.iter_mut()) {
            *slot = self.number(value, prefix, &format!("profile[{i}]"), Bound::NonNegative)?;
        }
        if !hours.iter().any(|&x| x > 0.0) {
            return Err(self.error(
                list.span(),
                &join(prefix, "profile"),
                "profile must have at least one hour above 0, found all 0".to_owned(),
            ));
        }
        Ok(hours)
    }

    fn ivr(
        &mut self,
        entry: &Tab<RawIvr>,
        pools: &[PoolSpec],
        has_queue_traffic: bool,
    ) -> Res<IvrTraffic> {
        let table = Table {
            span: entry.span(),
            key: "traffic.ivr",
        };
        self.need_pool(pools, Role::Ivr, entry.span(), table.key, "IVR traffic")?;
        let raw = entry.get_ref();
        let rate_value =
            self.required(&raw.rate, &table, "rate", "sessions per time, e.g. \"5/s\"")?;
        let rate_per_s = self.rate(rate_value, table.key, "rate")?;
        let hold = self.hold(&table, "hold", &raw.hold, &raw.hold_dist, &raw.hold_sigma)?;
        let then_queue = self
            .opt_number(&raw.then_queue, table.key, "then_queue", Bound::Fraction)?
            .unwrap_or(0.0);
        if then_queue > 0.0
            && let Some(value) = &raw.then_queue
        {
            self.need_pool(
                pools,
                Role::Queue,
                value.span(),
                "traffic.ivr.then_queue",
                "transferring IVR callers into a queue",
            )?;
            // Transferred callers are served by the queues' agents; without them they would
            // vanish from the run unnoticed.
            if !has_queue_traffic {
                return Err(self.error(
                    value.span(),
                    "traffic.ivr.then_queue",
                    "transferring IVR callers into a queue needs a [traffic.queue] table \
                     (its agents and handle time serve them); add one with rate = \"0/s\" \
                     if callers only arrive from the IVR"
                        .to_owned(),
                ));
            }
        }
        Ok(IvrTraffic {
            rate_per_s,
            hold,
            then_queue,
        })
    }

    fn queue(
        &mut self,
        entry: &Tab<RawQueue>,
        pools: &[PoolSpec],
        fed_by_ivr: bool,
    ) -> Res<QueueTraffic> {
        let table = Table {
            span: entry.span(),
            key: "traffic.queue",
        };
        self.need_pool(pools, Role::Queue, entry.span(), table.key, "queue traffic")?;
        let raw = entry.get_ref();
        let rate_value = self.required(
            &raw.rate,
            &table,
            "rate",
            "callers per time, e.g. \"5/s\" (\"0/s\" if only the IVR feeds the queues)",
        )?;
        let rate_per_s = self.rate(rate_value, table.key, "rate")?;
        let queues = self.opt_count(&raw.queues, table.key, "queues", 1, 1)?;
        let agents_value = self.required(&raw.agents, &table, "agents", "agents per queue")?;
        let agents = self.count(agents_value, table.key, "agents", 1)?;
        let handle = self.hold(
            &table,
            "handle",
            &raw.handle,
            &raw.handle_dist,
            &raw.handle_sigma,
        )?;
        let patience_s = self
            .opt_duration(&raw.patience, table.key, "patience", true)?
            .map(|d| d.as_secs_f64());
        let service_level_s = self
            .opt_duration(&raw.service_level, table.key, "service_level", false)?
            .unwrap_or(Duration::from_secs(20))
            .as_secs_f64();
        if rate_per_s == 0.0 && !fed_by_ivr {
            self.warn(
                rate_value.span(),
                "traffic.queue.rate",
                "the queues get no callers: rate is 0 and no IVR traffic has then_queue > 0"
                    .to_owned(),
            );
        }
        Ok(QueueTraffic {
            rate_per_s,
            queues,
            agents,
            handle,
            patience_s,
            service_level_s,
        })
    }

    fn meetings(&mut self, entry: &Tab<RawMeetings>, pools: &[PoolSpec]) -> Res<MeetingTraffic> {
        let table = Table {
            span: entry.span(),
            key: "traffic.meetings",
        };
        self.need_pool(
            pools,
            Role::Meeting,
            entry.span(),
            table.key,
            "meeting traffic",
        )?;
        let raw = entry.get_ref();
        let rate_value = self.required(
            &raw.rate,
            &table,
            "rate",
            "meetings per time, e.g. \"0.05/s\"",
        )?;
        let rate_per_s = self.rate(rate_value, table.key, "rate")?;
        let participants_value = self.required(
            &raw.participants,
            &table,
            "participants",
            "mean participants per meeting, at least 1",
        )?;
        let participants_mean = self.number(
            participants_value,
            table.key,
            "participants",
            Bound::AtLeastOne,
        )?;
        let duration = self.hold(
            &table,
            "duration",
            &raw.duration,
            &raw.duration_dist,
            &raw.duration_sigma,
        )?;
        Ok(MeetingTraffic {
            rate_per_s,
            participants_mean,
            duration,
        })
    }

    fn registrations(&self, entry: &Tab<RawRegistrations>) -> Res<RegistrationTraffic> {
        let table = Table {
            span: entry.span(),
            key: "traffic.registrations",
        };
        let raw = entry.get_ref();
        let users_value =
            self.required(&raw.users, &table, "users", "number of users, at least 1")?;
        let users = self.count(users_value, table.key, "users", 1)?;
        let expires = self
            .opt_duration(&raw.expires, table.key, "expires", true)?
            .unwrap_or(Duration::from_secs(3_600));
        let first_user = self.opt_count(&raw.first_user, table.key, "first_user", 0, 1_000)?;
        if first_user.checked_add(users.saturating_sub(1)).is_none() {
            let span = raw
                .first_user
                .as_ref()
                .map_or(users_value.span(), |v| v.span());
            return Err(self.error(
                span,
                "traffic.registrations.first_user",
                format!(
                    "first_user + users - 1 must fit in 32 bits (at most {}), found {first_user} + {users} - 1",
                    u32::MAX
                ),
            ));
        }
        Ok(RegistrationTraffic {
            users,
            expires,
            first_user,
        })
    }

    fn faults(
        &self,
        raw: Option<&Spanned<Vec<Tab<RawFault>>>>,
        pools: &[PoolSpec],
        duration: Duration,
    ) -> Res<Vec<FaultSpec>> {
        let Some(raw) = raw else {
            return Ok(Vec::new());
        };
        let known: Vec<&str> = pools
            .iter()
            .flat_map(|pool| pool.servers.iter().map(|server| server.name.as_str()))
            .collect();
        let mut faults = Vec::with_capacity(raw.get_ref().len());
        for (index, entry) in raw.get_ref().iter().enumerate() {
            let key = format!("fault[{index}]");
            let table = Table {
                span: entry.span(),
                key: &key,
            };
            let fault = entry.get_ref();
            let at_value =
                self.required(&fault.at, &table, "at", "when it happens, e.g. \"40m\"")?;
            let at = self.duration(at_value, &key, "at", false)?;
            if at >= duration {
                return Err(self.error(
                    at_value.span(),
                    &join(&key, "at"),
                    format!(
                        "at ({}) must be before the end of the run (duration = {})",
                        show_duration(at),
                        show_duration(duration)
                    ),
                ));
            }
            let action_value = self.required(&fault.action, &table, "action", FAULT_ACTIONS)?;
            let action = self.choice(
                action_value,
                &key,
                "action",
                parse_fault_action,
                FAULT_ACTIONS,
            )?;
            let server_value =
                self.required(&fault.server, &table, "server", "the name of a server")?;
            let server = self.string(server_value, &key, "server")?;
            if !known.contains(&server) {
                let mut listed = known[..known.len().min(NAMES_SHOWN)].join(", ");
                if known.len() > NAMES_SHOWN {
                    listed.push_str(&format!(", ... ({} in all)", known.len()));
                }
                return Err(self.error(
                    server_value.span(),
                    &join(&key, "server"),
                    format!("no server named {server:?}; servers are {listed}"),
                ));
            }
            faults.push(FaultSpec {
                at,
                action,
                server: server.to_owned(),
            });
        }
        Ok(faults)
    }

    fn drill(&self, raw: Option<&Tab<RawDrill>>) -> Res<Option<DrillSpec>> {
        let key = "drill";
        let Some(raw) = raw else {
            return Ok(None);
        };
        let raw = raw.get_ref();
        let mut load = Vec::new();
        if let Some(list) = &raw.load {
            for (i, value) in list.get_ref().iter().enumerate() {
                load.push(self.string(value, key, &format!("load[{i}]"))?.to_owned());
            }
        }
        let duration = |value: &Option<Leaf>, name: &str, default_ms: u64| -> Res<Duration> {
            Ok(self
                .opt_duration(value, key, name, false)?
                .unwrap_or(Duration::from_millis(default_ms)))
        };
        let count = |value: &Option<Leaf>, name: &str| -> Res<u64> {
            match value {
                Some(v) => Ok(u64::try_from(self.integer(v, key, name, 0, i64::MAX)?).unwrap_or(0)),
                None => Ok(0),
            }
        };
        Ok(Some(DrillSpec {
            load,
            steady: duration(&raw.steady, "steady", 10_000)?,
            settle: duration(&raw.settle, "settle", 5_000)?,
            media_gap_p99: duration(&raw.media_gap_p99, "media_gap_p99", 300)?,
            setup_p99: duration(&raw.setup_p99, "setup_p99", 2_000)?,
            dropped: count(&raw.dropped, "dropped")?,
            failed: count(&raw.failed, "failed")?,
        }))
    }

    fn slo(&self, raw: Option<&Tab<RawSlo>>) -> Res<Slo> {
        let key = "slo";
        let Some(raw) = raw else {
            return Ok(Slo {
                blocking: None,
                queue_service_level: None,
                queue_abandoned: None,
                queue_asa_s: None,
            });
        };
        let raw = raw.get_ref();
        Ok(Slo {
            blocking: self.opt_number(&raw.blocking, key, "blocking", Bound::Fraction)?,
            queue_service_level: self.opt_number(
                &raw.queue_service_level,
                key,
                "queue_service_level",
                Bound::Fraction,
            )?,
            queue_abandoned: self.opt_number(
                &raw.queue_abandoned,
                key,
                "queue_abandoned",
                Bound::Fraction,
            )?,
            queue_asa_s: self
                .opt_duration(&raw.queue_asa, key, "queue_asa", false)?
                .map(|d| d.as_secs_f64()),
        })
    }

    fn sizing(&self, raw: Option<&Tab<RawSizing>>) -> Res<SizingCosts> {
        let defaults = SizingCosts::default();
        let Some(raw) = raw else {
            return Ok(defaults);
        };
        let raw = raw.get_ref();
        let key = "sizing";
        let cost = |value: &Option<Leaf>, name: &str, default: f64| -> Res<f64> {
            Ok(self
                .opt_number(value, key, name, Bound::Positive)?
                .unwrap_or(default))
        };
        Ok(SizingCosts {
            core_ghz: cost(&raw.core_ghz, "core_ghz", defaults.core_ghz)?,
            target_cpu: self
                .opt_number(&raw.target_cpu, key, "target_cpu", Bound::PositiveFraction)?
                .unwrap_or(defaults.target_cpu),
            codec: self
                .opt_choice(&raw.codec, key, "codec", parse_codec, CODECS)?
                .unwrap_or(defaults.codec),
            media_calls_per_ghz: cost(
                &raw.media_calls_per_ghz,
                "media_calls_per_ghz",
                defaults.media_calls_per_ghz,
            )?,
            meeting_cores_per_participant: cost(
                &raw.meeting_cores_per_participant,
                "meeting_cores_per_participant",
                defaults.meeting_cores_per_participant,
            )?,
            ivr_sessions_per_ghz: cost(
                &raw.ivr_sessions_per_ghz,
                "ivr_sessions_per_ghz",
                defaults.ivr_sessions_per_ghz,
            )?,
            queue_sessions_per_ghz: cost(
                &raw.queue_sessions_per_ghz,
                "queue_sessions_per_ghz",
                defaults.queue_sessions_per_ghz,
            )?,
            im_users_per_core: cost(
                &raw.im_users_per_core,
                "im_users_per_core",
                defaults.im_users_per_core,
            )?,
            im_ram_mb_per_user: cost(
                &raw.im_ram_mb_per_user,
                "im_ram_mb_per_user",
                defaults.im_ram_mb_per_user,
            )?,
            im_kbps_per_user: cost(
                &raw.im_kbps_per_user,
                "im_kbps_per_user",
                defaults.im_kbps_per_user,
            )?,
            ram_gb_base: cost(&raw.ram_gb_base, "ram_gb_base", defaults.ram_gb_base)?,
            ram_mb_per_session: cost(
                &raw.ram_mb_per_session,
                "ram_mb_per_session",
                defaults.ram_mb_per_session,
            )?,
            disk_gb_base: cost(&raw.disk_gb_base, "disk_gb_base", defaults.disk_gb_base)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example, plus the ivr/queue/meeting/im pools its
    /// traffic needs (traffic without a serving pool is an error).
    const FULL: &str = r#"name = "reference cluster"
seed = 7
duration = "2h"            # simulated time for plan
warmup = "10m"             # excluded from statistics; must be < duration
batches = 20

[[pool]]
role = "media"             # media | meeting | ivr | queue | im
servers = 3                # named media-1..media-3
capacity = 5000
policy = "least-loaded"
weights = [1, 2, 1]
failover = "auto"
first_port = 20000

[[pool]]
role = "meeting"
names = ["conf-a", "conf-b"]
capacity = 400

[[pool]]
role = "ivr"
servers = 2
capacity = 300
policy = "weighted"
weights = [3, 1]

[[pool]]
role = "queue"
servers = 2
capacity = 1000
failover = "operator"

[[pool]]
role = "im"
servers = 2
capacity = 20000

[health]
probe_interval = "1s"
probe_timeout = "500ms"
down_after = 3
up_after = 2

[traffic.calls]            # each call holds one media session
rate = "55/s"
hold = "180s"
hold_dist = "exponential"
hold_sigma = 1.0
profile = [0.3, 0.2, 0.2, 0.2, 0.2, 0.3, 0.5, 0.8, 1.0, 1.2, 1.3, 1.2,
           1.0, 1.1, 1.2, 1.3, 1.2, 1.0, 0.8, 0.6, 0.5, 0.4, 0.4, 0.3]

[traffic.ivr]
rate = "5/s"
hold = "60s"
then_queue = 0.4

[traffic.queue]
rate = "5/s"
queues = 1
agents = 300
handle = "240s"
handle_dist = "lognormal"
handle_sigma = 0.5
patience = "120s"
service_level = "20s"

[traffic.meetings]
rate = "0.05/s"
participants = 8
duration = "30m"

[traffic.registrations]
users = 50000
expires = "3600s"
first_user = 1000

[[fault]]
at = "40m"
action = "fail"
server = "media-2"

[[fault]]
at = "50m"
action = "recover"
server = "media-2"

[slo]
blocking = 0.01
queue_service_level = 0.8
queue_abandoned = 0.05
queue_asa = "30s"

[sizing]
core_ghz = 3.0
target_cpu = 0.7
codec = "g711"
media_calls_per_ghz = 100.0
meeting_cores_per_participant = 0.045
ivr_sessions_per_ghz = 100.0
queue_sessions_per_ghz = 100.0
im_users_per_core = 2500.0
im_ram_mb_per_user = 0.33
im_kbps_per_user = 20.0
ram_gb_base = 4.0
ram_mb_per_session = 0.5
disk_gb_base = 40.0
"#;

    /// Lines 1-7; tests append from line 8 on.
    const MINIMAL: &str =
        "name = \"min\"\nseed = 1\n\n[[pool]]\nrole = \"media\"\nservers = 2\ncapacity = 100\n";

    fn parse(text: &str) -> Scenario {
        match Scenario::from_toml("t.toml", text) {
            Ok(scenario) => scenario,
            Err(e) => panic!("expected a valid scenario, got {e}"),
        }
    }

    fn invalid(text: &str) -> Diagnostic {
        match Scenario::from_toml("t.toml", text) {
            Err(ScenarioError::Invalid(d)) => d,
            Err(e) => panic!("expected an Invalid error, got {e}"),
            Ok(s) => panic!("expected an error, got {s:?}"),
        }
    }

    fn assert_at(d: &Diagnostic, line: usize, column: usize, key: &str, needles: &[&str]) {
        assert_eq!(d.severity, Severity::Error, "{d}");
        assert_eq!((d.line, d.column), (line, column), "{d}");
        assert_eq!(d.key, key, "{d}");
        assert_eq!(d.file, "t.toml");
        for needle in needles {
            assert!(d.message.contains(needle), "{needle:?} missing from: {d}");
        }
    }

    #[test]
    fn full_example_parses() {
        let s = parse(FULL);
        assert_eq!(s.name, "reference cluster");
        assert_eq!(s.seed, 7);
        assert_eq!(s.duration, Duration::from_secs(7_200));
        assert_eq!(s.warmup, Duration::from_secs(600));
        assert_eq!(s.batches, 20);

        let media = &s.pools[0];
        assert_eq!(media.role, Role::Media);
        let names: Vec<&str> = media.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["media-1", "media-2", "media-3"]);
        let weights: Vec<u32> = media.servers.iter().map(|s| s.weight).collect();
        assert_eq!(weights, [1, 2, 1]);
        assert_eq!(media.capacity, 5000);
        assert_eq!(media.policy, Policy::LeastLoaded);
        assert_eq!(media.failover, FailoverMode::Auto);
        assert_eq!(media.first_port, Some(20000));

        let meeting = &s.pools[1];
        assert_eq!(meeting.policy, Policy::Affinity);
        assert_eq!(meeting.servers[1].name, "conf-b");
        assert_eq!(meeting.first_port, None);
        assert_eq!(s.pools[2].policy, Policy::Weighted);
        assert_eq!(s.pools[2].servers[0].weight, 3);
        assert_eq!(s.pools[3].policy, Policy::Affinity);
        assert_eq!(s.pools[3].failover, FailoverMode::Operator);
        assert_eq!(s.pools[4].policy, Policy::LeastLoaded);

        assert_eq!(
            s.health,
            HealthSpec {
                probe_interval: Duration::from_secs(1),
                probe_timeout: Duration::from_millis(500),
                down_after: 3,
                up_after: 2,
            }
        );

        let calls = s.traffic.calls.as_ref().expect("calls");
        assert_eq!(calls.rate_per_s, 55.0);
        assert_eq!(calls.hold, HoldDist::Exponential { mean_s: 180.0 });
        let profile = calls.profile.expect("profile");
        assert_eq!(profile[0], 0.3);
        assert_eq!(profile[10], 1.3);
        assert_eq!(profile[23], 0.3);

        let ivr = s.traffic.ivr.as_ref().expect("ivr");
        assert_eq!(ivr.rate_per_s, 5.0);
        assert_eq!(ivr.hold, HoldDist::Exponential { mean_s: 60.0 });
        assert_eq!(ivr.then_queue, 0.4);

        let queue = s.traffic.queue.as_ref().expect("queue");
        assert_eq!(
            *queue,
            QueueTraffic {
                rate_per_s: 5.0,
                queues: 1,
                agents: 300,
                handle: HoldDist::LogNormal {
                    mean_s: 240.0,
                    sigma: 0.5
                },
                patience_s: Some(120.0),
                service_level_s: 20.0,
            }
        );

        let meetings = s.traffic.meetings.as_ref().expect("meetings");
        assert_eq!(meetings.rate_per_s, 0.05);
        assert_eq!(meetings.participants_mean, 8.0);
        assert_eq!(meetings.duration, HoldDist::Exponential { mean_s: 1800.0 });

        assert_eq!(
            s.traffic.registrations,
            Some(RegistrationTraffic {
                users: 50_000,
                expires: Duration::from_secs(3_600),
                first_user: 1_000,
            })
        );

        assert_eq!(
            s.faults,
            [
                FaultSpec {
                    at: Duration::from_secs(2_400),
                    action: FaultAction::Fail,
                    server: "media-2".to_owned(),
                },
                FaultSpec {
                    at: Duration::from_secs(3_000),
                    action: FaultAction::Recover,
                    server: "media-2".to_owned(),
                },
            ]
        );
        assert_eq!(
            s.slo,
            Slo {
                blocking: Some(0.01),
                queue_service_level: Some(0.8),
                queue_abandoned: Some(0.05),
                queue_asa_s: Some(30.0),
            }
        );
        assert_eq!(s.sizing, SizingCosts::default());

        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn server_names_in_pool_order() {
        let s = parse(FULL);
        let all: Vec<(&str, Role)> = s.server_names().collect();
        assert_eq!(all.len(), 11);
        assert_eq!(all[0], ("media-1", Role::Media));
        assert_eq!(all[3], ("conf-a", Role::Meeting));
        assert_eq!(all[10], ("im-2", Role::Im));
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let s = parse(MINIMAL);
        assert_eq!(s.name, "min");
        assert_eq!(s.seed, 1);
        assert_eq!(s.duration, Duration::from_secs(3_600));
        assert_eq!(s.warmup, Duration::from_secs(360));
        assert_eq!(s.batches, 20);
        assert_eq!(s.pools.len(), 1);
        let pool = &s.pools[0];
        assert_eq!(pool.policy, Policy::LeastLoaded);
        assert_eq!(pool.failover, FailoverMode::Auto);
        assert_eq!(pool.first_port, None);
        assert!(pool.servers.iter().all(|s| s.weight == 1));
        assert_eq!(s.health.probe_interval, Duration::from_secs(1));
        assert_eq!(s.health.probe_timeout, Duration::from_millis(500));
        assert_eq!((s.health.down_after, s.health.up_after), (3, 2));
        assert_eq!(
            s.traffic,
            Traffic {
                calls: None,
                ivr: None,
                queue: None,
                meetings: None,
                registrations: None,
            }
        );
        assert!(s.faults.is_empty());
        assert_eq!(s.slo.blocking, None);
        assert_eq!(s.sizing, SizingCosts::default());
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    #[test]
    fn traffic_defaults_are_filled() {
        let s = parse(&format!(
            "{MINIMAL}\n[[pool]]\nrole = \"queue\"\nservers = 2\ncapacity = 10\n\
             \n[traffic.calls]\nrate = 3\nhold = \"2m\"\nhold_dist = \"lognormal\"\n\
             \n[traffic.queue]\nrate = \"30/min\"\nagents = 4\nhandle = 90\n\
             \n[traffic.registrations]\nusers = 10\n\
             \n[health]\nprobe_interval = \"3s\"\n"
        ));
        let calls = s.traffic.calls.expect("calls");
        assert_eq!(calls.rate_per_s, 3.0);
        assert_eq!(
            calls.hold,
            HoldDist::LogNormal {
                mean_s: 120.0,
                sigma: 1.0
            }
        );
        let queue = s.traffic.queue.expect("queue");
        assert_eq!(queue.rate_per_s, 0.5);
        assert_eq!(queue.queues, 1);
        assert_eq!(queue.handle, HoldDist::Exponential { mean_s: 90.0 });
        assert_eq!(queue.patience_s, None);
        assert_eq!(queue.service_level_s, 20.0);
        let registrations = s.traffic.registrations.expect("registrations");
        assert_eq!(registrations.expires, Duration::from_secs(3_600));
        assert_eq!(registrations.first_user, 1_000);
        assert_eq!(s.health.probe_timeout, Duration::from_millis(1_500));
    }

    #[test]
    fn unknown_top_level_key() {
        let d = invalid(
            "name = \"x\"\nseed = 1\ncolour = \"red\"\n[[pool]]\nrole = \"im\"\nservers = 2\ncapacity = 1\n",
        );
        assert_at(
            &d,
            3,
            1,
            "colour",
            &["colour", "allowed keys", "seed", "pool"],
        );
    }

    #[test]
    fn unknown_key_in_pool() {
        let d = invalid(&format!("{MINIMAL}colour = 1\n"));
        assert_at(&d, 8, 1, "pool[0].colour", &["colour", "role", "capacity"]);
    }

    #[test]
    fn unknown_key_in_traffic_calls() {
        let d = invalid(&format!(
            "{MINIMAL}\n[traffic.calls]\nrate = \"1/s\"\nhold = \"1s\"\nholdd = \"2s\"\n"
        ));
        assert_at(&d, 12, 1, "traffic.calls.holdd", &["holdd", "hold_dist"]);
    }

    #[test]
    fn unknown_key_in_inline_and_nested_tables() {
        let d = invalid(&format!("{MINIMAL}\n[sizing]\ncore_mhz = 3000\n"));
        assert_at(&d, 10, 1, "sizing.core_mhz", &["core_mhz", "core_ghz"]);
        let d = invalid(&format!("{MINIMAL}\n[traffic]\nsms = {{ rate = 1 }}\n"));
        assert_at(&d, 10, 1, "traffic.sms", &["sms", "calls"]);
    }

    #[test]
    fn wrong_type_for_capacity() {
        let d = invalid(
            "name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = 2\ncapacity = \"many\"\n",
        );
        assert_at(
            &d,
            6,
            12,
            "pool[0].capacity",
            &["capacity", "\"many\"", "whole number"],
        );
    }

    #[test]
    fn wrong_type_for_seed() {
        let d = invalid(
            "name = \"x\"\nseed = 1.5\n[[pool]]\nrole = \"media\"\nservers = 2\ncapacity = 1\n",
        );
        assert_at(&d, 2, 8, "seed", &["seed", "1.5"]);
    }

    #[test]
    fn wrong_shape_for_a_table() {
        let d = invalid(&format!("{MINIMAL}\n[traffic]\ncalls = 5\n"));
        assert_at(&d, 10, 9, "traffic.calls", &["expected a table"]);
        let d = invalid(&format!(
            "{MINIMAL}\n[traffic]\ncalls = [\"1/s\", \"1s\"]\n"
        ));
        assert_at(
            &d,
            10,
            9,
            "traffic.calls",
            &["invalid type: array, expected a table"],
        );
        let d = invalid(&format!("{MINIMAL}\n[fault]\nat = 1\n"));
        assert_at(
            &d,
            9,
            1,
            "fault",
            &["invalid type: table, expected an array"],
        );
    }

    #[test]
    fn negative_capacity() {
        let d = invalid(
            "name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = 2\ncapacity = -5\n",
        );
        assert_at(&d, 6, 12, "pool[0].capacity", &[]);
        assert_eq!(
            d.message,
            "capacity must be a whole number of at least 1, found -5"
        );
        assert_eq!(
            d.to_string(),
            "t.toml:6:12: error: pool[0].capacity: capacity must be a whole number of at least 1, found -5"
        );
    }

    #[test]
    fn fault_naming_unknown_server() {
        let d = invalid(&format!(
            "{MINIMAL}\n[[fault]]\nat = \"1m\"\naction = \"fail\"\nserver = \"media-9\"\n"
        ));
        assert_at(&d, 12, 10, "fault[0].server", &[]);
        assert_eq!(
            d.message,
            "no server named \"media-9\"; servers are media-1, media-2"
        );
    }

    #[test]
    fn unknown_server_list_is_capped() {
        let text = "name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = 12\ncapacity = 1\n\
                    [[fault]]\nat = 5\naction = \"drain\"\nserver = \"nope\"\n";
        let d = invalid(text);
        assert_at(
            &d,
            10,
            10,
            "fault[0].server",
            &["media-10", ", ... (12 in all)"],
        );
        assert!(!d.message.contains("media-11"), "{d}");
    }

    #[test]
    fn duplicate_server_names() {
        let d = invalid(&format!(
            "{MINIMAL}\n[[pool]]\nrole = \"ivr\"\nnames = [\"ivr-a\", \"media-2\"]\ncapacity = 10\n"
        ));
        assert_at(
            &d,
            11,
            19,
            "pool[1].names[1]",
            &["\"media-2\"", "pool[0].servers"],
        );
    }

    #[test]
    fn duplicate_role_pools() {
        let d = invalid(&format!(
            "{MINIMAL}\n[[pool]]\nrole = \"media\"\nservers = 1\ncapacity = 10\n"
        ));
        assert_at(
            &d,
            10,
            8,
            "pool[1].role",
            &["already a media pool", "pool[0]"],
        );
    }

    #[test]
    fn servers_and_names_together() {
        let d = invalid(&format!("{MINIMAL}names = [\"a\", \"b\"]\n"));
        assert_at(&d, 8, 9, "pool[0].names", &["servers", "names", "not both"]);
    }

    #[test]
    fn bad_duration_unit() {
        let d = invalid(&format!(
            "name = \"x\"\nseed = 1\nwarmup = \"10 parsecs\"\n{}",
            &MINIMAL[22..]
        ));
        assert_at(
            &d,
            3,
            10,
            "warmup",
            &["warmup", "parsecs", "ns, us, ms, s, m or min, h, d"],
        );
    }

    #[test]
    fn negative_duration() {
        let d = invalid(&format!(
            "name = \"x\"\nseed = 1\nduration = \"-3s\"\n{}",
            &MINIMAL[22..]
        ));
        assert_at(&d, 3, 12, "duration", &["duration", "negative"]);
        let d = invalid(&format!(
            "name = \"x\"\nseed = 1\nduration = \"0s\"\n{}",
            &MINIMAL[22..]
        ));
        assert_at(&d, 3, 12, "duration", &["duration", "greater than 0"]);
    }

    #[test]
    fn bad_rate() {
        let d = invalid(&format!(
            "{MINIMAL}\n[traffic.calls]\nrate = \"5/fortnight\"\nhold = \"1s\"\n"
        ));
        assert_at(
            &d,
            10,
            8,
            "traffic.calls.rate",
            &["rate", "fortnight", "/min"],
        );
        let d = invalid(&format!(
            "{MINIMAL}\n[traffic.calls]\nrate = -2\nhold = \"1s\"\n"
        ));
        assert_at(&d, 10, 8, "traffic.calls.rate", &["rate", "at least 0"]);
    }

    #[test]
    fn fault_at_not_before_end() {
        let d = invalid(&format!(
            "name = \"x\"\nseed = 1\nduration = \"1h\"\n{}\n[[fault]]\nat = \"60m\"\naction = \"fail\"\nserver = \"media-1\"\n",
            &MINIMAL[22..]
        ));
        assert_at(&d, 11, 6, "fault[0].at", &["at (1h)", "duration = 1h"]);
    }

    #[test]
    fn warmup_not_before_duration() {
        let d = invalid(&format!(
            "name = \"x\"\nseed = 1\nduration = \"10m\"\nwarmup = 600\n{}",
            &MINIMAL[22..]
        ));
        assert_at(&d, 4, 10, "warmup", &["warmup (10m)", "duration (10m)"]);
    }

    #[test]
    fn probe_timeout_not_below_interval() {
        let d = invalid(&format!(
            "{MINIMAL}\n[health]\nprobe_interval = \"1s\"\nprobe_timeout = \"1s\"\n"
        ));
        assert_at(
            &d,
            11,
            17,
            "health.probe_timeout",
            &["probe_timeout", "probe_interval"],
        );
    }

    #[test]
    fn toml_syntax_error() {
        let d = invalid("name = \"x\"\nseed = \n");
        assert_at(&d, 2, 8, "", &["quoted"]);
        assert!(!d.message.contains('\n'), "{d}");
        let d = invalid(&format!("{MINIMAL}capacity = 3\n"));
        assert_at(&d, 8, 1, "", &["duplicate key"]);
    }

    #[test]
    fn missing_required_keys() {
        let d = invalid("name = \"x\"\nseed = 1\n\n[[pool]]\nservers = 2\ncapacity = 1\n");
        assert_at(&d, 4, 1, "pool[0].role", &["role", "media"]);
        let d = invalid("name = \"x\"\nseed = 1\n\n[[pool]]\nrole = \"im\"\nservers = 2\n");
        assert_at(&d, 4, 1, "pool[0].capacity", &["capacity"]);
        let d = invalid("name = \"x\"\nseed = 1\n");
        assert_at(&d, 1, 1, "pool", &["[[pool]]"]);
        let d = invalid("seed = 1\n[[pool]]\nrole = \"im\"\nservers = 2\ncapacity = 1\n");
        assert_at(&d, 1, 1, "name", &["name"]);
        let d = invalid(&format!("{MINIMAL}\n[traffic.calls]\nrate = \"1/s\"\n"));
        assert_at(&d, 9, 1, "traffic.calls.hold", &["hold"]);
    }

    #[test]
    fn traffic_without_its_pool() {
        let d = invalid(&format!(
            "{MINIMAL}\n[traffic.meetings]\nrate = \"1/s\"\nparticipants = 3\nduration = \"30m\"\n"
        ));
        assert_at(&d, 9, 1, "traffic.meetings", &["meeting pool"]);
        let d = invalid(&format!(
            "{MINIMAL}\n[[pool]]\nrole = \"ivr\"\nservers = 2\ncapacity = 9\n\
             \n[traffic.ivr]\nrate = 1\nhold = 1\nthen_queue = 0.5\n"
        ));
        assert_at(&d, 17, 14, "traffic.ivr.then_queue", &["queue pool"]);
        // A queue pool without [traffic.queue] has no agents to serve transferred callers.
        let d = invalid(&format!(
            "{MINIMAL}\n[[pool]]\nrole = \"ivr\"\nservers = 2\ncapacity = 9\n\
             \n[[pool]]\nrole = \"queue\"\nservers = 2\ncapacity = 9\n\
             \n[traffic.ivr]\nrate = 1\nhold = 1\nthen_queue = 0.5\n"
        ));
        assert_at(&d, 22, 14, "traffic.ivr.then_queue", &["[traffic.queue]"]);
        // Registrations need no pool.
        parse(&format!("{MINIMAL}\n[traffic.registrations]\nusers = 5\n"));
    }

    #[test]
    fn length_and_range_checks() {
        let d = invalid(&format!(
            "{MINIMAL}\n[traffic.calls]\nrate = 1\nhold = 1\nprofile = [1, 2]\n"
        ));
        assert_at(&d, 12, 11, "traffic.calls.profile", &["24", "found 2"]);
        let d = invalid(&format!("{MINIMAL}weights = [1, 2, 3]\n"));
        assert_at(
            &d,
            8,
            11,
            "pool[0].weights",
            &["one entry per server (2)", "found 3"],
        );
        let d = invalid(&format!("{MINIMAL}weights = [1, 0]\n"));
        assert_at(
            &d,
            8,
            15,
            "pool[0].weights[1]",
            &["weights[1]", "at least 1"],
        );
        let d = invalid(&format!(
            "{MINIMAL}\n[[pool]]\nrole = \"ivr\"\nservers = 2\ncapacity = 9\n\
             \n[traffic.ivr]\nrate = 1\nhold = 1\nthen_queue = 1.5\n"
        ));
        assert_at(
            &d,
            17,
            14,
            "traffic.ivr.then_queue",
            &["between 0 and 1", "1.5"],
        );
        let d = invalid(&format!("{MINIMAL}policy = \"random\"\n"));
        assert_at(&d, 8, 10, "pool[0].policy", &["least-loaded", "\"random\""]);
        let d = invalid(&format!("{MINIMAL}\n[sizing]\ntarget_cpu = 1.2\n"));
        assert_at(
            &d,
            10,
            14,
            "sizing.target_cpu",
            &["target_cpu", "at most 1"],
        );
    }

    #[test]
    fn a_pool_may_start_empty_for_remote_nodes() {
        let s = parse(
            "name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = 0\ncapacity = 60\n",
        );
        assert!(s.pools[0].servers.is_empty());
        assert_eq!(s.warnings.len(), 1);
        assert_eq!(s.warnings[0].key, "pool[0].servers");
        assert!(s.warnings[0].message.contains("pbxlab node"));
        // A negative count is still an error.
        let d = invalid(
            "name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = -1\ncapacity = 6\n",
        );
        assert_eq!(d.key, "pool[0].servers");
    }

    #[test]
    fn warnings_are_not_errors() {
        let s = parse(
            "name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = 1\ncapacity = 6000\n",
        );
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        let capacity = &s.warnings[0];
        assert_eq!(capacity.severity, Severity::Warning);
        assert_eq!((capacity.line, capacity.column), (6, 12));
        assert_eq!(capacity.key, "pool[0].capacity");
        assert!(capacity.message.contains("5,000 concurrent call sessions"));
        let single = &s.warnings[1];
        assert_eq!((single.line, single.column), (5, 11));
        assert_eq!(single.key, "pool[0].servers");
        assert!(single.message.contains("no N+1: losing media-1"));
        assert!(
            single
                .to_string()
                .starts_with("t.toml:5:11: warning: pool[0].servers: ")
        );
    }

    #[test]
    fn load_reports_missing_file() {
        let path = Path::new("/nonexistent/pbxlab/scenario.toml");
        match Scenario::load(path) {
            Err(ScenarioError::Read { path, .. }) => {
                assert_eq!(path, "/nonexistent/pbxlab/scenario.toml")
            }
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn load_reads_a_file() {
        let path =
            std::env::temp_dir().join(format!("pbxlab-scenario-{}.toml", std::process::id()));
        std::fs::write(&path, MINIMAL).expect("write temp file");
        let loaded = Scenario::load(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(loaded.expect("valid").name, "min");
    }

    #[test]
    fn truncated_input_never_panics() {
        for end in 0..=FULL.len() {
            if FULL.is_char_boundary(end) {
                let _ = Scenario::from_toml("t.toml", &FULL[..end]);
            }
        }
    }

    #[test]
    fn mangled_input_never_panics() {
        let lines: Vec<&str> = FULL.lines().collect();
        for skip in 0..lines.len() {
            let text: Vec<&str> = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, line)| *line)
                .collect();
            let _ = Scenario::from_toml("t.toml", &text.join("\n"));
        }
        let odd_values = [
            "-1",
            "0",
            "1e308",
            "-9223372036854775808",
            "9223372036854775807",
            "\"\"",
            "nan",
            "inf",
            "[]",
            "{}",
            "1979-05-27T07:32:00Z",
            "\"1.5\"",
            "\"99999999999999999999d\"",
            "\"0.000000000000000000001ns\"",
            "\"1e999/s\"",
            "\"é\"",
            "true",
        ];
        for line in &lines {
            let Some((key, _)) = line.split_once(" = ") else {
                continue;
            };
            for value in odd_values {
                let text = FULL.replacen(line, &format!("{key} = {value}"), 1);
                let _ = Scenario::from_toml("t.toml", &text);
            }
        }
    }

    #[test]
    fn durations() {
        let ok = |text: &str| parse_duration(text).expect(text);
        assert_eq!(ok("1.5s"), Duration::from_millis(1_500));
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("10min"), Duration::from_secs(600));
        assert_eq!(ok("2h"), Duration::from_secs(7_200));
        assert_eq!(ok("1d"), Duration::from_secs(86_400));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("30"), Duration::from_secs(30));
        assert_eq!(ok(" 45 s "), Duration::from_secs(45));
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok(".5h"), Duration::from_secs(1_800));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok("1.0000000001s"), Duration::new(1, 0));
        for bad in [
            "",
            "s",
            "10 parsecs",
            "-3s",
            "1.5",
            "1..5s",
            "1e3s",
            "+3s",
            "3 s s",
            ".",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("\"parsecs\"")
        );
        assert!(parse_duration("99999999999999999999999999d").is_err());
        assert!(parse_duration("999999999999999999999999999999999999999999s").is_err());
    }

    #[test]
    fn rates() {
        let ok = |text: &str| parse_rate(text).expect(text);
        assert_eq!(ok("55/s"), 55.0);
        assert_eq!(ok("55/sec"), 55.0);
        assert_eq!(ok("3/min"), 0.05);
        assert_eq!(ok("3/m"), 0.05);
        assert_eq!(ok("7200/h"), 2.0);
        assert_eq!(ok("7200/hour"), 2.0);
        assert_eq!(ok("0.05/s"), 0.05);
        assert_eq!(ok("12"), 12.0);
        assert_eq!(ok("0/s"), 0.0);
        assert_eq!(ok(" 10 / s "), 10.0);
        assert!(ok("-0/s").is_sign_positive());
        for bad in [
            "5/fortnight",
            "-3/s",
            "inf/s",
            "NaN",
            "1e999/s",
            "",
            "/s",
            "five/s",
            "5/",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn positions_count_chars_not_bytes() {
        assert_eq!(line_col("é = 1", 3), (1, 3));
        assert_eq!(line_col("a\nbc", 3), (2, 2));
        assert_eq!(line_col("a", 99), (1, 2));
        let d = invalid("name = \"café\" ; seed = 1\n");
        assert_eq!((d.line, d.column), (1, 15), "{d}");
    }

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
        for action in [
            FaultAction::Fail,
            FaultAction::Recover,
            FaultAction::Disable,
            FaultAction::Enable,
            FaultAction::Drain,
            FaultAction::Partition,
            FaultAction::Heal,
            FaultAction::Upgrade,
        ] {
            assert_eq!(parse_fault_action(fault_action_name(action)), Some(action));
        }
        for codec in [Codec::G711, Codec::G729, Codec::Opus] {
            assert_eq!(parse_codec(codec_name(codec)), Some(codec));
        }
        assert_eq!(Role::from_name("Media"), None);
    }
}
