//! HTTP Digest authentication as SIP uses it (RFC 2617, RFC 7616 for SHA-256, RFC 3261
//! section 22): parsing and writing challenge values (`WWW-Authenticate` /
//! `Proxy-Authenticate`) and answer values (`Authorization` / `Proxy-Authorization`),
//! computing responses, verifying them on the server side, and HA1 precomputation.
//!
//! What this does NOT do: generate nonces or cnonces (they are passed in), check that a nonce
//! was issued by us, is fresh, or that `nc` increases (replay protection is the server's job:
//! the Call Manager's `cm::auth`), check that `uri` matches the Request-URI or that `realm` is
//! ours, support `auth-int`, the `-sess` algorithms, `userhash` or `username*`, or parse
//! several challenges folded into one header value. Only header *values* are handled; header names and folding across header
//! lines are the SIP parser's business.
//!
//! Values are expected unfolded (the SIP parser replaces line folding by a space); control
//! characters other than HTAB inside quoted strings are refused, and arguments of the `write_*`
//! functions must not contain any, as no header value can carry them.
//!
//! String fields of the parsed structs borrow the text as it stands between the quotes:
//! backslash escapes (quoted-pairs) are *not* undone there, because that would need an
//! allocation, but they are undone when hashing, so a value containing `\"` still verifies.
use md5::Digest as _;

/// The digest hash algorithm. Only the two that SIP equipment actually uses are supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `MD5`, also what an absent `algorithm` parameter means (RFC 2617 3.2.1).
    Md5,
    /// `SHA-256` (RFC 7616).
    Sha256,
}

impl Algorithm {
    /// The token used in the `algorithm` parameter.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses an `algorithm` token, case-insensitively.
    pub fn from_name(name: &str) -> Result<Self, DigestError> {
        if name.eq_ignore_ascii_case("MD5") {
            Ok(Algorithm::Md5)
        } else if name.eq_ignore_ascii_case("SHA-256") {
            Ok(Algorithm::Sha256)
        } else {
            Err(DigestError::UnsupportedAlgorithm {
                name: snippet(name),
            })
        }
    }

    /// Length of the lowercase hex form of this algorithm's hash.
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }
}

/// Why a challenge or authorization value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// The value does not start with the `Digest` scheme (e.g. `Basic`, or empty).
    #[error("authentication scheme {scheme:?} is not Digest")]
    NotDigest {
        /// The scheme found (truncated).
        scheme: String,
    },
    /// An `algorithm` we cannot compute, such as `MD5-sess` or `SHA-512-256`.
    #[error("unsupported digest algorithm {name:?}")]
    UnsupportedAlgorithm {
        /// The algorithm as given (truncated).
        name: String,
    },
    /// A parameter that this kind of header must carry is absent.
    #[error("missing required parameter {name}")]
    MissingParam {
        /// Parameter name.
        name: &'static str,
    },
    /// A parameter we use appears twice; refused because which copy a peer hashed is ambiguous.
    #[error("parameter {name} appears more than once")]
    DuplicateParam {
        /// Parameter name.
        name: &'static str,
    },
    /// A quoted string runs to the end of the value.
    #[error("unterminated quoted string starting at byte {offset}")]
    UnterminatedQuote {
        /// Byte offset of the opening quote.
        offset: usize,
    },
    /// The parameter list does not follow `name=value, name=value`.
    #[error("malformed parameter list at byte {offset}: {reason}")]
    Syntax {
        /// Byte offset where parsing stopped.
        offset: usize,
        /// What was expected there.
        reason: &'static str,
    },
    /// `nc` is not 8 hex digits.
    #[error("invalid nonce count {value:?}: expected 8 hex digits")]
    InvalidNonceCount {
        /// The value as given (truncated).
        value: String,
    },
}

/// A parsed `WWW-Authenticate` / `Proxy-Authenticate` value (`Digest realm=..., nonce=..., ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge<'a> {
    /// Realm, as between the quotes.
    pub realm: &'a str,
    /// Server nonce, as between the quotes.
    pub nonce: &'a str,
    /// Opaque value to echo back, as between the quotes.
    pub opaque: Option<&'a str>,
    /// Hash algorithm; MD5 when the parameter is absent.
    pub algorithm: Algorithm,
    /// The `qop` list contains `auth`. When false the RFC 2069 compatible response (no
    /// cnonce/nc) is used, which is also what we fall back to for an `auth-int`-only offer.
    pub qop_auth: bool,
    /// `stale=true`: the nonce expired but the credentials were right, so retry without
    /// asking the user again.
    pub stale: bool,
}

