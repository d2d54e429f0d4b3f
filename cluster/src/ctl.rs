//! The control endpoint: HTTP+JSON over a running cluster's [`Control`], for `pbxlab ctl` and
//! anything else that speaks HTTP (curl). Every request needs `Authorization: Bearer TOKEN`
//! with the admin token (never the join token nodes prove).
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /v1/status` | | the status: nodes, calls, whitelist, recent events |
//! | `POST /v1/servers/ACTION` | `{"role", "server", "addr"}`, any subset; none: every server | `[{server, action, started_s, finished_s, state}]` |
//! | `POST /v1/servers` | `{"role", "name", "addr"?}` | the new server (201) |
//! | `GET`, `POST`, `DELETE /v1/whitelist` | `{"ip"}` to add or remove | `{"whitelist": [..]}` |
//!
//! ACTION is an operator's [`Verb`] ([`Verb::is_operators`]); the drill faults (fail, partition,
//! heal) are not offered to operators. Errors answer `{"error": reason}`: 400 bad request or JSON, 401 no or
//! wrong token, 404 unknown route or no server matches, 405 wrong method, 409 refused (a
//! duplicate name or address, no pool of that role, a server with an action under way), 500 an action that failed half-way, 503
//! the cluster has stopped or too many connections.
//!
//! The connections are [`http::Server`]'s: the token is checked as soon as the request is
//! read, before it holds one of the 16 slots of requests being served (so a rolling upgrade
//! that takes a minute does not hold up a status, and connections without the token hold
//! none); one source address holds at most 8 connections, and a connection has 5 s from
//! accept to its whole request ([`http::Limits`]).

use std::io::{self, ErrorKind, Read as _};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;

use pbxlab_balancer::Role;
use serde::Deserialize;
use serde_json::{Value, json};

use super::cluster::{Control, Done, Filter, NodeStatus, OpError, Status, Verb};
use super::http::{self, Answer, Request, error_json};

/// The most event lines a status carries (the most recent).
const STATUS_EVENTS: usize = 100;
/// The longest server name `POST /v1/servers` takes.
const MAX_NAME: usize = 64;

/// A running control endpoint.
pub struct CtlServer {
    server: http::Server,
}

impl CtlServer {
    /// Binds `addr` and serves `control` from a thread of its own, to requests that carry
    /// `token` (the admin token).
    pub fn start(addr: SocketAddr, token: String, control: Control) -> io::Result<CtlServer> {
        if token.is_empty() {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "the token is empty",
            ));
        }
        let listener = TcpListener::bind(addr)?;
        let service = Arc::new(Endpoint {
            token: token.into(),
            control,
        });
        let server = http::Server::start(listener, http::Limits::default(), service)?;
        Ok(CtlServer { server })
    }

    /// Where it listens (the port chosen, if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops accepting. Requests in progress finish on their own threads.
    pub fn stop(self) {
        self.server.stop();
    }
}

/// A token for the endpoint: 16 bytes of /dev/urandom, in hex.
pub fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The routes over a cluster's [`Control`], for requests with the token.
struct Endpoint {
    token: Arc<str>,
    control: Control,
}

impl http::Service for Endpoint {
    fn screen(&self, request: &Request) -> Result<(), Answer> {
        if authorized(request, &self.token) {
            return Ok(());
        }
        let reason = if request.header("authorization").is_some() {
            "wrong token"
        } else {
            "no token: send Authorization: Bearer TOKEN"
        };
        Err((
            401,
            error_json(reason),
            vec![("WWW-Authenticate", "Bearer")],
        ))
    }

    fn serve(&self, request: &Request) -> Answer {
        handle(&self.control, request)
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Status,
    Act(Verb),
    Add,
    WhitelistList,
    WhitelistAdd,
    WhitelistRemove,
}

/// Why a request is refused: status, reason, and the methods allowed (for 405).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    status: u16,
    reason: String,
    allow: Option<&'static str>,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
            allow: None,
        }
    }
}

fn route(method: &str, target: &str) -> Result<Route, Refusal> {
    // The routes take no query; one is ignored rather than refused, as curl users add them.
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let (allow, route) = match path {
        "/v1/status" => ("GET", (method == "GET").then_some(Route::Status)),
        "/v1/servers" => ("POST", (method == "POST").then_some(Route::Add)),
        "/v1/whitelist" => (
            "GET, POST, DELETE",
            match method {
                "GET" => Some(Route::WhitelistList),
                "POST" => Some(Route::WhitelistAdd),
                "DELETE" => Some(Route::WhitelistRemove),
                _ => None,
            },
        ),
        _ => {
            let Some(name) = path.strip_prefix("/v1/servers/") else {
                return Err(Refusal::new(404, format!("no route {path}")));
            };
            let action = Verb::from_name(name)
                .filter(|a| a.is_operators())
                .ok_or_else(|| {
                    let names: Vec<&str> = Verb::ALL
                        .into_iter()
                        .filter(|a| a.is_operators())
                        .map(Verb::name)
                        .collect();
                    Refusal::new(
                        404,
                        format!("no action {name:?}; the actions are {}", names.join(", ")),
                    )
                })?;
            ("POST", (method == "POST").then_some(Route::Act(action)))
        }
    };
    route.ok_or(Refusal {
        status: 405,
        reason: format!("{path} takes {allow}, not {method}"),
        allow: Some(allow),
    })
}

/// Whether the request carries the token, compared in constant time.
fn authorized(request: &Request, token: &str) -> bool {
    let Some(value) = request.header("authorization") else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    let (given, token) = (given.trim().as_bytes(), token.as_bytes());
    scheme.eq_ignore_ascii_case("bearer")
        && given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The answer to a request that carried the token.
fn handle(control: &Control, request: &Request) -> Answer {
    match route(&request.method, &request.target).and_then(|r| answer(control, r, &request.body)) {
        Ok((status, body)) => (status, body, Vec::new()),
        Err(r) => {
            let allow = r.allow.map(|a| ("Allow", a)).into_iter().collect();
            (r.status, error_json(&r.reason), allow)
        }
    }
}

fn answer(control: &Control, route: Route, body: &[u8]) -> Result<(u16, Value), Refusal> {
    match route {
        Route::Status => Ok((200, status_json(&control.status()))),
        Route::Act(action) => {
            let filter = filter(parse_body::<FilterBody>(body, true)?)?;
            let done = control.act(action, &filter).map_err(op_refusal)?;
            Ok((200, Value::Array(done.iter().map(done_json).collect())))
        }
        Route::Add => {
            let add = parse_body::<AddBody>(body, false)?;
            let role = role(&add.role)?;
            check_name(&add.name)?;
            let addr = add.addr.as_deref().map(socket_addr).transpose()?;
            let node = control.add(role, &add.name, addr).map_err(op_refusal)?;
            Ok((201, node_json(&node)))
        }
        Route::WhitelistList => whitelist(control, None),
        Route::WhitelistAdd | Route::WhitelistRemove => {
            let body = parse_body::<IpBody>(body, false)?;
            let ip: IpAddr = body
                .ip
                .parse()
                .map_err(|e| Refusal::new(400, format!("ip {:?}: {e}", body.ip)))?;
            whitelist(control, Some((ip, route == Route::WhitelistAdd)))
        }
    }
}

fn whitelist(control: &Control, change: Option<(IpAddr, bool)>) -> Result<(u16, Value), Refusal> {
    let list = control.whitelist(change).map_err(op_refusal)?;
    let list: Vec<String> = list.iter().map(IpAddr::to_string).collect();
    Ok((200, json!({ "whitelist": list })))
}

/// Which servers an action applies to, as JSON; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    role: Option<String>,
    server: Option<String>,
    addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    role: String,
    name: String,
    addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IpBody {
    ip: String,
}

/// The body as `T`; an empty body is `T::default()` where `empty_ok`.
fn parse_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    empty_ok: bool,
) -> Result<T, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(T::default())
        } else {
            Err(Refusal::new(400, "this request needs a JSON body"))
        };
    }
    serde_json::from_slice(body).map_err(|e| Refusal::new(400, format!("bad JSON: {e}")))
}

fn filter(body: FilterBody) -> Result<Filter, Refusal> {
    Ok(Filter {
        role: body.role.as_deref().map(role).transpose()?,
        server: body.server,
        addr: body.addr.as_deref().map(socket_addr).transpose()?,
    })
}

fn role(name: &str) -> Result<Role, Refusal> {
    Role::from_name(name).ok_or_else(|| {
        Refusal::new(
            400,
            format!("unknown role {name:?}: media, meeting, ivr, queue or im"),
        )
    })
}

fn socket_addr(text: &str) -> Result<SocketAddr, Refusal> {
    text.parse()
        .map_err(|e| Refusal::new(400, format!("addr {text:?}: {e} (write IP:PORT)")))
}

fn check_name(name: &str) -> Result<(), Refusal> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            400,
            format!(
                "name {:?}: 1 to {MAX_NAME} letters, digits, '-', '_' or '.'",
                name.chars().take(MAX_NAME).collect::<String>()
            ),
        ))
    }
}

fn op_refusal(e: OpError) -> Refusal {
    let status = match &e {
        OpError::NoMatch(_) => 404,
        OpError::DuplicateName(_)
        | OpError::DuplicateAddr(..)
        | OpError::NoPool(_)
        | OpError::Bind { .. }
        | OpError::Busy { .. }
        | OpError::Refused(_)
        | OpError::NotForCallManager { .. } => 409,
        OpError::Failed { .. } => 500,
        OpError::Stopped | OpError::Unserved(_) | OpError::Elsewhere(_) => 503,
    };
    Refusal::new(status, e.to_string())
}

/// The status as `GET /v1/status` answers it.
pub fn status_json(s: &Status) -> Value {
    let c = &s.cm;
    let events = &s.events[s.events.len().saturating_sub(STATUS_EVENTS)..];
    json!({
        "elapsed_s": s.elapsed.as_secs_f64(),
        "registered": c.registered,
        "calls": {
            "active": c.calls_active,
            "total": c.calls_total,
            "completed": c.calls_completed,
            "failed": c.failures.values().sum::<u64>(),
        },
        "moved": c.moved,
        "dropped": c.dropped,
        "rate_limited": c.rate_limited,
        "auth": { "failures": c.auth_failures, "replays": c.auth_replays, "banned_sources": c.auth_banned_sources, "banned_users": c.auth_banned_users, "refused_banned": c.auth_refused_banned },
        "emulator": s.pace.drivers(),
        "whitelist": s.whitelist.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
        "events": events,
        "nodes": s.nodes.iter().map(node_json).collect::<Vec<_>>(),
        "link": link_json(&s.link),
        "callmanagers": s.callmanagers.iter().map(cm_json).collect::<Vec<_>>(),
    })
}

/// One Call Manager as the endpoint shows it: its role, term, log position and, for a
/// standby, how far behind the active it is.
pub fn cm_json(c: &super::cluster::CmStatus) -> Value {
    // Another process's Call Manager: only how far behind it is, if this one is the active.
    let known = |n: u64| (c.role != "elsewhere").then_some(n);
    json!({
        "name": c.name,
        "addr": c.addr.map(|a| a.to_string()),
        "running": c.running,
        "cut_off": c.cut,
        "role": c.role,
        "serving": c.serving,
        "term": known(c.term),
        "applied": known(c.applied),
        "commit": known(c.commit),
        "behind": c.behind,
        "bind_waits": c.bind_waits,
        "replication": c.stats,
    })
}

/// The control link's figures: joins, and the datagrams dropped as forged or replayed.
pub fn link_json(l: &super::hub::HubStats) -> Value {
    json!({
        "joins": l.joins,
        "rejoins": l.rejoins,
        "restart_claims": l.restart_claims,
        "relinks": l.relinks,
        "relink_hints": l.hints,
        "sessionless": l.sessionless,
        "refused": l.refused,
        "lost": l.lost,
        "unauthenticated": l.unauthenticated,
        "replayed": l.replayed,
        "malformed": l.malformed,
        "ignored": l.ignored,
    })
}

/// One server as the endpoint shows it.
pub fn node_json(n: &NodeStatus) -> Value {
    json!({
        "name": n.name,
        "role": n.role,
        "addr": n.addr.to_string(),
        "state": n.state,
        "load": n.load,
        "capacity": n.capacity,
        "last_probe": n.last_probe.map(|(ago, result)| json!({
            "result": result,
            "ago_s": ago.as_secs_f64(),
        })),
        "probe_rtt_ms": n.probe_rtt.map(|d| d.as_secs_f64() * 1e3),
        "media_sessions": n.media_sessions,
        "node_sessions": n.node_sessions,
        "in_step": n.in_step,
        "packets_in": n.packets_in,
        "packets_out": n.packets_out,
        "send_errors": n.send_errors,
        "running": n.running,
    })
}

/// What an action did to one server.
pub fn done_json(d: &Done) -> Value {
    json!({
        "server": d.server,
        "action": d.action.name(),
        "started_s": d.started.as_secs_f64(),
        "finished_s": d.finished.as_secs_f64(),
        "state": d.state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            target: "/v1/status".into(),
            headers: auth
                .map(|a| vec![("Authorization".to_owned(), a.to_owned())])
                .unwrap_or_default(),
            body: Vec::new(),
        }
    }

    #[test]
    fn only_the_bearer_token_passes() {
        assert!(authorized(&request(Some("Bearer s3cret")), "s3cret"));
        assert!(authorized(&request(Some("bearer s3cret")), "s3cret"));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "",
        ] {
            assert!(!authorized(&request(Some(wrong)), "s3cret"), "{wrong:?}");
        }
        assert!(!authorized(&request(None), "s3cret"));
    }

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/v1/status"), Ok(Route::Status));
        assert_eq!(route("GET", "/v1/status?pretty"), Ok(Route::Status));
        assert_eq!(
            route("POST", "/v1/servers/upgrade"),
            Ok(Route::Act(Verb::Upgrade))
        );
        assert_eq!(
            route("POST", "/v1/servers/rm"),
            Ok(Route::Act(Verb::Remove))
        );
        assert_eq!(route("POST", "/v1/servers"), Ok(Route::Add));
        assert_eq!(route("DELETE", "/v1/whitelist"), Ok(Route::WhitelistRemove));
        assert_eq!(route("GET", "/v1/nothing").map_err(|r| r.status), Err(404));
        // Drill faults are not operator actions.
        let r = route("POST", "/v1/servers/fail").expect_err("a fault");
        assert_eq!(r.status, 404);
        assert!(r.reason.contains("upgrade"), "{}", r.reason);
        let r = route("GET", "/v1/servers/stop").expect_err("wrong method");
        assert_eq!((r.status, r.allow), (405, Some("POST")));
    }

    #[test]
    fn bodies() {
        let f: FilterBody = parse_body(b"", true).expect("empty: every server");
        assert_eq!(filter(f).expect("filter"), Filter::default());
        let f: FilterBody =
            parse_body(br#"{"role": "media", "addr": "127.0.0.1:4000"}"#, true).expect("body");
        let f = filter(f).expect("filter");
        assert_eq!(f.role, Some(Role::Media));
        assert_eq!(f.addr, Some(SocketAddr::from(([127, 0, 0, 1], 4000))));
        for (body, says) in [
            (&br#"{"rol": "media"}"#[..], "unknown field"),
            (b"{", "bad JSON"),
            (b"[1]", "bad JSON"),
        ] {
            let e = parse_body::<FilterBody>(body, true).expect_err("refused");
            assert_eq!(e.status, 400);
            assert!(e.reason.contains(says), "{}", e.reason);
        }
        let e = filter(FilterBody {
            role: Some("pbx".into()),
            ..FilterBody::default()
        })
        .expect_err("no such role");
        assert!(e.reason.contains("pbx"), "{}", e.reason);
        assert!(parse_body::<AddBody>(b" ", false).is_err());
        assert!(check_name("media-3").is_ok());
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (
            random_token().expect("urandom"),
            random_token().expect("urandom"),
        );
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
