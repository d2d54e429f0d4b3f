//! Digest authentication of what our users send: the nonces we hand out in challenges and how
//! an answer to one is judged. A nonce is its issue second and a number, with an HMAC-SHA-256
//! of both under the Call Manager's key, so it is checked by recomputing it, not looked up.
//! What is stored is how each nonce has been used ([`NonceCounts`]), so that a captured request
//! sent again is not taken a second time, and who has failed to answer how often
//! ([`Strikes`]), so that passwords cannot be guessed at the rate requests arrive.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};

use pbxlab_proto::digest::{self, Algorithm, Authorization};
use pbxlab_proto::mac::{self, Key};
use pbxlab_proto::sip::{HeaderName, Message};

use super::{CallManager, NS, Nanos, Stats};

/// Who may call without credentials what, and from where nobody is challenged.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// Service targets anonymous callers may reach, by user part: a name (`echo`) or a prefix
    /// ending in `*` (`ivr-*`). Our users' numbers are never public.
    pub public: Vec<String>,
    /// Sources whose requests are never challenged (a trunk or proxy in front that has
    /// authenticated its own users). Not the rate limit's whitelist: trusting a source with
    /// identities is more than letting it send fast.
    pub trusted: Vec<IpAddr>,
}

impl Default for Trust {
    /// Every service public, as inbound numbers are; no source trusted.
    fn default() -> Trust {
        Trust {
            public: ["echo", "ivr-*", "queue-*", "meeting-*"]
                .map(str::to_owned)
                .to_vec(),
            trusted: Vec::new(),
        }
    }
}

impl Trust {
    /// Whether `target` (a Request-URI's user part) is one of the public services.
    pub(super) fn is_public(&self, target: &str) -> bool {
        self.public.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => target.starts_with(prefix),
            None => target == p,
        })
    }
}

/// Seconds a nonce stays valid.
const NONCE_LIFETIME_S: u64 = 300;

/// Bytes of the nonce's MAC that it carries (of HMAC-SHA-256's 32).
const NONCE_MAC_LEN: usize = 16;

/// Nonces whose use is remembered at once: at 300 s each, 870 authenticated requests a second
/// before the oldest are forgotten early (and refused from then on, so a forgotten nonce is
/// never taken again).
const MAX_NONCES: usize = 262_144;

/// Nonces one user's requests may hold at once; past it the user's oldest is spent.
const MAX_NONCES_PER_USER: usize = 1_024;

/// Wrong answers a user, or a source address, may give within [`FAILURE_WINDOW`] before it is
/// banned: for [`FIRST_BAN`], doubling with each ban after, up to [`LONGEST_BAN`] (fail2ban's
/// `maxretry`, `findtime`, `bantime` and its `bantime.increment`).
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Nanos = 60 * NS;
const FIRST_BAN: Nanos = 60 * NS;
const LONGEST_BAN: Nanos = 3600 * NS;

/// Users, and sources, whose failures are counted at once. Past it, quiet entries are
/// dropped; if none is quiet, a new source is not counted (its users still are).
const MAX_STRIKES: usize = 65_536;

/// How long the same request (same nonce and `nc`, same Via branch, from the same address) is
/// taken again as a retransmission of itself: a non-INVITE client transaction's Timer F,
/// 64 x T1.
const RETRANSMISSION_WINDOW: Nanos = 32 * NS;

/// Which challenge a request gets: 401 with `WWW-Authenticate` for REGISTER (the registrar is
/// the request's target), 407 with `Proxy-Authenticate` for what we route on (RFC 3261 22.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asker {
    Registrar,
    Proxy,
}

impl Asker {
    pub(super) fn code(self) -> u16 {
        match self {
            Asker::Registrar => 401,
            Asker::Proxy => 407,
        }
    }

    fn challenge_header(self) -> &'static str {
        match self {
            Asker::Registrar => "WWW-Authenticate",
            Asker::Proxy => "Proxy-Authenticate",
        }
    }
}

/// What an answer to a challenge comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The credentials are this user's.
    User(u32),
    /// The source is banned for its failures: dropped unanswered, as fail2ban's firewall
    /// rule (or Kamailio's `ipban` table) drops it.
    Banned,
    /// The right credentials, but on a nonce (and `nc`) already used by another request: a
    /// replay. Challenged again as stale, so an honest client just answers the new nonce.
    Replay,
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
    pub(super) from: SocketAddr,
    /// The top Via's branch: with `from`, what tells a retransmission from a replay.
    pub(super) branch: &'a str,
}

