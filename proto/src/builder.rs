//! Rendering SIP messages into caller-owned, reused byte buffers: compiled
//! [`Template`]s for the load generator's hot path, [`write_response`] for
//! answering a parsed request ([`ResponseHeaders`] to answer it again later
//! without keeping it), [`write_request`] for every other request and
//! [`write_status`] for a response with no request to copy from; and
//! [`reason_phrase`], the standard phrase of each status code.
//!
//! Content-Length is always computed here from the body, never taken from
//! the caller, so a rendered message can't frame itself wrongly.

use crate::sip::{HeaderName, Message};
use crate::uri::NameAddr;

/// The reason phrase RFC 3261 (section 21) gives status `code`, and those of a few extensions a
/// PBX meets (202, 422, 489). A code without one gets the name of its class (RFC 3261 7.2:
/// "Client Error" for an unknown 4xx), which a peer treats like the class's x00 anyway.
pub fn reason_phrase(code: u16) -> &'static str {
    let named = match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "",
    };
    if !named.is_empty() {
        return named;
    }
    match code / 100 {
        1 => "Provisional",
        2 => "Success",
        3 => "Redirection",
        4 => "Client Error",
        5 => "Server Error",
        6 => "Global Failure",
        _ => "Unknown",
    }
}

/// Highest hole number a template may use; keeps `compile` bounded and
/// catches typos like `{1000}`.
pub const MAX_HOLES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("empty template")]
    Empty,
    #[error("unclosed hole: '{{' at byte {0} has no matching '}}'")]
    UnclosedHole(usize),
    #[error("bad hole at byte {0}: write {{N}} with a decimal N, or {{{{ for a literal brace")]
    BadHole(usize),
    #[error("hole at byte {0} is numbered {1}, above the limit of 255")]
    HoleTooLarge(usize, usize),
    #[error("hole {{{0}}} is never used: holes must be numbered 0..N without gaps")]
    MissingHole(usize),
    #[error("the template has a Content-Length header at byte {0}; render writes it from the body")]
    ContentLength(usize),
    #[error("the template has a blank line at byte {0}; render appends the blank line and body")]
    BlankLine(usize),
    #[error("bare line feed at byte {0}: template lines must end with \\r\\n")]
    BareLf(usize),
    #[error("bare carriage return at byte {0}: template lines must end with \\r\\n")]
    BareCr(usize),
    #[error("render got {got} values for a template with {expected} holes")]
    WrongValueCount { expected: usize, got: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Range into `Template::literal`.
    Lit(usize, usize),
    Hole(usize),
}

/// A message template compiled once: literal bytes and numbered holes `{0}`..`{N}` (and `{{` for a literal brace). Content-Length is written by render from the body.
///
/// A lone `}` is literal. Hole values are inserted verbatim (no escaping):
/// a value may even carry extra `\r\n`-separated header lines on purpose, so
/// it is the caller's job not to feed untrusted bytes into holes.
#[derive(Debug, Clone)]
pub struct Template {
    literal: Vec<u8>,
    parts: Vec<Part>,
    holes: usize,
}

