//! Placement policies, failover plans and health thresholds, one behaviour per test.

use std::time::Duration;

use pbxlab_balancer::{
    AffinityKey, Balancer, EventKind, FailoverMode, HealthConfig, Policy, Probe, Reject, Request,
    Role, ServerId, ServerSpec, ServerState,
};

fn cluster(role: Role, policy: Policy, capacities: &[u32]) -> (Balancer, Vec<ServerId>) {
    let mut b = Balancer::new(HealthConfig::default());
    b.set_pool(role, policy, FailoverMode::Auto);
    let ids = capacities
        .iter()
        .enumerate()
        .map(|(i, &capacity)| {
            b.add_server(ServerSpec {
                name: format!("{role}-{}", i + 1),
                role,
                capacity,
                weight: 1,
            })
            .expect("unique names")
        })
        .collect();
    (b, ids)
}

const T: Duration = Duration::from_secs(10);

#[test]
fn least_loaded_spreads_by_utilisation_and_never_exceeds_capacity() {
    let (mut b, ids) = cluster(Role::Media, Policy::LeastLoaded, &[2, 4]);
    let mut on = Vec::new();
    for _ in 0..6 {
        on.push(b.assign(Request::new(Role::Media)).expect("room").server);
    }
    // Utilisation order: 0/2 -> s1, 0/4 -> s2, then 1/4 < 1/2 -> s2, then ties go to s1...
    assert_eq!(on.iter().filter(|&&s| s == ids[0]).count(), 2);
    assert_eq!(on.iter().filter(|&&s| s == ids[1]).count(), 4);
    assert_eq!(
        b.assign(Request::new(Role::Media)),
        Err(Reject::NoCapacity {
            role: Role::Media,
            weight: 1
        })
    );
    b.audit().expect("invariants");
}

#[test]
fn round_robin_takes_turns_and_skips_full_servers() {
    let (mut b, ids) = cluster(Role::Ivr, Policy::RoundRobin, &[1, 5, 5]);
    let order: Vec<_> = (0..5)
        .map(|_| b.assign(Request::new(Role::Ivr)).expect("room").server)
        .collect();
    assert_eq!(order, vec![ids[0], ids[1], ids[2], ids[1], ids[2]]);
}

#[test]
fn weighted_follows_weights() {
    let mut b = Balancer::new(HealthConfig::default());
    b.set_pool(Role::Media, Policy::Weighted, FailoverMode::Auto);
    for (name, weight) in [("a", 1), ("b", 3)] {
        b.add_server(ServerSpec {
            name: name.into(),
            role: Role::Media,
            capacity: 1000,
            weight,
        })
        .expect("add");
    }
    let picks: Vec<_> = (0..400)
        .map(|_| b.assign(Request::new(Role::Media)).expect("room").server.0)
        .collect();
    assert_eq!(picks.iter().filter(|&&s| s == 1).count(), 300);
    // Smooth: never more than three b's in a row.
    assert!(picks.windows(4).all(|w| w.contains(&0)));
}

#[test]
fn affinity_keeps_a_group_together_and_is_stable() {
    let (mut b, _) = cluster(Role::Meeting, Policy::Affinity, &[100, 100, 100, 100]);
    let (mut b2, _) = cluster(Role::Meeting, Policy::Affinity, &[100, 100, 100, 100]);
    for room in 0..50u64 {
        let first = b
            .assign(Request::keyed(Role::Meeting, AffinityKey(room), 1))
            .expect("room");
        for _ in 0..3 {
            let next = b
                .assign(Request::keyed(Role::Meeting, AffinityKey(room), 1))
                .expect("room");
            assert_eq!(next.server, first.server);
        }
        // Another balancer with the same server names ranks the same way.
        let other = b2
            .assign(Request::keyed(Role::Meeting, AffinityKey(room), 1))
            .expect("room");
        assert_eq!(other.server, first.server);
    }
    let per_server: Vec<u32> = b.servers().map(|s| s.load).collect();
    assert!(
        per_server.iter().all(|&l| l > 0),
        "rendezvous spreads rooms: {per_server:?}"
    );
}

