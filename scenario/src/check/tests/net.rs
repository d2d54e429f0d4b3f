//! Checker tests for network faults in `[[fault]]`: loss, delay, duplicate, reorder, and
//! partition and heal of a set of endpoints.

use super::*;

/// MINIMAL (media-1 and media-2) with one `[[fault]]` whose keys start at line 10.
fn net(keys: &str) -> String {
    format!("{MINIMAL}\n[[fault]]\n{keys}")
}

/// A second `[[fault]]` after `net`'s first: with a first of N lines, the second's keys start
/// at line 12 + N.
fn two(first: &str, second: &str) -> String {
    format!("{}\n[[fault]]\n{second}", net(first))
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn every_network_fault_is_read_with_its_defaults() {
    let text = format!(
        "{MINIMAL}\n\
         [[fault]]\nat = \"10s\"\naction = \"loss\"\nfraction = 0.05\nfor = \"5s\"\n\
         [[fault]]\nat = \"11s\"\naction = \"delay\"\ndelay = \"30ms\"\njitter = \"10ms\"\n\
         endpoints = [\"media-1\", \"cm\"]\n\
         [[fault]]\nat = \"12s\"\naction = \"delay\"\ndelay = \"5ms\"\n\
         [[fault]]\nat = \"13s\"\naction = \"duplicate\"\nfraction = 1\nendpoints = [\"load\"]\n\
         [[fault]]\nat = \"14s\"\naction = \"reorder\"\nfraction = 0.5\nby = \"50ms\"\n\
         [[fault]]\nat = \"15s\"\naction = \"reorder\"\nfraction = 0\n\
         [[fault]]\nat = \"20s\"\naction = \"fail\"\nserver = \"media-2\"\n\
         [[fault]]\nat = \"30s\"\naction = \"heal\"\nendpoints = [\"cm\", \"media-1\"]\n\
         [[fault]]\nat = \"25s\"\naction = \"partition\"\nendpoints = [\"media-1\", \"cm\"]\n\
         [[fault]]\nat = \"40s\"\naction = \"partition\"\nendpoints = [\"load\"]\nfor = \"2s\"\n"
    );
    let s = parse(&text);
    let secs = Duration::from_secs;
    let ms = Duration::from_millis;
    assert_eq!(
        s.net_faults,
        [
            NetFaultSpec {
                at: secs(10),
                kind: NetKind::Loss { fraction: 0.05 },
                lasts: Some(secs(5)),
                endpoints: Vec::new(),
            },
            NetFaultSpec {
                at: secs(11),
                kind: NetKind::Delay {
                    delay: ms(30),
                    jitter: ms(10)
                },
                lasts: None,
                endpoints: names(&["media-1", "cm"]),
            },
            NetFaultSpec {
                at: secs(12),
                kind: NetKind::Delay {
                    delay: ms(5),
                    jitter: Duration::ZERO
                },
                lasts: None,
                endpoints: Vec::new(),
            },
            NetFaultSpec {
                at: secs(13),
                kind: NetKind::Duplicate { fraction: 1.0 },
                lasts: None,
                endpoints: names(&["load"]),
            },
            NetFaultSpec {
                at: secs(14),
                kind: NetKind::Reorder {
                    fraction: 0.5,
                    by: ms(50)
                },
                lasts: None,
                endpoints: Vec::new(),
            },
            NetFaultSpec {
                at: secs(15),
                kind: NetKind::Reorder {
                    fraction: 0.0,
                    by: ms(20)
                },
                lasts: None,
                endpoints: Vec::new(),
            },
            // File order, not time order: the heal is written before its partition.
            NetFaultSpec {
                at: secs(30),
                kind: NetKind::Heal,
                lasts: None,
                endpoints: names(&["cm", "media-1"]),
            },
            NetFaultSpec {
                at: secs(25),
                kind: NetKind::Partition,
                lasts: None,
                endpoints: names(&["media-1", "cm"]),
            },
            NetFaultSpec {
                at: secs(40),
                kind: NetKind::Partition,
                lasts: Some(secs(2)),
                endpoints: names(&["load"]),
            },
        ]
    );
    // The server fault among them stays a server fault, and only it.
    assert_eq!(
        s.faults,
        [FaultSpec {
            at: secs(20),
            action: Verb::Fail,
            server: "media-2".to_owned(),
        }]
    );
    let kinds: Vec<&str> = s.net_faults.iter().map(|f| f.kind.name()).collect();
    assert_eq!(
        kinds,
        [
            "loss",
            "delay",
            "delay",
            "duplicate",
            "reorder",
            "reorder",
            "heal",
            "partition",
            "partition"
        ]
    );
    assert!(parse(MINIMAL).net_faults.is_empty());
}

#[test]
fn a_partition_with_server_stays_a_server_fault() {
    let s = parse(&two(
        "at = \"10s\"\naction = \"partition\"\nserver = \"media-1\"\n",
        "at = \"12s\"\naction = \"heal\"\nserver = \"media-1\"\n",
    ));
    assert!(s.net_faults.is_empty());
    let verbs: Vec<Verb> = s.faults.iter().map(|f| f.action).collect();
    assert_eq!(verbs, [Verb::Partition, Verb::Heal]);
    // Without either, the message says both ways of writing it.
    let d = invalid(&net("at = \"10s\"\naction = \"partition\"\n"));
    assert_at(
        &d,
        9,
        1,
        "fault[0].server",
        &["missing required key `server`", "endpoints"],
    );
}

#[test]
fn an_unknown_action_lists_the_network_ones_too() {
    let d = invalid(&net("at = \"10s\"\naction = \"drop\"\n"));
    assert_at(
        &d,
        11,
        10,
        "fault[0].action",
        &[
            "fail, partition",
            "loss, delay, duplicate, reorder",
            "\"drop\"",
        ],
    );
}

#[test]
fn endpoints_are_servers_the_call_manager_or_the_load() {
    let d = invalid(&net(
        "at = \"10s\"\naction = \"loss\"\nfraction = 0.1\nendpoints = [\"media-1\", \"mdia-2\"]\n",
    ));
    assert_at(
        &d,
        13,
        25,
        "fault[0].endpoints[1]",
        &[
            "no endpoint named \"mdia-2\"",
            "cm (the Call Manager)",
            "media-1, media-2",
        ],
    );
    let d = invalid(&net(
        "at = \"10s\"\naction = \"loss\"\nfraction = 0.1\nendpoints = [\"cm\", \"cm\"]\n",
    ));
    assert_at(
        &d,
        13,
        20,
        "fault[0].endpoints[1]",
        &["\"cm\" is listed twice"],
    );
    let d = invalid(&net(
        "at = \"10s\"\naction = \"partition\"\nendpoints = [\"media-1\", 2]\n",
    ));
    assert_at(
        &d,
        12,
        25,
        "fault[0].endpoints[1]",
        &["must be a string", "2"],
    );
    // A server called as the Call Manager is would make the name mean two things.
    let d = invalid(
        "name = \"x\"\n[[pool]]\nrole = \"media\"\nnames = [\"cm\", \"m2\"]\ncapacity = 9\n\
         [[fault]]\nat = \"1s\"\naction = \"partition\"\nendpoints = [\"cm\"]\n",
    );
    assert_at(
        &d,
        9,
        14,
        "fault[0].endpoints[0]",
        &["both a server's name and the Call Manager's"],
    );
}

#[test]
fn empty_endpoints_name_nothing() {
    let d = invalid(&net(
        "at = \"10s\"\naction = \"delay\"\ndelay = \"1ms\"\nendpoints = []\n",
    ));
    assert_at(
        &d,
        13,
        13,
        "fault[0].endpoints",
        &["touch no datagram", "leave endpoints out"],
    );
    let d = invalid(&net(
        "at = \"10s\"\naction = \"partition\"\nendpoints = []\n",
    ));
    assert_at(
        &d,
        12,
        13,
        "fault[0].endpoints",
        &["names nothing to partition"],
    );
    let d = invalid(&net("at = \"10s\"\naction = \"heal\"\nendpoints = []\n"));
    assert_at(&d, 12, 13, "fault[0].endpoints", &["names nothing to heal"]);
}

#[test]
fn a_partition_of_every_endpoint_cuts_nothing_off() {
    let d = invalid(&net("at = \"10s\"\naction = \"partition\"\n\
         endpoints = [\"load\", \"media-2\", \"cm\", \"media-1\"]\n"));
    assert_at(&d, 12, 13, "fault[0].endpoints", &["cuts nothing off"]);
}

#[test]
fn fractions_are_between_0_and_1_and_required() {
    let d = invalid(&net("at = \"10s\"\naction = \"loss\"\nfraction = 1.5\n"));
    assert_at(&d, 12, 12, "fault[0].fraction", &["between 0 and 1", "1.5"]);
    let d = invalid(&net(
        "at = \"10s\"\naction = \"duplicate\"\nfraction = -0.1\n",
    ));
    assert_at(
        &d,
        12,
        12,
        "fault[0].fraction",
        &["between 0 and 1", "-0.1"],
    );
    let d = invalid(&net(
        "at = \"10s\"\naction = \"reorder\"\nfraction = \"5%\"\n",
    ));
    assert_at(
        &d,
        12,
        12,
        "fault[0].fraction",
        &["must be a number", "\"5%\""],
    );
    let d = invalid(&net("at = \"10s\"\naction = \"loss\"\n"));
    assert_at(
        &d,
        9,
        1,
        "fault[0].fraction",
        &["missing required key `fraction` in fault[0]"],
    );
}

#[test]
fn durations_of_network_faults_are_positive() {
    let d = invalid(&net("at = \"10s\"\naction = \"delay\"\ndelay = \"0ms\"\n"));
    assert_at(&d, 12, 9, "fault[0].delay", &["greater than 0"]);
    let d = invalid(&net("at = \"10s\"\naction = \"delay\"\ndelay = \"-3ms\"\n"));
    assert_at(&d, 12, 9, "fault[0].delay", &["negative"]);
    let d = invalid(&net("at = \"10s\"\naction = \"delay\"\ndelay = true\n"));
    assert_at(&d, 12, 9, "fault[0].delay", &["must be a duration"]);
    let d = invalid(&net("at = \"10s\"\naction = \"delay\"\n"));
    assert_at(
        &d,
        9,
        1,
        "fault[0].delay",
        &["missing required key `delay`"],
    );
    let d = invalid(&net(
        "at = \"10s\"\naction = \"delay\"\ndelay = \"1ms\"\njitter = \"-1ms\"\n",
    ));
    assert_at(&d, 13, 10, "fault[0].jitter", &["negative"]);
    let d = invalid(&net(
        "at = \"10s\"\naction = \"reorder\"\nfraction = 0.1\nby = \"0s\"\n",
    ));
    assert_at(&d, 13, 6, "fault[0].by", &["greater than 0"]);
    let d = invalid(&net(
        "at = \"10s\"\naction = \"loss\"\nfraction = 0.1\nfor = \"0s\"\n",
    ));
    assert_at(&d, 13, 7, "fault[0].for", &["for must be greater than 0"]);
    let d = invalid(&net(
        "at = \"10s\"\naction = \"loss\"\nfraction = 0.1\nfor = \"5\"\n",
    ));
    assert_at(&d, 13, 7, "fault[0].for", &["needs a unit"]);
    let d = invalid(&net("at = \"-1s\"\naction = \"loss\"\nfraction = 0.1\n"));
    assert_at(&d, 10, 6, "fault[0].at", &["negative"]);
    let d = invalid(&net("at = \"2h\"\naction = \"loss\"\nfraction = 0.1\n"));
    assert_at(&d, 10, 6, "fault[0].at", &["before the end of the run"]);
}

#[test]
fn server_and_endpoints_do_not_go_together() {
    let d = invalid(&net(
        "at = \"10s\"\naction = \"partition\"\nserver = \"media-1\"\nendpoints = [\"media-1\"]\n",
    ));
    assert_at(
        &d,
        12,
        10,
        "fault[0].server",
        &["server and endpoints do not go together"],
    );
    let d = invalid(&net(
        "at = \"10s\"\naction = \"loss\"\nfraction = 0.1\nserver = \"media-1\"\n",
    ));
    assert_at(
        &d,
        13,
        10,
        "fault[0].server",
        &["a loss fault acts on the network", "endpoints = [...]"],
    );
    let d = invalid(&net(
        "at = \"10s\"\naction = \"fail\"\nserver = \"media-1\"\nendpoints = [\"media-1\"]\n",
    ));
    assert_at(
        &d,
        13,
        13,
        "fault[0].endpoints",
        &[
            "endpoints are for network faults",
            "fail acts on one server",
        ],
    );
}

#[test]
fn a_key_of_another_kind_of_fault_is_named() {
    let d = invalid(&net(
        "at = \"10s\"\naction = \"delay\"\ndelay = \"1ms\"\nfraction = 0.1\n",
    ));
    assert_at(
        &d,
        13,
        12,
        "fault[0].fraction",
        &[
            "fraction is not a key of a delay fault",
            "endpoints, delay, jitter and for",
        ],
    );
    // Named even before the missing key of the kind itself.
    let d = invalid(&net("at = \"10s\"\naction = \"loss\"\njitter = \"1ms\"\n"));
    assert_at(
        &d,
        12,
        10,
        "fault[0].jitter",
        &[
            "jitter is not a key of a loss fault",
            "endpoints, fraction and for",
        ],
    );
    let d = invalid(&net(
        "at = \"10s\"\naction = \"duplicate\"\nfraction = 0.1\nby = \"5ms\"\n",
    ));
    assert_at(
        &d,
        13,
        6,
        "fault[0].by",
        &["by is not a key of a duplicate fault"],
    );
    let d = invalid(&net(
        "at = \"10s\"\naction = \"partition\"\nendpoints = [\"cm\"]\ndelay = \"5ms\"\n",
    ));
    assert_at(
        &d,
        13,
        9,
        "fault[0].delay",
        &["not a key of a partition fault", "endpoints and for"],
    );
    // A heal has no duration of its own: it is the end of one.
    let d = invalid(&two(
        "at = \"10s\"\naction = \"partition\"\nendpoints = [\"cm\"]\n",
        "at = \"12s\"\naction = \"heal\"\nendpoints = [\"cm\"]\nfor = \"1s\"\n",
    ));
    assert_at(
        &d,
        18,
        7,
        "fault[1].for",
        &["for is not a key of a heal fault, which takes endpoints beside"],
    );
    // Server faults take none of them.
    let d = invalid(&net(
        "at = \"10s\"\naction = \"fail\"\nserver = \"media-1\"\nfor = \"3s\"\n",
    ));
    assert_at(
        &d,
        13,
        7,
        "fault[0].for",
        &["for is a key of network faults, not of fail"],
    );
    let d = invalid(&net(
        "at = \"10s\"\naction = \"partition\"\nserver = \"media-1\"\nfraction = 1\n",
    ));
    assert_at(&d, 13, 12, "fault[0].fraction", &["not of partition"]);
}

#[test]
fn unknown_keys_in_a_fault_are_named_with_the_allowed_ones() {
    let d = invalid(&net(
        "at = \"10s\"\naction = \"loss\"\nfraction = 0.1\nduration = \"5s\"\n",
    ));
    assert_at(
        &d,
        13,
        1,
        "fault[0].duration",
        &["unknown key", "duration", "endpoints", "for"],
    );
}

#[test]
fn a_heal_ends_a_partition_of_the_same_set_in_effect() {
    let partition = "at = \"10s\"\naction = \"partition\"\nendpoints = [\"media-1\", \"cm\"]\n";
    // Another set than the one partitioned.
    let d = invalid(&two(
        partition,
        "at = \"12s\"\naction = \"heal\"\nendpoints = [\"media-1\"]\n",
    ));
    assert_at(
        &d,
        17,
        13,
        "fault[1].endpoints",
        &["no partition of [media-1] is in effect at 12s"],
    );
    // A heal with nothing partitioned at all.
    let d = invalid(&net(
        "at = \"10s\"\naction = \"heal\"\nendpoints = [\"load\"]\n",
    ));
    assert_at(
        &d,
        12,
        13,
        "fault[0].endpoints",
        &["no partition of [load]"],
    );
    // Before the partition it would end.
    let d = invalid(&two(
        partition,
        "at = \"9s\"\naction = \"heal\"\nendpoints = [\"cm\", \"media-1\"]\n",
    ));
    assert_at(&d, 17, 13, "fault[1].endpoints", &["in effect at 9s"]);
    // After the partition ended by itself.
    let d = invalid(&two(
        &format!("{partition}for = \"1s\"\n"),
        "at = \"12s\"\naction = \"heal\"\nendpoints = [\"cm\", \"media-1\"]\n",
    ));
    assert_at(&d, 18, 13, "fault[1].endpoints", &["in effect at 12s"]);
    // Twice.
    let healed = two(
        partition,
        "at = \"12s\"\naction = \"heal\"\nendpoints = [\"cm\", \"media-1\"]\n",
    );
    assert_eq!(parse(&healed).net_faults.len(), 2);
    let d = invalid(&format!(
        "{healed}\n[[fault]]\nat = \"13s\"\naction = \"heal\"\nendpoints = [\"cm\", \"media-1\"]\n"
    ));
    assert_at(&d, 22, 13, "fault[2].endpoints", &["in effect at 13s"]);
    // A partition that ended by itself can be followed by another of the same set, and that one
    // healed.
    let again = format!(
        "{}\n[[fault]]\nat = \"15s\"\naction = \"partition\"\nendpoints = [\"cm\", \"media-1\"]\n\
         \n[[fault]]\nat = \"16s\"\naction = \"heal\"\nendpoints = [\"media-1\", \"cm\"]\n",
        net(&format!("{partition}for = \"1s\"\n"))
    );
    assert_eq!(parse(&again).net_faults.len(), 3);
}

#[test]
fn a_set_is_not_partitioned_twice_at_once() {
    let d = invalid(&two(
        "at = \"10s\"\naction = \"partition\"\nendpoints = [\"media-1\", \"cm\"]\n",
        "at = \"11s\"\naction = \"partition\"\nendpoints = [\"cm\", \"media-1\"]\n",
    ));
    assert_at(
        &d,
        17,
        13,
        "fault[1].endpoints",
        &[
            "already cut off at 11s by fault[0] (partition at 10s)",
            "heal them first",
        ],
    );
    // Overlapping sets are different partitions.
    let s = parse(&two(
        "at = \"10s\"\naction = \"partition\"\nendpoints = [\"media-1\", \"cm\"]\n",
        "at = \"11s\"\naction = \"partition\"\nendpoints = [\"media-1\"]\n",
    ));
    assert_eq!(s.net_faults.len(), 2);
}

#[test]
fn mangled_network_faults_and_explore_never_panic() {
    let text = format!(
        "{MINIMAL}\n[[fault]]\nat = \"10s\"\naction = \"partition\"\nendpoints = [\"media-1\", \"cm\"]\n\
         for = \"2s\"\n\n[[fault]]\nat = \"11s\"\naction = \"heal\"\nendpoints = [\"cm\", \"media-1\"]\n\
         \n[[fault]]\nat = \"12s\"\naction = \"reorder\"\nfraction = 0.1\nby = \"5ms\"\n\
         endpoints = [\"load\"]\n\n[explore]\nwindow = [\"5s\", \"30s\"]\nloss = [0, 0.1]\n\
         lasts = [\"1s\", \"2s\"]\npartitions = true\n"
    );
    assert_eq!(parse(&text).net_faults.len(), 3);
    for end in 0..=text.len() {
        let _ = Scenario::from_toml("t.toml", &text[..end]);
    }
    for line in text.lines() {
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        for value in [
            "-1",
            "0",
            "\"\"",
            "[]",
            "[1]",
            "[\"cm\", 1]",
            "1e308",
            "true",
            "{}",
        ] {
            let _ = Scenario::from_toml(
                "t.toml",
                &text.replacen(line, &format!("{key} = {value}"), 1),
            );
        }
    }
}
