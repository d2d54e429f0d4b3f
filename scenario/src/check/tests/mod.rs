//! Checker tests: the fixtures every section's tests use, and the tests of the file as a
//! whole (top-level keys, TOML syntax, shapes, positions, robustness). Each section's own
//! tests are in the file named after it.

use std::path::Path;
use std::time::Duration;

use crate::diagnostics::line_col;
use crate::model::*;
use crate::{Diagnostic, FailoverMode, Policy, Role, ScenarioError, Severity, Verb};

mod cluster;
mod drill;
mod explore;
mod faults;
mod net;
mod pools;
mod traffic;

/// The documented example, plus the ivr/queue/meeting/im pools its
/// traffic needs (traffic without a serving pool is an error).
const FULL: &str = r#"name = "reference cluster"
seed = 7
duration = "2h"            # simulated time for plan
warmup = "10m"             # excluded from statistics; must be < duration
batches = 20

[[pool]]
role = "media"             # media | meeting | ivr | queue | im
servers = 3                # named media-1..media-3
capacity = 5000
policy = "least-loaded"
weights = [1, 2, 1]
failover = "auto"
first_port = 20000

[[pool]]
role = "meeting"
names = ["conf-a", "conf-b"]
capacity = 400

[[pool]]
role = "ivr"
servers = 2
capacity = 300
policy = "weighted"
weights = [3, 1]

[[pool]]
role = "queue"
servers = 2
capacity = 1000
failover = "operator"

[[pool]]
role = "im"
servers = 2
capacity = 20000

[health]
probe_interval = "1s"
probe_timeout = "500ms"
down_after = 3
up_after = 2

[traffic.calls]            # each call holds one media session
rate = "55/s"
hold = "180s"
hold_dist = "exponential"
hold_sigma = 1.0
profile = [0.3, 0.2, 0.2, 0.2, 0.2, 0.3, 0.5, 0.8, 1.0, 1.2, 1.3, 1.2,
           1.0, 1.1, 1.2, 1.3, 1.2, 1.0, 0.8, 0.6, 0.5, 0.4, 0.4, 0.3]

[traffic.ivr]
rate = "5/s"
hold = "60s"
then_queue = 0.4

[traffic.queue]
rate = "5/s"
queues = 1
agents = 300
handle = "240s"
handle_dist = "lognormal"
handle_sigma = 0.5
patience = "120s"
service_level = "20s"

[traffic.meetings]
rate = "0.05/s"
participants = 8
duration = "30m"

[traffic.registrations]
users = 50000
expires = "3600s"
first_user = 1000

[[fault]]
at = "40m"
action = "fail"
server = "media-2"

[[fault]]
at = "50m"
action = "recover"
server = "media-2"

[slo]
blocking = 0.01
queue_service_level = 0.8
queue_abandoned = 0.05
queue_asa = "30s"
mos_p5 = 4.0

[sizing]
core_ghz = 3.0
target_cpu = 0.7
codec = "g711"
media_calls_per_ghz = 100.0
meeting_cores_per_participant = 0.045
ivr_sessions_per_ghz = 100.0
queue_sessions_per_ghz = 100.0
im_users_per_core = 2500.0
im_ram_mb_per_user = 0.33
im_kbps_per_user = 20.0
ram_gb_base = 4.0
ram_mb_per_session = 0.5
disk_gb_base = 40.0
"#;

/// Lines 1-7; tests append from line 8 on.
const MINIMAL: &str =
    "name = \"min\"\nseed = 1\n\n[[pool]]\nrole = \"media\"\nservers = 2\ncapacity = 100\n";

fn parse(text: &str) -> Scenario {
    match Scenario::from_toml("t.toml", text) {
        Ok(scenario) => scenario,
        Err(e) => panic!("expected a valid scenario, got {e}"),
    }
}

fn invalid(text: &str) -> Diagnostic {
    match Scenario::from_toml("t.toml", text) {
        Err(ScenarioError::Invalid(d)) => d,
        Err(e) => panic!("expected an Invalid error, got {e}"),
        Ok(s) => panic!("expected an error, got {s:?}"),
    }
}

