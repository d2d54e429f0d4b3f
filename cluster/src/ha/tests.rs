//! The replication messages on the wire, and three replicas exchanging them by hand (no
//! world): the election, the lease, output commit, a replayed or forged datagram.

use std::net::SocketAddr;
use std::time::Duration;

use pbxlab_balancer::{Balancer, HealthConfig, ServerId};
use pbxlab_proto::mac::Key;
use pbxlab_scenario::Verb;

use super::wire::{Input, Malformed, Msg, decode, decode_input, encode, encode_input};
use super::*;
use crate::cm::Config;
use crate::{MediaSession, NodeEvent};

const MS: Nanos = 1_000_000;

fn key() -> Key {
    Key::from_seed(7).derive("replication")
}

fn every_message() -> Vec<Msg> {
    vec![
        Msg::Heartbeat {
            term: 3,
            sent_at: 0,
            commit: 9,
        },
        Msg::Append {
            term: 3,
            commit: 4,
            first_seq: 5,
            prev_term: 2,
            entries: vec![(3, vec![1, 2, 3]), (2, Vec::new())],
        },
        Msg::Ack {
            term: 3,
            echo: Some(0),
            applied: 8,
            applied_term: 2,
        },
        Msg::Ack {
            term: 3,
            echo: None,
            applied: 0,
            applied_term: 0,
        },
        Msg::VoteRequest {
            term: 4,
            applied: 8,
            applied_term: 3,
            pre: true,
        },
        Msg::Vote {
            term: 4,
            granted: true,
            pre: false,
        },
        Msg::SyncRequest { term: 1 },
        Msg::Resign { term: 2 },
        Msg::Chunk {
            term: 2,
            applied: 70,
            total: 100_000,
            offset: 60_000,
            data: vec![7; 300],
        },
        Msg::ChunkAck {
            term: 2,
            applied: 70,
            got: 60_000,
            installed: false,
        },
    ]
}

#[test]
fn every_message_reads_back_as_written() {
    let mut out = Vec::new();
    for (i, msg) in every_message().into_iter().enumerate() {
        encode(&key(), 2, 40 + i as u64, &msg, &mut out);
        let sealed = decode(&key(), &out).unwrap();
        assert_eq!((sealed.from, sealed.counter), (2, 40 + i as u64));
        assert_eq!(sealed.msg, msg);
    }
}

#[test]
fn a_changed_byte_a_cut_datagram_or_another_key_is_refused() {
    let mut out = Vec::new();
    for msg in every_message() {
        encode(&key(), 1, 5, &msg, &mut out);
        for i in 0..out.len() {
            let mut bad = out.clone();
            if let Some(b) = bad.get_mut(i) {
                *b ^= 0x20;
            }
            assert!(decode(&key(), &bad).is_err(), "byte {i} of {msg:?} changed");
        }
        for n in 0..out.len() {
            assert!(
                decode(&key(), out.get(..n).unwrap()).is_err(),
                "{n} bytes of {msg:?}"
            );
        }
        assert_eq!(
            decode(&Key::from_seed(8), &out),
            Err(Malformed::Mac),
            "{msg:?} under another key"
        );
    }
}

#[test]
fn a_sealed_append_that_lies_about_its_count_is_refused_without_reserving_it() {
    // Sealed by someone with the key (a bug, not an attacker), it still cannot make the
    // reader reserve four billion entries.
    let mut body = Vec::new();
    body.extend_from_slice(wire::MAGIC);
    body.push(0);
    body.extend_from_slice(&1u64.to_be_bytes());
    body.push(2);
    for v in [1u64, 0, 1] {
        body.extend_from_slice(&v.to_be_bytes());
    }
    body.extend_from_slice(&u32::MAX.to_be_bytes());
    let mac = key().mac(&[body.as_slice()]);
    body.extend_from_slice(mac.get(..16).unwrap());
    assert_eq!(decode(&key(), &body), Err(Malformed::Short));
}