impl<'a> Attempt<'a> {
    /// `msg`'s attempt at `method`, with its credentials (if any) in header `credentials`.
    pub(super) fn of(
        msg: &'a Message<'a>,
        method: &'a str,
        credentials: HeaderName,
        from: SocketAddr,
    ) -> Attempt<'a> {
        Attempt {
            method,
            request_uri: msg.request_uri().unwrap_or_default(),
            credentials: msg.header(credentials),
            from,
            branch: msg.top_via().and_then(|v| v.branch).unwrap_or_default(),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub(super) struct Auth {
    realm: String,
    /// Keys the nonces' MACs: `Config::key.derive("nonce")`. Never in a snapshot.
    #[serde(skip, default = "super::unkeyed")]
    key: Key,
    /// Nonces handed out so far; the next one's number.
    issued: u64,
    counts: NonceCounts,
    sources: Strikes<IpAddr>,
    users: Strikes<u32>,
    failures: u64,
    sources_banned: u64,
    users_banned: u64,
    refused_banned: u64,
    replays: u64,
    stale: u64,
    forged: u64,
}

impl Auth {
    pub(super) fn rekey(&mut self, key: &Key) {
        self.key = key.derive("nonce");
    }

    pub(super) fn new(realm: &str, key: &Key) -> Auth {
        Auth {
            realm: realm.to_owned(),
            key: key.derive("nonce"),
            issued: 0,
            counts: NonceCounts::default(),
            sources: Strikes::default(),
            users: Strikes::default(),
            failures: 0,
            sources_banned: 0,
            users_banned: 0,
            refused_banned: 0,
            replays: 0,
            stale: 0,
            forged: 0,
        }
    }

    pub(super) fn report(&self, s: &mut Stats) {
        s.auth_failures = self.failures;
        s.auth_stale = self.stale;
        s.auth_forged_nonces = self.forged;
        s.auth_replays = self.replays;
        s.auth_banned_sources = self.sources_banned;
        s.auth_banned_users = self.users_banned;
        s.auth_refused_banned = self.refused_banned;
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

    /// The challenge header `asker` sends, with a new nonce (`stale=true` if `stale`).
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
        if self.sources.banned(now, &attempt.from.ip()) {
            self.refused_banned += 1;
            return Verdict::Banned;
        }
        let Some(auth) = attempt
            .credentials
            .and_then(|v| digest::parse_authorization(v).ok())
        else {
            return Verdict::Challenge { stale: false };
        };
        let Some((t, n)) = self.genuine(now, auth.nonce) else {
            // Not a nonce of ours (made up, or from before a restart): a plain challenge.
            self.forged += 1;
            return Verdict::Challenge { stale: false };
        };
        // A user we do not know is refused like one with a wrong password: a 404 would list
        // our users to anyone who asks (what SIP scanners count on).
        let Some((user, pw)) = password(auth.username) else {
            self.strike(now, attempt.from.ip(), None);
            return Verdict::Forbidden;
        };
        // A banned user is refused without a look at the password, so that guessing on
        // during the ban learns nothing (Kamailio's htable example: 403 "Try later").
        if self.users.banned(now, &user) {
            self.refused_banned += 1;
            return Verdict::Forbidden;
        }
        if !self.digest_right(&auth, attempt, &pw) {
            self.strike(now, attempt.from.ip(), Some(user));
            return Verdict::Forbidden;
        }
        if now / NS > t.saturating_add(NONCE_LIFETIME_S) {
            self.stale += 1;
            return Verdict::Challenge { stale: true };
        }
        // Only a right digest is counted: the nc it carries is covered by it, so nobody without
        // the password can use up an honest client's counts.
        let heard = Heard {
            branch: pbxlab_balancer::hash::fnv1a(attempt.branch.as_bytes()),
            from: attempt.from,
            at: now,
        };
        if !self.counts.take(now, n, t, user, auth.nc, heard) {
            self.replays += 1;
            return Verdict::Replay;
        }
        Verdict::User(user)
    }

    /// A wrong answer from `ip` for `user` (if one of ours): counted against both.
    fn strike(&mut self, now: Nanos, ip: IpAddr, user: Option<u32>) {
        self.failures += 1;
        if self.sources.fail(now, ip) {
            self.sources_banned += 1;
        }
        if let Some(user) = user
            && self.users.fail(now, user)
        {
            self.users_banned += 1;
        }
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

/// One user's or source's wrong answers.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, Default)]
struct Strike {
    /// Failures counted since `since`, the first of this window.
    failures: u32,
    since: Nanos,
    last: Nanos,
    banned_until: Nanos,
    /// Bans so far: the next is twice as long. Forgotten after [`LONGEST_BAN`] without a
    /// failure.
    bans: u32,
}

/// Failures per key (a user, a source address), in a bounded table.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
#[serde(bound(
    serialize = "K: serde::Serialize + Eq + std::hash::Hash",
    deserialize = "K: serde::Deserialize<'de> + Eq + std::hash::Hash"
))]
struct Strikes<K> {
    map: HashMap<K, Strike>,
    /// When quiet entries were last dropped: at most once a second, so a full table of
    /// banned keys costs one pass a second, not one per request.
    pruned_at: Option<Nanos>,
}

impl<K> Default for Strikes<K> {
    fn default() -> Self {
        Strikes {
            map: HashMap::new(),
            pruned_at: None,
        }
    }
}

impl<K: Hash + Eq> Strikes<K> {
    fn banned(&self, now: Nanos, key: &K) -> bool {
        self.map.get(key).is_some_and(|s| s.banned_until > now)
    }