fn assert_at(d: &Diagnostic, line: usize, column: usize, key: &str, needles: &[&str]) {
    assert_eq!(d.severity, Severity::Error, "{d}");
    assert_eq!((d.line, d.column), (line, column), "{d}");
    assert_eq!(d.key, key, "{d}");
    assert_eq!(d.file, "t.toml");
    for needle in needles {
        assert!(d.message.contains(needle), "{needle:?} missing from: {d}");
    }
}

#[test]
fn full_example_parses() {
    let s = parse(FULL);
    assert_eq!(s.name, "reference cluster");
    assert_eq!(s.seed, 7);
    assert_eq!(s.duration, Duration::from_secs(7_200));
    assert_eq!(s.warmup, Duration::from_secs(600));
    assert_eq!(s.batches, 20);

    let media = &s.pools[0];
    assert_eq!(media.role, Role::Media);
    let names: Vec<&str> = media.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["media-1", "media-2", "media-3"]);
    let weights: Vec<u32> = media.servers.iter().map(|s| s.weight).collect();
    assert_eq!(weights, [1, 2, 1]);
    assert_eq!(media.capacity, 5000);
    assert_eq!(media.policy, Policy::LeastLoaded);
    assert_eq!(media.failover, FailoverMode::Auto);
    assert_eq!(media.first_port, Some(20000));

    let meeting = &s.pools[1];
    assert_eq!(meeting.policy, Policy::Affinity);
    assert_eq!(meeting.servers[1].name, "conf-b");
    assert_eq!(meeting.first_port, None);
    assert_eq!(s.pools[2].policy, Policy::Weighted);
    assert_eq!(s.pools[2].servers[0].weight, 3);
    assert_eq!(s.pools[3].policy, Policy::Affinity);
    assert_eq!(s.pools[3].failover, FailoverMode::Operator);
    assert_eq!(s.pools[4].policy, Policy::LeastLoaded);

    assert_eq!(
        s.health,
        HealthSpec {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            down_after: 3,
            up_after: 2,
        }
    );

    let calls = s.traffic.calls.as_ref().expect("calls");
    assert_eq!(calls.rate_per_s, 55.0);
    assert_eq!(calls.hold, HoldDist::Exponential { mean_s: 180.0 });
    let profile = calls.profile.expect("profile");
    assert_eq!(profile[0], 0.3);
    assert_eq!(profile[10], 1.3);
    assert_eq!(profile[23], 0.3);

    let ivr = s.traffic.ivr.as_ref().expect("ivr");
    assert_eq!(ivr.rate_per_s, 5.0);
    assert_eq!(ivr.hold, HoldDist::Exponential { mean_s: 60.0 });
    assert_eq!(ivr.then_queue, 0.4);

    let queue = s.traffic.queue.as_ref().expect("queue");
    assert_eq!(
        *queue,
        QueueTraffic {
            rate_per_s: 5.0,
            queues: 1,
            agents: 300,
            handle: HoldDist::LogNormal {
                mean_s: 240.0,
                sigma: 0.5
            },
            patience_s: Some(120.0),
            service_level_s: 20.0,
        }
    );

    let meetings = s.traffic.meetings.as_ref().expect("meetings");
    assert_eq!(meetings.rate_per_s, 0.05);
    assert_eq!(meetings.participants_mean, 8.0);
    assert_eq!(meetings.duration, HoldDist::Exponential { mean_s: 1800.0 });

    assert_eq!(
        s.traffic.registrations,
        Some(RegistrationTraffic {
            users: 50_000,
            expires: Duration::from_secs(3_600),
            first_user: 1_000,
        })
    );

    assert_eq!(
        s.faults,
        [
            FaultSpec {
                at: Duration::from_secs(2_400),
                action: Verb::Fail,
                server: "media-2".to_owned(),
            },
            FaultSpec {
                at: Duration::from_secs(3_000),
                action: Verb::Recover,
                server: "media-2".to_owned(),
            },
        ]
    );
    assert_eq!(
        s.slo,
        Slo {
            blocking: Some(0.01),
            queue_service_level: Some(0.8),
            queue_abandoned: Some(0.05),
            queue_asa_s: Some(30.0),
            mos_p5: Some(4.0),
        }
    );
    assert_eq!(s.sizing, SizingCosts::default());

    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn server_names_in_pool_order() {
    let s = parse(FULL);
    let all: Vec<(&str, Role)> = s.server_names().collect();
    assert_eq!(all.len(), 11);
    assert_eq!(all[0], ("media-1", Role::Media));
    assert_eq!(all[3], ("conf-a", Role::Meeting));
    assert_eq!(all[10], ("im-2", Role::Im));
}

