//! `--html FILE`: a report as one self-contained page (inline SVG and an inline style sheet; no
//! script, no font, no address fetched), rendered from the very JSON value `--json` writes, so
//! any report in that schema can be drawn, a merged one included.
//!
//! Fields a report may lack (an older or a newer schema: `rtp.mos`, `metrics.*.p95_us`,
//! `intervals`, `servers[].timeline`) are drawn when present and left out when not; nothing in
//! the value can make these functions panic or break the page. Every string taken from the
//! value is escaped.

mod svg;

#[cfg(test)]
mod check;

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

use crate::BadInput;
use svg::{Interval, LineChart, Mark, Series, esc};

/// Checks before a run that `--html` names a file that can be written.
pub(crate) fn writable(path: Option<&PathBuf>) -> Result<(), BadInput> {
    if path.is_some_and(|p| p.as_os_str() == "-") {
        return Err(BadInput(
            "--html -: a page goes to a file; name one (e.g. --html report.html)".into(),
        ));
    }
    crate::writable("--html", path)
}

/// Writes the page `render` makes of `value` to `path`, if one was given.
pub(crate) fn write(
    path: Option<&PathBuf>,
    value: &Value,
    render: fn(&Value) -> String,
) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    crate::write_atomic(path, render(value).as_bytes())
}

