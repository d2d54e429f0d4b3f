//! pbxlab's scenario files: the TOML format describing one pbxlab run (server pools,
//! health probing, offered traffic, injected faults of servers and of the network, SLO
//! targets, sizing costs and how an explorer varies the run), its parser, and the validation
//! that turns a file into either a [`Scenario`] or a single [`Diagnostic`] pointing at the
//! offending line and column. Every driver reads it: `plan` (pbxlab-sim), `cluster` and
//! `drill` (pbxlab-cluster), `load` (pbxlab-loadgen). It runs nothing and owns no socket.
//!
//! Parsing happens in two steps. Serde reads the document into "raw" structs
//! whose leaves are `Spanned<toml::Value>`, so serde itself only rejects
//! unknown keys and a wrong overall shape; every value is then checked by hand,
//! which keeps the messages and source positions under our control.
//!
//! Where things live: the validated types in `model.rs`, durations and rates in `units.rs`,
//! the raw serde shape in `raw.rs`, positions and messages in `diagnostics.rs`, and the
//! checker in `check/`, one file per section of a scenario file.

mod check;
mod diagnostics;
mod model;
mod raw;
mod units;
mod verb;

pub use pbxlab_balancer::{FailoverMode, Policy, Role};

pub use diagnostics::{Diagnostic, ScenarioError, Severity};
pub use model::{
    Arrivals, CM_ENDPOINT, CallTraffic, ClusterSpec, Codec, DrillLoad, DrillSpec, ExploreSpec,
    FaultSpec, HealthSpec, HoldDist, IvrTraffic, LOAD_ENDPOINT, MeetingTraffic, NetFaultSpec,
    NetKind, PoolSpec, QueueTraffic, RegistrationTraffic, Scenario, ServerSpec, Service,
    SizingCosts, Slo, Traffic, codec_name, parse_codec,
};
pub use units::{parse_duration, parse_rate};
pub use verb::{UPGRADE_RESTART, Verb, verb_names};

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