    /// Counts a failure of `key` at `now`; true if it starts a ban.
    fn fail(&mut self, now: Nanos, key: K) -> bool {
        if self.map.len() >= MAX_STRIKES && !self.map.contains_key(&key) {
            self.prune(now);
            if self.map.len() >= MAX_STRIKES {
                return false;
            }
        }
        let s = self.map.entry(key).or_default();
        if now.saturating_sub(s.last) > LONGEST_BAN {
            s.bans = 0;
        }
        if s.failures == 0 || now.saturating_sub(s.since) > FAILURE_WINDOW {
            s.failures = 0;
            s.since = now;
        }
        s.failures += 1;
        s.last = now;
        if s.failures < MAX_FAILURES {
            return false;
        }
        let ban = FIRST_BAN
            .saturating_mul(1 << s.bans.min(6))
            .min(LONGEST_BAN);
        s.banned_until = now.saturating_add(ban);
        s.bans += 1;
        s.failures = 0;
        true
    }

    /// Drops the entries that are neither banned nor counting a recent failure.
    fn prune(&mut self, now: Nanos) {
        if self.pruned_at.is_some_and(|at| now.saturating_sub(at) < NS) {
            return;
        }
        self.pruned_at = Some(now);
        self.map
            .retain(|_, s| s.banned_until > now || now.saturating_sub(s.last) <= FAILURE_WINDOW);
    }
}

impl CallManager {
    /// Answers `msg` with `asker`'s challenge and a new nonce (`stale=true` if `stale`).
    pub(super) fn challenge(
        &mut self,
        now: Nanos,
        to: SocketAddr,
        msg: &Message<'_>,
        asker: Asker,
        stale: bool,
    ) {
        let (name, value) = self.auth.challenge(now, asker, stale);
        self.reply(to, msg, asker.code(), &[(name, &value)]);
    }
}

/// A request that used a nonce: enough of it to know the same request when it comes again.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct Heard {
    /// FNV-1a of its top Via branch.
    branch: u64,
    from: SocketAddr,
    at: Nanos,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy)]
struct Used {
    user: u32,
    /// The issue second of the nonce: the entry goes when the nonce expires.
    t: u64,
    /// The highest `nc` taken; [`SPENT`] when no more may be (a nonce answered without qop,
    /// which has no count, is good once, RFC 2617 3.2.2 without nonce-count).
    nc: u32,
    last: Heard,
}

const SPENT: u32 = u32::MAX;

/// How each nonce answered so far has been used, in a bounded table: per nonce the highest
/// `nc` taken (RFC 7616 3.4: a count not above it is a replay), its entry kept as long as the
/// nonce lives. Kamailio's auth module with `nonce_count` keeps the same per nonce, in an
/// array of in-flight nonces that wraps.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default)]
struct NonceCounts {
    used: HashMap<u64, Used>,
    /// Nonce numbers in the order they were first used: the oldest entry is at the front.
    order: VecDeque<u64>,
    /// Each user's nonces, in the same order.
    by_user: HashMap<u32, VecDeque<u64>>,
    /// Nonces numbered below this that the table does not hold were forgotten while alive
    /// (the table was full): refused, since their counts are gone.
    forgotten_below: u64,
}

impl NonceCounts {
    /// Whether nonce `n` (issued at second `t`) may be used at `now` by `user` with count `nc`
    /// (`None`: no qop), by the request `heard`; if so it is remembered. The same request from
    /// the same address again within [`RETRANSMISSION_WINDOW`] is a retransmission and taken.
    fn take(
        &mut self,
        now: Nanos,
        n: u64,
        t: u64,
        user: u32,
        nc: Option<u32>,
        heard: Heard,
    ) -> bool {
        self.expire(now);
        if let Some(u) = self.used.get_mut(&n) {
            let again = u.last.branch == heard.branch
                && u.last.from == heard.from
                && now.saturating_sub(u.last.at) <= RETRANSMISSION_WINDOW;
            return match nc {
                Some(nc) if u.nc != SPENT && nc > u.nc => {
                    u.nc = nc;
                    u.last = heard;
                    true
                }
                _ => again,
            };
        }
        if n < self.forgotten_below {
            return false;
        }
        while self.order.len() >= MAX_NONCES {
            self.forget_oldest(true);
        }
        self.used.insert(
            n,
            Used {
                user,
                t,
                nc: nc.unwrap_or(SPENT),
                last: heard,
            },
        );
        self.order.push_back(n);
        let mine = self.by_user.entry(user).or_default();
        mine.push_back(n);
        if mine.len() > MAX_NONCES_PER_USER
            && let Some(oldest) = mine.pop_front()
            && let Some(u) = self.used.get_mut(&oldest)
        {
            // Spent, not removed: removed, it would look unused.
            u.nc = SPENT;
            u.last.at = 0;
        }
        true
    }

