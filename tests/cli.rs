//! End-to-end tests of the `pbxlab` binary: exit codes, error messages for bad input,
//! reproducible reports, sizing, and a run interrupted by a signal.

use std::path::PathBuf;
use std::process::{Command, Output};

fn pbxlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(args)
        .output()
        .expect("pbxlab runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn scratch(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pbxlab-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write scenario");
    path
}

const SMALL: &str = r#"name = "small"
seed = 5
duration = "20m"
warmup = "2m"
[[pool]]
role = "media"
servers = 3
capacity = 100
[traffic.calls]
rate = "1.5/s"
hold = "60s"
[[fault]]
at = "10m"
action = "fail"
server = "media-2"
"#;

#[test]
fn embedded_plan_is_reproducible_byte_for_byte() {
    let a = pbxlab(&["plan", "--no-wall-clock", "--json", "-"]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let b = pbxlab(&["plan", "--no-wall-clock", "--json", "-"]);
    assert_eq!(a.stdout, b.stdout, "same seed, different bytes");
    let c = pbxlab(&["plan", "--no-wall-clock", "--json", "-", "--seed", "8"]);
    assert_ne!(a.stdout, c.stdout, "another seed must change the run");
    let v: serde_json::Value = serde_json::from_slice(&c.stdout).expect("json");
    assert_eq!(v["seed"], 8);
    assert!(v["wall_s"].is_null());
}

#[test]
fn plan_prints_tables_and_events_per_second() {
    let path = scratch("small.toml", SMALL);
    let out = pbxlab(&["plan", path.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for needle in ["role", "media", "erlang B", "media-2", "fail", "M events/s"] {
        assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    }
}

#[test]
fn bad_scenarios_get_one_located_error_each_and_exit_2() {
    let cases = [
        (
            "unknown key",
            SMALL.replace("seed = 5", "seed = 5\ncolour = \"red\""),
            "3:1",
            "colour",
        ),
        (
            "wrong type",
            SMALL.replace("capacity = 100", "capacity = \"lots\""),
            "8:12",
            "capacity",
        ),
        (
            "negative capacity",
            SMALL.replace("capacity = 100", "capacity = -5"),
            "8:12",
            "-5",
        ),
        (
            "unknown server",
            SMALL.replace("server = \"media-2\"", "server = \"media-9\""),
            "15:10",
            "media-9",
        ),
        (
            "bad duration",
            SMALL.replace("hold = \"60s\"", "hold = \"60 parsecs\""),
            "11:8",
            "hold",
        ),
        (
            "syntax",
            SMALL.replace("servers = 3", "servers = = 3"),
            "7:11",
            "extra `=`",
        ),
    ];
    for (label, contents, position, needle) in cases {
        let path = scratch(&format!("{}.toml", label.replace(' ', "-")), &contents);
        let out = pbxlab(&["plan", path.to_str().expect("utf-8 path")]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{label}: {stderr}");
        assert!(
            stderr.contains(&format!(".toml:{position}")),
            "{label}: no position {position} in {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{label}: {needle:?} not named in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{label}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{label}: one error, one line: {stderr}"
        );
    }
    let missing = pbxlab(&["plan", "/nonexistent/scenario.toml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("/nonexistent/scenario.toml"));
}

#[test]
fn size_finds_an_n_plus_one_cluster() {
    let path = scratch(
        "size.toml",
        &SMALL.replace(
            "[[fault]]\nat = \"10m\"\naction = \"fail\"\nserver = \"media-2\"\n",
            "[slo]\nblocking = 0.01\n",
        ),
    );
    let out = pbxlab(&[
        "plan",
        path.to_str().expect("utf-8 path"),
        "--size",
        "--json",
        "-",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let media = &v["roles"][0];
    assert_eq!(media["role"], "media");
    // 90 erlangs: one server of 100 blocks ~5 %, two meet 1 %; N+1 makes three.
    assert_eq!(media["servers_needed"], 3, "{media}");
    assert!(media["blocking_one_down"].as_f64().expect("number") <= 0.01);
    assert!(media["per_server"]["cores"].as_u64().expect("number") >= 2);
}

/// Starts `pbxlab ARGS`, sends it SIGINT after `after`, and returns what it printed.
fn interrupted(args: &[&str], after: std::time::Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(after);
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    child.wait_with_output().expect("exits")
}

/// A run far longer than any test waits for.
fn long_scenario(name: &str) -> PathBuf {
    let long = SMALL
        .replace("duration = \"20m\"", "duration = \"3000d\"")
        .replace("rate = \"1.5/s\"", "rate = \"150/s\"")
        .replace("capacity = 100", "capacity = 10000");
    scratch(name, &long)
}

#[test]
fn an_interrupted_run_still_writes_its_report() {
    let path = long_scenario("long.toml");
    let json = path.with_extension("json");
    let out = interrupted(
        &[
            "plan",
            path.to_str().expect("utf-8"),
            "--json",
            json.to_str().expect("utf-8"),
        ],
        std::time::Duration::from_millis(1500),
    );
    // Not 0: a report of part of the scenario must not pass for a finished run.
    assert_eq!(out.status.code(), Some(105), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("INTERRUPTED"));
    assert!(text(&out.stderr).contains("interrupted"));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written")).expect("json");
    assert_eq!(v["interrupted"], true);
    assert!(v["events"].as_u64().expect("number") > 0);
    assert!(v["simulated_s"].as_f64().expect("number") < 3000.0 * 86400.0);
}

#[test]
fn an_interrupted_sizing_decides_nothing_it_did_not_finish() {
    // Two roles; the first candidate of the first already runs for days of virtual time.
    let path = long_scenario("long-size.toml");
    let with_ivr = std::fs::read_to_string(&path).expect("read")
        + "[[pool]]\nrole = \"ivr\"\nservers = 2\ncapacity = 100\n[traffic.ivr]\nrate = \"1/s\"\nhold = \"30s\"\n";
    let path = scratch("long-size.toml", &with_ivr);
    let json = path.with_extension("json");
    let out = interrupted(
        &[
            "plan",
            path.to_str().expect("utf-8"),
            "--size",
            "--json",
            json.to_str().expect("utf-8"),
        ],
        std::time::Duration::from_millis(1500),
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(105),
        "{stdout}{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("INTERRUPTED"), "{stdout}");
    assert!(stdout.contains("not decided: media, ivr"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written")).expect("json");
    assert_eq!(v["interrupted"], true);
    assert_eq!(v["all_met"], false);
    let roles = v["roles"].as_array().expect("roles");
    assert_eq!(roles.len(), 2, "every role is listed: {v}");
    for r in roles {
        assert_eq!(r["status"], "interrupted", "{r}");
        assert_eq!(r["met"], false, "{r}");
        assert!(r["servers_needed"].is_null(), "{r}");
        assert!(r["per_server"].is_null(), "{r}");
    }
}

#[test]
fn every_shipped_scenario_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("scenarios/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = pbxlab(&["check", path.to_str().expect("utf-8")]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                text(&out.stderr)
            );
            seen += 1;
        }
    }
    assert!(seen >= 3);
}
