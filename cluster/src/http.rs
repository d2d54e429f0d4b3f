//! The little HTTP/1.1 the control endpoint ([`super::ctl`]) and its clients (`pbxlab ctl`,
//! alert webhooks) speak: request and response parsing from a byte buffer, response writing,
//! the [`Server`] with its bounds on connections ([`Limits`]), and a blocking client for
//! `http://host:port/path`.
//!
//! It is not a general HTTP implementation: one exchange per connection (`Connection: close`),
//! bodies delimited by `Content-Length` only (no chunked coding, no pipelining, no TLS), heads
//! of at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields, request bodies of at most
//! [`MAX_BODY`] bytes, and every connection bounded by one deadline. Parsing keeps `Incomplete` (read
//! more) apart from the errors, which name what was wrong and never panic.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The most bytes a request or response head (start line and header fields) may take.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most header fields a head may have.
pub const MAX_HEADERS: usize = 32;
/// The largest request body the endpoint takes: its requests are a few small JSON fields.
pub const MAX_BODY: usize = 64 * 1024;
/// The largest response body a client takes (a status of a large cluster).
pub const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;

/// A parsed request. Header names keep their spelling; look them up with [`Request::header`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target as sent (origin form: starts with `/`).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Why a buffer does not (yet) hold a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The message is not complete yet: read more and parse again.
    #[error("the message is incomplete")]
    Incomplete,
    /// Not HTTP as this module speaks it; the reason says what and where.
    #[error("{0}")]
    Invalid(String),
    /// The head is over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields.
    #[error("{0}")]
    HeadTooLarge(String),
    /// The body (as `Content-Length` states it) is over the limit.
    #[error("a body of {length} bytes is over the limit of {limit}")]
    BodyTooLarge { length: u64, limit: usize },
    /// A request that may carry a body came without `Content-Length`.
    #[error("{0}")]
    LengthRequired(String),
}

impl ParseError {
    /// The status a server answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::Incomplete | ParseError::Invalid(_) => 400,
            ParseError::HeadTooLarge(_) => 431,
            ParseError::BodyTooLarge { .. } => 413,
            ParseError::LengthRequired(_) => 411,
        }
    }
}

/// A head: the start line split in three, the fields, and the head's length with its blank line.
struct Head<'a> {
    start: [&'a str; 3],
    headers: Vec<(String, String)>,
    len: usize,
}

fn parse_head(buf: &[u8]) -> Result<Head<'_>, ParseError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(if buf.len() >= MAX_HEAD {
            ParseError::HeadTooLarge(format!("the head is over {MAX_HEAD} bytes"))
        } else {
            ParseError::Incomplete
        });
    };
    let text = std::str::from_utf8(&buf[..end])
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or_else(|| ParseError::Invalid("the head has a byte that is not ASCII".into()))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    if first.contains(['\r', '\n']) {
        return Err(ParseError::Invalid(
            "a bare CR or LF in the start line".into(),
        ));
    }
    let mut parts = first.splitn(3, ' ');
    let start = [
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    ];
    let mut headers = Vec::new();
    for (i, line) in lines.enumerate() {
        if i >= MAX_HEADERS {
            return Err(ParseError::HeadTooLarge(format!(
                "more than {MAX_HEADERS} header fields"
            )));
        }
        if line.starts_with([' ', '\t']) {
            return Err(ParseError::Invalid(format!(
                "header line {} is folded (starts with white space)",
                i + 1
            )));
        }
        if line.contains(['\r', '\n']) {
            return Err(ParseError::Invalid(format!(
                "a bare CR or LF in header line {}",
                i + 1
            )));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ParseError::Invalid(format!(
                "header line {} has no colon: {:?}",
                i + 1,
                clip(line)
            )));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ParseError::Invalid(format!(
                "header line {} has an invalid name: {:?}",
                i + 1,
                clip(name)
            )));
        }
        headers.push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
    }
    Ok(Head {
        start,
        headers,
        len: end + 4,
    })
}

