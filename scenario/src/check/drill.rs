//! `[drill]`: the live load `pbxlab drill` runs, its phases and the SLOs it checks.

use std::time::Duration;

use super::{Checker, Res};
use crate::model::DrillSpec;
use crate::raw::{Leaf, RawDrill, Tab};

impl Checker<'_> {
    pub(super) fn drill(&self, raw: Option<&Tab<RawDrill>>) -> Res<Option<DrillSpec>> {
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
}
