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
