//! SDP offer/answer for one audio stream (RFC 4566 syntax, RFC 3264 negotiation): parsing the
//! parts of a session description a SIP endpoint needs to send and receive G.711 audio and
//! RFC 4733 telephone-events, and writing offers and answers.
//!
//! What this does NOT do: video or any media but the first `m=audio` (later media sections are
//! skipped, not validated), hostnames in `c=` (only IP literals; a FQDN is an error), SRTP,
//! ICE, RTCP attributes, bandwidth, timing or repeat lines (accepted and ignored), codecs other
//! than PCMU/PCMA, and answering by rejecting the stream with port 0 (no common codec is an
//! error, so the SIP layer can answer 488). It keeps no session state: comparing `o=` versions
//! of a re-INVITE against the previous ones is the caller's job.
//!
//! A session description with no `c=` at either level parses (RFC 4566 makes that invalid,
//! but the information may still be useful); [`SessionDescription::audio_addr`] is then `None`
//! and [`write_answer`] fails with [`SdpError::NoConnectionAddress`].
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::builder::Decimal;

/// Static payload type of G.711 mu-law (RFC 3551).
pub const PT_PCMU: u8 = 0;
/// Static payload type of G.711 A-law (RFC 3551).
pub const PT_PCMA: u8 = 8;
/// The dynamic payload type we offer for telephone-event (the de facto common choice).
pub const PT_TELEPHONE_EVENT: u8 = 101;
/// How many payload types (and rtpmaps) an audio section may list before we refuse it.
pub const MAX_PAYLOAD_TYPES: usize = 16;

/// A list stored inline, so parsing a session description does not allocate.
#[derive(Clone, Copy)]
pub struct FixedList<T, const N: usize> {
    items: [T; N],
    len: usize,
}

impl<T: Copy + Default, const N: usize> FixedList<T, N> {
    /// An empty list.
    pub fn new() -> Self {
        FixedList {
            items: [T::default(); N],
            len: 0,
        }
    }

    /// Appends `v`, or gives it back when the list is full.
    pub fn push(&mut self, v: T) -> Result<(), T> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = v;
                self.len += 1;
                Ok(())
            }
            None => Err(v),
        }
    }

    /// The items pushed so far.
    pub fn as_slice(&self) -> &[T] {
        self.items.get(..self.len).unwrap_or_default()
    }
}

impl<T: Copy + Default, const N: usize> Default for FixedList<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default, const N: usize> std::ops::Deref for FixedList<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Copy + Default + std::fmt::Debug, const N: usize> std::fmt::Debug for FixedList<T, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq for FixedList<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Copy + Default + Eq, const N: usize> Eq for FixedList<T, N> {}

/// One `a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]` line (channels are not kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpMap<'a> {
    /// Payload type number.
    pub pt: u8,
    /// Encoding name as written (compare case-insensitively).
    pub encoding: &'a str,
    /// Clock rate in Hz.
    pub clock_rate: u32,
}

/// Media direction attribute (RFC 3264 section 5.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    /// Send and receive (the default when no attribute is given).
    #[default]
    SendRecv,
    /// Offerer only sends (e.g. puts us on hold with music).
    SendOnly,
    /// Offerer only receives.
    RecvOnly,
    /// No media either way.
    Inactive,
}

impl Direction {
    /// The attribute name (`sendrecv`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer takes for this offered direction (RFC 3264 6.1).
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    fn from_name(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// Why a session description was refused or could not be answered. `line` numbers count from
/// 1 and include blank lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body is not UTF-8 (RFC 4566 default charset).
    #[error("SDP is not valid UTF-8 (at byte {offset})")]
    NotUtf8 {
        /// Length of the valid prefix.
        offset: usize,
    },
    /// The body is empty or does not start with `v=`.
    #[error("SDP does not start with a v= line (line {line})")]
    MissingVersion {
        /// The first non-blank line, or 0 for an empty body.
        line: usize,
    },
    /// A line is not `<letter>=<value>`, or a field we need is malformed.
    #[error("SDP line {line}: {reason}")]
    Syntax {
        /// Line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No `o=` line.
    #[error("SDP has no o= line")]
    MissingOrigin,
    /// The first audio section lists more than [`MAX_PAYLOAD_TYPES`] payload types or rtpmaps.
    #[error("SDP line {line}: more than {limit} payload types or rtpmaps")]
    TooManyPayloadTypes {
        /// Line number.
        line: usize,
        /// The limit.
        limit: usize,
    },
    /// Answering: the offer has no audio section.
    #[error("offer has no m=audio section")]
    NoAudio,
    /// Answering: the offered audio stream has port 0.
    #[error("offered audio stream is rejected (port 0)")]
    AudioRejected,
    /// Answering: the audio transport is not plain RTP/AVP (e.g. SRTP).
    #[error("unsupported audio transport {proto:?}")]
    UnsupportedProto {
        /// The offered transport (truncated).
        proto: String,
    },
    /// Answering: no `c=` applies to the audio stream.
    #[error("offer has no connection address for audio")]
    NoConnectionAddress,
    /// Answering: neither PCMU nor PCMA is offered.
    #[error("no common codec (offered payload types {offered:?})")]
    NoCommonCodec {
        /// The payload types offered.
        offered: Vec<u8>,
    },
}

/// The first audio section of a session description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioMedia<'a> {
    /// RTP port; 0 means the stream is rejected or disabled.
    pub port: u16,
    /// Transport, e.g. `RTP/AVP`.
    pub proto: &'a str,
    /// Payload types in preference order.
    pub payload_types: FixedList<u8, MAX_PAYLOAD_TYPES>,
    /// Media-level `c=`, which overrides the session-level one.
    pub connection: Option<IpAddr>,
    /// The rtpmap lines of this section.
    pub rtpmaps: FixedList<RtpMap<'a>, MAX_PAYLOAD_TYPES>,
    /// The listed payload type mapped to `telephone-event/8000`, if any.
    pub telephone_event_pt: Option<u8>,
    /// Media-level direction, else session-level, else sendrecv.
    pub direction: Direction,
    /// `a=ptime`, in milliseconds.
    pub ptime_ms: Option<u32>,
    /// The first `a=ssrc` (RFC 5576): the SSRC the sender will use. A single-port media server
    /// demultiplexes the streams that arrive at one address by it.
    pub ssrc: Option<u32>,
}

impl<'a> AudioMedia<'a> {
    /// The rtpmap for `pt`, if the section has one.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap<'a>> {
        self.rtpmaps.iter().find(|m| m.pt == pt)
    }
}

