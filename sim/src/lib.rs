//! pbxlab's planner: the virtual-time simulator behind `pbxlab plan`, exact Erlang B, C and A,
//! batch-means statistics, and the sizing search behind `pbxlab plan --size`.
//!
//! Every placement and failover decision is made by `pbxlab_balancer`; this crate drives it
//! with events in virtual time. It is not the live cluster (`pbxlab-cluster`) and owns no
//! socket: its results depend on nothing but the scenario (`pbxlab-scenario`) and the seed,
//! wall-clock figures aside.

pub mod des;
pub mod erlang;
pub mod report;
pub mod rng;
pub mod simulate;
pub mod size;
pub mod stats;

pub use pbxlab_scenario::{Scenario, ScenarioError};
pub use report::Report;
pub use simulate::{Options, Progress, ProgressSink, simulate};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // A cause is written into its variant's message and not also given as its `source`:
    // reporters that print the chain (anyhow's `{:#}`) would print it a second time.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("balancer: {0}")]
    Balancer(#[from] pbxlab_balancer::Error),
    #[error("more than {limit} events pending at once; the scenario generates unbounded work")]
    EventLimit { limit: usize },
    #[error("a fault names server {0:?}, which the cluster does not have")]
    UnknownServer(String),
    #[error("the simulator and the balancer disagree: {0}")]
    SelfCheck(String),
    /// Any failure during a run, with the seed that reproduces it.
    #[error("run with seed {seed} failed (rerun with --seed {seed}): {error}")]
    Run { seed: u64, error: Box<Error> },
}
