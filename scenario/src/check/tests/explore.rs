//! Checker tests for `[explore]` and the window its random network faults start in.

use super::*;

/// MINIMAL (a one-hour run) with an `[explore]` table whose keys start at line 10.
fn explore(keys: &str) -> String {
    format!("{MINIMAL}\n[explore]\n{keys}")
}

#[test]
fn explore_keys_are_read_and_default_when_absent() {
    assert_eq!(parse(MINIMAL).explore, ExploreSpec::default());
    assert_eq!(parse(&explore("")).explore, ExploreSpec::default());
    let ms = Duration::from_millis;
    let s = parse(&explore(
        "shift = \"500ms\"\nnetwork = 0\nwindow = [\"10s\", \"40s\"]\nloss = [0.01, 0.1]\n\
         delay = [\"5ms\", \"5ms\"]\njitter = [\"0ms\", \"2ms\"]\nduplicate = [0, 1]\n\
         reorder = [0.1, 0.2]\nlasts = [\"1s\", \"10s\"]\npartitions = false\n",
    ));
    assert_eq!(
        s.explore,
        ExploreSpec {
            shift: ms(500),
            network: 0,
            window: Some((Duration::from_secs(10), Duration::from_secs(40))),
            loss: (0.01, 0.1),
            delay: (ms(5), ms(5)),
            jitter: (Duration::ZERO, ms(2)),
            duplicate: (0.0, 1.0),
            reorder: (0.1, 0.2),
            lasts: (Duration::from_secs(1), Duration::from_secs(10)),
            partitions: false,
        }
    );
    assert_eq!(
        s.explore_window(),
        (Duration::from_secs(10), Duration::from_secs(40))
    );
    // Keys left out keep their defaults.
    let s = parse(&explore("network = 5\n"));
    assert_eq!(
        s.explore,
        ExploreSpec {
            network: 5,
            ..ExploreSpec::default()
        }
    );
}

#[test]
fn the_default_window_spans_the_faults_with_a_margin_clamped_to_the_run() {
    let secs = Duration::from_secs;
    // No fault: the whole run.
    assert_eq!(
        parse(MINIMAL).explore_window(),
        (Duration::ZERO, secs(3_600))
    );
    // Server and network faults alike, whatever their order in the file.
    let s = parse(&format!(
        "{MINIMAL}\n[[fault]]\nat = \"60s\"\naction = \"fail\"\nserver = \"media-1\"\n\
         [[fault]]\nat = \"40s\"\naction = \"loss\"\nfraction = 0.1\n\
         [[fault]]\nat = \"50s\"\naction = \"recover\"\nserver = \"media-1\"\n"
    ));
    assert_eq!(s.explore_window(), (secs(35), secs(70)));
    let s = parse(
        "name = \"x\"\nduration = \"10s\"\n[[pool]]\nrole = \"media\"\nservers = 1\ncapacity = 9\n\
         [[fault]]\nat = \"2s\"\naction = \"fail\"\nserver = \"media-1\"\n",
    );
    assert_eq!(s.explore_window(), (Duration::ZERO, secs(10)));
}

#[test]
fn ranges_are_two_values_min_first_within_bounds() {
    let d = invalid(&explore("loss = [0.0, 0.01, 0.02]\n"));
    assert_at(
        &d,
        10,
        8,
        "explore.loss",
        &["two values, [min, max], found 3 values"],
    );
    let d = invalid(&explore("delay = [\"5ms\"]\n"));
    assert_at(&d, 10, 9, "explore.delay", &["found 1 value"]);
    let d = invalid(&explore("loss = 0.05\n"));
    assert_at(&d, 10, 8, "explore.loss", &["expected an array"]);
    let d = invalid(&explore("loss = [0.1, 0.05]\n"));
    assert_at(
        &d,
        10,
        8,
        "explore.loss",
        &["loss's min (0.1) is greater than its max (0.05)"],
    );
    let d = invalid(&explore("delay = [\"40ms\", \"1ms\"]\n"));
    assert_at(
        &d,
        10,
        9,
        "explore.delay",
        &["min (\"40ms\") is greater than its max (\"1ms\")"],
    );
    let d = invalid(&explore("duplicate = [0, 1.5]\n"));
    assert_at(
        &d,
        10,
        17,
        "explore.duplicate[1]",
        &["duplicate[1] must be between 0 and 1", "1.5"],
    );
    let d = invalid(&explore("reorder = [-0.1, 0]\n"));
    assert_at(&d, 10, 12, "explore.reorder[0]", &["between 0 and 1"]);
    let d = invalid(&explore("jitter = [\"-1ms\", \"1ms\"]\n"));
    assert_at(&d, 10, 11, "explore.jitter[0]", &["negative"]);
    let d = invalid(&explore("lasts = [\"0s\", \"1s\"]\n"));
    assert_at(
        &d,
        10,
        10,
        "explore.lasts[0]",
        &["lasts[0] must be greater than 0"],
    );
}

#[test]
fn the_window_lies_within_the_run() {
    let d = invalid(&explore("window = [\"10s\", \"2h\"]\n"));
    assert_at(
        &d,
        10,
        18,
        "explore.window[1]",
        &["window ends at 2h, after the end of the run (duration = 1h)"],
    );
    let d = invalid(&explore("window = [\"10s\", \"10s\"]\n"));
    assert_at(
        &d,
        10,
        10,
        "explore.window",
        &["no time for a fault to start"],
    );
    let d = invalid(&explore("window = [\"20s\", \"10s\"]\n"));
    assert_at(&d, 10, 10, "explore.window", &["greater than its max"]);
    // The run's end itself is the end of the window a fault may start in.
    let s = parse(&explore("window = [\"0s\", \"1h\"]\n"));
    assert_eq!(
        s.explore.window,
        Some((Duration::ZERO, Duration::from_secs(3_600)))
    );
}

#[test]
fn other_explore_values_are_checked() {
    let d = invalid(&explore("network = 101\n"));
    assert_at(&d, 10, 11, "explore.network", &["from 0 to 100", "101"]);
    let d = invalid(&explore("network = -1\n"));
    assert_at(&d, 10, 11, "explore.network", &["from 0 to 100"]);
    let d = invalid(&explore("shift = \"-2s\"\n"));
    assert_at(&d, 10, 9, "explore.shift", &["negative"]);
    assert_eq!(
        parse(&explore("shift = \"0s\"\n")).explore.shift,
        Duration::ZERO
    );
    let d = invalid(&explore("partitions = \"yes\"\n"));
    assert_at(
        &d,
        10,
        14,
        "explore.partitions",
        &["true or false", "\"yes\""],
    );
    let d = invalid(&explore("seeds = 100\n"));
    assert_at(
        &d,
        10,
        1,
        "explore.seeds",
        &["unknown key", "seeds", "shift", "partitions"],
    );
}
