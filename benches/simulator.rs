//! Simulator throughput on the embedded reference cluster (`cargo bench --bench simulator`);
//! throughput is in simulation events. `pbxlab plan` prints the same figure for any scenario.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pbxlab_scenario::reference_scenario;
use pbxlab_sim::{Options, Progress, ProgressSink, simulate};

fn reference(c: &mut Criterion) {
    // As shipped: 2 simulated hours, a media server failed and recovered on the way.
    let scenario = reference_scenario().expect("embedded scenario is valid");
    let options = Options {
        no_wall_clock: true,
        ..Options::default()
    };
    let events = simulate(&scenario, options).expect("runs").events;
    let mut g = c.benchmark_group("simulator");
    g.sample_size(10);
    g.throughput(Throughput::Elements(events));
    g.bench_function("reference cluster, 2 h simulated", |b| {
        b.iter(|| simulate(&scenario, options).expect("runs"))
    });
    // As `pbxlab plan` runs it: a progress report due every second (this run takes less, so
    // what is measured is the clock read every 4,096 events, not the printing).
    let report = |p: &Progress<'_>| {
        std::hint::black_box(p);
    };
    let with_progress = Options {
        progress: Some(ProgressSink {
            every: std::time::Duration::from_secs(1),
            stage: "",
            report: &report,
        }),
        ..options
    };
    g.bench_function("reference cluster, 2 h simulated, with progress", |b| {
        b.iter(|| simulate(&scenario, with_progress).expect("runs"))
    });
    g.finish();
}

criterion_group!(benches, reference);
criterion_main!(benches);
