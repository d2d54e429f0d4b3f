//! Plan predicts drill: for each drill scenario in `tests/drill/` with node faults, `plan`
//! (the discrete-event model) and `drill --virtual` (the real Call Manager, nodes and load
//! generator in virtual time) run the same cluster, the same balancer and the same prober, and
//! must agree fault by fault on what the fault did:
//! - detection, within one probe interval: `plan` fails a server at the scenario's exact
//!   second, the drill at a phase of the probe grid drawn from the seed;
//! - the sessions the fault hit (reassigned plus dropped), within three standard deviations
//!   of a Poisson count: `plan` draws its calls as a Poisson process, the load generator starts
//!   them on a fixed schedule, so the number up on one server at one instant is a Poisson draw
//!   in one and (nearly) fixed in the other. Holds are fixed in both (`hold_dist = "fixed"` is
//!   added to the plan's calls, as the drill's load holds each call exactly);
//! - whether calls were dropped at all, and, when the pool's capacity binds, how many
//!   sessions were reassigned: both fill the survivors to their capacity, so the two differ
//!   by what the survivors held, again a Poisson count in `plan`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn pbxlab(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pbxlab"))
        .args(args)
        .output()
        .expect("pbxlab runs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: no JSON ({e}); exit {:?}, stderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The scenario with its calls held for a fixed time, as the drill's load holds them.
fn with_fixed_holds(path: &Path) -> PathBuf {
    let text = std::fs::read_to_string(path).expect("scenario");
    assert!(
        text.contains("[traffic.calls]\n") && !text.contains("hold_dist"),
        "{}: expected a [traffic.calls] table without hold_dist",
        path.display()
    );
    let fixed = text.replace(
        "[traffic.calls]\n",
        "[traffic.calls]\nhold_dist = \"fixed\"\n",
    );
    let out = std::env::temp_dir().join(format!(
        "pbxlab-plan-drill-{}-{}",
        std::process::id(),
        path.file_name().expect("a file").to_string_lossy()
    ));
    std::fs::write(&out, fixed).expect("temp file");
    out
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn plan_predicts_each_fault_of_the_virtual_drill() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drill");
    let mut compared = 0;
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.contains("server = ") {
            // Network faults only: a drill needs a node fault, and plan models none of them.
            continue;
        }
        let file = with_fixed_holds(&path);
        let file = file.to_str().unwrap();
        let plan = pbxlab(&["plan", file, "--json", "-", "--no-wall-clock"]);
        let drill = pbxlab(&["drill", "--virtual", file, "--json", "-", "--no-wall-clock"]);
        let name = path.display();
        let sc = pbxlab_scenario::Scenario::load(&path).unwrap();
        let probe_interval_s = sc.health.probe_interval.as_secs_f64();
        let servers: usize = sc.pools.iter().map(|p| p.servers.len()).sum();
        let planned = plan["faults"].as_array().unwrap();
        let drilled = drill["faults"].as_array().unwrap();
        assert_eq!(planned.len(), drilled.len(), "{name}: faults carried out");
        for (p, d) in planned.iter().zip(drilled) {
            let what = format!("{name}: {} {}", p["action"], p["server"]);
            assert_eq!(
                (&p["action"], &p["server"]),
                (&d["action"], &d["server"]),
                "{what}"
            );
            match (p["detected_after_s"].as_f64(), d["detection_us"].as_f64()) {
                (Some(ps), Some(dus)) => assert!(
                    (ps - dus / 1e6).abs() <= probe_interval_s + 1e-9,
                    "{what}: plan detected after {ps} s, the drill after {} s",
                    dus / 1e6
                ),
                (None, None) => {}
                (ps, dus) => panic!("{what}: plan detection {ps:?}, drill {dus:?}"),
            }
            let reassigned = |v: &Value| v.get("count").map_or(0, count);
            let d_moved = reassigned(&d["reassignment"]);
            let d_dropped = d["dropped"].as_array().unwrap().len() as u64;
            let p_moved = count(&p["reassigned"]);
            let p_dropped = count(&p["dropped"]);
            let (p_hit, d_hit) = (p_moved + p_dropped, d_moved + d_dropped);
            let sigma = (d_hit.max(1) as f64).sqrt();
            assert!(
                (p_hit as f64 - d_hit as f64).abs() <= (3.0 * sigma).max(3.0),
                "{what}: plan hit {p_hit} sessions, the drill {d_hit}"
            );
            assert_eq!(
                p_dropped > 0,
                d_dropped > 0,
                "{what}: plan dropped {p_dropped}, the drill {d_dropped}"
            );
            if p_dropped > 0 && d_dropped > 0 {
                // Both fill the survivors to capacity: what was free there is the capacity
                // less the survivors' own sessions, another Poisson count in plan.
                let survivors_sigma = (d_hit as f64 * servers as f64).sqrt();
                assert!(
                    (p_moved as f64 - d_moved as f64).abs() <= 3.0 * survivors_sigma,
                    "{what}: with capacity binding plan moved {p_moved}, the drill {d_moved}"
                );
            }
            compared += 1;
        }
        let _ = std::fs::remove_file(file);
    }
    assert!(compared >= 4, "only {compared} faults compared");
}
