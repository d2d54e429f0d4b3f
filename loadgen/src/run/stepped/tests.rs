//! The stepped driver against a scripted echo service over a network of the test's own: a
//! fixed latency, every datagram delivered in send order, time jumping from one event to the
//! next.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use pbxlab_proto::sip::{self, HeaderName, Method};

use super::Stepped;
use crate::engine::{Callee, Config, Grid, Hold, Nanos, Workload};
use crate::report::LoadReport;
use crate::users::{Password, UserOrder, Users};

const MS: Nanos = 1_000_000;
const LATENCY: Nanos = MS;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

const TARGET: u16 = 5060;
const TARGET_RTP: u16 = 5062;

fn config(calls: u64, seed: u64) -> Config {
    Config {
        target: addr(TARGET),
        local: addr(6000),
        rtp_local: addr(7000),
        domain: "127.0.0.1".into(),
        users: Users::new(),
        user_order: UserOrder::Sequential,
        register: false,
        register_rate: 100.0,
        expires_s: 3600,
        workloads: vec![Workload::new(
            "echo",
            Callee::Service("echo".into()),
            calls,
            20.0,
            Hold::Fixed(Duration::from_secs(2)),
        )],
        reserved: 0,
        shard: (0, 1),
        rtp_fraction: 1.0,
        max_concurrent: None,
        ring_delay: Duration::from_millis(300),
        service_level: Duration::from_secs(20),
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
        seed,
        run_id: 7,
        arrival_grid: Grid::Auto,
        drain_limit: Duration::from_secs(60),
        callers_password: Password::Prefix("pw-".into()),
    }
}

/// An echo service: answers INVITE and BYE with 200, takes ACK, sends every RTP packet back
/// to where it came from, except in the `mute` window.
struct Echo {
    mute: Option<(Nanos, Nanos)>,
}

impl Echo {
    fn answer(&self, req: &[u8]) -> Option<Vec<u8>> {
        let msg = sip::parse_datagram(req).ok()?;
        let method = msg.method()?;
        if method == Method::Ack {
            return None;
        }
        let body = if method == Method::Invite {
            format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=audio {TARGET_RTP} RTP/AVP 0 101\r\n"
            )
        } else {
            String::new()
        };
        let mut out = String::from("SIP/2.0 200 OK\r\n");
        for v in msg.values(HeaderName::Via) {
            out.push_str(&format!("Via: {v}\r\n"));
        }
        let to = msg.header(HeaderName::To)?;
        let tag = if to.contains("tag=") { "" } else { ";tag=echo" };
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        out.push_str(&format!(
            "From: {}\r\nTo: {to}{tag}\r\nCall-ID: {}\r\nCSeq: {}\r\n\
             Contact: <sip:echo@127.0.0.1:{TARGET}>\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
            msg.header(HeaderName::From)?,
            msg.call_id()?,
            msg.header(HeaderName::CSeq)?,
            body.len()
        ));
        Some(out.into_bytes())
    }
}

/// Runs `load` against `echo` to its end (or `until`), returning the report.
fn run(mut load: Stepped, echo: &Echo, until: Option<Nanos>) -> LoadReport {
    let mut wire: VecDeque<(Nanos, SocketAddr, SocketAddr, Vec<u8>)> = VecDeque::new();
    let mut now = 0;
    let mut steps = 0u32;
    while !load.is_finished() {
        steps += 1;
        assert!(steps < 10_000_000, "the run never ends");
        let next = [wire.front().map(|d| d.0), load.next_wakeup()]
            .into_iter()
            .flatten()
            .min()
            .expect("something is due while the run is not over");
        if until.is_some_and(|u| next > u) {
            break;
        }
        now = next.max(now);
        let mut heard = false;
        while wire.front().is_some_and(|d| d.0 <= now) {
            let Some((_, from, to, bytes)) = wire.pop_front() else {
                break;
            };
            if to.port() == TARGET {
                if let Some(reply) = echo.answer(&bytes) {
                    wire.push_back((now + LATENCY, to, from, reply));
                }
            } else if to.port() == TARGET_RTP {
                if echo.mute.is_none_or(|(from, to)| now < from || now >= to) {
                    wire.push_back((now + LATENCY, to, from, bytes));
                }
            } else {
                load.handle(now, from, to, &bytes);
                heard = true;
            }
        }
        if heard || load.next_wakeup().is_some_and(|w| w <= now) {
            load.advance(now, &mut |from, to, bytes| {
                wire.push_back((now + LATENCY, from, to, bytes.to_vec()));
            });
        }
    }
    load.finish(until.unwrap_or(now))
}

fn json(report: &LoadReport) -> String {
    serde_json::to_string(report).expect("a report serialises")
}

