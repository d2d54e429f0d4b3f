//! SIP message parsing (RFC 3261 sections 7, 18.3 and 20): a zero-copy parser
//! that turns one UDP datagram, or the front of a TCP stream buffer, into a
//! [`Message`] whose start line, headers and body all borrow from the input,
//! plus typed accessors (Call-ID, CSeq, Via, From/To/Contact, routes) that
//! parse their header only when asked.
//!
//! What this module does NOT do: no I/O and no buffering (the caller owns the
//! socket and the stream buffer), no transactions, dialogs or retransmission
//! timers, no authentication, no SDP or other body parsing, no stamping of
//! `received`/`rport` into Via, and no validation of header values beyond what
//! framing and the mandatory headers (Via, From, To, Call-ID, CSeq) need. The
//! Request-URI is kept raw; parse it with [`crate::uri::SipUri`] when needed.
//!
//! Everything is bounded: at most [`MAX_HEADERS`] header lines and at most
//! [`MAX_MESSAGE`] bytes per message, so a hostile peer cannot make a parse
//! allocate or run unboundedly. Network input never panics the parser.

use std::borrow::Cow;

use memchr::memchr;

use crate::uri::{
    NameAddr, Params, Split, find_param, is_host_byte, is_lws_byte, is_token_byte, scan, skip_lws,
    trim_lws,
};

/// More header lines than this make a message Invalid.
pub const MAX_HEADERS: usize = 64;
/// Largest message (start line to end of body) accepted, in bytes.
pub const MAX_MESSAGE: usize = 65_535;

/// A request method. Method names are case-sensitive (RFC 3261 7.1), so
/// `invite` is [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other,
}

impl Method {
    pub fn from_token(token: &str) -> Method {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }

    /// The method name; `"OTHER"` for [`Method::Other`] (keep the raw name
    /// from [`StartLine::Request`] or [`CSeq`] when it matters).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other => "OTHER",
        }
    }
}

/// Header names the project looks at; anything else is [`HeaderName::Other`]
/// with the spelling kept in [`Header::raw_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    ContentLength,
    ContentType,
    MaxForwards,
    Route,
    RecordRoute,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    Expires,
    UserAgent,
    Server,
    Allow,
    Supported,
    Require,
    RetryAfter,
    Event,
    Subject,
    ReferTo,
    AllowEvents,
    ContentEncoding,
    Other,
}

impl HeaderName {
    /// Case-insensitive, and knows the compact one-letter forms (RFC 3261
    /// 7.3.3, RFC 3265, RFC 3515).
    pub fn parse(name: &str) -> HeaderName {
        use HeaderName as H;
        let b = name.as_bytes();
        if let [c] = b {
            return match c.to_ascii_lowercase() {
                b'v' => H::Via,
                b'f' => H::From,
                b't' => H::To,
                b'i' => H::CallId,
                b'm' => H::Contact,
                b'l' => H::ContentLength,
                b'c' => H::ContentType,
                b'k' => H::Supported,
                b's' => H::Subject,
                b'e' => H::ContentEncoding,
                b'o' => H::Event,
                b'r' => H::ReferTo,
                b'u' => H::AllowEvents,
                _ => H::Other,
            };
        }
        // Length plus first letter pick the single candidate; the canonical
        // spelling (what nearly every sender writes) is one fixed-size
        // compare, other casings fall back to a case-insensitive one. Every
        // header line of every message goes through here.
        let first = b.first().map_or(0, |c| c | 0x20);
        match (b.len(), first) {
            (2, b't') if is(b, b"To", b"to") => H::To,
            (3, b'v') if is(b, b"Via", b"via") => H::Via,
            (4, b'f') if is(b, b"From", b"from") => H::From,
            (4, b'c') if is(b, b"CSeq", b"cseq") => H::CSeq,
            (5, b'r') if is(b, b"Route", b"route") => H::Route,
            (5, b'a') if is(b, b"Allow", b"allow") => H::Allow,
            (5, b'e') if is(b, b"Event", b"event") => H::Event,
            (6, b's') if is(b, b"Server", b"server") => H::Server,
            (7, b'c') if is(b, b"Call-ID", b"call-id") => H::CallId,
            (7, b'c') if is(b, b"Contact", b"contact") => H::Contact,
            (7, b'e') if is(b, b"Expires", b"expires") => H::Expires,
            (7, b'r') if is(b, b"Require", b"require") => H::Require,
            (7, b's') if is(b, b"Subject", b"subject") => H::Subject,
            (8, b'r') if is(b, b"Refer-To", b"refer-to") => H::ReferTo,
            (9, b's') if is(b, b"Supported", b"supported") => H::Supported,
            (10, b'u') if is(b, b"User-Agent", b"user-agent") => H::UserAgent,
            (11, b'r') if is(b, b"Retry-After", b"retry-after") => H::RetryAfter,
            (12, b'c') if is(b, b"Content-Type", b"content-type") => H::ContentType,
            (12, b'm') if is(b, b"Max-Forwards", b"max-forwards") => H::MaxForwards,
            (12, b'r') if is(b, b"Record-Route", b"record-route") => H::RecordRoute,
            (12, b'a') if is(b, b"Allow-Events", b"allow-events") => H::AllowEvents,
            (13, b'a') if is(b, b"Authorization", b"authorization") => H::Authorization,
            (14, b'c') if is(b, b"Content-Length", b"content-length") => H::ContentLength,
            (16, b'w') if is(b, b"WWW-Authenticate", b"www-authenticate") => H::WwwAuthenticate,
            (16, b'c') if is(b, b"Content-Encoding", b"content-encoding") => H::ContentEncoding,
            (18, b'p') if is(b, b"Proxy-Authenticate", b"proxy-authenticate") => {
                H::ProxyAuthenticate
            }
            (19, b'p') if is(b, b"Proxy-Authorization", b"proxy-authorization") => {
                H::ProxyAuthorization
            }
            _ => H::Other,
        }
    }

    /// Canonical long form. [`HeaderName::Other`] gives `"Other"`; use
    /// [`Header::raw_name`] for the real spelling of unknown headers.
    pub fn as_str(self) -> &'static str {
        use HeaderName as H;
        match self {
            H::Via => "Via",
            H::From => "From",
            H::To => "To",
            H::CallId => "Call-ID",
            H::CSeq => "CSeq",
            H::Contact => "Contact",
            H::ContentLength => "Content-Length",
            H::ContentType => "Content-Type",
            H::MaxForwards => "Max-Forwards",
            H::Route => "Route",
            H::RecordRoute => "Record-Route",
            H::Authorization => "Authorization",
            H::ProxyAuthorization => "Proxy-Authorization",
            H::WwwAuthenticate => "WWW-Authenticate",
            H::ProxyAuthenticate => "Proxy-Authenticate",
            H::Expires => "Expires",
            H::UserAgent => "User-Agent",
            H::Server => "Server",
            H::Allow => "Allow",
            H::Supported => "Supported",
            H::Require => "Require",
            H::RetryAfter => "Retry-After",
            H::Event => "Event",
            H::Subject => "Subject",
            H::ReferTo => "Refer-To",
            H::AllowEvents => "Allow-Events",
            H::ContentEncoding => "Content-Encoding",
            H::Other => "Other",
        }
    }
}

/// First ':' of a header line. Names are short, so a word-at-a-time look
/// at the first 24 bytes nearly always finds it without memchr's setup.
#[inline(always)]
fn find_colon(line: &[u8]) -> Option<usize> {
    for (i, chunk) in line.chunks_exact(8).take(3).enumerate() {
        let w = <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes);
        let v = w ^ 0x3a3a_3a3a_3a3a_3a3a;
        let hits = v.wrapping_sub(0x0101_0101_0101_0101) & !v & 0x8080_8080_8080_8080;
        if hits != 0 {
            // The lowest flagged byte is always a true match.
            return Some(i * 8 + (hits.trailing_zeros() / 8) as usize);
        }
    }
    let from = (line.len() / 8).min(3) * 8;
    memchr(b':', line.get(from..).unwrap_or_default()).map(|j| from + j)
}

/// `b` spelled exactly `exact`, or equal to `lower` ignoring ASCII case.
#[inline(always)]
fn is<const N: usize>(b: &[u8], exact: &[u8; N], lower: &[u8; N]) -> bool {
    b == exact || ci(b, lower)
}

/// Case-insensitive compare against a lower-case name made of letters and
/// '-'. OR 0x20 lower-cases letters and keeps '-'; CR is the one byte that
/// would alias ('-' is 0x2D = 0x0D | 0x20), so it is excluded explicitly.
#[inline(always)]
fn ci<const N: usize>(b: &[u8], lower: &[u8; N]) -> bool {
    let Ok(b) = <&[u8; N]>::try_from(b) else {
        return false;
    };
    b.iter().zip(lower).fold(0u8, |acc, (&x, &c)| {
        acc | ((x | 0x20) ^ c) | u8::from(x == b'\r')
    }) == 0
}

/// Case-insensitive equality with a lower-case literal; the exact compare
/// first is a couple of instructions for the spelling nearly everyone uses.
#[inline(always)]
pub(crate) fn eq_lower(s: &str, lower: &str) -> bool {
    s == lower || s.eq_ignore_ascii_case(lower)
}

/// One header line (with its continuation lines, if folded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: HeaderName,
    /// The name as written (e.g. `"v"` or `"X-Lab-Id"`).
    pub raw_name: &'a str,
    /// raw value, leading/trailing whitespace trimmed; may contain folded line breaks (CRLF + SP/HT)
    pub value: &'a str,
}

const EMPTY_HEADER: Header<'static> = Header {
    name: HeaderName::Other,
    raw_name: "",
    value: "",
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request {
        method: Method,
        method_name: &'a str,
        uri: &'a str,
    },
    Response {
        code: u16,
        reason: &'a str,
    },
}

/// Incomplete (need more bytes: only possible from parse_stream) kept apart from Invalid (never valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("incomplete message")]
    Incomplete,
    #[error("{0}")]
    Invalid(#[from] Invalid),
}

/// Why a message (or URI / header value) can never be valid. `offset` is a
/// byte offset into the buffer given to the parse function that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid SIP message at byte {offset}: {reason}")]
pub struct Invalid {
    pub reason: &'static str,
    pub offset: usize,
}

fn invalid(reason: &'static str, offset: usize) -> ParseError {
    ParseError::Invalid(Invalid { reason, offset })
}

/// The CSeq header: sequence number and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: Method,
    pub method_name: &'a str,
}

