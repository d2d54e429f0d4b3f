//! The document's shape as serde reads it: "raw" structs whose leaves are
//! `Spanned<toml::Value>`, so serde only rejects unknown keys and a wrong overall shape, and
//! the checker sees every value together with where it sits in the text. Private to the
//! crate: nothing here is part of the API.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use toml::{Spanned, Value};

/// A leaf value together with where it sits in the text.
pub type Leaf = Spanned<Value>;
/// An array whose elements keep their own positions, so a bad element can be
/// pointed at exactly.
pub type LeafList = Spanned<Vec<Spanned<Value>>>;

/// A sub-table with its position.
pub type Tab<T> = Spanned<TableOnly<T>>;

/// Accepts `T` only when written as a TOML table. Serde's derived struct
/// visitors also take arrays as positional fields, which would quietly let
/// e.g. `slo = [0.01, 0.8]` through.
pub struct TableOnly<T>(T);

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
pub struct RawScenario {
    pub name: Option<Leaf>,
    pub seed: Option<Leaf>,
    pub duration: Option<Leaf>,
    pub warmup: Option<Leaf>,
    pub batches: Option<Leaf>,
    pub pool: Option<Spanned<Vec<Tab<RawPool>>>>,
    pub health: Option<Tab<RawHealth>>,
    pub traffic: Option<Tab<RawTraffic>>,
    pub fault: Option<Spanned<Vec<Tab<RawFault>>>>,
    pub slo: Option<Tab<RawSlo>>,
    pub sizing: Option<Tab<RawSizing>>,
    pub drill: Option<Tab<RawDrill>>,
    pub cluster: Option<Tab<RawCluster>>,
    pub callmanager: Option<Tab<RawCallManager>>,
    pub explore: Option<Tab<RawExplore>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCallManager {
    pub nodes: Option<Leaf>,
    pub heartbeat: Option<Leaf>,
    pub misses: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub public: Option<LeafList>,
    pub trusted: Option<LeafList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    pub load: Option<Tab<RawDrillLoad>>,
    pub steady: Option<Leaf>,
    pub settle: Option<Leaf>,
    pub media_gap_p99: Option<Leaf>,
    pub setup_p99: Option<Leaf>,
    pub dropped: Option<Leaf>,
    pub failed: Option<Leaf>,
    pub takeover: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrillLoad {
    pub service: Option<Leaf>,
    pub users: Option<Leaf>,
    pub register_rate: Option<Leaf>,
    pub calls: Option<Leaf>,
    pub call_rate: Option<Leaf>,
    pub hold: Option<Leaf>,
    pub hold_dist: Option<Leaf>,
    pub rtp: Option<Leaf>,
    pub max_concurrent: Option<Leaf>,
    pub arrivals: Option<Leaf>,
    pub dtmf: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub role: Option<Leaf>,
    pub servers: Option<Leaf>,
    pub names: Option<LeafList>,
    pub capacity: Option<Leaf>,
    pub policy: Option<Leaf>,
    pub weights: Option<LeafList>,
    pub failover: Option<Leaf>,
    pub first_port: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub probe_interval: Option<Leaf>,
    pub probe_timeout: Option<Leaf>,
    pub down_after: Option<Leaf>,
    pub up_after: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraffic {
    pub calls: Option<Tab<RawCalls>>,
    pub ivr: Option<Tab<RawIvr>>,
    pub queue: Option<Tab<RawQueue>>,
    pub meetings: Option<Tab<RawMeetings>>,
    pub registrations: Option<Tab<RawRegistrations>>,
    pub im: Option<Tab<RawIm>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCalls {
    pub rate: Option<Leaf>,
    pub hold: Option<Leaf>,
    pub hold_dist: Option<Leaf>,
    pub hold_sigma: Option<Leaf>,
    pub profile: Option<LeafList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIvr {
    pub rate: Option<Leaf>,
    pub hold: Option<Leaf>,
    pub hold_dist: Option<Leaf>,
    pub hold_sigma: Option<Leaf>,
    pub then_queue: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub rate: Option<Leaf>,
    pub queues: Option<Leaf>,
    pub agents: Option<Leaf>,
    pub handle: Option<Leaf>,
    pub handle_dist: Option<Leaf>,
    pub handle_sigma: Option<Leaf>,
    pub patience: Option<Leaf>,
    pub service_level: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeetings {
    pub rate: Option<Leaf>,
    pub participants: Option<Leaf>,
    pub duration: Option<Leaf>,
    pub duration_dist: Option<Leaf>,
    pub duration_sigma: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistrations {
    pub users: Option<Leaf>,
    pub expires: Option<Leaf>,
    pub first_user: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIm {
    pub messages_per_user_hour: Option<Leaf>,
    pub message_bytes: Option<Leaf>,
    pub buddies: Option<Leaf>,
    pub presence_per_user_hour: Option<Leaf>,
    pub attachments_per_user_hour: Option<Leaf>,
    pub attachment_bytes: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    pub at: Option<Leaf>,
    pub action: Option<Leaf>,
    pub server: Option<Leaf>,
    pub endpoints: Option<LeafList>,
    pub fraction: Option<Leaf>,
    pub delay: Option<Leaf>,
    pub jitter: Option<Leaf>,
    pub by: Option<Leaf>,
    #[serde(rename = "for")]
    pub lasts: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExplore {
    pub shift: Option<Leaf>,
    pub network: Option<Leaf>,
    pub window: Option<LeafList>,
    pub loss: Option<LeafList>,
    pub delay: Option<LeafList>,
    pub jitter: Option<LeafList>,
    pub duplicate: Option<LeafList>,
    pub reorder: Option<LeafList>,
    pub lasts: Option<LeafList>,
    pub partitions: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    pub blocking: Option<Leaf>,
    pub queue_service_level: Option<Leaf>,
    pub queue_abandoned: Option<Leaf>,
    pub queue_asa: Option<Leaf>,
    pub mos_p5: Option<Leaf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSizing {
    pub core_ghz: Option<Leaf>,
    pub target_cpu: Option<Leaf>,
    pub codec: Option<Leaf>,
    pub media_calls_per_ghz: Option<Leaf>,
    pub meeting_cores_per_participant: Option<Leaf>,
    pub ivr_sessions_per_ghz: Option<Leaf>,
    pub queue_sessions_per_ghz: Option<Leaf>,
    pub im_users_per_core: Option<Leaf>,
    pub im_ram_mb_per_user: Option<Leaf>,
    pub im_kbps_per_user: Option<Leaf>,
    pub ram_gb_base: Option<Leaf>,
    pub ram_mb_per_session: Option<Leaf>,
    pub disk_gb_base: Option<Leaf>,
}