/// The page of a `pbxlab load` report (`LoadReport` as JSON).
pub(crate) fn load(v: &Value) -> String {
    let mut p = Page::new(&format!("pbxlab load: {}", text(v, "target")));
    let mut head = vec![
        format!("target {}", esc(&text(v, "target"))),
        format!("{} s", fixed(num(v, "duration_s"), 1)),
        format!("seed {}", esc(&bare(&v["seed"]))),
    ];
    // A merged report (`pbxlab merge`) names the shards it adds up, and those it lacks.
    if let Some(shards) = v["shards"].as_array().filter(|s| !s.is_empty()) {
        let listed = |list: &[Value], key: Option<&str>| {
            list.iter()
                .map(|s| bare(key.map_or(s, |k| &s[k])))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut line = format!("shards {} merged", esc(&listed(shards, Some("index"))));
        if let Some(missing) = v["shards_missing"].as_array().filter(|m| !m.is_empty()) {
            line.push_str(&format!(
                " (<b>missing: {}</b>)",
                esc(&listed(missing, None))
            ));
        }
        head.push(line);
    }
    if v["interrupted"].as_bool() == Some(true) {
        head.push("<b>interrupted</b>".into());
    }
    p.heading(&format!("pbxlab load: {}", text(v, "target")), &head);
    if let Some(t) = v["thresholds"].as_array().filter(|t| !t.is_empty()) {
        let pass = t.iter().all(|t| t["pass"].as_bool() == Some(true));
        p.verdict(
            pass,
            if pass {
                "thresholds pass"
            } else {
                "thresholds FAIL"
            },
        );
    }
    p.section("Over time");
    match load_charts(v, 0.0, &[]) {
        Some(charts) => charts.iter().for_each(|(_, svg)| p.chart(svg)),
        None => p.note(NO_INTERVALS),
    }
    load_tables(&mut p, v);
    p.finish()
}

/// The page of a `pbxlab drill` report: its fault timeline over the load, the verdict per
/// fault, and the load's own report.
pub(crate) fn drill(v: &Value) -> String {
    let name = text(v, "scenario");
    let mut p = Page::new(&format!("pbxlab drill: {name}"));
    let verdict = text(v, "verdict");
    p.heading(
        &format!("pbxlab drill: {name}"),
        &[
            format!("seed {}", esc(&bare(&v["seed"]))),
            format!(
                "{} of {} planned faults injected",
                v["faults"].as_array().map_or(0, Vec::len),
                esc(&plain(&v["faults_planned"]))
            ),
        ],
    );
    p.verdict(
        verdict == "pass" || (verdict.is_empty() && v["pass"].as_bool() == Some(true)),
        &match verdict.as_str() {
            "pass" => "PASS: every SLO held".to_owned(),
            "fail" => "FAIL: an SLO broke".to_owned(),
            "invalid" => "INVALID: an SLO broke while pbxlab itself fell behind".to_owned(),
            other => esc(other),
        },
    );
    // Fault times are on the cluster's clock, the load's intervals on the load's: the drill
    // gives where the load started on the cluster's clock.
    let offset = v["load_start_s"].as_f64();
    p.note(&match offset {
        Some(o) => format!(
            "Times are seconds on the cluster's clock; the load started at {} s on it, and its intervals are drawn shifted by that.",
            fixed(o, 3)
        ),
        None => "Times are seconds; this report does not give where the load started on the cluster's clock, so its intervals are drawn on the load's own clock.".to_owned(),
    });
    let faults = v["faults"].as_array().map_or(&[][..], Vec::as_slice);
    let mut marks = Vec::new();
    for f in faults {
        let Some(at) = f["at_s"].as_f64() else {
            continue;
        };
        let server = text(f, "server");
        marks.push(Mark {
            at,
            label: format!("{} {server}", text(f, "action")),
            dashed: false,
        });
        if let Some(d) = f["detection_us"].as_f64() {
            marks.push(Mark {
                at: at + d / 1e6,
                label: format!("detected after {} ms", fixed(d / 1000.0, 0)),
                dashed: true,
            });
        }
    }
    let load = &v["load"];
    // The drill's timeline first (setup, calls up, failures), the rest of the load's below.
    let charts = load_charts(load, offset.unwrap_or(0.0), &marks);
    let first = ["metric setup", "calls up", "failures"];
    p.section("Timeline");
    match &charts {
        Some(charts) => {
            for key in first {
                if let Some((_, svg)) = charts.iter().find(|(k, _)| k == key) {
                    p.chart(svg);
                }
            }
        }
        None => p.note(NO_INTERVALS),
    }

    p.section("Faults");
    let ms_of = |x: &Value, key: &str| x[key].as_f64().map(|us| fixed(us / 1000.0, 1));
    let rows = faults
        .iter()
        .map(|f| {
            let detection = match (ms_of(f, "detection_us"), ms_of(f, "detection_bound_us")) {
                (Some(d), Some(b)) => format!("{d} (bound {b})"),
                (Some(d), None) => d,
                (None, Some(b)) => format!("not detected (bound {b})"),
                (None, None) => "-".into(),
            };
            let spread = |x: &Value| {
                if x["count"].as_u64().unwrap_or(0) == 0 {
                    "none".to_owned()
                } else {
                    format!(
                        "{} calls: p50 {}, p99 {}, max {}",
                        plain(&x["count"]),
                        ms_of(x, "p50_us").unwrap_or_default(),
                        ms_of(x, "p99_us").unwrap_or_default(),
                        ms_of(x, "max_us").unwrap_or_default()
                    )
                }
            };
            let dropped = f["dropped"].as_array().map_or(0, Vec::len);
            vec![
                fixed(num(f, "at_s"), 3),
                text(f, "action"),
                text(f, "server"),
                detection,
                spread(&f["reassignment"]),
                dropped.to_string(),
                spread(&f["media_gap"]),
                pass_word(&f["during"]["pass"]),
                pass_word(&f["after"]["pass"]),
                [
                    strings(&f["broken"]).join("; "),
                    f["error"].as_str().unwrap_or_default().to_owned(),
                ]
                .join(" ")
                .trim()
                .to_owned(),
            ]
        })
        .collect::<Vec<_>>();
    p.table(
        &[
            "at (s)",
            "action",
            "server",
            "detection (ms)",
            "reassignment (ms)",
            "dropped",
            "media gap (ms)",
            "during",
            "after",
            "broken",
        ],
        &rows,
    );
    let mut phases = Vec::new();
    if v["steady"].is_object() {
        phases.push(("steady state".to_owned(), &v["steady"]));
    }
    for f in faults {
        let what = format!("{} {}", text(f, "action"), text(f, "server"));
        phases.push((format!("during {what}"), &f["during"]));
        phases.push((format!("after {what}"), &f["after"]));
    }
    let rows = phases
        .iter()
        .filter(|(_, ph)| ph.is_object())
        .map(|(name, ph)| {
            vec![
                name.clone(),
                format!(
                    "{} - {}",
                    fixed(num(ph, "from_s"), 1),
                    fixed(num(ph, "to_s"), 1)
                ),
                plain(&ph["calls_failed"]),
                ph["setup_p99_max_us"]
                    .as_f64()
                    .map_or_else(String::new, |us| fixed(us / 1000.0, 1)),
                plain(&ph["min_active_calls"]),
                pass_word(&ph["pass"]),
                strings(&ph["broken"]).join("; "),
            ]
        })
        .collect::<Vec<_>>();
    if !rows.is_empty() {
        p.section("SLOs by phase");
        p.table(
            &[
                "phase",
                "window (s)",
                "calls failed",
                "worst setup p99 (ms)",
                "fewest calls up",
                "verdict",
                "broken",
            ],
            &rows,
        );
    }
    let mut dropped = Vec::new();
    for f in faults {
        for d in f["dropped"].as_array().map_or(&[][..], Vec::as_slice) {
            dropped.push(vec![
                format!("{} {}", text(f, "action"), text(f, "server")),
                text(d, "call_id"),
                text(d, "reason"),
            ]);
        }
    }
    if !dropped.is_empty() {
        p.section("Dropped calls");
        let shown = dropped.len().min(MAX_ROWS);
        if shown < dropped.len() {
            p.note(&format!("The first {shown} of {}.", dropped.len()));
        }
        p.table(&["fault", "Call-ID", "reason"], &dropped[..shown]);
    }
    let events = strings(&v["events"]);
    if !events.is_empty() {
        p.section("Cluster events");
        p.list(&events);
    }
    p.saturation(&v["emulator"]);
    let rest: Vec<&String> = charts
        .iter()
        .flatten()
        .filter(|(k, _)| !first.contains(&k.as_str()))
        .map(|(_, svg)| svg)
        .collect();
    if !rest.is_empty() {
        p.section("The load's other figures over time");
        rest.iter().for_each(|svg| p.chart(svg));
    }
    p.section("The load");
    load_tables(&mut p, load);
    p.finish()
}

/// The page of a `pbxlab plan` report (`Report` as JSON), or of a `plan --size` one (`Sizing`).
pub(crate) fn plan(v: &Value) -> String {
    if v.get("assumptions").is_some() || v["roles"].is_array() {
        return sizing(v);
    }
    let name = text(v, "scenario");
    let mut p = Page::new(&format!("pbxlab plan: {name}"));
    let duration = num(v, "duration_s");
    let unit = TimeUnit::for_span(duration);
    let mut head = vec![
        format!("seed {}", esc(&bare(&v["seed"]))),
        format!("{} simulated", esc(&human(num(v, "simulated_s")))),
        format!("warm-up {}", esc(&human(num(v, "warmup_s")))),
        format!("{} events", thousands(num(v, "events"))),
    ];
    if v["interrupted"].as_bool() == Some(true) {
        head.push(format!(
            "<b>interrupted</b> at {} of {}",
            esc(&human(num(v, "simulated_s"))),
            esc(&human(duration))
        ));
    }
    p.heading(&format!("pbxlab plan: {name}"), &head);
    let slo = v["slo"].as_array().map_or(&[][..], Vec::as_slice);
    if !slo.is_empty() {
        let pass = slo.iter().all(|s| s["pass"].as_bool() == Some(true));
        p.verdict(
            pass,
            if pass {
                "every SLO met"
            } else {
                "an SLO is NOT met"
            },
        );
    }

    let servers = v["servers"].as_array().map_or(&[][..], Vec::as_slice);
    let bucket_s = v["timeline_bucket_s"].as_f64().filter(|b| *b > 0.0);
    let faults = v["faults"].as_array().map_or(&[][..], Vec::as_slice);
    let roles: Vec<String> = match v["roles"].as_object() {
        Some(r) => r.keys().cloned().collect(),
        None => Vec::new(),
    };
    if let Some(bucket_s) = bucket_s {
        p.section("Utilisation per server over simulated time");
        for role in &roles {
            let members: Vec<&Value> = servers
                .iter()
                .filter(|s| text(s, "role") == *role)
                .collect();
            let mut chart = LineChart::new(
                &format!("{role}: sessions as a share of each server's capacity"),
                &format!("simulated time ({})", unit.name),
                "utilisation (%)",
            );
            chart.steps = true;
            chart.y_floor_max = 100.0;
            chart.x_span = Some((0.0, duration / unit.seconds));
            let warmup = num(v, "warmup_s");
            if warmup > 0.0 {
                chart.band = Some((0.0, warmup / unit.seconds, "warm-up".into()));
            }
            for s in &members {
                let capacity = num(s, "capacity").max(1.0);
                let Some(t) = s["timeline"].as_array() else {
                    continue;
                };
                chart.series.push(Series {
                    name: text(s, "name"),
                    points: t
                        .iter()
                        .enumerate()
                        .filter_map(|(i, m)| {
                            let at = i as f64 * bucket_s / unit.seconds;
                            Some((at, 100.0 * m.as_f64()? / capacity))
                        })
                        .collect(),
                });
            }
            let names: Vec<String> = members.iter().map(|s| text(s, "name")).collect();
            for f in faults.iter().filter(|f| names.contains(&text(f, "server"))) {
                chart.marks.push(Mark {
                    at: num(f, "at_s") / unit.seconds,
                    label: format!("{} {}", text(f, "action"), text(f, "server")),
                    dashed: false,
                });
            }
            if chart.has_data() {
                p.chart(&chart.render());
            }
        }
    }

    let target = |role: &str| {
        slo.iter()
            .find(|s| text(s, "name") == format!("{role}.blocking"))
            .and_then(|s| s["target"].as_f64())
    };
    let rows: Vec<Interval> = roles
        .iter()
        .map(|role| {
            let r = &v["roles"][role];
            let b = num(r, "blocking");
            let ci = r["blocking_ci95"].as_f64().unwrap_or(f64::NAN);
            Interval {
                label: role.clone(),
                value: b,
                lo: b - ci,
                hi: b + ci,
                target: target(role),
            }
        })
        .collect();
    if !rows.is_empty() {
        p.section("Blocking");
        p.chart(&svg::interval_chart(
            "Blocking per role, with its batch-means 95% interval, against the SLO",
            "blocking (share of sessions offered)",
            &rows,
            true,
        ));
        let rows = roles
            .iter()
            .map(|role| {
                let r = &v["roles"][role];
                vec![
                    role.clone(),
                    plain(&r["servers"]),
                    thousands(num(r, "capacity")),
                    thousands(num(r, "offered")),
                    thousands(num(r, "blocked")),
                    format!(
                        "{}{}",
                        percent(num(r, "blocking")),
                        r["blocking_ci95"]
                            .as_f64()
                            .map_or_else(String::new, |c| format!(" ± {}", percent(c)))
                    ),
                    r["erlang_b"].as_f64().map_or_else(|| "-".into(), percent),
                    thousands(num(r, "dropped")),
                    fixed(num(r, "mean_sessions"), 1),
                    thousands(num(r, "peak_sessions")),
                    percent(num(r, "utilisation")),
                ]
            })
            .collect::<Vec<_>>();
        p.table(
            &[
                "role",
                "servers",
                "capacity",
                "offered",
                "blocked",
                "blocking (95%)",
                "Erlang B",
                "dropped",
                "mean sessions",
                "peak",
                "utilisation",
            ],
            &rows,
        );
    }
    if !servers.is_empty() {
        p.section("Servers");
        let rows = servers
            .iter()
            .map(|s| {
                vec![
                    text(s, "name"),
                    text(s, "role"),
                    plain(&s["capacity"]),
                    text(s, "state"),
                    fixed(num(s, "mean_sessions"), 1),
                    plain(&s["peak_sessions"]),
                    percent(num(s, "utilisation")),
                ]
            })
            .collect::<Vec<_>>();
        p.table(
            &[
                "server",
                "role",
                "capacity",
                "state",
                "mean sessions",
                "peak",
                "utilisation",
            ],
            &rows,
        );
    }
    if !faults.is_empty() {
        p.section("Faults");
        let rows = faults
            .iter()
            .map(|f| {
                vec![
                    esc(&human(num(f, "at_s"))),
                    text(f, "action"),
                    text(f, "server"),
                    plain(&f["sessions_affected"]),
                    plain(&f["reassigned"]),
                    plain(&f["dropped"]),
                    f["detected_after_s"]
                        .as_f64()
                        .map_or_else(|| "-".into(), |d| format!("{} s", fixed(d, 2))),
                    if f["alert"].as_bool() == Some(true) {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                ]
            })
            .collect::<Vec<_>>();
        p.table(
            &[
                "at",
                "action",
                "server",
                "sessions",
                "reassigned",
                "dropped",
                "detected after",
                "alert",
            ],
            &rows,
        );
    }
    slo_table(&mut p, slo);
    p.note("The smallest cluster that meets the SLOs with one server of each role down, and its bill of materials: <code>pbxlab plan --size --html FILE</code>.");
    if let Some(r) = v["registrations"].as_object() {
        p.section("Registrations");
        p.pairs(r.iter().map(|(k, x)| (k.clone(), plain(x))));
    }
    let warnings = strings(&v["warnings"]);
    if !warnings.is_empty() {
        p.section("Warnings");
        p.list(&warnings);
    }
    p.finish()
}

/// The page of a `plan --size` report: what to buy per role, the evidence behind it.
fn sizing(v: &Value) -> String {
    let name = text(v, "scenario");
    let mut p = Page::new(&format!("pbxlab plan --size: {name}"));
    let mut head = vec![format!("seed {}", esc(&bare(&v["seed"])))];
    if v["interrupted"].as_bool() == Some(true) {
        head.push("<b>interrupted</b>: roles not decided are listed as such".into());
    }
    p.heading(&format!("pbxlab plan --size: {name}"), &head);
    let met = v["all_met"].as_bool() == Some(true);
    p.verdict(
        met,
        if met {
            "every role has a size that meets its SLO with one server down (N+1)"
        } else {
            "some role has NO size established"
        },
    );
    let roles = v["roles"].as_array().map_or(&[][..], Vec::as_slice);
    let rows: Vec<Interval> = roles
        .iter()
        .filter_map(|r| {
            let b = r["blocking_one_down"].as_f64()?;
            let ci = r["blocking_one_down_ci95"].as_f64().unwrap_or(f64::NAN);
            Some(Interval {
                label: format!(
                    "{} ({})",
                    text(r, "role"),
                    r["servers_needed"]
                        .as_u64()
                        .map_or_else(|| "no size".into(), |n| format!("{n} servers"))
                ),
                value: b,
                lo: b - ci,
                hi: r["blocking_one_down_upper95"].as_f64().unwrap_or(b + ci),
                target: r["blocking_limit"].as_f64(),
            })
        })
        .collect();
    if !rows.is_empty() {
        p.chart(&svg::interval_chart(
            "Blocking with one server down at the size chosen, up to its 95% upper bound, against the limit",
            "blocking (share of sessions offered)",
            &rows,
            true,
        ));
    }
    p.section("Sizes");
    let table = roles
        .iter()
        .map(|r| {
            vec![
                text(r, "role"),
                plain(&r["servers_now"]),
                r["servers_needed"]
                    .as_u64()
                    .map_or_else(|| "-".into(), |n| n.to_string()),
                text(r, "status"),
                plain(&r["capacity_per_server"]),
                r["blocking_one_down"].as_f64().map_or_else(
                    || "-".into(),
                    |b| {
                        format!(
                            "{}{}",
                            percent(b),
                            r["blocking_one_down_ci95"]
                                .as_f64()
                                .map_or_else(String::new, |c| format!(" ± {}", percent(c)))
                        )
                    },
                ),
                r["blocking_one_down_upper95"]
                    .as_f64()
                    .map_or_else(|| "-".into(), percent),
                percent(num(r, "blocking_limit")),
                r["duration_s"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |d| esc(&human(d))),
            ]
        })
        .collect::<Vec<_>>();
    p.table(
        &[
            "role",
            "servers now",
            "servers needed",
            "status",
            "capacity each",
            "blocking one down",
            "upper 95%",
            "limit",
            "run",
        ],
        &table,
    );
    for r in roles {
        let tried = r["tried"].as_array().map_or(&[][..], Vec::as_slice);
        if tried.len() < 2 {
            continue;
        }
        let mut chart = LineChart::new(
            &format!(
                "{}: blocking of each count tried (one server down)",
                text(r, "role")
            ),
            "servers",
            "blocking (%)",
        );
        let point = |t: &Value, key: &str| Some((t["servers"].as_f64()?, 100.0 * t[key].as_f64()?));
        let mut sorted: Vec<&Value> = tried.iter().collect();
        sorted.sort_by(|a, b| num(a, "servers").total_cmp(&num(b, "servers")));
        chart.series.push(Series {
            name: "upper 95%".into(),
            points: sorted
                .iter()
                .filter_map(|t| point(t, "blocking_upper95"))
                .collect(),
        });
        chart.series.push(Series {
            name: "blocking".into(),
            points: sorted.iter().filter_map(|t| point(t, "blocking")).collect(),
        });
        if let (Some(limit), Some(first), Some(last)) =
            (r["blocking_limit"].as_f64(), sorted.first(), sorted.last())
        {
            chart.series.push(Series {
                name: "limit".into(),
                points: vec![
                    (num(first, "servers"), 100.0 * limit),
                    (num(last, "servers"), 100.0 * limit),
                ],
            });
        }
        p.chart(&chart.render());
    }
    let boms: Vec<Vec<String>> = roles
        .iter()
        .flat_map(|r| {
            [("each", &r["per_server"]), ("total", &r["total"])]
                .into_iter()
                .filter(|(_, b)| b.is_object())
                .map(|(which, b)| {
                    vec![
                        text(r, "role"),
                        which.to_owned(),
                        plain(&b["peak_sessions"]),
                        plain(&b["cores"]),
                        plain(&b["ram_gb"]),
                        plain(&b["disk_gb"]),
                        fixed(num(b, "network_in_mbps"), 1),
                        fixed(num(b, "network_out_mbps"), 1),
                    ]
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if !boms.is_empty() {
        p.section("Bill of materials");
        p.table(
            &[
                "role",
                "",
                "peak sessions",
                "cores",
                "RAM (GB)",
                "disk (GB)",
                "network in (Mbit/s)",
                "network out (Mbit/s)",
            ],
            &boms,
        );
    }
    if let Some(a) = v["agents"].as_object() {
        p.section("Queue agents");
        p.pairs(a.iter().map(|(k, x)| (k.clone(), plain(x))));
    }
    if let Some(a) = v["assumptions"].as_object() {
        p.section("Assumptions");
        p.pairs(a.iter().map(|(k, x)| (k.clone(), plain(x))));
    }
    p.finish()
}

const NO_INTERVALS: &str = "This report has no intervals: nothing to draw over time.";

/// Rows beyond this in a list of dropped calls are counted, not shown.
const MAX_ROWS: usize = 200;

/// The load's charts over time: percentiles per metric, attempt rates, failures and calls in
/// progress, each interval drawn at its end, `offset` seconds later.
fn load_charts(v: &Value, offset: f64, marks: &[Mark]) -> Option<Vec<(String, String)>> {
    let intervals = v["intervals"].as_array().filter(|i| !i.is_empty())?;
    let mut charts = Vec::new();
    let at = |i: &Value| offset + num(i, "start_s") + num(i, "length_s");
    // Every chart over time spans the whole run, so that they line up one above the other.
    let span = intervals
        .iter()
        .flat_map(|i| [offset + num(i, "start_s"), at(i)])
        .filter(|t| t.is_finite())
        .fold(None, |acc: Option<(f64, f64)>, t| {
            Some(acc.map_or((t, t), |(a, b)| (a.min(t), b.max(t))))
        });
    let marked = |mut c: LineChart| {
        c.x_span = span;
        c.marks = marks
            .iter()
            .map(|m| Mark {
                at: m.at,
                label: m.label.clone(),
                dashed: m.dashed,
            })
            .collect();
        c
    };
    let mut names: Vec<String> = Vec::new();
    for i in intervals {
        if let Some(m) = i["metrics"].as_object() {
            for k in m.keys() {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
    }
    // The totals' order (setup first), then any only the intervals have.
    if let Some(totals) = v["metrics"].as_object() {
        let order: Vec<&String> = totals.keys().collect();
        names.sort_by_key(|n| order.iter().position(|o| *o == n).unwrap_or(usize::MAX));
    }
    // Setup first: the figure a drill's SLO and most thresholds are about.
    if let Some(k) = names.iter().position(|n| n == "setup") {
        let setup = names.remove(k);
        names.insert(0, setup);
    }
    for name in &names {
        let mut chart = marked(LineChart::new(
            &format!("{name}: percentiles per interval"),
            "time (s)",
            "latency (ms)",
        ));
        for q in ["p50_us", "p90_us", "p95_us", "p99_us"] {
            let points: Vec<(f64, f64)> = intervals
                .iter()
                .filter_map(|i| Some((at(i), i["metrics"][name][q].as_f64()? / 1000.0)))
                .collect();
            if !points.is_empty() {
                chart.series.push(Series {
                    name: q.trim_end_matches("_us").to_owned(),
                    points,
                });
            }
        }
        if chart.has_data() {
            charts.push((format!("metric {name}"), chart.render()));
        }
    }
    let series = |name: &str, f: &dyn Fn(&Value) -> Option<f64>| Series {
        name: name.to_owned(),
        points: intervals
            .iter()
            .filter_map(|i| Some((at(i), f(i)?)))
            .collect(),
    };
    let any =
        |f: &dyn Fn(&Value) -> Option<f64>| intervals.iter().any(|i| f(i).unwrap_or(0.0) > 0.0);

    let mut rates = marked(LineChart::new(
        "Attempts per second",
        "time (s)",
        "attempts / s",
    ));
    let calls = |i: &Value| i["call_rate_per_s"].as_f64();
    let regs = |i: &Value| i["register_rate_per_s"].as_f64();
    rates.series.push(series("calls", &calls));
    if any(&regs) {
        rates.series.push(series("registrations", &regs));
    }
    charts.push(("rates".into(), rates.render()));

    let mut failures = marked(LineChart::new(
        "Failures per interval",
        "time (s)",
        "attempts per interval",
    ));
    let calls_failed = |i: &Value| i["calls"]["failed"].as_f64();
    let regs_failed = |i: &Value| i["registrations"]["failed"].as_f64();
    let abandoned = |i: &Value| i["calls"]["abandoned"].as_f64();
    failures.series.push(series("calls failed", &calls_failed));
    if any(&regs_failed) {
        failures
            .series
            .push(series("registrations failed", &regs_failed));
    }
    if any(&abandoned) {
        failures.series.push(series("calls abandoned", &abandoned));
    }
    // The commonest reasons, each its own line.
    let mut reasons: Vec<(String, f64)> = Vec::new();
    for i in intervals {
        for (r, n) in i["failures"].as_object().into_iter().flatten() {
            let n = n.as_f64().unwrap_or(0.0);
            match reasons.iter_mut().find(|(x, _)| x == r) {
                Some(e) => e.1 += n,
                None => reasons.push((r.clone(), n)),
            }
        }
    }
    reasons.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (reason, _) in reasons.iter().take(4) {
        let f = |i: &Value| Some(i["failures"][reason].as_f64().unwrap_or(0.0));
        failures.series.push(series(reason, &f));
    }
    charts.push(("failures".into(), failures.render()));

    let mut up = marked(LineChart::new(
        "Calls in progress at the end of each interval",
        "time (s)",
        "calls",
    ));
    let concurrent = |i: &Value| i["concurrent_calls"].as_f64();
    up.series.push(series("calls in progress", &concurrent));
    charts.push(("calls up".into(), up.render()));

    // RTP over time, in a run with RTP: loss and jitter, each on its own axis.
    if intervals.iter().any(|i| i["rtp"].is_object()) {
        let mut loss = marked(LineChart::new(
            "RTP loss per interval",
            "time (s)",
            "% of packets expected",
        ));
        let lost = |i: &Value| Some(i["rtp"]["loss_fraction"].as_f64()? * 100.0);
        loss.series.push(series("lost (RFC 3550)", &lost));
        let late = |i: &Value| {
            let r = &i["rtp"];
            let expected = r["packets_expected"].as_f64().filter(|e| *e > 0.0)?;
            Some(r["late_packets"].as_f64()? / expected * 100.0)
        };
        if any(&late) {
            loss.series
                .push(series("late for the playout buffer", &late));
        }
        charts.push(("rtp loss".into(), loss.render()));

        let mut jitter = marked(LineChart::new(
            "RTP jitter per interval",
            "time (s)",
            "jitter (ms)",
        ));
        let p99 = |i: &Value| Some(i["rtp"]["jitter_p99_us"].as_f64()? / 1000.0);
        jitter.series.push(series("p99 over the streams", &p99));
        charts.push(("rtp jitter".into(), jitter.render()));
    }
    Some(charts)
}

/// The load's totals: calls, registrations, latencies, failures, RTP and thresholds.
fn load_tables(p: &mut Page, v: &Value) {
    p.section("Totals");
    let outcome = |o: &Value| {
        format!(
            "{} attempted, {} succeeded, {} failed, {} abandoned",
            thousands(num(o, "attempted")),
            thousands(num(o, "succeeded")),
            thousands(num(o, "failed")),
            thousands(num(o, "abandoned"))
        )
    };
    let mut pairs = vec![
        ("calls".to_owned(), outcome(&v["calls"])),
        ("registrations".to_owned(), outcome(&v["registrations"])),
    ];
    for key in [
        "peak_concurrent_calls",
        "registrations_refreshed",
        "messages_received",
        "malformed",
        "stray",
    ] {
        if let Some(x) = v.get(key) {
            pairs.push((key.replace('_', " "), plain(x)));
        }
    }
    if let Some(m) = v["messages"].as_object() {
        for (k, x) in m {
            pairs.push((format!("messages: {k}"), plain(x)));
        }
    }
    p.pairs(pairs.into_iter());

    if let Some(metrics) = v["metrics"].as_object().filter(|m| !m.is_empty()) {
        p.section("Latency (ms)");
        let columns: Vec<&str> = [
            "min_us", "p50_us", "p90_us", "p95_us", "p99_us", "p999_us", "max_us", "mean_us",
        ]
        .into_iter()
        .filter(|c| metrics.values().any(|m| m.get(*c).is_some()))
        .collect();
        let mut head = vec!["metric", "count"];
        head.extend(columns.iter().map(|c| c.trim_end_matches("_us")));
        let rows = metrics
            .iter()
            .map(|(name, m)| {
                let mut row = vec![name.clone(), thousands(num(m, "count"))];
                row.extend(columns.iter().map(|c| {
                    m[*c]
                        .as_f64()
                        .map_or_else(|| "-".into(), |us| fixed(us / 1000.0, 3))
                }));
                row
            })
            .collect::<Vec<_>>();
        p.table(&head, &rows);
    }
    if let Some(f) = v["failures"].as_object().filter(|f| !f.is_empty()) {
        p.section("Failures");
        let rows = f
            .iter()
            .map(|(reason, n)| vec![reason.clone(), plain(n)])
            .collect::<Vec<_>>();
        p.table(&["reason", "count"], &rows);
    }
    let rtp = &v["rtp"];
    if rtp.is_object() && num(rtp, "streams") > 0.0 {
        p.section("RTP");
        let mut pairs = vec![
            ("streams".to_owned(), thousands(num(rtp, "streams"))),
            (
                "packets sent".to_owned(),
                thousands(num(rtp, "packets_sent")),
            ),
            (
                "packets received".to_owned(),
                thousands(num(rtp, "packets_received")),
            ),
            (
                "loss (RFC 3550)".to_owned(),
                percent(num(rtp, "loss_fraction")),
            ),
            (
                "never came back".to_owned(),
                percent(num(rtp, "unreceived_fraction")),
            ),
            (
                "jitter p99".to_owned(),
                format!("{} ms", fixed(num(rtp, "jitter_p99_us") / 1000.0, 2)),
            ),
        ];
        let mos = &rtp["mos"];
        let figures = ["min", "p1", "p5", "p50", "mean", "max"];
        if mos.is_object() {
            pairs.push((
                "MOS".to_owned(),
                figures
                    .iter()
                    .filter_map(|f| Some(format!("{f} {:.2}", mos[*f].as_f64()?)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        p.pairs(pairs.into_iter());
        let bars: Vec<(String, f64)> = figures
            .iter()
            .filter_map(|f| Some(((*f).to_owned(), mos[*f].as_f64()?)))
            .collect();
        if !bars.is_empty() {
            p.chart(&svg::bar_chart(
                &format!(
                    "MOS over {} streams (E-model, 1 to 5)",
                    thousands(mos["streams"].as_f64().unwrap_or(num(rtp, "streams")))
                ),
                "MOS",
                &bars,
                1.0,
                5.0,
            ));
        }
    }
    if let Some(t) = v["thresholds"].as_array().filter(|t| !t.is_empty()) {
        p.section("Thresholds");
        let rows = t
            .iter()
            .map(|t| vec![text(t, "expr"), plain(&t["value"]), pass_word(&t["pass"])])
            .collect::<Vec<_>>();
        p.table(&["threshold", "value", "verdict"], &rows);
    }
    p.saturation(&v["emulator"]);
}

fn slo_table(p: &mut Page, slo: &[Value]) {
    if slo.is_empty() {
        return;
    }
    p.section("SLOs");
    let rows = slo
        .iter()
        .map(|s| {
            vec![
                text(s, "name"),
                fixed(num(s, "target"), 4),
                fixed(num(s, "value"), 4),
                pass_word(&s["pass"]),
            ]
        })
        .collect::<Vec<_>>();
    p.table(&["SLO", "target", "value", "verdict"], &rows);
}

/// An HTML page being written: its body grows section by section.
struct Page {
    title: String,
    body: String,
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;background:#fff}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ccc}\
.meta{color:#555;margin:0 0 12px}.note{color:#555;font-size:13px}\
.verdict{display:inline-block;padding:6px 14px;font-weight:bold;color:#fff;border-radius:4px}\
.pass{background:#2a8a3a}.fail{background:#c62828}\
table{border-collapse:collapse;font-size:13px;margin:6px 0}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
th{background:#f0f0f0}td:first-child,th:first-child,td.t{text-align:left}\
svg.chart{display:block;margin:10px 0;max-width:100%;height:auto}\
svg text{font-family:sans-serif;fill:#222}svg .title{font-size:14px;font-weight:bold}\
svg .tick,svg .legend,svg .mark-label,svg .band-label{font-size:11px}svg .axis{font-size:12px}\
svg .grid{stroke:#e4e4e4;stroke-width:1}svg .frame{fill:none;stroke:#888}\
svg .mark{stroke:#c62828;stroke-width:1.5}svg .detected{stroke-dasharray:5 3}\
svg .band{fill:#eeeeee}svg .bar{fill:#1f77b4}svg .over{fill:#c62828}\
svg .whisker{stroke:#222;stroke-width:1.5}svg .target{stroke:#c62828;stroke-width:3}";

impl Page {
    fn new(title: &str) -> Page {
        Page {
            title: title.to_owned(),
            body: String::new(),
        }
    }

    /// The page's title and a line of facts, each already escaped.
    fn heading(&mut self, title: &str, facts: &[String]) {
        let _ = write!(
            self.body,
            "<h1>{}</h1><p class=\"meta\">{}</p>",
            esc(title),
            facts.join(" · ")
        );
    }

    /// A verdict in green or red; `words` already escaped.
    fn verdict(&mut self, pass: bool, words: &str) {
        let _ = write!(
            self.body,
            "<p><span class=\"verdict {}\">{words}</span></p>",
            if pass { "pass" } else { "fail" }
        );
    }

    fn section(&mut self, title: &str) {
        let _ = write!(self.body, "<h2>{}</h2>", esc(title));
    }

    /// A note; `words` already escaped.
    fn note(&mut self, words: &str) {
        let _ = write!(self.body, "<p class=\"note\">{words}</p>");
    }

    fn chart(&mut self, svg: &str) {
        self.body.push_str(svg);
    }

    /// A table; every cell is escaped here.
    fn table(&mut self, head: &[&str], rows: &[Vec<String>]) {
        self.body.push_str("<table><tr>");
        for h in head {
            let _ = write!(self.body, "<th>{}</th>", esc(h));
        }
        self.body.push_str("</tr>");
        for row in rows {
            self.body.push_str("<tr>");
            for cell in row {
                // Figures right-aligned, words left.
                let words = !cell.starts_with(|c: char| c.is_ascii_digit() || c == '-');
                let _ = write!(
                    self.body,
                    "<td{}>{}</td>",
                    if words { " class=\"t\"" } else { "" },
                    esc(cell)
                );
            }
            self.body.push_str("</tr>");
        }
        self.body.push_str("</table>");
    }

    /// A two-column table of names and values.
    fn pairs(&mut self, pairs: impl Iterator<Item = (String, String)>) {
        let rows: Vec<Vec<String>> = pairs.map(|(k, v)| vec![k, v]).collect();
        if !rows.is_empty() {
            self.body.push_str("<table>");
            for row in &rows {
                let _ = write!(
                    self.body,
                    "<tr><th>{}</th><td>{}</td></tr>",
                    esc(&row[0]),
                    esc(&row[1])
                );
            }
            self.body.push_str("</table>");
        }
    }

    fn list(&mut self, items: &[String]) {
        self.body.push_str("<ul>");
        for i in items.iter().take(MAX_ROWS) {
            let _ = write!(self.body, "<li>{}</li>", esc(i));
        }
        if items.len() > MAX_ROWS {
            let _ = write!(self.body, "<li>and {} more</li>", items.len() - MAX_ROWS);
        }
        self.body.push_str("</ul>");
    }

    /// pbxlab's own threads that fell behind, if any did: the figures then measure the machine.
    fn saturation(&mut self, drivers: &Value) {
        let late: Vec<String> = drivers
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["saturated"].as_bool() == Some(true))
            .map(|d| {
                format!(
                    "{}: {} ms behind at worst (at {} s), {} times past 50 ms, {} datagrams dropped by the kernel",
                    text(d, "driver"),
                    fixed(num(d, "worst_ms"), 0),
                    fixed(num(d, "worst_at_s"), 1),
                    plain(&d["behind"]),
                    plain(&d["kernel_drops"])
                )
            })
            .collect();
        if !late.is_empty() {
            self.section("pbxlab itself fell behind on this machine");
            self.list(&late);
        }
    }

    /// The whole document: XHTML-compatible markup, so its SVG parts are well-formed XML.
    fn finish(self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>{}</title><style>{STYLE}</style></head><body>{}<p class=\"note\">Written by pbxlab {}.</p></body></html>\n",
            esc(&self.title),
            self.body,
            env!("CARGO_PKG_VERSION")
        )
    }
}

/// A string field, or an empty one.
fn text(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A number field, 0 when absent or not a number.
fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// Any value as plain text (strings without their quotes, null as "-").
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Number(n) => match n.as_u64() {
            Some(i) => thousands(i as f64),
            None => n
                .as_f64()
                .map_or_else(|| n.to_string(), |f| format!("{}", (f * 1e6).round() / 1e6)),
        },
        other => other.to_string(),
    }
}

/// A value as it is written in the JSON, strings without their quotes: for identifiers such as
/// seeds, which take no thousands separators.
fn bare(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
        .collect()
}

fn pass_word(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "pass".into(),
        Some(false) => "FAIL".into(),
        None => "-".into(),
    }
}

fn fixed(x: f64, decimals: usize) -> String {
    format!("{x:.decimals$}")
}

fn percent(x: f64) -> String {
    let p = x * 100.0;
    if p != 0.0 && p.abs() < 0.01 {
        format!("{p:.4}%")
    } else {
        format!("{p:.2}%")
    }
}

/// 12400 as "12,400" (rounded to a whole number).
fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut o = String::new();
    if x < -0.5 {
        o.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            o.push(',');
        }
        o.push(c);
    }
    o
}

fn human(s: f64) -> String {
    pbxlab_sim::report::human_duration(s)
}

/// The unit of a plan's time axis: hours for runs of hours, minutes for minutes.
struct TimeUnit {
    name: &'static str,
    seconds: f64,
}

impl TimeUnit {
    fn for_span(span_s: f64) -> TimeUnit {
        if span_s >= 3.0 * 3600.0 {
            TimeUnit {
                name: "h",
                seconds: 3600.0,
            }
        } else if span_s >= 180.0 {
            TimeUnit {
                name: "min",
                seconds: 60.0,
            }
        } else {
            TimeUnit {
                name: "s",
                seconds: 1.0,
            }
        }
    }
}

#[cfg(test)]
mod tests;
