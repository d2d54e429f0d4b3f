//! `pbxlab merge` end to end: three `pbxlab load --shard auto/3` processes with
//! `JOB_COMPLETION_INDEX` set as Kubernetes sets it in an Indexed Job's pods, against one
//! `pbxlab cluster` on loopback; their reports merged, refused when they cannot be, and judged
//! on the whole. Every run is bounded in calls and time.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::Proc;
use pbxlab_loadgen::report::decode_histogram;

const SHARDS: u32 = 3;

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// A scratch folder of this test process's own.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pbxlab-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

fn pbxlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(args)
        .output()
        .expect("pbxlab runs")
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("the report")).expect("JSON")
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The shards' reports of one run: `pbxlab load --shard auto/3` in three processes at once,
/// each with its `JOB_COMPLETION_INDEX`, 10 echo calls each with RTP.
fn run_shards(dir: &Path, port: u16, threshold: &str) -> Vec<PathBuf> {
    let target = format!("127.0.0.1:{port}");
    let mut loads = Vec::new();
    let mut files = Vec::new();
    for i in 0..SHARDS {
        let json = dir.join(format!("shard-{i}.json"));
        let _ = std::fs::remove_file(&json);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbxlab"));
        cmd.env("JOB_COMPLETION_INDEX", i.to_string())
            .args(["load", "--target", &target, "--domain", "pbxlab.test"])
            .args(["--users", "30", "--service", "echo", "--calls", "30"])
            .args(["--call-rate", "15/s", "--hold", "1s", "--rtp", "1"])
            .args(["--shard", "auto/3", "--threshold", threshold])
            .args(["--json", path(&json)]);
        loads.push(Proc::start(cmd, &dir.join(format!("shard-{i}.log"))));
        files.push(json);
    }
    for mut load in loads {
        let status = load
            .wait_for(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("a shard did not finish:\n{}", load.log()));
        assert!(
            status.success(),
            "a shard failed ({status}):\n{}",
            load.log()
        );
    }
    files
}