/// The parts of a session description this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionDescription<'a> {
    /// `o=` sess-id.
    pub origin_session_id: u64,
    /// `o=` sess-version; a re-INVITE with a changed SDP increments it.
    pub origin_version: u64,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// The first `m=audio` section.
    pub audio: Option<AudioMedia<'a>>,
}

#[derive(PartialEq)]
enum Section {
    Session,
    Audio,
    Other,
}

impl<'a> SessionDescription<'a> {
    /// Parses a session description. Lines end in CRLF or bare LF; blank lines are skipped;
    /// unknown line types and attributes are ignored as RFC 4566 asks, but a line that is not
    /// `<letter>=<value>`, and malformed `o=`, `c=`, `m=audio`, `a=rtpmap` or `a=ptime` lines
    /// that concern us, are errors naming the line.
    pub fn parse(body: &'a [u8]) -> Result<SessionDescription<'a>, SdpError> {
        let text = std::str::from_utf8(body).map_err(|e| SdpError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        let mut saw_version = false;
        let mut origin = None;
        let mut connection = None;
        let mut session_direction = None;
        let mut media_direction = None;
        let mut audio: Option<AudioMedia<'a>> = None;
        let mut section = Section::Session;

        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let content = raw.strip_suffix('\r').unwrap_or(raw);
            if content.is_empty() {
                continue;
            }
            let (kind, value) = split_line(content).ok_or(SdpError::Syntax {
                line,
                reason: "expected <letter>=<value>",
            })?;
            if !saw_version {
                if kind != b'v' {
                    return Err(SdpError::MissingVersion { line });
                }
                if value.trim() != "0" {
                    return Err(SdpError::Syntax {
                        line,
                        reason: "unsupported SDP version (expected v=0)",
                    });
                }
                saw_version = true;
                continue;
            }
            match (kind, &section) {
                (b'v', _) => {
                    return Err(SdpError::Syntax {
                        line,
                        reason: "repeated v= line",
                    });
                }
                (b'o', Section::Session) => {
                    if origin.is_some() {
                        return Err(SdpError::Syntax {
                            line,
                            reason: "repeated o= line",
                        });
                    }
                    origin = Some(parse_origin(value, line)?);
                }
                (b'c', Section::Session) => connection = Some(parse_connection(value, line)?),
                (b'c', Section::Audio) => {
                    let addr = parse_connection(value, line)?;
                    if let Some(a) = audio.as_mut() {
                        a.connection = Some(addr);
                    }
                }
                (b'm', _) => {
                    let media = value.split_ascii_whitespace().next().unwrap_or_default();
                    if media == "audio" && audio.is_none() {
                        audio = Some(parse_audio_m_line(value, line)?);
                        section = Section::Audio;
                    } else {
                        section = Section::Other;
                    }
                }
                (b'a', Section::Session) => {
                    if let Some(d) = Direction::from_name(value.trim()) {
                        session_direction = Some(d);
                    }
                }
                (b'a', Section::Audio) => {
                    if let Some(a) = audio.as_mut() {
                        if let Some(d) = Direction::from_name(value.trim()) {
                            media_direction = Some(d);
                        } else {
                            parse_audio_attribute(a, value, line)?;
                        }
                    }
                }
                _ => {}
            }
        }
        if !saw_version {
            return Err(SdpError::MissingVersion { line: 0 });
        }
        let (origin_session_id, origin_version) = origin.ok_or(SdpError::MissingOrigin)?;
        if let Some(a) = audio.as_mut() {
            a.direction = media_direction.or(session_direction).unwrap_or_default();
            a.telephone_event_pt = a
                .rtpmaps
                .iter()
                .find(|m| {
                    m.encoding.eq_ignore_ascii_case("telephone-event")
                        && m.clock_rate == 8000
                        && a.payload_types.contains(&m.pt)
                })
                .map(|m| m.pt);
        }
        Ok(SessionDescription {
            origin_session_id,
            origin_version,
            connection,
            audio,
        })
    }

    /// Where to send audio: the media-level `c=` (else the session-level one) with the
    /// `m=audio` port. `None` without audio, without any `c=`, or when the port is 0. An
    /// unspecified address (`0.0.0.0`, the RFC 2543 way of putting a call on hold) is
    /// returned as is; the caller decides whether to send to it.
    pub fn audio_addr(&self) -> Option<SocketAddr> {
        let audio = self.audio.as_ref()?;
        if audio.port == 0 {
            return None;
        }
        let ip = audio.connection.or(self.connection)?;
        Some(SocketAddr::new(ip, audio.port))
    }
}

/// What to offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// `o=` sess-id.
    pub session_id: u64,
    /// `o=` sess-version.
    pub version: u64,
    /// Our RTP address (used for `o=`, `c=` and the `m=` port).
    pub addr: SocketAddr,
    /// Codec payload types in preference order, e.g. `[0, 8]`. rtpmaps are written for PCMU
    /// and PCMA; other numbers are listed without one.
    pub payload_types: Vec<u8>,
    /// Also offer telephone-event as payload type [`PT_TELEPHONE_EVENT`].
    pub telephone_event: bool,
    /// `a=ptime` in milliseconds.
    pub ptime_ms: u32,
    /// Announce our SSRC with `a=ssrc` (RFC 5576).
    pub ssrc: Option<u32>,
    /// The direction attribute: `inactive` sets up a call that carries no audio.
    pub direction: Direction,
}

