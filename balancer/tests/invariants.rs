//! Property tests: random operation sequences against a reference model of where every session
//! is. After every step the balancer's audit must pass and its view must match the model: no
//! server above capacity, nothing left on a down (auto) or disabled server, every session either
//! placed where the balancer says or reported dropped, and releases never underflow.

use std::collections::BTreeMap;
use std::time::Duration;

use pbxlab_balancer::{
    AffinityKey, Balancer, FailoverMode, HealthConfig, Outcome, Policy, Probe, Request, Role,
    ServerId, ServerSpec, ServerState, SessionId,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Assign {
        role: usize,
        key: Option<u64>,
        weight: u32,
    },
    Release(usize),
    Probe {
        server: usize,
        ok: bool,
    },
    Fail(usize),
    Recover(usize),
    Disable(usize),
    Enable(usize),
    Drain(usize),
    Add {
        role: usize,
        capacity: u32,
    },
    Remove(usize),
}

const ROLES: [Role; 3] = [Role::Media, Role::Meeting, Role::Queue];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..3usize, proptest::option::of(0..6u64), 1..4u32)
            .prop_map(|(role, key, weight)| Op::Assign { role, key, weight }),
        6 => any::<usize>().prop_map(Op::Release),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(server, ok)| Op::Probe { server, ok }),
        1 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::Recover),
        1 => any::<usize>().prop_map(Op::Disable),
        1 => any::<usize>().prop_map(Op::Enable),
        1 => any::<usize>().prop_map(Op::Drain),
        1 => (0..3usize, 1..12u32).prop_map(|(role, capacity)| Op::Add { role, capacity }),
        1 => any::<usize>().prop_map(Op::Remove),
    ]
}

fn policies() -> impl Strategy<Value = [(Policy, FailoverMode); 3]> {
    let p = prop_oneof![
        Just(Policy::LeastLoaded),
        Just(Policy::RoundRobin),
        Just(Policy::Weighted),
        Just(Policy::Affinity)
    ];
    let m = prop_oneof![Just(FailoverMode::Auto), Just(FailoverMode::Operator)];
    [(p.clone(), m.clone()), (p.clone(), m.clone()), (p, m)]
}

/// Where the model believes each session is, and its weight.
struct Model {
    sessions: BTreeMap<SessionId, (ServerId, u32, Role)>,
    servers: Vec<ServerId>,
    names: usize,
}

impl Model {
    fn apply(&mut self, b: &Balancer, out: &Outcome) -> Result<(), TestCaseError> {
        for m in &out.plan.moves {
            let entry = self.sessions.get_mut(&m.session);
            prop_assert!(entry.is_some(), "plan moved unknown session {}", m.session);
            if let Some(e) = entry {
                prop_assert_eq!(e.0, m.from);
                e.0 = m.to;
            }
            let to = b.server(m.to);
            prop_assert!(
                to.as_ref().is_some_and(|s| s.state == ServerState::Online),
                "moved to {:?}",
                to
            );
        }
        for d in &out.plan.dropped {
            let gone = self.sessions.remove(&d.session);
            prop_assert!(
                gone.is_some_and(|g| g.0 == d.from),
                "dropped unknown session"
            );
        }
        Ok(())
    }

    fn check(&self, b: &Balancer) -> Result<(), TestCaseError> {
        if let Err(e) = b.audit() {
            return Err(TestCaseError::fail(e.to_string()));
        }
        prop_assert_eq!(b.placed(), self.sessions.len());
        let mut load: BTreeMap<ServerId, u32> = BTreeMap::new();
        for (id, (server, weight, _)) in &self.sessions {
            let view = b.session(*id);
            prop_assert_eq!(view.map(|v| v.server), Some(*server));
            *load.entry(*server).or_default() += weight;
        }
        for s in b.servers() {
            let l = load.get(&s.id).copied().unwrap_or(0);
            prop_assert_eq!(s.load, l, "server {} load", s.name);
            prop_assert!(s.load <= s.capacity);
            if s.state == ServerState::Disabled {
                prop_assert_eq!(s.load, 0);
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_every_invariant(
        modes in policies(),
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let mut b = Balancer::new(HealthConfig::new(Duration::from_secs(1), Duration::from_millis(200), 2, 2).expect("valid"));
        let mut model = Model { sessions: BTreeMap::new(), servers: Vec::new(), names: 0 };
        for (i, role) in ROLES.iter().enumerate() {
            b.set_pool(*role, modes[i].0, modes[i].1);
            for _ in 0..3 {
                model.names += 1;
                let id = b.add_server(ServerSpec { name: format!("s{}", model.names), role: *role, capacity: 6, weight: 1 + (model.names % 3) as u32 }).expect("add");
                model.servers.push(id);
            }
        }
        for (step, op) in ops.into_iter().enumerate() {
            let now = Duration::from_millis(step as u64 * 100);
            let pick = |i: usize| model.servers[i % model.servers.len()];
            let out = match op {
                Op::Assign { role, key, weight } => {
                    let role = ROLES[role];
                    let req = Request { role, key: key.map(AffinityKey), weight };
                    if let Ok(a) = b.assign(req) {
                        let s = b.server(a.server).expect("assigned to a live server");
                        // Only a group already on a draining server may grow there.
                        let joins_group = s.state == ServerState::Draining
                            && key.is_some()
                            && model.sessions.iter().any(|(id, (srv, _, _))| {
                                *srv == a.server && b.session(*id).and_then(|v| v.key) == key.map(AffinityKey)
                            });
                        prop_assert!(s.state == ServerState::Online || joins_group, "placed on a {:?} server", s.state);
                        prop_assert_eq!(s.role, role);
                        model.sessions.insert(a.session, (a.server, weight, role));
                    }
                    Outcome::default()
                }
                Op::Release(i) => {
                    if model.sessions.is_empty() {
                        Outcome::default()
                    } else {
                        let id = *model.sessions.keys().nth(i % model.sessions.len()).expect("non-empty");
                        let r = b.release(id).expect("model says placed");
                        prop_assert_eq!(Some(r.server), model.sessions.remove(&id).map(|e| e.0));
                        prop_assert!(b.release(id).is_err());
                        Outcome::default()
                    }
                }
                Op::Probe { server, ok } => b.probe(now, pick(server), if ok { Probe::Ok } else { Probe::Timeout }).unwrap_or_default(),
                Op::Fail(s) => b.fail(now, pick(s)).unwrap_or_default(),
                Op::Recover(s) => b.recover(now, pick(s)).unwrap_or_default(),
                Op::Disable(s) => b.disable(now, pick(s)).unwrap_or_default(),
                Op::Enable(s) => b.enable(now, pick(s)).unwrap_or_default(),
                Op::Drain(s) => b.drain(now, pick(s)).unwrap_or_default(),
                Op::Add { role, capacity } => {
                    model.names += 1;
                    let id = b.add_server(ServerSpec { name: format!("s{}", model.names), role: ROLES[role], capacity, weight: 1 }).expect("unique");
                    model.servers.push(id);
                    Outcome::default()
                }
                Op::Remove(s) => {
                    let id = pick(s);
                    let out = b.remove_server(now, id).unwrap_or_default();
                    prop_assert!(b.server(id).is_none());
                    out
                }
            };
            // A plan accounts for every session that was on the server it empties.
            model.apply(&b, &out)?;
            model.check(&b)?;
        }
    }
}
