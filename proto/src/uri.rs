//! SIP URI (RFC 3261 19.1, plus bare `tel:` RFC 3966) and name-addr /
//! addr-spec parsing (RFC 3261 20.10, 25.1), zero-copy over the header value
//! it is given, and the small quote-aware splitting helpers the header
//! accessors in [`crate::sip`] share.
//!
//! Escapes (`%41`) are checked for shape but kept raw: comparing or
//! displaying decoded URIs is the caller's business, and decoding would mean
//! allocating.

use std::net::{Ipv4Addr, Ipv6Addr};

use memchr::memchr;

use crate::sip::Invalid;

/// The host part of a SIP URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    Name(&'a str),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// A parsed `sip:`, `sips:` or `tel:` URI. For `tel:` the telephone number
/// is in `user` and the host is `Host::Name("")` (tel URIs have no host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// `sip`, `sips` or `tel`, as written (the match is case-insensitive).
    pub scheme: &'a str,
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    pub host: Host<'a>,
    /// The host as written; IPv6 keeps its brackets.
    pub host_raw: &'a str,
    pub port: Option<u16>,
    /// `";..."`, raw, empty if none.
    pub params: &'a str,
    /// `"?..."`, raw, empty if none.
    pub headers: &'a str,
}

fn bad(reason: &'static str, offset: usize) -> Invalid {
    Invalid { reason, offset }
}

impl<'a> SipUri<'a> {
    /// Parses a URI; error offsets are into `s`.
    pub fn parse(s: &'a str) -> Result<SipUri<'a>, Invalid> {
        if let Some(i) = s.bytes().position(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("whitespace or control character in URI", i));
        }
        let (scheme, rest) = s.split_once(':').ok_or(bad("URI has no scheme", 0))?;
        let base = scheme.len() + 1;
        if scheme.eq_ignore_ascii_case("tel") {
            let cut = memchr(b';', rest.as_bytes()).unwrap_or(rest.len());
            let number = rest.get(..cut).unwrap_or_default();
            if number.is_empty() {
                return Err(bad("empty telephone number", base));
            }
            check_escapes(number, base)?;
            return Ok(SipUri {
                scheme,
                user: Some(number),
                password: None,
                host: Host::Name(""),
                host_raw: "",
                port: None,
                params: rest.get(cut..).unwrap_or_default(),
                headers: "",
            });
        }
        if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
            return Err(bad("unsupported URI scheme", 0));
        }
        let rb = rest.as_bytes();
        // The user part may legally contain ';' (RFC 3261 19.1.1, e.g.
        // "sip:alice;day=tuesday@host"), so the '@' is searched before the
        // parameters are cut off; '@' itself is never unescaped in user,
        // params or headers, so the first one before '?' is the separator.
        let q = memchr(b'?', rb).unwrap_or(rb.len());
        let at = memchr(b'@', rb.get(..q).unwrap_or_default());
        let (user, password, host_start) = match at {
            Some(at) => {
                let userinfo = rest.get(..at).unwrap_or_default();
                let (user, password) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                if user.is_empty() {
                    return Err(bad("empty user part in URI", base));
                }
                check_escapes(userinfo, base)?;
                (Some(user), password, at + 1)
            }
            None => (None, None, 0),
        };
        let hp = rest.get(host_start..q).unwrap_or_default();
        let hp_base = base + host_start;
        let hp_end = memchr(b';', hp.as_bytes()).unwrap_or(hp.len());
        let hostport = hp.get(..hp_end).unwrap_or_default();
        let (host, host_raw, after) = if hostport.starts_with('[') {
            let close =
                memchr(b']', hostport.as_bytes()).ok_or(bad("unclosed [ in IPv6 host", hp_base))?;
            let inner = hostport.get(1..close).unwrap_or_default();
            let v6: Ipv6Addr = inner
                .parse()
                .map_err(|_| bad("bad IPv6 address", hp_base + 1))?;
            (
                Host::V6(v6),
                hostport.get(..=close).unwrap_or_default(),
                hostport.get(close + 1..).unwrap_or_default(),
            )
        } else {
            let end = memchr(b':', hostport.as_bytes()).unwrap_or(hostport.len());
            let raw = hostport.get(..end).unwrap_or_default();
            if raw.is_empty() {
                return Err(bad("empty host in URI", hp_base));
            }
            if let Some(i) = raw
                .bytes()
                .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
            {
                return Err(bad("illegal character in URI host", hp_base + i));
            }
            let host = match raw.parse::<Ipv4Addr>() {
                Ok(v4) => Host::V4(v4),
                Err(_) => Host::Name(raw),
            };
            (host, raw, hostport.get(end..).unwrap_or_default())
        };
        let port = match after.strip_prefix(':') {
            None if after.is_empty() => None,
            None => {
                return Err(bad(
                    "unexpected character after URI host",
                    hp_base + host_raw.len(),
                ));
            }
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or(bad("bad port in URI", hp_base + host_raw.len() + 1))?,
            ),
        };
        Ok(SipUri {
            scheme,
            user,
            password,
            host,
            host_raw,
            port,
            params: hp.get(hp_end..).unwrap_or_default(),
            headers: rest.get(q..).unwrap_or_default(),
        })
    }

    /// A URI parameter: `None` if absent, `Some(None)` if present without a
    /// value (`;lr`), `Some(Some(v))` with the raw value. Name is case-insensitive.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(self.params, name)
    }

    /// has ;lr (RFC 3261 16.12: loose routing)
    pub fn is_loose_route(&self) -> bool {
        self.param("lr").is_some()
    }
}

