//! Checker tests for `[[fault]]`.

use super::*;

#[test]
fn fault_naming_unknown_server() {
    let d = invalid(&format!(
        "{MINIMAL}\n[[fault]]\nat = \"1m\"\naction = \"fail\"\nserver = \"media-9\"\n"
    ));
    assert_at(&d, 12, 10, "fault[0].server", &[]);
    assert_eq!(
        d.message,
        "no server named \"media-9\"; servers are media-1, media-2"
    );
}

#[test]
fn unknown_server_list_is_capped() {
    let text = "name = \"x\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = 12\ncapacity = 1\n\
                [[fault]]\nat = 5\naction = \"drain\"\nserver = \"nope\"\n";
    let d = invalid(text);
    assert_at(
        &d,
        10,
        10,
        "fault[0].server",
        &["media-10", ", ... (12 in all)"],
    );
    assert!(!d.message.contains("media-11"), "{d}");
}

#[test]
fn fault_at_not_before_end() {
    let d = invalid(&format!(
        "name = \"x\"\nseed = 1\nduration = \"1h\"\n{}\n[[fault]]\nat = \"60m\"\naction = \"fail\"\nserver = \"media-1\"\n",
        &MINIMAL[22..]
    ));
    assert_at(&d, 11, 6, "fault[0].at", &["at (1h)", "duration = 1h"]);
}
