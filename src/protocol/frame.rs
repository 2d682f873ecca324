//! The frame codec: the 7-byte header is checked against frame-max before a payload is buffered.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

use super::erlang::{Binary, Print};
use super::error::ConnectionError;

/// Method frame type octet.
pub const FRAME_METHOD: u8 = 1;
/// Content header frame type octet.
pub const FRAME_HEADER: u8 = 2;
/// Content body frame type octet.
pub const FRAME_BODY: u8 = 3;
/// Heartbeat frame type octet.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Header (7) plus frame-end (1).
pub const FRAME_OVERHEAD: u32 = 8;
/// The smallest frame-max a peer may negotiate.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The protocol header of AMQP 0-9-1, sent back to clients that speak anything else.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// One frame, its payload a zero-copy slice of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A method frame: class id, method id and arguments.
    Method {
        /// Channel number.
        channel: u16,
        /// Class id, method id, arguments.
        payload: Bytes,
    },
    /// A content header frame.
    Header {
        /// Channel number.
        channel: u16,
        /// Class id, weight, body size, property flags and list.
        payload: Bytes,
    },
    /// A content body frame.
    Body {
        /// Channel number.
        channel: u16,
        /// A slice of the message body.
        payload: Bytes,
    },
    /// A heartbeat.
    Heartbeat {
        /// Channel number (must be 0).
        channel: u16,
    },
}

/// Largest part of a frame reserved ahead of its bytes arriving: past it the buffer grows only as
/// the peer actually sends, so a header claiming a huge size costs the broker nothing.
const RESERVE_AHEAD: usize = 1 << 20;

/// Takes one complete frame off the front of `buf`; `Ok(None)` means more bytes are needed.
///
/// On an error the frame is consumed when the stream is still in step after it (an unknown frame
/// type: its length was honest), and left in `buf` when it is not (a size over `frame_max`, a bad
/// frame-end octet), so the caller can tell whether a later `close-ok` could still be read.
pub fn parse_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, ConnectionError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    // RabbitMQ lets a payload reach frame_max itself, because clients often forget the 8 octets of
    // frame overhead; it still names the limit without them.
    if frame_max != 0 && size > frame_max {
        let limit = frame_max.saturating_sub(FRAME_OVERHEAD);
        return Err(frame_error(
            kind,
            &[],
            format_args!("{{frame_too_large,{size},{limit}}}"),
        )
        .limit(super::Limit::FrameSize));
    }
    let Some(total) = usize::try_from(size)
        .ok()
        .and_then(|size| size.checked_add(8))
    else {
        return Err(frame_error(kind, &[], "frame_too_large"));
    };
    if buf.len() < total {
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(frame_error(
            kind,
            &buf[7..total - 1],
            format_args!("{{invalid_frame_end_marker,{end}}}"),
        ));
    }
    buf.advance(7);
    let payload = buf.split_to(total - 8).freeze();
    buf.advance(1);
    // As RabbitMQ's frame analysis: a method needs its two ids, a content header its class,
    // weight and body size, and a heartbeat is empty; anything else is not a frame it knows.
    Ok(Some(match kind {
        FRAME_METHOD if payload.len() >= 4 => Frame::Method { channel, payload },
        FRAME_HEADER if payload.len() >= 12 => Frame::Header { channel, payload },
        FRAME_BODY => Frame::Body { channel, payload },
        FRAME_HEARTBEAT if payload.is_empty() => Frame::Heartbeat { channel },
        _ => return Err(frame_error(kind, &payload, "unknown_frame")),
    }))
}

/// 501 in RabbitMQ's words: `type T, all octets = <<...>>: reason`.
fn frame_error(kind: u8, payload: &[u8], reason: impl fmt::Display) -> ConnectionError {
    let (which, shown) = octets(payload);
    ConnectionError::frame_error(format_args!(
        "type {kind}, {which} octets = {}: {reason}",
        Binary(shown, Print::Ascii)
    ))
}

/// RabbitMQ shows at most the first 16 octets of a bad frame, and says which it shows.
fn octets(payload: &[u8]) -> (&'static str, &[u8]) {
    match payload.get(..16) {
        Some(first) if payload.len() > 16 => ("first 16", first),
        _ => ("all", payload),
    }
}

/// Reads a short string (length octet + bytes) at `pos`, returning the slice and the next position.
pub fn short_str(payload: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let len = usize::from(*payload.get(pos)?);
    let start = pos + 1;
    let bytes = payload.get(start..start + len)?;
    Some((bytes, start + len))
}

