//! `--html` end to end: the pages the real commands write are well-formed and self-contained,
//! bad paths are refused before a run, an interrupted load still writes its page, and (with
//! `--ignored`, as CI runs it) headless Chromium draws each page into a screenshot that is not
//! blank and shows the charts' line colours. Every run is on loopback, bounded and stops by
//! itself.

mod common;
// The same checker the unit tests of the pages use; not every helper of it is needed here.
#[allow(dead_code)]
#[path = "../src/html/check.rs"]
mod check;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::Proc;

fn pbxlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pbxlab"))
}

/// A fresh folder for one test's files.
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pbxlab-html-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn drill_scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drill/small.toml")
}

/// The page at `path`, checked well-formed and self-contained; its number of `<svg>`s.
fn checked_page(path: &Path) -> (String, usize) {
    let page = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let all = check::elements(&page).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rest = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!rest.contains("http://") && !rest.contains("https://"));
    assert!(!rest.contains("<script"));
    let charts = all.iter().filter(|e| e.name == "svg").count();
    (page, charts)
}

#[test]
fn plan_writes_a_page_with_each_roles_utilisation_and_the_blocking() {
    let d = dir("plan");
    let html = d.join("plan.html");
    let json = d.join("plan.json");
    let out = pbxlab()
        .args(["plan", "--progress", "off", "--html"])
        .arg(&html)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
    let roles = v["roles"].as_object().expect("roles").len();
    let (page, charts) = checked_page(&html);
    assert_eq!(
        charts,
        roles + 1,
        "a utilisation chart per role and the blocking"
    );
    assert!(
        page.contains("fail media-2"),
        "the reference fault is marked"
    );
    for s in v["servers"].as_array().expect("servers") {
        let name = s["name"].as_str().expect("name");
        let timeline = s["timeline"].as_array().expect("timeline").len();
        assert!(
            page.contains(&format!(
                "data-series=\"{name}\" data-points=\"{timeline}\""
            )),
            "{name}"
        );
    }
}

#[test]
fn a_sizing_writes_a_page_with_the_sizes_and_the_bill_of_materials() {
    let d = dir("size");
    let html = d.join("size.html");
    let out = pbxlab()
        .arg("plan")
        .arg(drill_scenario())
        .args(["--size", "--progress", "off", "--html"])
        .arg(&html)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (page, charts) = checked_page(&html);
    assert_eq!(
        charts, 1,
        "the blocking of the size chosen (one count tried)"
    );
    for part in [
        "Sizes",
        "Bill of materials",
        "Assumptions",
        "every role has a size",
    ] {
        assert!(page.contains(part), "{part}");
    }
}

#[test]
fn bad_html_paths_are_refused_before_anything_runs() {
    let d = dir("refused");
    for (args, named) in [
        (vec!["plan", "--html", "-"], "--html -"),
        (
            vec!["plan", "--html", "/nonexistent/folder/x.html"],
            "/nonexistent/folder",
        ),
        (
            vec![
                "load",
                "--target",
                "127.0.0.1:9",
                "--html",
                d.to_str().expect("utf-8"),
            ],
            "is a folder",
        ),
        (
            vec!["drill", "--html", "/nonexistent/folder/x.html"],
            "/nonexistent/folder",
        ),
    ] {
        let out = pbxlab().args(&args).output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err}");
    }
}

/// A `pbxlab cluster` of the small drill's three media servers on a free loopback port, and
/// that port.
fn cluster(d: &Path) -> (Proc, u16) {
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
        .port();
    let mut cmd = pbxlab();
    cmd.arg("cluster")
        .arg(drill_scenario())
        .args(["--sip", &format!("127.0.0.1:{port}")])
        .args(["--for", "60s", "--status-every", "1h"])
        // The load's calls come unauthenticated from loopback.
        .args(["--trusted", "127.0.0.1"]);
    let mut proc = Proc::start(cmd, &d.join("cluster.log"));
    proc.wait_for_log("Call Manager on", Duration::from_secs(20));
    (proc, port)
}

/// `pbxlab load` of echo calls with RTP against `port`, with `more` flags, writing `html`.
fn load(port: u16, html: &Path, log: &Path, more: &[&str]) -> Proc {
    let mut cmd = pbxlab();
    cmd.args(["load", "--target", &format!("127.0.0.1:{port}")])
        .args([
            "--domain",
            "pbxlab.test",
            "--service",
            "echo",
            "--rtp",
            "1",
            "--hold",
            "1s",
        ])
        .args(["--threshold", "calls.failed==0", "--html"])
        .arg(html)
        .args(more);
    Proc::start(cmd, log)
}

