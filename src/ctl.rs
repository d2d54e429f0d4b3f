//! `pbxlab ctl`: operate a running cluster through its control endpoint, and [`serve`], the
//! part of `pbxlab cluster --ctl` that starts that endpoint.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use pbxlab_cluster::cluster::Control;
use pbxlab_cluster::ctl::{CtlServer, random_token};
use pbxlab_cluster::http::{self, Url};
use serde_json::{Value, json};

use crate::BadInput;

/// Where `pbxlab ctl` looks for the endpoint without --ctl or $PBXLAB_CTL.
const DEFAULT_CTL: &str = "127.0.0.1:5080";
/// How long a quick request (status, add, whitelist) may take.
const QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an action may take: a rolling upgrade goes one server at a time.
const ACTION_TIMEOUT: Duration = Duration::from_secs(3600);

/// Operate a running cluster through its control endpoint (`pbxlab cluster --ctl ADDR`).
///
/// An action applies to the servers --role, --server and --addr select; one that takes servers
/// out of service (stop, restart, upgrade, rm, disable, drain) acts on every server only when
/// told so with --all. Each prints one line per server with the time it took.
#[derive(clap::Args)]
#[command(
    after_help = "Exit codes: 0 done; 1 the endpoint cannot be reached, or the cluster \
    failed while carrying out the action (HTTP 5xx); 2 bad usage or input, or the cluster \
    refused the request (HTTP 401 wrong token, 404 no server matches, 409 a duplicate name or \
    address): the message gives the cluster's reason."
)]
pub(crate) struct CtlArgs {
    /// The control endpoint, HOST:PORT or http://HOST:PORT [default: $PBXLAB_CTL, else
    /// 127.0.0.1:5080]. Several, comma-separated (each Call Manager process's): the request
    /// goes to the one that serves the virtual IP.
    #[arg(long, global = true, value_name = "ADDR")]
    ctl: Option<String>,
    /// The endpoint's bearer token, the cluster's admin token [default: $PBXLAB_ADMIN_TOKEN].
    #[arg(long, global = true, value_name = "T")]
    admin_token: Option<String>,
    /// Read the admin token from FILE (its one line).
    #[arg(long, global = true, value_name = "FILE")]
    admin_token_file: Option<std::path::PathBuf>,
    /// Deprecated: the admin token, like --admin-token; so is $PBXLAB_TOKEN.
    #[arg(long, global = true, value_name = "T")]
    token: Option<String>,
    /// Print the endpoint's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// Every server: role, address, state, sessions/capacity, last probe.
    Status,
    /// Start stopped servers; done once their probes say they are up.
    Start(Select),
    /// Stop servers: their sessions move to others first.
    Stop(Select),
    /// Stop, then start.
    Restart(Select),
    /// Rolling upgrade, one server at a time: disable (sessions move), restart, wait for the
    /// probes, enable.
    Upgrade(Select),
    /// Remove servers from the cluster for good (sessions move first).
    Rm(Select),
    /// Take servers out of service; their sessions move to others.
    Disable(Select),
    /// Put disabled or draining servers back in service.
    Enable(Select),
    /// Take no new sessions; the current ones finish where they are.
    Drain(Select),
    /// Add a server to its role's pool (names and addresses are unique in the cluster).
    Add {
        /// Its role; the cluster must have a pool of it.
        #[arg(long, value_parser = ROLES)]
        role: String,
        /// A name no other server has (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// Its address (default: the Call Manager's IP, a free port).
        #[arg(long, value_name = "IP:PORT")]
        addr: Option<SocketAddr>,
    },
    /// The sources exempt from the rate limit.
    Whitelist {
        #[command(subcommand)]
        verb: WhitelistVerb,
    },
}

const ROLES: [&str; 5] = ["media", "meeting", "ivr", "queue", "im"];

/// Which servers an action applies to; none given: every server.
#[derive(clap::Args)]
struct Select {
    /// Only the servers of this role (without any of these: every server).
    #[arg(long, value_parser = ROLES)]
    role: Option<String>,
    /// Only the server with this name.
    #[arg(long, value_name = "NAME")]
    server: Option<String>,
    /// Only the server at this address.
    #[arg(long, value_name = "IP:PORT")]
    addr: Option<SocketAddr>,
    /// Every server: what an action that takes servers out of service needs when no --role,
    /// --server or --addr narrows it.
    #[arg(long, conflicts_with_all = ["role", "server", "addr"])]
    all: bool,
}