/// `%` must be followed by two hex digits; anything else is a broken URI.
fn check_escapes(s: &str, base: usize) -> Result<(), Invalid> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(i) = memchr(b'%', b.get(from..).unwrap_or_default()) {
        let at = from + i;
        let hex = b
            .get(at + 1..at + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if !hex {
            return Err(bad("bad %-escape in URI", base + at));
        }
        from = at + 3;
    }
    Ok(())
}

/// A From/To/Contact/Route value: `"Display" <uri>;params`, `<uri>;params`
/// or a bare addr-spec `uri;params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Without the surrounding quotes; escapes inside kept raw.
    pub display: Option<&'a str>,
    /// inside <> or the addr-spec; `"*"` for `Contact: *`.
    pub uri: &'a str,
    /// header params after the uri, raw ";tag=..;expires=.."
    pub params: &'a str,
    /// Contact: *
    pub star: bool,
}

impl<'a> NameAddr<'a> {
    /// Parses one value (already split from its neighbours); error offsets
    /// are into `s`.
    pub fn parse(s: &'a str) -> Result<NameAddr<'a>, Invalid> {
        let lead = s.len() - skip_lws(s).len();
        let t = trim_lws(s);
        if t == "*" {
            return Ok(NameAddr {
                display: None,
                uri: t,
                params: "",
                star: true,
            });
        }
        if t.is_empty() {
            return Err(bad("empty address", 0));
        }
        let tb = t.as_bytes();
        // Where '<' is, if the value has one outside a quoted display name.
        let (display, lt) = if tb.first() == Some(&b'"') {
            let close = closing_quote(tb).ok_or(bad("unterminated quoted display name", lead))?;
            let rest = t.get(close + 1..).unwrap_or_default();
            let skipped = rest.len() - skip_lws(rest).len();
            let lt = close + 1 + skipped;
            if tb.get(lt) != Some(&b'<') {
                return Err(bad("expected < after display name", lead + lt));
            }
            (t.get(1..close), Some(lt))
        } else {
            match find1(tb, b'<') {
                Some(lt) => (Some(trim_lws(t.get(..lt).unwrap_or_default())), Some(lt)),
                None => (None, None),
            }
        };
        let display = display.filter(|d| !d.is_empty());
        let (uri, params) = match lt {
            Some(lt) => {
                let gt = find1(tb.get(lt..).unwrap_or_default(), b'>')
                    .map(|i| lt + i)
                    .ok_or(bad("missing > after URI", lead + lt))?;
                let uri = trim_lws(t.get(lt + 1..gt).unwrap_or_default());
                let params = trim_lws(t.get(gt + 1..).unwrap_or_default());
                if !params.is_empty() && !params.starts_with(';') {
                    return Err(bad("unexpected text after >", lead + gt + 1));
                }
                (uri, params)
            }
            None => {
                // RFC 3261 20.10: without <>, everything from the first ';'
                // belongs to the header, not the URI.
                let cut = find1(tb, b';').unwrap_or(tb.len());
                let uri = trim_lws(t.get(..cut).unwrap_or_default());
                if uri.bytes().any(|b| b <= b' ') {
                    return Err(bad("whitespace inside an addr-spec", lead));
                }
                (uri, t.get(cut..).unwrap_or_default())
            }
        };
        if uri.is_empty() {
            return Err(bad("empty URI", lead));
        }
        if !uri.bytes().any(|b| b == b':') {
            return Err(bad("URI has no scheme", lead));
        }
        Ok(NameAddr {
            display,
            uri,
            params,
            star: false,
        })
    }

    /// The `tag` parameter (dialog identification); an empty tag counts as none.
    pub fn tag(&self) -> Option<&'a str> {
        self.param("tag").flatten().filter(|t| !t.is_empty())
    }