#[test]
fn affinity_falls_back_when_first_choice_is_full_and_rejects_a_full_group() {
    let (mut b, _) = cluster(Role::Meeting, Policy::Affinity, &[3, 3]);
    let first = b
        .assign(Request::keyed(Role::Meeting, AffinityKey(9), 3))
        .expect("room");
    // The same-sized room 9 again would not fit on its server; a new room falls back.
    let other = (10..100u64)
        .map(|k| {
            (
                k,
                b.assign(Request::keyed(Role::Meeting, AffinityKey(k), 2)),
            )
        })
        .find(|(_, a)| a.is_ok())
        .expect("some room fits on the other server");
    assert_ne!(other.1.expect("ok").server, first.server);
    assert_eq!(
        b.assign(Request::keyed(Role::Meeting, AffinityKey(9), 1)),
        Err(Reject::NoCapacity {
            role: Role::Meeting,
            weight: 1
        })
    );
}

#[test]
fn failover_moves_everything_it_can_and_drops_the_rest_with_reasons() {
    let (mut b, ids) = cluster(Role::Media, Policy::LeastLoaded, &[10, 10, 4]);
    let sessions: Vec<_> = (0..18)
        .map(|_| b.assign(Request::new(Role::Media)).expect("room"))
        .collect();
    let on_first: Vec<_> = sessions
        .iter()
        .filter(|a| a.server == ids[0])
        .map(|a| a.session)
        .collect();
    let out = b.fail(T, ids[0]).expect("known server");
    assert_eq!(out.plan.affected(), on_first.len());
    let spare =
        (10 - b.server(ids[1]).expect("s").load + 4 - b.server(ids[2]).expect("s").load) as usize;
    assert_eq!(spare, 0, "the survivors are now full");
    for m in &out.plan.moves {
        assert_eq!(
            b.session(m.session)
                .expect("moved session is placed")
                .server,
            m.to
        );
    }
    for d in &out.plan.dropped {
        assert_eq!(
            d.reason,
            Reject::NoCapacity {
                role: Role::Media,
                weight: 1
            }
        );
        assert!(b.session(d.session).is_none());
        assert!(
            b.release(d.session).is_err(),
            "a dropped session cannot be released twice"
        );
    }
    // Order of arrival is kept: moves then drops follow placement order.
    let order: Vec<_> = out
        .plan
        .moves
        .iter()
        .map(|m| m.session)
        .chain(out.plan.dropped.iter().map(|d| d.session))
        .collect();
    assert_eq!(order, on_first);
    assert!(
        out.events
            .iter()
            .any(|e| e.kind == EventKind::Down && e.server == ids[0])
    );
    assert_eq!(b.server(ids[0]).expect("s").state, ServerState::Down);
    b.audit().expect("invariants");
}

#[test]
fn a_meeting_moves_whole_and_queue_callers_keep_their_order() {
    let (mut b, ids) = cluster(Role::Meeting, Policy::Affinity, &[50, 50, 50]);
    let mut rooms = Vec::new();
    for room in 0..12u64 {
        for _ in 0..3 {
            rooms.push((
                room,
                b.assign(Request::keyed(Role::Meeting, AffinityKey(room), 1))
                    .expect("room"),
            ));
        }
    }
    let victim = rooms[0].1.server;
    let out = b.fail(T, victim).expect("known");
    assert!(out.plan.dropped.is_empty());
    for room in 0..12u64 {
        let servers: std::collections::BTreeSet<_> = rooms
            .iter()
            .filter(|(r, _)| *r == room)
            .map(|(_, a)| b.session(a.session).expect("placed").server)
            .collect();
        assert_eq!(servers.len(), 1, "room {room} split over {servers:?}");
    }
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Alert(_))),
        "meeting failure raises an alert"
    );
    let _ = ids;

    let (mut q, qs) = cluster(Role::Queue, Policy::LeastLoaded, &[100, 100]);
    let callers: Vec<_> = (0..20)
        .map(|_| q.assign(Request::new(Role::Queue)).expect("room"))
        .collect();
    let out = q.fail(T, qs[0]).expect("known");
    let moved: Vec<_> = out.plan.moves.iter().map(|m| m.session).collect();
    let expected: Vec<_> = callers
        .iter()
        .filter(|a| a.server == qs[0])
        .map(|a| a.session)
        .collect();
    assert_eq!(moved, expected);
}

