//! Counts per SIP message, as SIPp's screen gives them: for each request method and response
//! code, how many we sent (retransmissions included), how many of those were retransmissions,
//! how many transactions gave up waiting for the answer to one (timeouts), and how many we
//! received; and how many messages we received that fitted nothing (`unexpected`: responses to
//! transactions we no longer have, requests outside any dialog that we refused).
//!
//! Counted by the engine: what it queues to send, what `Engine::handle` parses. The table is
//! bounded: methods are the ones `pbxlab_proto` knows (any other is `OTHER`), codes are 100 to
//! 699 (anything else is not a response that parses).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pbxlab_proto::sip::Method;
use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// A request method or a response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    Request(&'static str),
    Response(u16),
}

impl MessageKind {
    pub fn request(method: Method) -> MessageKind {
        MessageKind::Request(method.as_str())
    }

    /// The kind of a datagram from its first line, `None` for what is not a SIP message.
    pub fn of(datagram: &[u8]) -> Option<MessageKind> {
        if let Some(rest) = datagram.strip_prefix(b"SIP/2.0 ") {
            let code = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
            return (100..700)
                .contains(&code)
                .then_some(MessageKind::Response(code));
        }
        let end = datagram.iter().position(|&b| b == b' ')?;
        let token = std::str::from_utf8(&datagram[..end]).ok()?;
        Some(MessageKind::request(Method::from_token(token)))
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageKind::Request(method) => f.write_str(method),
            MessageKind::Response(code) => write!(f, "{code}"),
        }
    }
}

/// The counts of one kind of message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MessageCount {
    /// Datagrams sent, retransmissions included.
    pub sent: u64,
    /// Of those, retransmissions (timers A, E, G; an ACK or a response repeated for a
    /// retransmitted 200 or INVITE).
    pub retransmitted: u64,
    /// Transactions that ended without the answer to this message (Timer B, F, H).
    pub timeouts: u64,
    pub received: u64,
}

/// The report's `messages`: `{"INVITE": {"sent": .., ..}, "200": {..}, .., "unexpected": N}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Messages {
    pub by_kind: BTreeMap<MessageKind, MessageCount>,
    pub unexpected: u64,
}

impl Messages {
    fn entry(&mut self, kind: MessageKind) -> &mut MessageCount {
        self.by_kind.entry(kind).or_default()
    }

    /// A datagram we sent (a first line that is not SIP is not counted).
    pub fn sent(&mut self, datagram: &[u8]) {
        if let Some(kind) = MessageKind::of(datagram) {
            self.entry(kind).sent += 1;
        }
    }

    /// Of what is sent, a retransmission of `kind`.
    pub fn retransmitted(&mut self, kind: MessageKind) {
        self.entry(kind).retransmitted += 1;
    }

    pub fn timed_out(&mut self, kind: MessageKind) {
        self.entry(kind).timeouts += 1;
    }

    pub fn received(&mut self, kind: MessageKind) {
        self.entry(kind).received += 1;
    }

    pub fn merge(&mut self, other: &Messages) {
        for (&kind, c) in &other.by_kind {
            let e = self.entry(kind);
            e.sent += c.sent;
            e.retransmitted += c.retransmitted;
            e.timeouts += c.timeouts;
            e.received += c.received;
        }
        self.unexpected += other.unexpected;
    }

    /// The table the text report prints, SIPp's screen turned sideways; empty with nothing
    /// counted.
    pub fn render(&self) -> String {
        let mut o = String::new();
        if self.by_kind.is_empty() && self.unexpected == 0 {
            return o;
        }
        let _ = writeln!(
            o,
            "\n{:<10} {:>10} {:>14} {:>9} {:>10}",
            "message", "sent", "retransmitted", "timeouts", "received"
        );
        for (kind, c) in &self.by_kind {
            let _ = writeln!(
                o,
                "{:<10} {:>10} {:>14} {:>9} {:>10}",
                kind.to_string(),
                c.sent,
                c.retransmitted,
                c.timeouts,
                c.received
            );
        }
        if self.unexpected > 0 {
            let _ = writeln!(o, "({} unexpected messages received)", self.unexpected);
        }
        o
    }
}