    /// Drops the entries of nonces that have expired by `now` (they are refused as stale
    /// anyway). Entries are in first-use order, which is near enough issue order.
    fn expire(&mut self, now: Nanos) {
        let now_s = now / NS;
        while let Some(&n) = self.order.front() {
            let lapsed = self
                .used
                .get(&n)
                .is_none_or(|u| now_s > u.t.saturating_add(NONCE_LIFETIME_S));
            if !lapsed {
                break;
            }
            self.forget_oldest(false);
        }
    }

    fn forget_oldest(&mut self, alive: bool) {
        let Some(n) = self.order.pop_front() else {
            return;
        };
        let Some(u) = self.used.remove(&n) else {
            return;
        };
        if alive {
            self.forgotten_below = self.forgotten_below.max(n + 1);
        }
        if let Some(mine) = self.by_user.get_mut(&u.user) {
            if mine.front() == Some(&n) {
                mine.pop_front();
            }
            if mine.is_empty() {
                self.by_user.remove(&u.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(i: u64) -> Heard {
        Heard {
            branch: i,
            from: "127.0.0.1:7000".parse().unwrap(),
            at: 0,
        }
    }

    #[test]
    fn strikes_ban_after_ten_with_backoff_and_stay_bounded() {
        let mut s = Strikes::<u32>::default();
        for i in 0..9 {
            assert!(!s.fail(i * NS, 1));
        }
        assert!(s.fail(9 * NS, 1), "the tenth failure within a minute bans");
        assert!(s.banned(9 * NS + 59 * NS, &1));
        assert!(!s.banned(9 * NS + 60 * NS, &1));
        // Failures spread thinner than ten a minute never ban.
        for i in 0..30 {
            assert!(!s.fail(i * 7 * NS, 2));
        }
        // The next ban of key 1 is twice as long.
        let t = 100 * NS;
        for i in 0..10 {
            s.fail(t + i, 1);
        }
        assert!(s.banned(t + 119 * NS, &1) && !s.banned(t + 121 * NS, &1));
        // A full table takes no new keys while every entry is recent, then makes room.
        let mut full = Strikes::<u32>::default();
        for k in 0..MAX_STRIKES as u32 {
            full.fail(0, k);
        }
        full.fail(0, u32::MAX);
        assert_eq!(full.map.len(), MAX_STRIKES);
        full.fail(FAILURE_WINDOW + 2 * NS, u32::MAX);
        assert_eq!(full.map.len(), 1);
    }

    #[test]
    fn the_counts_are_bounded_per_user_and_in_all_and_forget_nothing_into_reuse() {
        let mut c = NonceCounts::default();
        // One user past its share: its oldest nonce is spent, not forgotten.
        let per_user = MAX_NONCES_PER_USER as u64;
        for n in 0..=per_user {
            assert!(c.take(0, n, 0, 1, Some(1), heard(n)));
        }
        assert_eq!(c.by_user[&1].len(), MAX_NONCES_PER_USER);
        assert!(!c.take(0, 0, 0, 1, Some(2), heard(99_999)), "spent");
        assert!(c.take(0, 1, 0, 1, Some(2), heard(99_999)));
        // The whole table full: the oldest entries go, and their nonces are refused after.
        let all = MAX_NONCES as u64;
        for n in per_user + 1..all + 10 {
            assert!(c.take(0, n, 0, (n % 5000) as u32 + 2, Some(1), heard(n)));
        }
        assert_eq!(c.order.len(), MAX_NONCES);
        assert!(c.used.len() <= MAX_NONCES);
        assert!(
            !c.take(0, 5, 0, 1, Some(9), heard(5)),
            "forgotten while alive"
        );
        assert!(c.take(0, all + 9, 0, 3, Some(2), heard(1)));
        // Once their nonces expire every entry goes.
        c.expire((NONCE_LIFETIME_S + 1) * NS);
        assert!(c.used.is_empty() && c.order.is_empty() && c.by_user.is_empty());
    }
}