impl Select {
    fn narrowed(&self) -> bool {
        self.role.is_some() || self.server.is_some() || self.addr.is_some()
    }
}

#[derive(clap::Subcommand)]
enum WhitelistVerb {
    /// Exempt a source address.
    Add { ip: IpAddr },
    /// Subject a source address to the rate limit again.
    Rm { ip: IpAddr },
    /// The exempt addresses.
    List,
}

/// `$NAME` if set and not empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub(crate) fn ctl(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let endpoint = args
        .ctl
        .or_else(|| env("PBXLAB_CTL"))
        .unwrap_or_else(|| DEFAULT_CTL.to_owned());
    let bases = endpoint
        .split(',')
        .map(|e| {
            let e = e.trim();
            let url = if e.contains("://") {
                e.to_owned()
            } else {
                format!("http://{e}")
            };
            Url::parse(&url).map_err(|e| BadInput(format!("--ctl: {e}")))
        })
        .collect::<Result<Vec<Url>, BadInput>>()?;
    let token = crate::token::read(&crate::token::Sources {
        what: "admin token",
        flag: ("--admin-token", args.admin_token.as_deref()),
        file: ("--admin-token-file", args.admin_token_file.as_deref()),
        env: "PBXLAB_ADMIN_TOKEN",
        deprecated: Some(("--token", args.token.as_deref(), "PBXLAB_TOKEN")),
        max_len: crate::token::MAX_ADMIN_TOKEN,
    })?
    .ok_or_else(|| {
        BadInput(
            "no token: give --admin-token, --admin-token-file or set PBXLAB_ADMIN_TOKEN \
             (pbxlab cluster prints the one it made)"
                .into(),
        )
    })?;
    if let Some((name, select)) = takes_out(&args.verb)
        && !select.narrowed()
        && !select.all
    {
        return Err(BadInput(format!(
            "ctl {name} without --role, --server or --addr would act on every server of the \
             cluster: give --all to mean that"
        ))
        .into());
    }
    let (method, path, body, timeout) = request(&args.verb);
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string().into_bytes());
    // The serving endpoint's answer; failing that, the first one's that answered.
    let (mut answered, mut fallback, mut unreachable) = (None, None, None);
    for base in &bases {
        let url = Url {
            authority: base.authority.clone(),
            path: format!("{}{path}", base.path.trim_end_matches('/')),
        };
        let response = match http::call(
            method,
            &url,
            &[("Authorization", &auth)],
            body.as_deref(),
            timeout,
        ) {
            Ok(r) => r,
            Err(e) => {
                let error = anyhow!(
                    "cannot reach the control endpoint at http://{}: {e} (is `pbxlab cluster \
                     --ctl {}` running?)",
                    base.authority,
                    base.authority
                );
                // An action that may have reached the endpoint is not sent to the next one:
                // it could be carried out twice.
                let never_sent = matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::AddrNotAvailable
                        | std::io::ErrorKind::HostUnreachable
                        | std::io::ErrorKind::NetworkUnreachable
                );
                if method != "GET" && !never_sent {
                    return Err(error);
                }
                unreachable.get_or_insert(error);
                continue;
            }
        };
        let Ok(value) = serde_json::from_slice::<Value>(&response.body) else {
            unreachable.get_or_insert(anyhow!(
                "the endpoint at http://{} answered HTTP {} without JSON",
                base.authority,
                response.status
            ));
            continue;
        };
        // With several endpoints, the one that serves the virtual IP answers for the cluster:
        // another Call Manager process refuses (503), or shows only its own view.
        let serves = response.status != 503
            && (method != "GET"
                || value["callmanagers"]
                    .as_array()
                    .is_none_or(|cms| cms.is_empty() || cms.iter().any(|c| c["serving"] == true)));
        if serves {
            answered = Some((base, response, value));
            break;
        }
        fallback.get_or_insert((base, response, value));
    }
    let Some((base, response, value)) = answered.or(fallback) else {
        return Err(unreachable.unwrap_or_else(|| anyhow!("--ctl: no endpoint")));
    };
    let reason = value["error"].as_str().unwrap_or("(no reason given)");
    match response.status {
        200 | 201 => {}
        401 => {
            return Err(BadInput(format!(
                "the control endpoint at http://{} refused the token (HTTP 401): {reason}",
                base.authority
            ))
            .into());
        }
        s @ 400..=499 => {
            return Err(BadInput(format!("the cluster refused: {reason} (HTTP {s})")).into());
        }
        s => return Err(anyhow!("the cluster could not do it: {reason} (HTTP {s})")),
    }
    if args.json {
        crate::show(&format!("{}\n", serde_json::to_string_pretty(&value)?));
    } else {
        crate::show(&render(&args.verb, &value));
    }
    Ok(ExitCode::SUCCESS)
}