impl Template {
    /// `text` uses "\r\n" line ends; the template's last header line is
    /// followed by "Content-Length: {len}\r\n\r\n" automatically, so the text
    /// must not contain Content-Length nor a blank line (a trailing "\r\n" on
    /// the last line is optional).
    pub fn compile(text: &str) -> Result<Template, TemplateError> {
        let text = text.trim_end_matches("\r\n");
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        check_lines(text)?;

        let b = text.as_bytes();
        let mut literal = Vec::with_capacity(b.len() + 20);
        let mut parts = Vec::new();
        let mut used = [false; MAX_HOLES];
        let mut holes = 0;
        let mut lit_start = 0;
        let mut i = 0;
        let flush = |literal: &Vec<u8>, parts: &mut Vec<Part>, lit_start: &mut usize| {
            if literal.len() > *lit_start {
                parts.push(Part::Lit(*lit_start, literal.len()));
            }
            *lit_start = literal.len();
        };
        while let Some(j) = memchr::memchr(b'{', b.get(i..).unwrap_or_default()) {
            let open = i + j;
            literal.extend_from_slice(b.get(i..open).unwrap_or_default());
            if b.get(open + 1) == Some(&b'{') {
                literal.push(b'{');
                i = open + 2;
                continue;
            }
            let close = memchr::memchr(b'}', b.get(open..).unwrap_or_default())
                .map(|k| open + k)
                .ok_or(TemplateError::UnclosedHole(open))?;
            let digits = b.get(open + 1..close).unwrap_or_default();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 6 {
                return Err(TemplateError::BadHole(open));
            }
            let n = digits
                .iter()
                .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
            let slot = used
                .get_mut(n)
                .ok_or(TemplateError::HoleTooLarge(open, n))?;
            *slot = true;
            holes = holes.max(n + 1);
            flush(&literal, &mut parts, &mut lit_start);
            parts.push(Part::Hole(n));
            i = close + 1;
        }
        literal.extend_from_slice(b.get(i..).unwrap_or_default());
        literal.extend_from_slice(b"\r\nContent-Length: ");
        flush(&literal, &mut parts, &mut lit_start);
        if let Some(missing) = used.iter().take(holes).position(|u| !u) {
            return Err(TemplateError::MissingHole(missing));
        }
        Ok(Template {
            literal,
            parts,
            holes,
        })
    }

    pub fn holes(&self) -> usize {
        self.holes
    }

    /// Clears `out` and writes the message with holes filled and the body appended; no allocation when `out` has capacity.
    pub fn render(
        &self,
        out: &mut Vec<u8>,
        values: &[&[u8]],
        body: &[u8],
    ) -> Result<(), TemplateError> {
        out.clear();
        self.render_append(out, values, body)
    }

    /// Like [`Template::render`], but appends to what `out` already holds, so many messages
    /// can be rendered one after another into one send buffer. On error `out` is unchanged.
    pub fn render_append(
        &self,
        out: &mut Vec<u8>,
        values: &[&[u8]],
        body: &[u8],
    ) -> Result<(), TemplateError> {
        if values.len() != self.holes {
            return Err(TemplateError::WrongValueCount {
                expected: self.holes,
                got: values.len(),
            });
        }
        for part in &self.parts {
            match *part {
                Part::Lit(a, b) => {
                    out.extend_from_slice(self.literal.get(a..b).unwrap_or_default())
                }
                Part::Hole(n) => out.extend_from_slice(values.get(n).copied().unwrap_or_default()),
            }
        }
        push_decimal(out, body.len());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
        Ok(())
    }
}

/// Line-level checks: CRLF only, no blank line, no Content-Length header.
fn check_lines(text: &str) -> Result<(), TemplateError> {
    let b = text.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\n' if i == 0 || b.get(i - 1) != Some(&b'\r') => {
                return Err(TemplateError::BareLf(i));
            }
            b'\r' if b.get(i + 1) != Some(&b'\n') => return Err(TemplateError::BareCr(i)),
            _ => {}
        }
    }
    let mut offset = 0;
    for (n, line) in text.split("\r\n").enumerate() {
        if line.is_empty() {
            return Err(TemplateError::BlankLine(offset));
        }
        if n > 0
            && let Some((name, _)) = line.split_once(':')
            && HeaderName::parse(name.trim_matches([' ', '\t'])) == HeaderName::ContentLength
        {
            return Err(TemplateError::ContentLength(offset));
        }
        offset += line.len() + 2;
    }
    Ok(())
}

/// Appends `n` in decimal without going through `fmt` (hot path).
fn push_decimal(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(Decimal::new(n as u64).as_bytes());
}

/// A number's decimal digits on the stack, for a template hole: `core::fmt` pads, dispatches
/// through a trait object and copies in small pieces, which showed in the generator's profile.
#[derive(Debug, Clone, Copy)]
pub struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub fn new(mut n: u64) -> Decimal {
        // u64::MAX has 20 digits: the loop ends (n reaches 0) before the slots run out.
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            start -= 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    /// `n` with leading zeros to at least `width` digits (at most 20): equal-length numbers make
    /// equal-length messages, which the sender can batch.
    pub fn padded(n: u64, width: usize) -> Decimal {
        let mut d = Decimal::new(n);
        let first = d.digits.len().saturating_sub(width).min(d.start);
        if let Some(zeros) = d.digits.get_mut(first..d.start) {
            zeros.fill(b'0');
        }
        d.start = first;
        d
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.digits.get(self.start..).unwrap_or_default()
    }
}