/// Server side: a parsed `Authorization` / `Proxy-Authorization` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorization<'a> {
    /// User name, as between the quotes.
    pub username: &'a str,
    /// Realm, as between the quotes.
    pub realm: &'a str,
    /// Nonce the client answers, as between the quotes.
    pub nonce: &'a str,
    /// The digest-uri, as between the quotes.
    pub uri: &'a str,
    /// The client's response hash (hex).
    pub response: &'a str,
    /// Hash algorithm; MD5 when the parameter is absent.
    pub algorithm: Algorithm,
    /// The qop the client chose, if any (only `auth` verifies).
    pub qop: Option<&'a str>,
    /// Nonce count, parsed from its 8 hex digits.
    pub nc: Option<u32>,
    /// Client nonce.
    pub cnonce: Option<&'a str>,
    /// Echoed opaque value.
    pub opaque: Option<&'a str>,
}

/// Parses a challenge value. Parameters may be quoted or not, in any order, with any linear
/// whitespace around `=` and `,`; unknown parameters (`domain`, `charset`, ...) are ignored.
pub fn parse_challenge(value: &str) -> Result<Challenge<'_>, DigestError> {
    let mut params = Params::after_scheme(value)?;
    let mut realm = None;
    let mut nonce = None;
    let mut opaque = None;
    let mut algorithm = None;
    let mut qop = None;
    let mut stale = None;
    while let Some((name, v)) = params.next_param()? {
        let slot = if name.eq_ignore_ascii_case("realm") {
            (&mut realm, "realm")
        } else if name.eq_ignore_ascii_case("nonce") {
            (&mut nonce, "nonce")
        } else if name.eq_ignore_ascii_case("opaque") {
            (&mut opaque, "opaque")
        } else if name.eq_ignore_ascii_case("algorithm") {
            (&mut algorithm, "algorithm")
        } else if name.eq_ignore_ascii_case("qop") {
            (&mut qop, "qop")
        } else if name.eq_ignore_ascii_case("stale") {
            (&mut stale, "stale")
        } else {
            continue;
        };
        set_once(slot.0, slot.1, v)?;
    }
    Ok(Challenge {
        realm: realm.ok_or(DigestError::MissingParam { name: "realm" })?,
        nonce: nonce.ok_or(DigestError::MissingParam { name: "nonce" })?,
        opaque,
        algorithm: algorithm.map_or(Ok(Algorithm::Md5), Algorithm::from_name)?,
        qop_auth: qop.is_some_and(|q| {
            q.split(',')
                .any(|item| item.trim().eq_ignore_ascii_case("auth"))
        }),
        stale: stale.is_some_and(|s| s.eq_ignore_ascii_case("true")),
    })
}

/// Writes the `Authorization` / `Proxy-Authorization` value answering `ch` (appending to
/// `out`). `nc` is written as 8 lowercase hex digits; `qop=auth`, `cnonce` and `nc` only when
/// the challenge offered qop `auth`; `opaque` is echoed; `algorithm` is always written.
///
/// `username`, `uri` and `cnonce` are plain text and get escaped as needed; they must not
/// contain control characters.
#[allow(clippy::too_many_arguments)] // mirrors the inputs of the digest computation one to one
pub fn write_authorization(
    out: &mut String,
    ch: &Challenge<'_>,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
) {
    let ha1 = hash(
        ch.algorithm,
        &[
            Part::Plain(username),
            Part::Quoted(ch.realm),
            Part::Plain(password),
        ],
    );
    let ha2 = hash(ch.algorithm, &[Part::Plain(method), Part::Plain(uri)]);
    let nc_hex = NcHex::new(nc);
    let response = if ch.qop_auth {
        hash(
            ch.algorithm,
            &[
                Part::Hex(ha1.as_str()),
                Part::Quoted(ch.nonce),
                Part::Hex(nc_hex.as_str()),
                Part::Plain(cnonce),
                Part::Plain("auth"),
                Part::Hex(ha2.as_str()),
            ],
        )
    } else {
        hash(
            ch.algorithm,
            &[
                Part::Hex(ha1.as_str()),
                Part::Quoted(ch.nonce),
                Part::Hex(ha2.as_str()),
            ],
        )
    };

    out.push_str("Digest username=");
    push_escaped_quoted(out, username);
    out.push_str(", realm=");
    push_raw_quoted(out, ch.realm);
    out.push_str(", nonce=");
    push_raw_quoted(out, ch.nonce);
    out.push_str(", uri=");
    push_escaped_quoted(out, uri);
    out.push_str(", response=");
    push_raw_quoted(out, response.as_str());
    out.push_str(", algorithm=");
    out.push_str(ch.algorithm.name());
    if ch.qop_auth {
        out.push_str(", cnonce=");
        push_escaped_quoted(out, cnonce);
        out.push_str(", qop=auth, nc=");
        out.push_str(nc_hex.as_str());
    }
    if let Some(opaque) = ch.opaque {
        out.push_str(", opaque=");
        push_raw_quoted(out, opaque);
    }
}

