//! Checker tests for `[[pool]]` and `[health]`.

use super::*;

#[test]
fn unknown_key_in_pool() {
    let d = invalid(&format!("{MINIMAL}colour = 1\n"));
    assert_at(&d, 8, 1, "pool[0].colour", &["colour", "role", "capacity"]);
}

#[test]
fn wrong_type_for_capacity() {
    let d = invalid(
        "name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = 2\ncapacity = \"many\"\n",
    );
    assert_at(
        &d,
        6,
        12,
        "pool[0].capacity",
        &["capacity", "\"many\"", "whole number"],
    );
}

#[test]
fn negative_capacity() {
    let d =
        invalid("name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = 2\ncapacity = -5\n");
    assert_at(&d, 6, 12, "pool[0].capacity", &[]);
    assert_eq!(
        d.message,
        "capacity must be a whole number of at least 1, found -5"
    );
    assert_eq!(
        d.to_string(),
        "t.toml:6:12: error: pool[0].capacity: capacity must be a whole number of at least 1, found -5"
    );
}

#[test]
fn duplicate_server_names() {
    let d = invalid(&format!(
        "{MINIMAL}\n[[pool]]\nrole = \"ivr\"\nnames = [\"ivr-a\", \"media-2\"]\ncapacity = 10\n"
    ));
    assert_at(
        &d,
        11,
        19,
        "pool[1].names[1]",
        &["\"media-2\"", "pool[0].servers"],
    );
}

#[test]
fn duplicate_role_pools() {
    let d = invalid(&format!(
        "{MINIMAL}\n[[pool]]\nrole = \"media\"\nservers = 1\ncapacity = 10\n"
    ));
    assert_at(
        &d,
        10,
        8,
        "pool[1].role",
        &["already a media pool", "pool[0]"],
    );
}

#[test]
fn servers_and_names_together() {
    let d = invalid(&format!("{MINIMAL}names = [\"a\", \"b\"]\n"));
    assert_at(&d, 8, 9, "pool[0].names", &["servers", "names", "not both"]);
}

#[test]
fn probe_timeout_not_below_interval() {
    let d = invalid(&format!(
        "{MINIMAL}\n[health]\nprobe_interval = \"1s\"\nprobe_timeout = \"1s\"\n"
    ));
    assert_at(
        &d,
        11,
        17,
        "health.probe_timeout",
        &["probe_timeout", "probe_interval"],
    );
}

#[test]
fn a_pool_may_start_empty_for_remote_nodes() {
    let s =
        parse("name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = 0\ncapacity = 60\n");
    assert!(s.pools[0].servers.is_empty());
    assert_eq!(s.warnings.len(), 1);
    assert_eq!(s.warnings[0].key, "pool[0].servers");
    assert!(s.warnings[0].message.contains("pbxlab node"));
    // A negative count is still an error.
    let d =
        invalid("name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = -1\ncapacity = 6\n");
    assert_eq!(d.key, "pool[0].servers");
}

#[test]
fn warnings_are_not_errors() {
    let s =
        parse("name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = 1\ncapacity = 6000\n");
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    let capacity = &s.warnings[0];
    assert_eq!(capacity.severity, Severity::Warning);
    assert_eq!((capacity.line, capacity.column), (6, 12));
    assert_eq!(capacity.key, "pool[0].capacity");
    assert!(capacity.message.contains("5,000 concurrent call sessions"));
    let single = &s.warnings[1];
    assert_eq!((single.line, single.column), (5, 11));
    assert_eq!(single.key, "pool[0].servers");
    assert!(single.message.contains("no N+1: losing media-1"));
    assert!(
        single
            .to_string()
            .starts_with("t.toml:5:11: warning: pool[0].servers: ")
    );
}
