//! Messages as the broker holds them: property bytes kept as received, a few fields decoded.

use std::fmt;
use std::ops::Range;

use amq_protocol::types::FieldTable;
use bytes::Bytes;

use super::frame::{be_u16, be_u32, short_str};
use super::table::{self, TooDeep};

/// The fields of `basic` properties the broker acts on, found by one scan of the raw bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertiesInfo {
    /// delivery-mode (2 = persistent), 0 when absent.
    pub delivery_mode: u8,
    /// priority, 0 when absent.
    pub priority: u8,
    /// Byte range of the headers table (including its length prefix).
    pub headers: Option<Range<u32>>,
    /// Byte range of the expiration short string's contents.
    pub expiration: Option<Range<u32>>,
    /// Byte range of the user-id short string's contents.
    pub user_id: Option<Range<u32>>,
    /// Byte range of the reply-to short string's contents.
    pub reply_to: Option<Range<u32>>,
}

/// Why a property list was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadProperties {
    /// Truncated, or flags for properties `basic` does not have.
    Malformed,
    /// The headers table nests too deep for anything after the wire to read it.
    TooDeep(TooDeep),
}

impl fmt::Display for BadProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("malformed content header"),
            Self::TooDeep(e) => write!(f, "cannot decode headers: {e}"),
        }
    }
}

const FLAG_CONTENT_TYPE: u16 = 1 << 15;
const FLAG_CONTENT_ENCODING: u16 = 1 << 14;
const FLAG_HEADERS: u16 = 1 << 13;
const FLAG_DELIVERY_MODE: u16 = 1 << 12;
const FLAG_PRIORITY: u16 = 1 << 11;
const FLAG_CORRELATION_ID: u16 = 1 << 10;
const FLAG_REPLY_TO: u16 = 1 << 9;
const FLAG_EXPIRATION: u16 = 1 << 8;
const FLAG_MESSAGE_ID: u16 = 1 << 7;
const FLAG_TIMESTAMP: u16 = 1 << 6;
const FLAG_TYPE: u16 = 1 << 5;
const FLAG_USER_ID: u16 = 1 << 4;
const FLAG_APP_ID: u16 = 1 << 3;
const FLAG_CLUSTER_ID: u16 = 1 << 2;

fn range(start: usize, end: usize) -> Option<Range<u32>> {
    Some(u32::try_from(start).ok()?..u32::try_from(end).ok()?)
}

impl PropertiesInfo {
    /// Scans property flags and list, and checks the headers table's nesting before any parser
    /// sees it (headers exchanges, dead-lettering and the store all read what passes here).
    pub fn scan(props: &[u8]) -> Result<Self, BadProperties> {
        let info = Self::locate(props).ok_or(BadProperties::Malformed)?;
        if let Some(r) = &info.headers {
            let start = usize::try_from(r.start).map_err(|_| BadProperties::Malformed)?;
            let raw = props.get(start..).ok_or(BadProperties::Malformed)?;
            table::check_depth(raw).map_err(BadProperties::TooDeep)?;
        }
        Ok(info)
    }

    /// Finds each property; `None` when the bytes are malformed.
    fn locate(props: &[u8]) -> Option<Self> {
        let flags = be_u16(props, 0)?;
        // Basic has 14 properties: a continuation word would describe properties that do not exist.
        if flags & 1 != 0 {
            return None;
        }
        let mut info = Self::default();
        let mut pos = 2;
        let skip_short = |pos: usize| short_str(props, pos).map(|(_, next)| next);
        if flags & FLAG_CONTENT_TYPE != 0 {
            pos = skip_short(pos)?;
        }
        if flags & FLAG_CONTENT_ENCODING != 0 {
            pos = skip_short(pos)?;
        }
        if flags & FLAG_HEADERS != 0 {
            let len = usize::try_from(be_u32(props, pos)?).ok()?;
            let end = pos.checked_add(4)?.checked_add(len)?;
            if end > props.len() {
                return None;
            }
            info.headers = range(pos, end);
            pos = end;
        }
        if flags & FLAG_DELIVERY_MODE != 0 {
            info.delivery_mode = *props.get(pos)?;
            pos += 1;
        }
        if flags & FLAG_PRIORITY != 0 {
            info.priority = *props.get(pos)?;
            pos += 1;
        }
        if flags & FLAG_CORRELATION_ID != 0 {
            pos = skip_short(pos)?;
        }
        if flags & FLAG_REPLY_TO != 0 {
            let (s, next) = short_str(props, pos)?;
            info.reply_to = range(next - s.len(), next);
            pos = next;
        }
        if flags & FLAG_EXPIRATION != 0 {
            let (s, next) = short_str(props, pos)?;
            info.expiration = range(next - s.len(), next);
            pos = next;
        }
        if flags & FLAG_MESSAGE_ID != 0 {
            pos = skip_short(pos)?;
        }
        if flags & FLAG_TIMESTAMP != 0 {
            pos += 8;
        }
        if flags & FLAG_TYPE != 0 {
            pos = skip_short(pos)?;
        }
        if flags & FLAG_USER_ID != 0 {
            let (s, next) = short_str(props, pos)?;
            info.user_id = range(next - s.len(), next);
            pos = next;
        }
        if flags & FLAG_APP_ID != 0 {
            pos = skip_short(pos)?;
        }
        if flags & FLAG_CLUSTER_ID != 0 {
            pos = skip_short(pos)?;
        }
        (pos <= props.len()).then_some(info)
    }
}

