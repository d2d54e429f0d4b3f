//! The one vocabulary of what can be done to a server: a scenario's `[[fault]]` timeline, `plan`,
//! `pbxlab ctl` and `pbxlab drill` all speak it, and each verb means the same everywhere.

use std::time::Duration;

/// What an operator, a drill or a scenario's timeline does to one server.
///
/// Two verbs are left for the probes to find (`fail`, `partition`); the others tell the Call
/// Manager, as an operator's console would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// The process dies abruptly with its sessions; only its probes tell.
    Fail,
    /// Every datagram to or from it is lost; it keeps running and keeps its state.
    Partition,
    /// The partition ends.
    Heal,
    /// Its process starts afresh (after `fail` or `stop`); its probes bring it back.
    /// `pbxlab ctl start` says the same.
    Recover,
    /// The operator stops it: the Call Manager marks it down and moves its sessions, then the
    /// process stops.
    Stop,
    /// `stop`, then `recover`.
    Restart,
    /// Rolling upgrade of one server: disable (its sessions move), stop, restart after
    /// [`UPGRADE_RESTART`], enable once a probe after the restart answers.
    Upgrade,
    /// It leaves the cluster for good; its sessions move first.
    Remove,
    /// No new sessions, and the sessions it has move away.
    Disable,
    /// Back in service after `disable` or `drain`.
    Enable,
    /// No new sessions; the ones it has finish where they are.
    Drain,
}

/// How long an upgraded server's process is down between its stop and its start.
pub const UPGRADE_RESTART: Duration = Duration::from_millis(200);

impl Verb {
    /// Every verb, in the order help texts list them.
    pub const ALL: [Verb; 11] = [
        Verb::Fail,
        Verb::Partition,
        Verb::Heal,
        Verb::Recover,
        Verb::Stop,
        Verb::Restart,
        Verb::Upgrade,
        Verb::Remove,
        Verb::Disable,
        Verb::Enable,
        Verb::Drain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verb::Fail => "fail",
            Verb::Partition => "partition",
            Verb::Heal => "heal",
            Verb::Recover => "recover",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Upgrade => "upgrade",
            Verb::Remove => "rm",
            Verb::Disable => "disable",
            Verb::Enable => "enable",
            Verb::Drain => "drain",
        }
    }

    /// The verb of a name; `start` is `recover` (the vendor's word for it), `remove` is `rm`.
    pub fn from_name(text: &str) -> Option<Verb> {
        match text {
            "start" => Some(Verb::Recover),
            "remove" => Some(Verb::Remove),
            _ => Verb::ALL.into_iter().find(|v| v.name() == text),
        }
    }

    /// An operator's verb (`pbxlab ctl`, the control endpoint): all but the faults only a
    /// drill injects, which act on a process as no operator would.
    pub fn is_operators(self) -> bool {
        !matches!(self, Verb::Fail | Verb::Partition | Verb::Heal)
    }

    /// Left for the probes to find: the Call Manager is not told.
    pub fn is_silent(self) -> bool {
        matches!(self, Verb::Fail | Verb::Partition)
    }

    /// Acts on a server's process (so only on nodes of the cluster's own process), not only on
    /// the Call Manager's view of it.
    pub fn acts_on_process(self) -> bool {
        matches!(
            self,
            Verb::Fail
                | Verb::Partition
                | Verb::Heal
                | Verb::Recover
                | Verb::Stop
                | Verb::Restart
                | Verb::Upgrade
        )
    }

    /// Takes the server's sessions away from it at once (they move, or are dropped where no
    /// room is left), as opposed to leaving them to the probes or to finish.
    pub fn moves_sessions(self) -> bool {
        matches!(
            self,
            Verb::Stop | Verb::Restart | Verb::Upgrade | Verb::Remove | Verb::Disable
        )
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The verbs' names, as an error message lists what it expected.
pub fn verb_names() -> String {
    Verb::ALL.map(Verb::name).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_name_the_same_verb() {
        for v in Verb::ALL {
            assert_eq!(Verb::from_name(v.name()), Some(v));
        }
        assert_eq!(Verb::from_name("start"), Some(Verb::Recover));
        assert_eq!(Verb::from_name("remove"), Some(Verb::Remove));
        assert_eq!(Verb::from_name("Fail"), None);
    }
}