#[test]
fn an_interrupted_load_still_writes_its_page() {
    let d = dir("interrupted");
    let (_cluster, port) = cluster(&d);
    let html = d.join("load.html");
    let mut run = load(
        port,
        &html,
        &d.join("load.log"),
        &["--call-rate", "20/s", "--duration", "60s"],
    );
    std::thread::sleep(Duration::from_secs(3));
    // Calls failing or thresholds breaking would exit 99; stopped, the load says interrupted.
    let status = run.terminate();
    assert!(status.code().is_some(), "{status:?}\n{}", run.log());
    let (page, charts) = checked_page(&html);
    assert!(page.contains("<b>interrupted</b>"), "{page}");
    // Rates, failures and calls in progress at least, and the setup percentiles.
    assert!(charts >= 4, "{charts} charts");
    assert!(page.contains("setup: percentiles per interval"));
}

/// Counts of a decoded screenshot: pixels in all, pixels not the page's white, and pixels
/// within a small distance of each of `colours`.
struct Pixels {
    total: usize,
    not_background: usize,
    near: Vec<usize>,
}

/// Decodes an 8-bit RGB or RGBA PNG (what Chromium writes) and counts its pixels.
fn pixels(png: &[u8], colours: &[[u8; 3]]) -> Pixels {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut width, mut height, mut channels) = (0usize, 0usize, 0usize);
    let mut data = Vec::new();
    let mut i = 8;
    while i + 8 <= png.len() {
        let len = u32::from_be_bytes(png[i..i + 4].try_into().expect("4 bytes")) as usize;
        let kind = &png[i + 4..i + 8];
        let body = &png[i + 8..i + 8 + len];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(body[0..4].try_into().expect("4")) as usize;
                height = u32::from_be_bytes(body[4..8].try_into().expect("4")) as usize;
                assert_eq!(body[8], 8, "bit depth");
                assert_eq!(body[12], 0, "interlaced");
                channels = match body[9] {
                    2 => 3,
                    6 => 4,
                    other => panic!("colour type {other}"),
                };
            }
            b"IDAT" => data.extend_from_slice(body),
            _ => {}
        }
        i += 12 + len;
    }
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&data[..]), &mut raw)
        .expect("inflates");
    let stride = width * channels;
    assert_eq!(raw.len(), height * (stride + 1), "image data length");
    let mut prev = vec![0u8; stride];
    let mut counts = Pixels {
        total: width * height,
        not_background: 0,
        near: vec![0; colours.len()],
    };
    for row in raw.chunks(stride + 1) {
        let (filter, line) = (row[0], &row[1..]);
        let mut cur = vec![0u8; stride];
        for x in 0..stride {
            let a = if x >= channels { cur[x - channels] } else { 0 };
            let b = prev[x];
            let c = if x >= channels { prev[x - channels] } else { 0 };
            let predicted = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(b)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                other => panic!("filter {other}"),
            };
            cur[x] = line[x].wrapping_add(predicted);
        }
        for px in cur.chunks(channels) {
            if px[..3] != [255, 255, 255] {
                counts.not_background += 1;
            }
            for (k, c) in colours.iter().enumerate() {
                let d: u32 = (0..3).map(|j| u32::from(px[j].abs_diff(c[j]))).sum();
                if d <= 24 {
                    counts.near[k] += 1;
                }
            }
        }
        prev = cur;
    }
    counts
}

/// Renders `html` in headless Chromium to a 1280x2000 screenshot and returns the PNG.
fn screenshot(html: &Path, d: &Path) -> Vec<u8> {
    let png = html.with_extension("png");
    let profile = d.join(format!(
        "chromium-{}",
        html.file_stem().and_then(|s| s.to_str()).unwrap_or("page")
    ));
    let mut cmd = Command::new("/usr/bin/chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--screenshot={}", png.display()))
    .arg("--window-size=1280,2000")
    .arg(format!("file://{}", html.display()));
    let mut proc = Proc::start(cmd, &html.with_extension("chromium.log"));
    let status = proc.wait_for(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "chromium: {status:?}\n{}",
        proc.log()
    );
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot ({e}):\n{}", proc.log()))
}

/// The first three series colours of the pages (src/html/svg.rs).
const LINE_COLOURS: [[u8; 3]; 3] = [[0x1f, 0x77, 0xb4], [0xd6, 0x27, 0x28], [0x2c, 0xa0, 0x2c]];

