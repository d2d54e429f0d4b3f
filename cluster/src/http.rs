//! The little HTTP/1.1 the control endpoint ([`super::ctl`]) and its clients (`pbxlab ctl`,
//! alert webhooks) speak: request and response parsing from a byte buffer, response writing,
//! and a blocking client for `http://host:port/path`.
//!
//! It is not a general HTTP implementation: one exchange per connection (`Connection: close`),
//! bodies delimited by `Content-Length` only (no chunked coding, no pipelining, no TLS), heads
//! of at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields, request bodies of at most
//! [`MAX_BODY`] bytes, and every read bounded by a deadline. Parsing keeps `Incomplete` (read
//! more) apart from the errors, which name what was wrong and never panic.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
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
}