#[test]
fn every_input_reads_back_as_written() {
    let inputs = [
        Input::Datagram {
            from: "127.0.0.9:5062".parse().unwrap(),
            bytes: b"OPTIONS sip:x SIP/2.0\r\n\r\n".to_vec(),
        },
        Input::Datagram {
            from: "[::1]:7000".parse().unwrap(),
            bytes: Vec::new(),
        },
        Input::Advance,
        Input::Digit {
            server: ServerId(4),
            event: NodeEvent::Digit {
                session: MediaSession(77),
                digit: '#',
            },
        },
        Input::Admin {
            server: ServerId(2),
            verb: Verb::Drain,
        },
        Input::AddNode(crate::cm::NewNode {
            name: "media-9".into(),
            role: pbxlab_balancer::Role::Media,
            addr: "127.0.0.1:40000".parse().unwrap(),
            capacity: 500,
            place: crate::node::Place::InProcess,
            instance: 0,
        }),
        Input::AddNode(crate::cm::NewNode {
            name: "im-\u{e9}".into(),
            role: pbxlab_balancer::Role::Im,
            addr: "[::1]:7".parse().unwrap(),
            capacity: 0,
            place: crate::node::Place::Remote,
            instance: u64::MAX,
        }),
        Input::Relink {
            server: ServerId(3),
            instance: 0x1234_5678_9abc_def0,
        },
        Input::Whitelist {
            ip: "10.0.0.7".parse().unwrap(),
            add: true,
        },
        Input::Whitelist {
            ip: "::2".parse().unwrap(),
            add: false,
        },
    ];
    let mut out = Vec::new();
    for input in inputs {
        encode_input(123, &input, &mut out);
        assert_eq!(decode_input(&out), Ok((123, input.clone())));
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(decode_input(&longer), Err(Malformed::Trailing), "{input:?}");
        for n in 0..out.len() {
            assert!(
                decode_input(out.get(..n).unwrap()).is_err(),
                "{n} bytes of {input:?}"
            );
        }
    }
}

/// Replica `index` of the three the tests run.
fn ha_config(index: u8) -> HaConfig {
    HaConfig {
        index,
        addrs: addrs(),
        heartbeat: 100 * MS,
        misses: 3,
        key: key(),
        cm_secrets: Config::new("127.0.0.1:5060".parse().unwrap()).secrets(),
    }
}

fn addrs() -> Vec<SocketAddr> {
    (0..3)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 19_000 + i)))
        .collect()
}

fn cm() -> CallManager {
    let health =
        HealthConfig::new(Duration::from_secs(1), Duration::from_millis(500), 3, 2).unwrap();
    CallManager::new(
        Config::new("127.0.0.1:5060".parse().unwrap()),
        Balancer::new(health),
        Vec::new(),
    )
}

/// Three replicas and a network between them that a test runs by hand: every datagram
/// arrives after `LATENCY`, unless one end is cut.
struct Group {
    now: Nanos,
    replicas: Vec<Replica>,
    cut: Vec<bool>,
    flight: Vec<(Nanos, usize, Vec<u8>)>,
    /// Every Nth datagram to this replica is lost on the way.
    lossy: Option<(usize, usize)>,
    sent: usize,
}

const LATENCY: Nanos = 50_000;

impl Group {
    fn new() -> Group {
        let replicas = (0..3u8)
            .map(|i| Replica::new(ha_config(i), Some(cm()), 0))
            .collect();
        Group {
            now: 0,
            replicas,
            cut: vec![false; 3],
            flight: Vec::new(),
            lossy: None,
            sent: 0,
        }
    }