fn assert_drawn(name: &str, png: &[u8]) {
    let p = pixels(png, &LINE_COLOURS);
    assert_eq!(p.total, 1280 * 2000, "{name}: the window's size");
    let share = p.not_background as f64 / p.total as f64;
    assert!(
        share > 0.02,
        "{name}: {:.2}% of the screenshot drawn",
        share * 100.0
    );
    let seen = p.near.iter().filter(|&&n| n >= 100).count();
    assert!(seen >= 2, "{name}: chart colours {:?} pixels", p.near);
}

#[test]
#[ignore = "needs /usr/bin/chromium (installed by .ci/run); run with --ignored"]
fn chromium_draws_the_plan_load_and_drill_pages() {
    let d = dir("chromium");
    // The drill runs for about 20 s while the plan and the load are made and drawn.
    let drill_html = d.join("drill.html");
    let mut cmd = pbxlab();
    let drill_json = d.join("drill.json");
    cmd.arg("drill")
        .arg(drill_scenario())
        .arg("--html")
        .arg(&drill_html)
        .arg("--json")
        .arg(&drill_json);
    let mut drill = Proc::start(cmd, &d.join("drill.log"));

    let plan_html = d.join("plan.html");
    let out = pbxlab()
        .args(["plan", "--progress", "off", "--html"])
        .arg(&plan_html)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_drawn("plan", &screenshot(&plan_html, &d));

    let (_cluster, port) = cluster(&d);
    let load_html = d.join("load.html");
    let mut run = load(
        port,
        &load_html,
        &d.join("load.log"),
        &["--call-rate", "40/s", "--calls", "160"],
    );
    let status = run.wait_for(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", run.log());
    checked_page(&load_html);
    assert_drawn("load", &screenshot(&load_html, &d));

    let status = drill.wait_for(Duration::from_secs(60));
    assert!(
        matches!(status.and_then(|s| s.code()), Some(0 | 99 | 4)),
        "{status:?}\n{}",
        drill.log()
    );
    // The load starts just after the cluster: its start on the cluster's clock is given, and
    // the page draws the load's intervals shifted by it.
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&drill_json).expect("json")).expect("parses");
    let start = v["load_start_s"].as_f64().expect("load_start_s");
    assert!((0.0..5.0).contains(&start), "{start}");
    let (page, _) = checked_page(&drill_html);
    assert!(page.contains("the load started at"));
    assert!(page.contains("fail media-2") && page.contains("detected after"));
    assert_drawn("drill", &screenshot(&drill_html, &d));
}

/// A PNG of `width` x `height` RGB pixels, each row with filter `filter` (0 none, 1 sub, 2 up),
/// its chunks' CRCs left zero (the reader above does not check them).
fn png(
    width: usize,
    height: usize,
    pixel: impl Fn(usize, usize) -> [u8; 3],
    filter: u8,
) -> Vec<u8> {
    use std::io::Write as _;
    let mut raw = Vec::new();
    let mut prev = vec![0u8; width * 3];
    for y in 0..height {
        let row: Vec<u8> = (0..width).flat_map(|x| pixel(x, y)).collect();
        raw.push(filter);
        for (i, &v) in row.iter().enumerate() {
            let predicted = match filter {
                1 if i >= 3 => row[i - 3],
                2 => prev[i],
                _ => 0,
            };
            raw.push(v.wrapping_sub(predicted));
        }
        prev = row;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&raw).expect("deflates");
    let data = z.finish().expect("deflates");
    let chunk = |out: &mut Vec<u8>, kind: &[u8], body: &[u8]| {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out.extend_from_slice(&[0; 4]);
    };
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &data);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn the_screenshot_check_tells_a_blank_page_from_a_drawn_one() {
    let white = |_: usize, _: usize| [255, 255, 255];
    for filter in [0, 1, 2] {
        let blank = pixels(&png(40, 30, white, filter), &LINE_COLOURS);
        assert_eq!((blank.total, blank.not_background), (1200, 0));
        assert_eq!(blank.near, [0, 0, 0]);
        // A blue line and a red one, two pixels thick, across a white page.
        let drawn = pixels(
            &png(
                40,
                30,
                |_, y| match y {
                    10 | 11 => [0x1f, 0x77, 0xb4],
                    20 | 21 => [0xd5, 0x28, 0x29],
                    _ => [255, 255, 255],
                },
                filter,
            ),
            &LINE_COLOURS,
        );
        assert_eq!(drawn.not_background, 160, "filter {filter}");
        assert_eq!(drawn.near, [80, 80, 0], "filter {filter}");
    }
}
