//! The explorer's two halves: [`vary`], which turns a seed into a variant of the drill (its
//! faults' times moved, random network faults added, as the scenario's `[explore]` table
//! allows), and [`Invariants`], the checks run after every step of its virtual run that say a
//! session was lost. A failing seed is a failing run: the variant and the run both come from
//! it alone, so `pbxlab drill --virtual --explore 1 --seed S` replays it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use pbxlab_balancer::{Role, ServerId, ServerState};
use pbxlab_loadgen::Stepped;
use pbxlab_scenario::{CM_ENDPOINT, FaultSpec, NetFaultSpec, NetKind, Scenario};
use pbxlab_sim::rng::Rng;

use super::{World, ns};
use crate::Nanos;

/// Past the Call Manager's transaction timeout ([`crate::cm::CallManager::transaction_timeout`]),
/// how long the last retransmission may still be in flight: a dialog one side still holds
/// this long after the other forgot it will not be ended by a retransmission, and a BYE that
/// has not arrived by then never will.
const LAST_FLIGHT: Nanos = 1_000_000_000;

/// One seed's drill.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub seed: u64,
    /// The node faults, in the order and at the times they are carried out.
    pub faults: Vec<FaultSpec>,
    /// The scenario's network faults and the random ones, by time.
    pub net_faults: Vec<NetFaultSpec>,
    /// How many of `net_faults` were drawn here.
    pub drawn: usize,
}

fn between(rng: &mut Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * rng.uniform()
}

fn between_d(rng: &mut Rng, (lo, hi): (Duration, Duration)) -> Duration {
    let span = ns(hi.saturating_sub(lo));
    lo + Duration::from_nanos(if span == 0 {
        0
    } else {
        rng.below(span.saturating_add(1))
    })
}

/// The drill of `seed`: `timeline`'s faults each moved by up to `[explore] shift` either way
/// (kept in their order, none before the steady-state window, none closer to the one before
/// than half their planned spacing), and up to `[explore] network` random network faults in
/// the explore window, on everything, the Call Manager or one server.
pub fn vary(scenario: &Scenario, timeline: &[FaultSpec], seed: u64) -> Variant {
    let ex = &scenario.explore;
    let mut rng = Rng::stream(seed, "explore");
    let steady = scenario.drill.clone().unwrap_or_default().steady;
    let shift = ns(ex.shift);
    let mut faults: Vec<FaultSpec> = Vec::with_capacity(timeline.len());
    for (i, f) in timeline.iter().enumerate() {
        let delta = if shift == 0 {
            0
        } else {
            rng.below(shift.saturating_mul(2).saturating_add(1))
        };
        let at = ns(f.at).saturating_add(delta).saturating_sub(shift);
        let mut at = Duration::from_nanos(at).max(steady);
        if let (Some(prev), Some(planned_prev)) = (faults.last(), i.checked_sub(1)) {
            let spacing = f.at.saturating_sub(timeline[planned_prev].at) / 2;
            at = at.max(prev.at + spacing);
        }
        // Never moved past the planned time and the run's end both: a fault after the load
        // would not be carried out at all.
        at = at.min(f.at.max(scenario.duration.saturating_sub(Duration::from_secs(1))));
        faults.push(FaultSpec { at, ..f.clone() });
    }
    let servers: Vec<&str> = scenario
        .pools
        .iter()
        .flat_map(|p| p.servers.iter().map(|s| s.name.as_str()))
        .collect();
    // A server the scenario itself partitions alone is not partitioned again at random: the
    // scenario's heal would end both (a set is partitioned once at a time).
    let partitionable: Vec<&str> = servers
        .iter()
        .copied()
        .filter(|s| {
            !scenario.net_faults.iter().any(|f| {
                matches!(f.kind, NetKind::Partition | NetKind::Heal) && f.endpoints == [*s]
            })
        })
        .collect();
    let (start, end) = scenario.explore_window();
    let mut net_faults = scenario.net_faults.clone();
    let count = rng.below(u64::from(ex.network) + 1) as usize;
    for _ in 0..count {
        let kinds = if ex.partitions && !partitionable.is_empty() {
            5
        } else {
            4
        };
        let kind = match rng.below(kinds) {
            0 => NetKind::Loss {
                fraction: between(&mut rng, ex.loss),
            },
            1 => NetKind::Delay {
                delay: between_d(&mut rng, ex.delay),
                jitter: between_d(&mut rng, ex.jitter),
            },
            2 => NetKind::Duplicate {
                fraction: between(&mut rng, ex.duplicate),
            },
            3 => NetKind::Reorder {
                fraction: between(&mut rng, ex.reorder),
                by: between_d(&mut rng, ex.delay).max(Duration::from_millis(1)),
            },
            _ => NetKind::Partition,
        };
        let pick =
            |rng: &mut Rng, from: &[&str]| from[rng.below(from.len() as u64) as usize].to_owned();
        let endpoints = match kind {
            NetKind::Partition => vec![pick(&mut rng, &partitionable)],
            _ => match rng.below(3) {
                0 => Vec::new(),
                1 => vec![CM_ENDPOINT.to_owned()],
                _ if servers.is_empty() => Vec::new(),
                _ => vec![pick(&mut rng, &servers)],
            },
        };
        // The window is [start, end).
        let last = end.saturating_sub(Duration::from_nanos(1)).max(start);
        let at = between_d(&mut rng, (start, last));
        net_faults.push(NetFaultSpec {
            at,
            kind,
            lasts: Some(between_d(&mut rng, ex.lasts)),
            endpoints,
        });
    }
    net_faults.sort_by_key(|f| f.at);
    Variant {
        seed,
        faults,
        net_faults,
        drawn: count,
    }
}

