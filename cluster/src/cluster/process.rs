//! One Call Manager of a group in a process of its own (`pbxlab cluster --cm cm-N`): the
//! process runs that replica alone; its peers are other processes (on this host, or each in a
//! network namespace of its own behind keepalived), reached only over the replication link.
//!
//! What the processes must share, besides the scenario: the cluster's key (it seals the
//! replication and keys digest nonces, so that a nonce one Call Manager gave is taken by the
//! next) and the clock's zero (`epoch`): every input carries the active's `now`, a standby
//! applies it as it is, and a new active goes on from its own, so the group's times must be
//! one clock's. On one host the real-time clock is that clock; across hosts the margin (half a
//! heartbeat) must cover their drift, as the lease already assumes. A restarted process's
//! replication counter starts from its `now` too, above every one it sent before, so the
//! others' anti-replay windows take it.
//!
//! Nodes are the cluster's own only in one process: here every server joins over the link
//! (`pbxlab node`), so a scenario whose pools list servers is refused.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use pbxlab_proto::mac::Key;
use pbxlab_scenario::Scenario;

use crate::Error;

/// This process's part in a group of Call Manager processes.
#[derive(Debug, Clone)]
pub struct CmProcess {
    /// Which Call Manager it is: 0 for `cm-1`.
    pub index: usize,
    /// Every Call Manager's replication address, in order, this one's included.
    pub peers: Vec<SocketAddr>,
    /// The cluster's key, the same in every process.
    pub key: Key,
    /// The group's clock's zero, the same in every process.
    pub epoch: SystemTime,
    /// Start with no state and take it from the active (a process started again after a
    /// crash). Otherwise it starts with the scenario's new Call Manager. Either way it starts
    /// as a standby of no term ([`crate::ha::Replica::joining`]): the group's first election
    /// makes the first active, and one started again into a running group is never elected
    /// with its shorter log; it follows the active it hears, from a snapshot.
    pub fresh: bool,
}

impl CmProcess {
    /// The cluster's key from the phrase every Call Manager process is given.
    pub fn key(phrase: &str) -> Key {
        Key::from_phrase(phrase.as_bytes()).derive("cluster key")
    }

    /// Whether the scenario and the group fit: as many addresses as Call Managers, this one
    /// among them, no servers of the cluster's own, the virtual IP's port given.
    pub(super) fn check(&self, sc: &Scenario, sip: SocketAddr, group: usize) -> Result<(), Error> {
        let refuse = |why: String| Err(Error::Unsupported(why));
        if group < 2 {
            return refuse(format!(
                "a Call Manager process (--cm) is one of a group: the scenario has \
                 [callmanager] nodes = {group}"
            ));
        }
        if self.peers.len() != group {
            return refuse(format!(
                "--cm-peers: {} addresses for [callmanager] nodes = {group}; give every Call \
                 Manager's replication address, in order",
                self.peers.len()
            ));
        }
        if self.index >= group {
            return refuse(format!(
                "--cm cm-{}: the scenario has {group} Call Managers",
                self.index + 1
            ));
        }
        if sip.port() == 0 {
            return refuse(format!(
                "--sip {sip}: the virtual IP needs its port, the same in every Call Manager \
                 process"
            ));
        }
        if let Some(pool) = sc.pools.iter().find(|p| !p.servers.is_empty()) {
            return refuse(format!(
                "the {} pool lists {} servers: with Call Managers in processes of their own, \
                 servers join as `pbxlab node` (give the pool servers = 0)",
                pool.role,
                pool.servers.len()
            ));
        }
        Ok(())
    }

    /// The group's zero on this process's monotonic clock.
    pub(super) fn epoch_instant(&self) -> Result<Instant, Error> {
        let since = SystemTime::now().duration_since(self.epoch).map_err(|_| {
            Error::Unsupported(
                "--epoch is in the future: give the same past time to every Call \
                 Manager process"
                    .into(),
            )
        })?;
        Instant::now().checked_sub(since).ok_or_else(|| {
            Error::Unsupported(format!(
                "--epoch is {:.0} s ago, before this machine started: give a recent time",
                since.as_secs_f64()
            ))
        })
    }
}

impl super::Control {
    /// Why this process cannot carry out an operator's request for the cluster: it is one
    /// Call Manager of a group and does not serve now (the one that does takes requests).
    /// None where it can (it serves, or it is the whole cluster).
    pub fn elsewhere(&self) -> Option<String> {
        if !self.shared.process {
            return None;
        }
        let slot = self.shared.cms.iter().find(|s| s.local)?;
        let row = slot.row.lock().map(|r| r.clone()).unwrap_or_default();
        (!row.serving).then(|| {
            format!(
                "{} does not serve the virtual IP ({}, term {}): ask the Call Manager that \
                 does (pbxlab ctl --ctl takes every one's endpoint, comma-separated)",
                slot.name, row.role, row.term
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn process(index: usize) -> CmProcess {
        CmProcess {
            index,
            peers: (0..3)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 19_000 + i)))
                .collect(),
            key: Key::from_seed(1),
            epoch: SystemTime::now() - Duration::from_secs(5),
            fresh: false,
        }
    }

    fn scenario(servers: u32, cms: u32) -> Scenario {
        let text = format!(
            "name = \"p\"\nseed = 1\n[[pool]]\nrole = \"media\"\nservers = {servers}\n\
             capacity = 10\n[callmanager]\nnodes = {cms}\n"
        );
        Scenario::from_toml("p.toml", &text).unwrap()
    }

    #[test]
    fn a_group_of_processes_is_checked_against_its_scenario() {
        let sip = SocketAddr::from(([127, 0, 0, 1], 5060));
        assert!(process(2).check(&scenario(0, 3), sip, 3).is_ok());
        let err = |r: Result<(), Error>| r.unwrap_err().to_string();
        assert!(err(process(3).check(&scenario(0, 3), sip, 3)).contains("3 Call Managers"));
        assert!(err(process(0).check(&scenario(0, 1), sip, 1)).contains("one of a group"));
        assert!(err(process(0).check(&scenario(2, 3), sip, 3)).contains("join as `pbxlab node`"));
        let mut short = process(0);
        short.peers.pop();
        assert!(err(short.check(&scenario(0, 3), sip, 3)).contains("2 addresses"));
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        assert!(err(process(0).check(&scenario(0, 3), any_port, 3)).contains("needs its port"));
    }

    #[test]
    fn the_epoch_is_the_same_instant_in_every_process_and_never_in_the_future() {
        let p = process(0);
        let a = p.epoch_instant().unwrap();
        let b = p.epoch_instant().unwrap();
        let apart = if a > b { a - b } else { b - a };
        assert!(apart < Duration::from_secs(1), "{apart:?}");
        assert!(a.elapsed() >= Duration::from_secs(5));
        let mut future = process(0);
        future.epoch = SystemTime::now() + Duration::from_secs(60);
        assert!(
            future
                .epoch_instant()
                .unwrap_err()
                .to_string()
                .contains("future")
        );
    }
}