impl<'a> CSeq<'a> {
    /// Parses a CSeq value (`"4711 INVITE"`); the offset of an error is into `s`.
    pub fn parse(s: &'a str) -> Result<CSeq<'a>, Invalid> {
        let bad = |reason, offset| Invalid { reason, offset };
        let rest = skip_lws(s);
        let lead = s.len() - rest.len();
        let digits = scan(rest.as_bytes(), 0, |c| c.is_ascii_digit());
        if digits == 0 {
            return Err(bad("malformed CSeq", lead));
        }
        let seq = parse_decimal(rest.get(..digits).unwrap_or_default(), u32::MAX.into())
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(bad("CSeq number out of range", lead))?;
        let after = rest.get(digits..).unwrap_or_default();
        let method_name = trim_lws(after);
        if method_name.is_empty()
            || after.len() == skip_lws(after).len()
            || !method_name.bytes().all(is_token_byte)
        {
            return Err(bad("malformed CSeq", lead + digits));
        }
        Ok(CSeq {
            seq,
            method: Method::from_token(method_name),
            method_name,
        })
    }
}

/// One Via value (RFC 3261 20.42).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// `"UDP"`, `"TCP"`, `"TLS"`, ... as written.
    pub transport: &'a str,
    /// IPv6 keeps its brackets: `"[2001:db8::1]"`.
    pub host: &'a str,
    pub port: Option<u16>,
    pub branch: Option<&'a str>,
    pub received: Option<&'a str>,
    /// None: absent; Some(None): `rport` without a value (RFC 3581 request).
    pub rport: Option<Option<u16>>,
    /// Every parameter, raw, starting at the first `;` (empty if none).
    pub params: &'a str,
}

impl<'a> Via<'a> {
    /// Parses one Via value (one comma-separated element); LWS, including
    /// folded line breaks, is allowed where RFC 3261 allows it. Offsets are
    /// into `s`.
    pub fn parse(s: &'a str) -> Result<Via<'a>, Invalid> {
        let b = s.as_bytes();
        let bad = |reason, offset| Invalid { reason, offset };
        let mut i = scan(b, 0, is_lws_byte);
        // sent-protocol = name SLASH version SLASH transport, LWS allowed
        // around SLASH; nearly everyone writes "SIP/2.0/", so take it at once.
        if b.get(i..i + 8) == Some(b"SIP/2.0/") {
            i += 8;
        } else {
            for _ in 0..2 {
                let e = scan(b, i, is_token_byte);
                if e == i {
                    return Err(bad("malformed Via protocol", i));
                }
                i = scan(b, e, is_lws_byte);
                if b.get(i) != Some(&b'/') {
                    return Err(bad("malformed Via protocol", i));
                }
                i = scan(b, i + 1, is_lws_byte);
            }
        }
        let t_end = scan(b, i, is_token_byte);
        if t_end == i {
            return Err(bad("malformed Via protocol", i));
        }
        let transport = s.get(i..t_end).unwrap_or_default();
        let h = scan(b, t_end, is_lws_byte);
        if h == t_end {
            return Err(bad("missing space before Via sent-by", h));
        }
        let h_end = if b.get(h) == Some(&b'[') {
            let e = scan(b, h + 1, |c| {
                c.is_ascii_hexdigit() || c == b':' || c == b'.'
            });
            if e == h + 1 || b.get(e) != Some(&b']') {
                return Err(bad("malformed IPv6 host in Via", h));
            }
            e + 1
        } else {
            let e = scan(b, h, is_host_byte);
            if e == h {
                return Err(bad("missing Via host", h));
            }
            e
        };
        let host = s.get(h..h_end).unwrap_or_default();
        i = scan(b, h_end, is_lws_byte);
        let mut port = None;
        if b.get(i) == Some(&b':') {
            let p = scan(b, i + 1, is_lws_byte);
            let p_end = scan(b, p, |c| c.is_ascii_digit());
            let value = parse_decimal(s.get(p..p_end).unwrap_or_default(), u16::MAX.into())
                .and_then(|v| u16::try_from(v).ok())
                .ok_or(bad("bad Via port", p))?;
            port = Some(value);
            i = scan(b, p_end, is_lws_byte);
        }
        if !matches!(b.get(i), None | Some(b';')) {
            return Err(bad("unexpected text after Via sent-by", i));
        }
        let params = trim_lws(s.get(i..).unwrap_or_default());
        let mut via = Via {
            transport,
            host,
            port,
            branch: None,
            received: None,
            rport: None,
            params,
        };
        for (name, value) in Params::new(params) {
            match name.len() {
                6 if eq_lower(name, "branch") => via.branch = via.branch.or(value),
                8 if eq_lower(name, "received") => via.received = via.received.or(value),
                5 if eq_lower(name, "rport") && via.rport.is_none() => {
                    // A non-numeric rport is treated like a bare one: the peer
                    // asked for rport handling, the value is just garbage.
                    via.rport = Some(value.and_then(|v| v.parse::<u16>().ok()));
                }
                _ => {}
            }
        }
        Ok(via)
    }
}

/// A parsed message. Headers are stored inline (no heap); everything borrows
/// from the input buffer.
///
/// The inline header array makes this about 2.7 KB: borrow it (`&Message`,
/// `if let Ok(m) = &parsed`) rather than moving it around in hot loops, each
/// move is a memcpy of that size.
#[derive(Clone)]
pub struct Message<'a> {
    start: StartLine<'a>,
    headers: [Header<'a>; MAX_HEADERS],
    count: usize,
    body: &'a [u8],
    cseq: CSeq<'a>,
    call_id: &'a str,
    content_length: Option<usize>,
}

impl Message<'static> {
    const EMPTY: Message<'static> = Message {
        start: StartLine::Response {
            code: 0,
            reason: "",
        },
        headers: [EMPTY_HEADER; MAX_HEADERS],
        count: 0,
        body: &[],
        cseq: CSeq {
            seq: 0,
            method: Method::Other,
            method_name: "",
        },
        call_id: "",
        content_length: None,
    };
}

impl<'a> Message<'a> {
    /// A message with nothing in it, to parse into with [`parse_datagram_into`].
    pub fn empty() -> Message<'a> {
        Message::EMPTY
    }

    /// Back to empty without rewriting the header table: entries past `count` are never read.
    fn clear(&mut self) {
        let Message {
            start,
            headers: _,
            count,
            body,
            cseq,
            call_id,
            content_length,
        } = Message::EMPTY;
        self.start = start;
        self.count = count;
        self.body = body;
        self.cseq = cseq;
        self.call_id = call_id;
        self.content_length = content_length;
    }
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("start", &self.start)
            .field("headers", &self.headers())
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A whole UDP datagram: Content-Length frames the body; extra bytes after it are discarded (RFC 3261 18.3); a Content-Length larger than what is there is Invalid; missing Content-Length means the body is the rest of the datagram.
///
/// A datagram of nothing but CR/LF (an RFC 5626 keepalive) is Invalid with
/// the reason "no message, only CRLF keepalive bytes"; callers that answer
/// keepalives should check for that before parsing.
pub fn parse_datagram(buf: &[u8]) -> Result<Message<'_>, ParseError> {
    let mut m = Message::EMPTY;
    parse_into(&mut m, buf, false)?;
    Ok(m)
}

/// As [`parse_datagram`], into a message the caller holds: a [`Message`] is about 2.7 KB, and
/// returning one by value copies all of it on every datagram. `m` is cleared first, so one
/// message can take several datagrams in turn (of one lifetime). On error `m` holds no message.
///
/// ```
/// use pbxlab_proto::sip::{Message, parse_datagram_into};
/// let datagram = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
///     From: <sip:a@b>;tag=1\r\nTo: <sip:c@b>;tag=2\r\nCall-ID: a@b\r\n\
///     CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
/// let mut m = Message::empty();
/// parse_datagram_into(&mut m, datagram).unwrap();
/// assert_eq!(m.call_id(), Some("a@b"));
/// ```
pub fn parse_datagram_into<'a>(m: &mut Message<'a>, buf: &'a [u8]) -> Result<(), ParseError> {
    m.clear();
    let parsed = parse_into(m, buf, false).map(|_| ());
    if parsed.is_err() {
        m.clear();
    }
    parsed
}

/// A stream (TCP): returns the message and bytes consumed; Incomplete when headers or the Content-Length body are not all there yet; missing Content-Length is Invalid on a stream.
///
/// Leading CR/LF keepalives are skipped and counted in the consumed length.
/// A message that would exceed [`MAX_MESSAGE`] is Invalid as soon as that is
/// certain, so a caller never has to buffer more than that (plus keepalives)
/// waiting for Incomplete to clear. After Invalid the stream has lost framing
/// and should be closed.
pub fn parse_stream(buf: &[u8]) -> Result<(Message<'_>, usize), ParseError> {
    let mut m = Message::EMPTY;
    let used = parse_into(&mut m, buf, true)?;
    Ok((m, used))
}

/// Parses into `m` (which must be empty) and returns the bytes consumed.
#[inline(always)]
fn parse_into<'a>(m: &mut Message<'a>, buf: &'a [u8], stream: bool) -> Result<usize, ParseError> {
    if !stream && buf.len() > MAX_MESSAGE {
        return Err(invalid("message larger than MAX_MESSAGE", MAX_MESSAGE));
    }
    // RFC 3261 7.5: CRLFs before the start line are keepalives, not errors.
    let Some(start) = buf.iter().position(|&b| b != b'\r' && b != b'\n') else {
        return Err(if stream && buf.len() <= MAX_MESSAGE {
            ParseError::Incomplete
        } else {
            invalid("no message, only CRLF keepalive bytes", buf.len())
        });
    };
    if start > MAX_MESSAGE {
        return Err(invalid("too many CRLF keepalive bytes", start));
    }
    let msg = buf.get(start..).unwrap_or_default();
    // Running out of bytes is Incomplete on a stream (unless the message is
    // already too large to ever be accepted) and Invalid on a datagram.
    let short = |reason: &'static str| {
        if !stream {
            invalid(reason, buf.len())
        } else if msg.len() > MAX_MESSAGE {
            invalid("message larger than MAX_MESSAGE", start + MAX_MESSAGE)
        } else {
            ParseError::Incomplete
        }
    };

    // One UTF-8 validation over the front of the message (body included,
    // it is usually text) is far cheaper than validating header by header;
    // headers beyond this prefix (long messages, binary bodies that end it
    // early) are validated individually.
    let window = msg
        .get(..msg.len().min(VALIDATED_PREFIX))
        .unwrap_or_default();
    let text = match std::str::from_utf8(window) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(window.get(..e.valid_up_to()).unwrap_or_default())
            .unwrap_or_default(),
    };

    // NUL is legal in a body but not before it; one SIMD search over the
    // prefix spares a per-line check (see `line_end`).
    let clean = memchr(0, window).unwrap_or(window.len());

    let nl = memchr(b'\n', msg).ok_or_else(|| short("start line not terminated"))?;
    let line_end = if msg.get(nl.wrapping_sub(1)) == Some(&b'\r') {
        nl - 1
    } else {
        nl
    };
    if line_end > clean
        && let Some(i) = memchr(0, msg.get(..line_end).unwrap_or_default())
    {
        return Err(invalid("NUL byte in start line", start + i));
    }
    let line = as_text(text, msg, 0, line_end)
        .map_err(|at| invalid("start line is not UTF-8", start + at))?;
    m.start = parse_start_line(line, start)?;

    let Some(head) = parse_headers(m, msg, text, clean, nl + 1, start)? else {
        return Err(short("missing blank line after headers"));
    };
    let end_offset = start + head.end;
    for (bit, reason) in [
        (SEEN_VIA, "missing Via header"),
        (SEEN_FROM, "missing From header"),
        (SEEN_TO, "missing To header"),
        (SEEN_CALL_ID, "missing Call-ID header"),
        (SEEN_CSEQ, "missing CSeq header"),
    ] {
        if head.seen & bit == 0 {
            return Err(invalid(reason, end_offset));
        }
    }

    let body_abs = start + head.body;
    let after = buf.get(body_abs..).unwrap_or_default();
    let body = if stream {
        let n = m
            .content_length
            .ok_or(invalid("missing Content-Length on a stream", end_offset))?;
        if head.body + n > MAX_MESSAGE {
            return Err(invalid("message larger than MAX_MESSAGE", body_abs));
        }
        after.get(..n).ok_or(ParseError::Incomplete)?
    } else {
        match m.content_length {
            Some(n) => after
                .get(..n)
                .ok_or(invalid("Content-Length larger than the datagram", body_abs))?,
            None => after,
        }
    };
    m.body = body;
    Ok(body_abs + body.len())
}

