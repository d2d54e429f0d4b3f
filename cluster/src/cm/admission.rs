//! Admission of requests: a token bucket per source IP address, in a bounded table, and the
//! sources that are never limited (the whitelist and the cluster's own nodes).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::{Config, NS, Nanos, NodeSpec};

/// Source-rate table entries kept at most; past it the table starts afresh (a flood from
/// spoofed addresses must not grow memory without bound).
const MAX_BUCKETS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Nanos,
}

pub(super) struct Admission {
    rate_per_s: f64,
    burst: f64,
    /// Changed at run time by operators; the configuration's list is only where it starts.
    whitelist: Vec<IpAddr>,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Admission {
    pub(super) fn new(cfg: &Config) -> Admission {
        Admission {
            rate_per_s: cfg.rate_limit_per_s,
            burst: cfg.rate_burst,
            whitelist: cfg.whitelist.clone(),
            buckets: HashMap::new(),
        }
    }

    /// Whether a request from `from` at `now` is within its source's rate; it uses up a token.
    pub(super) fn admit(&mut self, now: Nanos, from: SocketAddr, nodes: &[NodeSpec]) -> bool {
        let ip = from.ip();
        if self.exempt(from, nodes) {
            return true;
        }
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&ip) {
            self.buckets.clear();
        }
        let (rate, burst) = (self.rate_per_s, self.burst);
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let dt = now.saturating_sub(b.at) as f64 / NS as f64;
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
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
