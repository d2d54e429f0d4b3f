//! `[cluster]`: which services callers without credentials may reach, and which sources are
//! trusted not to be challenged at all.

use std::net::IpAddr;

use super::{Checker, Res};
use crate::diagnostics::join;
use crate::model::ClusterSpec;
use crate::raw::{RawCluster, Tab};

impl Checker<'_> {
    pub(super) fn cluster(&self, raw: Option<&Tab<RawCluster>>) -> Res<ClusterSpec> {
        let key = "cluster";
        let Some(raw) = raw else {
            return Ok(ClusterSpec::default());
        };
        let raw = raw.get_ref();
        let public = match &raw.public {
            Some(list) => {
                let mut out = Vec::with_capacity(list.get_ref().len());
                for (i, value) in list.get_ref().iter().enumerate() {
                    let element = format!("public[{i}]");
                    let pattern = self.string(value, key, &element)?;
                    let name = pattern.strip_suffix('*').unwrap_or(pattern);
                    let ok = !pattern.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                    if !ok {
                        return Err(self.error(
                            value.span(),
                            &join(key, &element),
                            format!(
                                "{element} must be a service's user part (`echo`) or a prefix \
                                 ending in `*` (`ivr-*`), found {pattern:?}"
                            ),
                        ));
                    }
                    out.push(pattern.to_owned());
                }
                Some(out)
            }
            None => None,
        };
        let mut trusted = Vec::new();
        for (i, value) in raw
            .trusted
            .iter()
            .flat_map(|l| l.get_ref().iter())
            .enumerate()
        {
            let element = format!("trusted[{i}]");
            let text = self.string(value, key, &element)?;
            let ip = text.parse::<IpAddr>().map_err(|_| {
                self.error(
                    value.span(),
                    &join(key, &element),
                    format!("{element} must be an IP address, found {text:?}"),
                )
            })?;
            trusted.push(ip);
        }
        Ok(ClusterSpec { public, trusted })
    }
}

/// Heartbeats faster than this would put a loaded machine's scheduling delays down to a dead
/// Call Manager; slower than this, a takeover would outlast every SIP retransmission.
const HEARTBEAT_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const HEARTBEAT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

impl Checker<'_> {
    /// `[callmanager]`: 1, 3 or 5 Call Managers (an odd number, so that a majority exists on
    /// one side of any partition), the heartbeat interval and the misses that mean silence.
    pub(super) fn callmanager(
        &self,
        raw: Option<&Tab<crate::raw::RawCallManager>>,
    ) -> Res<crate::model::CallManagerSpec> {
        let key = "callmanager";
        let mut spec = crate::model::CallManagerSpec::default();
        let Some(raw) = raw else {
            return Ok(spec);
        };
        let raw = raw.get_ref();
        if let Some(value) = &raw.nodes {
            let n = self.integer(value, key, "nodes", 1, 5)?;
            if n % 2 == 0 {
                return Err(self.error(
                    value.span(),
                    &join(key, "nodes"),
                    format!(
                        "nodes must be 1, 3 or 5, found {n}: with an even number a partition can \
                         leave two halves, neither a majority, and no Call Manager may serve"
                    ),
                ));
            }
            spec.nodes = u32::try_from(n).unwrap_or(1);
        }
        if let Some(value) = &raw.heartbeat {
            let d = self.duration(value, key, "heartbeat", true)?;
            if !(HEARTBEAT_MIN..=HEARTBEAT_MAX).contains(&d) {
                return Err(self.error(
                    value.span(),
                    &join(key, "heartbeat"),
                    format!(
                        "heartbeat must be from 10ms to 10s, found {}",
                        crate::units::show_duration(d)
                    ),
                ));
            }
            spec.heartbeat = d;
        }
        if let Some(value) = &raw.misses {
            spec.misses = u32::try_from(self.integer(value, key, "misses", 2, 20)?).unwrap_or(3);
        }
        Ok(spec)
    }
}