impl Serialize for Messages {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.by_kind.len() + 1))?;
        for (kind, count) in &self.by_kind {
            map.serialize_entry(&kind.to_string(), count)?;
        }
        map.serialize_entry("unexpected", &self.unexpected)?;
        map.end()
    }
}

/// Reads the report's `messages` back (`pbxlab merge`): a method name that is not one
/// `pbxlab_proto` knows reads as `OTHER`, as it was counted.
impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Unexpected(u64),
            Count(MessageCount),
        }
        let entries = BTreeMap::<String, Entry>::deserialize(deserializer)?;
        let mut messages = Messages::default();
        for (name, entry) in entries {
            match (name.as_str(), entry) {
                ("unexpected", Entry::Unexpected(n)) => messages.unexpected += n,
                (_, Entry::Count(c)) => {
                    let kind = match name.parse::<u16>() {
                        Ok(code) if (100..700).contains(&code) => MessageKind::Response(code),
                        Ok(code) => {
                            return Err(serde::de::Error::custom(format!(
                                "messages: {code} is not a response code"
                            )));
                        }
                        Err(_) => MessageKind::request(Method::from_token(&name)),
                    };
                    let e = messages.entry(kind);
                    e.sent += c.sent;
                    e.retransmitted += c.retransmitted;
                    e.timeouts += c.timeouts;
                    e.received += c.received;
                }
                (name, Entry::Unexpected(_)) => {
                    return Err(serde::de::Error::custom(format!(
                        "messages.{name}: a count object, not a number"
                    )));
                }
            }
        }
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagrams_first_line_gives_its_kind() {
        assert_eq!(
            MessageKind::of(b"INVITE sip:echo@x SIP/2.0\r\n"),
            Some(MessageKind::Request("INVITE"))
        );
        assert_eq!(
            MessageKind::of(b"SIP/2.0 407 Proxy Authentication Required\r\n"),
            Some(MessageKind::Response(407))
        );
        assert_eq!(
            MessageKind::of(b"FROB sip:x SIP/2.0\r\n"),
            Some(MessageKind::Request("OTHER")),
            "unknown methods share one row: the table stays bounded"
        );
        assert_eq!(MessageKind::of(b"SIP/2.0 999 Nope\r\n"), None);
        assert_eq!(MessageKind::of(b"\r\n\r\n"), None);
    }

    #[test]
    fn counts_serialise_by_kind_with_the_unexpected_beside_them() {
        let mut m = Messages::default();
        m.sent(b"INVITE sip:a SIP/2.0\r\n");
        m.sent(b"INVITE sip:a SIP/2.0\r\n");
        m.retransmitted(MessageKind::Request("INVITE"));
        m.timed_out(MessageKind::Request("INVITE"));
        m.received(MessageKind::Response(200));
        m.unexpected = 3;
        let mut other = Messages::default();
        other.received(MessageKind::Response(200));
        m.merge(&other);
        let v = serde_json::to_value(&m).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "INVITE": {"sent": 2, "retransmitted": 1, "timeouts": 1, "received": 0},
                "200": {"sent": 0, "retransmitted": 0, "timeouts": 0, "received": 2},
                "unexpected": 3
            })
        );
        let text = m.render();
        assert!(
            text.contains("\nINVITE              2              1         1          0\n"),
            "{text}"
        );
        assert!(text.contains("(3 unexpected messages received)"), "{text}");
        assert_eq!(Messages::default().render(), "");
        let back: Messages = serde_json::from_value(v).expect("reads back");
        assert_eq!(back, m);
        let bad = serde_json::json!({"999": {"sent": 1}});
        assert!(serde_json::from_value::<Messages>(bad).is_err());
    }
}
