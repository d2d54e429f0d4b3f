//! Balancer benchmarks: steady-state assign+release on a 100-server pool for each policy, and
//! the failover plan for a server holding 5,000 sessions.
//!
//! `cargo bench --bench balancer`; throughput is in balancer operations (an assign or a release).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pbxlab_balancer::{
    AffinityKey, Balancer, FailoverMode, HealthConfig, Policy, Request, Role, ServerSpec, SessionId,
};

const SERVERS: usize = 100;
const OPS_PER_ITER: u64 = 2_000;

fn pool(policy: Policy, capacity: u32) -> Balancer {
    let mut b = Balancer::new(HealthConfig::default());
    b.set_pool(Role::Media, policy, FailoverMode::Auto);
    for i in 0..SERVERS {
        b.add_server(ServerSpec {
            name: format!("media-{i}"),
            role: Role::Media,
            capacity,
            weight: 1 + (i % 3) as u32,
        })
        .expect("unique names");
    }
    b
}

/// Fills the pool to half its capacity, keeping the sessions in arrival order.
fn half_full(b: &mut Balancer, keyed: bool) -> std::collections::VecDeque<SessionId> {
    let mut live = std::collections::VecDeque::new();
    for i in 0..(SERVERS as u64 * 1000) / 2 {
        live.push_back(b.assign(request(keyed, i)).expect("room").session);
    }
    live
}

fn request(keyed: bool, i: u64) -> Request {
    if keyed {
        Request::keyed(Role::Media, AffinityKey(i % 5_000), 1)
    } else {
        Request::new(Role::Media)
    }
}

fn assign_release(c: &mut Criterion) {
    let mut g = c.benchmark_group("assign+release, 100 servers, half full");
    g.throughput(Throughput::Elements(OPS_PER_ITER));
    for policy in [
        Policy::LeastLoaded,
        Policy::RoundRobin,
        Policy::Weighted,
        Policy::Affinity,
    ] {
        let keyed = policy == Policy::Affinity;
        let mut b = pool(policy, 1000);
        let mut live = half_full(&mut b, keyed);
        let mut n = 0u64;
        g.bench_function(policy.name(), |bench| {
            bench.iter(|| {
                // Oldest out, newest in: the pool stays at the same load.
                for _ in 0..OPS_PER_ITER / 2 {
                    let old = live.pop_front().expect("non-empty");
                    let _ = black_box(b.release(old).expect("placed"));
                    n += 1;
                    live.push_back(b.assign(request(keyed, n)).expect("room").session);
                }
            })
        });
    }
    g.finish();
}

fn failover_plan(c: &mut Criterion) {
    let mut b = Balancer::new(HealthConfig::default());
    b.set_pool(Role::Media, Policy::LeastLoaded, FailoverMode::Auto);
    let victim = b
        .add_server(ServerSpec {
            name: "media-0".into(),
            role: Role::Media,
            capacity: 5000,
            weight: 1,
        })
        .expect("add");
    for _ in 0..5000 {
        let _ = b.assign(Request::new(Role::Media)).expect("room");
    }
    for i in 1..10 {
        b.add_server(ServerSpec {
            name: format!("media-{i}"),
            role: Role::Media,
            capacity: 5000,
            weight: 1,
        })
        .expect("add");
    }
    let mut g = c.benchmark_group("failover");
    g.throughput(Throughput::Elements(5000));
    g.bench_function(
        "plan for a server holding 5000 sessions, 9 survivors",
        |bench| {
            bench.iter_batched(
                || b.clone(),
                |mut b| {
                    let out = b.fail(Duration::from_secs(1), victim).expect("known");
                    assert_eq!(out.plan.moves.len(), 5000);
                    out
                },
                BatchSize::LargeInput,
            )
        },
    );
    g.finish();
}

criterion_group!(benches, assign_release, failover_plan);
criterion_main!(benches);
