//! `[[fault]]`: when each fault happens, what it does and to which server.

use std::time::Duration;

use toml::Spanned;

use super::{Checker, Res, Table};
use crate::diagnostics::join;
use crate::model::{FaultSpec, PoolSpec};
use crate::raw::{RawFault, Tab};
use crate::units::show_duration;
use crate::verb::{Verb, verb_names};

/// How many server names an "unknown server" message lists.
const NAMES_SHOWN: usize = 10;

impl Checker<'_> {
    pub(super) fn faults(
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
            let verbs = verb_names();
            let action_value = self.required(&fault.action, &table, "action", &verbs)?;
            let action = self.choice(action_value, &key, "action", Verb::from_name, &verbs)?;
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
}