/// `tchar` of RFC 9110.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The first 40 characters of `s`, for error messages.
fn clip(s: &str) -> &str {
    s.get(..40).unwrap_or(s)
}

/// The body length the head states: `None` without `Content-Length`. A `Transfer-Encoding`
/// is refused, since a body it delimits cannot be read here.
fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, ParseError> {
    if find_header(headers, "transfer-encoding").is_some() {
        return Err(ParseError::LengthRequired(
            "Transfer-Encoding is not supported; send Content-Length".into(),
        ));
    }
    let mut length = None;
    for (_, v) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let n = Some(v)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| ParseError::Invalid(format!("Content-Length {:?}", clip(v))))?;
        if length.is_some_and(|l| l != n) {
            return Err(ParseError::Invalid(
                "two Content-Length fields that disagree".into(),
            ));
        }
        length = Some(n);
    }
    Ok(length)
}

/// Parses one request from the start of `buf`; returns it and how many bytes it took.
///
/// Requests that may carry a body (POST, PUT, PATCH) must state `Content-Length`: a body that
/// cannot be delimited could be a filter we would not see, and `stop` of one server would
/// become `stop` of every server.
pub fn parse_request(buf: &[u8]) -> Result<(Request, usize), ParseError> {
    let head = parse_head(buf)?;
    let [method, target, version] = head.start;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ParseError::Invalid(format!(
            "the request line does not start with a method: {:?}",
            clip(method)
        )));
    }
    if !target.starts_with('/') || target.contains(' ') {
        return Err(ParseError::Invalid(format!(
            "the request target is not a path: {:?}",
            clip(target)
        )));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ParseError::Invalid(format!(
            "the version is {:?}, not HTTP/1.1 or HTTP/1.0",
            clip(version)
        )));
    }
    let length = match content_length(&head.headers)? {
        Some(n) => n,
        None if matches!(method, "POST" | "PUT" | "PATCH") => {
            return Err(ParseError::LengthRequired(format!(
                "{method} without Content-Length"
            )));
        }
        None => 0,
    };
    let body = body(buf, head.len, length, MAX_BODY)?;
    let request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers: head.headers,
        body: body.to_vec(),
    };
    Ok((request, head.len + body.len()))
}

/// The body after a head of `head_len` bytes, once `length` bytes are there.
fn body(buf: &[u8], head_len: usize, length: u64, limit: usize) -> Result<&[u8], ParseError> {
    let n = usize::try_from(length)
        .ok()
        .filter(|&n| n <= limit)
        .ok_or(ParseError::BodyTooLarge { length, limit })?;
    buf.get(head_len..head_len + n)
        .ok_or(ParseError::Incomplete)
}

/// Parses a response from the start of `buf`. Without `Content-Length` the body runs to the
/// end of the connection: pass `eof` once the peer has closed it.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<(Response, usize), ParseError> {
    let head = parse_head(buf)?;
    let [version, code, _reason] = head.start;
    if !version.starts_with("HTTP/1.") {
        return Err(ParseError::Invalid(format!(
            "the status line does not start with HTTP/1.x: {:?}",
            clip(version)
        )));
    }
    let status = Some(code)
        .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| ParseError::Invalid(format!("status code {:?}", clip(code))))?;
    let body = match content_length(&head.headers)? {
        Some(n) => body(buf, head.len, n, MAX_RESPONSE_BODY)?,
        None if !eof => return Err(ParseError::Incomplete),
        None => {
            let rest = &buf[head.len..];
            if rest.len() > MAX_RESPONSE_BODY {
                return Err(ParseError::BodyTooLarge {
                    length: rest.len() as u64,
                    limit: MAX_RESPONSE_BODY,
                });
            }
            rest
        }
    };
    let response = Response {
        status,
        headers: head.headers,
        body: body.to_vec(),
    };
    Ok((response, head.len + body.len()))
}

/// Why reading a request off a connection stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection before sending a byte.
    Closed,
    /// A socket error or the deadline (`TimedOut`/`WouldBlock`).
    Io(io::Error),
    /// What was read is not a request we take.
    Parse(ParseError),
}