#[test]
fn a_scenario_without_a_seed_gets_the_default_one() {
    let s = parse("name = \"x\"\n[[pool]]\nrole = \"media\"\nservers = 1\ncapacity = 10\n");
    assert_eq!(s.seed, crate::check::DEFAULT_SEED);
    let s =
        parse("name = \"x\"\nseed = 9\n[[pool]]\nrole = \"media\"\nservers = 1\ncapacity = 10\n");
    assert_eq!(s.seed, 9);
}

#[test]
fn values_that_will_hurt_are_warned_and_an_integer_too_large_is_named() {
    let said = |text: &str| -> Vec<(String, String)> {
        parse(text)
            .warnings
            .into_iter()
            .map(|w| (w.key, w.message))
            .collect()
    };
    let pool = "[[pool]]\nrole = \"media\"\nservers = 2\ncapacity = 100\n";
    assert!(parse(&format!("name = \"x\"\n{pool}")).traffic.is_empty());
    let big = said(&format!(
        "name = \"x\"\nduration = \"1000000h\"\n{pool}[traffic.registrations]\nusers = 100000000\n\
         [traffic.calls]\nrate = \"55/s\"\nhold = \"10s\"\n"
    ));
    let keys: Vec<&str> = big.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["traffic.registrations.users", "duration"], "{big:?}");
    assert!(big[0].1.contains("2.7 GB in plan and 13.5 GB"), "{big:?}");
    assert!(big[1].1.contains("years of wall time"), "{big:?}");
    // An ordinary scenario says nothing.
    assert!(
        said(&format!(
            "name = \"x\"\n{pool}[traffic.calls]\nrate = \"5/s\"\nhold = \"10s\"\n"
        ))
        .is_empty()
    );
    let d = invalid(
        "name = \"x\"\n[[pool]]\nrole = \"media\"\nservers = 2\ncapacity = 99999999999999999999\n",
    );
    assert_at(
        &d,
        5,
        12,
        "pool[0].capacity",
        &["too large", "at most 9223372036854775807"],
    );
}

