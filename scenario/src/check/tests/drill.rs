//! Checker tests for `[drill]` and `[drill.load]`.

use super::*;

/// MINIMAL (a media pool of two) with a `[drill]` table; `[drill.load]`'s keys start at line 12.
fn with_load(keys: &str) -> String {
    format!("{MINIMAL}\n[drill]\nsteady = \"3s\"\n\n[drill.load]\n{keys}")
}

#[test]
fn drill_load_keys_are_typed() {
    let s = parse(&with_load(
        "service = \"echo\"\nusers = 100\nregister_rate = \"1000/s\"\ncalls = 300\n\
         call_rate = \"30/s\"\nhold = \"10s\"\nhold_dist = \"exponential\"\nrtp = 1\n\
         max_concurrent = 250\narrivals = \"poisson\"\ndtmf = \"1#\"\n",
    ));
    let drill = s.drill.expect("[drill]");
    assert_eq!(drill.steady, Duration::from_secs(3));
    assert_eq!(
        drill.load,
        DrillLoad {
            service: Some(Service::Echo),
            users: Some(100),
            register_rate_per_s: Some(1000.0),
            calls: Some(300),
            call_rate_per_s: Some(30.0),
            hold: Some(HoldDist::Exponential { mean_s: 10.0 }),
            rtp_fraction: 1.0,
            max_concurrent: Some(250),
            arrivals: Some(Arrivals::Poisson),
            dtmf: Some("1#".to_owned()),
        }
    );
    // As `pbxlab load --hold`, a hold is fixed unless hold_dist says otherwise.
    let s = parse(&with_load("hold = \"20s\"\n"));
    let load = s.drill.expect("[drill]").load;
    assert_eq!(load.hold, Some(HoldDist::Fixed { s: 20.0 }));
    assert_eq!(load.rtp_fraction, 0.0);
}

#[test]
fn drill_defaults() {
    let s = parse(&format!("{MINIMAL}\n[drill]\n"));
    assert_eq!(s.drill, Some(DrillSpec::default()));
    assert_eq!(parse(MINIMAL).drill, None);
    let embedded = crate::drill_scenario().expect("the embedded drill is valid");
    let load = embedded.drill.expect("[drill]").load;
    assert_eq!(load.service, Some(Service::Echo));
    assert_eq!(load.rtp_fraction, 1.0);
    assert_eq!(load.hold, Some(HoldDist::Fixed { s: 30.0 }));
    assert_eq!(load.register_rate_per_s, Some(1000.0));
}

#[test]
fn unknown_keys_in_drill_are_named_with_their_position() {
    let d = invalid(&format!("{MINIMAL}\n[drill]\nsteady = \"3s\"\nrtpp = 1\n"));
    assert_at(&d, 11, 1, "drill.rtpp", &["unknown key", "rtpp", "load"]);
    let d = invalid(&with_load("service = \"echo\"\nrtpp = 1\n"));
    assert_at(
        &d,
        14,
        1,
        "drill.load.rtpp",
        &["unknown key", "rtpp", "rtp"],
    );
    // The old form, `pbxlab load`'s words in a list, is no longer read.
    let d = invalid(&format!(
        "{MINIMAL}\n[drill]\nload = [\"--service\", \"echo\", \"--rtp\", \"1\"]\n"
    ));
    assert_at(
        &d,
        10,
        8,
        "drill.load",
        &["invalid type: array, expected a table"],
    );
}

#[test]
fn bad_drill_load_values_are_located() {
    let d = invalid(&with_load("register_rate = \"1000/fortnight\"\n"));
    assert_at(
        &d,
        13,
        17,
        "drill.load.register_rate",
        &["register_rate", "fortnight", "/min"],
    );
    let d = invalid(&with_load("call_rate = \"0/s\"\n"));
    assert_at(&d, 13, 13, "drill.load.call_rate", &["greater than 0"]);
    let d = invalid(&with_load("hold = \"1.5\"\n"));
    assert_at(&d, 13, 8, "drill.load.hold", &["hold", "needs a unit"]);
    let d = invalid(&with_load("rtp = 1.5\n"));
    assert_at(&d, 13, 7, "drill.load.rtp", &["between 0 and 1", "1.5"]);
    let d = invalid(&with_load("rtp = \"1\"\n"));
    assert_at(&d, 13, 7, "drill.load.rtp", &["number", "\"1\""]);
    let d = invalid(&with_load("calls = 0\n"));
    assert_at(&d, 13, 9, "drill.load.calls", &["at least 1"]);
    let d = invalid(&with_load("max_concurrent = 0\n"));
    assert_at(&d, 13, 18, "drill.load.max_concurrent", &["at least 1"]);
    let d = invalid(&with_load("arrivals = \"burst\"\n"));
    assert_at(&d, 13, 12, "drill.load.arrivals", &["fixed, poisson"]);
    let d = invalid(&with_load("dtmf = \"1x\"\n"));
    assert_at(
        &d,
        13,
        8,
        "drill.load.dtmf",
        &["0-9, *, # and A-D", "\"1x\""],
    );
    let d = invalid(&with_load("hold_dist = \"fixed\"\n"));
    assert_at(&d, 13, 13, "drill.load.hold_dist", &["add hold"]);
}

#[test]
fn a_drill_service_must_be_one_the_cluster_serves() {
    let d = invalid(&with_load("service = \"ecoh\"\n"));
    assert_at(
        &d,
        13,
        11,
        "drill.load.service",
        &["echo, ivr-N, queue-N or meeting-N", "\"ecoh\""],
    );
    let d = invalid(&with_load("service = \"ivr-0\"\n"));
    assert_at(&d, 13, 11, "drill.load.service", &["N >= 1"]);
    let d = invalid(&with_load("service = \"meeting-8\"\n"));
    assert_at(
        &d,
        13,
        11,
        "drill.load.service",
        &["calling meeting-8 needs a meeting pool"],
    );
    // A queue pool is not enough: the cluster runs as many queues as [traffic.queue] says.
    let queues = format!(
        "{MINIMAL}\n[[pool]]\nrole = \"queue\"\nservers = 2\ncapacity = 9\n\
         \n[drill]\n\n[drill.load]\nservice = \"queue-2\"\n"
    );
    let d = invalid(&queues);
    assert_at(
        &d,
        17,
        11,
        "drill.load.service",
        &["queues = 2 or more", "there is no [traffic.queue]"],
    );
    let with_two = queues.replace(
        "\n[drill]",
        "\n[traffic.queue]\nrate = 1\nqueues = 2\nagents = 2\nhandle = \"30s\"\n\n[drill]",
    );
    let s = parse(&with_two);
    assert_eq!(
        s.drill.expect("[drill]").load.service,
        Some(Service::Queue(2))
    );
}
