//! `[[fault]]`: when each fault happens, what it does and to what. A server fault names one
//! server and a [`Verb`]; a network fault (loss, delay, duplicate, reorder, or a partition or
//! heal of a set of `endpoints`) acts on the datagrams between endpoints and goes to
//! [`NetFaultSpec`].

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::{Bound, Checker, Res, Table};
use crate::diagnostics::join;
use crate::model::{CM_ENDPOINT, FaultSpec, LOAD_ENDPOINT, NetFaultSpec, NetKind, PoolSpec};
use crate::raw::{Leaf, LeafList, RawFault, Tab};
use crate::units::show_duration;
use crate::verb::{Verb, verb_names};

/// What can happen to a Call Manager: its process crashes, is cut off, comes back, or is
/// upgraded (stopped, restarted, caught up). The other verbs are the balancer's, on a pool's
/// servers.
const CM_VERBS: [Verb; 5] = [
    Verb::Fail,
    Verb::Partition,
    Verb::Heal,
    Verb::Recover,
    Verb::Upgrade,
];

/// How many server names an "unknown server" message lists.
const NAMES_SHOWN: usize = 10;

/// The extra delay of a reordered datagram when `by` is not given: longer than the gap between
/// two RTP packets (20 ms at the usual packet time), so the next one overtakes it.
const DEFAULT_REORDER_BY: Duration = Duration::from_millis(20);

/// The actions that only exist as network faults.
const NET_ONLY: &str = "loss, delay, duplicate, reorder";

/// What `action` names, before `endpoints` decides whether a partition or heal is one of a
/// server or one of the network.
#[derive(Clone, Copy)]
enum Action {
    Verb(Verb),
    Net(NetAction),
}

/// A network fault's action, before its values are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NetAction {
    Loss,
    Delay,
    Duplicate,
    Reorder,
    Partition,
    Heal,
}

impl NetAction {
    fn name(self) -> &'static str {
        match self {
            NetAction::Loss => "loss",
            NetAction::Delay => "delay",
            NetAction::Duplicate => "duplicate",
            NetAction::Reorder => "reorder",
            NetAction::Partition => "partition",
            NetAction::Heal => "heal",
        }
    }

    /// The keys it takes beyond `at`, `action` and `endpoints`.
    fn keys(self) -> &'static [&'static str] {
        match self {
            NetAction::Loss | NetAction::Duplicate => &["fraction", "for"],
            NetAction::Delay => &["delay", "jitter", "for"],
            NetAction::Reorder => &["fraction", "by", "for"],
            NetAction::Partition => &["for"],
            NetAction::Heal => &[],
        }
    }

    /// Cut off from the rest (partition) or reconnected (heal): the endpoints are a set, not
    /// a filter.
    fn is_partition(self) -> bool {
        matches!(self, NetAction::Partition | NetAction::Heal)
    }
}

fn parse_action(text: &str) -> Option<Action> {
    match text {
        "loss" => Some(Action::Net(NetAction::Loss)),
        "delay" => Some(Action::Net(NetAction::Delay)),
        "duplicate" => Some(Action::Net(NetAction::Duplicate)),
        "reorder" => Some(Action::Net(NetAction::Reorder)),
        _ => Verb::from_name(text).map(Action::Verb),
    }
}

