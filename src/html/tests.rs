//! The pages' structure: well-formed, self-contained, escaped, one chart per figure with data,
//! a point per interval inside axes that cover the data, and nothing broken by absent fields.

use serde_json::{Value, json};

use super::check::{Element, elements, points};
use super::svg::{BOTTOM, HEIGHT, LEFT, RIGHT, TOP, WIDTH};
use super::{drill, load, plan};

const HOSTILE: &str = "<script>alert(1)</script>";

/// Checks what every page must be, and returns its elements.
fn checked(page: &str) -> Vec<Element> {
    let all = elements(page).unwrap_or_else(|e| panic!("not well-formed: {e}\n{page}"));
    let without_xmlns = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for scheme in [
        "http://", "https://", "url(", "<script", "<link", "<img", "@import",
    ] {
        assert!(!without_xmlns.contains(scheme), "{scheme} in the page");
    }
    assert!(page.starts_with("<!DOCTYPE html>"));
    for line in all.iter().filter(|e| e.name == "polyline") {
        let pts = points(line.attr("points").unwrap_or_default()).expect("points parse");
        for (x, y) in pts {
            assert!(
                (LEFT - 0.1..=WIDTH - RIGHT + 0.1).contains(&x)
                    && (TOP - 0.1..=HEIGHT - BOTTOM + 0.1).contains(&y),
                "({x}, {y}) of {:?} outside the plot: the axes do not cover the data",
                line.attr("data-series")
            );
        }
    }
    all
}

/// The elements of the chart titled `title`: its `<svg>` and what follows up to the next.
fn chart<'a>(all: &'a [Element], title: &str) -> &'a [Element] {
    let start = all
        .iter()
        .position(|e| e.name == "svg" && e.attr("aria-label") == Some(title))
        .unwrap_or_else(|| panic!("no chart {title:?}"));
    let len = all[start + 1..]
        .iter()
        .position(|e| e.name == "svg")
        .unwrap_or(all.len() - start - 1);
    &all[start..=start + len]
}

fn range(svg: &Element, attr: &str) -> f64 {
    svg.attr(attr)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {attr}"))
}

fn count(all: &[Element], name: &str) -> usize {
    all.iter().filter(|e| e.name == name).count()
}

fn series<'a>(all: &'a [Element], name: &str) -> Vec<&'a Element> {
    all.iter()
        .filter(|e| e.name == "polyline" && e.attr("data-series") == Some(name))
        .collect()
}

/// A load report in `LoadReport`'s schema: `n` one-second intervals with setup and register
/// latencies, a failure reason and a target named with markup.
fn load_report(n: usize) -> Value {
    let intervals: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "start_s": i as f64,
                "length_s": 1.0,
                "calls": {"attempted": 10, "succeeded": 9, "failed": i % 2, "abandoned": 0},
                "registrations": {"attempted": 5, "succeeded": 5, "failed": 0, "abandoned": 0},
                "failures": if i % 2 == 1 { json!({HOSTILE: 1}) } else { json!({}) },
                "concurrent_calls": 100 + i * 7,
                "call_rate_per_s": 10.0,
                "register_rate_per_s": 5.0,
                "metrics": {
                    "setup": {"count": 10, "p50_us": 1000 + i * 100, "p90_us": 5000, "p95_us": 6000, "p99_us": 40_000 + i * 1000, "max_us": 50_000},
                    "register": {"count": 5, "p50_us": 300, "p90_us": 400, "p99_us": 500, "max_us": 600}
                }
            })
        })
        .collect();
    json!({
        "target": HOSTILE,
        "duration_s": n as f64,
        "interrupted": false,
        "seed": 7,
        "messages_received": 1000,
        "malformed": 0,
        "stray": 0,
        "metrics": {
            "setup": {"count": 10 * n, "p50_us": 1200, "p90_us": 5000, "p99_us": 44_000, "p999_us": 50_000, "max_us": 50_000, "mean_us": 2000.0},
            "register": {"count": 5 * n, "p50_us": 300, "p90_us": 400, "p99_us": 500, "p999_us": 600, "max_us": 600, "mean_us": 320.0}
        },
        "calls": {"attempted": 10 * n, "succeeded": 9 * n, "failed": n / 2, "abandoned": 0},
        "registrations": {"attempted": 5 * n, "succeeded": 5 * n, "failed": 0, "abandoned": 0},
        "failures": {HOSTILE: n / 2},
        "rtp": {"streams": 40, "packets_sent": 1000, "packets_received": 990, "loss_fraction": 0.01, "unreceived_fraction": 0.01, "jitter_p99_us": 900,
                "mos": {"streams": 40, "min": 3.1, "p1": 3.3, "p5": 3.9, "p50": 4.3, "mean": 4.2, "max": 4.4}},
        "emulator": [],
        "thresholds": [{"expr": "setup.p99<200ms", "value": 44_000.0, "pass": true}],
        "intervals": intervals
    })
}

