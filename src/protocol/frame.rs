//! The frame codec: the 7-byte header is checked against frame-max before a payload is buffered.

use bytes::{Buf, Bytes, BytesMut};

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

/// Takes one complete frame off the front of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, ConnectionError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(ConnectionError::frame_error(format_args!(
            "type {kind}, first 16 octets = {:?}: unknown_frame",
            &buf[7..buf.len().min(23)]
        )));
    }
    let limit = frame_max.saturating_sub(FRAME_OVERHEAD);
    if frame_max != 0 && size > limit {
        return Err(ConnectionError::frame_error(format_args!(
            "type {kind}, first 16 octets = <<>>: {{frame_too_large,{size},{limit}}}"
        )));
    }
    let Ok(size) = usize::try_from(size) else {
        return Err(ConnectionError::frame_error("frame size out of range"));
    };
    let total = 7 + size + 1;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(ConnectionError::frame_error(format_args!(
            "type {kind}, channel {channel}: invalid_frame_end_marker"
        )));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    Ok(Some(match kind {
        FRAME_METHOD => Frame::Method { channel, payload },
        FRAME_HEADER => Frame::Header { channel, payload },
        FRAME_BODY => Frame::Body { channel, payload },
        _ => Frame::Heartbeat { channel },
    }))
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

    #[test]
    fn refuses_bad_frame_end_and_unknown_types() {
        let mut b = frame(FRAME_BODY, 1, b"x", 0);
        assert_eq!(parse_frame(&mut b, 4096).err().map(|e| e.code()), Some(501));
        let mut b = frame(9, 1, b"x", FRAME_END);
        assert_eq!(parse_frame(&mut b, 4096).err().map(|e| e.code()), Some(501));
    }
}