/// Result of answering an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The codec to send: the offerer's first PCMU or PCMA payload type.
    pub codec_pt: u8,
    /// The offerer's telephone-event payload type, if it offered one.
    pub telephone_event_pt: Option<u8>,
    /// Where to send RTP.
    pub remote: SocketAddr,
}

/// Appends an offer (CRLF line ends) to `out`.
pub fn write_offer(out: &mut Vec<u8>, offer: &Offer) {
    write_header(out, offer.session_id, offer.version, offer.addr.ip());
    let te = offer.telephone_event && !offer.payload_types.contains(&PT_TELEPHONE_EVENT);
    w(out, format_args!("m=audio {} RTP/AVP", offer.addr.port()));
    for pt in &offer.payload_types {
        w(out, format_args!(" {pt}"));
    }
    if te {
        w(out, format_args!(" {PT_TELEPHONE_EVENT}"));
    }
    out.extend_from_slice(b"\r\n");
    for &pt in &offer.payload_types {
        if let Some(name) = static_codec_name(pt) {
            w(out, format_args!("a=rtpmap:{pt} {name}/8000\r\n"));
        }
    }
    if offer.telephone_event {
        write_telephone_event(out, PT_TELEPHONE_EVENT, "0-16");
    }
    w(
        out,
        format_args!(
            "a=ptime:{}\r\na={}\r\n",
            offer.ptime_ms,
            offer.direction.name()
        ),
    );
    if let Some(ssrc) = offer.ssrc {
        write_ssrc(out, ssrc);
    }
}

/// An offer rendered once for many calls: from one call to the next only the session id (in
/// `o=`) and the SSRC change, so [`OfferTemplate::render`] copies two fixed pieces around them
/// instead of formatting the whole description again.
#[derive(Debug, Clone)]
pub struct OfferTemplate {
    /// Up to the session id.
    head: Vec<u8>,
    /// From after the session id to the end, without `a=ssrc`.
    tail: Vec<u8>,
}

impl OfferTemplate {
    /// `offer`'s session id and SSRC are not used: [`OfferTemplate::render`] takes them.
    pub fn new(offer: &Offer) -> OfferTemplate {
        const HEAD: &[u8] = b"v=0\r\no=pbxlab ";
        let mut whole = Vec::new();
        write_offer(
            &mut whole,
            &Offer {
                session_id: 0,
                ssrc: None,
                ..offer.clone()
            },
        );
        // `write_header` starts every description with HEAD and the session id, here "0".
        let tail = whole.get(HEAD.len() + 1..).unwrap_or_default().to_vec();
        OfferTemplate {
            head: HEAD.to_vec(),
            tail,
        }
    }

    /// Appends the offer with this session id and SSRC: the same bytes as [`write_offer`].
    pub fn render(&self, out: &mut Vec<u8>, session_id: u64, ssrc: Option<u32>) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(Decimal::new(session_id).as_bytes());
        out.extend_from_slice(&self.tail);
        if let Some(ssrc) = ssrc {
            out.extend_from_slice(b"a=ssrc:");
            out.extend_from_slice(Decimal::new(u64::from(ssrc)).as_bytes());
            out.extend_from_slice(b" cname:pbxlab\r\n");
        }
    }
}

