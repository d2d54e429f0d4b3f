use std::net::SocketAddr;

use pbxlab_loadgen::{Settings, configure};

use pbxlab_scenario::Verb;

use super::*;
use crate::cluster::Options;
use crate::drill::timeline;
use crate::world::drill::{Drill, Hooks, VirtualRun, load_addrs};

fn cm() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5060))
}

/// The embedded drill under `seed`, varied as the explorer varies it, with the invariants
/// checked after every step; `plant` is done to the world first.
fn explore(seed: u64, plant: Option<fn(&mut World)>) -> (Variant, VirtualRun) {
    let mut sc = pbxlab_scenario::drill_scenario().unwrap();
    sc.seed = seed;
    explore_scenario(&sc, plant)
}

fn explore_scenario(sc: &Scenario, plant: Option<fn(&mut World)>) -> (Variant, VirtualRun) {
    let (sc, seed) = (sc.clone(), sc.seed);
    let variant = vary(&sc, &timeline(&sc).unwrap(), seed);
    let spec = sc.drill.clone().unwrap_or_default();
    let mut opts = Options::new(cm());
    opts.whitelist = vec![cm().ip()];
    let (mut cfg, thresholds) =
        configure(&Settings::drill(cm(), &spec.load), Some(&sc), Some(seed)).unwrap();
    (cfg.local, cfg.rtp_local) = load_addrs(cm());
    let run = Drill {
        scenario: &sc,
        faults: &variant.faults,
        net_faults: &variant.net_faults,
        spec: &spec,
        opts: &opts,
        seed,
        explore: true,
    }
    .run(
        cfg,
        thresholds,
        Hooks {
            plant,
            ..Hooks::default()
        },
    )
    .unwrap();
    (variant, run)
}

#[test]
fn a_variant_is_a_function_of_its_seed_and_keeps_the_faults_in_order() {
    let sc = pbxlab_scenario::drill_scenario().unwrap();
    let faults = timeline(&sc).unwrap();
    let a = vary(&sc, &faults, 3);
    assert_eq!(a, vary(&sc, &faults, 3));
    assert_ne!(a, vary(&sc, &faults, 4));
    let steady = sc.drill.clone().unwrap_or_default().steady;
    for seed in 0..200 {
        let v = vary(&sc, &faults, seed);
        assert_eq!(v.faults.len(), faults.len());
        assert!(v.faults.windows(2).all(|w| w[0].at < w[1].at), "{seed}");
        assert!(v.faults.iter().all(|f| f.at >= steady));
        for (f, planned) in v.faults.iter().zip(&faults) {
            assert_eq!((f.action, &f.server), (planned.action, &planned.server));
        }
        assert!(v.drawn <= sc.explore.network as usize);
        let (start, end) = sc.explore_window();
        assert!(v.net_faults.iter().all(|f| f.at >= start && f.at <= end));
    }
}

#[test]
fn the_explorer_finds_nothing_lost_on_the_embedded_drill() {
    for seed in [1, 2] {
        let (variant, run) = explore(seed, None);
        assert!(
            run.violation.is_none(),
            "seed {seed}: {:?} with {:?}",
            run.violation,
            variant.net_faults
        );
        assert_eq!(run.injected.len(), variant.faults.len());
    }
}

#[test]
fn the_explorer_finds_a_failover_re_invite_that_was_never_sent() {
    let (_, run) = explore(
        1,
        Some(|w: &mut World| w.plant(|cm| cm.skip_failover_reinvites = 1)),
    );
    let v = run.violation.expect("the planted bug went unseen");
    assert!(
        v.what.contains("still sends its media to media-2") && v.what.contains("no re-INVITE open"),
        "{v:?}"
    );
}

/// A removed server is out of service for good: a caller left talking to it is found too.
#[test]
fn the_explorer_finds_a_caller_left_on_a_removed_server() {
    let mut sc = pbxlab_scenario::drill_scenario().unwrap();
    sc.seed = 1;
    sc.faults.truncate(1);
    sc.faults[0].action = Verb::Remove;
    let (_, run) = explore_scenario(
        &sc,
        Some(|w: &mut World| w.plant(|cm| cm.skip_failover_reinvites = 1)),
    );
    let v = run.violation.expect("the planted bug went unseen");
    assert!(v.what.contains("media-2 (removed)"), "{v:?}");
}
