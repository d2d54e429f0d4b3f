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

#[test]
fn an_interrupted_run_still_writes_its_report() {
    let long = SMALL
        .replace("duration = \"20m\"", "duration = \"3000d\"")
        .replace("rate = \"1.5/s\"", "rate = \"150/s\"")
        .replace("capacity = 100", "capacity = 10000");
    let path = scratch("long.toml", &long);
    let json = path.with_extension("json");
    let child = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args([
            "plan",
            path.to_str().expect("utf-8"),
            "--json",
            json.to_str().expect("utf-8"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("exits");
    assert!(out.status.success(), "exit {:?}", out.status);
    assert!(text(&out.stdout).contains("INTERRUPTED"));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written")).expect("json");
    assert_eq!(v["interrupted"], true);
    assert!(v["events"].as_u64().expect("number") > 0);
    assert!(v["simulated_s"].as_f64().expect("number") < 3000.0 * 86400.0);
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

#[test]
fn check_warns_of_values_that_will_hurt_and_still_passes() {
    let dir = std::env::temp_dir().join(format!("pbxlab-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let idle = dir.join("idle.toml");
    std::fs::write(
        &idle,
        "name = \"idle\"\n[[pool]]\nrole = \"media\"\nservers = 2\ncapacity = 10\n",
    )
    .expect("write");
    let out = pbxlab(&["check", idle.to_str().expect("utf-8")]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("no [traffic]"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("1 warning"),
        "{}",
        text(&out.stdout)
    );
    let big = dir.join("big.toml");
    std::fs::write(
        &big,
        "name = \"big\"\nduration = \"1000000h\"\n[[pool]]\nrole = \"media\"\nservers = 2\n\
         capacity = 10\n[traffic.registrations]\nusers = 100000000\n",
    )
    .expect("write");
    let out = pbxlab(&["check", big.to_str().expect("utf-8")]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("13.5 GB in pbxlab load"), "{stderr}");
    assert!(stderr.contains("of wall time"), "{stderr}");
}

/// A reader that went away (`pbxlab plan | head`) costs the rest of the text, not the run:
/// no panic, the JSON report still written, whole, with no temporary file left beside it.
#[test]
fn a_closed_stdout_does_not_cost_the_report() {
    let dir = std::env::temp_dir().join(format!("pbxlab-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("plan.json");
    std::fs::write(&json, "an older report").expect("write");
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/quickstart.toml");
    // A pipe whose reading end is closed before the run: every write to it fails.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(["plan", scenario.to_str().expect("utf-8"), "--json"])
        .arg(&json)
        .stdout(writer)
        .output()
        .expect("runs");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("whole JSON");
    assert!(v["events"].as_u64().is_some(), "{v}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("plan.json")]);
}

/// An output path that cannot be written is refused before the run, with exit 2: a run that
/// measured for minutes and then lost its report would hide its verdict too.
#[test]
fn an_unwritable_report_path_is_refused_before_the_run() {
    for args in [
        &["plan", "--json", "/nonexistent-folder/plan.json"][..],
        &[
            "load",
            "--target",
            "127.0.0.1:9",
            "--hlog",
            "/nonexistent-folder/x.hlog",
        ][..],
        &["drill", "--json", "/"][..],
    ] {
        let started = std::time::Instant::now();
        let out = pbxlab(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot be written") || stderr.contains("is a folder"),
            "{stderr}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{args:?}"
        );
    }
}

#[test]
fn a_bad_users_file_is_refused_with_its_name_line_and_problem() {
    let file = scratch(
        "users.csv",
        "SEQUENTIAL\nalice;[authentication password=a]\nalice;[authentication password=b]\n",
    );
    let path = file.to_str().expect("utf-8");
    // Nothing listens at the target: the file is refused before anything is sent.
    let out = pbxlab(&["load", "--target", "127.0.0.1:9", "--users-file", path]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--users-file {path}:3: user \"alice\" again (first on line 2)"
        )),
        "{stderr}"
    );
    let out = pbxlab(&[
        "load",
        "--target",
        "127.0.0.1:9",
        "--password",
        "a",
        "--password-prefix",
        "b",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'--password <PASSWORD>' cannot be used with '--password-prefix"),
        "{stderr}"
    );
}