/// Reads a big-endian u16 at `pos`.
pub fn be_u16(payload: &[u8], pos: usize) -> Option<u16> {
    let b = payload.get(pos..pos + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Reads a big-endian u32 at `pos`.
pub fn be_u32(payload: &[u8], pos: usize) -> Option<u32> {
    let b = payload.get(pos..pos + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a big-endian u64 at `pos`.
pub fn be_u64(payload: &[u8], pos: usize) -> Option<u64> {
    let b: [u8; 8] = payload.get(pos..pos + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, channel: u16, payload: &[u8], end: u8) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[kind]);
        b.extend_from_slice(&channel.to_be_bytes());
        b.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(0).to_be_bytes());
        b.extend_from_slice(payload);
        b.extend_from_slice(&[end]);
        b
    }

    #[test]
    fn parses_a_body_frame_and_waits_for_partial_ones() {
        let full = frame(FRAME_BODY, 3, b"hello", FRAME_END);
        let mut partial = BytesMut::from(&full[..9]);
        assert_eq!(parse_frame(&mut partial, 131072), Ok(None));
        let mut buf = full.clone();
        buf.extend_from_slice(&full);
        for _ in 0..2 {
            let f = parse_frame(&mut buf, 131072).ok().flatten();
            assert_eq!(
                f,
                Some(Frame::Body {
                    channel: 3,
                    payload: Bytes::from_static(b"hello")
                })
            );
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_oversized_frames_before_buffering() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[FRAME_BODY, 0, 1, 0, 1, 0, 0]);
        let e = parse_frame(&mut b, 4096).err().map(|e| e.code());
        assert_eq!(e, Some(501));
    }

    fn error_text(buf: &mut BytesMut, frame_max: u32) -> Option<String> {
        parse_frame(buf, frame_max).err().map(|e| e.0.reply_text)
    }

    #[test]
    fn refuses_bad_frame_end_and_unknown_types_in_rabbitmq_words() {
        let mut b = frame(FRAME_METHOD, 1, &[0, 85, 0, 10, 0], 0);
        assert_eq!(
            error_text(&mut b, 4096).as_deref(),
            Some(
                "FRAME_ERROR - type 1, all octets = <<0,85,0,10,0>>: {invalid_frame_end_marker,0}"
            )
        );
        assert_eq!(b.len(), 13, "an out-of-step frame is left in the buffer");
        let mut b = frame(9, 1, b"abc", FRAME_END);
        b.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
        assert_eq!(
            error_text(&mut b, 4096).as_deref(),
            Some("FRAME_ERROR - type 9, all octets = <<\"abc\">>: unknown_frame")
        );
        assert_eq!(
            parse_frame(&mut b, 4096),
            Ok(Some(Frame::Heartbeat { channel: 0 })),
            "an unknown frame type is consumed and the stream stays in step"
        );
        let mut b = frame(FRAME_HEARTBEAT, 0, &[1; 20], FRAME_END);
        assert_eq!(
            error_text(&mut b, 4096).as_deref(),
            Some(
                "FRAME_ERROR - type 8, first 16 octets = <<1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1>>: unknown_frame"
            )
        );
        let mut b = frame(FRAME_METHOD, 1, &[0, 10, 0], FRAME_END);
        assert_eq!(parse_frame(&mut b, 4096).err().map(|e| e.code()), Some(501));
    }

    #[test]
    fn a_payload_may_reach_frame_max_as_rabbitmq_allows() {
        let mut b = frame(FRAME_BODY, 1, &[0; 4096], FRAME_END);
        assert!(matches!(
            parse_frame(&mut b, 4096),
            Ok(Some(Frame::Body { .. }))
        ));
        let mut b = BytesMut::from(&[FRAME_BODY, 0, 1, 0, 0, 0x10, 0x01][..]);
        assert_eq!(
            error_text(&mut b, 4096).as_deref(),
            Some("FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}")
        );
    }

    #[test]
    fn a_huge_claimed_size_reserves_little() {
        let mut b = BytesMut::from(&[FRAME_BODY, 0, 1, 0xff, 0xff, 0xff, 0xf0][..]);
        assert_eq!(parse_frame(&mut b, 0), Ok(None));
        assert!(b.capacity() <= 2 * RESERVE_AHEAD);
    }
}