    /// Runs to `until`, one event at a time.
    fn run(&mut self, until: Nanos) {
        loop {
            // What the replicas queued since the last step (a test's input) leaves now.
            self.flush();
            let next = self
                .replicas
                .iter()
                .map(|r| r.next_deadline())
                .chain(self.flight.iter().map(|f| f.0))
                .min()
                .unwrap_or(Nanos::MAX)
                .max(self.now);
            if next > until {
                self.now = until;
                return;
            }
            self.now = next;
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flight)
                .into_iter()
                .partition(|f| f.0 <= now);
            self.flight = later;
            for (_, to, bytes) in due {
                if !self.cut[to] {
                    self.replicas[to].on_peer(now, &bytes);
                }
            }
            for r in &mut self.replicas {
                r.advance(now);
            }
        }
    }

    fn flush(&mut self) {
        let now = self.now;
        for i in 0..3 {
            for (to, bytes) in self.replicas[i].take_peer(now) {
                let to = addrs().iter().position(|&a| a == to).unwrap();
                if let Some((lossy, every)) = self.lossy
                    && lossy == to
                {
                    self.sent += 1;
                    if self.sent.is_multiple_of(every) {
                        continue;
                    }
                }
                if !self.cut[i] && !self.cut[to] {
                    self.flight.push((now + LATENCY, to, bytes));
                }
            }
        }
    }

    fn serving(&self) -> Vec<usize> {
        (0..3)
            .filter(|&i| self.replicas[i].serving(self.now))
            .collect()
    }
}

#[test]
fn the_first_replica_serves_once_a_standby_answers_and_nothing_leaves_before_one_holds_it() {
    let mut g = Group::new();
    assert!(
        g.serving().is_empty(),
        "serving before any standby answered"
    );
    g.run(MS);
    assert_eq!(g.serving(), vec![0]);
    let options = b"OPTIONS sip:cm@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.9:5062;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:cm@x>\r\nCall-ID: q1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    let now = g.now;
    assert!(g.replicas[0].handle(now, "127.0.0.9:5062".parse().unwrap(), options));
    let mut sent = Vec::new();
    g.replicas[0].transmit(|to, b| sent.push((to, b.to_vec())));
    assert!(
        sent.is_empty(),
        "the 200 left before a standby held the OPTIONS"
    );
    g.run(now + 3 * LATENCY);
    g.replicas[0].transmit(|to, b| sent.push((to, b.to_vec())));
    assert_eq!(sent.len(), 1, "the 200, once a standby acknowledged");
    assert!(sent[0].1.starts_with(b"SIP/2.0 200"));
    assert_eq!(g.replicas[1].applied(), g.replicas[0].applied());
    // A standby replays without sending: nothing of its Call Manager's goes out.
    let mut standby_sent = 0;
    g.replicas[1].transmit(|_, _| standby_sent += 1);
    assert_eq!(standby_sent, 0);
    // Standbys refuse inputs at the virtual IP.
    assert!(!g.replicas[1].handle(g.now, "127.0.0.9:5062".parse().unwrap(), options));
}

#[test]
fn the_active_fails_and_the_first_standby_takes_over_within_silence_skew_and_a_round_trip() {
    let mut g = Group::new();
    g.run(1_000 * MS);
    g.cut[0] = true;
    let failed = g.now;
    let mut started = None;
    while g.now < failed + 2_000 * MS {
        let t = g.now + MS;
        g.run(t);
        assert!(g.serving().len() <= 1, "{:?} serve at once", g.serving());
        if started.is_none() && g.serving().iter().any(|&i| i != 0) {
            started = Some(g.now - failed);
        }
        if g.serving() == vec![0] {
            // Fencing: the cut-off active may serve only within its lease.
            assert!(
                g.now - failed <= 250 * MS,
                "cm-1 served cut off for {} ms",
                (g.now - failed) / MS
            );
        }
    }
    let took = started.expect("nobody took over");
    // The last heartbeat came at most 100 ms before the cut: 300 ms of silence, 33 ms of
    // skew for cm-2, then a pre-vote, a vote and a heartbeat's round trip.
    assert!(
        (230 * MS..440 * MS).contains(&took),
        "took {} ms",
        took / MS
    );
    assert_eq!(g.serving(), vec![1]);
    assert_eq!(g.replicas[1].term(), 2);
    assert_eq!(g.replicas[2].role(), Role::Standby);
}

