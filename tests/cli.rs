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
    let v = size_json(&path);
    let media = &v["roles"][0];
    assert_eq!(media["role"], "media");
    // 90 erlangs: one server of 100 blocks ~5 %, two meet 1 %; N+1 makes three.
    assert_eq!(media["servers_needed"], 3, "{media}");
    assert!(media["blocking_one_down"].as_f64().expect("number") <= 0.01);
    assert!(media["per_server"]["cores"].as_u64().expect("number") >= 2);
}

fn size_json(path: &std::path::Path) -> serde_json::Value {
    let out = pbxlab(&[
        "plan",
        path.to_str().expect("utf-8 path"),
        "--size",
        "--json",
        "-",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn size_accepts_a_count_only_when_the_intervals_upper_end_meets_the_slo() {
    // 1,000 erlangs for 10 minutes: Erlang B needs 1,029 slots at 1 %, i.e. 21 servers of 50
    // up and 22 with one down. The short run once accepted 20 at 0.0099 ±0.0114.
    let path = scratch(
        "short.toml",
        r#"name = "short"
seed = 4
duration = "10m"
[[pool]]
role = "media"
servers = 3
capacity = 50
[traffic.calls]
rate = "5.5556/s"
hold = "180s"
[slo]
blocking = 0.01
"#,
    );
    let v = size_json(&path);
    let media = &v["roles"][0];
    assert_eq!(media["servers_needed"], 22, "{media}");
    let blocking = media["blocking_one_down"].as_f64().expect("number");
    let ci = media["blocking_one_down_ci95"]
        .as_f64()
        .expect("an interval");
    let upper = media["blocking_one_down_upper95"].as_f64().expect("number");
    assert!(
        (upper - (blocking + ci)).abs() < 1e-12 && upper <= 0.01,
        "{media}"
    );
    // Every accepted run's upper end meets the target; the runs are longer than 10 minutes
    // (a warm-up of five holds, batches of two).
    for t in media["tried"].as_array().expect("tried") {
        if t["verdict"] == "meets" {
            assert!(
                t["blocking_upper95"].as_f64().expect("number") <= 0.01,
                "{t}"
            );
        }
        assert!(t["duration_s"].as_f64().expect("number") > 600.0, "{t}");
    }
}

#[test]
fn size_with_a_zero_blocking_slo_sizes_for_the_offered_load() {
    // scenarios/scale-10k.toml: 10,000 erlangs, `blocking = 0.0`; the search once started
    // from "2 (no traffic)".
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/scale-10k.toml");
    let v = size_json(&path);
    let media = &v["roles"][0];
    assert_eq!(media["role"], "media");
    let basis = media["start_basis"].as_str().expect("text");
    assert!(basis.starts_with("Erlang B: 10000 erlangs"), "{basis}");
    // Two servers of 5,000 carry 10,000 erlangs only with blocking; three must be up.
    assert_eq!(media["servers_needed"], 4, "{media}");
    assert_eq!(media["blocking_one_down"], 0.0);
    assert!(media["blocking_one_down_upper95"].as_f64().expect("number") <= 1e-4);
    assert_eq!(media["blocking_limit"], 1e-4);
    // Roles offered nothing are sized without a run, and say so.
    let ivr = &v["roles"][1];
    assert_eq!(ivr["start_basis"], "no traffic", "{ivr}");
    assert!(ivr["tried"].as_array().expect("tried").is_empty());
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
fn plan_shows_progress_on_stderr_and_leaves_stdout_alone() {
    let day = SMALL
        .replace("duration = \"20m\"", "duration = \"1d\"")
        .replace("rate = \"1.5/s\"", "rate = \"15/s\"")
        .replace("capacity = 100", "capacity = 1000");
    let path = scratch("day.toml", &day);
    let path = path.to_str().expect("utf-8");
    let run = |progress: &str| {
        let out = pbxlab(&[
            "plan",
            path,
            "--no-wall-clock",
            "--json",
            "-",
            "--progress",
            progress,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        out
    };
    let shown = run("2ms");
    let stderr = text(&shown.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("plan: ")).collect();
    assert!(!lines.is_empty(), "no progress in {stderr:?}");
    for needle in ["simulated (", "M events/s", "left"] {
        assert!(lines[0].contains(needle), "{needle:?} not in {lines:?}");
    }
    let quiet = run("off");
    assert!(text(&quiet.stderr).is_empty(), "{}", text(&quiet.stderr));
    assert_eq!(shown.stdout, quiet.stdout, "progress changed the report");
    // By default, a run shorter than ten seconds writes nothing to a log.
    let small = scratch("small-quiet.toml", SMALL);
    let out = pbxlab(&["plan", small.to_str().expect("utf-8")]);
    assert!(out.status.success());
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
    let bad = pbxlab(&["plan", path, "--progress", "sometimes"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    assert!(text(&bad.stderr).contains("--progress"));
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

/// A scenario with network faults: the live drill refuses it before starting anything, naming
/// each fault; `plan` runs it and says that it leaves them out.
#[test]
fn network_faults_are_refused_by_the_live_drill_and_named_by_plan() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drill/network.toml");
    let out = pbxlab(&["drill", path]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("network fault 1 (loss at 8.0 s)")
            && err.contains("network fault 2 (partition at 12.0 s)")
            && err.contains("cannot carry out"),
        "{err}"
    );
    let out = pbxlab(&["plan", path, "--no-wall-clock"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("plan does not model network faults: loss at 8.0 s ignored")
            && err.contains("partition at 12.0 s ignored"),
        "{err}"
    );
}

/// A report written to a named pipe goes down the pipe, and the pipe stays a pipe; one written
/// through a symbolic link replaces the link's target and leaves the link. (Renaming a
/// temporary file over `--json /dev/null`, run as root, once replaced the device itself.)
#[test]
fn a_report_to_a_pipe_or_through_a_link_leaves_the_pipe_and_the_link_as_they_were() {
    use std::os::unix::fs::FileTypeExt as _;
    let scenario = scratch("pipe.toml", SMALL);
    let dir = scenario.parent().unwrap().to_path_buf();
    let fifo = dir.join("report.fifo");
    let _ = std::fs::remove_file(&fifo);
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let fifo = fifo.clone();
        std::thread::spawn(move || tx.send(std::fs::read(&fifo).expect("read the pipe")));
    }
    let s = scenario.to_str().unwrap();
    let out = pbxlab(&["plan", s, "--json", fifo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo(),
        "the pipe was replaced"
    );
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("nothing came down the pipe");
    let v: serde_json::Value = serde_json::from_slice(&got).expect("the report came down the pipe");
    assert_eq!(v["scenario"], "small");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    let target = dir.join("report-target.json");
    let link = dir.join("report-link.json");
    let _ = std::fs::remove_file(&link);
    std::fs::write(&target, "old").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = pbxlab(&["plan", s, "--json", link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&target).unwrap())
        .expect("the target has the report");
    assert_eq!(v["scenario"], "small");
}
