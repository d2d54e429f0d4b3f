use super::*;
use pbxlab_balancer::EventKind;

/// Nobody: the world's cluster alone, probing its nodes.
struct Nobody;

impl Peer for Nobody {
    fn addrs(&self) -> Vec<SocketAddr> {
        Vec::new()
    }
    fn handle(&mut self, _: Nanos, _: SocketAddr, _: SocketAddr, _: &[u8]) {}
    fn next_wakeup(&self) -> Option<Nanos> {
        None
    }
    fn advance(&mut self, _: Nanos, _: &mut dyn FnMut(SocketAddr, SocketAddr, &[u8])) {}
}

const SMALL: &str = r#"
name = "two media servers"
seed = 1
duration = "30s"

[[pool]]
role = "media"
servers = 2
capacity = 100

[health]
probe_interval = "100ms"
probe_timeout = "50ms"
down_after = 3
up_after = 2
"#;

fn world(seed: u64) -> World {
    let sc = Scenario::from_toml("small", SMALL).expect("scenario");
    let opts = Options::new(SocketAddr::from(([127, 0, 0, 1], 5060)));
    World::new(&sc, &opts, seed).expect("world")
}

fn run_until(w: &mut World, until: Nanos) {
    while w.now() < until {
        let t = w.next_event(&Nobody).min(until);
        w.step(t, &mut Nobody);
    }
}

/// Steps the world until `action` is over.
fn finish(w: &mut World, action: &mut Action) {
    while !w.poll(action) {
        let t = w
            .next_event(&Nobody)
            .min(action.deadline().unwrap_or(Nanos::MAX));
        w.step(t, &mut Nobody);
    }
}

fn kinds(w: &World) -> Vec<(Duration, String, String)> {
    w.records()
        .events
        .iter()
        .map(|e| {
            let k = match &e.kind {
                EventKind::Down => "down".to_owned(),
                EventKind::Up => "up".to_owned(),
                other => format!("{other:?}"),
            };
            (e.at, e.server.clone(), k)
        })
        .collect()
}

#[test]
fn probes_find_a_failed_node_within_the_bound_and_a_recovered_one_comes_back() {
    let mut w = world(1);
    let s = 1_000_000_000;
    run_until(&mut w, 2 * s);
    assert!(kinds(&w).is_empty(), "healthy nodes raised {:?}", kinds(&w));
    let mut fail = w.act(Verb::Fail, "media-1").expect("act");
    assert!(w.poll(&mut fail), "fail is immediate");
    assert!(!w.is_alive("media-1"));
    run_until(&mut w, 3 * s);
    let events = kinds(&w);
    let down = events
        .iter()
        .find(|(_, name, k)| name == "media-1" && k == "down")
        .unwrap_or_else(|| panic!("no down event: {events:?}"));
    // Three timed-out probes 100 ms apart and a 50 ms timeout: within 350 ms of the fault.
    let after = down.0.saturating_sub(Duration::from_secs(2));
    assert!(
        after <= Duration::from_millis(350),
        "detected after {after:?}"
    );
    assert!(
        after >= Duration::from_millis(200),
        "detected after {after:?}"
    );

    let mut recover = w.act(Verb::Recover, "media-1").expect("act");
    finish(&mut w, &mut recover);
    assert_eq!(recover.error, None);
    assert!(
        kinds(&w)
            .iter()
            .any(|(_, name, k)| name == "media-1" && k == "up"),
        "{:?}",
        kinds(&w)
    );
    assert!(w.sessions_differ().is_empty());
}

#[test]
fn a_recover_the_probes_cannot_confirm_is_an_error() {
    let mut w = world(2);
    let mut fail = w.act(Verb::Partition, "media-2").expect("act");
    assert!(w.poll(&mut fail));
    // The network also cuts it off, so its restart cannot be confirmed by any probe.
    let addr = w.addresses().servers[1].1;
    w.net.partition(vec![addr], None);
    let mut recover = w.act(Verb::Recover, "media-2").expect("act");
    finish(&mut w, &mut recover);
    let error = recover.error.expect("an error");
    assert!(error.contains("probes did not bring it back"), "{error}");
}

#[test]
fn one_seed_gives_one_history() {
    let history = |seed| {
        let mut w = world(seed);
        let mut a = w.act(Verb::Fail, "media-2").expect("act");
        w.poll(&mut a);
        run_until(&mut w, 5_000_000_000);
        (kinds(&w), w.work())
    };
    assert_eq!(history(3), history(3));
}