#[test]
fn a_load_page_draws_each_figure_over_the_intervals_and_escapes_what_it_shows() {
    let page = load(&load_report(12));
    let all = checked(&page);
    // setup and register percentiles, attempt rates, failures, calls in progress, MOS.
    assert_eq!(count(&all, "svg"), 6, "{page}");
    assert!(!page.contains(HOSTILE), "unescaped markup from the report");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    // One point per interval.
    for name in [
        "calls",
        "registrations",
        "calls failed",
        "calls in progress",
        "p95",
    ] {
        let lines = series(&all, name);
        assert!(!lines.is_empty(), "no {name} line");
        for l in lines {
            assert_eq!(l.attr("data-points"), Some("12"), "{name}");
            let pts = points(l.attr("points").unwrap_or_default()).expect("parse");
            assert_eq!(pts.len(), 12, "{name}");
        }
    }
    // The failure reason has its own line, and the thresholds' verdict is shown.
    assert_eq!(series(&all, HOSTILE).len(), 0);
    assert_eq!(
        series(&all, "&lt;script&gt;alert(1)&lt;/script&gt;").len(),
        1
    );
    assert!(page.contains("thresholds pass"));
    // The p99 axis reaches the worst p99 (51 ms), and the plot rises with it: the last p99
    // point is higher on the page (smaller y) than the first.
    let setup = chart(&all, "setup: percentiles per interval");
    let p99 = series(setup, "p99")[0];
    let pts = points(p99.attr("points").unwrap_or_default()).expect("parse");
    assert!(pts[11].1 < pts[0].1, "{pts:?}");
    assert!(range(&setup[0], "data-y-max") >= 51.0);
    assert!(range(&setup[0], "data-x-max") >= 12.0);
    // The register chart has no p95: its intervals gave none.
    assert!(series(chart(&all, "register: percentiles per interval"), "p95").is_empty());
    // MOS figures in the summary and their chart.
    assert!(page.contains("p5 3.90"), "{page}");
}

#[test]
fn a_load_page_with_rtp_per_interval_draws_its_loss_and_jitter_and_one_without_has_neither() {
    let titles = |all: &[Element]| -> Vec<String> {
        all.iter()
            .filter(|e| e.name == "svg")
            .filter_map(|e| e.attr("aria-label").map(str::to_owned))
            .collect()
    };
    let plain = checked(&load(&load_report(10)));
    for title in ["RTP loss per interval", "RTP jitter per interval"] {
        assert!(!titles(&plain).iter().any(|t| t == title), "{title}");
    }
    let mut v = load_report(10);
    for (i, row) in v["intervals"]
        .as_array_mut()
        .expect("intervals")
        .iter_mut()
        .enumerate()
    {
        row["rtp"] = json!({
            "packets_sent": 500, "packets_received": 495, "packets_expected": 500,
            "packets_lost": 5 * (i % 3), "loss_fraction": 0.01 * (i % 3) as f64,
            "late_packets": 2, "streams_received": 10, "jitter_p99_us": 1_000 + 500 * i
        });
        if i == 9 {
            row["metrics"]["media_gap"] = json!({"count": 10, "p50_us": 20_000, "p90_us": 21_000, "p99_us": 80_000, "max_us": 80_000});
        }
    }
    let page = load(&v);
    let all = checked(&page);
    let drawn = titles(&all);
    for title in [
        "RTP loss per interval",
        "RTP jitter per interval",
        "media_gap: percentiles per interval",
    ] {
        assert!(
            drawn.iter().any(|t| t == title),
            "no {title:?} in {drawn:?}"
        );
    }
    // A point per interval, on the chart it belongs to.
    for (title, name) in [
        ("RTP loss per interval", "lost (RFC 3550)"),
        ("RTP loss per interval", "late for the playout buffer"),
        ("RTP jitter per interval", "p99 over the streams"),
    ] {
        let lines = series(chart(&all, title), name);
        assert_eq!(lines.len(), 1, "{title}: {name}");
        assert_eq!(lines[0].attr("data-points"), Some("10"), "{name}");
    }
    // The jitter axis is in milliseconds and covers the worst interval, 5.5 ms.
    let svg = &chart(&all, "RTP jitter per interval")[0];
    assert!(range(svg, "data-y-max") >= 5.5 && range(svg, "data-y-max") < 60.0);
    // Loss in percent: 2% at most.
    let svg = &chart(&all, "RTP loss per interval")[0];
    assert!(range(svg, "data-y-max") >= 2.0 && range(svg, "data-y-max") < 50.0);
}

