//! `[[pool]]` and `[health]`: roles, server names and counts, capacities, policies,
//! failover modes and probing.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use pbxlab_balancer::{FailoverMode, Policy, Role};
use toml::Spanned;

use super::{Checker, Res, Table};
use crate::diagnostics::join;
use crate::model::{HealthSpec, PoolSpec, ServerSpec};
use crate::raw::{RawHealth, RawPool, Tab};
use crate::units::show_duration;

const ROLES: &str = "media, meeting, ivr, queue, im";
const POLICIES: &str = "least-loaded, round-robin, weighted, affinity";
const FAILOVERS: &str = "auto, operator";
/// Upper limit on `servers = N`, so a typo cannot make us allocate millions
/// of names.
const MAX_SERVERS_PER_POOL: i64 = 1_000;
const MEDIA_CAPACITY_GUIDE: u32 = 5_000;

impl Checker<'_> {
    pub(super) fn pools(&mut self, raw: Option<&Spanned<Vec<Tab<RawPool>>>>) -> Res<Vec<PoolSpec>> {
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

    pub(super) fn health(&self, raw: Option<&Tab<RawHealth>>) -> Res<HealthSpec> {
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
}