#[test]
fn processes_elect_their_first_active_and_one_started_again_with_a_new_state_only_follows() {
    let mut g = Group::new();
    g.replicas = (0..3u8)
        .map(|i| Replica::joining(ha_config(i), Some(cm()), 0))
        .collect();
    assert!(g.replicas.iter().all(|r| r.role() == Role::Standby));
    g.run(1_000 * MS);
    let first = g.serving();
    assert_eq!(first.len(), 1, "{first:?}");
    let active = first[0];
    for n in 0..20 {
        let source = SocketAddr::from(([10, 1, 0, n as u8 + 1], 5060));
        let now = g.now;
        assert!(g.replicas[active].handle(now, source, &options_from(source, n)));
    }
    g.run(g.now + 50 * MS);
    let applied = g.replicas[active].applied();
    assert!(applied > 20);
    // The active's process dies and comes back at once, with the scenario's new state (no
    // --fresh), before the others could elect anyone: it must not serve that state.
    let now = g.now;
    g.replicas[active] = Replica::joining(ha_config(active as u8), Some(cm()), now);
    while g.now < now + 3_000 * MS {
        let t = g.now + MS;
        g.run(t);
        assert!(
            !g.serving().contains(&active) || g.replicas[active].applied() >= applied,
            "the restarted replica served an empty state"
        );
    }
    let after = g.serving();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after[0], active, "a shorter log was elected");
    for r in &g.replicas {
        assert!(
            r.applied() >= applied,
            "a replica lost the log: {}",
            r.applied()
        );
    }
    assert_eq!(g.replicas[active].role(), Role::Standby);
}

#[test]
fn a_standby_alone_cannot_raise_the_term_and_rejoins_without_an_election() {
    let mut g = Group::new();
    g.run(1_000 * MS);
    g.cut[2] = true;
    g.run(5_000 * MS);
    // Cut off, cm-3 stood again and again, but only ever asked whether it would win.
    assert_eq!(g.replicas[2].term(), 1);
    assert_eq!(g.serving(), vec![0]);
    g.cut[2] = false;
    g.run(5_500 * MS);
    assert_eq!(g.replicas[2].role(), Role::Standby);
    assert_eq!(
        g.replicas[0].term(),
        1,
        "the active was deposed by a returning standby"
    );
    assert_eq!(g.serving(), vec![0]);
}

#[test]
fn replayed_and_forged_replication_datagrams_are_dropped_and_counted() {
    let mut g = Group::new();
    g.run(MS);
    let mut hb = Vec::new();
    encode(
        &key(),
        0,
        u64::MAX - 1,
        &Msg::Heartbeat {
            term: 9,
            sent_at: 0,
            commit: 0,
        },
        &mut hb,
    );
    let mut forged = hb.clone();
    encode(
        &Key::from_seed(99),
        0,
        u64::MAX,
        &Msg::Resign { term: 1 },
        &mut forged,
    );
    let before = g.replicas[1].stats.rejected;
    g.replicas[1].on_peer(g.now, &forged);
    assert_eq!(g.replicas[1].stats.rejected, before + 1);
    // Sealed right, from "cm-1", with a counter above everything: taken once...
    g.replicas[1].on_peer(g.now, &hb);
    assert_eq!(g.replicas[1].term(), 9);
    // ... and never twice.
    g.replicas[1].on_peer(g.now, &hb);
    assert_eq!(g.replicas[1].stats.rejected, before + 2);
    // From itself: refused.
    let mut own = Vec::new();
    encode(&key(), 1, u64::MAX, &Msg::Resign { term: 9 }, &mut own);
    g.replicas[1].on_peer(g.now, &own);
    assert_eq!(g.replicas[1].stats.rejected, before + 3);
}