/// Reads one request from `stream` until it is complete, `deadline` passes or a limit is hit.
pub fn read_request(stream: &mut TcpStream, deadline: Instant) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Io(ErrorKind::TimedOut.into()));
        }
        stream.set_read_timeout(Some(left)).map_err(ReadError::Io)?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        };
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Parse(ParseError::Invalid(
                    "the connection closed in the middle of the request".into(),
                ))
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request(&buf) {
            Ok((request, _)) => return Ok(request),
            Err(ParseError::Incomplete) => {}
            Err(e) => return Err(ReadError::Parse(e)),
        }
    }
}

/// The reason phrase of the statuses this module sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes a whole response with a JSON body and closes the exchange (`Connection: close`).
pub fn write_json_response(
    stream: &mut impl Write,
    status: u16,
    extra_headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> io::Result<()> {
    let mut body = body.to_string();
    body.push('\n');
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra_headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// An answer: status, JSON body, extra header fields.
pub type Answer = (u16, serde_json::Value, Vec<(&'static str, &'static str)>);

/// What a [`Server`] serves.
pub trait Service: Send + Sync + 'static {
    /// Decides on the accepting side, before the request may hold one of the
    /// [`Limits::served`] slots, whether it is let in (authentication): `Err` is the answer
    /// it gets instead. Must be quick.
    fn screen(&self, request: &Request) -> Result<(), Answer>;
    /// The answer to a request [`Service::screen`] let in, on a thread of its own; it may take
    /// as long as the operation takes (a rolling upgrade: a minute).
    fn serve(&self, request: &Request) -> Answer;
}

/// How much of the server one client, and everybody, may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests let in by [`Service::screen`] and being served at once; one more is
    /// answered 503 once it has been read.
    pub served: usize,
    /// Connections open at once (being read, served or refused). A connection beyond it
    /// takes the place of the oldest one still being read, which is cut.
    pub open: usize,
    /// Connections one source address holds at once. A connection beyond it takes the
    /// place of that address's oldest one still being read; if every one of them is being
    /// served, it is read and answered 503 (up to as many again; beyond, closed at once).
    pub per_source: usize,
    /// From accept to the whole request read, and its refusal (if any) written and the
    /// connection closed: one deadline for the connection, not one per read.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            served: 16,
            open: 64,
            per_source: 8,
            deadline: Duration::from_secs(5),
        }
    }
}

/// How long writing a served answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the accept loop looks at its stop flag when nobody connects.
const ACCEPT_NAP: Duration = Duration::from_millis(20);

/// A running server: one thread accepts, each connection gets a thread of its own (at most
/// [`Limits::open`]).
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Server {
    /// Serves `service` on `listener` from a thread of its own.
    pub fn start(
        listener: TcpListener,
        limits: Limits,
        service: Arc<dyn Service>,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        // Non-blocking accepts, so that `stop` is seen without a connection to wake us.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("pbxlab-http".into())
                .spawn(move || accept_loop(&listener, limits, &service, &stop))?
        };
        Ok(Server { addr, stop, thread })
    }

    /// Where it listens (the port chosen, if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting. Requests in progress finish on their own threads.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Where an open connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its request is being read: it holds no slot yet, and a newer connection may cut it.
    Reading,
    /// Its source holds all it may: it is read, then answered 503.
    Busy,
    /// Let in, holding one of the served slots.
    Served,
}

#[derive(Debug)]
struct Open {
    source: IpAddr,
    phase: Phase,
    /// A second handle on the socket, to cut the connection from the accepting thread.
    cut: TcpStream,
}

/// Every open connection, by the order they came in (so the first is the oldest).
#[derive(Debug, Default)]
struct Table {
    open: BTreeMap<u64, Open>,
    next_id: u64,
}

