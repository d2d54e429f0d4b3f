//! Checker tests for `[traffic]`.

use super::*;

#[test]
fn traffic_defaults_are_filled() {
    let s = parse(&format!(
        "{MINIMAL}\n[[pool]]\nrole = \"queue\"\nservers = 2\ncapacity = 10\n\
         \n[traffic.calls]\nrate = 3\nhold = \"2m\"\nhold_dist = \"lognormal\"\n\
         \n[traffic.queue]\nrate = \"30/min\"\nagents = 4\nhandle = 90\n\
         \n[traffic.registrations]\nusers = 10\n\
         \n[health]\nprobe_interval = \"3s\"\n"
    ));
    let calls = s.traffic.calls.expect("calls");
    assert_eq!(calls.rate_per_s, 3.0);
    assert_eq!(
        calls.hold,
        HoldDist::LogNormal {
            mean_s: 120.0,
            sigma: 1.0
        }
    );
    let queue = s.traffic.queue.expect("queue");
    assert_eq!(queue.rate_per_s, 0.5);
    assert_eq!(queue.queues, 1);
    assert_eq!(queue.handle, HoldDist::Exponential { mean_s: 90.0 });
    assert_eq!(queue.patience_s, None);
    assert_eq!(queue.service_level_s, 20.0);
    let registrations = s.traffic.registrations.expect("registrations");
    assert_eq!(registrations.expires, Duration::from_secs(3_600));
    assert_eq!(registrations.first_user, 1_000);
    assert_eq!(s.health.probe_timeout, Duration::from_millis(1_500));
}

#[test]
fn unknown_key_in_traffic_calls() {
    let d = invalid(&format!(
        "{MINIMAL}\n[traffic.calls]\nrate = \"1/s\"\nhold = \"1s\"\nholdd = \"2s\"\n"
    ));
    assert_at(&d, 12, 1, "traffic.calls.holdd", &["holdd", "hold_dist"]);
}

#[test]
fn bad_rate() {
    let d = invalid(&format!(
        "{MINIMAL}\n[traffic.calls]\nrate = \"5/fortnight\"\nhold = \"1s\"\n"
    ));
    assert_at(
        &d,
        10,
        8,
        "traffic.calls.rate",
        &["rate", "fortnight", "/min"],
    );
    let d = invalid(&format!(
        "{MINIMAL}\n[traffic.calls]\nrate = -2\nhold = \"1s\"\n"
    ));
    assert_at(&d, 10, 8, "traffic.calls.rate", &["rate", "at least 0"]);
}

#[test]
fn traffic_without_its_pool() {
    let d = invalid(&format!(
        "{MINIMAL}\n[traffic.meetings]\nrate = \"1/s\"\nparticipants = 3\nduration = \"30m\"\n"
    ));
    assert_at(&d, 9, 1, "traffic.meetings", &["meeting pool"]);
    let d = invalid(&format!(
        "{MINIMAL}\n[[pool]]\nrole = \"ivr\"\nservers = 2\ncapacity = 9\n\
         \n[traffic.ivr]\nrate = 1\nhold = 1\nthen_queue = 0.5\n"
    ));
    assert_at(&d, 17, 14, "traffic.ivr.then_queue", &["queue pool"]);
    // A queue pool without [traffic.queue] has no agents to serve transferred callers.
    let d = invalid(&format!(
        "{MINIMAL}\n[[pool]]\nrole = \"ivr\"\nservers = 2\ncapacity = 9\n\
         \n[[pool]]\nrole = \"queue\"\nservers = 2\ncapacity = 9\n\
         \n[traffic.ivr]\nrate = 1\nhold = 1\nthen_queue = 0.5\n"
    ));
    assert_at(&d, 22, 14, "traffic.ivr.then_queue", &["[traffic.queue]"]);
    // Registrations need no pool.
    parse(&format!("{MINIMAL}\n[traffic.registrations]\nusers = 5\n"));
}

#[test]
fn im_traffic_takes_its_defaults_and_names_its_users_by_the_registrations() {
    let s = parse(&format!(
        "{MINIMAL}\n[traffic.registrations]\nusers = 10\n\
         \n[traffic.im]\nmessages_per_user_hour = 36\nbuddies = 4\n"
    ));
    let im = s.traffic.im.expect("im");
    assert_eq!(im.messages_per_user_hour, 36.0);
    assert_eq!(im.messages_per_s(10), 0.1);
    assert_eq!(im.buddies, 4);
    assert_eq!(im.message_bytes, 160);
    assert_eq!(im.presence_per_user_hour, 2.0);
    assert_eq!(im.attachments_per_user_hour, 0.0);
}

#[test]
fn im_traffic_without_registrations_is_refused() {
    let d = invalid(&format!("{MINIMAL}\n[traffic.im]\nbuddies = 4\n"));
    assert_eq!(d.key, "traffic.im", "{d}");
    assert!(d.message.contains("needs [traffic.registrations]"), "{d}");
}

#[test]
fn an_im_message_larger_than_a_udp_message_allows_is_refused_where_it_is_written() {
    let d = invalid(&format!(
        "{MINIMAL}\n[traffic.registrations]\nusers = 10\n\n[traffic.im]\nmessage_bytes = 4000\n"
    ));
    assert_at(
        &d,
        13,
        17,
        "traffic.im.message_bytes",
        &["at most 1024", "RFC 3428", "4000"],
    );
    let d = invalid(&format!(
        "{MINIMAL}\n[traffic.registrations]\nusers = 10\n\n[traffic.im]\nbuddies = -1\n"
    ));
    assert_eq!(d.key, "traffic.im.buddies", "{d}");
}