#[test]
fn an_upgrade_hands_over_at_once() {
    let mut g = Group::new();
    g.run(1_000 * MS);
    g.replicas[0].resign();
    let at = g.now;
    g.run(at + 100 * MS);
    let new = g.serving();
    assert_eq!(new, vec![1], "cm-2 did not take over within 100 ms");
    assert!(g.replicas[1].became_active().unwrap() - at < 50 * MS);
}

#[test]
fn the_replay_window_takes_an_overtaken_datagram_once_and_nothing_older() {
    let mut w = ReplayWindow::default();
    assert!(!w.take(0), "0 is never a counter");
    assert!(w.take(5));
    assert!(w.take(3), "overtaken by 5: taken");
    assert!(!w.take(3), "twice");
    assert!(!w.take(5), "twice");
    assert!(w.take(70));
    assert!(!w.take(6), "older than the window");
    assert!(w.take(7), "within the window");
    assert!(w.take(1_000));
    assert!(!w.take(70));
}

const OPTIONS: &[u8] = b"OPTIONS sip:cm@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.9:5062;branch=z9hG4bK7\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:cm@x>\r\nCall-ID: q7\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

#[test]
fn a_new_active_sends_again_what_the_old_one_may_not_have_sent() {
    let mut g = Group::new();
    g.run(MS);
    let now = g.now;
    let from: SocketAddr = "127.0.0.9:5062".parse().unwrap();
    assert!(g.replicas[0].handle(now, from, OPTIONS));
    // The standbys hold the OPTIONS, the active hears so and answers; then it dies before any
    // standby has heard that it did.
    g.run(now + 2 * LATENCY + 1);
    let mut answered = Vec::new();
    g.replicas[0].transmit(|to, b| answered.push((to, b.to_vec())));
    assert_eq!(answered.len(), 1, "the active answered once committed");
    assert!(
        g.replicas[1].commit() < g.replicas[1].applied(),
        "cm-2 knew of the commit"
    );
    g.cut[0] = true;
    g.flight.clear();
    g.run(now + 1_000 * MS);
    let new = g.serving();
    assert_eq!(new, vec![1]);
    let mut again = Vec::new();
    g.replicas[1].transmit(|to, b| again.push((to, b.to_vec())));
    // cm-2 cannot know the 200 left: it sends it too (a retransmission to the client).
    assert_eq!(again, answered);
}

#[test]
fn an_append_whose_previous_entry_is_not_ours_sends_the_standby_to_sync() {
    let mut g = Group::new();
    g.run(MS);
    let now = g.now;
    assert!(g.replicas[0].handle(now, "127.0.0.9:5062".parse().unwrap(), OPTIONS));
    g.run(now + 3 * LATENCY);
    let applied = g.replicas[1].applied();
    assert!(applied >= 1);
    // "cm-3" claims term 3, and that the entry before its first is of term 2: cm-2's entry
    // there is of term 1, so its log went another way and nothing may be applied on top.
    let mut entry = Vec::new();
    encode_input(now, &Input::Advance, &mut entry);
    let mut append = Vec::new();
    encode(
        &key(),
        2,
        u64::MAX,
        &Msg::Append {
            term: 3,
            commit: 0,
            first_seq: applied + 1,
            prev_term: 2,
            entries: vec![(3, entry)],
        },
        &mut append,
    );
    g.replicas[1].on_peer(g.now, &append);
    assert_eq!(g.replicas[1].role(), Role::Syncing);
    assert!(g.replicas[1].cm().is_none());
    assert!(
        g.replicas[1].settled(),
        "outputs of a log that went another way are kept"
    );
}