const SEEN_VIA: u8 = 1;
const SEEN_FROM: u8 = 2;
const SEEN_TO: u8 = 4;
const SEEN_CALL_ID: u8 = 8;
const SEEN_CSEQ: u8 = 16;

/// What the header walk found: which mandatory headers, where the blank
/// line is and where the body starts (indices into the message).
struct Head {
    seen: u8,
    end: usize,
    body: usize,
}

/// How much of a message is UTF-8-validated in one go (see `parse_into`).
/// Covers typical SIP messages whole while bounding the wasted work when a
/// stream buffer holds many pipelined messages.
const VALIDATED_PREFIX: usize = 2048;

/// `msg[from..to]` as text: sliced from the validated prefix when it lies
/// inside it, validated on its own otherwise. Err carries the offset (into
/// `msg`) of the first bad byte.
fn as_text<'a>(text: &'a str, msg: &'a [u8], from: usize, to: usize) -> Result<&'a str, usize> {
    if to <= text.len() {
        // Cuts are next to ASCII bytes (line ends, ':'), so always on char
        // boundaries; get() would return None rather than panic otherwise.
        return text.get(from..to).ok_or(from);
    }
    std::str::from_utf8(msg.get(from..to).unwrap_or_default()).map_err(|e| from + e.valid_up_to())
}

/// Line end (`\n`) at or after `from`; Err if the line holds a NUL byte.
/// `clean` is how far the message is known to be free of NUL bytes, so the
/// NUL check costs nothing for lines inside that stretch.
fn line_end(
    msg: &[u8],
    from: usize,
    clean: usize,
    base: usize,
) -> Result<Option<usize>, ParseError> {
    let Some(le) = memchr(b'\n', msg.get(from..).unwrap_or_default()).map(|i| from + i) else {
        return Ok(None);
    };
    if le > clean
        && let Some(i) = memchr(0, msg.get(from..le).unwrap_or_default())
    {
        return Err(invalid("NUL byte in headers", base + from + i));
    }
    Ok(Some(le))
}

/// Walks header lines from `from` up to and including the blank line,
/// filling `m`. One pass: each line is found once, and its text comes from
/// the validated prefix `text` where possible. A line that fails a check
/// is Invalid at once, even on a stream whose message is not complete yet
/// (it can never become valid). Ok(None) means the bytes ran out first.
/// `base` turns indices into offsets for errors.
fn parse_headers<'a>(
    m: &mut Message<'a>,
    msg: &'a [u8],
    text: &'a str,
    clean: usize,
    from: usize,
    base: usize,
) -> Result<Option<Head>, ParseError> {
    let mut seen = 0u8;
    let mut ls = from;
    loop {
        let rest = msg.get(ls..).unwrap_or_default();
        match rest {
            [b'\n', ..] => {
                return Ok(Some(Head {
                    seen,
                    end: ls,
                    body: ls + 1,
                }));
            }
            [b'\r', b'\n', ..] => {
                return Ok(Some(Head {
                    seen,
                    end: ls,
                    body: ls + 2,
                }));
            }
            [] | [b'\r'] => return Ok(None),
            [b' ' | b'\t', ..] => {
                return Err(invalid(
                    "continuation line before the first header",
                    base + ls,
                ));
            }
            _ => {}
        }
        let Some(mut le) = line_end(msg, ls, clean, base)? else {
            return Ok(None);
        };
        let line = msg.get(ls..le).unwrap_or_default();
        // Find the colon word-at-a-time, then check the name's bytes without
        // an early exit: a byte-by-byte scan for the end of the token
        // mispredicted its exit branch on every header.
        let colon = find_colon(line).ok_or(invalid("header line without a colon", base + ls))?;
        let name_part = line.get(..colon).unwrap_or_default();
        let mut name_len = name_part.len();
        while name_len > 0 && matches!(name_part.get(name_len - 1), Some(b' ' | b'\t')) {
            name_len -= 1;
        }
        let name = name_part.get(..name_len).unwrap_or_default();
        if name_len == 0 {
            return Err(invalid("empty header name", base + ls));
        }
        if !name.iter().fold(true, |ok, &b| ok & is_token_byte(b)) {
            let bad = name.iter().position(|&b| !is_token_byte(b)).unwrap_or(0);
            return Err(invalid("illegal character in header name", base + ls + bad));
        }
        // Folded continuation lines (RFC 3261 7.3.1) extend the value.
        loop {
            match msg.get(le + 1) {
                Some(b' ' | b'\t') => {}
                Some(_) => break,
                None => return Ok(None),
            }
            le = match line_end(msg, le + 1, clean, base)? {
                Some(e) => e,
                None => return Ok(None),
            };
        }
        let end = if le > ls && msg.get(le - 1) == Some(&b'\r') {
            le - 1
        } else {
            le
        };
        let header = as_text(text, msg, ls, end)
            .map_err(|at| invalid("headers are not UTF-8", base + at))?;
        let raw_name = header.get(..name_len).unwrap_or_default();
        let value = trim_lws(header.get(colon + 1..).unwrap_or_default());
        finish_header(m, &mut seen, raw_name, value, base + ls)?;
        ls = le + 1;
    }
}

fn finish_header<'a>(
    m: &mut Message<'a>,
    seen: &mut u8,
    raw_name: &'a str,
    value: &'a str,
    at: usize,
) -> Result<(), ParseError> {
    let name = HeaderName::parse(raw_name);
    let slot = m
        .headers
        .get_mut(m.count)
        .ok_or(invalid("too many headers (more than MAX_HEADERS)", at))?;
    *slot = Header {
        name,
        raw_name,
        value,
    };
    m.count += 1;

    // Duplicates of single-valued identity headers are rejected rather than
    // resolved: two stacks picking different copies is how smuggling starts.
    let mut once = |bit: u8, dup: &'static str| {
        if *seen & bit != 0 {
            return Err(invalid(dup, at));
        }
        *seen |= bit;
        Ok(())
    };
    match name {
        HeaderName::Via => *seen |= SEEN_VIA,
        HeaderName::From => once(SEEN_FROM, "duplicate From header")?,
        HeaderName::To => once(SEEN_TO, "duplicate To header")?,
        HeaderName::CallId => {
            once(SEEN_CALL_ID, "duplicate Call-ID header")?;
            if value.is_empty() {
                return Err(invalid("empty Call-ID", at));
            }
            m.call_id = value;
        }
        HeaderName::CSeq => {
            once(SEEN_CSEQ, "duplicate CSeq header")?;
            let cseq = CSeq::parse(value).map_err(|e| invalid(e.reason, at))?;
            // CANCEL and ACK carry their own method with the INVITE's number,
            // so equality of names is the whole rule (RFC 3261 8.1.1.5).
            if let StartLine::Request { method_name, .. } = m.start
                && method_name != cseq.method_name
            {
                return Err(invalid("CSeq method does not match the request method", at));
            }
            m.cseq = cseq;
        }
        HeaderName::ContentLength => {
            let n = parse_content_length(value).map_err(|r| invalid(r, at))?;
            match m.content_length {
                Some(old) if old != n => {
                    return Err(invalid("conflicting Content-Length headers", at));
                }
                _ => m.content_length = Some(n),
            }
        }
        _ => {}
    }
    Ok(())
}

fn parse_content_length(value: &str) -> Result<usize, &'static str> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("Content-Length is not a non-negative integer");
    }
    parse_decimal(value, MAX_MESSAGE as u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or("Content-Length larger than MAX_MESSAGE")
}

/// All-digit decimal no larger than `max`; None otherwise (never overflows).
fn parse_decimal(s: &str, max: u64) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
        if n > max {
            return None;
        }
    }
    Some(n)
}

fn parse_start_line(line: &str, at: usize) -> Result<StartLine<'_>, ParseError> {
    let b = line.as_bytes();
    // Byte scans instead of split_once/rsplit_once: this runs for every
    // message and the generic str searchers cost more than the line is long.
    if b.get(..4)
        .is_some_and(|p| p == b"SIP/" || p.eq_ignore_ascii_case(b"SIP/"))
    {
        let vlen = b
            .iter()
            .position(|&c| c == b' ')
            .ok_or(invalid("malformed status line", at))?;
        if !b
            .get(..vlen)
            .is_some_and(|v| v == b"SIP/2.0" || v.eq_ignore_ascii_case(b"SIP/2.0"))
        {
            return Err(invalid("unsupported SIP version", at));
        }
        let code_at = vlen + 1;
        let rest = b.get(code_at..).unwrap_or_default();
        // The reason phrase may be empty, with or without the SP before it.
        let clen = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
        let code = rest.get(..clen).unwrap_or_default();
        if code.is_empty() || !code.iter().all(u8::is_ascii_digit) {
            return Err(invalid("status code is not a number", at + code_at));
        }
        let code = code
            .iter()
            .take(4)
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        if clen > 3 || !(100..=699).contains(&code) {
            return Err(invalid(
                "status code out of range (100..=699)",
                at + code_at,
            ));
        }
        let reason = line.get(code_at + clen + 1..).unwrap_or_default();
        return Ok(StartLine::Response { code, reason });
    }
    let mlen = scan(b, 0, is_token_byte);
    match b.get(mlen) {
        Some(b' ') if mlen > 0 => {}
        None | Some(b' ') => return Err(invalid("malformed request line", at)),
        Some(_) => return Err(invalid("illegal character in method", at + mlen)),
    }
    let uri_at = mlen + 1;
    let ulen = scan(b, uri_at, |c| c > b' ' && c != 0x7f) - uri_at;
    let version_at = uri_at + ulen + 1;
    if ulen == 0 || b.get(uri_at + ulen) != Some(&b' ') {
        return Err(invalid("malformed request line", at + uri_at));
    }
    let version = b.get(version_at..).unwrap_or_default();
    if version != b"SIP/2.0" && !version.eq_ignore_ascii_case(b"SIP/2.0") {
        let looks_like_version = version
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"));
        return Err(invalid(
            if looks_like_version {
                "unsupported SIP version"
            } else {
                "malformed request line"
            },
            at + version_at,
        ));
    }
    let method_name = line.get(..mlen).unwrap_or_default();
    Ok(StartLine::Request {
        method: Method::from_token(method_name),
        method_name,
        uri: line.get(uri_at..uri_at + ulen).unwrap_or_default(),
    })
}

