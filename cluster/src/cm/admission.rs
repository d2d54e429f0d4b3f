//! Admission of requests: a token bucket per source IP address, in a bounded table, one bucket
//! for every source together, and the sources that are never limited (the whitelist and the
//! cluster's own nodes).
//!
//! The per-source bucket alone let a flood spread over many addresses through (30,000 OPTIONS
//! at 2,000/s from 49 addresses got no 503): the global bucket caps what all untrusted sources
//! may send together, as Kamailio's pike caps one address and its `ratelimit` module a whole
//! pipe. Exempt sources are counted against neither: the load generator's 127.0.0.1 (or an
//! SBC in front of the Call Manager) brings the headline load, ~1,000 REGISTER/s and the calls,
//! and a flood from elsewhere must not refuse it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::{Config, NS, Nanos, NodeSpec};

/// Source-rate table entries kept at most (a flood from spoofed addresses must not grow memory
/// without bound). When it is full, idle sources are forgotten first (a bucket that has
/// refilled is what a new entry would start with, so nothing is lost), then the least recently
/// seen ones, never one that is being limited now.
const MAX_BUCKETS: usize = 65_536;
/// What one eviction frees at least, so a table full of busy sources is not swept for every
/// new one.
const EVICT_AT_ONCE: usize = MAX_BUCKETS / 16;

/// How long a table full of limited sources is left before it is swept again.
const EVICT_RETRY: Nanos = NS / 100;

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Nanos,
}

impl Bucket {
    /// Refills the bucket up to `at` (at `rate_per_s`, at most `burst`).
    fn refill(&mut self, at: Nanos, rate_per_s: f64, burst: f64) {
        let dt = at.saturating_sub(self.at) as f64 / NS as f64;
        self.tokens = (self.tokens + dt * rate_per_s).min(burst);
        self.at = self.at.max(at);
    }

    /// The tokens it would hold at `at`.
    fn tokens_at(&self, at: Nanos, rate_per_s: f64, burst: f64) -> f64 {
        let dt = at.saturating_sub(self.at) as f64 / NS as f64;
        (self.tokens + dt * rate_per_s).min(burst)
    }
}

/// What [`Admission::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Admit,
    /// The source sent above its own rate.
    SourceLimited,
    /// The untrusted sources together sent above the global rate.
    GlobalLimited,
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub(super) struct Admission {
    rate_per_s: f64,
    burst: f64,
    global_rate_per_s: f64,
    global_burst: f64,
    /// Changed at run time by operators; the configuration's list is only where it starts.
    whitelist: Vec<IpAddr>,
    buckets: HashMap<IpAddr, Bucket>,
    global: Bucket,
    /// How many table entries eviction has forgotten.
    evicted: u64,
    /// After an eviction that found nothing to forget, when to look again: a table full of
    /// sources all being limited is not swept for every new source.
    next_evict: Nanos,
}

impl Admission {
    pub(super) fn new(cfg: &Config) -> Admission {
        Admission {
            rate_per_s: cfg.rate_limit_per_s,
            burst: cfg.rate_burst,
            global_rate_per_s: cfg.global_rate_limit_per_s,
            global_burst: cfg.global_rate_burst,
            whitelist: cfg.whitelist.clone(),
            buckets: HashMap::new(),
            global: Bucket {
                tokens: cfg.global_rate_burst,
                at: 0,
            },
            evicted: 0,
            next_evict: 0,
        }
    }

    /// Whether a request from `from` at `now` is within its source's rate and, with every
    /// other untrusted source's, within the global one; an admitted request uses up a token of
    /// each, a refused one none.
    pub(super) fn admit(&mut self, now: Nanos, from: SocketAddr, nodes: &[NodeSpec]) -> Verdict {
        let ip = from.ip();
        if self.exempt(from, nodes) {
            return Verdict::Admit;
        }
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&ip) {
            if now >= self.next_evict {
                self.evict(now);
            }
            if self.buckets.len() >= MAX_BUCKETS {
                // Every source in the table is being limited right now: a new one is not let
                // in unmeasured (that would be the way around the limit), it waits for room.
                return Verdict::SourceLimited;
            }
        }
        let (rate, burst) = (self.rate_per_s, self.burst);
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.refill(now, rate, burst);
        if b.tokens < 1.0 {
            return Verdict::SourceLimited;
        }
        self.global
            .refill(now, self.global_rate_per_s, self.global_burst);
        if self.global.tokens < 1.0 {
            return Verdict::GlobalLimited;
        }
        b.tokens -= 1.0;
        self.global.tokens -= 1.0;
        Verdict::Admit
    }

    /// Makes room in the full table: forgets every idle source (its bucket full again), and if
    /// that is not [`EVICT_AT_ONCE`], the least recently seen of the sources not being limited
    /// (a bucket with a token to give) up to that many. A source being limited is never
    /// forgotten: it would come back with a full burst.
    fn evict(&mut self, now: Nanos) {
        let (rate, burst) = (self.rate_per_s, self.burst);
        let before = self.buckets.len();
        self.buckets
            .retain(|_, b| b.tokens_at(now, rate, burst) < burst);
        let freed = before - self.buckets.len();
        if freed < EVICT_AT_ONCE {
            let mut candidates: Vec<(Nanos, IpAddr)> = self
                .buckets
                .iter()
                .filter(|(_, b)| b.tokens_at(now, rate, burst) >= 1.0)
                .map(|(&ip, b)| (b.at, ip))
                .collect();
            let want = (EVICT_AT_ONCE - freed).min(candidates.len());
            if want > 0 {
                // The oldest `want`, ties broken by address, so a replay evicts the same ones.
                if want < candidates.len() {
                    candidates.select_nth_unstable(want - 1);
                }
                for (_, ip) in candidates.iter().take(want) {
                    self.buckets.remove(ip);
                }
            }
        }
        self.evicted += (before - self.buckets.len()) as u64;
        if self.buckets.len() >= MAX_BUCKETS {
            self.next_evict = now + EVICT_RETRY;
        }
    }

    /// Source-table entries forgotten to make room.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Whether `from` is exempt from every per-source limit: the whitelist, or a node.
    pub(super) fn exempt(&self, from: SocketAddr, nodes: &[NodeSpec]) -> bool {
        self.whitelist.contains(&from.ip()) || nodes.iter().any(|n| n.addr == from)
    }

    pub(super) fn whitelist(&self) -> &[IpAddr] {
        &self.whitelist
    }

    pub(super) fn whitelist_add(&mut self, ip: IpAddr) -> bool {
        if self.whitelist.contains(&ip) {
            return false;
        }
        self.whitelist.push(ip);
        self.buckets.remove(&ip);
        true
    }

    pub(super) fn whitelist_remove(&mut self, ip: IpAddr) -> bool {
        let before = self.whitelist.len();
        self.whitelist.retain(|&w| w != ip);
        before != self.whitelist.len()
    }
}
