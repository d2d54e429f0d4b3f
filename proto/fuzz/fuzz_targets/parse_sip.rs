//! Fuzzes the message parser: arbitrary bytes as a datagram and as a stream
//! must never panic, every accessor of a parsed message must be safe to call,
//! and a response written for any parsed request must parse back with the
//! same Call-ID, CSeq and Via values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbxlab_proto::builder::write_response;
use pbxlab_proto::sip::{HeaderName, Message, parse_datagram, parse_stream, unfold};
use pbxlab_proto::uri::SipUri;

fn exercise(m: &Message<'_>) {
    let _ = (
        m.start(),
        m.method(),
        m.code(),
        m.body(),
        m.call_id(),
        m.cseq(),
    );
    let _ = (
        m.expires(),
        m.content_length(),
        m.max_forwards(),
        m.top_via(),
    );
    for h in m.headers() {
        let _ = unfold(h.value);
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

fuzz_target!(|data: &[u8]| {
    if let Ok((m, used)) = parse_stream(data) {
        assert!(used <= data.len());
        exercise(&m);
    }
    let parsed = parse_datagram(data);
    let Ok(m) = &parsed else {
        return;
    };
    exercise(m);
    // Responses copy the request's headers and add a few bytes; far below
    // the size limit this round trip must hold for every parsed request.
    if m.is_request() && data.len() < 32 * 1024 {
        let mut out = Vec::new();
        write_response(&mut out, m, 200, "OK", Some("fz"), &[], b"");
        let r = parse_datagram(&out);
        let r = match &r {
            Ok(r) => r,
            Err(e) => panic!("response to a parsed request does not parse: {e}"),
        };
        assert_eq!(r.call_id(), m.call_id());
        assert_eq!(r.cseq(), m.cseq());
        assert!(r.values(HeaderName::Via).eq(m.values(HeaderName::Via)));
    }
});
