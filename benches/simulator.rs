//! Simulator throughput on the embedded reference cluster (`cargo bench --bench simulator`);
//! throughput is in simulation events. `pbxlab plan` prints the same figure for any scenario.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pbxlab_sim::{Options, reference_scenario, simulate};

fn reference(c: &mut Criterion) {
    let mut scenario = reference_scenario().expect("embedded scenario is valid");
    scenario.duration = Duration::from_secs(3600);
    scenario.warmup = Duration::from_secs(600);
    let options = Options {
        no_wall_clock: true,
        ..Options::default()
    };
    let events = simulate(&scenario, options).expect("runs").events;
    let mut g = c.benchmark_group("simulator");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events));
    g.bench_function("reference cluster, 1 h simulated", |b| {
        b.iter(|| simulate(&scenario, options).expect("runs"))
    });
    g.finish();
}

criterion_group!(benches, reference);
criterion_main!(benches);