    /// A header parameter: `None` absent, `Some(None)` without value,
    /// `Some(Some(v))` raw value (quotes kept). Name is case-insensitive.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(self.params, name)
    }

    pub fn sip_uri(&self) -> Result<SipUri<'a>, Invalid> {
        if self.star {
            return Err(bad("Contact * has no URI", 0));
        }
        SipUri::parse(self.uri)
    }
}

/// Index of the quote closing the quoted-string that starts at 0.
fn closing_quote(b: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (i, &c) in b.iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if c == b'\\' {
            escaped = true;
        } else if c == b'"' {
            return Some(i);
        }
    }
    None
}

#[inline]
pub(crate) fn is_lws_byte(c: u8) -> bool {
    class(c) & C_LWS != 0
}

/// Index of the first byte at or after `i` for which `keep` is false (or
/// the length). Hand-rolled because the iterator-adapter equivalents
/// compiled to noticeably slower loops in the accessor profiles.
#[inline(always)]
pub(crate) fn scan(b: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
    while let Some(&c) = b.get(i) {
        if !keep(c) {
            break;
        }
        i += 1;
    }
    i
}

/// Skips leading SP, HT and line breaks.
pub(crate) fn skip_lws(s: &str) -> &str {
    s.get(scan(s.as_bytes(), 0, is_lws_byte)..)
        .unwrap_or_default()
}

/// Trims SP, HT and line breaks (folded values keep CRLF at their edges).
#[inline]
pub(crate) fn trim_lws(s: &str) -> &str {
    // Byte-wise: the char-based `trim_matches` decodes UTF-8 and showed up in
    // profiles; all the bytes trimmed here are ASCII, so cuts stay on char
    // boundaries.
    let b = s.as_bytes();
    let lead = scan(b, 0, is_lws_byte);
    let mut end = b.len();
    while end > lead && b.get(end - 1).is_some_and(|&c| is_lws_byte(c)) {
        end -= 1;
    }
    s.get(lead..end).unwrap_or_default()
}

const C_TOKEN: u8 = 1;
const C_HOST: u8 = 2;
const C_LWS: u8 = 4;
/// Ends an unquoted parameter value: ';' or LWS.
const C_PSTOP: u8 = 8;

// Runs at compile time only (an out-of-range index would fail the build).
#[allow(clippy::indexing_slicing)]
const fn char_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let alnum = b.is_ascii_alphanumeric();
        if alnum
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            )
        {
            t[i] |= C_TOKEN;
        }
        if alnum || matches!(b, b'-' | b'.' | b'_') {
            t[i] |= C_HOST;
        }
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            t[i] |= C_LWS | C_PSTOP;
        }
        if b == b';' {
            t[i] |= C_PSTOP;
        }
        i += 1;
    }
    t
}