/// The class whose content the broker takes: `basic`.
const CLASS_BASIC: u16 = 60;

/// A content header frame, parsed: the class, weight and body size, then the property list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentHeader {
    /// The body size the publisher declares (a claim: nothing is reserved for it).
    pub body_size: u64,
    /// Property flags and list, a slice of the frame's payload.
    pub properties: Bytes,
    /// The fields of the properties the broker acts on.
    pub info: PropertiesInfo,
}

/// Why a content header frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHeader {
    /// Too short for its class, weight and body size.
    Malformed,
    /// A header for another class than `basic`.
    WrongClass(u16),
    /// Its property list was refused.
    Properties(BadProperties),
}

impl ContentHeader {
    /// Parses a content header frame's payload without copying it (the weight is unused, as
    /// in RabbitMQ).
    pub fn parse(payload: &Bytes) -> Result<Self, BadHeader> {
        let class = be_u16(payload, 0).ok_or(BadHeader::Malformed)?;
        if class != CLASS_BASIC {
            return Err(BadHeader::WrongClass(class));
        }
        let body_size = super::frame::be_u64(payload, 4).ok_or(BadHeader::Malformed)?;
        let properties = payload.slice(12..);
        let info = PropertiesInfo::scan(&properties).map_err(BadHeader::Properties)?;
        Ok(Self {
            body_size,
            properties,
            info,
        })
    }
}

impl From<BadHeader> for super::error::ConnectionError {
    fn from(e: BadHeader) -> Self {
        match e {
            BadHeader::Malformed => Self::frame_error(BadProperties::Malformed),
            BadHeader::WrongClass(class) => Self::unexpected_frame(format_args!(
                "expected content header for class {CLASS_BASIC}, got one for class {class} instead"
            )),
            BadHeader::Properties(e @ BadProperties::TooDeep(_)) => {
                Self::frame_error(e).limit(super::Limit::TableDepth)
            }
            BadHeader::Properties(e) => Self::frame_error(e),
        }
    }
}

/// A published message: routed once, shared by every queue and delivery through an `Arc`.
#[derive(Debug, Clone)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: Bytes,
    /// Its routing key.
    pub routing_key: Bytes,
    /// Property flags and list, exactly as the publisher sent them.
    pub properties: Bytes,
    /// The decoded fields the broker needs.
    pub info: PropertiesInfo,
    /// The body, sliced from the read buffer when it came in one frame.
    pub body: Bytes,
}

impl Message {
    /// A message made of its parts.
    pub fn new(
        exchange: Bytes,
        routing_key: Bytes,
        properties: Bytes,
        info: PropertiesInfo,
        body: Bytes,
    ) -> Self {
        Self {
            exchange,
            routing_key,
            properties,
            info,
            body,
        }
    }

    /// Whether the publisher asked for delivery-mode 2.
    pub fn persistent(&self) -> bool {
        self.info.delivery_mode == 2
    }

    fn slice(&self, r: &Option<Range<u32>>) -> Option<&[u8]> {
        let r = r.as_ref()?;
        self.properties
            .get(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?)
    }

    /// The expiration property's raw contents.
    pub fn expiration(&self) -> Option<&[u8]> {
        self.slice(&self.info.expiration)
    }

    /// The reply-to property's raw contents.
    pub fn reply_to(&self) -> Option<&[u8]> {
        self.slice(&self.info.reply_to)
    }

    /// The same message with its reply-to property replaced (direct reply-to names).
    pub fn with_reply_to(&self, reply_to: &str) -> Option<Self> {
        let r = self.info.reply_to.as_ref()?;
        let (start, end) = (usize::try_from(r.start).ok()?, usize::try_from(r.end).ok()?);
        let len = u8::try_from(reply_to.len()).ok()?;
        let mut props = Vec::with_capacity(self.properties.len() + reply_to.len());
        props.extend_from_slice(self.properties.get(..start.checked_sub(1)?)?);
        props.push(len);
        props.extend_from_slice(reply_to.as_bytes());
        props.extend_from_slice(self.properties.get(end..)?);
        let info = PropertiesInfo::scan(&props).ok()?;
        Some(Self::new(
            self.exchange.clone(),
            self.routing_key.clone(),
            Bytes::from(props),
            info,
            self.body.clone(),
        ))
    }

