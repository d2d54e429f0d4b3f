//! pbxlab's wire protocols, sans-IO: a zero-copy SIP parser and a renderer that writes into
//! reused buffers, SIP URIs, SDP offer/answer for one audio stream, HTTP digest authentication
//! (MD5 and SHA-256), HMAC-SHA-256 for what a server must recognise later, RTP packets, RFC 4733 telephone events, RFC 3550 receive statistics and
//! G.711.
//!
//! It opens no sockets, reads no clock and draws no random numbers: time, nonces and SSRCs are
//! arguments. It does not implement transactions, dialogs or retransmission timers; those belong
//! to the user agents in `pbxlab-loadgen` and the servers that use this crate. Input from the
//! network is never trusted: every parser returns an error for what it cannot represent, and none
//! panics.

// Network input must never panic: outside tests, no unwrap, expect, panic or unchecked indexing.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod builder;
pub mod digest;
pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod mac;
pub mod rtp;
pub mod sdp;
pub mod sip;
pub mod uri;