/// Character classes looked up once per byte in the hot scanning loops.
static CHARS: [u8; 256] = char_table();

#[inline(always)]
fn class(b: u8) -> u8 {
    // Every u8 is in range, so the bounds check folds away.
    CHARS.get(usize::from(b)).copied().unwrap_or(0)
}

/// RFC 3261 token characters.
#[inline]
pub(crate) fn is_token_byte(b: u8) -> bool {
    class(b) & C_TOKEN != 0
}

/// Host name characters (plus '_', which real deployments use).
#[inline]
pub(crate) fn is_host_byte(b: u8) -> bool {
    class(b) & C_HOST != 0
}

/// First of three bytes. Short inputs use a plain loop because memchr's
/// setup costs more than it saves there; long ones get memchr3's SIMD.
#[inline]
pub(crate) fn find3(b: &[u8], x: u8, y: u8, z: u8) -> Option<usize> {
    if b.len() < 32 {
        b.iter().position(|&c| c == x || c == y || c == z)
    } else {
        memchr::memchr3(x, y, z, b)
    }
}

/// First `x`, with the same short-input rule as [`find3`].
#[inline]
pub(crate) fn find1(b: &[u8], x: u8) -> Option<usize> {
    if b.len() < 32 {
        b.iter().position(|&c| c == x)
    } else {
        memchr(x, b)
    }
}

/// Splits on `sep` where it stands outside double quotes and `<...>`;
/// pieces are trimmed and empty ones skipped.
#[derive(Debug, Clone)]
pub(crate) struct Split<'a> {
    rest: &'a str,
    sep: u8,
}

impl<'a> Split<'a> {
    pub(crate) fn new(s: &'a str, sep: u8) -> Split<'a> {
        Split { rest: s, sep }
    }
}

impl<'a> Iterator for Split<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        while !self.rest.is_empty() {
            let b = self.rest.as_bytes();
            let cut = find_unquoted(b, self.sep).unwrap_or(b.len());
            let piece = trim_lws(self.rest.get(..cut).unwrap_or_default());
            self.rest = self.rest.get(cut + 1..).unwrap_or_default();
            if !piece.is_empty() {
                return Some(piece);
            }
        }
        None
    }
}

/// First `sep` outside quotes and angle brackets.
fn find_unquoted(b: &[u8], sep: u8) -> Option<usize> {
    let mut i = 0;
    loop {
        let rest = b.get(i..)?;
        let at = i + find3(rest, sep, b'"', b'<')?;
        match b.get(at) {
            Some(&b'"') => i = at + closing_quote(b.get(at..)?)? + 1,
            // Inside <...> only the closing bracket matters (URIs carry ',' and ';').
            Some(&b'<') => i = at + find1(b.get(at..)?, b'>')? + 1,
            _ => return Some(at),
        }
    }
}

/// `;name=value` parameters of a raw parameter list, in order: (name,
/// value) with `None` for a parameter without `=`. Quoted values may hold
/// `;`. Empty pieces are skipped.
#[derive(Debug, Clone)]
pub(crate) struct Params<'a> {
    rest: &'a str,
}