#[test]
fn minimal_file_gets_defaults() {
    let s = parse(MINIMAL);
    assert_eq!(s.name, "min");
    assert_eq!(s.seed, 1);
    assert_eq!(s.duration, Duration::from_secs(3_600));
    assert_eq!(s.warmup, Duration::from_secs(360));
    assert_eq!(s.batches, 20);
    assert_eq!(s.pools.len(), 1);
    let pool = &s.pools[0];
    assert_eq!(pool.policy, Policy::LeastLoaded);
    assert_eq!(pool.failover, FailoverMode::Auto);
    assert_eq!(pool.first_port, None);
    assert!(pool.servers.iter().all(|s| s.weight == 1));
    assert_eq!(s.health.probe_interval, Duration::from_secs(1));
    assert_eq!(s.health.probe_timeout, Duration::from_millis(500));
    assert_eq!((s.health.down_after, s.health.up_after), (3, 2));
    assert_eq!(
        s.traffic,
        Traffic {
            calls: None,
            ivr: None,
            queue: None,
            meetings: None,
            registrations: None,
            im: None,
        }
    );
    assert!(s.faults.is_empty());
    assert_eq!(s.slo.blocking, None);
    assert_eq!(s.sizing, SizingCosts::default());
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn unknown_top_level_key() {
    let d = invalid(
        "name = \"x\"\nseed = 1\ncolour = \"red\"\n[[pool]]\nrole = \"im\"\nservers = 2\ncapacity = 1\n",
    );
    assert_at(
        &d,
        3,
        1,
        "colour",
        &["colour", "allowed keys", "seed", "pool"],
    );
}

#[test]
fn unknown_key_in_inline_and_nested_tables() {
    let d = invalid(&format!("{MINIMAL}\n[sizing]\ncore_mhz = 3000\n"));
    assert_at(&d, 10, 1, "sizing.core_mhz", &["core_mhz", "core_ghz"]);
    let d = invalid(&format!("{MINIMAL}\n[traffic]\nsms = {{ rate = 1 }}\n"));
    assert_at(&d, 10, 1, "traffic.sms", &["sms", "calls"]);
}

#[test]
fn wrong_type_for_seed() {
    let d = invalid(
        "name = \"x\"\nseed = 1.5\n[[pool]]\nrole = \"media\"\nservers = 2\ncapacity = 1\n",
    );
    assert_at(&d, 2, 8, "seed", &["seed", "1.5"]);
}

#[test]
fn wrong_shape_for_a_table() {
    let d = invalid(&format!("{MINIMAL}\n[traffic]\ncalls = 5\n"));
    assert_at(&d, 10, 9, "traffic.calls", &["expected a table"]);
    let d = invalid(&format!(
        "{MINIMAL}\n[traffic]\ncalls = [\"1/s\", \"1s\"]\n"
    ));
    assert_at(
        &d,
        10,
        9,
        "traffic.calls",
        &["invalid type: array, expected a table"],
    );
    let d = invalid(&format!("{MINIMAL}\n[fault]\nat = 1\n"));
    assert_at(
        &d,
        9,
        1,
        "fault",
        &["invalid type: table, expected an array"],
    );
}

#[test]
fn bad_duration_unit() {
    let d = invalid(&format!(
        "name = \"x\"\nseed = 1\nwarmup = \"10 parsecs\"\n{}",
        &MINIMAL[22..]
    ));
    assert_at(
        &d,
        3,
        10,
        "warmup",
        &["warmup", "parsecs", "ns, us, ms, s, m or min, h, d"],
    );
}

#[test]
fn negative_duration() {
    let d = invalid(&format!(
        "name = \"x\"\nseed = 1\nduration = \"-3s\"\n{}",
        &MINIMAL[22..]
    ));
    assert_at(&d, 3, 12, "duration", &["duration", "negative"]);
    let d = invalid(&format!(
        "name = \"x\"\nseed = 1\nduration = \"0s\"\n{}",
        &MINIMAL[22..]
    ));
    assert_at(&d, 3, 12, "duration", &["duration", "greater than 0"]);
}

#[test]
fn warmup_not_before_duration() {
    let d = invalid(&format!(
        "name = \"x\"\nseed = 1\nduration = \"10m\"\nwarmup = 600\n{}",
        &MINIMAL[22..]
    ));
    assert_at(&d, 4, 10, "warmup", &["warmup (10m)", "duration (10m)"]);
}

#[test]
fn toml_syntax_error() {
    let d = invalid("name = \"x\"\nseed = \n");
    assert_at(&d, 2, 8, "", &["quoted"]);
    assert!(!d.message.contains('\n'), "{d}");
    let d = invalid(&format!("{MINIMAL}capacity = 3\n"));
    assert_at(&d, 8, 1, "", &["duplicate key"]);
}

#[test]
fn missing_required_keys() {
    let d = invalid("name = \"x\"\nseed = 1\n\n[[pool]]\nservers = 2\ncapacity = 1\n");
    assert_at(&d, 4, 1, "pool[0].role", &["role", "media"]);
    let d = invalid("name = \"x\"\nseed = 1\n\n[[pool]]\nrole = \"im\"\nservers = 2\n");
    assert_at(&d, 4, 1, "pool[0].capacity", &["capacity"]);
    let d = invalid("name = \"x\"\nseed = 1\n");
    assert_at(&d, 1, 1, "pool", &["[[pool]]"]);
    let d = invalid("seed = 1\n[[pool]]\nrole = \"im\"\nservers = 2\ncapacity = 1\n");
    assert_at(&d, 1, 1, "name", &["name"]);
    let d = invalid(&format!("{MINIMAL}\n[traffic.calls]\nrate = \"1/s\"\n"));
    assert_at(&d, 9, 1, "traffic.calls.hold", &["hold"]);
}

#[test]
fn length_and_range_checks() {
    let d = invalid(&format!(
        "{MINIMAL}\n[traffic.calls]\nrate = 1\nhold = 1\nprofile = [1, 2]\n"
    ));
    assert_at(&d, 12, 11, "traffic.calls.profile", &["24", "found 2"]);
    let d = invalid(&format!("{MINIMAL}weights = [1, 2, 3]\n"));
    assert_at(
        &d,
        8,
        11,
        "pool[0].weights",
        &["one entry per server (2)", "found 3"],
    );
    let d = invalid(&format!("{MINIMAL}weights = [1, 0]\n"));
    assert_at(
        &d,
        8,
        15,
        "pool[0].weights[1]",
        &["weights[1]", "at least 1"],
    );
    let d = invalid(&format!(
        "{MINIMAL}\n[[pool]]\nrole = \"ivr\"\nservers = 2\ncapacity = 9\n\
         \n[traffic.ivr]\nrate = 1\nhold = 1\nthen_queue = 1.5\n"
    ));
    assert_at(
        &d,
        17,
        14,
        "traffic.ivr.then_queue",
        &["between 0 and 1", "1.5"],
    );
    let d = invalid(&format!("{MINIMAL}policy = \"random\"\n"));
    assert_at(&d, 8, 10, "pool[0].policy", &["least-loaded", "\"random\""]);
    let d = invalid(&format!("{MINIMAL}\n[sizing]\ntarget_cpu = 1.2\n"));
    assert_at(
        &d,
        10,
        14,
        "sizing.target_cpu",
        &["target_cpu", "at most 1"],
    );
    let d = invalid(&format!("{MINIMAL}\n[slo]\nmos_p5 = 5\n"));
    assert_at(&d, 10, 10, "slo.mos_p5", &["between 1 and 4.5", "MOS"]);
}

#[test]
fn load_reports_missing_file() {
    let path = Path::new("/nonexistent/pbxlab/scenario.toml");
    match Scenario::load(path) {
        Err(ScenarioError::Read { path, .. }) => {
            assert_eq!(path, "/nonexistent/pbxlab/scenario.toml")
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn load_reads_a_file() {
    let path = std::env::temp_dir().join(format!("pbxlab-scenario-{}.toml", std::process::id()));
    std::fs::write(&path, MINIMAL).expect("write temp file");
    let loaded = Scenario::load(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(loaded.expect("valid").name, "min");
}

#[test]
fn truncated_input_never_panics() {
    for end in 0..=FULL.len() {
        if FULL.is_char_boundary(end) {
            let _ = Scenario::from_toml("t.toml", &FULL[..end]);
        }
    }
}

#[test]
fn mangled_input_never_panics() {
    let lines: Vec<&str> = FULL.lines().collect();
    for skip in 0..lines.len() {
        let text: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, line)| *line)
            .collect();
        let _ = Scenario::from_toml("t.toml", &text.join("\n"));
    }
    let odd_values = [
        "-1",
        "0",
        "1e308",
        "-9223372036854775808",
        "9223372036854775807",
        "\"\"",
        "nan",
        "inf",
        "[]",
        "{}",
        "1979-05-27T07:32:00Z",
        "\"1.5\"",
        "\"99999999999999999999d\"",
        "\"0.000000000000000000001ns\"",
        "\"1e999/s\"",
        "\"é\"",
        "true",
    ];
    for line in &lines {
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        for value in odd_values {
            let text = FULL.replacen(line, &format!("{key} = {value}"), 1);
            let _ = Scenario::from_toml("t.toml", &text);
        }
    }
}

#[test]
fn positions_count_chars_not_bytes() {
    assert_eq!(line_col("é = 1", 3), (1, 3));
    assert_eq!(line_col("a\nbc", 3), (2, 2));
    assert_eq!(line_col("a", 99), (1, 2));
    let d = invalid("name = \"café\" ; seed = 1\n");
    assert_eq!((d.line, d.column), (1, 15), "{d}");
}
