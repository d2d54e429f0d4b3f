//! Checker tests for `[cluster]`.

use super::*;

#[test]
fn cluster_lists_public_services_and_trusted_sources() {
    let s = parse(&format!(
        "{MINIMAL}\n[cluster]\npublic = [\"echo\", \"ivr-*\"]\ntrusted = [\"127.0.0.7\", \"::1\"]\n"
    ));
    assert_eq!(
        s.cluster,
        ClusterSpec {
            public: Some(vec!["echo".into(), "ivr-*".into()]),
            trusted: vec!["127.0.0.7".parse().unwrap(), "::1".parse().unwrap()],
        }
    );
    assert_eq!(parse(MINIMAL).cluster, ClusterSpec::default());
    let none = parse(&format!("{MINIMAL}\n[cluster]\npublic = []\n"));
    assert_eq!(none.cluster.public, Some(Vec::new()));
}

#[test]
fn cluster_refuses_what_is_no_pattern_or_address() {
    let d = invalid(&format!(
        "{MINIMAL}\n[cluster]\ntrusted = [\"10.0.0.300\"]\n"
    ));
    assert_at(
        &d,
        10,
        12,
        "cluster.trusted[0]",
        &["IP address", "10.0.0.300"],
    );
    let d = invalid(&format!(
        "{MINIMAL}\n[cluster]\npublic = [\"echo\", \"a b\"]\n"
    ));
    assert_at(&d, 10, 19, "cluster.public[1]", &["prefix ending in `*`"]);
    let d = invalid(&format!("{MINIMAL}\n[cluster]\npublik = []\n"));
    assert_at(&d, 10, 1, "cluster.publik", &["unknown key", "publik"]);
}

#[test]
fn callmanager_names_its_call_managers_and_takes_their_faults() {
    assert_eq!(parse(MINIMAL).callmanager, CallManagerSpec::default());
    assert!(CallManagerSpec::default().names().is_empty());
    let s = parse(&format!(
        "{MINIMAL}\n[callmanager]\nnodes = 3\nheartbeat = \"50ms\"\nmisses = 4\n\n\
         [[fault]]\nat = \"1s\"\naction = \"fail\"\nserver = \"cm-1\"\n\n\
         [[fault]]\nat = \"2s\"\naction = \"upgrade\"\nserver = \"cm-3\"\n"
    ));
    assert_eq!(
        s.callmanager,
        CallManagerSpec {
            nodes: 3,
            heartbeat: Duration::from_millis(50),
            misses: 4,
        }
    );
    assert_eq!(s.callmanager.names(), ["cm-1", "cm-2", "cm-3"]);
    assert_eq!(s.callmanager.silence(), Duration::from_millis(200));
    assert_eq!(s.faults.len(), 2);
    assert_eq!(
        (s.faults[0].action, s.faults[0].server.as_str()),
        (Verb::Fail, "cm-1")
    );
}

#[test]
fn callmanager_refuses_an_even_count_a_wild_heartbeat_and_operator_verbs() {
    let d = invalid(&format!("{MINIMAL}\n[callmanager]\nnodes = 2\n"));
    assert_at(&d, 10, 9, "callmanager.nodes", &["1, 3 or 5", "majority"]);
    let d = invalid(&format!("{MINIMAL}\n[callmanager]\nheartbeat = \"1ms\"\n"));
    assert_at(&d, 10, 13, "callmanager.heartbeat", &["10ms to 10s"]);
    let d = invalid(&format!(
        "{MINIMAL}\n[callmanager]\nnodes = 3\n\n[[fault]]\nat = \"1s\"\naction = \"disable\"\nserver = \"cm-2\"\n"
    ));
    assert_eq!(d.key, "fault[0].action", "{d}");
    assert!(d.message.contains("cm-2 is a Call Manager"), "{d}");
    // One Call Manager is nobody's to take over from: the message says how to get three.
    let d = invalid(&format!(
        "{MINIMAL}\n[[fault]]\nat = \"1s\"\naction = \"fail\"\nserver = \"cm-1\"\n"
    ));
    assert_eq!(d.key, "fault[0].server", "{d}");
    assert!(d.message.contains("[callmanager] nodes = 3"), "{d}");
}