/// Parses an `Authorization` / `Proxy-Authorization` value. `username`, `realm`, `nonce`,
/// `uri` and `response` are required, and `nc` and `cnonce` too when `qop` is present.
pub fn parse_authorization(value: &str) -> Result<Authorization<'_>, DigestError> {
    let mut params = Params::after_scheme(value)?;
    let mut username = None;
    let mut realm = None;
    let mut nonce = None;
    let mut uri = None;
    let mut response = None;
    let mut algorithm = None;
    let mut qop = None;
    let mut nc = None;
    let mut cnonce = None;
    let mut opaque = None;
    while let Some((name, v)) = params.next_param()? {
        let slot = if name.eq_ignore_ascii_case("username") {
            (&mut username, "username")
        } else if name.eq_ignore_ascii_case("realm") {
            (&mut realm, "realm")
        } else if name.eq_ignore_ascii_case("nonce") {
            (&mut nonce, "nonce")
        } else if name.eq_ignore_ascii_case("uri") {
            (&mut uri, "uri")
        } else if name.eq_ignore_ascii_case("response") {
            (&mut response, "response")
        } else if name.eq_ignore_ascii_case("algorithm") {
            (&mut algorithm, "algorithm")
        } else if name.eq_ignore_ascii_case("qop") {
            (&mut qop, "qop")
        } else if name.eq_ignore_ascii_case("nc") {
            (&mut nc, "nc")
        } else if name.eq_ignore_ascii_case("cnonce") {
            (&mut cnonce, "cnonce")
        } else if name.eq_ignore_ascii_case("opaque") {
            (&mut opaque, "opaque")
        } else {
            continue;
        };
        set_once(slot.0, slot.1, v)?;
    }
    let nc = nc.map(parse_nc).transpose()?;
    if qop.is_some() {
        if nc.is_none() {
            return Err(DigestError::MissingParam { name: "nc" });
        }
        if cnonce.is_none() {
            return Err(DigestError::MissingParam { name: "cnonce" });
        }
    }
    Ok(Authorization {
        username: username.ok_or(DigestError::MissingParam { name: "username" })?,
        realm: realm.ok_or(DigestError::MissingParam { name: "realm" })?,
        nonce: nonce.ok_or(DigestError::MissingParam { name: "nonce" })?,
        uri: uri.ok_or(DigestError::MissingParam { name: "uri" })?,
        response: response.ok_or(DigestError::MissingParam { name: "response" })?,
        algorithm: algorithm.map_or(Ok(Algorithm::Md5), Algorithm::from_name)?,
        qop,
        nc,
        cnonce,
        opaque,
    })
}

/// Recomputes the response for `method` and `password` and compares it with the client's in
/// constant time. Only checks the arithmetic: nonce validity, realm and uri are the caller's.
pub fn verify(auth: &Authorization<'_>, method: &str, password: &str) -> bool {
    let ha1 = hash(
        auth.algorithm,
        &[
            Part::Quoted(auth.username),
            Part::Quoted(auth.realm),
            Part::Plain(password),
        ],
    );
    verify_inner(auth, method, ha1.as_str())
}

/// Like [`verify`] but from a stored HA1 (hex, either case) instead of the password. A HA1 of
/// the wrong length for `auth.algorithm` never verifies.
pub fn verify_with_ha1(auth: &Authorization<'_>, method: &str, ha1_hex: &str) -> bool {
    let mut lower = HexDigest::empty();
    if ha1_hex.len() != auth.algorithm.hex_len() || !ha1_hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return false;
    }
    // HA1 enters the next hash as text, so its case matters; normalise to what we compute.
    for (dst, src) in lower.buf.iter_mut().zip(ha1_hex.bytes()) {
        *dst = src.to_ascii_lowercase();
    }
    lower.len = ha1_hex.len();
    verify_inner(auth, method, lower.as_str())
}

/// Writes a challenge value: `Digest realm="..", nonce="..", algorithm=.., qop="auth"` and
/// `opaque=".."` when given (appending to `out`). The arguments are plain text.
pub fn write_challenge(
    out: &mut String,
    realm: &str,
    nonce: &str,
    algorithm: Algorithm,
    opaque: Option<&str>,
) {
    out.push_str("Digest realm=");
    push_escaped_quoted(out, realm);
    out.push_str(", nonce=");
    push_escaped_quoted(out, nonce);
    out.push_str(", algorithm=");
    out.push_str(algorithm.name());
    out.push_str(", qop=\"auth\"");
    if let Some(opaque) = opaque {
        out.push_str(", opaque=");
        push_escaped_quoted(out, opaque);
    }
}

/// HA1 = H(username:realm:password) as lowercase hex, so a registrar can store it instead of
/// the password. The arguments are plain text (not escaped).
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    hash(
        algorithm,
        &[
            Part::Plain(username),
            Part::Plain(realm),
            Part::Plain(password),
        ],
    )
    .as_str()
    .to_owned()
}