impl Table {
    fn count(&self, source: Option<IpAddr>, phase: Option<Phase>) -> usize {
        self.open
            .values()
            .filter(|o| source.is_none_or(|s| o.source == s))
            .filter(|o| phase.is_none_or(|p| o.phase == p))
            .count()
    }

    /// Cuts the oldest connection still being read (of `source`, if given); false if none.
    fn cut_oldest(&mut self, source: Option<IpAddr>) -> bool {
        let oldest = self
            .open
            .iter()
            .find(|(_, o)| o.phase == Phase::Reading && source.is_none_or(|s| o.source == s))
            .map(|(&id, _)| id);
        let Some(o) = oldest.and_then(|id| self.open.remove(&id)) else {
            return false;
        };
        // Its thread's read ends at once; it finds the connection closed.
        let _ = o.cut.shutdown(Shutdown::Both);
        true
    }

    /// Where a new connection from `source` starts, making room for it: `None` to close it
    /// at once.
    fn admit(&mut self, source: IpAddr, limits: &Limits) -> Option<Phase> {
        let mut phase = Phase::Reading;
        if self.count(Some(source), None) >= limits.per_source && !self.cut_oldest(Some(source)) {
            if self.count(Some(source), Some(Phase::Busy)) >= limits.per_source {
                return None;
            }
            phase = Phase::Busy;
        }
        if self.open.len() >= limits.open && !self.cut_oldest(None) {
            return None;
        }
        Some(phase)
    }
}

/// Removes a connection from the table when its thread ends.
struct Leave(Arc<Mutex<Table>>, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        lock(&self.0).open.remove(&self.1);
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    // A thread that panicked holding the lock left the table whole (every change is one
    // insert or remove).
    table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn accept_loop(
    listener: &TcpListener,
    limits: Limits,
    service: &Arc<dyn Service>,
    stop: &AtomicBool,
) {
    let table = Arc::new(Mutex::new(Table::default()));
    while !stop.load(Ordering::Relaxed) {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            // Nobody, out of descriptors, or a connection reset before we took it: later.
            Err(_) => {
                std::thread::sleep(ACCEPT_NAP);
                continue;
            }
        };
        let accepted = Instant::now();
        let Ok(cut) = stream.try_clone() else {
            continue;
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        let id = {
            let mut t = lock(&table);
            let Some(phase) = t.admit(peer.ip(), &limits) else {
                // Beyond every bound: the one case that closes without an answer.
                continue;
            };
            let id = t.next_id;
            t.next_id += 1;
            t.open.insert(
                id,
                Open {
                    source: peer.ip(),
                    phase,
                    cut,
                },
            );
            id
        };
        let leave = Leave(Arc::clone(&table), id);
        let service = Arc::clone(service);
        // A thread that cannot be spawned drops the connection (and its place) with it.
        let _ = std::thread::Builder::new()
            .name("pbxlab-http-conn".into())
            .spawn(move || {
                let deadline = accepted + limits.deadline;
                serve_connection(stream, deadline, &limits, &leave, &*service);
            });
    }
}

fn serve_connection(
    mut stream: TcpStream,
    deadline: Instant,
    limits: &Limits,
    leave: &Leave,
    service: &dyn Service,
) {
    let refusal = match read_request(&mut stream, deadline) {
        Ok(request) => match admit_request(limits, leave, service, &request) {
            Ok(()) => {
                let (status, body, headers) = service.serve(&request);
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                let _ = write_json_response(&mut stream, status, &headers, &body);
                return;
            }
            Err(answer) => answer,
        },
        Err(ReadError::Closed) => return,
        Err(ReadError::Io(e))
            if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) =>
        {
            let reason = format!(
                "no complete request within {:.1} s",
                limits.deadline.as_secs_f64()
            );
            (408, error_json(&reason), Vec::new())
        }
        Err(ReadError::Io(_)) => return,
        Err(ReadError::Parse(e)) => (e.status(), error_json(&e.to_string()), Vec::new()),
    };
    let (status, body, headers) = refusal;
    let left = deadline.saturating_duration_since(Instant::now());
    let _ = stream.set_write_timeout(Some(left.max(Duration::from_millis(100))));
    if write_json_response(&mut stream, status, &headers, &body).is_ok() {
        linger(&mut stream, deadline);
    }
}