/// The histogram `name` of a report, decoded.
fn histogram(report: &serde_json::Value, name: &str) -> hdrhistogram::Histogram<u64> {
    let text = report["histograms"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no histogram {name} in {report}"));
    decode_histogram(text).expect("an encoded histogram")
}

#[test]
fn shards_of_an_indexed_job_merge_into_their_sum_and_are_judged_on_the_whole() {
    let dir = scratch();
    let port = free_port();
    let mut cluster = Command::new(env!("CARGO_BIN_EXE_pbxlab"));
    cluster.args([
        "cluster",
        "--sip",
        &format!("127.0.0.1:{port}"),
        "--for",
        "90s",
    ]);
    let mut cluster = Proc::start(cluster, &dir.join("cluster.log"));
    cluster.wait_for_log("Call Manager on", Duration::from_secs(20));

    // Each shard makes 10 attempts and passes a threshold of at most 12; the run made 30.
    let files = run_shards(&dir, port, "calls.attempted<=12");
    let shards: Vec<serde_json::Value> = files.iter().map(|f| read_json(f)).collect();
    let run = &shards[0]["run"];
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(n(&s["shard"]["index"]), i as u64, "{s}");
        assert_eq!(n(&s["shard"]["count"]), u64::from(SHARDS), "{s}");
        assert_eq!(&s["run"], run, "one run identity for every shard");
        assert_eq!(n(&s["calls"]["attempted"]), 10, "{s}");
        assert_eq!(s["thresholds"][0]["pass"], true, "{s}");
    }

    let merged_json = dir.join("run.json");
    let merged_html = dir.join("run.html");
    let mut args = vec!["merge"];
    args.extend(files.iter().map(|f| path(f)));
    args.extend([
        "--json",
        path(&merged_json),
        "--html",
        path(&merged_html),
        "--threshold",
        "calls.attempted>=30",
    ]);
    let out = pbxlab(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(99),
        "passes on each shard, breaks on the whole:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("shards 0, 1, 2 of 3 merged"), "{stdout}");
    let m = read_json(&merged_json);
    let sum = |pick: &dyn Fn(&serde_json::Value) -> &serde_json::Value| {
        shards.iter().map(|s| n(pick(s))).sum::<u64>()
    };
    for field in ["attempted", "succeeded", "failed", "abandoned"] {
        assert_eq!(
            n(&m["calls"][field]),
            sum(&|s| &s["calls"][field]),
            "calls.{field}"
        );
        assert_eq!(
            n(&m["registrations"][field]),
            sum(&|s| &s["registrations"][field]),
            "registrations.{field}"
        );
    }
    assert_eq!(n(&m["calls"]["succeeded"]), 30, "{m}");
    for field in [
        "streams",
        "packets_sent",
        "packets_received",
        "packets_expected",
    ] {
        assert_eq!(
            n(&m["rtp"][field]),
            sum(&|s| &s["rtp"][field]),
            "rtp.{field}"
        );
    }
    assert!(n(&m["rtp"]["packets_received"]) > 0, "{m}");
    assert_eq!(
        n(&m["messages_received"]),
        sum(&|s| &s["messages_received"])
    );
    // Latencies: the merged histograms are the shards' added, and the figures read from them.
    for name in ["setup", "register", "media_gap"] {
        let mut added = pbxlab_loadgen::metrics::histogram();
        for s in &shards {
            added.add(histogram(s, name)).expect("same bounds");
        }
        let merged = histogram(&m, name);
        assert_eq!(merged, added, "{name}");
        assert_eq!(
            n(&m["metrics"][name]["count"]),
            sum(&|s| &s["metrics"][name]["count"]),
            "{name}"
        );
        assert_eq!(merged.len(), n(&m["metrics"][name]["count"]), "{name}");
        assert_eq!(
            n(&m["metrics"][name]["p99_us"]),
            added.value_at_quantile(0.99),
            "{name}"
        );
        assert_eq!(n(&m["metrics"][name]["max_us"]), added.max(), "{name}");
    }
    // MOS: the streams' hundredths added, the distribution read from them.
    let mut mos = pbxlab_loadgen::metrics::histogram();
    for s in &shards {
        mos.add(histogram(s, "rtp_mos_centi")).expect("same bounds");
    }
    assert_eq!(
        n(&m["rtp"]["mos"]["streams"]),
        sum(&|s| &s["rtp"]["mos"]["streams"])
    );
    assert!(!mos.is_empty(), "{m}");
    assert_eq!(
        m["rtp"]["mos"]["p5"].as_f64(),
        Some(mos.value_at_quantile(0.05) as f64 / 100.0)
    );
    // Per-message counts add up.
    assert_eq!(
        n(&m["messages"]["INVITE"]["sent"]),
        sum(&|s| &s["messages"]["INVITE"]["sent"])
    );
    assert!(n(&m["messages"]["INVITE"]["sent"]) >= 30, "{m}");
    let page = std::fs::read_to_string(&merged_html).expect("the merged page is written");
    assert!(
        page.contains("<svg") && page.contains("shard"),
        "a page of the merged run"
    );
    let mut jitter = pbxlab_loadgen::metrics::histogram();
    for s in &shards {
        jitter.add(histogram(s, "rtp_jitter")).expect("same bounds");
    }
    assert_eq!(
        n(&m["rtp"]["jitter_p99_us"]),
        jitter.value_at_quantile(0.99)
    );
    let judged: Vec<(&str, bool)> = m["thresholds"]
        .as_array()
        .expect("thresholds")
        .iter()
        .map(|t| (t["expr"].as_str().expect("expr"), t["pass"] == true))
        .collect();
    assert_eq!(
        judged,
        [
            ("calls.attempted<=12", false),
            ("calls.attempted>=30", true)
        ]
    );
    assert_eq!(m["shards_missing"], serde_json::Value::Null, "none missing");

    // Two shards are missing: a warning, and the list in the JSON.
    let part_json = dir.join("part.json");
    let out = pbxlab(&["merge", path(&files[1]), "--json", path(&part_json)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: shards 0, 2 of 3 missing"),
        "{stderr}"
    );
    assert_eq!(
        read_json(&part_json)["shards_missing"],
        serde_json::json!([0, 2])
    );

    // Refusals, each naming the files.
    let refused = |args: &[&str], says: &str| {
        let out = pbxlab(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    let again = dir.join("again.json");
    std::fs::copy(&files[0], &again).expect("copy");
    refused(
        &["merge", path(&files[0]), path(&again)],
        &format!(
            "{} and {} both hold shard 0 of 3",
            path(&files[0]),
            path(&again)
        ),
    );
    // The same shard of a run with other settings (a different call rate).
    let other_json = dir.join("other.json");
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .env("JOB_COMPLETION_INDEX", "2")
        .args(["load", "--target", &format!("127.0.0.1:{port}")])
        .args([
            "--domain",
            "pbxlab.test",
            "--users",
            "30",
            "--service",
            "echo",
        ])
        .args(["--calls", "3", "--call-rate", "20/s", "--hold", "100ms"])
        .args(["--shard", "auto/3", "--json", path(&other_json)])
        .output()
        .expect("pbxlab runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused(
        &["merge", path(&files[0]), path(&files[1]), path(&other_json)],
        &format!("but {} (run ", path(&other_json)),
    );
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "calls: 30\n").expect("write");
    refused(
        &["merge", path(&files[0]), path(&garbage)],
        &format!("{}: not JSON", path(&garbage)),
    );
    cluster.terminate();
}

#[test]
fn shard_auto_without_the_jobs_variable_is_refused_before_any_traffic() {
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .env_remove("JOB_COMPLETION_INDEX")
        .args(["load", "--target", "127.0.0.1:9", "--shard", "auto/3"])
        .output()
        .expect("pbxlab runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("$JOB_COMPLETION_INDEX is not set"),
        "{stderr}"
    );
}