impl<'a> Params<'a> {
    pub(crate) fn new(params: &'a str) -> Params<'a> {
        Params { rest: params }
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = (&'a str, Option<&'a str>);

    fn next(&mut self) -> Option<Self::Item> {
        // generic-param = token [ "=" ( token / host / quoted-string ) ]: a
        // name scan, an optional value scan, then on to the next ';'
        // (anything else before it is not valid SIP and is ignored).
        loop {
            let s = self.rest;
            let b = s.as_bytes();
            let start = scan(b, 0, |c| c == b';' || is_lws_byte(c));
            if start >= b.len() {
                self.rest = "";
                return None;
            }
            let name_end = scan(b, start, is_token_byte);
            let mut i = scan(b, name_end, is_lws_byte);
            let mut value = None;
            if b.get(i) == Some(&b'=') {
                i = scan(b, i + 1, is_lws_byte);
                let v_end = if b.get(i) == Some(&b'"') {
                    closing_quote(b.get(i..).unwrap_or_default()).map_or(b.len(), |q| i + q + 1)
                } else {
                    scan(b, i, |c| class(c) & C_PSTOP == 0)
                };
                value = Some(s.get(i..v_end).unwrap_or_default());
                i = v_end;
            }
            let next = if b.get(i) == Some(&b';') {
                i
            } else {
                b.get(i..)
                    .and_then(|r| find1(r, b';'))
                    .map_or(b.len(), |j| i + j)
            };
            self.rest = s.get(next..).unwrap_or_default();
            let name = s.get(start..name_end).unwrap_or_default();
            if !name.is_empty() || value.is_some() {
                return Some((name, value));
            }
        }
    }
}

/// `;name=value` lookup in a raw parameter list; case-insensitive name,
/// value raw. `None` absent, `Some(None)` present without `=`.
pub(crate) fn find_param<'a>(params: &'a str, name: &str) -> Option<Option<&'a str>> {
    Params::new(params).find_map(|(n, v)| crate::sip::eq_lower(n, name).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_full() {
        let u = SipUri::parse(
            "sips:alice:secret@Lab.Example:5061;transport=tls;LR?subject=x&priority=urgent",
        )
        .unwrap();
        assert_eq!(u.scheme, "sips");
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.password, Some("secret"));
        assert_eq!(u.host, Host::Name("Lab.Example"));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.params, ";transport=tls;LR");
        assert_eq!(u.headers, "?subject=x&priority=urgent");
        assert_eq!(u.param("TRANSPORT"), Some(Some("tls")));
        assert_eq!(u.param("lr"), Some(None));
        assert!(u.is_loose_route());
        assert_eq!(u.param("maddr"), None);
    }

    #[test]
    fn sip_uri_hosts() {
        let u = SipUri::parse("sip:10.1.2.3").unwrap();
        assert_eq!(u.host, Host::V4(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!((u.user, u.port), (None, None));
        let u = SipUri::parse("SIP:[2001:db8::10]:5070;lr").unwrap();
        assert_eq!(u.host, Host::V6("2001:db8::10".parse().unwrap()));
        assert_eq!(u.host_raw, "[2001:db8::10]");
        assert_eq!(u.port, Some(5070));
        assert!(u.is_loose_route());
        let u = SipUri::parse("sip:bob@[::ffff:192.0.2.1]").unwrap();
        assert_eq!(u.host_raw, "[::ffff:192.0.2.1]");
        // Looks numeric but is not an IPv4 address: a (strange) name.
        assert_eq!(
            SipUri::parse("sip:1.2.3.999").unwrap().host,
            Host::Name("1.2.3.999")
        );
    }

    #[test]
    fn sip_uri_user_oddities() {
        let u = SipUri::parse("sip:user;par=u%40example.net@lab.example").unwrap();
        assert_eq!(u.user, Some("user;par=u%40example.net"));
        assert_eq!(u.host_raw, "lab.example");
        assert_eq!(u.params, "");
        let u = SipUri::parse("sip:%2Bn%61me@lab.example;user=phone").unwrap();
        assert_eq!(u.user, Some("%2Bn%61me"));
        assert_eq!(u.param("user"), Some(Some("phone")));
        let t = SipUri::parse("tel:+1-555-0100;phone-context=lab").unwrap();
        assert_eq!(
            (t.scheme, t.user, t.host_raw),
            ("tel", Some("+1-555-0100"), "")
        );
        assert_eq!(t.param("phone-context"), Some(Some("lab")));
    }

    #[test]
    fn sip_uri_errors() {
        for (s, why) in [
            ("http://lab.example", "unsupported URI scheme"),
            ("lab.example", "no scheme"),
            ("sip:", "empty host"),
            ("sip:@lab.example", "empty user"),
            ("sip:a b@lab.example", "whitespace"),
            ("sip:a%4@lab.example", "%-escape"),
            ("sip:a%zz@lab.example", "%-escape"),
            ("sip:lab.example:", "bad port"),
            ("sip:lab.example:70000", "bad port"),
            ("sip:lab.example:+5", "bad port"),
            ("sip:[2001:db8::1", "unclosed ["),
            ("sip:[2001:db8::zz]", "bad IPv6"),
            ("sip:[::1]x", "unexpected character"),
            ("sip:lab!example", "illegal character in URI host"),
            ("tel:", "empty telephone number"),
        ] {
            let e = SipUri::parse(s).unwrap_err();
            assert!(e.reason.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn name_addr_forms() {
        let n =
            NameAddr::parse("\"Doe, \\\"J\\\" <x>\" <sip:j@lab.example;transport=tcp>;tag=99;x")
                .unwrap();
        assert_eq!(n.display, Some("Doe, \\\"J\\\" <x>"));
        assert_eq!(n.uri, "sip:j@lab.example;transport=tcp");
        assert_eq!(n.params, ";tag=99;x");
        assert_eq!(n.tag(), Some("99"));
        assert_eq!(n.param("X"), Some(None));
        assert_eq!(n.sip_uri().unwrap().param("transport"), Some(Some("tcp")));

        let n = NameAddr::parse("  Bob Smith <sip:bob@lab.example>").unwrap();
        assert_eq!(n.display, Some("Bob Smith"));
        let n = NameAddr::parse("<sip:bob@lab.example>").unwrap();
        assert_eq!(n.display, None);
        assert_eq!(n.params, "");
        let n = NameAddr::parse("\"\" <sip:bob@lab.example>").unwrap();
        assert_eq!(n.display, None);

        // addr-spec: params belong to the header, not the URI.
        let n = NameAddr::parse("sip:alice@lab.example;tag=123").unwrap();
        assert_eq!(n.uri, "sip:alice@lab.example");
        assert_eq!(n.params, ";tag=123");
        assert_eq!(n.tag(), Some("123"));
        assert_eq!(n.sip_uri().unwrap().params, "");

        let star = NameAddr::parse(" * ").unwrap();
        assert!(star.star);
        assert!(star.sip_uri().is_err());
        assert_eq!(NameAddr::parse("<sip:a@b>;tag=").unwrap().tag(), None);
    }

    #[test]
    fn name_addr_errors() {
        for (s, why) in [
            ("", "empty address"),
            ("\"unterminated <sip:a@b>", "unterminated"),
            ("\"Name\" sip:a@b", "expected <"),
            ("<sip:a@b", "missing >"),
            ("<sip:a@b> junk", "unexpected text"),
            ("<>", "empty URI"),
            ("alice", "no scheme"),
            ("sip:a b", "whitespace"),
        ] {
            let e = NameAddr::parse(s).unwrap_err();
            assert!(e.reason.contains(why), "{s:?}: {e}");
        }
    }

    #[test]
    fn split_respects_quotes_and_brackets() {
        let v: Vec<_> = Split::new("\"a, b\" <sip:x;p=1,2>;q=1 , <sip:y>,, sip:z", b',').collect();
        assert_eq!(v, ["\"a, b\" <sip:x;p=1,2>;q=1", "<sip:y>", "sip:z"]);
        let v: Vec<_> = Split::new(";a=\"x;y\";b", b';').collect();
        assert_eq!(v, ["a=\"x;y\"", "b"]);
        let p: Vec<_> = Params::new(" ; a = \"x;y\" ;b;;=v; c=\"open").collect();
        assert_eq!(
            p,
            [
                ("a", Some("\"x;y\"")),
                ("b", None),
                ("", Some("v")),
                ("c", Some("\"open"))
            ]
        );
        // An unterminated quote swallows the rest rather than splitting wrongly.
        let v: Vec<_> = Split::new("\"a, b", b',').collect();
        assert_eq!(v, ["\"a, b"]);
        assert_eq!(find_param(";Tag = 7 ; lr", "tag"), Some(Some("7")));
        assert_eq!(find_param(";Tag = 7 ; lr", "lr"), Some(None));
    }
}