/// The verbs that take servers out of service, with their selection.
fn takes_out(verb: &Verb) -> Option<(&'static str, &Select)> {
    match verb {
        Verb::Stop(s) => Some(("stop", s)),
        Verb::Restart(s) => Some(("restart", s)),
        Verb::Upgrade(s) => Some(("upgrade", s)),
        Verb::Rm(s) => Some(("rm", s)),
        Verb::Disable(s) => Some(("disable", s)),
        Verb::Drain(s) => Some(("drain", s)),
        _ => None,
    }
}

/// Method, path, JSON body and time limit of the verb's request.
fn request(verb: &Verb) -> (&'static str, String, Option<Value>, Duration) {
    let act = |name: &str, s: &Select| {
        let mut filter = serde_json::Map::new();
        if let Some(r) = &s.role {
            filter.insert("role".into(), json!(r));
        }
        if let Some(n) = &s.server {
            filter.insert("server".into(), json!(n));
        }
        if let Some(a) = s.addr {
            filter.insert("addr".into(), json!(a.to_string()));
        }
        (
            "POST",
            format!("/v1/servers/{name}"),
            Some(Value::Object(filter)),
            ACTION_TIMEOUT,
        )
    };
    match verb {
        Verb::Status => ("GET", "/v1/status".into(), None, QUICK_TIMEOUT),
        Verb::Start(s) => act("start", s),
        Verb::Stop(s) => act("stop", s),
        Verb::Restart(s) => act("restart", s),
        Verb::Upgrade(s) => act("upgrade", s),
        Verb::Rm(s) => act("rm", s),
        Verb::Disable(s) => act("disable", s),
        Verb::Enable(s) => act("enable", s),
        Verb::Drain(s) => act("drain", s),
        Verb::Add { role, name, addr } => {
            let mut body = json!({ "role": role, "name": name });
            if let Some(a) = addr {
                body["addr"] = json!(a.to_string());
            }
            ("POST", "/v1/servers".into(), Some(body), QUICK_TIMEOUT)
        }
        Verb::Whitelist { verb } => match verb {
            WhitelistVerb::List => ("GET", "/v1/whitelist".into(), None, QUICK_TIMEOUT),
            WhitelistVerb::Add { ip } => (
                "POST",
                "/v1/whitelist".into(),
                Some(json!({ "ip": ip.to_string() })),
                QUICK_TIMEOUT,
            ),
            WhitelistVerb::Rm { ip } => (
                "DELETE",
                "/v1/whitelist".into(),
                Some(json!({ "ip": ip.to_string() })),
                QUICK_TIMEOUT,
            ),
        },
    }
}