/// The keys only network faults have, with their values.
fn net_keys(fault: &RawFault) -> [(&'static str, &Option<Leaf>); 5] {
    [
        ("fraction", &fault.fraction),
        ("delay", &fault.delay),
        ("jitter", &fault.jitter),
        ("by", &fault.by),
        ("for", &fault.lasts),
    ]
}

/// "a, b and c", or "none" for no keys at all.
fn listed(names: &[&str]) -> String {
    match names {
        [] => "none".to_owned(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// A set of endpoints as messages show it, in the order the file gives them.
fn show_set(endpoints: &[String]) -> String {
    format!("[{}]", endpoints.join(", "))
}

/// The same endpoints, whatever order they are listed in.
fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|name| b.contains(name))
}

/// Where a network fault sits in the file, for the checks of the timeline as a whole.
struct NetPlace {
    key: String,
    endpoints: Range<usize>,
}

impl Checker<'_> {
    pub(super) fn faults(
        &self,
        raw: Option<&Spanned<Vec<Tab<RawFault>>>>,
        pools: &[PoolSpec],
        callmanager: &crate::model::CallManagerSpec,
        duration: Duration,
    ) -> Res<(Vec<FaultSpec>, Vec<NetFaultSpec>)> {
        let Some(raw) = raw else {
            return Ok((Vec::new(), Vec::new()));
        };
        let known: Vec<&str> = pools
            .iter()
            .flat_map(|pool| pool.servers.iter().map(|server| server.name.as_str()))
            .collect();
        let mut faults = Vec::with_capacity(raw.get_ref().len());
        let mut net_faults = Vec::new();
        let mut places = Vec::new();
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
            let actions = format!("{}, {NET_ONLY}", verb_names());
            let action_value = self.required(&fault.action, &table, "action", &actions)?;
            let action = self.choice(action_value, &key, "action", parse_action, &actions)?;
            // `partition` and `heal` are server faults with `server`, network faults with
            // `endpoints`: the verbs mean the same, the endpoints say what is cut off.
            let action = match (action, &fault.endpoints) {
                (Action::Verb(Verb::Partition), Some(_)) => Action::Net(NetAction::Partition),
                (Action::Verb(Verb::Heal), Some(_)) => Action::Net(NetAction::Heal),
                (action, _) => action,
            };
            match action {
                Action::Verb(verb) => {
                    let cms = callmanager.names();
                    faults.push(self.server_fault(fault, &table, at, verb, &known, &cms)?)
                }
                Action::Net(action) => {
                    let (spec, endpoints) = self.net_fault(fault, &table, at, action, &known)?;
                    net_faults.push(spec);
                    places.push(NetPlace { key, endpoints });
                }
            }
        }
        self.partitions_pair_up(&net_faults, &places)?;
        Ok((faults, net_faults))
    }

    fn server_fault(
        &self,
        fault: &RawFault,
        table: &Table<'_>,
        at: Duration,
        verb: Verb,
        known: &[&str],
        cms: &[String],
    ) -> Res<FaultSpec> {
        let key = table.key;
        if let Some(list) = &fault.endpoints {
            return Err(self.error(
                list.span(),
                &join(key, "endpoints"),
                format!(
                    "endpoints are for network faults ({NET_ONLY}, and partition or heal of a \
                     set of endpoints); {verb} acts on one server, named by server"
                ),
            ));
        }
        for (name, value) in net_keys(fault) {
            if let Some(value) = value {
                return Err(self.error(
                    value.span(),
                    &join(key, name),
                    format!(
                        "{name} is a key of network faults, not of {verb}, which takes at, \
                         action and server"
                    ),
                ));
            }
        }
        let what = if matches!(verb, Verb::Partition | Verb::Heal) {
            "the name of a server, or endpoints for a partition of the network"
        } else {
            "the name of a server"
        };
        let server_value = self.required(&fault.server, table, "server", what)?;
        let server = self.string(server_value, key, "server")?;
        if cms.iter().any(|c| c == server) {
            if !CM_VERBS.contains(&verb) {
                return Err(self.error(
                    fault.action.as_ref().map_or(server_value.span(), |a| a.span()),
                    &join(key, "action"),
                    format!(
                        "{server} is a Call Manager, which can fail, partition, heal, recover or                          upgrade; {verb} is an operator's action on a server of a pool"
                    ),
                ));
            }
            return Ok(FaultSpec {
                at,
                action: verb,
                server: server.to_owned(),
            });
        }
        if server.starts_with("cm-") && cms.is_empty() && !known.contains(&server) {
            return Err(self.error(
                server_value.span(),
                &join(key, "server"),
                format!(
                    "no server named {server:?}: the cluster has one Call Manager, which no                      other would take over from; [callmanager] nodes = 3 makes cm-1 .. cm-3"
                ),
            ));
        }
        if !known.contains(&server) {
            return Err(self.error(
                server_value.span(),
                &join(key, "server"),
                format!(
                    "no server named {server:?}; servers are {}",
                    some_names(known)
                ),
            ));
        }
        Ok(FaultSpec {
            at,
            action: verb,
            server: server.to_owned(),
        })
    }

    /// A network fault and where its endpoints are written (the whole table where it has none).
    fn net_fault(
        &self,
        fault: &RawFault,
        table: &Table<'_>,
        at: Duration,
        action: NetAction,
        known: &[&str],
    ) -> Res<(NetFaultSpec, Range<usize>)> {
        let key = table.key;
        let name = action.name();
        if let Some(server) = &fault.server {
            let message = if action.is_partition() {
                "server and endpoints do not go together: server partitions one server (a \
                 server fault), endpoints a set of endpoints of the network; give one of them"
                    .to_owned()
            } else {
                format!(
                    "a {name} fault acts on the network, not on a server: list the endpoints \
                     whose datagrams it touches (endpoints = [...]) instead of server"
                )
            };
            return Err(self.error(server.span(), &join(key, "server"), message));
        }
        for (other, value) in net_keys(fault) {
            if let Some(value) = value
                && !action.keys().contains(&other)
            {
                let mut takes = action.keys().to_vec();
                takes.insert(0, "endpoints");
                return Err(self.error(
                    value.span(),
                    &join(key, other),
                    format!(
                        "{other} is not a key of a {name} fault, which takes {} beside at and \
                         action",
                        listed(&takes)
                    ),
                ));
            }
        }
        let fraction = |table: &Table<'_>| -> Res<f64> {
            let what = "the fraction of datagrams affected, 0 to 1";
            let value = self.required(&fault.fraction, table, "fraction", what)?;
            self.number(value, key, "fraction", Bound::Fraction)
        };
        let kind = match action {
            NetAction::Loss => NetKind::Loss {
                fraction: fraction(table)?,
            },
            NetAction::Duplicate => NetKind::Duplicate {
                fraction: fraction(table)?,
            },
            NetAction::Reorder => NetKind::Reorder {
                fraction: fraction(table)?,
                by: self
                    .opt_duration(&fault.by, key, "by", true)?
                    .unwrap_or(DEFAULT_REORDER_BY),
            },
            NetAction::Delay => {
                let what = "how long each datagram is held back, e.g. \"30ms\"";
                let value = self.required(&fault.delay, table, "delay", what)?;
                NetKind::Delay {
                    delay: self.duration(value, key, "delay", true)?,
                    jitter: self
                        .opt_duration(&fault.jitter, key, "jitter", false)?
                        .unwrap_or(Duration::ZERO),
                }
            }
            NetAction::Partition => NetKind::Partition,
            NetAction::Heal => NetKind::Heal,
        };
        let lasts = self.opt_duration(&fault.lasts, key, "for", true)?;
        let (endpoints, span) = match &fault.endpoints {
            Some(list) => (self.endpoints(list, key, action, known)?, list.span()),
            // Only a filter can be left out: a partition or heal has its endpoints, or it is
            // a server fault.
            None => (Vec::new(), table.span.clone()),
        };
        if action == NetAction::Partition && endpoints.len() == known.len() + 2 {
            return Err(self.error(
                span,
                &join(key, "endpoints"),
                "a partition of every endpoint cuts nothing off: list the endpoints to cut off \
                 from the rest"
                    .to_owned(),
            ));
        }
        let spec = NetFaultSpec {
            at,
            kind,
            lasts,
            endpoints,
        };
        Ok((spec, span))
    }

    /// The endpoints a network fault names: servers of the pools, the Call Manager, the load
    /// generator; each once, and at least one.
    fn endpoints(
        &self,
        list: &LeafList,
        prefix: &str,
        action: NetAction,
        known: &[&str],
    ) -> Res<Vec<String>> {
        let key = join(prefix, "endpoints");
        if list.get_ref().is_empty() {
            let message = if action.is_partition() {
                format!("endpoints = [] names nothing to {}", action.name())
            } else {
                format!(
                    "endpoints = [] names no endpoint, so the {} would touch no datagram; \
                     leave endpoints out for every datagram",
                    action.name()
                )
            };
            return Err(self.error(list.span(), &key, message));
        }
        let mut out: Vec<String> = Vec::with_capacity(list.get_ref().len());
        for (i, value) in list.get_ref().iter().enumerate() {
            let element = format!("endpoints[{i}]");
            let name = self.string(value, prefix, &element)?;
            let fail =
                |message: String| Err(self.error(value.span(), &join(prefix, &element), message));
            let special = name == CM_ENDPOINT || name == LOAD_ENDPOINT;
            if special && known.contains(&name) {
                return fail(format!(
                    "{name:?} is both a server's name and the {}'s: rename the server",
                    if name == CM_ENDPOINT {
                        "Call Manager"
                    } else {
                        "load generator"
                    }
                ));
            }
            if !special && !known.contains(&name) {
                return fail(format!(
                    "no endpoint named {name:?}; endpoints are {CM_ENDPOINT} (the Call \
                     Manager), {LOAD_ENDPOINT} (the load generator) and the servers {}",
                    some_names(known)
                ));
            }
            if out.iter().any(|seen| seen == name) {
                return fail(format!("{name:?} is listed twice"));
            }
            out.push(name.to_owned());
        }
        Ok(out)
    }

    /// Walks the network partitions and heals in time order: a heal ends a partition of the
    /// same set of endpoints that started before it and is still in effect, and a set is not
    /// partitioned twice at once (which heal would end which?).
    fn partitions_pair_up(&self, net: &[NetFaultSpec], places: &[NetPlace]) -> Res<()> {
        let mut order: Vec<usize> = (0..net.len()).collect();
        // Stable: faults at the same time keep their file order.
        order.sort_by_key(|&i| net[i].at);
        // Indices of the partitions started and not yet healed.
        let mut open: Vec<usize> = Vec::new();
        let in_effect = |p: &NetFaultSpec, t: Duration| p.lasts.is_none_or(|d| p.at + d > t);
        for i in order {
            let fault = &net[i];
            let place = &places[i];
            match fault.kind {
                NetKind::Partition => {
                    if let Some(&j) = open.iter().find(|&&j| {
                        same_set(&net[j].endpoints, &fault.endpoints)
                            && in_effect(&net[j], fault.at)
                    }) {
                        return Err(self.error(
                            place.endpoints.clone(),
                            &join(&place.key, "endpoints"),
                            format!(
                                "{} are already cut off at {} by {} (partition at {}); heal \
                                 them first",
                                show_set(&fault.endpoints),
                                show_duration(fault.at),
                                places[j].key,
                                show_duration(net[j].at)
                            ),
                        ));
                    }
                    open.push(i);
                }
                NetKind::Heal => {
                    let matching = open.iter().position(|&j| {
                        same_set(&net[j].endpoints, &fault.endpoints)
                            && net[j].at < fault.at
                            && in_effect(&net[j], fault.at)
                    });
                    match matching {
                        Some(k) => {
                            open.remove(k);
                        }
                        None => {
                            return Err(self.error(
                                place.endpoints.clone(),
                                &join(&place.key, "endpoints"),
                                format!(
                                    "no partition of {} is in effect at {} for this heal to \
                                     end: a heal ends the partition of the same endpoints (in \
                                     any order) that started before it and has not ended by \
                                     itself (for) or by another heal",
                                    show_set(&fault.endpoints),
                                    show_duration(fault.at)
                                ),
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The first few server names, as an "unknown server" message lists them.
fn some_names(known: &[&str]) -> String {
    let mut listed = known[..known.len().min(NAMES_SHOWN)].join(", ");
    if known.len() > NAMES_SHOWN {
        listed.push_str(&format!(", ... ({} in all)", known.len()));
    }
    listed
}