    /// The user-id property's raw contents.
    pub fn user_id(&self) -> Option<&[u8]> {
        self.slice(&self.info.user_id)
    }

    /// The headers table, decoded on demand (headers exchanges, dead-lettering).
    pub fn headers(&self) -> Option<FieldTable> {
        let raw = self.slice(&self.info.headers)?;
        amq_protocol::types::parsing::parse_field_table(raw)
            .ok()
            .map(|(_, t)| t)
    }

    /// The routing key as text (routing keys are UTF-8 in practice; others never match a pattern).
    pub fn routing_key_str(&self) -> &str {
        std::str::from_utf8(&self.routing_key).unwrap_or("\u{fffd}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_delivery_mode_priority_and_expiration() {
        // flags: delivery-mode, priority, expiration
        let flags = FLAG_DELIVERY_MODE | FLAG_PRIORITY | FLAG_EXPIRATION;
        let mut p = flags.to_be_bytes().to_vec();
        p.extend_from_slice(&[2, 7, 4]);
        p.extend_from_slice(b"1000");
        let info = PropertiesInfo::scan(&p).ok();
        assert_eq!(info.as_ref().map(|i| i.delivery_mode), Some(2));
        assert_eq!(info.as_ref().map(|i| i.priority), Some(7));
        assert_eq!(info.and_then(|i| i.expiration), Some(5..9));
    }

    #[test]
    fn refuses_truncated_properties() {
        let flags = FLAG_CONTENT_TYPE;
        let mut p = flags.to_be_bytes().to_vec();
        p.extend_from_slice(&[10, b'a']);
        let malformed = Err(BadProperties::Malformed);
        assert_eq!(PropertiesInfo::scan(&p), malformed);
        assert_eq!(PropertiesInfo::scan(&[0]), malformed);
        assert!(PropertiesInfo::scan(&[0, 0]).is_ok());
    }

    #[test]
    fn refuses_headers_nested_past_the_limit() {
        let props = |depth: usize| {
            let mut t = vec![0, 0, 0, 0];
            for _ in 1..depth {
                let inner = [&[1, b'k', b'F'][..], &t].concat();
                let len = u32::try_from(inner.len()).unwrap_or(0);
                t = [&len.to_be_bytes()[..], &inner].concat();
            }
            let mut p = (FLAG_HEADERS | FLAG_DELIVERY_MODE).to_be_bytes().to_vec();
            p.extend_from_slice(&t);
            p.push(2);
            p
        };
        let ok = PropertiesInfo::scan(&props(table::MAX_DEPTH));
        assert_eq!(ok.map(|i| i.delivery_mode), Ok(2));
        assert_eq!(
            PropertiesInfo::scan(&props(table::MAX_DEPTH + 1)),
            Err(BadProperties::TooDeep(TooDeep))
        );
    }

    fn header(class: u16, size: u64, props: &[u8]) -> Bytes {
        let mut p = class.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(props);
        Bytes::from(p)
    }

    fn refusal(payload: &Bytes) -> Option<String> {
        let e = ContentHeader::parse(payload).err()?;
        Some(super::super::error::ConnectionError::from(e).0.reply_text)
    }

    #[test]
    fn parses_a_content_header_as_a_slice_of_its_frame() {
        let payload = header(
            60,
            5,
            &[&FLAG_DELIVERY_MODE.to_be_bytes()[..], &[2]].concat(),
        );
        let parsed = ContentHeader::parse(&payload).ok();
        assert_eq!(parsed.as_ref().map(|h| h.body_size), Some(5));
        assert_eq!(parsed.as_ref().map(|h| h.info.delivery_mode), Some(2));
        let props = parsed.map(|h| h.properties).unwrap_or_default();
        assert_eq!(props.as_ptr(), payload[12..].as_ptr(), "not a copy");
    }

    #[test]
    fn refuses_content_headers_in_rabbitmq_words() {
        assert_eq!(
            refusal(&header(50, 0, &[0, 0])).as_deref(),
            Some(
                "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead"
            )
        );
        assert_eq!(
            refusal(&Bytes::from_static(&[0, 60, 0, 0, 0])).as_deref(),
            Some("FRAME_ERROR - malformed content header")
        );
        assert_eq!(
            refusal(&header(60, 0, &[0])).as_deref(),
            Some("FRAME_ERROR - malformed content header")
        );
    }
}
