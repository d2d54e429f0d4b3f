//! What a Call Manager snapshot costs at the headline (`cargo bench --bench snapshot`): the
//! headline drill (`scenarios/drill-10k.toml`: 50,000 users registered, 10,000 calls with RTP)
//! with three Call Managers, run in virtual time until its calls are up; then the
//! serving replica's state is written as a snapshot and read back five times, and the medians
//! printed: its size, the time the active spends writing it (its thread does nothing else
//! meanwhile) and the time the taker spends reading it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pbxlab_cluster::cluster::Options;
use pbxlab_cluster::drill::timeline;
use pbxlab_cluster::ha::SnapshotCost;
use pbxlab_cluster::world::World;
use pbxlab_cluster::world::drill::{Drill, Hooks, load_addrs};
use pbxlab_loadgen::Progress;
use pbxlab_scenario::Scenario;

/// When the state is measured, in the drill's time: every call of the headline is up.
const AT: Duration = Duration::from_secs(35);

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/drill-10k.toml");
    let text = std::fs::read_to_string(&path).expect("scenarios/drill-10k.toml");
    // Three Call Managers; the state is measured before the drill's first fault (40 s), and
    // the run stopped then.
    let text = text.replacen(
        "[traffic.registrations]",
        "[callmanager]\nnodes = 3\n\n[traffic.registrations]",
        1,
    );
    let scenario =
        Scenario::from_toml("drill-10k with three Call Managers", &text).expect("a valid scenario");
    let spec = scenario.drill.clone().unwrap_or_default();
    let sip: SocketAddr = "127.0.0.1:5060".parse().expect("address");
    let settings = pbxlab_loadgen::Settings::drill(sip, &spec.load);
    let (mut cfg, thresholds) =
        pbxlab_loadgen::configure(&settings, Some(&scenario), Some(scenario.seed))
            .expect("the drill's load");
    (cfg.local, cfg.rtp_local) = load_addrs(sip);
    let mut opts = Options::new(sip);
    opts.whitelist = vec![sip.ip()];
    let faults = timeline(&scenario).expect("the drill's faults");
    let drill = Drill {
        scenario: &scenario,
        faults: &faults,
        net_faults: &scenario.net_faults,
        spec: &spec,
        opts: &opts,
        seed: scenario.seed,
        explore: false,
    };
    let stop = AtomicBool::new(false);
    let mut measured: Option<(u64, usize, Result<SnapshotCost, String>)> = None;
    let mut watch = |world: &World, p: &Progress| {
        if measured.is_some() || p.elapsed < AT {
            return;
        }
        let users = world.cm().map_or(0, |cm| cm.census(0).users.len());
        let cost = world
            .serving_replica()
            .ok_or_else(|| "no Call Manager serves".to_owned())
            .and_then(|r| r.measure_snapshot(5));
        measured = Some((p.active_calls as u64, users, cost));
        stop.store(true, Ordering::Relaxed);
    };
    let hooks = Hooks {
        progress: Some(&mut watch),
        stop: Some(&stop),
    };
    drill.run(cfg, thresholds, hooks).expect("the drill runs");
    let Some((calls, users, cost)) = measured else {
        panic!("the drill ended before {} s", AT.as_secs());
    };
    let cost = cost.expect("a snapshot");
    println!(
        "snapshot of the serving Call Manager with {calls} calls up and {users} users bound \
         (virtual time, {} s in)",
        AT.as_secs()
    );
    println!("  size   {:.1} MB", cost.bytes as f64 / 1e6);
    println!(
        "  write  {:.1} ms (median of 5, the active's thread)",
        cost.write.as_secs_f64() * 1e3
    );
    println!(
        "  read   {:.1} ms (median of 5, the taker's thread)",
        cost.read.as_secs_f64() * 1e3
    );
    println!(
        "  copy   {:.1} ms (median of 5: a clone in memory, as replicas in one process once did)",
        cost.copy.as_secs_f64() * 1e3
    );
}