#[test]
fn absent_or_odd_fields_leave_a_page_without_them() {
    let mut older = load_report(3);
    if let Some(o) = older.as_object_mut() {
        o.remove("intervals");
    }
    if let Some(rtp) = older["rtp"].as_object_mut() {
        rtp.remove("mos");
    }
    let page = load(&older);
    let all = checked(&page);
    assert_eq!(count(&all, "svg"), 0, "no intervals, no MOS: no chart");
    assert!(page.contains("no intervals"));
    assert!(!page.contains("MOS"));
    for odd in [
        json!({}),
        json!(null),
        json!([1, 2]),
        json!({"intervals": []}),
        json!({"intervals": [1, "x", null, {"start_s": "soon"}], "metrics": {"setup": {}}}),
        json!({"rtp": {"streams": 3, "mos": "bad"}, "thresholds": [null], "failures": {"x": "y"}}),
        json!({"intervals": [{"start_s": 0, "length_s": 1, "call_rate_per_s": 1e308, "metrics": {"setup": {"p50_us": -5}}}]}),
        json!({"faults": [{"at_s": "x"}, 7], "load": [], "steady": 3, "events": "none"}),
        json!({"servers": [{"timeline": [1, null, "x"], "capacity": 0}], "roles": {"media": 1}, "timeline_bucket_s": 1}),
        json!({"roles": [null, {"tried": [1, {"servers": 2}]}], "assumptions": {}}),
    ] {
        for render in [load, drill, plan] {
            checked(&render(&odd));
        }
    }
}

/// A drill report in `DrillVerdict::to_json`'s schema, around a 20-interval load that started
/// at `load_start_s` on the cluster's clock.
fn drill_report(load_start_s: Option<f64>) -> Value {
    let mut v = json!({
        "scenario": HOSTILE,
        "seed": 3,
        "pass": false,
        "verdict": "fail",
        "emulator": [],
        "steady": {"from_s": 11.0, "to_s": 14.0, "calls_failed": 0, "setup_p99_max_us": 4000, "min_active_calls": 300, "pass": true, "broken": [], "balancer": []},
        "faults": [
            {"at_s": 14.05, "action": "fail", "server": "media-2", "finished_s": 14.07, "error": null,
             "detection_us": 209_000, "detection_bound_us": 220_000,
             "reassignment": {"count": 99, "p50_us": 5000, "p99_us": 7000, "max_us": 7015},
             "media_gap": {"count": 97, "p50_us": 220_000, "p99_us": 221_000, "max_us": 222_000},
             "dropped": [{"call_id": "abc@host", "reason": HOSTILE}], "alerts": [],
             "during": {"from_s": 14.05, "to_s": 16.0, "pass": false, "broken": ["media gap p99 221 ms > 200 ms"]},
             "after": {"from_s": 16.0, "to_s": 17.0, "pass": true, "broken": []},
             "pass": false, "broken": ["media gap p99 221 ms > 200 ms"]},
            {"at_s": 17.0, "action": "recover", "server": "media-2", "detection_us": null,
             "reassignment": {"count": 0}, "media_gap": {"count": 0}, "dropped": [],
             "during": {"pass": true}, "after": {"pass": true}, "pass": true, "broken": []}
        ],
        "faults_planned": 2,
        "faults_skipped": 0,
        "events": ["14.26s media-2 down", "17.16s media-2 up"],
        "load": load_report(20)
    });
    if let (Some(o), Some(s)) = (v.as_object_mut(), load_start_s) {
        o.insert("load_start_s".into(), json!(s));
    }
    v
}