/// An OPTIONS from `source`: the Call Manager keeps a rate bucket per source, so a few
/// thousand of them make a state of several chunks.
fn options_from(source: SocketAddr, n: usize) -> Vec<u8> {
    format!(
        "OPTIONS sip:cm@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {source};branch=z9hG4bKs{n}\r\n\
         From: <sip:a@x>;tag={n}\r\nTo: <sip:cm@x>\r\nCall-ID: s{n}\r\nCSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn fill(g: &mut Group, sources: usize) {
    for n in 0..sources {
        let source = SocketAddr::from(([10, 1, (n / 250) as u8, (n % 250) as u8 + 1], 5060));
        let now = g.now;
        assert!(g.replicas[0].handle(now, source, &options_from(source, n)));
        if n % 100 == 99 {
            g.run(now + 3 * LATENCY);
        }
    }
    g.run(g.now + 3 * LATENCY);
}

#[test]
fn a_restarted_replica_takes_a_snapshot_in_chunks_over_a_lossy_link_and_follows_the_log() {
    let mut g = Group::new();
    g.run(MS);
    fill(&mut g, 6_000);
    // cm-3 restarts: no state, it syncs. Every fifth datagram to it is lost, chunks too.
    g.replicas[2] = Replica::new(ha_config(2), None, g.now);
    g.lossy = Some((2, 5));
    g.run(g.now + 2_000 * MS);
    let (active, taker) = (&g.replicas[0], &g.replicas[2]);
    assert_eq!(taker.role(), Role::Standby);
    assert_eq!(taker.stats.snapshots_taken, 1, "{:?}", taker.stats);
    assert_eq!(active.stats.snapshots_sent, 1, "{:?}", active.stats);
    assert!(
        taker.stats.snapshot_bytes > 2 * wire::MAX_CHUNK as u64,
        "a snapshot of {} bytes is not several chunks",
        taker.stats.snapshot_bytes
    );
    assert_eq!(taker.applied(), active.applied());
    // It follows the log from there, and holds what the active holds.
    let before = taker.applied();
    let now = g.now;
    assert!(g.replicas[0].handle(now, "127.0.0.9:5062".parse().unwrap(), OPTIONS));
    g.run(now + 500 * MS);
    assert!(g.replicas[2].applied() > before);
    assert_eq!(g.replicas[2].applied(), g.replicas[0].applied());
    let census = |r: &Replica| format!("{:?}", r.cm().unwrap().stats());
    assert_eq!(census(&g.replicas[2]), census(&g.replicas[0]));
}

#[test]
fn a_snapshot_cut_short_or_of_another_version_is_refused_and_nothing_panics() {
    let mut g = Group::new();
    g.run(MS);
    fill(&mut g, 300);
    let r = &g.replicas[0];
    let bytes = snapshot::encode(r, r.cm().unwrap()).unwrap();
    let cm_secrets = Config::new("127.0.0.1:5060".parse().unwrap()).secrets();
    let whole = snapshot::decode(&bytes, &cm_secrets).unwrap();
    assert_eq!(whole.applied, r.applied());
    for n in (0..bytes.len()).step_by(97) {
        assert!(
            snapshot::decode(&bytes[..n], &cm_secrets).is_err(),
            "{n} of {} bytes read as a snapshot",
            bytes.len()
        );
    }
    let mut other = bytes.clone();
    other[5] = b'9';
    let e = snapshot::decode(&other, &cm_secrets).err().unwrap();
    assert!(e.contains("not a snapshot of this version"), "{e}");
}

#[test]
fn a_chunk_that_claims_a_snapshot_beyond_the_bound_reserves_nothing() {
    let mut g = Group::new();
    g.run(MS);
    g.replicas[2] = Replica::new(ha_config(2), None, g.now);
    let mut chunk = Vec::new();
    encode(
        &key(),
        0,
        u64::MAX,
        &Msg::Chunk {
            term: 1,
            applied: 1,
            total: u64::MAX,
            offset: 0,
            data: vec![0; 10],
        },
        &mut chunk,
    );
    let rejected = g.replicas[2].stats.rejected;
    g.replicas[2].on_peer(g.now, &chunk);
    assert_eq!(g.replicas[2].stats.rejected, rejected + 1);
    assert!(g.replicas[2].incoming.is_none());
    assert_eq!(g.replicas[2].role(), Role::Syncing);
}

#[test]
fn a_snapshot_carries_neither_the_keys_nor_the_password_prefix_and_its_taker_puts_them_back() {
    let mut cfg = Config::new("127.0.0.1:5060".parse().unwrap());
    cfg.password_prefix = "zq-very-secret-prefix-".into();
    let secrets = cfg.secrets();
    let health =
        HealthConfig::new(Duration::from_secs(1), Duration::from_millis(500), 3, 2).unwrap();
    let cm = CallManager::new(cfg, Balancer::new(health), Vec::new());
    let ha = HaConfig {
        addrs: vec![addrs()[0]],
        cm_secrets: secrets.clone(),
        ..ha_config(0)
    };
    let r = Replica::new(ha, Some(cm), 0);
    let bytes = snapshot::encode(&r, r.cm().unwrap()).unwrap();
    let prefix = secrets.password_prefix.as_bytes();
    assert!(
        !bytes.windows(prefix.len()).any(|w| w == prefix),
        "the password prefix travels in the snapshot"
    );
    let read = snapshot::decode(&bytes, &secrets).unwrap();
    // The taker answers a REGISTER's challenge as the original would: same realm, same nonce
    // key, same credentials.
    let register = |cm: &mut CallManager| {
        let from: SocketAddr = "127.0.0.9:5062".parse().unwrap();
        let msg = b"REGISTER sip:pbxlab.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.9:5062;branch=z9hG4bKr1\r\nFrom: <sip:1000@pbxlab.test>;tag=1\r\nTo: <sip:1000@pbxlab.test>\r\nCall-ID: r1\r\nCSeq: 1 REGISTER\r\nContact: <sip:1000@127.0.0.9:5062>\r\nMax-Forwards: 70\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n";
        cm.handle(0, from, msg);
        let mut out = Vec::new();
        cm.transmit_all(|d| {
            out.extend(
                d.iter()
                    .map(|(_, b)| String::from_utf8_lossy(b).into_owned()),
            );
        });
        out
    };
    let mut original = r.cm().unwrap().clone();
    let mut taken = read.cm;
    assert_eq!(register(&mut taken), register(&mut original));
}

#[test]
fn a_snapshot_its_taker_refused_is_written_again_only_a_second_later() {
    let mut g = Group::new();
    g.run(MS);
    fill(&mut g, 300);
    // cm-3 is cut off (it answers nothing itself); cm-2 keeps the active's lease.
    g.cut[2] = true;
    g.replicas[0].peers[2].needs_sync = true;
    let now = g.now;
    g.replicas[0].take_peer(now);
    assert_eq!(g.replicas[0].stats.snapshots_sent, 1);
    let (term, applied) = {
        let s = g.replicas[0].peers[2]
            .snapshot
            .as_ref()
            .expect("a transfer");
        (s.term, s.applied)
    };
    let refusal = |counter: u64| {
        let mut out = Vec::new();
        encode(
            &key(),
            2,
            counter,
            &Msg::ChunkAck {
                term,
                applied,
                got: 0,
                installed: false,
            },
            &mut out,
        );
        out
    };
    // Every chunk went (the snapshot fits the window), and the taker holds nothing of it.
    g.replicas[0].on_peer(now, &refusal(u64::MAX - 1));
    assert!(g.replicas[0].peers[2].snapshot.is_none());
    g.run(now + 500 * MS);
    assert_eq!(
        g.replicas[0].stats.snapshots_sent, 1,
        "written again within the second"
    );
    g.run(now + 1_100 * MS);
    assert_eq!(g.replicas[0].stats.snapshots_sent, 2);
}