/// For the cold paths that still format: the same digits.
impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(self.as_bytes()).unwrap_or_default())
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn finish(out: &mut Vec<u8>, extra: &[(&str, &str)], body: &[u8]) {
    for (name, value) in extra {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(out, body.len());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Writes a response to `req` into `out` (cleared first): status line, every Via of the request in order, From, To (adding `;tag=<to_tag>` if the request's To has no tag and to_tag is Some), Call-ID, CSeq copied; for 2xx/18x to a request with Record-Route, the Record-Route lines copied in order (RFC 3261 12.1.1); then `extra` header lines (name, value) and Content-Length from the body.
///
/// Values are copied as they were received (folded lines stay folded, which
/// is still valid SIP); header names are written in their long form.
pub fn write_response(
    out: &mut Vec<u8>,
    req: &Message<'_>,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) {
    out.clear();
    push_status_line(out, code, reason);
    push_copied(out, req, to_tag);
    if copies_record_route(code) {
        push_record_routes(out, req);
    }
    finish(out, extra, body);
}

/// The header lines a response copies from its request, as [`write_response`] writes them,
/// kept so that a UAS can send the 100, the 180 and the final response of one transaction (and
/// retransmit the last) without keeping the request: [`ResponseHeaders::write`] renders the
/// same bytes `write_response` would from the request.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHeaders {
    /// Via..CSeq, then the Record-Route lines from `record_route` on.
    lines: Vec<u8>,
    record_route: usize,
}

impl ResponseHeaders {
    /// The lines `req` gives its responses; `to_tag` as in [`write_response`].
    pub fn new(req: &Message<'_>, to_tag: Option<&str>) -> ResponseHeaders {
        let mut lines = Vec::new();
        push_copied(&mut lines, req, to_tag);
        let record_route = lines.len();
        push_record_routes(&mut lines, req);
        ResponseHeaders {
            lines,
            record_route,
        }
    }

    /// Writes the response with status `code` into `out` (cleared first): the copied lines
    /// (Record-Route only for 18x and 2xx), `extra`, and Content-Length from the body.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        code: u16,
        reason: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) {
        let end = if copies_record_route(code) {
            self.lines.len()
        } else {
            self.record_route
        };
        out.clear();
        push_status_line(out, code, reason);
        out.extend_from_slice(self.lines.get(..end).unwrap_or_default());
        finish(out, extra, body);
    }
}

/// Writes a response from its status and the given header lines into `out` (cleared first),
/// Content-Length from the body: for a response that has no parsed request to copy from (a
/// 400 to what the parser refused, built from the lines that could still be read).
pub fn write_status(
    out: &mut Vec<u8>,
    code: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    out.clear();
    push_status_line(out, code, reason);
    finish(out, headers, body);
}

fn push_status_line(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"SIP/2.0 ");
    push_decimal(out, code.into());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A dialog-creating response carries the request's Record-Route (RFC 3261 12.1.1).
fn copies_record_route(code: u16) -> bool {
    (180..=189).contains(&code) || (200..=299).contains(&code)
}

/// Via, From, To (with `to_tag` when it has none), Call-ID and CSeq of `req`.
fn push_copied(out: &mut Vec<u8>, req: &Message<'_>, to_tag: Option<&str>) {
    for name in [
        HeaderName::Via,
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
    ] {
        // Via is the only one of these that may repeat; the others are
        // unique in a parsed message, so "every line" is the same as "the line".
        for h in req.headers().iter().filter(|h| h.name == name) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value.as_bytes());
            if name == HeaderName::To
                && let Some(tag) = to_tag
                && NameAddr::parse(h.value)
                    .ok()
                    .and_then(|n| n.tag())
                    .is_none()
            {
                out.extend_from_slice(b";tag=");
                out.extend_from_slice(tag.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn push_record_routes(out: &mut Vec<u8>, req: &Message<'_>) {
    for h in req
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::RecordRoute)
    {
        push_header(out, "Record-Route", h.value);
    }
}

/// Generic request writer for the non-hot path: request line, then the given (name, value) headers in order, Content-Length from the body.
pub fn write_request(
    out: &mut Vec<u8>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.as_bytes());
    out.extend_from_slice(b" SIP/2.0\r\n");
    finish(out, headers, body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{CSeq, Method, StartLine, parse_datagram, parse_stream};

    #[test]
    fn reason_phrases_are_rfc_3261s_and_fall_back_to_the_class() {
        for (code, phrase) in [
            (100, "Trying"),
            (180, "Ringing"),
            (183, "Session Progress"),
            (200, "OK"),
            (302, "Moved Temporarily"),
            (401, "Unauthorized"),
            (407, "Proxy Authentication Required"),
            (481, "Call/Transaction Does Not Exist"),
            (487, "Request Terminated"),
            (488, "Not Acceptable Here"),
            (500, "Server Internal Error"),
            (504, "Server Time-out"),
            (603, "Decline"),
        ] {
            assert_eq!(reason_phrase(code), phrase, "{code}");
        }
        assert_eq!(reason_phrase(199), "Provisional");
        assert_eq!(reason_phrase(299), "Success");
        assert_eq!(reason_phrase(399), "Redirection");
        assert_eq!(reason_phrase(499), "Client Error");
        assert_eq!(reason_phrase(599), "Server Error");
        assert_eq!(reason_phrase(699), "Global Failure");
        for code in [0, 99, 700, u16::MAX] {
            assert_eq!(reason_phrase(code), "Unknown");
        }
        // Every phrase survives a round trip through a status line.
        for code in 100..700 {
            let raw = format!(
                "SIP/2.0 {code} {}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKr\r\nFrom: <sip:a@h>;tag=1\r\n\
                 To: <sip:b@h>\r\nCall-ID: r\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                reason_phrase(code)
            );
            let m = parse_datagram(raw.as_bytes()).unwrap();
            assert_eq!(
                m.start(),
                StartLine::Response {
                    code,
                    reason: reason_phrase(code)
                }
            );
        }
    }

    const INVITE_TPL: &str = "INVITE sip:{0}@pbx.lab.example SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bK{1};rport\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:load@lab.example>;tag={2}\r\n\
        To: <sip:{0}@pbx.lab.example>\r\n\
        Call-ID: {3}\r\n\
        CSeq: 1 INVITE\r\n\
        Contact: <sip:load@192.0.2.50:5060>\r\n\
        X-Braces: {{literal}\r\n\
        Content-Type: application/sdp\r\n";

    #[test]
    fn template_renders_and_parses() {
        let t = Template::compile(INVITE_TPL).unwrap();
        assert_eq!(t.holes(), 4);
        let mut out = Vec::with_capacity(1024);
        let body = b"v=0\r\n";
        t.render(
            &mut out,
            &[b"2001", b"abc123", b"tg9", b"cid-77@load"],
            body,
        )
        .unwrap();
        let m = parse_datagram(&out).unwrap();
        assert_eq!(m.request_uri(), Some("sip:2001@pbx.lab.example"));
        assert_eq!(m.top_via().unwrap().branch, Some("z9hG4bKabc123"));
        assert_eq!(m.from().unwrap().tag(), Some("tg9"));
        assert_eq!(m.to().unwrap().uri, "sip:2001@pbx.lab.example");
        assert_eq!(m.call_id(), Some("cid-77@load"));
        assert_eq!(m.header(HeaderName::Other), Some("{literal}"));
        assert_eq!(m.content_length(), Some(body.len()));
        assert_eq!(m.body(), body);
        assert_eq!(parse_stream(&out).unwrap().1, out.len());

        // Reuse: no reallocation once the buffer is big enough.
        let cap = out.capacity();
        let ptr = out.as_ptr();
        t.render(&mut out, &[b"2002", b"x", b"y", b"z"], b"")
            .unwrap();
        assert_eq!((out.capacity(), out.as_ptr()), (cap, ptr));
        assert_eq!(parse_datagram(&out).unwrap().content_length(), Some(0));
        assert!(out.ends_with(b"Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn template_errors() {
        use TemplateError as E;
        assert_eq!(Template::compile("").unwrap_err(), E::Empty);
        assert_eq!(
            Template::compile("OPTIONS {0 SIP/2.0").unwrap_err(),
            E::UnclosedHole(8)
        );
        assert_eq!(
            Template::compile("OPTIONS {0 x} SIP/2.0").unwrap_err(),
            E::BadHole(8)
        );
        assert_eq!(
            Template::compile("OPTIONS sip:x SIP/2.0\r\nX: {1").unwrap_err(),
            E::UnclosedHole(26)
        );
        assert_eq!(
            Template::compile("OPTIONS {x} SIP/2.0").unwrap_err(),
            E::BadHole(8)
        );
        assert_eq!(
            Template::compile("OPTIONS {} SIP/2.0").unwrap_err(),
            E::BadHole(8)
        );
        assert_eq!(
            Template::compile("OPTIONS {999} SIP/2.0").unwrap_err(),
            E::HoleTooLarge(8, 999)
        );
        assert_eq!(
            Template::compile("OPTIONS {1} SIP/2.0").unwrap_err(),
            E::MissingHole(0)
        );
        let cl = Template::compile("OPTIONS sip:x SIP/2.0\r\nVia: v\r\nContent-Length: 0\r\n")
            .unwrap_err();
        assert_eq!(cl, E::ContentLength(31));
        assert!(cl.to_string().contains("Content-Length"));
        assert_eq!(
            Template::compile("OPTIONS sip:x SIP/2.0\r\nl : 0").unwrap_err(),
            E::ContentLength(23)
        );
        assert_eq!(
            Template::compile("A\r\n\r\nbody").unwrap_err(),
            E::BlankLine(3)
        );
        assert_eq!(Template::compile("A\nB").unwrap_err(), E::BareLf(1));
        assert_eq!(Template::compile("A\rB").unwrap_err(), E::BareCr(1));
        assert!(E::UnclosedHole(3).to_string().contains("unclosed hole"));

        let t = Template::compile("OPTIONS {0} SIP/2.0\r\nX: {1}{0}").unwrap();
        let mut out = Vec::new();
        assert_eq!(
            t.render(&mut out, &[b"a"], b"").unwrap_err(),
            E::WrongValueCount {
                expected: 2,
                got: 1
            }
        );
        assert_eq!(
            t.render(&mut out, &[b"a", b"b", b"c"], b"").unwrap_err(),
            E::WrongValueCount {
                expected: 2,
                got: 3
            }
        );
        t.render(&mut out, &[b"a", b"b"], b"").unwrap();
        assert_eq!(
            out,
            b"OPTIONS a SIP/2.0\r\nX: ba\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn decimal_digits() {
        for n in [0, 7, 10, 4_294_967_295, u64::MAX] {
            assert_eq!(Decimal::new(n).as_bytes(), n.to_string().as_bytes());
            assert_eq!(Decimal::new(n).to_string(), n.to_string());
            for width in [0, 1, 4, 10, 20, 25] {
                // Twenty digits at most: a wider width pads to twenty.
                let w = width.min(20);
                assert_eq!(
                    Decimal::padded(n, width).as_bytes(),
                    format!("{n:0w$}").as_bytes()
                );
            }
        }
    }

    #[test]
    fn render_append_keeps_what_was_there() {
        let t = Template::compile("BYE {0} SIP/2.0\r\nCSeq: {1} BYE").unwrap();
        let mut out = b"first".to_vec();
        t.render_append(&mut out, &[b"sip:a@b", Decimal::new(2).as_bytes()], b"")
            .unwrap();
        assert_eq!(
            out,
            b"firstBYE sip:a@b SIP/2.0\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        assert!(t.render_append(&mut out, &[b"x"], b"").is_err());
        assert!(out.ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn push_decimal_values() {
        for n in [0usize, 7, 10, 99, 100, 65_535, usize::MAX] {
            let mut v = Vec::new();
            push_decimal(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
        }
    }

    fn request_headers(cseq: &str) -> Vec<(&str, &str)> {
        vec![
            (
                "Via",
                "SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKrt1, SIP/2.0/UDP 192.0.2.51;branch=z9hG4bKrt0",
            ),
            ("Via", "SIP/2.0/TCP [2001:db8::5]:5070;branch=z9hG4bKrt-1"),
            ("Max-Forwards", "70"),
            (
                "Record-Route",
                "<sip:p1.lab.example;lr>, <sip:p2.lab.example;lr>",
            ),
            ("Record-Route", "<sip:p3.lab.example;lr>"),
            ("From", "\"Load Gen\" <sip:load@lab.example>;tag=lg1"),
            ("To", "<sip:2001@pbx.lab.example>"),
            ("Call-ID", "rt-call-1@192.0.2.50"),
            ("CSeq", cseq),
            ("Contact", "<sip:load@192.0.2.50:5060>;expires=600"),
        ]
    }

    #[test]
    fn round_trip_invite_and_200() {
        let mut req_buf = Vec::new();
        let headers = request_headers("5 INVITE");
        write_request(
            &mut req_buf,
            "INVITE",
            "sip:2001@pbx.lab.example",
            &headers,
            b"v=0\r\n",
        );
        let req = parse_datagram(&req_buf).unwrap();
        assert_eq!(req.method(), Some(Method::Invite));
        assert_eq!(req.request_uri(), Some("sip:2001@pbx.lab.example"));
        assert_eq!(req.vias().count(), 3);
        assert_eq!(
            req.cseq(),
            Some(CSeq {
                seq: 5,
                method: Method::Invite,
                method_name: "INVITE"
            })
        );
        assert_eq!(req.max_forwards(), Some(70));
        assert_eq!(req.body(), b"v=0\r\n");

        let mut resp = Vec::new();
        write_response(
            &mut resp,
            &req,
            200,
            "OK",
            Some("uas-7"),
            &[
                ("Contact", "<sip:2001@192.0.2.9>"),
                ("Content-Type", "application/sdp"),
            ],
            b"v=0\r\n",
        );
        let r = parse_datagram(&resp).unwrap();
        assert_eq!(r.code(), Some(200));
        assert!(matches!(
            r.start(),
            crate::sip::StartLine::Response { reason: "OK", .. }
        ));
        let rv: Vec<_> = r.vias().collect();
        let qv: Vec<_> = req.vias().collect();
        assert_eq!(rv, qv);
        assert_eq!(r.from(), req.from());
        assert_eq!(r.to().unwrap().uri, "sip:2001@pbx.lab.example");
        assert_eq!(r.to().unwrap().tag(), Some("uas-7"));
        assert_eq!(r.call_id(), req.call_id());
        assert_eq!(r.cseq(), req.cseq());
        let rr: Vec<_> = r.record_routes().map(|n| n.uri).collect();
        assert_eq!(
            rr,
            [
                "sip:p1.lab.example;lr",
                "sip:p2.lab.example;lr",
                "sip:p3.lab.example;lr"
            ]
        );
        assert_eq!(r.contact().unwrap().uri, "sip:2001@192.0.2.9");
        assert_eq!(r.body(), b"v=0\r\n");

        // A provisional 100 gets no Record-Route; an existing To tag is kept.
        let mut trying = Vec::new();
        write_response(&mut trying, &r, 100, "Trying", Some("other"), &[], b"");
        let t = parse_datagram(&trying).unwrap();
        assert_eq!(t.record_routes().count(), 0);
        assert_eq!(t.to().unwrap().tag(), Some("uas-7"));
        assert_eq!(parse_stream(&trying).unwrap().1, trying.len());

        write_response(&mut resp, &req, 183, "Session Progress", None, &[], b"");
        let p = parse_datagram(&resp).unwrap();
        assert_eq!(p.record_routes().count(), 3);
        assert_eq!(p.to().unwrap().tag(), None);
    }

    #[test]
    fn response_headers_write_what_write_response_would() {
        let mut req_buf = Vec::new();
        write_request(
            &mut req_buf,
            "INVITE",
            "sip:2001@pbx.lab.example",
            &request_headers("5 INVITE"),
            b"v=0\r\n",
        );
        let req = parse_datagram(&req_buf).unwrap();
        let extra = [
            ("Contact", "<sip:2001@192.0.2.9>"),
            ("Content-Type", "application/sdp"),
        ];
        let (mut kept, mut direct) = (Vec::new(), Vec::new());
        for tag in [None, Some("uas-7")] {
            let headers = ResponseHeaders::new(&req, tag);
            for code in [100, 180, 183, 200, 202, 302, 486, 500, 603] {
                for (extra, body) in [(&extra[..], &b"v=0\r\n"[..]), (&[][..], &b""[..])] {
                    headers.write(&mut kept, code, "Phrase", extra, body);
                    write_response(&mut direct, &req, code, "Phrase", tag, extra, body);
                    assert_eq!(
                        String::from_utf8_lossy(&kept),
                        String::from_utf8_lossy(&direct),
                        "{code} {tag:?}"
                    );
                }
            }
        }
        // A request with no Record-Route: the provisional and the final look alike.
        let plain = parse_datagram(
            b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKo\r\nFrom: <sip:a@h>;tag=1\r\n\
              To: <sip:x@h>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        ResponseHeaders::new(&plain, Some("t")).write(&mut kept, 100, "Trying", &[], b"");
        assert_eq!(
            kept,
            b"SIP/2.0 100 Trying\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKo\r\nFrom: <sip:a@h>;tag=1\r\n\
              To: <sip:x@h>;tag=t\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            ResponseHeaders::default(),
            ResponseHeaders::default().clone()
        );
    }

    #[test]
    fn write_status_frames_the_given_lines() {
        let mut out = b"left over".to_vec();
        write_status(
            &mut out,
            400,
            "Bad Request (malformed CSeq)",
            &[
                ("Via", "SIP/2.0/UDP h;branch=z9hG4bKb"),
                ("From", "<sip:a@h>;tag=1"),
                ("To", "<sip:b@h>"),
                ("Call-ID", "b"),
                ("CSeq", "one INVITE"),
            ],
            b"",
        );
        assert_eq!(
            out,
            b"SIP/2.0 400 Bad Request (malformed CSeq)\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKb\r\n\
              From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: b\r\nCSeq: one INVITE\r\n\
              Content-Length: 0\r\n\r\n"
        );
        write_status(&mut out, 200, "OK", &[("X-A", "1")], b"body");
        assert_eq!(
            out,
            b"SIP/2.0 200 OK\r\nX-A: 1\r\nContent-Length: 4\r\n\r\nbody"
        );
    }

    #[test]
    fn round_trip_register() {
        let mut buf = Vec::new();
        let headers = [
            ("Via", "SIP/2.0/UDP 192.0.2.60:5062;branch=z9hG4bKreg;rport"),
            ("From", "<sip:3001@lab.example>;tag=r1"),
            ("To", "sip:3001@lab.example"),
            ("Call-ID", "reg-3001"),
            ("CSeq", "2 REGISTER"),
            ("Contact", "<sip:3001@192.0.2.60:5062>;expires=300"),
            ("Expires", "300"),
        ];
        write_request(&mut buf, "REGISTER", "sip:lab.example", &headers, b"");
        let req = parse_datagram(&buf).unwrap();
        assert_eq!(req.method(), Some(Method::Register));
        assert_eq!(req.expires(), Some(300));
        assert_eq!(req.contact().unwrap().param("expires"), Some(Some("300")));
        assert_eq!(req.top_via().unwrap().rport, Some(None));
        assert_eq!(req.to().unwrap().uri, "sip:3001@lab.example");

        let mut resp = Vec::new();
        write_response(
            &mut resp,
            &req,
            200,
            "OK",
            Some("reg-ok"),
            &[("Contact", "<sip:3001@192.0.2.60:5062>;expires=300")],
            b"",
        );
        let r = parse_datagram(&resp).unwrap();
        // addr-spec To: the added tag is a header parameter, not part of the URI.
        let to = r.to().unwrap();
        assert_eq!((to.uri, to.tag()), ("sip:3001@lab.example", Some("reg-ok")));
        assert_eq!(r.cseq().unwrap().method, Method::Register);
        assert_eq!(r.top_via().unwrap().branch, Some("z9hG4bKreg"));
        assert_eq!(r.contact().unwrap().param("expires"), Some(Some("300")));
        assert_eq!(r.content_length(), Some(0));
    }
}