/// Appends `a=ssrc:<ssrc> cname:pbxlab` (RFC 5576). Both writers put the audio section last, so
/// a caller may append this to an answer as well.
pub fn write_ssrc(out: &mut Vec<u8>, ssrc: u32) {
    w(out, format_args!("a=ssrc:{ssrc} cname:pbxlab\r\n"));
}

/// Answers `offer` with our address `local`: the first offered PCMU or PCMA (under the
/// offerer's payload number), telephone-event if offered (under the offerer's number, with
/// events `0-15`), the offer's ptime (20 when absent) and the mirrored direction. Appends to
/// `out` only on success.
pub fn write_answer(
    out: &mut Vec<u8>,
    offer: &SessionDescription<'_>,
    local: SocketAddr,
    session_id: u64,
    version: u64,
) -> Result<Answer, SdpError> {
    let audio = offer.audio.as_ref().ok_or(SdpError::NoAudio)?;
    if audio.port == 0 {
        return Err(SdpError::AudioRejected);
    }
    if !audio.proto.eq_ignore_ascii_case("RTP/AVP") {
        return Err(SdpError::UnsupportedProto {
            proto: audio.proto.chars().take(40).collect(),
        });
    }
    let remote = offer.audio_addr().ok_or(SdpError::NoConnectionAddress)?;
    let codec_pt = audio
        .payload_types
        .iter()
        .copied()
        .find(|&pt| is_supported_codec(audio, pt))
        .ok_or_else(|| SdpError::NoCommonCodec {
            offered: audio.payload_types.to_vec(),
        })?;
    let te = audio.telephone_event_pt;

    write_header(out, session_id, version, local.ip());
    w(
        out,
        format_args!("m=audio {} RTP/AVP {codec_pt}", local.port()),
    );
    if let Some(te) = te {
        w(out, format_args!(" {te}"));
    }
    out.extend_from_slice(b"\r\n");
    if let Some(name) = static_codec_name(codec_pt) {
        w(out, format_args!("a=rtpmap:{codec_pt} {name}/8000\r\n"));
    }
    if let Some(te) = te {
        // 0-15 (the DTMF digits) is a subset of what any DTMF-capable offer lists.
        write_telephone_event(out, te, "0-15");
    }
    w(
        out,
        format_args!(
            "a=ptime:{}\r\na={}\r\n",
            audio.ptime_ms.unwrap_or(20),
            audio.direction.answer().name()
        ),
    );
    Ok(Answer {
        codec_pt,
        telephone_event_pt: te,
        remote,
    })
}

/// Writing into a Vec cannot fail, so the io::Result carries nothing worth handling.
fn w(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
}

fn write_header(out: &mut Vec<u8>, session_id: u64, version: u64, ip: IpAddr) {
    let at = addr_type(ip);
    w(
        out,
        format_args!(
            "v=0\r\no=pbxlab {session_id} {version} IN {at} {ip}\r\ns=-\r\nc=IN {at} {ip}\r\nt=0 0\r\n"
        ),
    );
}

fn write_telephone_event(out: &mut Vec<u8>, pt: u8, events: &str) {
    w(
        out,
        format_args!("a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} {events}\r\n"),
    );
}

fn addr_type(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

fn static_codec_name(pt: u8) -> Option<&'static str> {
    match pt {
        PT_PCMU => Some("PCMU"),
        PT_PCMA => Some("PCMA"),
        _ => None,
    }
}

/// Only the static numbers count: a dynamic payload type mapped to PCMU is legal but nobody
/// sends it, and an rtpmap that contradicts a static number means the offer is confused.
fn is_supported_codec(audio: &AudioMedia<'_>, pt: u8) -> bool {
    let Some(name) = static_codec_name(pt) else {
        return false;
    };
    audio
        .rtpmap(pt)
        .is_none_or(|m| m.encoding.eq_ignore_ascii_case(name) && m.clock_rate == 8000)
}

fn split_line(line: &str) -> Option<(u8, &str)> {
    let bytes = line.as_bytes();
    match (bytes.first(), bytes.get(1)) {
        (Some(&kind), Some(b'=')) if kind.is_ascii_lowercase() => Some((kind, line.get(2..)?)),
        _ => None,
    }
}

fn parse_origin(value: &str, line: usize) -> Result<(u64, u64), SdpError> {
    let mut fields = value.split_ascii_whitespace();
    let _username = fields.next();
    let id = fields.next();
    let version = fields.next();
    if fields.clone().count() != 3 {
        return Err(SdpError::Syntax {
            line,
            reason: "o= needs 6 fields",
        });
    }
    let id = id
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(SdpError::Syntax {
            line,
            reason: "o= session id is not a number",
        })?;
    let version = version
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(SdpError::Syntax {
            line,
            reason: "o= session version is not a number",
        })?;
    Ok((id, version))
}