#[test]
fn a_drill_page_marks_each_fault_and_its_detection_on_the_loads_timeline() {
    let page = drill(&drill_report(Some(2.5)));
    let all = checked(&page);
    assert!(!page.contains(HOSTILE));
    assert!(page.contains("FAIL: an SLO broke"));
    let lines = |class: &str| {
        all.iter()
            .filter(|e| e.name == "line" && e.attr("class") == Some(class))
            .count()
    };
    let timeline_charts = all
        .iter()
        .filter(|e| {
            e.name == "svg" && e.attr("data-x-min").is_some() && e.attr("data-y-min").is_some()
        })
        .count();
    // Two faults and one detection on every chart over time.
    assert_eq!(lines("mark"), 2 * timeline_charts, "{page}");
    assert_eq!(lines("mark detected"), timeline_charts);
    assert!(page.contains("detected after 209 ms"));
    // The drill's timeline comes first: setup, calls up, failures.
    let titles: Vec<&str> = all
        .iter()
        .filter(|e| e.name == "svg")
        .filter_map(|e| e.attr("aria-label"))
        .take(3)
        .collect();
    assert_eq!(
        titles,
        [
            "setup: percentiles per interval",
            "Calls in progress at the end of each interval",
            "Failures per interval"
        ]
    );
    // The per-fault figures.
    for figure in [
        "99 calls: p50 5.0, p99 7.0",
        "97 calls: p50 220.0, p99 221.0",
        "209.0 (bound 220.0)",
        "abc@host",
    ] {
        assert!(page.contains(figure), "{figure}");
    }
    // The load's intervals (0..20 s on its clock) are shifted onto the cluster's clock: the
    // first point is at 3.5 s, left of the fault at 14.05 s by 10.55 s of axis.
    let calls = series(&all, "calls in progress")[0];
    let pts = points(calls.attr("points").unwrap_or_default()).expect("parse");
    assert_eq!(pts.len(), 20);
    let svg = &chart(&all, "Calls in progress at the end of each interval")[0];
    let (x_min, x_max) = (range(svg, "data-x-min"), range(svg, "data-x-max"));
    let px = |t: f64| LEFT + (t - x_min) / (x_max - x_min) * (WIDTH - LEFT - RIGHT);
    assert!(
        (pts[0].0 - px(3.5)).abs() < 0.2,
        "{} vs {}",
        pts[0].0,
        px(3.5)
    );
    assert!(x_max >= 22.5);
    // Without the load's start the page says it draws on the load's clock.
    let unaligned = drill(&drill_report(None));
    checked(&unaligned);
    assert!(unaligned.contains("on the load's own clock"));
}

const SMALL_PLAN: &str = r#"
name = "small <plan>"
seed = 5
duration = "30m"
warmup = "5m"
[[pool]]
role = "media"
servers = 3
capacity = 200
[[pool]]
role = "ivr"
servers = 2
capacity = 50
[traffic.calls]
rate = "2/s"
hold = "120s"
[traffic.ivr]
rate = "0.5/s"
hold = "60s"
[slo]
blocking = 0.01
[[fault]]
at = "15m"
action = "fail"
server = "media-1"
"#;

#[test]
fn a_plan_page_draws_each_servers_utilisation_and_blocking_with_its_interval() {
    let scenario = pbxlab_scenario::Scenario::from_toml("<small>", SMALL_PLAN).expect("valid");
    let report = pbxlab_sim::simulate(
        &scenario,
        pbxlab_sim::Options {
            no_wall_clock: true,
            ..pbxlab_sim::Options::default()
        },
    )
    .expect("runs");
    let v = serde_json::to_value(&report).expect("json");
    let page = plan(&v);
    let all = checked(&page);
    assert!(page.contains("small &lt;plan&gt;"));
    // A utilisation chart per role and the blocking chart.
    assert_eq!(count(&all, "svg"), 3, "{page}");
    for s in &report.servers {
        let lines = series(&all, &s.name);
        assert_eq!(lines.len(), 1, "{}", s.name);
        assert_eq!(
            lines[0].attr("data-points"),
            Some(s.timeline.len().to_string().as_str())
        );
    }
    assert_eq!(report.servers[0].timeline.len(), 200);
    // The fault on the media chart, the warm-up band, and a whisker per role with an interval.
    assert!(page.contains("fail media-1"));
    assert_eq!(count_class(&all, "rect", "band"), 2);
    assert_eq!(
        count_class(&all, "line", "target"),
        2 + 1,
        "a target per role and the legend's"
    );
    // Without timelines (an older report) the charts of time go, the rest stays.
    let mut older = v.clone();
    if let Some(servers) = older["servers"].as_array_mut() {
        for s in servers {
            if let Some(o) = s.as_object_mut() {
                o.remove("timeline");
            }
        }
    }
    let all = checked(&plan(&older));
    assert_eq!(count(&all, "svg"), 1);
}