#[test]
fn operator_mode_alerts_and_waits_for_disable() {
    let mut b = Balancer::new(HealthConfig::default());
    b.set_pool(Role::Ivr, Policy::LeastLoaded, FailoverMode::Operator);
    let a = b
        .add_server(ServerSpec {
            name: "ivr-1".into(),
            role: Role::Ivr,
            capacity: 10,
            weight: 1,
        })
        .expect("add");
    let c = b
        .add_server(ServerSpec {
            name: "ivr-2".into(),
            role: Role::Ivr,
            capacity: 10,
            weight: 1,
        })
        .expect("add");
    for _ in 0..4 {
        let _ = b.assign(Request::new(Role::Ivr)).expect("room");
    }
    let out = b.fail(T, a).expect("known");
    assert!(out.plan.is_empty(), "nothing moves until the operator acts");
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Alert(_)))
    );
    assert_eq!(b.server(a).expect("s").sessions, 2);
    let out = b.disable(T, a).expect("known");
    assert_eq!(out.plan.moves.len(), 2);
    assert!(out.plan.moves.iter().all(|m| m.to == c));
    b.audit().expect("invariants");
}

#[test]
fn health_thresholds_are_separate_for_down_and_up() {
    let health =
        HealthConfig::new(Duration::from_secs(1), Duration::from_millis(300), 3, 2).expect("valid");
    assert_eq!(health.detection_bound(), Duration::from_millis(3300));
    let mut b = Balancer::new(health);
    let s = b
        .add_server(ServerSpec {
            name: "media-1".into(),
            role: Role::Media,
            capacity: 5,
            weight: 1,
        })
        .expect("add");
    let at = |i: u64| Duration::from_secs(i);
    assert!(
        b.probe(at(1), s, Probe::Timeout)
            .expect("k")
            .events
            .is_empty()
    );
    assert!(
        b.probe(at(2), s, Probe::Failed)
            .expect("k")
            .events
            .is_empty()
    );
    assert!(
        b.probe(at(3), s, Probe::Ok).expect("k").events.is_empty(),
        "a good probe resets the count"
    );
    for i in 4..6 {
        assert!(
            b.probe(at(i), s, Probe::Timeout)
                .expect("k")
                .events
                .is_empty()
        );
    }
    let out = b.probe(at(6), s, Probe::Timeout).expect("k");
    assert_eq!(out.events[0].kind, EventKind::Down);
    assert_eq!(out.events[0].at, at(6));
    assert_eq!(
        b.assign(Request::new(Role::Media)),
        Err(Reject::NoServerInService { role: Role::Media })
    );
    assert!(b.probe(at(7), s, Probe::Ok).expect("k").events.is_empty());
    assert_eq!(
        b.probe(at(8), s, Probe::Ok).expect("k").events[0].kind,
        EventKind::Up
    );
    assert!(b.assign(Request::new(Role::Media)).is_ok());
    assert!(HealthConfig::new(Duration::from_secs(1), Duration::from_secs(1), 3, 2).is_err());
}

#[test]
fn drain_lets_sessions_finish_and_reports_drained() {
    let (mut b, ids) = cluster(Role::Media, Policy::LeastLoaded, &[5, 5]);
    let a = b.assign(Request::new(Role::Media)).expect("room");
    assert_eq!(a.server, ids[0]);
    let out = b.drain(T, ids[0]).expect("known");
    assert!(out.plan.is_empty());
    assert_eq!(b.server(ids[0]).expect("s").state, ServerState::Draining);
    assert_eq!(
        b.assign(Request::new(Role::Media)).expect("room").server,
        ids[1]
    );
    let r = b.release(a.session).expect("placed");
    assert!(r.drained);
    assert!(
        b.enable(T, ids[0])
            .expect("k")
            .events
            .iter()
            .any(|e| e.kind == EventKind::Enabled)
    );
}

#[test]
fn add_remove_and_misuse_are_typed_errors() {
    let (mut b, ids) = cluster(Role::Media, Policy::LeastLoaded, &[5, 5]);
    let dup = b.add_server(ServerSpec {
        name: "media-1".into(),
        role: Role::Media,
        capacity: 5,
        weight: 1,
    });
    assert!(matches!(dup, Err(pbxlab_balancer::Error::DuplicateName(_))));
    let a = b.assign(Request::new(Role::Media)).expect("room");
    let out = b.remove_server(T, a.server).expect("known");
    assert_eq!(out.plan.moves.len(), 1);
    assert!(b.server(a.server).is_none());
    assert!(b.fail(T, a.server).is_err());
    assert!(b.server_by_name("media-1").is_none() || a.server != ids[0]);
    let moved = b.session(a.session).expect("still placed");
    assert_ne!(moved.server, a.server);
    assert!(b.release(a.session).is_ok());
    assert!(
        b.release(a.session).is_err(),
        "double release is an error, not an underflow"
    );
    assert_eq!(
        b.assign(Request::new(Role::Im)),
        Err(Reject::NoPool { role: Role::Im })
    );
    b.audit().expect("invariants");
}