/// The answer as text for a person.
fn render(verb: &Verb, v: &Value) -> String {
    match verb {
        Verb::Status => render_status(v),
        Verb::Add { .. } => format!(
            "added {} ({}) at {}: {}\n",
            text(&v["name"]),
            text(&v["role"]),
            text(&v["addr"]),
            state(&v["state"])
        ),
        Verb::Whitelist { .. } => v["whitelist"]
            .as_array()
            .map(|ips| ips.iter().map(|ip| format!("{}\n", text(ip))).collect())
            .unwrap_or_default(),
        _ => v
            .as_array()
            .map(|done| {
                done.iter()
                    .map(|d| {
                        let took = d["finished_s"].as_f64().unwrap_or(0.0)
                            - d["started_s"].as_f64().unwrap_or(0.0);
                        format!(
                            "{:<12} {:<8} done in {:>6.2} s, now {}\n",
                            text(&d["server"]),
                            text(&d["action"]),
                            took,
                            state(&d["state"])
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn render_status(v: &Value) -> String {
    let mut out = format!(
        "{:<12} {:<8} {:<22} {:<9} {:>17}  {}\n",
        "name", "role", "address", "state", "sessions/capacity", "last probe"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let probe = match n["last_probe"].as_object() {
            None => "none yet".to_owned(),
            Some(p) => {
                let mut s = format!(
                    "{} {:.1}s ago",
                    text(&p["result"]),
                    p["ago_s"].as_f64().unwrap_or(0.0)
                );
                if let Some(rtt) = n["probe_rtt_ms"].as_f64().filter(|_| p["result"] == "ok") {
                    s.push_str(&format!(" (rtt {rtt:.1} ms)"));
                }
                s
            }
        };
        out.push_str(&format!(
            "{:<12} {:<8} {:<22} {:<9} {:>17}  {probe}\n",
            text(&n["name"]),
            text(&n["role"]),
            text(&n["addr"]),
            state(&n["state"]),
            format!("{}/{}", n["load"], n["capacity"]),
        ));
    }
    let cms = v["callmanagers"].as_array().map_or(&[][..], Vec::as_slice);
    if cms.len() > 1 {
        out.push_str(&format!(
            "\n{:<12} {:<9} {:<22} {:>6} {:>10} {:>8}\n",
            "callmanager", "role", "address", "term", "applied", "behind"
        ));
        for c in cms {
            let mut role = text(&c["role"]);
            if c["serving"].as_bool() == Some(true) {
                role.push('*');
            }
            if c["cut_off"].as_bool() == Some(true) {
                role.push_str(" (cut off)");
            }
            let behind = c["behind"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |b| b.to_string());
            let known = |v: &Value| v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
            out.push_str(&format!(
                "{:<12} {:<9} {:<22} {:>6} {:>10} {:>8}\n",
                text(&c["name"]),
                role,
                text(&c["addr"]),
                known(&c["term"]),
                known(&c["applied"]),
                behind,
            ));
        }
        out.push_str(
            "(* serves the virtual IP; behind: log entries the active has and it lacks; \
             elsewhere: another process's, which its own endpoint shows)\n",
        );
    }
    let whitelist: Vec<String> = v["whitelist"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    out.push_str(&format!(
        "calls {} active, {} total, {} failed | registered {} | moved {}, dropped {} | whitelist {}\n",
        v["calls"]["active"],
        v["calls"]["total"],
        v["calls"]["failed"],
        v["registered"],
        v["moved"],
        v["dropped"],
        if whitelist.is_empty() {
            "empty".to_owned()
        } else {
            whitelist.join(", ")
        }
    ));
    out
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn state(v: &Value) -> String {
    console_state(&text(v))
}

/// A state as the vendor's console shows it: Online, Offline, Disabled, Draining.
pub(crate) fn console_state(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().chain(chars).collect::<String>()
    })
}

/// Starts the control endpoint of `pbxlab cluster --ctl ADDR` and prints where it listens,
/// with the token if it made one (`token` is the admin token; without one, 16 random bytes in
/// hex).
pub(crate) fn serve(
    addr: Option<SocketAddr>,
    token: Option<String>,
    control: Control,
) -> anyhow::Result<Option<CtlServer>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let (token, made) = match token {
        Some(t) => (t, false),
        None => (random_token().context("cannot make a token")?, true),
    };
    let server = CtlServer::start(addr, token.clone(), control)
        .with_context(|| format!("cannot serve the control endpoint on {addr}"))?;
    if made {
        eprintln!("control: http://{} (token {token})", server.local_addr());
    } else {
        eprintln!("control: http://{}", server.local_addr());
    }
    Ok(Some(server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_capitalised() {
        assert_eq!(state(&json!("online")), "Online");
        assert_eq!(state(&json!("draining")), "Draining");
        assert_eq!(state(&json!("")), "");
    }

    #[test]
    fn an_action_line_names_the_server_and_the_time() {
        let done = json!([{"server": "media-1", "action": "upgrade", "started_s": 1.0,
            "finished_s": 3.5, "state": "online"}]);
        let verb = Verb::Upgrade(Select {
            role: Some("media".into()),
            server: None,
            addr: None,
            all: false,
        });
        assert_eq!(
            render(&verb, &done),
            "media-1      upgrade  done in   2.50 s, now Online\n"
        );
        let (method, path, body, _) = request(&verb);
        assert_eq!((method, path.as_str()), ("POST", "/v1/servers/upgrade"));
        assert_eq!(body, Some(json!({"role": "media"})));
    }
}