/// The checks that say a session was lost, run after every step of a virtual drill (the
/// scans of every dialog and registration once a second of the cluster's time):
/// - the balancer's own books balance ([`pbxlab_balancer::Balancer::audit`], once a second:
///   it walks every slot);
/// - each node holds exactly the sessions the Call Manager anchored on it;
/// - no session is placed or anchored on a server that is down or disabled;
/// - no caller still sends its media to a server that is down or disabled once the Call
///   Manager has moved the call and has no re-INVITE open for it: that call's audio is gone
///   though the cluster believes it moved;
/// - no media call is dropped for want of capacity while a media server in service had room;
/// - every dialog the load generator holds is known to the Call Manager (or was ended by it,
///   within the time its BYE may take: the transaction timeout and [`LAST_FLIGHT`]);
/// - every registration the load generator holds in force has its binding at the Call
///   Manager.
pub struct Invariants {
    servers: Vec<(ServerId, String, SocketAddr)>,
    /// How long the Call Manager's BYE may take to arrive, at most.
    give_up: Nanos,
    /// Streams or dialogs the Call Manager does not know, since when.
    unknown_streams: BTreeMap<u64, Nanos>,
    unknown_dialogs: BTreeMap<String, Nanos>,
    dropped_seen: usize,
    next_scan: Nanos,
}

impl Invariants {
    pub fn new(world: &World) -> Invariants {
        let servers = world
            .addresses()
            .servers
            .into_iter()
            .filter_map(|(name, addr)| {
                let id = world.cm()?.balancer().server_by_name(&name)?;
                Some((id, name, addr))
            })
            .collect();
        Invariants {
            servers,
            give_up: world
                .cm()
                .map_or(0, |cm| cm.transaction_timeout())
                .saturating_add(LAST_FLIGHT),
            unknown_streams: BTreeMap::new(),
            unknown_dialogs: BTreeMap::new(),
            dropped_seen: 0,
            next_scan: 0,
        }
    }

