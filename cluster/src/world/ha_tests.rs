//! Call Manager takeover in the world: three Call Managers behind the virtual IP, the real
//! load generator in front, faults of the active, of a standby and of the network.

use pbxlab_scenario::Scenario;

use super::drill::tests::{drill, run};
use crate::drill::{CmFigures, Outcome};
use crate::ha::Role;

/// A small cluster under load: 400 echo calls up with RTP, 200 users refreshing every 8 s,
/// calls arriving throughout; `faults` appended.
fn scenario(faults: &str) -> Scenario {
    let text = format!(
        r#"
name = "cm takeover"
seed = 3
duration = "30s"

[[pool]]
role = "media"
servers = 2
capacity = 1000

[health]
probe_interval = "60ms"
probe_timeout = "40ms"
down_after = 3
up_after = 3

[callmanager]
nodes = 3
heartbeat = "100ms"
misses = 3

[traffic.registrations]
users = 200
expires = "10s"

[drill]
steady = "4s"
settle = "2s"
setup_p99 = "1500ms"
takeover = "1s"

[drill.load]
service = "echo"
rtp = 1.0
hold = "20s"
call_rate = "20/s"
register_rate = "100/s"

{faults}
"#
    );
    Scenario::from_toml("cm takeover", &text).unwrap()
}

fn figures(run: &super::drill::VirtualRun, k: usize) -> CmFigures {
    run.injected[k].cm.clone().unwrap()
}

#[test]
fn a_failed_active_is_taken_over_with_every_call_and_registration() {
    let sc = scenario(
        r#"
[[fault]]
at = "12s"
action = "fail"
server = "cm-1"

[[fault]]
at = "18s"
action = "recover"
server = "cm-1"
"#,
    );
    let (run, verdict) = drill(&sc);
    let f = figures(&run, 0);
    assert!(f.hit_active, "{f:?}");
    assert_eq!(f.before.as_deref(), Some("cm-1"));
    assert!(matches!(f.after.as_deref(), Some("cm-2" | "cm-3")), "{f:?}");
    let takeover = f.takeover_us.unwrap();
    // Three missed 100 ms heartbeats and the skew, then a vote and a heartbeat's round trip.
    assert!(
        (200_000..700_000).contains(&takeover),
        "takeover {takeover} us"
    );
    assert!(f.established >= 200, "{f:?}");
    assert_eq!((f.established_lost, f.registrations_lost), (0, 0), "{f:?}");
    assert_eq!(f.registrations, 200, "{f:?}");
    assert_eq!(run.report.calls.failed, 0, "{:?}", run.report.calls);
    assert_eq!(
        verdict.outcome(),
        Outcome::Pass,
        "{:?}",
        verdict.faults[0].broken
    );
    // The recovered Call Manager caught up as a standby.
    assert!(
        run.injected[1].error.is_none(),
        "{:?}",
        run.injected[1].error
    );
    assert!(
        run.events.iter().any(|e| e.contains("cm-1 caught up")),
        "{:?}",
        run.events
    );
}

#[test]
fn every_standby_ends_with_the_actives_state() {
    let sc = scenario(
        r#"
[[fault]]
at = "12s"
action = "fail"
server = "cm-1"

[[fault]]
at = "15s"
action = "recover"
server = "cm-1"
"#,
    );
    let mut checked = false;
    let mut check = |w: &super::World, _: &pbxlab_loadgen::Progress| {
        // Mid-run, at a second's edge: every replica that is a standby has applied what the
        // active committed, and its Call Manager agrees with the active's on what it holds.
        let active = w
            .replicas()
            .find(|(_, r, alive, _)| *alive && r.role() == Role::Active);
        let Some((_, active, _, _)) = active else {
            return;
        };
        let Some(a) = active.cm() else { return };
        for (name, r, alive, _) in w.replicas() {
            if !alive || r.role() != Role::Standby {
                continue;
            }
            let s = r.cm().unwrap();
            assert!(r.applied() >= active.commit(), "{name} behind the commit");
            if r.applied() == active.applied() {
                assert_eq!(s.stats(), a.stats(), "{name} differs from the active");
                checked = true;
            }
        }
    };
    let run = run(&sc, true, Some(&mut check));
    assert!(run.violation.is_none(), "{:?}", run.violation);
    assert!(
        checked,
        "no standby was ever level with the active at a check"
    );
}

