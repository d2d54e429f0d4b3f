use std::net::SocketAddr;

use pbxlab_loadgen::{Settings, configure};
use pbxlab_scenario::Scenario;

use super::*;
use crate::drill::{Observed, Outcome, judge, silences, timeline};

fn cm() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5060))
}

/// Runs `sc` as `pbxlab drill --virtual` would (`explore`: with the explorer's invariants
/// after every step), telling `progress` of each closed interval.
pub(crate) fn run<'a>(
    sc: &Scenario,
    explore: bool,
    progress: Option<&'a mut OnProgress<'a>>,
) -> VirtualRun {
    let faults = timeline(sc).unwrap();
    let spec = sc.drill.clone().unwrap_or_default();
    let mut opts = Options::new(cm());
    opts.whitelist = vec![cm().ip()];
    let settings = Settings::drill(cm(), &spec.load);
    let (mut cfg, thresholds) = configure(&settings, Some(sc), Some(sc.seed)).unwrap();
    (cfg.local, cfg.rtp_local) = load_addrs(cm());
    Drill {
        scenario: sc,
        faults: &faults,
        net_faults: &sc.net_faults,
        spec: &spec,
        opts: &opts,
        seed: sc.seed,
        explore,
    }
    .run(
        cfg,
        thresholds,
        Hooks {
            progress,
            ..Hooks::default()
        },
    )
    .unwrap()
}

/// Runs `sc` as `pbxlab drill --virtual` would, and judges it.
pub(crate) fn drill(sc: &Scenario) -> (VirtualRun, crate::drill::DrillVerdict) {
    let run = run(sc, false, None);
    let faults = timeline(sc).unwrap();
    let spec = sc.drill.clone().unwrap_or_default();
    let gaps = silences(&run.report, None);
    let seen = Observed {
        records: &run.records,
        samples: &run.samples,
        gaps: &gaps,
    };
    let verdict = judge(
        &spec,
        run.detection_bound,
        &run.injected,
        &seen,
        run.steady.clone(),
        faults.len(),
    );
    (run, verdict)
}

fn embedded(seed: u64) -> Scenario {
    let mut sc = pbxlab_scenario::drill_scenario().unwrap();
    sc.seed = seed;
    sc
}

#[test]
fn the_embedded_drill_passes_in_virtual_time_and_repeats_from_its_seed() {
    let sc = embedded(7);
    let (run, verdict) = drill(&sc);
    assert!(run.violation.is_none());
    assert_eq!(
        verdict.outcome(),
        Outcome::Pass,
        "{}",
        verdict.render(&sc.name)
    );
    assert_eq!(run.injected.len(), sc.faults.len());
    assert!(!run.records.reassigned.is_empty(), "no call moved");
    assert!(run.records.dropped.is_empty(), "{:?}", run.records.dropped);
    let json = |run: &VirtualRun, v: &crate::drill::DrillVerdict| {
        v.to_json(&sc, &run.report, &run.events).to_string()
    };
    let first = json(&run, &verdict);
    let (again, v2) = drill(&sc);
    assert_eq!(first, json(&again, &v2), "the same seed ran differently");
    let other = embedded(8);
    let (run3, v3) = drill(&other);
    assert_ne!(
        first,
        v3.to_json(&other, &run3.report, &run3.events).to_string(),
        "another seed ran the same"
    );
}
