//! pbxlab's model of a PBX cluster: scenario files, the virtual-time simulator behind
//! `pbxlab plan`, the sizing search behind `pbxlab plan --size`, and the live emulated cluster
//! behind `pbxlab cluster` ([`live`]).
//!
//! Every placement and failover decision is made by `pbxlab_balancer`; this crate drives it
//! with events, in virtual time or live. The simulator does no network I/O, and its results
//! depend on nothing but the scenario and the seed (wall-clock figures aside); [`live`] is the
//! one part that owns sockets.

pub mod des;
pub mod erlang;
pub mod live;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod simulate;
pub mod size;
pub mod stats;

pub use report::Report;
pub use scenario::{Scenario, ScenarioError, fault_action_name};
pub use simulate::{Options, simulate};

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

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("balancer: {0}")]
    Balancer(#[from] pbxlab_balancer::Error),
    #[error("more than {limit} events pending at once; the scenario generates unbounded work")]
    EventLimit { limit: usize },
    #[error("a fault names server {0:?}, which the cluster does not have")]
    UnknownServer(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("alerts file {path}: {source}")]
    AlertFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("alert webhook: {0}")]
    Webhook(String),
    #[error("refused by the Call Manager at {cm}: {reason}")]
    Refused {
        cm: std::net::SocketAddr,
        reason: String,
    },
    #[error("the Call Manager at {cm} did not answer within {:.1} s", waited.as_secs_f64())]
    NoAnswer {
        cm: std::net::SocketAddr,
        waited: std::time::Duration,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
    #[error("the simulator and the balancer disagree: {0}")]
    SelfCheck(String),
    /// Any failure during a run, with the seed that reproduces it.
    #[error("run with seed {seed} failed (rerun with --seed {seed}): {source}")]
    Run { seed: u64, source: Box<Error> },
}