/// Whether a request that was read may be served: screened by the service, then given a
/// served slot if its source is not over its bound and a slot is free.
fn admit_request(
    limits: &Limits,
    leave: &Leave,
    service: &dyn Service,
    request: &Request,
) -> Result<(), Answer> {
    let busy = |reason: String| (503, error_json(&reason), Vec::new());
    let mut t = lock(&leave.0);
    let Some(phase) = t.open.get(&leave.1).map(|o| o.phase) else {
        // Cut while its last bytes arrived.
        return Err(busy("too many connections; try again later".into()));
    };
    if phase == Phase::Busy {
        let source = t.open.get(&leave.1).map(|o| o.source);
        let source = source.map_or_else(String::new, |s| format!(" from {s}"));
        return Err(busy(format!(
            "{} connections{source} are open; try again later",
            limits.per_source
        )));
    }
    service.screen(request)?;
    if t.count(None, Some(Phase::Served)) >= limits.served {
        return Err(busy(format!(
            "{} requests are in progress; try again later",
            limits.served
        )));
    }
    if let Some(o) = t.open.get_mut(&leave.1) {
        o.phase = Phase::Served;
    }
    Ok(())
}

/// `{"error": reason}`.
pub fn error_json(reason: &str) -> serde_json::Value {
    serde_json::json!({ "error": reason })
}