    /// Checks the world after a step; the first broken invariant, in words.
    pub fn check(&mut self, world: &World, load: &Stepped) -> Result<(), String> {
        let now = world.now();
        if let [a, b, ..] = world.serving_now()[..] {
            return Err(format!(
                "cm-{} and cm-{} both serve the virtual IP (split brain)",
                a + 1,
                b + 1
            ));
        }
        let Some(cm) = world.cm() else {
            return Ok(());
        };
        if !world.cm_settled() {
            // Its state runs ahead of what it let out; the next settled step is checked.
            return Ok(());
        }
        let balancer = cm.balancer();
        if let Some((name, node, ours)) = world.sessions_differ().into_iter().next() {
            return Err(format!(
                "{name} holds {node} sessions, the Call Manager anchored {ours} there"
            ));
        }
        let mut streams = BTreeMap::new();
        for (id, name, addr) in &self.servers {
            // A removed server is out of service for good: nothing may stay on it either.
            let (state, placed) = match balancer.server(*id) {
                Some(v) if matches!(v.state, ServerState::Down | ServerState::Disabled) => {
                    (v.state.name(), v.sessions)
                }
                Some(_) => continue,
                None => ("removed", 0),
            };
            let anchored = cm.media_sessions(*id);
            if placed > 0 || anchored > 0 {
                return Err(format!(
                    "{name} is {state}, yet the balancer places {placed} sessions on it and the \
                     Call Manager anchors {anchored} media sessions there"
                ));
            }
            let engine = load.engine();
            for stream in load.media().streams_to(*addr) {
                let Some(call_id) = engine.call_id_of_stream(stream) else {
                    continue;
                };
                match cm.call_view(&call_id) {
                    None => {
                        let since = self.unknown_streams.get(&stream).copied().unwrap_or(now);
                        if now.saturating_sub(since) > self.give_up {
                            return Err(format!(
                                "call {call_id} still sends its media to {name} ({state}) \
                                 {:.1} s after the Call Manager forgot the call",
                                Duration::from_nanos(now - since).as_secs_f64()
                            ));
                        }
                        streams.insert(stream, since);
                    }
                    Some(v) if v.media != Some(*id) && !v.reinviting => {
                        let to = v
                            .media
                            .and_then(|s| balancer.server(s))
                            .map_or("nowhere", |s| s.name);
                        return Err(format!(
                            "call {call_id}: the caller still sends its media to {name} \
                             ({state}), but the Call Manager moved it to {to} and has no \
                             re-INVITE open to tell the caller"
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        self.unknown_streams = streams;
        let dropped = &world.records().dropped;
        for d in dropped.iter().skip(self.dropped_seen) {
            let Some(role) = balancer.server(d.server).map(|s| s.role) else {
                continue;
            };
            if role != Role::Media || d.reason != "failover: no capacity" {
                continue;
            }
            if let Some(room) = balancer
                .servers()
                .find(|s| s.role == role && s.state == ServerState::Online && s.load < s.capacity)
            {
                return Err(format!(
                    "call {} was dropped for want of capacity while {} had room ({} of {})",
                    d.call_id, room.name, room.load, room.capacity
                ));
            }
        }
        self.dropped_seen = dropped.len();
        if now >= self.next_scan {
            self.next_scan = now.saturating_add(1_000_000_000);
            self.scan(world, load)?;
        }
        Ok(())
    }

    /// The once-a-second scans: the load's dialogs and registrations against the Call
    /// Manager's.
    fn scan(&mut self, world: &World, load: &Stepped) -> Result<(), String> {
        let now = world.now();
        let Some(cm) = world.cm() else {
            return Ok(());
        };
        cm.balancer()
            .audit()
            .map_err(|e| format!("the balancer's books are broken: {e}"))?;
        let engine = load.engine();
        let mut unknown = BTreeMap::new();
        for call_id in engine.dialogs() {
            if cm.call_view(&call_id).is_some() {
                continue;
            }
            let since = self.unknown_dialogs.get(&call_id).copied().unwrap_or(now);
            if now.saturating_sub(since) > self.give_up {
                let reported = world.records().dropped.iter().any(|d| d.call_id == call_id);
                return Err(format!(
                    "the load generator has held dialog {call_id} for {:.1} s that the Call \
                     Manager does not know{}",
                    Duration::from_nanos(now - since).as_secs_f64(),
                    if reported {
                        " (it was reported dropped, and its BYE never arrived)"
                    } else {
                        " (never reported dropped)"
                    }
                ));
            }
            unknown.insert(call_id, since);
        }
        self.unknown_dialogs = unknown;
        if let Some(user) = engine
            .registered_users()
            .find(|u| !cm.is_registered(u, now))
        {
            return Err(format!(
                "user {user} holds a registration the Call Manager has no binding for"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