#[test]
fn a_partitioned_active_stops_serving_before_another_starts() {
    let sc = scenario(
        r#"
[[fault]]
at = "12s"
action = "partition"
server = "cm-1"

[[fault]]
at = "16s"
action = "heal"
server = "cm-1"
"#,
    );
    // The explorer's invariants run after every step: two Call Managers serving at one
    // instant is a violation.
    let mut log = Vec::new();
    let mut watch = |w: &super::World, _: &pbxlab_loadgen::Progress| {
        log = w.serving_log().to_vec();
    };
    let run = run(&sc, true, Some(&mut watch));
    assert!(run.violation.is_none(), "{:?}", run.violation);
    let cut = crate::world::ns(crate::drill::timeline(&sc).unwrap()[0].at);
    let stopped = log
        .iter()
        .find(|&&(t, i, serving)| i == 0 && !serving && t >= cut)
        .map(|&(t, _, _)| t)
        .expect("cm-1 stopped serving");
    let started = log
        .iter()
        .find(|&&(t, i, serving)| i != 0 && serving && t >= cut)
        .map(|&(t, _, _)| t)
        .expect("another took over");
    assert!(
        stopped < started,
        "cm-1 stopped at {stopped}, another began at {started}"
    );
    // The lease (250 ms) ran out before the silence (300 ms) and the skew.
    assert!(
        stopped - cut <= 260_000_000,
        "cm-1 served {} ms cut off",
        (stopped - cut) / 1_000_000
    );
    let f = figures(&run, 0);
    assert_eq!((f.established_lost, f.registrations_lost), (0, 0), "{f:?}");
    assert_eq!(run.report.calls.failed, 0);
    // Healed, the old active found the newer term and that its log went another way, and
    // took a snapshot: it ends level with the active, once.
    assert!(
        run.events.iter().any(|e| e.contains("cm-1 reconnected")),
        "{:?}",
        run.events
    );
    let cms = &run.callmanagers;
    let active = cms.iter().find(|c| c.role == "active").expect("an active");
    let old = &cms[0];
    assert_eq!(old.role, "standby", "{cms:?}");
    assert_eq!(old.applied, active.applied, "{cms:?}");
    assert_eq!(old.stats.snapshots_taken, 1, "{cms:?}");
    assert_eq!(active.stats.snapshots_sent, 1, "{cms:?}");
}

#[test]
fn a_rolling_upgrade_of_the_three_loses_no_call() {
    let sc = scenario(
        r#"
[[fault]]
at = "10s"
action = "upgrade"
server = "cm-1"

[[fault]]
at = "14s"
action = "upgrade"
server = "cm-2"

[[fault]]
at = "18s"
action = "upgrade"
server = "cm-3"
"#,
    );
    let (run, verdict) = drill(&sc);
    for (k, inj) in run.injected.iter().enumerate() {
        assert!(inj.error.is_none(), "upgrade {k}: {:?}", inj.error);
        let f = inj.cm.clone().unwrap();
        assert_eq!(
            (f.established_lost, f.registrations_lost),
            (0, 0),
            "{k}: {f:?}"
        );
        if f.hit_active {
            // The active resigned: no silence to wait out.
            let t = f.takeover_us.unwrap();
            assert!(t < 200_000, "upgrade {k}: takeover {t} us");
        }
    }
    assert_eq!(run.report.calls.failed, 0, "{:?}", run.report.calls);
    assert_eq!(verdict.outcome(), Outcome::Pass, "{:?}", verdict.faults);
}

#[test]
fn a_call_manager_failure_during_a_media_failover_loses_no_call() {
    let sc = scenario(
        r#"
[[fault]]
at = "12s"
action = "fail"
server = "media-2"

[[fault]]
at = "12.1s"
action = "fail"
server = "cm-1"
"#,
    );
    let (run, _) = drill(&sc);
    let f = figures(&run, 1);
    assert!(f.hit_active && f.takeover_us.is_some(), "{f:?}");
    assert_eq!((f.established_lost, f.registrations_lost), (0, 0), "{f:?}");
    assert_eq!(run.report.calls.failed, 0, "{:?}", run.report.calls);
    assert!(run.records.dropped.is_empty(), "{:?}", run.records.dropped);
    assert!(
        !run.records.reassigned.is_empty(),
        "the media failover moved nothing"
    );
}

#[test]
fn a_standby_cut_off_with_the_other_leaves_the_active_a_minority_that_stops() {
    let sc = scenario(
        r#"
[[fault]]
at = "12s"
action = "partition"
server = "cm-2"

[[fault]]
at = "12.1s"
action = "partition"
server = "cm-3"

[[fault]]
at = "14s"
action = "heal"
server = "cm-2"
"#,
    );
    let (run, _) = drill(&sc);
    // Alone, cm-1 cannot have its inputs held by a standby: it stops serving rather than
    // answer what a takeover could lose, and serves again once cm-2 is back.
    let stopped = run
        .events
        .iter()
        .any(|e| e.contains("cm-1 stopped serving"));
    let again = run
        .events
        .iter()
        .filter(|e| e.contains("serves the virtual IP"))
        .count();
    assert!(stopped, "{:?}", run.events);
    assert!(again >= 2, "{:?}", run.events);
    assert_eq!(run.report.calls.failed, 0, "{:?}", run.report.calls);
}

#[test]
fn an_old_active_healed_after_its_successor_failed_still_makes_a_majority() {
    let sc = scenario(
        r#"
[[fault]]
at = "10s"
action = "partition"
server = "cm-1"

[[fault]]
at = "13s"
action = "fail"
server = "cm-2"

[[fault]]
at = "15s"
action = "heal"
server = "cm-1"
"#,
    );
    let (run, _) = drill(&sc);
    // cm-1 stepped down with its state when it heard of term 2, so with cm-3 it is a
    // majority again: one of them serves, and what cm-2 committed was on cm-3.
    let after_heal: Vec<&String> = run
        .events
        .iter()
        .filter(|e| e.contains("serves the virtual IP"))
        .filter(|e| {
            e.split('s')
                .next()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(|t| t >= 15.0)
        })
        .collect();
    assert!(!after_heal.is_empty(), "{:?}", run.events);
    let f = figures(&run, 2);
    assert_eq!((f.established_lost, f.registrations_lost), (0, 0), "{f:?}");
}
