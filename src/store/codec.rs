//! Record encodings: length-prefixed fields, so a damaged record fails to decode instead of panicking.

use bytes::Bytes;

fn put(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&field[..usize::try_from(len).unwrap_or(0).min(field.len())]);
}

/// Appends one length-prefixed field, as [`StoredMessage::decode`] reads each part.
pub fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    put(out, field);
}

/// Appends one length-prefixed field that `fill` writes in place.
pub fn put_field_with(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    fill(out);
    let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A `meta` tree key: a kind octet, then vhost and name.
fn named_key(kind: u8, vhost: &str, name: &str) -> Vec<u8> {
    let mut k = vec![kind];
    put(&mut k, vhost.as_bytes());
    put(&mut k, name.as_bytes());
    k
}

struct Reader<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(raw: &'a [u8]) -> Self {
        Self { raw, pos: 0 }
    }

    fn field(&mut self) -> Option<(usize, usize)> {
        let len_bytes: [u8; 4] = self.raw.get(self.pos..self.pos + 4)?.try_into().ok()?;
        let len = usize::try_from(u32::from_be_bytes(len_bytes)).ok()?;
        let start = self.pos + 4;
        let end = start.checked_add(len)?;
        if end > self.raw.len() {
            return None;
        }
        self.pos = end;
        Some((start, end))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let (s, e) = self.field()?;
        self.raw.get(s..e)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes()?.try_into().ok()?))
    }

    fn flag(&mut self) -> Option<bool> {
        match self.bytes()? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

/// A persistent message as stored: its parts, sliced from one buffer when read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Message id (the body's key).
    pub id: u64,
    /// Exchange it was published to.
    pub exchange: Bytes,
    /// Routing key.
    pub routing_key: Bytes,
    /// Property flags and list, as received.
    pub properties: Bytes,
    /// Body.
    pub body: Bytes,
}

/// Encodes a message's exchange, routing key, properties and body as [`StoredMessage::decode`]
/// reads them, in one allocation.
pub fn encode_message(parts: [&[u8]; 4]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(16 + len);
    put_message(&mut out, parts);
    out
}

/// Appends a message's exchange, routing key, properties and body to `out`, as
/// [`StoredMessage::decode`] reads them.
pub fn put_message(out: &mut Vec<u8>, parts: [&[u8]; 4]) {
    for p in parts {
        put(out, p);
    }
}

impl StoredMessage {
    /// Encodes the message for the `messages` tree.
    pub fn encode(&self) -> Vec<u8> {
        encode_message([
            &self.exchange,
            &self.routing_key,
            &self.properties,
            &self.body,
        ])
    }

    /// Decodes a stored message without copying its parts.
    pub fn decode(id: u64, raw: Bytes) -> Option<Self> {
        let mut r = Reader::new(&raw);
        let ex = r.field()?;
        let rk = r.field()?;
        let props = r.field()?;
        let body = r.field()?;
        Some(Self {
            id,
            exchange: raw.slice(ex.0..ex.1),
            routing_key: raw.slice(rk.0..rk.1),
            properties: raw.slice(props.0..props.1),
            body: raw.slice(body.0..body.1),
        })
    }
}

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRecord {
    /// Vhost.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Internal flag.
    pub internal: bool,
    /// Arguments as an AMQP field table (with its length prefix).
    pub arguments: Vec<u8>,
}

impl ExchangeRecord {
    /// The record's key in the `meta` tree.
    pub fn key(vhost: &str, name: &str) -> Vec<u8> {
        named_key(b'x', vhost, name)
    }

    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, self.vhost.as_bytes());
        put(&mut out, self.name.as_bytes());
        put(&mut out, self.kind.as_bytes());
        put(&mut out, &[u8::from(self.auto_delete)]);
        put(&mut out, &[u8::from(self.internal)]);
        put(&mut out, &self.arguments);
        out
    }

    /// Decodes a record; `None` if damaged.
    pub fn decode(raw: &[u8]) -> Option<Self> {
        let mut r = Reader::new(raw);
        Some(Self {
            vhost: r.string()?,
            name: r.string()?,
            kind: r.string()?,
            auto_delete: r.flag()?,
            internal: r.flag()?,
            arguments: r.bytes()?.to_vec(),
        })
    }
}