fn parse_connection(value: &str, line: usize) -> Result<IpAddr, SdpError> {
    let mut fields = value.split_ascii_whitespace();
    let (Some(net), Some(addr_type), Some(addr), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SdpError::Syntax {
            line,
            reason: "c= needs 3 fields",
        });
    };
    if net != "IN" {
        return Err(SdpError::Syntax {
            line,
            reason: "c= network type is not IN",
        });
    }
    // Multicast addresses carry /ttl and /count suffixes.
    let addr = addr.split('/').next().unwrap_or_default();
    let bad = SdpError::Syntax {
        line,
        reason: "c= address is not an IP literal of the stated type",
    };
    match addr_type {
        "IP4" => addr.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| bad),
        "IP6" => addr.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| bad),
        _ => Err(SdpError::Syntax {
            line,
            reason: "c= address type is not IP4 or IP6",
        }),
    }
}

fn parse_audio_m_line(value: &str, line: usize) -> Result<AudioMedia<'_>, SdpError> {
    let mut fields = value.split_ascii_whitespace();
    let _media = fields.next();
    let (Some(port), Some(proto)) = (fields.next(), fields.next()) else {
        return Err(SdpError::Syntax {
            line,
            reason: "m= needs media, port and transport",
        });
    };
    // `<port>/<number of ports>` is for layered encodings; the base port is what we use.
    let port = port
        .split('/')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or(SdpError::Syntax {
            line,
            reason: "m= port is not a number 0-65535",
        })?;
    let mut payload_types = FixedList::new();
    for fmt in fields {
        let pt = fmt
            .parse::<u8>()
            .ok()
            .filter(|&pt| pt <= 127)
            .ok_or(SdpError::Syntax {
                line,
                reason: "m=audio format is not an RTP payload type 0-127",
            })?;
        payload_types
            .push(pt)
            .map_err(|_| SdpError::TooManyPayloadTypes {
                line,
                limit: MAX_PAYLOAD_TYPES,
            })?;
    }
    Ok(AudioMedia {
        port,
        proto,
        payload_types,
        connection: None,
        rtpmaps: FixedList::new(),
        telephone_event_pt: None,
        direction: Direction::SendRecv,
        ptime_ms: None,
        ssrc: None,
    })
}

fn parse_audio_attribute<'a>(
    audio: &mut AudioMedia<'a>,
    value: &'a str,
    line: usize,
) -> Result<(), SdpError> {
    let Some((name, rest)) = value.split_once(':') else {
        return Ok(());
    };
    match name {
        "rtpmap" => {
            let map = parse_rtpmap(rest).ok_or(SdpError::Syntax {
                line,
                reason: "a=rtpmap is not <pt> <encoding>/<clock rate>",
            })?;
            audio
                .rtpmaps
                .push(map)
                .map_err(|_| SdpError::TooManyPayloadTypes {
                    line,
                    limit: MAX_PAYLOAD_TYPES,
                })?;
        }
        "ptime" => {
            let ms = rest.trim().parse::<u32>().map_err(|_| SdpError::Syntax {
                line,
                reason: "a=ptime is not a whole number of milliseconds",
            })?;
            audio.ptime_ms = Some(ms);
        }
        "ssrc" if audio.ssrc.is_none() => {
            let id = rest.split_ascii_whitespace().next().unwrap_or_default();
            let ssrc = id.parse::<u32>().map_err(|_| SdpError::Syntax {
                line,
                reason: "a=ssrc does not start with a 32-bit number",
            })?;
            audio.ssrc = Some(ssrc);
        }
        _ => {}
    }
    Ok(())
}

