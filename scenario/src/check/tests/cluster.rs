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