fn verify_inner(auth: &Authorization<'_>, method: &str, ha1_hex: &str) -> bool {
    let alg = auth.algorithm;
    let ha2 = hash(alg, &[Part::Plain(method), Part::Quoted(auth.uri)]);
    let expected = match auth.qop {
        None => hash(
            alg,
            &[
                Part::Hex(ha1_hex),
                Part::Quoted(auth.nonce),
                Part::Hex(ha2.as_str()),
            ],
        ),
        Some(qop) if qop.eq_ignore_ascii_case("auth") => {
            let (Some(nc), Some(cnonce)) = (auth.nc, auth.cnonce) else {
                return false;
            };
            // The client hashed nc as it sent it; RFC 2617 makes that 8 lowercase hex digits.
            let nc_hex = NcHex::new(nc);
            hash(
                alg,
                &[
                    Part::Hex(ha1_hex),
                    Part::Quoted(auth.nonce),
                    Part::Hex(nc_hex.as_str()),
                    Part::Quoted(cnonce),
                    Part::Plain(qop),
                    Part::Hex(ha2.as_str()),
                ],
            )
        }
        Some(_) => return false,
    };
    constant_time_hex_eq(expected.as_str(), auth.response)
}

/// Compares without an early exit so response timing does not reveal how many leading
/// characters an attacker guessed right. Length is not secret (it follows from the algorithm).
fn constant_time_hex_eq(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | (x ^ y.to_ascii_lowercase()));
    std::hint::black_box(diff) == 0
}

fn parse_nc(v: &str) -> Result<u32, DigestError> {
    if v.len() == 8 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(v, 16).map_err(|_| DigestError::InvalidNonceCount { value: snippet(v) })
    } else {
        Err(DigestError::InvalidNonceCount { value: snippet(v) })
    }
}

fn set_once<'a>(
    slot: &mut Option<&'a str>,
    name: &'static str,
    v: &'a str,
) -> Result<(), DigestError> {
    if slot.replace(v).is_some() {
        Err(DigestError::DuplicateParam { name })
    } else {
        Ok(())
    }
}

/// Error messages carry offending input; cap it so hostile input cannot blow up log lines.
fn snippet(s: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut out: String = s.chars().take(MAX_CHARS).collect();
    if s.chars().nth(MAX_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn push_escaped_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

fn push_raw_quoted(out: &mut String, s: &str) {
    out.push('"');
    out.push_str(s);
    out.push('"');
}

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Control characters other than HTAB, which RFC 3261 qdtext leaves out.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// RFC 2616 token characters (for scheme and parameter names).
fn is_token(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
}

/// Cursor over `name=value` pairs.
struct Params<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Params<'a> {
    /// Checks and skips the `Digest` scheme.
    fn after_scheme(s: &'a str) -> Result<Self, DigestError> {
        let mut p = Params { s, pos: 0 };
        p.skip_lws();
        let start = p.pos;
        p.skip_while(is_token);
        let scheme = p.slice(start, p.pos)?;
        let followed_ok = p.peek().is_none_or(is_lws);
        if !scheme.eq_ignore_ascii_case("Digest") || !followed_ok {
            let end = s
                .bytes()
                .skip(start)
                .position(is_lws)
                .map_or(s.len(), |n| start + n);
            return Err(DigestError::NotDigest {
                scheme: snippet(s.get(start..end).unwrap_or_default()),
            });
        }
        Ok(p)
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_while(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
    }

    fn skip_lws(&mut self) {
        self.skip_while(is_lws);
    }

    fn slice(&self, start: usize, end: usize) -> Result<&'a str, DigestError> {
        // Boundaries are always next to ASCII delimiters, so this only fails on a logic error;
        // report it as a syntax error rather than panicking on network input.
        self.s.get(start..end).ok_or(DigestError::Syntax {
            offset: start,
            reason: "not on a character boundary",
        })
    }

    fn syntax(&self, reason: &'static str) -> DigestError {
        DigestError::Syntax {
            offset: self.pos,
            reason,
        }
    }

    /// The next pair, `None` at the end. Empty list elements (`a=1,,b=2`) are allowed, as the
    /// `#rule` of RFC 2616 says.
    fn next_param(&mut self) -> Result<Option<(&'a str, &'a str)>, DigestError> {
        self.skip_while(|b| is_lws(b) || b == b',');
        if self.peek().is_none() {
            return Ok(None);
        }
        let name_start = self.pos;
        self.skip_while(is_token);
        if self.pos == name_start {
            return Err(self.syntax("expected a parameter name"));
        }
        let name = self.slice(name_start, self.pos)?;
        self.skip_lws();
        if self.peek() != Some(b'=') {
            return Err(self.syntax("expected '=' after the parameter name"));
        }
        self.pos += 1;
        self.skip_lws();
        let value = if self.peek() == Some(b'"') {
            let open = self.pos;
            self.pos += 1;
            let start = self.pos;
            loop {
                match self.peek() {
                    None => return Err(DigestError::UnterminatedQuote { offset: open }),
                    Some(b'"') => break,
                    // Values are echoed into our own headers, so a CR, LF or NUL here could
                    // inject header lines; the SIP layer has unfolded lines before this.
                    Some(b) if is_ctl(b) => {
                        return Err(self.syntax("control character in quoted string"));
                    }
                    // quoted-pair: whatever follows is literal, including a quote.
                    Some(b'\\') => self.pos += 2,
                    Some(_) => self.pos += 1,
                }
            }
            let v = self.slice(start, self.pos)?;
            self.pos += 1;
            v
        } else {
            // Unquoted values are meant to be tokens, but servers send base64 nonces and the
            // like unquoted, so accept any visible ASCII but the characters that would change
            // meaning once the value is echoed inside quotes.
            let start = self.pos;
            self.skip_while(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'"' | b'\\'));
            if self.pos == start {
                return Err(self.syntax("expected a parameter value"));
            }
            self.slice(start, self.pos)?
        };
        self.skip_lws();
        match self.peek() {
            None => {}
            Some(b',') => self.pos += 1,
            Some(_) => return Err(self.syntax("expected ',' between parameters")),
        }
        Ok(Some((name, value)))
    }
}