fn is_lws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

impl<'a> Message<'a> {
    pub fn start(&self) -> StartLine<'a> {
        self.start
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI, raw (requests only).
    pub fn request_uri(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// response code
    pub fn code(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn headers(&self) -> &[Header<'a>] {
        self.headers.get(..self.count).unwrap_or_default()
    }

    /// First header line with this name.
    pub fn header(&self, name: HeaderName) -> Option<&'a str> {
        self.headers()
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value)
    }

    /// Every comma-separated value of every line with this name, in order (splitting on commas outside quotes and <...>), trimmed. For Via, Route, Record-Route, Contact, Allow, Supported...
    ///
    /// Do not use it on headers whose single value contains commas
    /// (WWW-Authenticate, Date, ...): use [`Message::header`] there.
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = &'a str> + '_ {
        self.headers()
            .iter()
            .filter(move |h| h.name == name)
            .flat_map(|h| Split::new(h.value, b','))
    }

    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Always Some on a parsed message (Call-ID is mandatory).
    pub fn call_id(&self) -> Option<&'a str> {
        Some(self.call_id).filter(|c| !c.is_empty())
    }

    /// Always Some on a parsed message (CSeq is mandatory and validated).
    pub fn cseq(&self) -> Option<CSeq<'a>> {
        Some(self.cseq).filter(|c| !c.method_name.is_empty())
    }

    /// first value of the first Via line; None if it does not parse.
    pub fn top_via(&self) -> Option<Via<'a>> {
        self.values(HeaderName::Via)
            .next()
            .and_then(|v| Via::parse(v).ok())
    }

    /// Every Via value in order; values that do not parse are skipped.
    pub fn vias(&self) -> impl Iterator<Item = Via<'a>> + '_ {
        self.values(HeaderName::Via)
            .filter_map(|v| Via::parse(v).ok())
    }

    pub fn from(&self) -> Option<NameAddr<'a>> {
        self.header(HeaderName::From)
            .and_then(|v| NameAddr::parse(v).ok())
    }

    pub fn to(&self) -> Option<NameAddr<'a>> {
        self.header(HeaderName::To)
            .and_then(|v| NameAddr::parse(v).ok())
    }

    /// first contact value; `Contact: *` gives a NameAddr with `star` set.
    pub fn contact(&self) -> Option<NameAddr<'a>> {
        self.values(HeaderName::Contact)
            .next()
            .and_then(|v| NameAddr::parse(v).ok())
    }

    /// Record-Route values in order; values that do not parse are skipped.
    pub fn record_routes(&self) -> impl Iterator<Item = NameAddr<'a>> + '_ {
        self.values(HeaderName::RecordRoute)
            .filter_map(|v| NameAddr::parse(v).ok())
    }

    /// Route values in order; values that do not parse are skipped.
    pub fn routes(&self) -> impl Iterator<Item = NameAddr<'a>> + '_ {
        self.values(HeaderName::Route)
            .filter_map(|v| NameAddr::parse(v).ok())
    }

    /// The Expires header (not a Contact's `expires` parameter).
    pub fn expires(&self) -> Option<u32> {
        self.header(HeaderName::Expires).and_then(parse_u32)
    }

    pub fn content_length(&self) -> Option<usize> {
        self.content_length
    }

    pub fn max_forwards(&self) -> Option<u32> {
        self.header(HeaderName::MaxForwards).and_then(parse_u32)
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    parse_decimal(s, u32::MAX.into()).and_then(|n| u32::try_from(n).ok())
}

/// Looks up a `;name=value` parameter in a raw parameter string (Via params,
/// header params); case-insensitive name, value kept raw (quotes included).
pub fn param<'a>(params: &'a str, name: &str) -> Option<Option<&'a str>> {
    find_param(params, name)
}