fn parse_rtpmap(rest: &str) -> Option<RtpMap<'_>> {
    let (pt, encoding) = rest.trim().split_once(' ')?;
    let pt = pt.parse::<u8>().ok().filter(|&pt| pt <= 127)?;
    let mut parts = encoding.trim().split('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let clock_rate = parts.next()?.parse::<u32>().ok()?;
    Some(RtpMap {
        pt,
        encoding: name,
        clock_rate,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn offer_template_matches_write_offer() {
        for addr in ["192.0.2.7:40000", "[2001:db8::9]:7078"] {
            let mut offer = Offer {
                session_id: 0,
                version: 1,
                addr: addr.parse().unwrap(),
                payload_types: vec![PT_PCMU, PT_PCMA],
                telephone_event: true,
                ptime_ms: 20,
                ssrc: None,
                direction: Direction::SendRecv,
            };
            let template = OfferTemplate::new(&offer);
            for (session_id, ssrc) in [(0, None), (17, Some(0xdead_beef)), (u64::MAX, Some(0))] {
                offer.session_id = session_id;
                offer.ssrc = ssrc;
                let (mut want, mut got) = (Vec::new(), b"kept".to_vec());
                write_offer(&mut want, &offer);
                template.render(&mut got, session_id, ssrc);
                assert_eq!(got.strip_prefix(b"kept".as_slice()), Some(want.as_slice()));
            }
        }
    }

    use super::*;
    use proptest::prelude::*;

    const SIPP_OFFER: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

    const SOFTPHONE_OFFER: &str = "v=0\r\n\
o=- 3912345678 3912345679 IN IP4 192.0.2.10\r\n\
s=Softphone 5.1\r\n\
c=IN IP4 192.0.2.10\r\n\
b=AS:84\r\n\
t=0 0\r\n\
a=X-nat:0\r\n\
m=audio 40376 RTP/AVP 9 8 0 18 96 101\r\n\
c=IN IP4 198.51.100.7\r\n\
b=TIAS:64000\r\n\
a=rtcp:40377 IN IP4 198.51.100.7\r\n\
a=sendrecv\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\n\
a=rtpmap:96 opus/48000/2\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:30\r\n\
m=video 0 RTP/AVP 31\r\n\
c=IN IP4 203.0.113.99\r\n\
a=sendonly\r\n";

    fn parse(s: &str) -> SessionDescription<'_> {
        SessionDescription::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn sipp_uac_offer() {
        let sd = parse(SIPP_OFFER);
        assert_eq!(sd.origin_session_id, 53655765);
        assert_eq!(sd.origin_version, 2353687637);
        assert_eq!(sd.connection, Some("127.0.0.1".parse().unwrap()));
        let audio = sd.audio.unwrap();
        assert_eq!(audio.port, 6000);
        assert_eq!(audio.proto, "RTP/AVP");
        assert_eq!(audio.payload_types.as_slice(), &[0]);
        assert_eq!(audio.direction, Direction::SendRecv);
        assert_eq!(audio.telephone_event_pt, None);
        assert_eq!(audio.ptime_ms, None);
        assert_eq!(sd.audio_addr(), Some("127.0.0.1:6000".parse().unwrap()));
    }

    #[test]
    fn softphone_offer() {
        let sd = parse(SOFTPHONE_OFFER);
        let audio = sd.audio.unwrap();
        assert_eq!(audio.payload_types.as_slice(), &[9, 8, 0, 18, 96, 101]);
        assert_eq!(audio.rtpmaps.len(), 6);
        assert_eq!(
            audio.rtpmap(96),
            Some(&RtpMap {
                pt: 96,
                encoding: "opus",
                clock_rate: 48000
            })
        );
        assert_eq!(audio.telephone_event_pt, Some(101));
        assert_eq!(audio.ptime_ms, Some(30));
        assert_eq!(audio.direction, Direction::SendRecv);
        // Media-level c= wins; the video section's c= and a=sendonly do not leak into audio.
        assert_eq!(sd.audio_addr(), Some("198.51.100.7:40376".parse().unwrap()));

        let mut out = Vec::new();
        let local: SocketAddr = "10.0.0.1:20000".parse().unwrap();
        let ans = write_answer(&mut out, &sd, local, 7, 1).unwrap();
        assert_eq!(ans.codec_pt, PT_PCMA);
        assert_eq!(ans.telephone_event_pt, Some(101));
        assert_eq!(ans.remote, "198.51.100.7:40376".parse().unwrap());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "v=0\r\no=pbxlab 7 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 20000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\na=ptime:30\r\na=sendrecv\r\n"
        );
    }

    #[test]
    fn ipv6_and_bare_lf() {
        let body = "v=0\no=- 1 2 IN IP6 2001:db8::1\ns=-\nc=IN IP6 2001:db8::1\nt=0 0\nm=audio 5004 RTP/AVP 8 0\n";
        let sd = parse(body);
        assert_eq!(sd.audio_addr(), Some("[2001:db8::1]:5004".parse().unwrap()));
        let mut out = Vec::new();
        let ans = write_answer(&mut out, &sd, "[::1]:7000".parse().unwrap(), 1, 1).unwrap();
        assert_eq!(ans.codec_pt, PT_PCMA);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("o=pbxlab 1 1 IN IP6 ::1\r\n"), "{text}");
        assert!(text.contains("c=IN IP6 ::1\r\n"), "{text}");
        assert!(parse(&text).audio_addr() == Some("[::1]:7000".parse().unwrap()));
    }

    #[test]
    fn port_zero_is_rejected_stream() {
        let body = SIPP_OFFER.replace("m=audio 6000", "m=audio 0");
        let sd = parse(&body);
        assert_eq!(sd.audio.unwrap().port, 0);
        assert_eq!(sd.audio_addr(), None);
        let mut out = Vec::new();
        assert_eq!(
            write_answer(&mut out, &sd, "127.0.0.1:1".parse().unwrap(), 1, 1),
            Err(SdpError::AudioRejected)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn missing_connection_parses_but_has_no_address() {
        let body = SIPP_OFFER.replace("c=IN IP4 127.0.0.1\r\n", "");
        let sd = parse(&body);
        assert_eq!(sd.connection, None);
        assert_eq!(sd.audio_addr(), None);
        let mut out = Vec::new();
        assert_eq!(
            write_answer(&mut out, &sd, "127.0.0.1:1".parse().unwrap(), 1, 1),
            Err(SdpError::NoConnectionAddress)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn ssrc_attribute_is_read_and_written() {
        let body = SIPP_OFFER.replace(
            "a=rtpmap:0 PCMU/8000\r\n",
            "a=rtpmap:0 PCMU/8000\r\na=ssrc:4000000001 cname:x\r\na=ssrc:7 cname:y\r\n",
        );
        assert_eq!(
            parse(&body).audio.unwrap().ssrc,
            Some(4_000_000_001),
            "the first one counts"
        );
        assert_eq!(parse(SIPP_OFFER).audio.unwrap().ssrc, None);
        let bad = SIPP_OFFER.replace(
            "a=rtpmap:0 PCMU/8000\r\n",
            "a=rtpmap:0 PCMU/8000\r\na=ssrc:x\r\n",
        );
        assert!(matches!(
            SessionDescription::parse(bad.as_bytes()),
            Err(SdpError::Syntax { .. })
        ));
        let mut out = Vec::new();
        write_offer(
            &mut out,
            &Offer {
                session_id: 1,
                version: 1,
                addr: "127.0.0.1:4000".parse().unwrap(),
                payload_types: vec![PT_PCMU],
                telephone_event: false,
                ptime_ms: 20,
                ssrc: Some(99),
                direction: Direction::SendRecv,
            },
        );
        assert_eq!(
            SessionDescription::parse(&out).unwrap().audio.unwrap().ssrc,
            Some(99)
        );
    }

    #[test]
    fn offer_answer_round_trip() {
        let offer = Offer {
            session_id: 42,
            version: 1,
            addr: "127.0.0.1:30000".parse().unwrap(),
            payload_types: vec![PT_PCMU, PT_PCMA],
            telephone_event: true,
            ptime_ms: 20,
            ssrc: None,
            direction: Direction::SendRecv,
        };
        let mut body = Vec::new();
        write_offer(&mut body, &offer);
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            "v=0\r\no=pbxlab 42 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        let sd = SessionDescription::parse(&body).unwrap();
        assert_eq!(sd.origin_session_id, 42);
        let audio = sd.audio.unwrap();
        assert_eq!(audio.payload_types.as_slice(), &[0, 8, 101]);
        assert_eq!(audio.telephone_event_pt, Some(101));
        assert_eq!(audio.ptime_ms, Some(20));

        let mut answer = Vec::new();
        let ans = write_answer(&mut answer, &sd, "127.0.0.2:40000".parse().unwrap(), 9, 1).unwrap();
        assert_eq!(
            ans,
            Answer {
                codec_pt: PT_PCMU,
                telephone_event_pt: Some(101),
                remote: "127.0.0.1:30000".parse().unwrap()
            }
        );
        // The offerer reads the answer back the same way.
        let back = SessionDescription::parse(&answer).unwrap();
        let a = back.audio.unwrap();
        assert_eq!(a.payload_types.as_slice(), &[0, 101]);
        assert_eq!(a.telephone_event_pt, Some(101));
        assert_eq!(back.audio_addr(), Some("127.0.0.2:40000".parse().unwrap()));
    }

    #[test]
    fn answer_mirrors_direction_and_keeps_event_number() {
        let body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=sendonly\r\nm=audio 4000 RTP/AVP 18 0 120\r\na=rtpmap:120 TELEPHONE-EVENT/8000\r\n";
        let sd = parse(body);
        assert_eq!(sd.audio.unwrap().direction, Direction::SendOnly);
        let mut out = Vec::new();
        let ans = write_answer(&mut out, &sd, "192.0.2.2:5000".parse().unwrap(), 1, 1).unwrap();
        assert_eq!(ans.codec_pt, PT_PCMU);
        assert_eq!(ans.telephone_event_pt, Some(120));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("m=audio 5000 RTP/AVP 0 120\r\n"), "{text}");
        assert!(text.contains("a=recvonly\r\n"), "{text}");
    }

    #[test]
    fn no_common_codec_or_srtp_is_an_error() {
        let mut out = Vec::new();
        let local = "127.0.0.1:1".parse().unwrap();
        let g729 = SIPP_OFFER.replace("RTP/AVP 0", "RTP/AVP 18 9");
        assert_eq!(
            write_answer(&mut out, &parse(&g729), local, 1, 1),
            Err(SdpError::NoCommonCodec {
                offered: vec![18, 9]
            })
        );
        // pt 0 remapped to something else is not PCMU.
        let confused = SIPP_OFFER.replace("PCMU/8000", "opus/48000");
        assert!(matches!(
            write_answer(&mut out, &parse(&confused), local, 1, 1),
            Err(SdpError::NoCommonCodec { .. })
        ));
        let srtp = SIPP_OFFER.replace("RTP/AVP", "RTP/SAVP");
        assert!(matches!(
            write_answer(&mut out, &parse(&srtp), local, 1, 1),
            Err(SdpError::UnsupportedProto { .. })
        ));
        let no_audio = SIPP_OFFER.replace("m=audio", "m=video");
        assert_eq!(
            write_answer(&mut out, &parse(&no_audio), local, 1, 1),
            Err(SdpError::NoAudio)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn reinvite_with_new_address_and_version() {
        let first = parse(SIPP_OFFER);
        let reinvite = SIPP_OFFER
            .replace("2353687637", "2353687638")
            .replace("c=IN IP4 127.0.0.1", "c=IN IP4 127.0.0.5")
            .replace("m=audio 6000", "m=audio 6002");
        let second = parse(&reinvite);
        assert_eq!(second.origin_session_id, first.origin_session_id);
        assert!(second.origin_version > first.origin_version);
        assert_eq!(second.audio_addr(), Some("127.0.0.5:6002".parse().unwrap()));
        // Hold, RFC 2543 style.
        let hold = SIPP_OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
        assert_eq!(
            parse(&hold).audio_addr(),
            Some("0.0.0.0:6000".parse().unwrap())
        );
    }

    #[test]
    fn garbage_lines_are_rejected_with_line_number() {
        let cases: &[(&str, usize)] = &[
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nthis is not sdp\r\n", 3),
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nS=-\r\n", 3),
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n=x\r\n", 3),
            ("v=0\r\no=- x 1 IN IP4 1.2.3.4\r\n", 2),
            ("v=0\r\no=- 1 1 IN IP4\r\n", 2),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 example.com\r\n",
                3,
            ),
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP6 1.2.3.4\r\n", 3),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4 extra\r\n",
                3,
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
                3,
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0 x\r\n",
                3,
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 200\r\n",
                3,
            ),
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1\r\n", 3),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
                5,
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\na=ptime:abc\r\n",
                4,
            ),
            ("v=0\r\nv=0\r\n", 2),
            ("v=1\r\n", 1),
        ];
        for &(body, line) in cases {
            match SessionDescription::parse(body.as_bytes()) {
                Err(SdpError::Syntax { line: l, .. }) => assert_eq!(l, line, "{body:?}"),
                other => panic!("{body:?}: {other:?}"),
            }
        }
        assert_eq!(
            SessionDescription::parse(b"o=- 1 1 IN IP4 1.2.3.4\r\n"),
            Err(SdpError::MissingVersion { line: 1 })
        );
        assert_eq!(
            SessionDescription::parse(b""),
            Err(SdpError::MissingVersion { line: 0 })
        );
        assert_eq!(
            SessionDescription::parse(b"v=0\r\ns=-\r\n"),
            Err(SdpError::MissingOrigin)
        );
        assert_eq!(
            SessionDescription::parse(b"v=0\r\n\xff"),
            Err(SdpError::NotUtf8 { offset: 5 })
        );
        let many: String = (0..17).map(|i| format!(" {i}")).collect();
        let body = format!("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP{many}\r\n");
        assert_eq!(
            SessionDescription::parse(body.as_bytes()),
            Err(SdpError::TooManyPayloadTypes { line: 3, limit: 16 })
        );
        let err = SessionDescription::parse(b"v=0\r\nxx\r\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn later_media_sections_are_not_validated() {
        let body = format!(
            "{SIPP_OFFER}m=video 9 RTP/AVP x\r\nc=IN IP4 host.invalid\r\na=rtpmap:junk\r\nm=audio 1 RTP/AVP 300\r\n"
        );
        let sd = parse(&body);
        assert_eq!(sd.audio.unwrap().port, 6000);
    }

    proptest! {
        #[test]
        fn parse_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SessionDescription::parse(&body);
        }

        #[test]
        fn sdp_like_input_never_panics(
            lines in proptest::collection::vec("[vocmatsb]=[ -~]{0,40}", 0..20),
            sep in prop_oneof![Just("\r\n"), Just("\n")],
        ) {
            let mut body = String::from("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n");
            body.push_str(&lines.join(sep));
            if let Ok(sd) = SessionDescription::parse(body.as_bytes()) {
                let _ = sd.audio_addr();
                let mut out = Vec::new();
                let _ = write_answer(&mut out, &sd, "127.0.0.1:5000".parse().unwrap(), 1, 1);
            }
        }

        #[test]
        fn written_offers_parse(
            id in any::<u64>(),
            ver in any::<u64>(),
            v6 in any::<bool>(),
            ip4 in any::<[u8; 4]>(),
            ip6 in any::<[u16; 8]>(),
            port in 1u16..,
            pts in proptest::collection::vec(0u8..=127, 0..8),
            te in any::<bool>(),
            ptime in any::<u32>(),
            dir in 0usize..4,
        ) {
            let direction = [Direction::SendRecv, Direction::SendOnly, Direction::RecvOnly, Direction::Inactive][dir];
            let ip: IpAddr = if v6 { Ipv6Addr::from(ip6).into() } else { Ipv4Addr::from(ip4).into() };
            let offer = Offer { session_id: id, version: ver, addr: SocketAddr::new(ip, port), payload_types: pts.clone(), telephone_event: te, ptime_ms: ptime, ssrc: None, direction };
            let mut body = Vec::new();
            write_offer(&mut body, &offer);
            let sd = SessionDescription::parse(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(sd.origin_session_id, id);
            prop_assert_eq!(sd.origin_version, ver);
            prop_assert_eq!(sd.audio_addr(), Some(offer.addr));
            let audio = sd.audio.unwrap();
            prop_assert_eq!(audio.ptime_ms, Some(ptime));
            prop_assert_eq!(audio.telephone_event_pt.is_some(), te);
            prop_assert_eq!(audio.direction, direction);
            let mut out = Vec::new();
            let ans = write_answer(&mut out, &sd, "127.0.0.1:9".parse().unwrap(), 1, 1);
            let first = pts.iter().copied().find(|&p| p == PT_PCMU || p == PT_PCMA);
            prop_assert_eq!(ans.ok().map(|a| a.codec_pt), first);
        }
    }
}