fn count_class(all: &[Element], name: &str, class: &str) -> usize {
    all.iter()
        .filter(|e| e.name == name && e.attr("class") == Some(class))
        .count()
}

#[test]
fn a_sizing_page_gives_the_sizes_the_evidence_and_the_bill_of_materials() {
    let trial = |servers: u32, blocking: f64| {
        json!({"servers": servers, "duration_s": 3600.0, "warmup_s": 600.0, "offered": 10000, "blocked": 1,
               "blocking": blocking, "blocking_ci95": 0.001, "blocking_upper95": blocking + 0.001, "verdict": "meets"})
    };
    let bom = json!({"peak_sessions": 900, "cores": 8, "ram_gb": 16, "disk_gb": 100, "network_in_mbps": 80.0, "network_out_mbps": 80.0});
    let v = json!({
        "scenario": HOSTILE, "seed": 1, "interrupted": false, "all_met": true,
        "roles": [{
            "role": "media", "servers_now": 3, "status": "met", "servers_needed": 4, "minimal": true,
            "capacity_per_server": 1000, "met": true, "blocking_target": 0.01, "blocking_limit": 0.01,
            "blocking_one_down": 0.004, "blocking_one_down_ci95": 0.001, "blocking_one_down_upper95": 0.005,
            "duration_s": 3600.0, "warmup_s": 600.0, "start": 3, "start_basis": "Erlang B",
            "tried": [trial(3, 0.03), trial(4, 0.004)], "per_server": bom, "total": bom
        }],
        "agents": null,
        "assumptions": {"kbps_per_direction": 87.2}
    });
    let page = plan(&v);
    let all = checked(&page);
    assert!(!page.contains(HOSTILE));
    assert_eq!(count(&all, "svg"), 2, "the interval chart and the trials");
    assert_eq!(series(&all, "upper 95%")[0].attr("data-points"), Some("2"));
    assert!(page.contains("Bill of materials"));
    assert!(page.contains("every role has a size"));
}

/// `v` with every string in it, and every key of the maps whose keys are names (metrics,
/// failures), replaced by markup.
fn hostile(v: &Value) -> Value {
    match v {
        Value::String(_) => Value::String(HOSTILE.into()),
        Value::Array(a) => Value::Array(a.iter().map(hostile).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), hostile(x)))
                .chain(
                    ["metrics", "failures", "messages"]
                        .into_iter()
                        .filter(|k| o.contains_key(*k))
                        .map(|k| (k.to_owned(), json!({HOSTILE: {"count": 1, "p50_us": 5}}))),
                )
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn markup_in_any_string_of_a_report_is_shown_escaped() {
    let scenario = pbxlab_scenario::Scenario::from_toml("<small>", SMALL_PLAN).expect("valid");
    let plan_report =
        pbxlab_sim::simulate(&scenario, pbxlab_sim::Options::default()).expect("runs");
    let plan_value = serde_json::to_value(&plan_report).expect("json");
    for (render, v) in [
        (load as fn(&Value) -> String, load_report(4)),
        (drill, drill_report(Some(1.0))),
        (plan, plan_value),
    ] {
        let mut v = hostile(&v);
        if let Some(o) = v.as_object_mut() {
            o.insert("faults_planned".into(), json!(HOSTILE));
            o.insert("seed".into(), json!(HOSTILE));
        }
        let page = render(&v);
        checked(&page);
        assert!(!page.contains(HOSTILE), "markup got through:\n{page}");
        assert!(page.contains("&lt;script&gt;"));
    }
}
