//! Digest authentication of what our users send: the nonces we hand out in challenges and how
//! an answer to one is judged. A nonce is its issue second and a number, with an HMAC-SHA-256
//! of both under the Call Manager's key, so it is checked by recomputing it, not looked up.

use pbxlab_proto::digest::{self, Algorithm, Authorization};
use pbxlab_proto::mac::{self, Key};

use super::{NS, Nanos, Stats};

/// Seconds a nonce stays valid.
pub(super) const NONCE_LIFETIME_S: u64 = 300;

/// Bytes of the nonce's MAC that it carries (of HMAC-SHA-256's 32).
const NONCE_MAC_LEN: usize = 16;

/// Which challenge a request gets: 401 with `WWW-Authenticate` for REGISTER (the registrar is
/// the request's target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asker {
    Registrar,
}

impl Asker {
    pub(super) fn code(self) -> u16 {
        match self {
            Asker::Registrar => 401,
        }
    }

    fn challenge_header(self) -> &'static str {
        match self {
            Asker::Registrar => "WWW-Authenticate",
        }
    }
}

/// What an answer to a challenge comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The credentials are this user's.
    User(u32),
    /// Challenge (again): no credentials, a nonce we did not make, or (`stale`) a nonce of ours
    /// that expired under the right credentials (RFC 7616 3.4: retry without asking the user).
    Challenge { stale: bool },
    /// 403: a wrong password, a user we do not have, another realm or request.
    Forbidden,
}

/// One request's credentials, and what the digest must cover.
pub(super) struct Attempt<'a> {
    pub(super) method: &'a str,
    pub(super) request_uri: &'a str,
    /// The `Authorization` (or `Proxy-Authorization`) value, if any.
    pub(super) credentials: Option<&'a str>,
}

pub(super) struct Auth {
    realm: String,
    /// Keys the nonces' MACs: `Config::key.derive("nonce")`.
    key: Key,
    /// Nonces handed out so far; the next one's number.
    issued: u64,
    failures: u64,
    stale: u64,
    forged: u64,
}

impl Auth {
    pub(super) fn new(realm: &str, key: &Key) -> Auth {
        Auth {
            realm: realm.to_owned(),
            key: key.derive("nonce"),
            issued: 0,
            failures: 0,
            stale: 0,
            forged: 0,
        }
    }

    pub(super) fn report(&self, s: &mut Stats) {
        s.auth_failures = self.failures;
        s.auth_stale = self.stale;
        s.auth_forged_nonces = self.forged;
    }

    /// A new nonce: `{issue second:x}.{number:x}.{MAC:hex}`. The number makes every challenge's
    /// nonce its own, so two clients challenged in one second do not share one.
    fn nonce(&mut self, now: Nanos) -> String {
        let (t, n) = (now / NS, self.issued);
        self.issued += 1;
        let mut s = format!("{t:x}.{n:x}.");
        let tag = self.nonce_mac(t, n);
        mac::push_hex(&mut s, tag.get(..NONCE_MAC_LEN).unwrap_or_default());
        s
    }

    fn nonce_mac(&self, t: u64, n: u64) -> [u8; mac::MAC_LEN] {
        self.key.mac(&[&t.to_be_bytes(), &n.to_be_bytes()])
    }

    /// The issue second and number of `nonce` if we made it: its MAC is ours, and neither its
    /// time nor its number lies ahead of what we have handed out by `now`.
    fn genuine(&self, now: Nanos, nonce: &str) -> Option<(u64, u64)> {
        let mut parts = nonce.split('.');
        let (t, n, tag) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || t.len() > 16 || n.len() > 16 {
            return None;
        }
        let (t, n) = (
            u64::from_str_radix(t, 16).ok()?,
            u64::from_str_radix(n, 16).ok()?,
        );
        let (tag, len) = mac::parse_hex::<NONCE_MAC_LEN>(tag)?;
        let ok =
            len == NONCE_MAC_LEN && self.key.verify(&[&t.to_be_bytes(), &n.to_be_bytes()], &tag);
        (ok && t <= now / NS && n < self.issued).then_some((t, n))
    }

    /// Counts an answer refused for what the caller checks (another user's credentials).
    pub(super) fn failed(&mut self) {
        self.failures += 1;
    }

    /// The challenge header for a request that gets `verdict`'s challenge.
    pub(super) fn challenge(
        &mut self,
        now: Nanos,
        asker: Asker,
        stale: bool,
    ) -> (&'static str, String) {
        let nonce = self.nonce(now);
        let mut value = String::new();
        digest::write_challenge(&mut value, &self.realm, &nonce, Algorithm::Md5, None);
        if stale {
            value.push_str(", stale=true");
        }
        (asker.challenge_header(), value)
    }

    /// Judges `attempt` at `now`; `password` gives the user number and password of a digest
    /// username, if it is one of our users'.
    pub(super) fn check(
        &mut self,
        now: Nanos,
        attempt: &Attempt<'_>,
        password: impl Fn(&str) -> Option<(u32, String)>,
    ) -> Verdict {
        let Some(auth) = attempt
            .credentials
            .and_then(|v| digest::parse_authorization(v).ok())
        else {
            return Verdict::Challenge { stale: false };
        };
        let Some((t, _n)) = self.genuine(now, auth.nonce) else {
            // Not a nonce of ours (made up, or from before a restart): a plain challenge.
            self.forged += 1;
            return Verdict::Challenge { stale: false };
        };
        // A user we do not know is refused like one with a wrong password: a 404 would list
        // our users to anyone who asks (what SIP scanners count on).
        let Some((user, pw)) = password(auth.username) else {
            self.failures += 1;
            return Verdict::Forbidden;
        };
        if !self.digest_right(&auth, attempt, &pw) {
            self.failures += 1;
            return Verdict::Forbidden;
        }
        if now / NS > t.saturating_add(NONCE_LIFETIME_S) {
            self.stale += 1;
            return Verdict::Challenge { stale: true };
        }
        Verdict::User(user)
    }

    /// Whether the digest is right for this request: our realm, the request's own uri (RFC 3261
    /// 22.4: a response computed for another request is not an answer to this one) and the
    /// password.
    fn digest_right(
        &self,
        auth: &Authorization<'_>,
        attempt: &Attempt<'_>,
        password: &str,
    ) -> bool {
        auth.realm == self.realm
            && auth.uri == attempt.request_uri
            && digest::verify(auth, attempt.method, password)
    }
}
