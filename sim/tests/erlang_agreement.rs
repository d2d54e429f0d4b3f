//! The simulator against exact Erlang B, C and A. Each case runs long enough for tight batch-means
//! intervals; the analytic figure must fall inside the run's own 99.9 % interval, and the interval
//! must be narrow enough that a wrong simulator could not hide inside it.

use pbxlab_sim::report::Report;
use pbxlab_sim::stats::Estimate;
use pbxlab_sim::{Options, Scenario, erlang, simulate};

/// Arrivals per case: enough for intervals of a few percent.
const ARRIVALS: f64 = 1_000_000.0;

fn run(toml: &str) -> Report {
    let scenario = Scenario::from_toml("<test>", toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    simulate(
        &scenario,
        Options {
            no_wall_clock: true,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("seed {}: {e}", scenario.seed))
}

fn check(label: &str, seed: u64, est: Estimate, analytic: f64, max_half_width: f64) {
    // All batches alike (e.g. every batch 100 % within the service level) gives a zero-width
    // interval that says nothing; such a case must be made informative, not passed.
    assert!(
        est.ci999 > 0.0,
        "{label} (seed {seed}): degenerate interval around {}; choose a case with variation",
        est.value
    );
    assert!(
        est.ci999 <= max_half_width,
        "{label} (seed {seed}): interval ±{:.5} wider than {max_half_width:.5}; run longer",
        est.ci999
    );
    assert!(
        est.covers(analytic),
        "{label} (seed {seed}): simulated {:.5} ±{:.5} (99.9 %) misses analytic {analytic:.5}",
        est.value,
        est.ci999
    );
}

/// Probes are slowed down: they do not matter here and would dominate the event count.
fn header(seed: u64, duration_s: f64, warmup_s: f64) -> String {
    format!(
        "name = \"erlang check\"\nseed = {seed}\nduration = \"{duration_s:.0}s\"\nwarmup = \"{warmup_s:.0}s\"\nbatches = 30\n\
         [health]\nprobe_interval = \"3600s\"\nprobe_timeout = \"1s\"\n"
    )
}

#[test]
fn blocking_agrees_with_erlang_b() {
    // (servers, capacity each, offered erlangs)
    let cases = [
        (1, 15, 8.108),
        (1, 45, 33.33),
        (2, 50, 95.0),
        (3, 20, 60.0),
        (1, 5, 3.0),
        (2, 600, 1180.0),
        (4, 500, 1950.0),
    ];
    for (i, (servers, capacity, erlangs)) in cases.into_iter().enumerate() {
        let hold_s = 20.0;
        let rate = erlangs / hold_s;
        let seed = 100 + i as u64;
        let toml = format!(
            "{}[[pool]]\nrole = \"media\"\nservers = {servers}\ncapacity = {capacity}\n\
             [traffic.calls]\nrate = \"{rate}/s\"\nhold = \"{hold_s}s\"\n",
            header(seed, ARRIVALS / rate, 20.0 * hold_s)
        );
        let report = run(&toml);
        let media = &report.roles["media"];
        let analytic = erlang::erlang_b(servers * capacity, erlangs);
        assert_eq!(media.erlang_b, Some(analytic));
        check(
            &format!("Erlang B {servers}x{capacity} at {erlangs} E"),
            seed,
            media.blocking_est,
            analytic,
            0.25 * analytic + 0.002,
        );
    }
}

/// (arrivals/s, handle s, agents, patience s, service-level threshold s)
type QueueCase = (f64, f64, u32, Option<f64>, f64);

/// Large pools near saturation forget their state slowly (long autocorrelation), so they need
/// longer runs for the same interval width.
fn arrivals(agents: u32) -> f64 {
    if agents >= 1000 {
        3.0 * ARRIVALS
    } else {
        ARRIVALS
    }
}

fn queue_case(seed: u64, (rate, handle, agents, patience, sl): QueueCase) -> Report {
    let patience = patience.map_or(String::new(), |p| format!("patience = \"{p}s\"\n"));
    let toml = format!(
        "{}[[pool]]\nrole = \"queue\"\nservers = 1\ncapacity = 1000000\n\
         [traffic.queue]\nrate = \"{rate}/s\"\nqueues = 1\nagents = {agents}\nhandle = \"{handle}s\"\n{patience}service_level = \"{sl}s\"\n",
        header(seed, arrivals(agents) / rate, 30.0 * handle)
    );
    run(&toml)
}

/// The simulated queue figures against analytic ones: (P(wait), ASA, service level, abandoned).
fn check_queue(label: &str, seed: u64, report: &Report, analytic: (f64, f64, f64, Option<f64>)) {
    let q = report.roles["queue"].queue.as_ref().expect("queue report");
    let (p, asa, sl, abandoned) = analytic;
    check(
        &format!("{label} P(wait)"),
        seed,
        q.estimates.p_wait,
        p,
        0.25 * p + 0.01,
    );
    check(
        &format!("{label} ASA"),
        seed,
        q.estimates.asa_s,
        asa,
        0.3 * asa + 0.2,
    );
    check(
        &format!("{label} SL"),
        seed,
        q.estimates.service_level,
        sl,
        0.05,
    );
    match abandoned {
        Some(ab) => check(
            &format!("{label} abandoned"),
            seed,
            q.estimates.abandoned_fraction,
            ab,
            0.3 * ab + 0.005,
        ),
        None => assert_eq!(q.abandoned, 0, "{label}: nobody abandons without patience"),
    }
}

#[test]
fn waiting_agrees_with_erlang_c() {
    let cases: [QueueCase; 7] = [
        // The published reference: 360 calls per 30 min, 240 s AHT, 55 agents.
        (0.2, 240.0, 55, None, 15.0),
        (1.0, 30.0, 35, None, 10.0),
        (5.0, 60.0, 320, None, 5.0),
        (2.0, 180.0, 380, None, 20.0),
        (10.0, 100.0, 1050, None, 5.0),
        (0.05, 120.0, 8, None, 30.0),
        (0.5, 20.0, 12, None, 5.0),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let seed = 200 + i as u64;
        let report = queue_case(seed, case);
        let q = report.roles["queue"].queue.as_ref().expect("queue report");
        let analytic = (
            q.erlang_c_p_wait.expect("stable"),
            q.erlang_c_asa_s.expect("stable"),
            q.erlang_c_service_level.expect("stable"),
            None,
        );
        check_queue(&format!("Erlang C {case:?}"), seed, &report, analytic);
    }
}

#[test]
fn abandonment_agrees_with_erlang_a() {
    let cases: [QueueCase; 7] = [
        (0.2, 240.0, 50, Some(120.0), 15.0),
        (1.0, 30.0, 28, Some(60.0), 10.0),
        (5.0, 60.0, 300, Some(180.0), 20.0),
        (10.0, 100.0, 1000, Some(300.0), 20.0),
        (0.5, 200.0, 95, Some(30.0), 10.0),
        (2.0, 60.0, 110, Some(600.0), 30.0),
        (3.0, 40.0, 100, Some(20.0), 5.0),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let seed = 300 + i as u64;
        let report = queue_case(seed, case);
        let q = report.roles["queue"].queue.as_ref().expect("queue report");
        let steady = "Erlang A always has a steady state";
        let analytic = (
            q.erlang_a_p_wait.expect(steady),
            q.erlang_a_asa_s.expect(steady),
            q.erlang_a_service_level.expect(steady),
            Some(q.erlang_a_abandoned_fraction.expect(steady)),
        );
        check_queue(&format!("Erlang A {case:?}"), seed, &report, analytic);
    }
}