/// One input to a hash, joined to the next by ':'.
enum Part<'a> {
    /// Caller-supplied text, hashed as is.
    Plain(&'a str),
    /// Text from inside a quoted-string on the wire; quoted-pairs are undone before hashing.
    Quoted(&'a str),
    /// An intermediate hex digest or nc (never escaped).
    Hex(&'a str),
}

/// A lowercase hex digest on the stack; responses are computed per request.
struct HexDigest {
    buf: [u8; 64],
    len: usize,
}

impl HexDigest {
    fn empty() -> Self {
        HexDigest {
            buf: [0; 64],
            len: 0,
        }
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let mut h = HexDigest::empty();
        for (pair, byte) in h.buf.chunks_exact_mut(2).zip(bytes) {
            if let [hi, lo] = pair {
                *hi = hex_digit(byte >> 4);
                *lo = hex_digit(byte & 0x0f);
                h.len += 2;
            }
        }
        h
    }

    fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

fn hex_digit(n: u8) -> u8 {
    if n < 10 { b'0' + n } else { b'a' + (n - 10) }
}

/// `nc` as 8 lowercase hex digits, without allocating.
struct NcHex([u8; 8]);

impl NcHex {
    fn new(nc: u32) -> Self {
        let mut out = [0u8; 8];
        for (i, d) in out.iter_mut().enumerate() {
            let shift = 28 - 4 * i as u32;
            *d = hex_digit(((nc >> shift) & 0x0f) as u8);
        }
        NcHex(out)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

enum Hasher {
    Md5(md5::Md5),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    fn update_unescaped(&mut self, s: &str) {
        let mut rest = s.as_bytes();
        while let Some(i) = rest.iter().position(|&b| b == b'\\') {
            let (before, after) = rest.split_at(i);
            self.update(before);
            // `after` starts with the backslash; keep the escaped byte, drop the backslash.
            match after.get(1..) {
                Some(tail) if !tail.is_empty() => {
                    self.update(tail.get(..1).unwrap_or_default());
                    rest = tail.get(1..).unwrap_or_default();
                }
                _ => return,
            }
        }
        self.update(rest);
    }

    fn finish(self) -> HexDigest {
        match self {
            Hasher::Md5(h) => HexDigest::from_bytes(&h.finalize()),
            Hasher::Sha256(h) => HexDigest::from_bytes(&h.finalize()),
        }
    }
}

fn hash(algorithm: Algorithm, parts: &[Part<'_>]) -> HexDigest {
    let mut h = match algorithm {
        Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
        Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
    };
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        match part {
            Part::Plain(s) | Part::Hex(s) => h.update(s.as_bytes()),
            Part::Quoted(s) => h.update_unescaped(s),
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RFC2617_CHALLENGE: &str = "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";

    const RFC7616_CHALLENGE: &str = "Digest\r\n realm=\"http-auth@example.org\",\r\n qop=\"auth, auth-int\",\r\n algorithm=SHA-256,\r\n nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";

    fn answer(ch: &Challenge<'_>, user: &str, pw: &str, cnonce: &str, nc: u32) -> String {
        let mut out = String::new();
        write_authorization(&mut out, ch, user, pw, "GET", "/dir/index.html", cnonce, nc);
        out
    }

    #[test]
    fn rfc2617_example() {
        let ch = parse_challenge(RFC2617_CHALLENGE).unwrap();
        assert_eq!(ch.realm, "testrealm@host.com");
        assert_eq!(ch.nonce, "dcd98b7102dd2f0e8b11d0f600bfb0c093");
        assert_eq!(ch.opaque, Some("5ccc069c403ebaf9f0171e9517f40e41"));
        assert_eq!(ch.algorithm, Algorithm::Md5);
        assert!(ch.qop_auth);
        assert!(!ch.stale);
        let out = answer(&ch, "Mufasa", "Circle Of Life", "0a4f113b", 1);
        assert!(
            out.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{out}"
        );
        assert!(out.contains("nc=00000001"), "{out}");
        assert!(out.contains("qop=auth"), "{out}");
        assert!(
            out.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""),
            "{out}"
        );
        let auth = parse_authorization(&out).unwrap();
        assert_eq!(auth.nc, Some(1));
        assert_eq!(auth.cnonce, Some("0a4f113b"));
        assert!(verify(&auth, "GET", "Circle Of Life"));
    }

    #[test]
    fn rfc7616_sha256_example() {
        let ch = parse_challenge(RFC7616_CHALLENGE).unwrap();
        assert_eq!(ch.algorithm, Algorithm::Sha256);
        assert!(ch.qop_auth);
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let out = answer(&ch, "Mufasa", "Circle of Life", cnonce, 1);
        assert!(
            out.contains(
                "response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\""
            ),
            "{out}"
        );
        assert!(out.contains("algorithm=SHA-256"), "{out}");
        let auth = parse_authorization(&out).unwrap();
        assert!(verify(&auth, "GET", "Circle of Life"));
        let stored = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        assert_eq!(stored.len(), 64);
        assert!(verify_with_ha1(&auth, "GET", &stored));
        assert!(verify_with_ha1(&auth, "GET", &stored.to_uppercase()));
    }

    #[test]
    fn rfc2617_example_authorization_parses_and_verifies() {
        let value = "Digest username=\"Mufasa\",\r\n realm=\"testrealm@host.com\",\r\n nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",\r\n uri=\"/dir/index.html\",\r\n qop=auth,\r\n nc=00000001,\r\n cnonce=\"0a4f113b\",\r\n response=\"6629fae49393a05397450978507c4ef1\",\r\n opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let auth = parse_authorization(value).unwrap();
        assert_eq!(auth.username, "Mufasa");
        assert_eq!(auth.uri, "/dir/index.html");
        assert_eq!(auth.qop, Some("auth"));
        assert!(verify(&auth, "GET", "Circle Of Life"));
        assert!(!verify(&auth, "POST", "Circle Of Life"));
        let stored = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert_eq!(stored, "939e7578ed9e3c518a452acee763bce9");
        assert!(verify_with_ha1(&auth, "GET", &stored));
        assert!(!verify_with_ha1(&auth, "GET", &stored[..31]));
        assert!(!verify_with_ha1(&auth, "GET", &"0".repeat(32)));
    }

    #[test]
    fn nc_formatting() {
        let ch = parse_challenge(RFC2617_CHALLENGE).unwrap();
        assert!(answer(&ch, "u", "p", "c", 10).contains("nc=0000000a"));
        assert!(answer(&ch, "u", "p", "c", 255).contains("nc=000000ff"));
        assert!(answer(&ch, "u", "p", "c", u32::MAX).contains("nc=ffffffff"));
        let value = answer(&ch, "u", "p", "c", 255);
        let auth = parse_authorization(&value).unwrap();
        assert_eq!(auth.nc, Some(255));
        assert!(verify(&auth, "GET", "p"));
    }

    #[test]
    fn wrong_password_or_tampering_fails() {
        let ch = parse_challenge(RFC2617_CHALLENGE).unwrap();
        let out = answer(&ch, "alice", "secret", "abc", 3);
        let auth = parse_authorization(&out).unwrap();
        assert!(verify(&auth, "GET", "secret"));
        assert!(!verify(&auth, "GET", "Secret"));
        assert!(!verify(&auth, "GET", ""));
        let tampered = Authorization {
            nc: Some(4),
            ..auth
        };
        assert!(!verify(&tampered, "GET", "secret"));
        let other_qop = Authorization {
            qop: Some("auth-int"),
            ..auth
        };
        assert!(!verify(&other_qop, "GET", "secret"));
    }

    #[test]
    fn no_qop_challenge_uses_rfc2069_response() {
        let ch = parse_challenge("Digest realm=\"sip.example.com\", nonce=\"abc\"").unwrap();
        assert!(!ch.qop_auth);
        let mut out = String::new();
        write_authorization(
            &mut out,
            &ch,
            "bob",
            "pw",
            "REGISTER",
            "sip:sip.example.com",
            "ignored",
            1,
        );
        assert!(!out.contains("qop"));
        assert!(!out.contains("cnonce"));
        assert!(!out.contains("nc="));
        let auth = parse_authorization(&out).unwrap();
        assert_eq!(auth.qop, None);
        // H(H(bob:sip.example.com:pw):abc:H(REGISTER:sip:sip.example.com))
        let ha1 = hash(
            Algorithm::Md5,
            &[
                Part::Plain("bob"),
                Part::Plain("sip.example.com"),
                Part::Plain("pw"),
            ],
        );
        let ha2 = hash(
            Algorithm::Md5,
            &[Part::Plain("REGISTER"), Part::Plain("sip:sip.example.com")],
        );
        let expected = hash(
            Algorithm::Md5,
            &[
                Part::Hex(ha1.as_str()),
                Part::Plain("abc"),
                Part::Hex(ha2.as_str()),
            ],
        );
        assert_eq!(auth.response, expected.as_str());
        assert!(verify(&auth, "REGISTER", "pw"));
    }

    #[test]
    fn server_challenge_round_trip() {
        let mut out = String::new();
        write_challenge(
            &mut out,
            "pbxlab",
            "n0nce",
            Algorithm::Sha256,
            Some("op\"aque"),
        );
        assert_eq!(
            out,
            "Digest realm=\"pbxlab\", nonce=\"n0nce\", algorithm=SHA-256, qop=\"auth\", opaque=\"op\\\"aque\""
        );
        let ch = parse_challenge(&out).unwrap();
        assert_eq!(ch.algorithm, Algorithm::Sha256);
        assert!(ch.qop_auth);
        assert_eq!(ch.opaque, Some("op\\\"aque"));
        let mut resp = String::new();
        write_authorization(&mut resp, &ch, "a\"b\\c", "pw", "INVITE", "sip:x", "cn", 7);
        let auth = parse_authorization(&resp).unwrap();
        assert_eq!(auth.username, "a\\\"b\\\\c");
        assert_eq!(auth.opaque, Some("op\\\"aque"));
        assert!(verify(&auth, "INVITE", "pw"));
        // The stored HA1 is over the plain user name.
        let stored = ha1(Algorithm::Sha256, "a\"b\\c", "pbxlab", "pw");
        assert!(verify_with_ha1(&auth, "INVITE", &stored));
    }

    #[test]
    fn odd_challenges_parse() {
        let ch = parse_challenge(
            "  digest   nonce = abc123/+= ,algorithm=md5,,realm=\"r, with comma\" , stale=TRUE, domain=\"sip:a sip:b\"",
        )
        .unwrap();
        assert_eq!(ch.nonce, "abc123/+=");
        assert_eq!(ch.realm, "r, with comma");
        assert_eq!(ch.algorithm, Algorithm::Md5);
        assert!(ch.stale);
        assert!(!ch.qop_auth);
        let ch = parse_challenge("Digest realm=r,nonce=n,qop=\"auth-int, AUTH\",algorithm=Sha-256")
            .unwrap();
        assert!(ch.qop_auth);
        assert_eq!(ch.algorithm, Algorithm::Sha256);
        let ch = parse_challenge("Digest realm=r,nonce=n,qop=\"auth-int\"").unwrap();
        assert!(!ch.qop_auth);
    }

    #[test]
    fn malformed_challenges_error() {
        assert_eq!(
            parse_challenge("Digest realm=\"abc, nonce=\"x\"").unwrap_err(),
            DigestError::Syntax {
                offset: 26,
                reason: "expected ',' between parameters"
            }
        );
        assert_eq!(
            parse_challenge("Digest realm=\"abc, nonce=x").unwrap_err(),
            DigestError::UnterminatedQuote { offset: 13 }
        );
        assert_eq!(
            parse_challenge("Digest realm=\"abc\"").unwrap_err(),
            DigestError::MissingParam { name: "nonce" }
        );
        assert_eq!(
            parse_challenge("Digest nonce=\"abc\"").unwrap_err(),
            DigestError::MissingParam { name: "realm" }
        );
        assert_eq!(
            parse_challenge("Basic realm=\"abc\"").unwrap_err(),
            DigestError::NotDigest {
                scheme: "Basic".into()
            }
        );
        assert!(matches!(
            parse_challenge("Digestrealm=x").unwrap_err(),
            DigestError::NotDigest { .. }
        ));
        assert!(matches!(
            parse_challenge("").unwrap_err(),
            DigestError::NotDigest { .. }
        ));
        for alg in ["MD5-sess", "SHA-512-256", "SHA-256-sess"] {
            let err =
                parse_challenge(&format!("Digest realm=r, nonce=n, algorithm={alg}")).unwrap_err();
            assert_eq!(err, DigestError::UnsupportedAlgorithm { name: alg.into() });
            assert!(err.to_string().contains(alg));
        }
        assert_eq!(
            parse_challenge("Digest realm=a, realm=b, nonce=n").unwrap_err(),
            DigestError::DuplicateParam { name: "realm" }
        );
        assert!(parse_challenge("Digest realm=, nonce=n").is_err());
        assert!(parse_challenge("Digest =x, nonce=n").is_err());
        assert!(parse_challenge("Digest realm nonce=n").is_err());
        assert!(parse_challenge("Digest realm=\"x\\").is_err());
        // Found by fuzzing: values that could not be echoed back inside quotes.
        assert!(parse_challenge("Digest realm=r, nonce=ab\\").is_err());
        assert!(parse_challenge("Digest realm=r\u{0}, nonce=n").is_err());
        assert_eq!(
            parse_challenge("Digest realm=\"a\r\nVia: x\", nonce=n").unwrap_err(),
            DigestError::Syntax {
                offset: 15,
                reason: "control character in quoted string"
            }
        );
        assert!(parse_challenge("Digest realm=\"a\tb\", nonce=n").is_ok());
    }

    #[test]
    fn malformed_authorizations_error() {
        let base =
            "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"00\"";
        assert!(parse_authorization(base).is_ok());
        assert_eq!(
            parse_authorization(&format!("{base}, qop=auth, cnonce=\"c\"")).unwrap_err(),
            DigestError::MissingParam { name: "nc" }
        );
        assert_eq!(
            parse_authorization(&format!("{base}, qop=auth, nc=00000001")).unwrap_err(),
            DigestError::MissingParam { name: "cnonce" }
        );
        assert!(matches!(
            parse_authorization(&format!("{base}, qop=auth, nc=1, cnonce=c")).unwrap_err(),
            DigestError::InvalidNonceCount { .. }
        ));
        assert!(matches!(
            parse_authorization(&format!("{base}, qop=auth, nc=0000000g, cnonce=c")).unwrap_err(),
            DigestError::InvalidNonceCount { .. }
        ));
        assert_eq!(
            parse_authorization("Digest realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\"")
                .unwrap_err(),
            DigestError::MissingParam { name: "username" }
        );
        // Wrong-length responses must not verify (and must not panic).
        let auth = parse_authorization(base).unwrap();
        assert!(!verify(&auth, "INVITE", "pw"));
    }

    #[test]
    fn long_error_input_is_truncated() {
        let long = "X".repeat(10_000);
        let DigestError::NotDigest { scheme } = parse_challenge(&long).unwrap_err() else {
            panic!("wrong error");
        };
        assert!(scheme.chars().count() <= 41);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in any::<String>()) {
            let _ = parse_challenge(&s);
            let _ = parse_authorization(&s);
        }

        #[test]
        fn header_like_input_never_panics(s in "(?i)digest[ ,=\"\\\\a-z0-9\t\r\n-]{0,80}") {
            if let Ok(ch) = parse_challenge(&s) {
                let mut out = String::new();
                write_authorization(&mut out, &ch, "u", "p", "INVITE", "sip:x", "c", 1);
                let auth = parse_authorization(&out);
                prop_assert!(auth.is_ok(), "{out}");
                if let Ok(auth) = auth {
                    prop_assert!(verify(&auth, "INVITE", "p"), "{out}");
                }
            }
            if let Ok(auth) = parse_authorization(&s) {
                let _ = verify(&auth, "INVITE", "p");
                let _ = verify_with_ha1(&auth, "INVITE", "00");
            }
        }

        #[test]
        fn write_parse_verify_round_trip(
            user in "[^\\p{Cc}]{0,20}",
            realm in "[^\\p{Cc}]{0,20}",
            nonce in "[!-~]{1,30}",
            password in any::<String>(),
            cnonce in "[a-zA-Z0-9+/=]{1,20}",
            nc in any::<u32>(),
            sha in any::<bool>(),
            opaque in proptest::option::of("[^\\p{Cc}]{0,10}"),
        ) {
            let alg = if sha { Algorithm::Sha256 } else { Algorithm::Md5 };
            let mut chv = String::new();
            write_challenge(&mut chv, &realm, &nonce, alg, opaque.as_deref());
            let ch = parse_challenge(&chv).map_err(|e| TestCaseError::fail(format!("{e}: {chv}")))?;
            let mut out = String::new();
            write_authorization(&mut out, &ch, &user, &password, "REGISTER", "sip:pbx", &cnonce, nc);
            let auth = parse_authorization(&out).map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?;
            prop_assert_eq!(auth.nc, Some(nc));
            prop_assert!(verify(&auth, "REGISTER", &password));
            prop_assert!(verify_with_ha1(&auth, "REGISTER", &ha1(alg, &user, &realm, &password)));
            let wrong = format!("{password}x");
            prop_assert!(!verify(&auth, "REGISTER", &wrong));
        }
    }
}