/// A durable queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecord {
    /// The id its messages are indexed under.
    pub id: u64,
    /// Vhost.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Arguments as an AMQP field table (with its length prefix).
    pub arguments: Vec<u8>,
}

impl QueueRecord {
    /// The record's key in the `meta` tree.
    pub fn key(vhost: &str, name: &str) -> Vec<u8> {
        named_key(b'q', vhost, name)
    }

    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, &self.id.to_be_bytes());
        put(&mut out, self.vhost.as_bytes());
        put(&mut out, self.name.as_bytes());
        put(&mut out, &[u8::from(self.auto_delete)]);
        put(&mut out, &self.arguments);
        out
    }

    /// Decodes a record; `None` if damaged.
    pub fn decode(raw: &[u8]) -> Option<Self> {
        let mut r = Reader::new(raw);
        Some(Self {
            id: r.u64()?,
            vhost: r.string()?,
            name: r.string()?,
            auto_delete: r.flag()?,
            arguments: r.bytes()?.to_vec(),
        })
    }
}

/// A binding between durable entities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRecord {
    /// Vhost.
    pub vhost: String,
    /// Source exchange.
    pub source: String,
    /// Destination name.
    pub destination: String,
    /// Whether the destination is a queue (else an exchange).
    pub to_queue: bool,
    /// Routing key.
    pub routing_key: String,
    /// Arguments as an AMQP field table (with its length prefix).
    pub arguments: Vec<u8>,
}

impl BindingRecord {
    /// The record's key: its whole content, so distinct bindings never collide.
    pub fn key(&self) -> Vec<u8> {
        let mut k = vec![b'b'];
        k.extend_from_slice(&self.encode());
        k
    }

    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, self.vhost.as_bytes());
        put(&mut out, self.source.as_bytes());
        put(&mut out, self.destination.as_bytes());
        put(&mut out, &[u8::from(self.to_queue)]);
        put(&mut out, self.routing_key.as_bytes());
        put(&mut out, &self.arguments);
        out
    }

    /// Decodes a record; `None` if damaged.
    pub fn decode(raw: &[u8]) -> Option<Self> {
        let mut r = Reader::new(raw);
        Some(Self {
            vhost: r.string()?,
            source: r.string()?,
            destination: r.string()?,
            to_queue: r.flag()?,
            routing_key: r.string()?,
            arguments: r.bytes()?.to_vec(),
        })
    }
}

/// A message a delayed exchange holds: which exchange routes it, and when. The message's body is
/// stored once under its id, like a queued message's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayRecord {
    /// The held message's id (its body's key).
    pub message_id: u64,
    /// Vhost.
    pub vhost: String,
    /// The delayed exchange that routes it once due.
    pub exchange: String,
    /// When it is due, in milliseconds since the Unix epoch: wall-clock time, so that it still
    /// means the same moment after a restart.
    pub due_ms: u64,
}

impl DelayRecord {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.vhost.len() + self.exchange.len());
        put(&mut out, &self.message_id.to_be_bytes());
        put(&mut out, self.vhost.as_bytes());
        put(&mut out, self.exchange.as_bytes());
        put(&mut out, &self.due_ms.to_be_bytes());
        out
    }

    /// Decodes a record; `None` if damaged.
    pub fn decode(raw: &[u8]) -> Option<Self> {
        let mut r = Reader::new(raw);
        Some(Self {
            message_id: r.u64()?,
            vhost: r.string()?,
            exchange: r.string()?,
            due_ms: r.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_records_round_trip_and_refuse_damage() {
        let r = DelayRecord {
            message_id: 7,
            vhost: "/".into(),
            exchange: "later".into(),
            due_ms: 1_700_000_000_123,
        };
        let raw = r.encode();
        assert_eq!(DelayRecord::decode(&raw), Some(r));
        assert_eq!(DelayRecord::decode(&raw[..raw.len() - 1]), None);
    }
}