/// Join folded lines of a raw value into one line (only allocates when the value was folded).
///
/// Each run of whitespace that contains a line break becomes a single SP
/// (RFC 3261 7.3.1).
pub fn unfold(value: &str) -> Cow<'_, str> {
    if memchr::memchr2(b'\r', b'\n', value.as_bytes()).is_none() {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' || c == '\n' {
            let kept = out.trim_end_matches([' ', '\t']).len();
            out.truncate(kept);
            while chars.next_if(|&c| is_lws(c)).is_some() {}
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uri::{Host, SipUri};

    /// Test messages are written with `\n` for readability; the wire uses CRLF.
    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    /// Head (written with `\n`) + Content-Length computed from `body`.
    fn with_body(head: &str, body: &[u8]) -> Vec<u8> {
        let mut v = crlf(head);
        v.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        v.extend_from_slice(body);
        v
    }

    fn ok(raw: &[u8]) -> Message<'_> {
        match parse_datagram(raw) {
            Ok(m) => m,
            Err(e) => panic!("{e:?} parsing {:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn reject(raw: &[u8], needle: &str) -> Invalid {
        match parse_datagram(raw) {
            Err(ParseError::Invalid(e)) => {
                assert!(
                    e.reason.contains(needle),
                    "reason {:?} lacks {needle:?}",
                    e.reason
                );
                e
            }
            other => panic!("expected Invalid({needle}), got {other:?}"),
        }
    }

    const SDP: &str = "v=0\r\no=dave 2890 2890 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

    #[test]
    fn invite_with_sdp() {
        let raw = with_body(
            "INVITE sip:erin@pbx.lab.example SIP/2.0\n\
             Via: SIP/2.0/UDP 198.51.100.7:5066;branch=z9hG4bK-lab-0001;rport\n\
             Max-Forwards: 69\n\
             From: \"Dave Q\" <sip:dave@lab.example>;tag=dq-77\n\
             To: <sip:erin@pbx.lab.example>\n\
             Call-ID: 5f1e-lab-0001@198.51.100.7\n\
             CSeq: 12 INVITE\n\
             Contact: <sip:dave@198.51.100.7:5066;transport=udp>\n\
             Content-Type: application/sdp\n",
            SDP.as_bytes(),
        );
        let m = ok(&raw);
        assert!(m.is_request());
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.code(), None);
        assert_eq!(
            m.start(),
            StartLine::Request {
                method: Method::Invite,
                method_name: "INVITE",
                uri: "sip:erin@pbx.lab.example"
            }
        );
        assert_eq!(m.headers().len(), 9);
        let via = m.top_via().unwrap();
        assert_eq!(via.transport, "UDP");
        assert_eq!(via.host, "198.51.100.7");
        assert_eq!(via.port, Some(5066));
        assert_eq!(via.branch, Some("z9hG4bK-lab-0001"));
        assert_eq!(via.rport, Some(None));
        assert_eq!(via.received, None);
        assert_eq!(via.params, ";branch=z9hG4bK-lab-0001;rport");
        assert_eq!(m.max_forwards(), Some(69));
        let from = m.from().unwrap();
        assert_eq!(from.display, Some("Dave Q"));
        assert_eq!(from.uri, "sip:dave@lab.example");
        assert_eq!(from.tag(), Some("dq-77"));
        let to = m.to().unwrap();
        assert_eq!(to.uri, "sip:erin@pbx.lab.example");
        assert_eq!(to.tag(), None);
        assert_eq!(m.call_id(), Some("5f1e-lab-0001@198.51.100.7"));
        assert_eq!(
            m.cseq(),
            Some(CSeq {
                seq: 12,
                method: Method::Invite,
                method_name: "INVITE"
            })
        );
        let contact = m.contact().unwrap();
        let cu = contact.sip_uri().unwrap();
        assert_eq!(cu.host, Host::V4([198, 51, 100, 7].into()));
        assert_eq!(cu.port, Some(5066));
        assert_eq!(cu.param("transport"), Some(Some("udp")));
        assert_eq!(m.header(HeaderName::ContentType), Some("application/sdp"));
        assert_eq!(m.content_length(), Some(SDP.len()));
        assert_eq!(m.body(), SDP.as_bytes());
        assert_eq!(m.expires(), None);
    }

    #[test]
    fn register_with_contact_expires() {
        let raw = with_body(
            "REGISTER sip:lab.example SIP/2.0\n\
             Via: SIP/2.0/TCP 192.0.2.44:5062;branch=z9hG4bKreg9\n\
             Max-Forwards: 70\n\
             From: Carol <sip:carol@lab.example>;tag=c4r0l\n\
             To: Carol <sip:carol@lab.example>\n\
             Call-ID: reg-carol-1\n\
             CSeq: 3 REGISTER\n\
             Contact: <sip:carol@192.0.2.44:5062;transport=tcp>;expires=1800;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>\"\n\
             Expires: 3600\n",
            b"",
        );
        let m = ok(&raw);
        assert_eq!(m.method(), Some(Method::Register));
        let c = m.contact().unwrap();
        assert!(!c.star);
        assert_eq!(c.display, None);
        assert_eq!(c.param("expires"), Some(Some("1800")));
        assert_eq!(c.param("EXPIRES"), Some(Some("1800")));
        assert_eq!(
            c.param("+sip.instance"),
            Some(Some("\"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>\""))
        );
        let u = c.sip_uri().unwrap();
        assert_eq!(u.user, Some("carol"));
        assert_eq!(u.host_raw, "192.0.2.44");
        assert_eq!(u.params, ";transport=tcp");
        assert_eq!(m.expires(), Some(3600));
        assert_eq!(m.cseq().unwrap().method, Method::Register);
        assert_eq!(m.top_via().unwrap().transport, "TCP");
        assert!(m.body().is_empty());
        assert_eq!(m.content_length(), Some(0));
    }

    #[test]
    fn register_star_contact() {
        let raw = with_body(
            "REGISTER sip:lab.example SIP/2.0\n\
             Via: SIP/2.0/UDP 192.0.2.44;branch=z9hG4bKunreg\n\
             From: <sip:carol@lab.example>;tag=u1\n\
             To: <sip:carol@lab.example>\n\
             Call-ID: reg-carol-1\n\
             CSeq: 4 REGISTER\n\
             Contact: *\n\
             Expires: 0\n",
            b"",
        );
        let m = ok(&raw);
        let c = m.contact().unwrap();
        assert!(c.star);
        assert_eq!(c.uri, "*");
        assert_eq!(m.expires(), Some(0));
        assert_eq!(m.top_via().unwrap().port, None);
        assert_eq!(m.max_forwards(), None);
    }

    const RESP_HEAD: &str = "Via: SIP/2.0/UDP 198.51.100.7:5066;branch=z9hG4bK-lab-0001;received=203.0.113.9;rport=61000\n\
         From: \"Dave Q\" <sip:dave@lab.example>;tag=dq-77\n\
         To: <sip:erin@pbx.lab.example>;tag=e-555\n\
         Call-ID: 5f1e-lab-0001@198.51.100.7\n\
         CSeq: 12 INVITE\n";

    fn response(status: &str, extra: &str, body: &[u8]) -> Vec<u8> {
        with_body(&format!("{status}\n{RESP_HEAD}{extra}"), body)
    }

    #[test]
    fn response_100_trying() {
        let raw = response("SIP/2.0 100 Trying", "", b"");
        let m = ok(&raw);
        assert!(!m.is_request());
        assert_eq!(m.method(), None);
        assert_eq!(m.code(), Some(100));
        assert_eq!(
            m.start(),
            StartLine::Response {
                code: 100,
                reason: "Trying"
            }
        );
        let via = m.top_via().unwrap();
        assert_eq!(via.received, Some("203.0.113.9"));
        assert_eq!(via.rport, Some(Some(61000)));
        assert_eq!(m.to().unwrap().tag(), Some("e-555"));
        assert_eq!(m.cseq().unwrap().seq, 12);
    }

    #[test]
    fn response_180_with_record_route() {
        let raw = response(
            "SIP/2.0 180 Ringing",
            "Record-Route: <sip:edge1.lab.example;lr>, <sip:10.0.0.2;lr;transport=tcp>\n\
             Record-Route: <sip:core.lab.example;lr>\n\
             Contact: <sip:erin@203.0.113.20>\n",
            b"",
        );
        let m = ok(&raw);
        assert_eq!(m.code(), Some(180));
        let rr: Vec<_> = m.record_routes().map(|n| n.uri).collect();
        assert_eq!(
            rr,
            [
                "sip:edge1.lab.example;lr",
                "sip:10.0.0.2;lr;transport=tcp",
                "sip:core.lab.example;lr"
            ]
        );
        assert!(
            m.record_routes()
                .all(|n| n.sip_uri().unwrap().is_loose_route())
        );
        assert_eq!(m.routes().count(), 0);
    }

    #[test]
    fn response_200_with_sdp() {
        let raw = response(
            "SIP/2.0 200 OK",
            "Contact: <sip:erin@203.0.113.20:5080>\nContent-Type: application/sdp\n",
            SDP.as_bytes(),
        );
        let m = ok(&raw);
        assert_eq!(m.code(), Some(200));
        assert_eq!(m.contact().unwrap().uri, "sip:erin@203.0.113.20:5080");
        assert_eq!(m.body(), SDP.as_bytes());
    }

    #[test]
    fn response_401_and_407_with_challenges() {
        let challenge =
            "Digest realm=\"lab.example\", nonce=\"6f1c2a\", algorithm=MD5, qop=\"auth\"";
        let raw = response(
            "SIP/2.0 401 Unauthorized",
            &format!("WWW-Authenticate: {challenge}\n"),
            b"",
        );
        let m = ok(&raw);
        assert_eq!(m.code(), Some(401));
        assert_eq!(m.header(HeaderName::WwwAuthenticate), Some(challenge));
        let raw = response(
            "SIP/2.0 407 Proxy Authentication Required",
            &format!("Proxy-Authenticate: {challenge}\n"),
            b"",
        );
        let m = ok(&raw);
        assert_eq!(
            m.start(),
            StartLine::Response {
                code: 407,
                reason: "Proxy Authentication Required"
            }
        );
        assert_eq!(m.header(HeaderName::ProxyAuthenticate), Some(challenge));
        assert_eq!(m.header(HeaderName::WwwAuthenticate), None);
    }

    #[test]
    fn response_503_retry_after() {
        let raw = response("SIP/2.0 503 Service Unavailable", "Retry-After: 120\n", b"");
        let m = ok(&raw);
        assert_eq!(m.code(), Some(503));
        assert_eq!(m.header(HeaderName::RetryAfter), Some("120"));
    }

    #[test]
    fn compact_forms_everywhere() {
        let body = b"v=0\r\n";
        let mut raw = crlf(
            "INVITE sip:frank@lab.example SIP/2.0\n\
             v: SIP/2.0/UDP 192.0.2.5;branch=z9hG4bKcmp1\n\
             i: compact-1@192.0.2.5\n\
             f: <sip:gina@lab.example>;tag=g1\n\
             t: sip:frank@lab.example\n\
             m: <sip:gina@192.0.2.5>\n\
             c: application/sdp\n\
             k: 100rel, timer\n\
             s: lunch\n\
             e: gzip\n\
             o: presence\n\
             r: <sip:hal@lab.example>\n\
             u: dialog\n\
             CSeq: 1 INVITE\n\
             l: 5\n\n",
        );
        raw.extend_from_slice(body);
        let m = ok(&raw);
        assert_eq!(m.call_id(), Some("compact-1@192.0.2.5"));
        assert_eq!(m.from().unwrap().tag(), Some("g1"));
        assert_eq!(m.to().unwrap().uri, "sip:frank@lab.example");
        assert_eq!(m.contact().unwrap().uri, "sip:gina@192.0.2.5");
        assert_eq!(m.top_via().unwrap().branch, Some("z9hG4bKcmp1"));
        assert_eq!(m.content_length(), Some(5));
        assert_eq!(m.body(), body);
        let names: Vec<_> = m.headers().iter().map(|h| h.name).collect();
        use HeaderName as H;
        assert_eq!(
            names,
            [
                H::Via,
                H::CallId,
                H::From,
                H::To,
                H::Contact,
                H::ContentType,
                H::Supported,
                H::Subject,
                H::ContentEncoding,
                H::Event,
                H::ReferTo,
                H::AllowEvents,
                H::CSeq,
                H::ContentLength
            ]
        );
        assert_eq!(m.headers().first().unwrap().raw_name, "v");
        assert_eq!(
            m.values(H::Supported).collect::<Vec<_>>(),
            ["100rel", "timer"]
        );
    }

    #[test]
    fn mixed_case_whitespace_and_lf_only() {
        // LF-only line ends, tabs and spaces on both sides of colons.
        let raw = b"OPTIONS sip:probe@lab.example SIP/2.0\n\
            vIA :  SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKmc\n\
            FROM\t:\t<sip:mon@lab.example>;TAG=m1\n\
            to:<sip:probe@lab.example>\n\
            CALL-id   :mc-1\n\
            cseq:   77 OPTIONS   \n\
            mAX-fORWARDS: 5\n\
            content-LENGTH :0\n\n";
        let m = ok(raw);
        assert_eq!(m.method(), Some(Method::Options));
        assert_eq!(m.top_via().unwrap().host, "192.0.2.9");
        assert_eq!(m.headers().first().unwrap().raw_name, "vIA");
        assert_eq!(m.from().unwrap().tag(), Some("m1"));
        assert_eq!(m.to().unwrap().uri, "sip:probe@lab.example");
        assert_eq!(m.call_id(), Some("mc-1"));
        assert_eq!(m.cseq().unwrap().seq, 77);
        assert_eq!(m.max_forwards(), Some(5));
        assert_eq!(m.content_length(), Some(0));
    }

    #[test]
    fn folded_header_values() {
        let raw = with_body(
            "BYE sip:erin@203.0.113.20 SIP/2.0\n\
             Via: SIP/2.0/UDP\n  198.51.100.7:5066\n\t;branch=z9hG4bKfold\n\
             From: <sip:dave@lab.example>\n   ;tag=dq-77\n\
             To: <sip:erin@pbx.lab.example>;tag=e-555\n\
             Call-ID: 5f1e-lab-0001@198.51.100.7\n\
             CSeq: 13\n BYE\n\
             Subject: a long subject\n  that spans\n\t three lines\n",
            b"",
        );
        let m = ok(&raw);
        let via = m.top_via().unwrap();
        assert_eq!(via.host, "198.51.100.7");
        assert_eq!(via.port, Some(5066));
        assert_eq!(via.branch, Some("z9hG4bKfold"));
        assert_eq!(m.from().unwrap().tag(), Some("dq-77"));
        assert_eq!(m.cseq().unwrap().method, Method::Bye);
        let subject = m.header(HeaderName::Subject).unwrap();
        assert_eq!(subject, "a long subject\r\n  that spans\r\n\t three lines");
        assert_eq!(unfold(subject), "a long subject that spans three lines");
        assert!(matches!(
            unfold("plain value"),
            Cow::Borrowed("plain value")
        ));
        assert_eq!(unfold("a \n\tb\r\n c"), "a b c");
    }

    #[test]
    fn three_vias_two_on_one_line() {
        let raw = with_body(
            "ACK sip:erin@203.0.113.20 SIP/2.0\n\
             Via: SIP/2.0/UDP edge.lab.example;branch=z9hG4bKv1, SIP/2.0/TCP [2001:db8::7]:5070;branch=z9hG4bKv2;received=2001:db8::7\n\
             Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bKv3\n\
             From: <sip:dave@lab.example>;tag=dq-77\n\
             To: <sip:erin@pbx.lab.example>;tag=e-555\n\
             Call-ID: vias-3\n\
             CSeq: 12 ACK\n",
            b"",
        );
        let m = ok(&raw);
        let vias: Vec<_> = m.vias().collect();
        assert_eq!(vias.len(), 3);
        assert_eq!(m.values(HeaderName::Via).count(), 3);
        assert_eq!(vias[0].host, "edge.lab.example");
        assert_eq!(vias[0].branch, Some("z9hG4bKv1"));
        assert_eq!(vias[1].transport, "TCP");
        assert_eq!(vias[1].host, "[2001:db8::7]");
        assert_eq!(vias[1].port, Some(5070));
        assert_eq!(vias[1].received, Some("2001:db8::7"));
        assert_eq!(vias[2].transport, "TLS");
        assert_eq!(vias[2].port, Some(5061));
        assert_eq!(vias[2].branch, Some("z9hG4bKv3"));
        assert_eq!(m.top_via(), Some(vias[0]));
        assert_eq!(m.cseq().unwrap().method, Method::Ack);
    }

    #[test]
    fn ipv6_in_via_and_request_uri() {
        let raw = with_body(
            "INVITE sip:[2001:db8::10]:5070 SIP/2.0\n\
             Via: SIP/2.0/UDP [2001:db8::20];branch=z9hG4bK6\n\
             From: <sip:v6@[2001:db8::20]>;tag=six\n\
             To: <sip:[2001:db8::10]:5070>\n\
             Call-ID: v6@lab\n\
             CSeq: 1 INVITE\n",
            b"",
        );
        let m = ok(&raw);
        let uri = SipUri::parse(m.request_uri().unwrap()).unwrap();
        assert_eq!(uri.host, Host::V6("2001:db8::10".parse().unwrap()));
        assert_eq!(uri.host_raw, "[2001:db8::10]");
        assert_eq!(uri.port, Some(5070));
        assert_eq!(uri.user, None);
        let via = m.top_via().unwrap();
        assert_eq!(via.host, "[2001:db8::20]");
        assert_eq!(via.port, None);
        let from = m.from().unwrap().sip_uri().unwrap();
        assert_eq!(from.user, Some("v6"));
        assert_eq!(from.host, Host::V6("2001:db8::20".parse().unwrap()));
    }

    #[test]
    fn unknown_method_and_headers() {
        let raw = with_body(
            "FROBNICATE sip:gadget@lab.example SIP/2.0\n\
             Via: SIP/2.0/UDP 192.0.2.3;branch=z9hG4bKfrob\n\
             From: <sip:tool@lab.example>;tag=t\n\
             To: <sip:gadget@lab.example>\n\
             Call-ID: frob-1\n\
             CSeq: 9 FROBNICATE\n\
             X-Lab-Scenario: storm-42\n\
             P-Weird.Header!: ~value~\n",
            b"",
        );
        let m = ok(&raw);
        assert_eq!(m.method(), Some(Method::Other));
        assert_eq!(
            m.start(),
            StartLine::Request {
                method: Method::Other,
                method_name: "FROBNICATE",
                uri: "sip:gadget@lab.example"
            }
        );
        let cseq = m.cseq().unwrap();
        assert_eq!(
            (cseq.method, cseq.method_name),
            (Method::Other, "FROBNICATE")
        );
        let x = m
            .headers()
            .iter()
            .find(|h| h.raw_name == "X-Lab-Scenario")
            .unwrap();
        assert_eq!((x.name, x.value), (HeaderName::Other, "storm-42"));
        let p = m
            .headers()
            .iter()
            .find(|h| h.raw_name == "P-Weird.Header!")
            .unwrap();
        assert_eq!((p.name, p.value), (HeaderName::Other, "~value~"));
    }

    #[test]
    fn escaped_user_in_uri() {
        let raw = with_body(
            "MESSAGE sip:%61lice%20smith;ward=3@lab.example;transport=udp?subject=hi%21 SIP/2.0\n\
             Via: SIP/2.0/UDP 192.0.2.3;branch=z9hG4bKesc\n\
             From: <sip:j%40k@lab.example>;tag=t\n\
             To: <sip:%61lice%20smith;ward=3@lab.example>\n\
             Call-ID: esc-1\n\
             CSeq: 1 MESSAGE\n",
            b"",
        );
        let m = ok(&raw);
        let u = SipUri::parse(m.request_uri().unwrap()).unwrap();
        assert_eq!(u.user, Some("%61lice%20smith;ward=3"));
        assert_eq!(u.host, Host::Name("lab.example"));
        assert_eq!(u.params, ";transport=udp");
        assert_eq!(u.headers, "?subject=hi%21");
        assert_eq!(m.from().unwrap().sip_uri().unwrap().user, Some("j%40k"));
    }

    #[test]
    fn empty_reason_phrase() {
        for status in ["SIP/2.0 200 ", "SIP/2.0 200", "sip/2.0 486 "] {
            let raw = response(status, "", b"");
            let m = ok(&raw);
            assert!(
                matches!(m.start(), StartLine::Response { reason: "", .. }),
                "{status}"
            );
        }
    }

    #[test]
    fn leading_crlf_keepalives() {
        let mut raw = b"\r\n\r\n\n".to_vec();
        raw.extend(response("SIP/2.0 200 OK", "", b""));
        let m = ok(&raw);
        assert_eq!(m.code(), Some(200));
        let (m, used) = parse_stream(&raw).unwrap();
        assert_eq!((m.code(), used), (Some(200), raw.len()));
        assert_eq!(
            parse_datagram(b"\r\n\r\n").unwrap_err(),
            invalid("no message, only CRLF keepalive bytes", 4)
        );
        assert_eq!(
            parse_stream(b"\r\n\r\n").unwrap_err(),
            ParseError::Incomplete
        );
    }

    #[test]
    fn binary_body() {
        let body: Vec<u8> = (0..=255u8).rev().chain([0, 0, 13, 10, 13, 10]).collect();
        let raw = response(
            "SIP/2.0 200 OK",
            "Content-Type: application/octet-stream\n",
            &body,
        );
        let m = ok(&raw);
        assert_eq!(m.body(), &body[..]);
        let (m, used) = parse_stream(&raw).unwrap();
        assert_eq!(m.body(), &body[..]);
        assert_eq!(used, raw.len());
    }

    #[test]
    fn parse_into_a_reused_message() {
        let invite = b"INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
            Call-ID: one@h\r\nCSeq: 7 INVITE\r\nContent-Length: 3\r\n\r\nabc";
        let ok = b"SIP/2.0 200 OK\r\nCall-ID: two@h\r\nCSeq: 8 BYE\r\n\r\n";
        let buffers: [&[u8]; 3] = [invite, b"garbage\r\n\r\n", ok];
        let mut m = Message::empty();
        for buf in buffers {
            let fresh = parse_datagram(buf);
            let reused = parse_datagram_into(&mut m, buf);
            assert_eq!(fresh.is_ok(), reused.is_ok());
            match fresh {
                Ok(f) => {
                    assert_eq!(m.headers(), f.headers());
                    assert_eq!((m.call_id(), m.body()), (f.call_id(), f.body()));
                    assert_eq!(m.cseq().map(|c| c.seq), f.cseq().map(|c| c.seq));
                }
                Err(_) => assert!(m.headers().is_empty() && m.call_id().is_none()),
            }
        }
    }

    #[test]
    fn content_length_shorter_than_datagram() {
        let mut raw = response("SIP/2.0 200 OK", "", b"hello");
        raw.extend_from_slice(b" trailing junk\0\xff");
        let m = ok(&raw);
        assert_eq!(m.body(), b"hello");
        let (_, used) = parse_stream(&raw).unwrap();
        assert_eq!(used, raw.len() - 16);
    }

    #[test]
    fn datagram_without_content_length() {
        let mut raw = crlf(&format!("SIP/2.0 202 Accepted\n{RESP_HEAD}\n"));
        raw.extend_from_slice(b"rest of the datagram");
        let m = ok(&raw);
        assert_eq!(m.content_length(), None);
        assert_eq!(m.body(), b"rest of the datagram");
        let e = parse_stream(&raw).unwrap_err();
        assert!(matches!(e, ParseError::Invalid(i) if i.reason.contains("missing Content-Length")));
    }

    #[test]
    fn header_name_table() {
        use HeaderName as H;
        let all = [
            H::Via,
            H::From,
            H::To,
            H::CallId,
            H::CSeq,
            H::Contact,
            H::ContentLength,
            H::ContentType,
            H::MaxForwards,
            H::Route,
            H::RecordRoute,
            H::Authorization,
            H::ProxyAuthorization,
            H::WwwAuthenticate,
            H::ProxyAuthenticate,
            H::Expires,
            H::UserAgent,
            H::Server,
            H::Allow,
            H::Supported,
            H::Require,
            H::RetryAfter,
            H::Event,
            H::Subject,
            H::ReferTo,
            H::AllowEvents,
            H::ContentEncoding,
        ];
        for h in all {
            assert_eq!(H::parse(h.as_str()), h);
            assert_eq!(H::parse(&h.as_str().to_ascii_uppercase()), h);
            assert_eq!(H::parse(&h.as_str().to_ascii_lowercase()), h);
        }
        for (c, h) in [
            ("v", H::Via),
            ("F", H::From),
            ("t", H::To),
            ("I", H::CallId),
            ("m", H::Contact),
            ("L", H::ContentLength),
            ("c", H::ContentType),
            ("k", H::Supported),
            ("s", H::Subject),
            ("e", H::ContentEncoding),
            ("o", H::Event),
            ("r", H::ReferTo),
            ("u", H::AllowEvents),
            ("x", H::Other),
            ("X-Via", H::Other),
            ("", H::Other),
        ] {
            assert_eq!(H::parse(c), h, "{c}");
        }
        for m in [
            "INVITE",
            "ACK",
            "BYE",
            "CANCEL",
            "REGISTER",
            "OPTIONS",
            "INFO",
            "UPDATE",
            "PRACK",
            "SUBSCRIBE",
            "NOTIFY",
            "REFER",
            "MESSAGE",
            "PUBLISH",
        ] {
            assert_eq!(Method::from_token(m).as_str(), m);
        }
        assert_eq!(Method::from_token("invite"), Method::Other);
        assert_eq!(Method::Other.as_str(), "OTHER");
    }

    // ---- invalid messages ----

    const GOOD_HEAD: &str = "Via: SIP/2.0/UDP 192.0.2.3;branch=z9hG4bKbad\n\
         From: <sip:a@lab.example>;tag=1\n\
         To: <sip:b@lab.example>\n\
         Call-ID: bad-1\n\
         CSeq: 1 INVITE\n";

    fn invite(extra: &str) -> Vec<u8> {
        with_body(
            &format!("INVITE sip:b@lab.example SIP/2.0\n{GOOD_HEAD}{extra}"),
            b"",
        )
    }

    #[test]
    fn rejects_bad_version() {
        reject(
            &with_body(
                &format!("INVITE sip:b@lab.example SIP/7.0\n{GOOD_HEAD}"),
                b"",
            ),
            "unsupported SIP version",
        );
        reject(
            &with_body(&format!("SIP/7.0 200 OK\n{GOOD_HEAD}"), b""),
            "unsupported SIP version",
        );
        reject(
            &with_body(
                &format!("INVITE sip:b@lab.example HTTP/1.1\n{GOOD_HEAD}"),
                b"",
            ),
            "malformed request line",
        );
        reject(
            &with_body(
                &format!("INVITE  sip:b@lab.example SIP/2.0\n{GOOD_HEAD}"),
                b"",
            ),
            "malformed request line",
        );
        reject(
            &with_body(&format!("INVITE\n{GOOD_HEAD}"), b""),
            "malformed request line",
        );
        reject(
            &with_body(&format!("INV@TE sip:b SIP/2.0\n{GOOD_HEAD}"), b""),
            "illegal character in method",
        );
    }

    #[test]
    fn rejects_status_out_of_range() {
        let e = reject(
            &with_body(&format!("SIP/2.0 99 Too Low\n{GOOD_HEAD}"), b""),
            "status code out of range",
        );
        assert_eq!(e.offset, 8);
        reject(
            &with_body(&format!("SIP/2.0 700 Too High\n{GOOD_HEAD}"), b""),
            "status code out of range",
        );
        reject(
            &with_body(&format!("SIP/2.0 2x0 Huh\n{GOOD_HEAD}"), b""),
            "status code is not a number",
        );
    }

    #[test]
    fn rejects_missing_colon() {
        let raw = invite("Subject lunch today\n");
        let e = reject(&raw, "without a colon");
        assert_eq!(raw.get(e.offset..e.offset + 7), Some(&b"Subject"[..]));
    }

    #[test]
    fn rejects_space_in_header_name() {
        let raw = invite("Max Forwards: 70\n");
        let e = reject(&raw, "illegal character in header name");
        assert_eq!(raw.get(e.offset), Some(&b' '));
        reject(&invite(": novalue\n"), "empty header name");
        reject(
            &with_body(
                &format!("INVITE sip:b@lab.example SIP/2.0\n  folded\n{GOOD_HEAD}"),
                b"",
            ),
            "continuation line before the first header",
        );
    }

    fn without(line_prefix: &str) -> Vec<u8> {
        let head: String = GOOD_HEAD
            .lines()
            .filter(|l| !l.starts_with(line_prefix))
            .map(|l| format!("{l}\n"))
            .collect();
        with_body(&format!("INVITE sip:b@lab.example SIP/2.0\n{head}"), b"")
    }

    #[test]
    fn rejects_missing_mandatory_headers() {
        reject(&without("Call-ID"), "missing Call-ID");
        reject(&without("CSeq"), "missing CSeq");
        reject(&without("Via"), "missing Via");
        reject(&without("From"), "missing From");
        reject(&without("To"), "missing To");
        reject(&invite("Call-ID: second\n"), "duplicate Call-ID");
        reject(
            &with_body(
                &format!(
                    "SIP/2.0 200 OK\n{}",
                    "Via: SIP/2.0/UDP h\nFrom: <sip:a@b>\nTo: <sip:a@b>\nCSeq: 1 INVITE\n"
                ),
                b"",
            ),
            "missing Call-ID",
        );
    }

    #[test]
    fn rejects_cseq_problems() {
        let mismatch = with_body(&format!("BYE sip:b@lab.example SIP/2.0\n{GOOD_HEAD}"), b"");
        reject(&mismatch, "CSeq method does not match");
        let big = with_body(
            &format!(
                "INVITE sip:b@lab.example SIP/2.0\n{}CSeq: 4294967296 INVITE\n",
                GOOD_HEAD.replace("CSeq: 1 INVITE\n", "")
            ),
            b"",
        );
        reject(&big, "CSeq number out of range");
        let max = with_body(
            &format!(
                "INVITE sip:b@lab.example SIP/2.0\n{}CSeq: 4294967295 INVITE\n",
                GOOD_HEAD.replace("CSeq: 1 INVITE\n", "")
            ),
            b"",
        );
        assert_eq!(ok(&max).cseq().unwrap().seq, u32::MAX);
        let junk = with_body(
            &format!(
                "INVITE sip:b@lab.example SIP/2.0\n{}CSeq: INVITE 1\n",
                GOOD_HEAD.replace("CSeq: 1 INVITE\n", "")
            ),
            b"",
        );
        reject(&junk, "malformed CSeq");
    }

    #[test]
    fn rejects_content_length_problems() {
        let raw = crlf(&format!(
            "INVITE sip:b@lab.example SIP/2.0\n{GOOD_HEAD}Content-Length: 10\n\nshort"
        ));
        reject(&raw, "Content-Length larger than the datagram");
        assert_eq!(parse_stream(&raw).unwrap_err(), ParseError::Incomplete);

        let neg = crlf(&format!(
            "INVITE sip:b@lab.example SIP/2.0\n{GOOD_HEAD}Content-Length: -3\n\n"
        ));
        reject(&neg, "non-negative integer");
        let conflict = crlf(&format!(
            "INVITE sip:b@lab.example SIP/2.0\n{GOOD_HEAD}Content-Length: 0\nl: 2\n\nab"
        ));
        reject(&conflict, "conflicting Content-Length");
        let same = crlf(&format!(
            "INVITE sip:b@lab.example SIP/2.0\n{GOOD_HEAD}Content-Length: 2\nl: 02\n\nab"
        ));
        assert_eq!(ok(&same).body(), b"ab");
        let huge = crlf(&format!(
            "INVITE sip:b@lab.example SIP/2.0\n{GOOD_HEAD}Content-Length: 65536\n\n"
        ));
        reject(&huge, "larger than MAX_MESSAGE");
        let overflow = crlf(&format!(
            "INVITE sip:b@lab.example SIP/2.0\n{GOOD_HEAD}Content-Length: 99999999999999999999999\n\n"
        ));
        reject(&overflow, "larger than MAX_MESSAGE");
        assert!(matches!(parse_stream(&huge), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn rejects_too_many_headers() {
        let extra: String = (0..MAX_HEADERS - 5)
            .map(|i| format!("X-Pad-{i}: {i}\n"))
            .collect();
        // 5 mandatory + 59 padding = 64 header lines, then Content-Length is the 65th.
        reject(&invite(&extra), "too many headers");
        let fewer: String = (0..MAX_HEADERS - 6)
            .map(|i| format!("X-Pad-{i}: {i}\n"))
            .collect();
        assert_eq!(ok(&invite(&fewer)).headers().len(), MAX_HEADERS);
    }

    #[test]
    fn rejects_nul_and_non_utf8() {
        let mut raw = invite("Subject: nul\0here\n");
        let e = reject(&raw, "NUL");
        assert_eq!(raw.get(e.offset), Some(&0));
        raw = invite("Subject: caf\u{e9}\n");
        assert_eq!(ok(&raw).header(HeaderName::Subject), Some("caf\u{e9}"));
        let at = raw.iter().position(|&b| b == 0xc3).unwrap();
        raw[at] = 0xff;
        let e = reject(&raw, "not UTF-8");
        assert_eq!(e.offset, at);
        reject(
            b"INVITE sip:\xff@x SIP/2.0\r\n\r\n",
            "start line is not UTF-8",
        );
    }

    #[test]
    fn long_messages_beyond_the_validated_prefix() {
        // Headers past VALIDATED_PREFIX take the per-header validation path;
        // it must accept and reject exactly what the fast path does.
        let pad: String = (0..30)
            .map(|i| format!("X-Pad-{i:02}: {}\n", "p".repeat(60)))
            .collect();
        for shift in 0..8 {
            let raw = invite(&format!(
                "{pad}X-Shift: {}\nSubject: caf\u{e9} \u{2603} ok\n",
                "s".repeat(shift)
            ));
            assert!(raw.len() > VALIDATED_PREFIX + 100);
            let m = ok(&raw);
            assert_eq!(m.header(HeaderName::Subject), Some("caf\u{e9} \u{2603} ok"));
            assert_eq!(parse_stream(&raw).unwrap().1, raw.len());
        }
        // A multi-byte character straddling the prefix boundary.
        for shift in 0..4 {
            let head = format!("INVITE sip:b@lab.example SIP/2.0\n{GOOD_HEAD}X-Fill: ");
            let fill = VALIDATED_PREFIX - crlf(&head).len() - 1 - shift;
            let raw = invite(&format!("X-Fill: {}\u{2603}\n", "f".repeat(fill)));
            let m = ok(&raw);
            assert!(
                m.headers().iter().any(|h| h.value.ends_with('\u{2603}')),
                "shift {shift}"
            );
        }
        let mut bad = invite(&format!("{pad}Subject: caf\u{e9}\n"));
        let at = bad.iter().rposition(|&b| b == 0xc3).unwrap();
        assert!(at > VALIDATED_PREFIX);
        bad[at] = 0xff;
        assert_eq!(reject(&bad, "not UTF-8").offset, at);
        let nul = invite(&format!("{pad}Subject: a\0b\n"));
        let e = reject(&nul, "NUL");
        assert_eq!(nul.get(e.offset), Some(&0));
        assert!(e.offset > VALIDATED_PREFIX);
    }

    #[test]
    fn missing_blank_line() {
        let raw = crlf(&format!(
            "INVITE sip:b@lab.example SIP/2.0\n{GOOD_HEAD}Content-Length: 0\n"
        ));
        reject(&raw, "missing blank line");
        assert_eq!(parse_stream(&raw).unwrap_err(), ParseError::Incomplete);
        reject(
            b"INVITE sip:b@lab.example SIP/2.0",
            "start line not terminated",
        );
    }

    #[test]
    fn oversized_inputs() {
        let big = vec![b'a'; MAX_MESSAGE + 1];
        reject(&big, "larger than MAX_MESSAGE");
        assert!(matches!(parse_stream(&big), Err(ParseError::Invalid(_))));
        assert_eq!(
            parse_stream(&big[..100]).unwrap_err(),
            ParseError::Incomplete
        );
        let mut pad = invite(&format!("X-Big: {}\n", "z".repeat(MAX_MESSAGE)));
        assert!(matches!(parse_stream(&pad), Err(ParseError::Invalid(_))));
        pad.truncate(MAX_MESSAGE - 10);
        assert_eq!(parse_stream(&pad).unwrap_err(), ParseError::Incomplete);
    }

    // ---- streams ----

    #[test]
    fn stream_split_at_every_byte() {
        let raw = with_body(
            "INVITE sip:erin@pbx.lab.example SIP/2.0\n\
             Via: SIP/2.0/TCP 198.51.100.7:5066;branch=z9hG4bKsplit\n\
             From: <sip:dave@lab.example>;tag=s\n\
             To: <sip:erin@pbx.lab.example>\n\
             Call-ID: split-1\n\
             CSeq: 1\n INVITE\n",
            SDP.as_bytes(),
        );
        for cut in 0..raw.len() {
            assert_eq!(
                parse_stream(&raw[..cut]).unwrap_err(),
                ParseError::Incomplete,
                "cut at {cut}"
            );
        }
        let (m, used) = parse_stream(&raw).unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(m.body(), SDP.as_bytes());
        let mut longer = raw.clone();
        longer.extend_from_slice(b"INVITE sip:next");
        assert_eq!(parse_stream(&longer).unwrap().1, raw.len());
    }

    #[test]
    fn stream_back_to_back() {
        let a = response("SIP/2.0 180 Ringing", "", b"");
        let b = response("SIP/2.0 200 OK", "Content-Type: text/plain\n", b"done");
        let mut buf = b"\r\n".to_vec();
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&b);
        let (m1, n1) = parse_stream(&buf).unwrap();
        assert_eq!((m1.code(), n1), (Some(180), a.len() + 2));
        let (m2, n2) = parse_stream(&buf[n1..]).unwrap();
        assert_eq!((m2.code(), n2), (Some(200), b.len()));
        assert_eq!(m2.body(), b"done");
        assert_eq!(
            parse_stream(&buf[n1 + n2..]).unwrap_err(),
            ParseError::Incomplete
        );
    }

    #[test]
    fn via_parse_errors() {
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("SIP/2.0 host").is_err());
        assert!(Via::parse("SIP/2.0/UDP host:99999").is_err());
        assert!(Via::parse("SIP/2.0/UDP [::1").is_err());
        assert!(Via::parse("SIP/2.0/UDP host junk").is_err());
        let v = Via::parse("SIP / 2.0 / UDP host : 5060 ;branch=x").unwrap();
        assert_eq!(
            (v.transport, v.host, v.port, v.branch),
            ("UDP", "host", Some(5060), Some("x"))
        );
        assert_eq!(param(";a=1;B=2;c", "b"), Some(Some("2")));
        assert_eq!(param(";a=1;B=2;c", "c"), Some(None));
        assert_eq!(param(";a=1;B=2;c", "d"), None);
    }

    mod props {
        use super::*;
        use crate::builder::write_response;
        use crate::uri::SipUri;
        use proptest::prelude::*;
        use proptest::sample::{Index, select};

        /// Touches every accessor so a panic anywhere in them is found.
        fn exercise(m: &Message<'_>) {
            let _ = (m.start(), m.is_request(), m.method(), m.code(), m.body());
            let _ = (
                m.call_id(),
                m.cseq(),
                m.top_via(),
                m.expires(),
                m.content_length(),
                m.max_forwards(),
            );
            for h in m.headers() {
                let _ = unfold(h.value);
                let _ = HeaderName::parse(h.raw_name).as_str();
            }
            for name in [
                HeaderName::Via,
                HeaderName::Contact,
                HeaderName::Route,
                HeaderName::Other,
            ] {
                let _ = m.values(name).count();
            }
            let _ = m.vias().count();
            for na in [m.from(), m.to(), m.contact()]
                .into_iter()
                .flatten()
                .chain(m.routes())
                .chain(m.record_routes())
            {
                let _ = (na.tag(), na.param("expires"));
                if let Ok(u) = na.sip_uri() {
                    let _ = (u.param("transport"), u.is_loose_route());
                }
            }
            if let Some(uri) = m.request_uri() {
                let _ = SipUri::parse(uri);
            }
        }

        fn seeds() -> Vec<Vec<u8>> {
            vec![
                with_body(
                    "INVITE sip:erin@pbx.lab.example SIP/2.0\n\
                     Via: SIP/2.0/UDP a.lab.example;branch=z9hG4bK1, SIP/2.0/TCP [2001:db8::7]:5070;branch=z9hG4bK2;rport\n\
                     Record-Route: <sip:p1.lab.example;lr>, \"x, y\" <sip:p2;lr>\n\
                     From: \"Dave\" <sip:dave@lab.example>;tag=dq\n\
                     To: sip:erin@pbx.lab.example\n\
                     Call-ID: seed-1\n\
                     CSeq: 1\n INVITE\n\
                     Contact: <sip:dave@198.51.100.7:5066>;expires=60\n",
                    SDP.as_bytes(),
                ),
                crlf(&format!("SIP/2.0 200 OK\n{RESP_HEAD}Route: <sip:[::1]:5060;lr>\nl: 3\n\nabc")),
                b"\r\nREGISTER sip:lab.example SIP/2.0\nv: SIP/2.0/UDP h;branch=b\nf: <sip:a@b>;tag=1\nt: <sip:a@b>\ni: c\nCSeq: 2 REGISTER\nm: *\nExpires: 0\n\n".to_vec(),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
                if let Ok(m) = parse_datagram(&bytes) {
                    exercise(&m);
                }
                if let Ok((m, n)) = parse_stream(&bytes) {
                    prop_assert!(n <= bytes.len());
                    exercise(&m);
                }
                let text = String::from_utf8_lossy(&bytes);
                let _ = (SipUri::parse(&text), NameAddr::parse(&text), Via::parse(&text), CSeq::parse(&text), unfold(&text));
            }

            #[test]
            fn sip_flavoured_text_never_panics(text in "[a-zA-Z0-9:;@<>\"\\\\\\[\\]=?%,. \t\r\n*/+~-]{0,120}") {
                let _ = (SipUri::parse(&text), NameAddr::parse(&text), Via::parse(&text), CSeq::parse(&text), unfold(&text));
                let raw = format!("OPTIONS {text} SIP/2.0\r\nVia: {text}\r\nf: {text}\r\nt: {text}\r\ni: x\r\nCSeq: 1 OPTIONS\r\nm: {text}\r\nRoute: {text}\r\n\r\n");
                if let Ok(m) = parse_datagram(raw.as_bytes()) {
                    exercise(&m);
                }
            }

            /// Mutated real messages reach far deeper than random bytes; any
            /// request that still parses must give a response that parses.
            #[test]
            fn mutated_messages(seed in select(seeds()), edits in proptest::collection::vec((any::<Index>(), any::<u8>()), 0..6), cut in any::<Index>(), truncate in any::<bool>()) {
                let mut raw = seed;
                for (at, byte) in edits {
                    let i = at.index(raw.len());
                    raw[i] = byte;
                }
                if truncate {
                    raw.truncate(cut.index(raw.len() + 1));
                }
                if let Ok((m, n)) = parse_stream(&raw) {
                    prop_assert!(n <= raw.len());
                    exercise(&m);
                }
                if let Ok(m) = parse_datagram(&raw) {
                    exercise(&m);
                    let mut out = Vec::new();
                    write_response(&mut out, &m, 200, "OK", Some("t1"), &[("X-A", "b")], b"x");
                    let r = parse_datagram(&out);
                    prop_assert!(r.is_ok(), "{:?} from {:?}", r, String::from_utf8_lossy(&out));
                    let r = r.unwrap();
                    prop_assert_eq!(r.call_id(), m.call_id());
                    prop_assert_eq!(r.cseq(), m.cseq());
                    prop_assert_eq!(r.values(HeaderName::Via).collect::<Vec<_>>(), m.values(HeaderName::Via).collect::<Vec<_>>());
                }
            }
        }

        const LONG: [&str; 8] = [
            "Via",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "Max-Forwards",
            "Contact",
            "Content-Length",
        ];
        const COMPACT: [Option<&str>; 8] = [
            Some("v"),
            Some("f"),
            Some("t"),
            Some("i"),
            None,
            None,
            Some("m"),
            Some("l"),
        ];

        #[derive(Debug, Clone)]
        struct Gen {
            method: &'static str,
            call_id: String,
            branch: String,
            from_tag: String,
            to_tag: Option<String>,
            seq: u32,
            max_forwards: u32,
            user: String,
            host: String,
            port: Option<u16>,
            order: Vec<usize>,
            compact: u8,
            case_mask: u64,
            lf_only: bool,
            pad: (usize, usize),
            body: Vec<u8>,
        }

        fn gen_strategy() -> impl Strategy<Value = Gen> {
            let ids = (
                select(vec![
                    "INVITE",
                    "REGISTER",
                    "OPTIONS",
                    "BYE",
                    "INFO",
                    "NOTIFY",
                    "X-LAB-PING",
                ]),
                "[A-Za-z0-9.!%*_+~-]{1,30}(@[a-z0-9.-]{1,15})?",
                "z9hG4bK[A-Za-z0-9.!~*_-]{1,20}",
                "[A-Za-z0-9.~_-]{1,16}",
                proptest::option::of("[A-Za-z0-9]{1,12}"),
                any::<u32>(),
                0u32..=255,
            );
            let shape = (
                "[a-z][a-z0-9_.-]{0,11}",
                "[a-z]{1,10}\\.example",
                proptest::option::of(any::<u16>()),
                Just((0..8).collect::<Vec<usize>>()).prop_shuffle(),
                any::<u8>(),
                any::<u64>(),
                any::<bool>(),
                (0usize..3, 0usize..3),
                proptest::collection::vec(any::<u8>(), 0..64),
            );
            (ids, shape).prop_map(
                |(
                    (method, call_id, branch, from_tag, to_tag, seq, max_forwards),
                    (user, host, port, order, compact, case_mask, lf_only, pad, body),
                )| Gen {
                    method,
                    call_id,
                    branch,
                    from_tag,
                    to_tag,
                    seq,
                    max_forwards,
                    user,
                    host,
                    port,
                    order,
                    compact,
                    case_mask,
                    lf_only,
                    pad,
                    body,
                },
            )
        }

        fn render(g: &Gen) -> Vec<u8> {
            let eol = if g.lf_only { "\n" } else { "\r\n" };
            let port = g.port.map(|p| format!(":{p}")).unwrap_or_default();
            let to_tag = g
                .to_tag
                .as_ref()
                .map(|t| format!(";tag={t}"))
                .unwrap_or_default();
            let values = [
                format!("SIP/2.0/UDP {}{port};branch={};rport", g.host, g.branch),
                format!("<sip:{}@{}>;tag={}", g.user, g.host, g.from_tag),
                format!("<sip:{}@{}>{to_tag}", g.user, g.host),
                g.call_id.clone(),
                format!("{} {}", g.seq, g.method),
                g.max_forwards.to_string(),
                format!("<sip:{}@{}{port}>", g.user, g.host),
                g.body.len().to_string(),
            ];
            let mut out =
                format!("{} sip:{}@{} SIP/2.0{eol}", g.method, g.user, g.host).into_bytes();
            for (k, &i) in g.order.iter().enumerate() {
                let name = match COMPACT[i] {
                    Some(c) if g.compact & (1 << i) != 0 => c,
                    _ => LONG[i],
                };
                let name: String = name
                    .chars()
                    .enumerate()
                    .map(|(j, c)| {
                        if (g.case_mask >> ((k * 7 + j) % 64)) & 1 == 1 {
                            c.to_ascii_uppercase()
                        } else {
                            c.to_ascii_lowercase()
                        }
                    })
                    .collect();
                out.extend_from_slice(
                    format!(
                        "{name}{}:{}{}{eol}",
                        " ".repeat(g.pad.0),
                        " ".repeat(g.pad.1),
                        values[i]
                    )
                    .as_bytes(),
                );
            }
            out.extend_from_slice(eol.as_bytes());
            out.extend_from_slice(&g.body);
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            #[test]
            fn generated_requests_round_trip(g in gen_strategy()) {
                let raw = render(&g);
                let m = parse_datagram(&raw);
                prop_assert!(m.is_ok(), "{:?} for {:?}", m, String::from_utf8_lossy(&raw));
                let m = m.unwrap();
                prop_assert_eq!(m.method(), Some(Method::from_token(g.method)));
                let ruri = format!("sip:{}@{}", g.user, g.host);
                prop_assert_eq!(m.request_uri(), Some(ruri.as_str()));
                prop_assert_eq!(m.call_id(), Some(g.call_id.as_str()));
                prop_assert_eq!(m.cseq(), Some(CSeq { seq: g.seq, method: Method::from_token(g.method), method_name: g.method }));
                prop_assert_eq!(m.max_forwards(), Some(g.max_forwards));
                let via = m.top_via().unwrap();
                prop_assert_eq!((via.transport, via.host, via.port), ("UDP", g.host.as_str(), g.port));
                prop_assert_eq!((via.branch, via.rport), (Some(g.branch.as_str()), Some(None)));
                prop_assert_eq!(m.vias().count(), 1);
                let from = m.from().unwrap();
                prop_assert_eq!(from.tag(), Some(g.from_tag.as_str()));
                let to = m.to().unwrap();
                prop_assert_eq!(to.tag(), g.to_tag.as_deref());
                let uri = to.sip_uri().unwrap();
                prop_assert_eq!((uri.user, uri.host_raw), (Some(g.user.as_str()), g.host.as_str()));
                let contact = m.contact().unwrap().sip_uri().unwrap();
                prop_assert_eq!(contact.port, g.port);
                prop_assert_eq!(m.content_length(), Some(g.body.len()));
                prop_assert_eq!(m.body(), &g.body[..]);
                prop_assert_eq!(m.headers().len(), 8);
                let (sm, used) = parse_stream(&raw).unwrap();
                prop_assert_eq!(used, raw.len());
                prop_assert_eq!(sm.call_id(), m.call_id());
                // Any strict prefix of a valid stream message is Incomplete.
                let cut = (g.seq as usize) % raw.len();
                prop_assert_eq!(parse_stream(&raw[..cut]).unwrap_err(), ParseError::Incomplete);
            }
        }
    }
}
