//! The registrar: which user numbers are ours, where each registered user can be reached, and
//! digest authentication of REGISTER with nonces that are recomputed rather than stored.

use std::collections::HashMap;
use std::net::SocketAddr;

use pbxlab_proto::digest::{self, Algorithm};
use pbxlab_proto::sip::{HeaderName, Message};
use pbxlab_proto::uri::NameAddr;

use pbxlab_balancer::hash::mix64 as mix;

use super::{CallManager, Config, NS, Nanos, Stats};

/// Seconds a nonce stays valid.
const NONCE_LIFETIME_S: u64 = 300;

/// Where a registered user is.
#[derive(Debug, Clone)]
pub(super) struct Binding {
    /// Its Contact: where requests to it go.
    pub(super) uri: String,
    /// The address it registered from: where they are sent.
    pub(super) addr: SocketAddr,
    pub(super) expires_at: Nanos,
}

pub(super) struct Registrar {
    /// Digest realm.
    domain: String,
    first_user: u32,
    users: u32,
    password_prefix: String,
    max_expires_s: u32,
    /// Keys the nonces: a nonce carries its issue second and the mix of it with this.
    secret: u64,
    bindings: HashMap<u32, Binding>,
    registrations: u64,
    auth_failures: u64,
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
    pub(super) fn new(cfg: &Config, secret: u64) -> Registrar {
        Registrar {
            domain: cfg.domain.clone(),
            first_user: cfg.first_user,
            users: cfg.users,
            password_prefix: cfg.password_prefix.clone(),
            max_expires_s: cfg.max_expires_s,
            secret,
            bindings: HashMap::new(),
            registrations: 0,
            auth_failures: 0,
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

    pub(super) fn report(&self, s: &mut Stats) {
        s.registered = self.bindings.len();
        s.registrations = self.registrations;
        s.auth_failures = self.auth_failures;
    }

    fn nonce(&self, now: Nanos) -> String {
        let t = now / NS;
        format!("{t:x}.{:016x}", mix(self.secret ^ t))
    }

    fn nonce_fresh(&self, now: Nanos, nonce: &str) -> bool {
        let Some((t, mac)) = nonce.split_once('.') else {
            return false;
        };
        let (Ok(t), Ok(mac)) = (u64::from_str_radix(t, 16), u64::from_str_radix(mac, 16)) else {
            return false;
        };
        mac == mix(self.secret ^ t) && now / NS <= t + NONCE_LIFETIME_S
    }

    fn challenge(&self, now: Nanos, stale: bool) -> Answer {
        let mut value = String::new();
        digest::write_challenge(
            &mut value,
            &self.domain,
            &self.nonce(now),
            Algorithm::Md5,
            None,
        );
        if stale {
            value.push_str(", stale=true");
        }
        Answer {
            header: Some(("WWW-Authenticate", value)),
            ..Answer::plain(401)
        }
    }

    /// Authenticates a REGISTER from `from` and binds, unbinds or reports its contact.
    pub(super) fn register(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) -> Answer {
        let user = msg
            .to()
            .and_then(|t| t.sip_uri().ok())
            .and_then(|u| u.user)
            .and_then(|u| self.user_number(u));
        // A user we do not know is challenged and then refused like one with a wrong password:
        // a 404 would list our users to anyone who asks (what SIP scanners count on).
        let Some(auth) = msg
            .header(HeaderName::Authorization)
            .and_then(|v| digest::parse_authorization(v).ok())
        else {
            return self.challenge(now, false);
        };
        if !self.nonce_fresh(now, auth.nonce) {
            return self.challenge(now, true);
        }
        let Some(user) = user else {
            self.auth_failures += 1;
            return Answer::plain(403);
        };
        let password = format!("{}{user}", self.password_prefix);
        // The digest covers its own uri, which must be this request's (RFC 3261 22.4): a
        // response computed for another request is not an answer to this one.
        if auth.username != user.to_string()
            || auth.realm != self.domain
            || Some(auth.uri) != msg.request_uri()
            || !digest::verify(&auth, "REGISTER", &password)
        {
            self.auth_failures += 1;
            return Answer::plain(403);
        }
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
    pub(super) fn register(&mut self, now: Nanos, from: SocketAddr, msg: &Message<'_>) {
        let answer = self.registrar.register(now, from, msg);
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
