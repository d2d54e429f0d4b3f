//! Whole-simulation properties: determinism by seed, the fault timeline carried out exactly as
//! the balancer planned it, and bounds that hold on the reference cluster.

use pbxlab_scenario::{Scenario, reference_scenario};
use pbxlab_sim::{Options, Progress, ProgressSink, simulate};

fn json(scenario: &Scenario, seed: Option<u64>) -> String {
    let report = simulate(
        scenario,
        Options {
            seed,
            no_wall_clock: true,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("seed {seed:?}: {e}"));
    serde_json::to_string_pretty(&report).expect("serialisable")
}

#[test]
fn same_seed_same_bytes_other_seed_other_run() {
    let scenario = reference_scenario().expect("embedded scenario is valid");
    let a = json(&scenario, None);
    let b = json(&scenario, None);
    assert_eq!(a, b, "seed {}: two runs differ", scenario.seed);
    let c = json(&scenario, Some(scenario.seed + 1));
    assert_ne!(a, c, "a different seed must give a different run");
    // The stable schema's required fields are there.
    let v: serde_json::Value = serde_json::from_str(&a).expect("json");
    for key in ["seed", "events", "wall_s", "roles", "servers", "faults"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    for role in ["media", "ivr", "queue", "meeting", "im"] {
        for key in ["offered", "admitted", "blocked", "blocking", "erlang_b"] {
            assert!(
                v["roles"][role].get(key).is_some(),
                "missing roles.{role}.{key}"
            );
        }
    }
    for key in [
        "p_wait",
        "asa_s",
        "service_level",
        "abandoned_fraction",
        "erlang_c_p_wait",
        "erlang_c_asa_s",
        "erlang_a_p_wait",
    ] {
        assert!(
            v["roles"]["queue"].get(key).is_some(),
            "missing roles.queue.{key}"
        );
    }
    for key in ["name", "role", "peak_sessions", "mean_sessions"] {
        assert!(
            v["servers"][0].get(key).is_some(),
            "missing servers[].{key}"
        );
    }
    for key in [
        "at_s",
        "server",
        "action",
        "sessions_affected",
        "reassigned",
        "dropped",
    ] {
        assert!(v["faults"][0].get(key).is_some(), "missing faults[].{key}");
    }
}

/// A timeline exercising every action on several roles, with a ledger check after every event:
/// each move lands where the plan says, each release comes from the server the ledger (fed only
/// by assignments and plans) expects, and balancer and ledger agree on every load throughout.
const TIMELINE: &str = r#"
name = "fault timeline"
seed = 11
duration = "40m"
warmup = "5m"
[[pool]]
role = "media"
servers = 3
capacity = 300
[[pool]]
role = "meeting"
servers = 3
capacity = 120
[[pool]]
role = "queue"
servers = 2
capacity = 400
failover = "operator"
[health]
probe_interval = "1s"
probe_timeout = "300ms"
down_after = 3
up_after = 2
[traffic.calls]
rate = "4/s"
hold = "120s"
[traffic.meetings]
rate = "0.02/s"
participants = 6
duration = "10m"
[traffic.queue]
rate = "1/s"
queues = 4
agents = 70
handle = "60s"
patience = "90s"
[[fault]]
at = "10m"
action = "fail"
server = "media-1"
[[fault]]
at = "12m"
action = "fail"
server = "meeting-2"
[[fault]]
at = "14m"
action = "fail"
server = "queue-1"
[[fault]]
at = "16m"
action = "disable"
server = "queue-1"
[[fault]]
at = "18m"
action = "recover"
server = "media-1"
[[fault]]
at = "20m"
action = "drain"
server = "media-3"
[[fault]]
at = "25m"
action = "enable"
server = "media-3"
[[fault]]
at = "30m"
action = "fail"
server = "media-2"
"#;

#[test]
fn fault_timeline_moves_sessions_exactly_as_planned() {
    let scenario = Scenario::from_toml("<timeline>", TIMELINE).expect("valid");
    let report = simulate(
        &scenario,
        Options {
            self_check: true,
            no_wall_clock: true,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("seed {}: {e}", scenario.seed));
    let f = &report.faults;
    assert_eq!(f.len(), 8);
    let health = &scenario.health;
    let bound = (health.probe_interval * health.down_after + health.probe_timeout).as_secs_f64();
    // media-1 fails with ~240 calls on it; media-2 and media-3 have room for all of them.
    assert_eq!(f[0].action, "fail");
    let detected = f[0].detected_after_s.expect("the balancer noticed");
    assert!(
        detected > 0.0 && detected <= bound,
        "detected after {detected} s, bound {bound} s"
    );
    assert!(f[0].sessions_affected > 100, "{:?}", f[0]);
    assert_eq!(f[0].reassigned + f[0].dropped, f[0].sessions_affected);
    assert_eq!(f[0].dropped, 0);
    // A meeting server failure moves whole meetings and raises an alert.
    assert!(
        f[1].alert && f[1].reassigned > 0 && f[1].dropped == 0,
        "{:?}",
        f[1]
    );
    // The queue pool waits for the operator: nothing moves on failure, everything on disable.
    assert!(
        f[2].alert && f[2].reassigned == 0 && f[2].sessions_affected > 0,
        "{:?}",
        f[2]
    );
    assert!(f[3].reassigned > 0, "{:?}", f[3]);
    assert_eq!(f[3].reassigned + f[3].dropped, f[3].sessions_affected);
    // Drain moves nothing.
    assert_eq!((f[5].reassigned, f[5].dropped), (0, 0));
    // Losing a second media server leaves 600 sessions of room for ~480 calls.
    assert_eq!(f[7].dropped, 0, "{:?}", f[7]);
    assert!(report.roles["media"].dropped == 0);
}

#[test]
fn without_spare_capacity_the_failover_drops_and_says_so() {
    let text = TIMELINE
        .replace("capacity = 300", "capacity = 200")
        .replace("rate = \"4/s\"", "rate = \"4.5/s\"");
    let scenario = Scenario::from_toml("<tight>", &text).expect("valid");
    let report = simulate(
        &scenario,
        Options {
            self_check: true,
            no_wall_clock: true,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("seed {}: {e}", scenario.seed));
    let f = &report.faults[0];
    assert!(
        f.dropped > 0,
        "two servers of 200 cannot take ~540 calls: {f:?}"
    );
    assert_eq!(f.reassigned + f.dropped, f.sessions_affected);
    assert!(report.roles["media"].dropped >= f.dropped);
}

#[test]
fn reference_day_runs_and_respects_capacity() {
    let mut scenario = reference_scenario().expect("valid");
    scenario.duration = std::time::Duration::from_secs(6 * 3600);
    let report = simulate(
        &scenario,
        Options {
            no_wall_clock: true,
            ..Options::default()
        },
    )
    .expect("runs");
    for s in &report.servers {
        assert!(
            s.peak_sessions <= u64::from(s.capacity),
            "{} above capacity",
            s.name
        );
    }
    let media = &report.roles["media"];
    // ~10,000 erlangs offered to 15,000 slots.
    assert!(
        (9_500.0..10_500.0).contains(&media.mean_sessions),
        "{}",
        media.mean_sessions
    );
    let reg = report.registrations.expect("registrations");
    assert!(
        (reg.register_per_s - 50_000.0 / 3600.0).abs() < 0.5,
        "{}",
        reg.register_per_s
    );
}

/// A fault-free run spends no event on probes (every outcome is known), and a failure is found
/// on the prober's grid: the first round at or after the fault, then `down_after - 1` more
/// rounds, judged `timeout` after each start. The live Call Manager drives the same prober.
#[test]
fn probes_cost_nothing_while_healthy_and_detection_follows_the_probe_grid() {
    let base = r#"name = "probe grid"
seed = 5
duration = "2h"
warmup = "1m"
[health]
probe_interval = "2s"
probe_timeout = "500ms"
down_after = 3
[[pool]]
role = "media"
servers = 3
capacity = 100
[traffic.calls]
rate = "1/s"
hold = "60s"
"#;
    let quiet = simulate(
        &Scenario::from_toml("<quiet>", base).expect("valid"),
        Options::default(),
    )
    .expect("runs");
    let calls = quiet.roles["media"].offered;
    // Arrivals and hang-ups, the warm-up's and a few more: nothing near 3 probes a second.
    assert!(
        quiet.events < calls * 21 / 10 + 500,
        "{} events for {calls} calls",
        quiet.events
    );
    for (action, at_s, expected) in [
        ("fail", 601.0, 606.5),
        ("fail", 600.0, 604.5),
        ("fail", 601.9, 606.5),
        // A partition is as silent as a failure, and found the same way.
        ("partition", 601.0, 606.5),
    ] {
        let text = format!(
            "{base}[[fault]]\nat = \"{at_s}s\"\naction = \"{action}\"\nserver = \"media-2\"\n"
        );
        let scenario = Scenario::from_toml("<fault>", &text).expect("valid");
        let report = simulate(&scenario, Options::default()).expect("runs");
        let detected = report.faults[0].detected_after_s.expect("detected");
        assert!(
            (at_s + detected - expected).abs() < 1e-6,
            "failed at {at_s} s, down at {} s, expected {expected} s",
            at_s + detected
        );
    }
}

/// The operator's verbs mean in `plan` what they mean live: `stop` moves the sessions and the
/// server stays down until `recover`; `restart` moves them and the probes bring it back;
/// `upgrade` moves them and the server takes sessions again once a probe after its restart
/// answers; `rm` moves them and the server is gone.
#[test]
fn operator_verbs_move_sessions_in_plan_as_they_do_live() {
    let text = r#"name = "verbs"
seed = 9
duration = "50m"
warmup = "1m"
[health]
probe_interval = "1s"
probe_timeout = "200ms"
[[pool]]
role = "media"
servers = 3
capacity = 400
[traffic.calls]
rate = "2/s"
hold = "120s"
[[fault]]
at = "10m"
action = "upgrade"
server = "media-1"
[[fault]]
at = "20m"
action = "stop"
server = "media-2"
[[fault]]
at = "21m"
action = "recover"
server = "media-2"
[[fault]]
at = "30m"
action = "restart"
server = "media-3"
[[fault]]
at = "40m"
action = "rm"
server = "media-1"
"#;
    let scenario = Scenario::from_toml("<verbs>", text).expect("valid");
    let report = simulate(
        &scenario,
        Options {
            self_check: true,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("seed {}: {e}", scenario.seed));
    let f = &report.faults;
    let actions: Vec<&str> = f.iter().map(|f| f.action.as_str()).collect();
    assert_eq!(actions, ["upgrade", "stop", "recover", "restart", "rm"]);
    for (i, fault) in f.iter().enumerate() {
        assert_eq!(fault.dropped, 0, "{fault:?}");
        assert_eq!(fault.reassigned, fault.sessions_affected, "{fault:?}");
        if i != 2 {
            assert!(fault.sessions_affected > 50, "{fault:?}");
        }
    }
    // media-1 took sessions again after its upgrade (the rm at 40 m found some on it), and the
    // stopped media-2 came back with `recover` (the restart of media-3 found room).
    assert_eq!(report.roles["media"].dropped, 0);
}

#[test]
fn progress_is_reported_on_the_way_and_changes_nothing() {
    let scenario = Scenario::from_toml(
        "<progress>",
        r#"
name = "progress"
seed = 9
duration = "200h"
[[pool]]
role = "media"
servers = 3
capacity = 100
[traffic.calls]
rate = "4/s"
hold = "60s"
"#,
    )
    .expect("valid");
    let seen = std::cell::RefCell::new(Vec::new());
    let record = |p: &Progress<'_>| {
        seen.borrow_mut()
            .push((p.simulated_s, p.events, p.left_s()))
    };
    let with = simulate(
        &scenario,
        Options {
            no_wall_clock: true,
            // Every check (every 4,096 events) reports.
            progress: Some(ProgressSink {
                every: std::time::Duration::ZERO,
                stage: "",
                report: &record,
            }),
            ..Options::default()
        },
    )
    .expect("runs");
    let without = json(&scenario, None);
    assert_eq!(
        serde_json::to_string_pretty(&with).expect("serialisable"),
        without,
        "progress must not change the report"
    );
    let seen = seen.into_inner();
    // About 5.8 M events: one report per 4,096.
    assert_eq!(seen.len() as u64, with.events / 4096, "{}", seen.len());
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
    let (last_s, _, left) = seen[seen.len() - 1];
    assert!(
        last_s > 199.0 * 3600.0 && last_s <= 200.0 * 3600.0,
        "{last_s}"
    );
    assert!(left.is_some_and(|l| l >= 0.0));
}

#[test]
fn the_time_left_is_the_rest_at_the_pace_so_far() {
    let p = Progress {
        stage: "",
        simulated_s: 3_600.0,
        duration_s: 36_000.0,
        events: 2_000_000,
        wall_s: 2.0,
    };
    assert_eq!(p.left_s(), Some(18.0));
    assert_eq!(p.events_per_s(), 1_000_000.0);
    assert_eq!(
        Progress {
            simulated_s: 0.0,
            ..p
        }
        .left_s(),
        None
    );
}

#[test]
fn each_server_has_a_bounded_timeline_that_agrees_with_its_mean_and_its_faults() {
    let scenario = Scenario::from_toml("<timeline>", TIMELINE).expect("valid");
    let report = simulate(
        &scenario,
        Options {
            no_wall_clock: true,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("seed {}: {e}", scenario.seed));
    let bucket_s = report.timeline_bucket_s;
    // 40 minutes in 200 buckets of 12 s.
    assert!((bucket_s - 12.0).abs() < 1e-6, "{bucket_s}");
    let warmup_buckets = (report.warmup_s / bucket_s).round() as usize;
    for s in &report.servers {
        assert_eq!(s.timeline.len(), 200, "{}", s.name);
        assert!(
            s.timeline
                .iter()
                .all(|&m| m >= 0.0 && m <= f64::from(s.capacity)),
            "{}: {:?}",
            s.name,
            s.timeline
        );
        // After warm-up the buckets average to the server's mean.
        let after = &s.timeline[warmup_buckets..];
        let mean = after.iter().sum::<f64>() / after.len() as f64;
        assert!(
            (mean - s.mean_sessions).abs() <= 0.01 * s.mean_sessions.max(1.0),
            "{}: timeline mean {mean} against {}",
            s.name,
            s.mean_sessions
        );
    }
    // media-2 fails at 30 min and stays down: nothing on it from the bucket after detection on.
    let media_2 = report
        .servers
        .iter()
        .find(|s| s.name == "media-2")
        .expect("media-2");
    let busy = |b: usize| media_2.timeline[b];
    assert!(busy(140) > 10.0, "{:?}", media_2.timeline);
    assert!((152..200).all(|b| busy(b) == 0.0), "{:?}", media_2.timeline);
    // The same seed gives the same timeline.
    let again = simulate(
        &scenario,
        Options {
            no_wall_clock: true,
            ..Options::default()
        },
    )
    .expect("runs");
    assert_eq!(again.servers[0].timeline, report.servers[0].timeline);
}

const CM_TAKEOVER: &str = r#"
name = "cm takeover"
seed = 11
duration = "10m"
warmup = "1m"

[[pool]]
role = "media"
servers = 2
capacity = 8000

[callmanager]
nodes = 3
heartbeat = "100ms"
misses = 3

[traffic.calls]
rate = "200/s"
hold = "30s"

[[fault]]
at = "3m"
action = "fail"
server = "cm-1"

[[fault]]
at = "4m"
action = "partition"
server = "cm-3"

[[fault]]
at = "5m"
action = "heal"
server = "cm-3"

[[fault]]
at = "6m"
action = "recover"
server = "cm-1"

[[fault]]
at = "7m"
action = "upgrade"
server = "cm-2"
"#;

/// A Call Manager's failure in the plan: attempts while nobody answers are placed late by a
/// retransmission, calls up are untouched, a standby's failure costs nothing, and without a
/// majority the attempts are given up at Timer B until a Call Manager comes back.
#[test]
fn a_call_manager_takeover_delays_the_attempts_in_its_window_and_drops_no_call() {
    let scenario = Scenario::from_toml("<cm>", CM_TAKEOVER).expect("valid");
    let report = simulate(
        &scenario,
        Options {
            self_check: true,
            no_wall_clock: true,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("seed {}: {e}", scenario.seed));
    let t: Vec<_> = report
        .faults
        .iter()
        .map(|f| f.takeover.clone().expect("a takeover row"))
        .collect();
    // cm-1: 300 ms of silence less half a heartbeat on average, then cm-2's skew of 33 ms.
    assert!((t[0].outage_s - 0.2833).abs() < 1e-3, "{:?}", t[0]);
    assert_eq!(t[0].next.as_deref(), Some("cm-2"));
    // 200 attempts a second for 0.283 s: about 57 (Poisson; 4 sigma either way).
    assert!((27..=87).contains(&t[0].attempts_delayed), "{:?}", t[0]);
    assert_eq!(t[0].attempts_failed, 0);
    assert!(t[0].delay_max_s <= 0.5 + 1e-9, "{:?}", t[0]);
    // With cm-1 failed, cutting off cm-3 leaves cm-2 without a majority: nobody answers
    // until cm-3 is back a minute later. The attempts of the first 28.5 s run out of
    // retransmissions (Timer B); those of the last 31.5 s get one in once cm-2 serves again.
    assert!((t[1].outage_s - 60.0).abs() < 1e-6, "{:?}", t[1]);
    assert_eq!(t[1].next.as_deref(), Some("cm-2"));
    assert!(
        (200 * 26..=200 * 31).contains(&t[1].attempts_failed),
        "{:?}",
        t[1]
    );
    assert!(
        (200 * 29..=200 * 34).contains(&t[1].attempts_delayed),
        "{:?}",
        t[1]
    );
    assert!(
        t[1].delay_max_s > 30.0 && t[1].delay_max_s <= 31.5 + 1e-9,
        "{:?}",
        t[1]
    );
    // Healing, recovering (cm-1 is handed a snapshot) and upgrading cm-2 with both others up
    // (it resigns; cm-1 stands at once): no outage of their own.
    for (k, row) in t.iter().enumerate().skip(2) {
        assert_eq!(row.outage_s, 0.0, "{k}: {row:?}");
    }
    assert_eq!(t[4].next.as_deref(), Some("cm-1"));
    // Calls up when a Call Manager failed are not dropped, and the late attempts found room.
    assert_eq!(report.roles["media"].dropped, 0);
    assert_eq!(report.roles["media"].blocked, 0);
}
