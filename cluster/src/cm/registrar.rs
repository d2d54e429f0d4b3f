//! The registrar: which user numbers are ours and where each registered user can be reached.
//! Whether a REGISTER is its user's is `auth`'s to say.

use std::collections::HashMap;
use std::net::SocketAddr;

use pbxlab_proto::sip::{HeaderName, Message};
use pbxlab_proto::uri::NameAddr;

use super::auth::{Asker, Attempt, Verdict};
use super::{CallManager, Config, NS, Nanos, Stats};

/// Where a registered user is.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub(super) struct Binding {
    /// Its Contact: where requests to it go.
    pub(super) uri: String,
    /// The address it registered from: where they are sent.
    pub(super) addr: SocketAddr,
    pub(super) expires_at: Nanos,
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub(super) struct Registrar {
    first_user: u32,
    users: u32,
    /// A credential (every password is it and a number): never in a snapshot.
    #[serde(skip)]
    password_prefix: String,
    max_expires_s: u32,
    bindings: HashMap<u32, Binding>,
    registrations: u64,
}

/// How the registrar answers one REGISTER.
pub(super) struct Answer {
    pub(super) code: u16,
    pub(super) header: Option<(&'static str, String)>,
    /// The user whose contact was bound by it.
    pub(super) bound: Option<u32>,
}

impl Answer {
    fn plain(code: u16) -> Answer {
        Answer {
            code,
            header: None,
            bound: None,
        }
    }
}

impl Registrar {
    pub(super) fn rekey(&mut self, password_prefix: &str) {
        password_prefix.clone_into(&mut self.password_prefix);
    }

    pub(super) fn new(cfg: &Config) -> Registrar {
        Registrar {
            first_user: cfg.first_user,
            users: cfg.users,
            password_prefix: cfg.password_prefix.clone(),
            max_expires_s: cfg.max_expires_s,
            bindings: HashMap::new(),
            registrations: 0,
        }
    }

    /// `user` as one of our user numbers.
    pub(super) fn user_number(&self, user: &str) -> Option<u32> {
        let n = user.parse::<u32>().ok()?;
        let first = self.first_user;
        (n >= first && n - first < self.users).then_some(n)
    }

    pub(super) fn binding(&self, user: u32) -> Option<&Binding> {
        self.bindings.get(&user)
    }

    /// Whether `user` has a binding that has not expired by `now`.
    pub(super) fn is_registered(&self, user: u32, now: Nanos) -> bool {
        self.bindings.get(&user).is_some_and(|b| b.expires_at > now)
    }

    /// Forgets the bindings that expired by `now`.
    pub(super) fn expire(&mut self, now: Nanos) {
        self.bindings.retain(|_, b| b.expires_at > now);
    }

    /// The users with a binding in force at `now`, and when each expires.
    pub(super) fn registered(&self, now: Nanos) -> impl Iterator<Item = (u32, Nanos)> + '_ {
        self.bindings
            .iter()
            .filter(move |(_, b)| b.expires_at > now)
            .map(|(&u, b)| (u, b.expires_at))
    }

    pub(super) fn report(&self, s: &mut Stats) {
        s.registered = self.bindings.len();
        s.registrations = self.registrations;
    }

    /// The user number and digest password of digest username `username`, if it is ours.
    pub(super) fn credentials(&self, username: &str) -> Option<(u32, String)> {
        let user = self.user_number(username)?;
        Some((user, format!("{}{user}", self.password_prefix)))
    }

    /// Binds, unbinds or reports the contact of `user`, whose REGISTER from `from` this is.
    fn register(&mut self, now: Nanos, from: SocketAddr, user: u32, msg: &Message<'_>) -> Answer {
        let contact = msg.contact();
        let expires = contact
            .and_then(|c| NameAddr::param(&c, "expires").flatten())
            .and_then(|e| e.parse::<u32>().ok())
            .or(msg.expires())
            .unwrap_or(3600)
            .min(self.max_expires_s);
        self.registrations += 1;
        match contact {
            Some(c) if !c.star && expires > 0 => {
                let uri = c.uri.to_owned();
                let header = format!("<{uri}>;expires={expires}");
                self.bindings.insert(
                    user,
                    Binding {
                        uri,
                        addr: from,
                        expires_at: now + u64::from(expires) * NS,
                    },
                );
                Answer {
                    header: Some(("Contact", header)),
                    bound: Some(user),
                    ..Answer::plain(200)
                }
            }
            Some(_) => {
                // Expires 0 or `Contact: *`: unregister.
                self.bindings.remove(&user);
                Answer::plain(200)
            }
            None => {
                // A query: answer with the current binding.
                let header = self.bindings.get(&user).map(|b| {
                    let left = b.expires_at.saturating_sub(now) / NS;
                    ("Contact", format!("<{}>;expires={left}", b.uri))
                });
                Answer {
                    header,
                    ..Answer::plain(200)
                }
            }
        }
    }
}

impl CallManager {
    /// A REGISTER: authenticated (its digest username must be its To's user), then bound.
    pub(super) fn register(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let to_user = msg
            .to()
            .and_then(|t| t.sip_uri().ok())
            .and_then(|u| u.user)
            .and_then(|u| self.registrar.user_number(u));
        let attempt = Attempt::of(msg, "REGISTER", HeaderName::Authorization, from);
        let registrar = &self.registrar;
        let verdict = self
            .auth
            .check(now, &attempt, |name| registrar.credentials(name));
        let answer = match verdict {
            Verdict::User(user) if Some(user) == to_user => {
                self.registrar.register(now, from, user, msg)
            }
            Verdict::User(_) => {
                // Another user's credentials: this REGISTER is not theirs to make.
                self.auth.failed();
                Answer::plain(403)
            }
            Verdict::Forbidden => Answer::plain(403),
            Verdict::Banned => return,
            Verdict::Challenge { stale } => {
                return self.challenge(now, from, msg, Asker::Registrar, stale);
            }
            Verdict::Replay => return self.challenge(now, from, msg, Asker::Registrar, true),
        };
        match &answer.header {
            Some((name, value)) => self.reply(from, msg, answer.code, &[(name, value)]),
            None => self.reply(from, msg, answer.code, &[]),
        }
        // A newly registered agent may be what a waiting caller needs.
        if answer
            .bound
            .is_some_and(|u| self.queues.is_agent(u).is_some())
        {
            self.dispatch_queues(now);
        }
    }
}