#[test]
fn calls_with_media_complete_on_the_callers_clock_and_repeat_exactly() {
    let one = run(
        Stepped::new(config(20, 1), Duration::from_secs(1), Vec::new()),
        &Echo { mute: None },
        None,
    );
    assert_eq!(one.calls.succeeded, 20, "{:?}", one.failures);
    assert!(!one.interrupted);
    // 20 calls at 20 a second held 2 s: the last hangs up at about 2.95 s.
    assert!(
        (2.9..3.5).contains(&one.duration_s),
        "duration {}",
        one.duration_s
    );
    assert_eq!(one.intervals.len(), 3, "two whole seconds and the rest");
    // 2 s of 50 frames a second each way, echoed back: nothing lost, no gap.
    assert!(one.rtp.packets_sent >= 20 * 99, "{}", one.rtp.packets_sent);
    assert_eq!(one.rtp.packets_received, one.rtp.packets_sent);
    assert_eq!(one.rtp.packets_lost, 0);
    assert!(one.gaps.is_empty(), "{:?}", one.gaps.first());
    assert!(one.emulator.is_empty(), "no thread to fall behind");
    assert_eq!(
        one.media_epoch, None,
        "the gaps count from the caller's zero"
    );
    // Setup is two network crossings: 2 ms.
    let setup = &one.metrics["setup"];
    assert!(
        (1_900..=2_100).contains(&setup.p99_us),
        "setup p99 {} µs",
        setup.p99_us
    );
    let again = run(
        Stepped::new(config(20, 1), Duration::from_secs(1), Vec::new()),
        &Echo { mute: None },
        None,
    );
    assert_eq!(json(&one), json(&again), "one seed, one run");
    let other = run(
        Stepped::new(config(20, 2), Duration::from_secs(1), Vec::new()),
        &Echo { mute: None },
        None,
    );
    assert_ne!(
        json(&one),
        json(&other),
        "the seed is in the Call-IDs at least"
    );
}

#[test]
fn a_silence_is_recorded_where_it_began_and_a_cut_run_is_interrupted() {
    let report = run(
        Stepped::new(config(5, 1), Duration::from_secs(1), Vec::new()),
        &Echo {
            mute: Some((1_000 * MS, 1_300 * MS)),
        },
        Some(1_500 * MS),
    );
    assert!(report.interrupted, "cut at 1.5 s with calls up");
    assert!(
        (report.duration_s - 1.5).abs() < 1e-9,
        "{}",
        report.duration_s
    );
    assert_eq!(report.calls.failed, 5, "{:?}", report.failures);
    // Every stream fell silent for the 300 ms the echo did, from its last packet before.
    assert_eq!(report.gaps.len(), 5, "{:?}", report.gaps);
    for g in &report.gaps {
        assert!(
            (980 * MS..1_000 * MS + LATENCY).contains(&g.start_ns),
            "gap from {} ns",
            g.start_ns
        );
        assert!(
            (300 * MS..=320 * MS).contains(&g.len_ns),
            "gap of {} ns",
            g.len_ns
        );
    }
}

#[test]
fn a_stop_hangs_up_and_ends_the_run_within_its_grace() {
    let mut load = Stepped::new(config(1000, 1), Duration::from_secs(1), Vec::new());
    let echo = Echo { mute: None };
    // Drive it to 1.2 s, then stop, then on to the end.
    let mut wire: VecDeque<(Nanos, SocketAddr, SocketAddr, Vec<u8>)> = VecDeque::new();
    let mut now = 0;
    let mut stopped = false;
    while !load.is_finished() {
        let next = [wire.front().map(|d| d.0), load.next_wakeup()]
            .into_iter()
            .flatten()
            .min()
            .expect("due");
        now = next.max(now);
        if !stopped && now >= 1_200 * MS {
            load.stop(now);
            stopped = true;
        }
        while wire.front().is_some_and(|d| d.0 <= now) {
            let Some((_, from, to, bytes)) = wire.pop_front() else {
                break;
            };
            if to.port() == TARGET {
                if let Some(reply) = echo.answer(&bytes) {
                    wire.push_back((now + LATENCY, to, from, reply));
                }
            } else if to.port() != TARGET_RTP {
                load.handle(now, from, to, &bytes);
            }
        }
        load.advance(now, &mut |from, to, bytes| {
            wire.push_back((now + LATENCY, from, to, bytes.to_vec()));
        });
    }
    assert!(now < 6_300 * MS, "ended at {now} ns");
    let report = load.finish(now);
    assert!(report.interrupted);
    assert!(report.calls.attempted < 1000);
    assert_eq!(
        report.calls.failed, 0,
        "hung up, not failed: {:?}",
        report.failures
    );
}