/// After refusing a request, reads (a bounded amount of) what the client is still sending
/// until it closes or the connection's deadline, so that closing does not reset the
/// connection before the client has read the refusal.
fn linger(stream: &mut TcpStream, deadline: Instant) {
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    let mut left = MAX_BODY;
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// An `http://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host and port as written (`127.0.0.1:5080`, `[::1]:80`, `localhost:8080`).
    pub authority: String,
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                format!("{url:?}: https is not supported, only http://")
            } else {
                format!("{url:?}: not an http:// URL")
            }
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains(['@', ' ', '?', '#']) {
            return Err(format!("{url:?}: no usable host"));
        }
        if path.contains([' ', '\r', '\n']) {
            return Err(format!("{url:?}: the path has white space"));
        }
        // A bare IPv6 address has colons but no brackets; anything else without a port gets 80.
        let has_port = match authority
            .rsplit_once(':')
            .filter(|_| !authority.ends_with(']'))
        {
            Some((host, port)) => {
                if port.parse::<u16>().is_err() || host.is_empty() {
                    return Err(format!("{url:?}: bad port"));
                }
                true
            }
            None => false,
        };
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Url {
            authority,
            path: path.to_owned(),
        })
    }

    /// The addresses the host resolves to.
    pub fn addrs(&self) -> io::Result<Vec<SocketAddr>> {
        Ok(self.authority.to_socket_addrs()?.collect())
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// One blocking exchange: connects, sends `method` with `body` (JSON) and the extra headers,
/// and reads the response, all within `timeout`. A connection that cannot be made fails with
/// the error of the last address tried.
pub fn call(
    method: &str,
    url: &Url,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let mut last = io::Error::new(ErrorKind::NotFound, "the host resolves to no address");
    let mut stream = None;
    for addr in url.addrs()? {
        match TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(10))) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut stream = stream.ok_or(last)?;
    stream.set_write_timeout(Some(timeout))?;
    let mut out = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        url.path, url.authority
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    } else if matches!(method, "POST" | "PUT" | "PATCH") {
        out.push_str("Content-Length: 0\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes)?;
    read_response(&mut stream, deadline)
}

fn read_response(stream: &mut TcpStream, deadline: Instant) -> io::Result<Response> {
    let invalid = |e: ParseError| io::Error::new(ErrorKind::InvalidData, e.to_string());
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                "no complete answer in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    "no complete answer in time",
                ));
            }
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        match parse_response(&buf, n == 0) {
            Ok((response, _)) => return Ok(response),
            Err(ParseError::Incomplete) if n == 0 => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the connection closed before a complete answer",
                ));
            }
            Err(ParseError::Incomplete) => {}
            Err(e) => return Err(invalid(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<(Request, usize), ParseError> {
        parse_request(text.as_bytes())
    }

    #[test]
    fn a_request_with_a_body_parses_whole() {
        let text = "POST /v1/servers/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"server\":\"ivr-1\"}\r\n";
        let (r, used) = req(text).expect("a request");
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/v1/servers/stop");
        assert_eq!(r.header("content-length"), Some("20"));
        assert_eq!(r.body, b"{\"server\":\"ivr-1\"}\r\n");
        assert_eq!(used, text.len());
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete_not_invalid() {
        let text = "POST /v1/servers HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 14\r\n\r\n{\"name\":\"m-3\"}";
        for end in 0..text.len() {
            assert_eq!(
                req(&text[..end]),
                Err(ParseError::Incomplete),
                "prefix of {end} bytes"
            );
        }
        assert!(req(text).is_ok());
    }

    #[test]
    fn invalid_requests_name_what_is_wrong() {
        for (text, says) in [
            ("GET\r\n\r\n", "path"),
            ("get /v1/status HTTP/1.1\r\n\r\n", "method"),
            ("GET v1/status HTTP/1.1\r\n\r\n", "path"),
            ("GET /v1/status HTTP/2\r\n\r\n", "version"),
            ("GET /v1/status HTTP/1.1\r\nHost x\r\n\r\n", "no colon"),
            (
                "GET /v1/status HTTP/1.1\r\nHo st: x\r\n\r\n",
                "invalid name",
            ),
            ("GET /v1/status HTTP/1.1\r\nA: b\r\n c\r\n\r\n", "folded"),
            (
                "GET /v1/status HTTP/1.1\r\nA: b\nB: c\r\n\r\n",
                "bare CR or LF",
            ),
            ("GET /v1/status HTTP/1.1\r\nA: \u{e9}\r\n\r\n", "ASCII"),
            (
                "POST /v1/servers HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
                "Content-Length",
            ),
            (
                "POST /v1/servers HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                "Content-Length",
            ),
            (
                "POST /v1/servers HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
                "disagree",
            ),
        ] {
            match req(text) {
                Err(e @ ParseError::Invalid(_)) => {
                    assert_eq!(e.status(), 400);
                    assert!(e.to_string().contains(says), "{text:?}: {e}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_body_without_content_length_is_refused_where_a_body_is_expected() {
        let e = req("POST /v1/servers/stop HTTP/1.1\r\n\r\n{\"server\":\"ivr-1\"}")
            .expect_err("no Content-Length");
        assert!(matches!(e, ParseError::LengthRequired(_)), "{e:?}");
        assert_eq!(e.status(), 411);
        let e = req("POST /v1/servers HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect_err("chunked");
        assert_eq!(e.status(), 411);
        // A GET has no body unless it says so.
        let (r, used) = req("GET /v1/status HTTP/1.1\r\n\r\n").expect("a GET");
        assert!(r.body.is_empty());
        assert_eq!(used, 27);
    }

    #[test]
    fn oversize_heads_and_bodies_are_refused_before_they_are_read() {
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        let e = req(&long).expect_err("too long");
        assert_eq!(e.status(), 431);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let e = req(&format!("GET / HTTP/1.1\r\n{many}\r\n")).expect_err("too many");
        assert_eq!(e.status(), 431);
        // The body is refused on its stated length, before any of it arrived.
        let e = req(&format!(
            "POST /v1/servers HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        ))
        .expect_err("too big");
        assert_eq!(e.status(), 413);
        let e = req("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n")
            .expect_err("overflow");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn responses_with_and_without_content_length() {
        let text = b"HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\n\r\n{}";
        let (r, used) = parse_response(text, false).expect("a response");
        assert_eq!((r.status, r.body.as_slice(), used), (409, &b"{}"[..], 46));
        let text = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        assert_eq!(parse_response(text, false), Err(ParseError::Incomplete));
        let (r, _) = parse_response(text, true).expect("to the end");
        assert_eq!(r.body, b"all of it");
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n", true).is_err());
        assert!(parse_response(b"SIP/2.0 200 OK\r\n\r\n", true).is_err());
    }

    #[test]
    fn written_responses_parse_back() {
        let mut out = Vec::new();
        let body = serde_json::json!({"error": "no"});
        write_json_response(&mut out, 401, &[("WWW-Authenticate", "Bearer")], &body)
            .expect("written");
        let (r, used) = parse_response(&out, false).expect("parses");
        assert_eq!(used, out.len());
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
        assert_eq!(v, body);
    }

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:5080/v1/status").expect("url");
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:5080", "/v1/status")
        );
        let u = Url::parse("http://localhost").expect("url");
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("localhost:80", "/")
        );
        let u = Url::parse("http://[::1]:8080/hook").expect("url");
        assert_eq!(u.authority, "[::1]:8080");
        assert_eq!(u.to_string(), "http://[::1]:8080/hook");
        for bad in [
            "https://x/",
            "ftp://x",
            "http://",
            "http://x:99999/",
            "http://a b/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_talks_to_a_server_on_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let deadline = Instant::now() + Duration::from_secs(5);
            let r = read_request(&mut s, deadline).expect("a request");
            let answer = serde_json::json!({"got": String::from_utf8_lossy(&r.body)});
            write_json_response(&mut s, 200, &[], &answer).expect("answer");
            r
        });
        let url = Url::parse(&format!("http://{addr}/hook")).expect("url");
        let r = call(
            "POST",
            &url,
            &[("Authorization", "Bearer t")],
            Some(b"{\"a\":1}"),
            Duration::from_secs(5),
        )
        .expect("an answer");
        assert_eq!(r.status, 200);
        let seen = server.join().expect("server thread");
        assert_eq!(seen.header("authorization"), Some("Bearer t"));
        assert_eq!(seen.target, "/hook");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
        assert_eq!(v["got"], "{\"a\":1}");
    }

    #[test]
    fn a_silent_server_times_out_within_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url =
            Url::parse(&format!("http://{}/", listener.local_addr().expect("addr"))).expect("url");
        let started = Instant::now();
        let e = call("GET", &url, &[], None, Duration::from_millis(300)).expect_err("silence");
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }
    /// A service with the token `t` whose answers wait for the gate to open.
    struct Gated {
        open: Mutex<bool>,
        opened: std::sync::Condvar,
        serving: std::sync::atomic::AtomicUsize,
    }

    impl Gated {
        fn new(open: bool) -> Arc<Gated> {
            Arc::new(Gated {
                open: Mutex::new(open),
                opened: std::sync::Condvar::new(),
                serving: std::sync::atomic::AtomicUsize::new(0),
            })
        }

        fn release(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }

        /// Waits (bounded) until `n` requests are being served.
        fn wait_serving(&self, n: usize) {
            for _ in 0..500 {
                if self.serving.load(Ordering::Relaxed) >= n {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("{n} requests never got in");
        }
    }

    impl Service for Gated {
        fn screen(&self, request: &Request) -> Result<(), Answer> {
            if request.header("authorization") == Some("Bearer t") {
                Ok(())
            } else {
                Err((401, error_json("wrong token"), Vec::new()))
            }
        }

        fn serve(&self, _: &Request) -> Answer {
            self.serving.fetch_add(1, Ordering::Relaxed);
            let open = self.open.lock().unwrap();
            let _ = self
                .opened
                .wait_timeout_while(open, Duration::from_secs(20), |open| !*open)
                .unwrap();
            (200, serde_json::json!({"ok": true}), Vec::new())
        }
    }

    fn serve_on_loopback(limits: Limits, service: Arc<Gated>) -> (Server, Url) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = Server::start(listener, limits, service).expect("server");
        let url = Url::parse(&format!("http://{}/", server.local_addr())).expect("url");
        (server, url)
    }

    fn get(url: &Url, token: &str) -> io::Result<Response> {
        let auth = format!("Bearer {token}");
        call(
            "GET",
            url,
            &[("Authorization", &auth)],
            None,
            Duration::from_secs(20),
        )
    }

    #[test]
    fn idle_connections_from_one_address_do_not_lock_out_a_client() {
        // The deadline is long: it is not what lets the client in.
        let limits = Limits {
            deadline: Duration::from_secs(60),
            ..Limits::default()
        };
        let (server, url) = serve_on_loopback(limits, Gated::new(true));
        let addr = server.local_addr();
        // More idle connections than every bound, from the client's own address.
        let idle: Vec<TcpStream> = (0..limits.open + limits.per_source)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        let r = get(&url, "t").expect("an answer");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        // The oldest idle connection was cut to make room.
        let mut first = &idle[0];
        first
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        assert!(matches!(first.read(&mut buf), Ok(0)), "still open");
        drop(idle);
        server.stop();
    }

    /// Sends a byte every 100 ms (at most 100 of them) until the server closes; returns how
    /// many went.
    fn trickle(s: &mut TcpStream) -> usize {
        for sent in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            if s.write_all(b"x").is_err() {
                return sent;
            }
        }
        100
    }

    #[test]
    fn trickling_connections_are_cut_at_the_total_deadline() {
        let limits = Limits {
            deadline: Duration::from_secs(1),
            ..Limits::default()
        };
        let (server, _) = serve_on_loopback(limits, Gated::new(true));
        // A head that never ends, a byte at a time: 408 at the deadline.
        let mut s = TcpStream::connect(server.local_addr()).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").expect("send");
        assert!(trickle(&mut s) < 100, "the server kept the connection");
        // A malformed request is refused at once, and trickling after it does not keep the
        // connection either (each read used to have a deadline of its own).
        let mut s = TcpStream::connect(server.local_addr()).expect("connect");
        s.write_all(b"HELLO there\r\n\r\n").expect("send");
        let mut head = [0u8; 12];
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.read_exact(&mut head).expect("an answer");
        assert_eq!(&head, b"HTTP/1.1 400");
        assert!(trickle(&mut s) < 100, "the server kept the connection");
        server.stop();
    }

    #[test]
    fn over_the_caps_a_request_is_read_and_answered_503() {
        // One source may hold two connections; both are being served.
        let gate = Gated::new(false);
        let limits = Limits {
            per_source: 2,
            ..Limits::default()
        };
        let (server, url) = serve_on_loopback(limits, Arc::clone(&gate));
        let held: Vec<_> = (0..2)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || get(&url, "t"))
            })
            .collect();
        gate.wait_serving(2);
        let r = get(&url, "t").expect("a 503, not a reset");
        assert_eq!(r.status, 503);
        assert!(String::from_utf8_lossy(&r.body).contains("connections from 127.0.0.1"));
        gate.release();
        for h in held {
            assert_eq!(h.join().expect("thread").expect("an answer").status, 200);
        }
        server.stop();

        // Every served slot taken: the next request with the token gets 503, one without it
        // gets 401 (it is screened before it could hold a slot).
        let gate = Gated::new(false);
        let limits = Limits {
            served: 2,
            ..Limits::default()
        };
        let (server, url) = serve_on_loopback(limits, Arc::clone(&gate));
        let held: Vec<_> = (0..2)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || get(&url, "t"))
            })
            .collect();
        gate.wait_serving(2);
        let r = get(&url, "t").expect("a 503, not a reset");
        assert_eq!(r.status, 503);
        assert!(String::from_utf8_lossy(&r.body).contains("2 requests are in progress"));
        assert_eq!(get(&url, "wrong").expect("an answer").status, 401);
        gate.release();
        for h in held {
            assert_eq!(h.join().expect("thread").expect("an answer").status, 200);
        }
        server.stop();
    }
}
