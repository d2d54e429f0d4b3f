//! Parse throughput on two realistic messages: a proxied INVITE with SDP and
//! routing headers, and a 200 OK to REGISTER. Each iteration parses one
//! datagram and reads the fields a transaction layer needs for matching.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pbxlab_proto::sip::parse_datagram;

const INVITE: &[u8] = b"INVITE sip:4021@pbx2.lab.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.20.0.5:5060;branch=z9hG4bK-e-8f2a91c3\r\n\
Via: SIP/2.0/UDP 192.0.2.77:5062;received=192.0.2.77;branch=z9hG4bK-31d09e\r\n\
Max-Forwards: 69\r\n\
Record-Route: <sip:10.20.0.5;lr>\r\n\
Route: <sip:pbx2.lab.example;lr>\r\n\
From: \"Load 17\" <sip:0017@lab.example>;tag=a73kszlfl\r\n\
To: <sip:4021@lab.example>\r\n\
Call-ID: 1j9FpLxk3uxtm8tn@192.0.2.77\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:0017@192.0.2.77:5062>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 147\r\n\
\r\n\
v=0\r\n\
o=- 2890844526 2890844526 IN IP4 192.0.2.77\r\n\
s=-\r\n\
c=IN IP4 192.0.2.77\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n";

const OK_REGISTER: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 192.0.2.77:5062;branch=z9hG4bK-reg-77a1;received=192.0.2.77;rport=5062\r\n\
From: <sip:0017@lab.example>;tag=r-0017-9\r\n\
To: <sip:0017@lab.example>;tag=as5b1e3c0a\r\n\
Call-ID: reg-0017-4f8c2e@192.0.2.77\r\n\
CSeq: 42 REGISTER\r\n\
Contact: <sip:0017@192.0.2.77:5062>;expires=300\r\n\
Expires: 300\r\n\
Server: pbxlab-sim/0.1\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
Date: Sat, 09 May 2026 10:00:00 GMT\r\n\
Content-Length: 0\r\n\
\r\n";

fn parse_and_touch(buf: &[u8]) -> usize {
    // Borrow rather than move the message out: it is a few KB (inline
    // header array) and a move is a memcpy.
    let parsed = parse_datagram(black_box(buf));
    let Ok(m) = &parsed else {
        return 0;
    };
    let branch = m.top_via().and_then(|v| v.branch).map_or(0, str::len);
    let seq = m.cseq().map_or(0, |c| c.seq as usize);
    let call_id = m.call_id().map_or(0, str::len);
    let from_tag = m.from().and_then(|f| f.tag()).map_or(0, str::len);
    let to_tag = m.to().and_then(|t| t.tag()).map_or(0, str::len);
    let contact = m.contact().map_or(0, |c| c.uri.len());
    branch + seq + call_id + from_tag + to_tag + contact
}

fn bench(c: &mut Criterion) {
    for msg in [INVITE, OK_REGISTER] {
        // The fixtures must frame exactly (no trailing bytes dropped) and
        // every accessor the loop reads must find its field.
        let framed = parse_datagram(msg).is_ok_and(|m| {
            m.body().len() == m.content_length().unwrap_or(0) && msg.ends_with(m.body())
        });
        assert!(framed && parse_and_touch(msg) > 0);
    }
    let mut g = c.benchmark_group("parse_datagram+access");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("invite_{}B", INVITE.len()), |b| {
        b.iter(|| black_box(parse_and_touch(INVITE)))
    });
    g.bench_function(format!("200_register_{}B", OK_REGISTER.len()), |b| {
        b.iter(|| black_box(parse_and_touch(OK_REGISTER)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
