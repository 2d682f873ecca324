//! Outbound frames, encoded straight into the connection's write buffer.
//!
//! Control methods go through amq-protocol's generator; the per-message methods (deliver, get-ok,
//! return, confirm acks) are written by hand so a delivery costs no intermediate allocation.

use amq_protocol::frame::{AMQPFrame, gen_frame};
use amq_protocol::protocol::AMQPClass;
use bytes::{BufMut, BytesMut};

use super::content::Message;
use super::frame::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};

const CLASS_BASIC: u16 = 60;

/// Appends one method frame built by amq-protocol.
pub fn method(buf: &mut BytesMut, channel: u16, class: AMQPClass) {
    let frame = AMQPFrame::Method(channel, class);
    // Writing into a Vec cannot fail for lack of space.
    if let Ok((out, _)) = cookie_factory::r#gen(gen_frame(&frame), Vec::with_capacity(64)) {
        buf.extend_from_slice(&out);
    }
}

/// Appends a heartbeat frame.
pub fn heartbeat(buf: &mut BytesMut) {
    buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Writes a frame header with a placeholder size and returns where the size goes.
fn begin(buf: &mut BytesMut, kind: u8, channel: u16) -> usize {
    buf.put_u8(kind);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    at
}

fn finish(buf: &mut BytesMut, size_at: usize) {
    let size = buf.len() - size_at - 4;
    let size = u32::try_from(size).unwrap_or(u32::MAX);
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

fn put_short(buf: &mut BytesMut, s: &[u8]) {
    let len = u8::try_from(s.len()).unwrap_or(u8::MAX);
    buf.put_u8(len);
    buf.put_slice(&s[..usize::from(len)]);
}

/// Appends the content header and body frames of `msg`, split to the peer's frame-max.
pub fn content(buf: &mut BytesMut, channel: u16, msg: &Message, frame_max: u32) {
    let at = begin(buf, FRAME_HEADER, channel);
    buf.put_u16(CLASS_BASIC);
    buf.put_u16(0);
    buf.put_u64(u64::try_from(msg.body.len()).unwrap_or(u64::MAX));
    buf.put_slice(&msg.properties);
    finish(buf, at);
    let chunk = usize::try_from(frame_max.saturating_sub(8))
        .unwrap_or(usize::MAX)
        .max(1);
    buf.reserve(msg.body.len() + (msg.body.len() / chunk + 1) * 8);
    for part in msg.body.chunks(chunk) {
        let at = begin(buf, FRAME_BODY, channel);
        buf.put_slice(part);
        finish(buf, at);
    }
}

/// Appends `basic.deliver` and the message content.
#[allow(clippy::too_many_arguments)]
pub fn deliver(
    buf: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    msg: &Message,
    frame_max: u32,
) {
    let at = begin(buf, FRAME_METHOD, channel);
    buf.put_u16(CLASS_BASIC);
    buf.put_u16(60);
    put_short(buf, consumer_tag.as_bytes());
    buf.put_u64(delivery_tag);
    buf.put_u8(u8::from(redelivered));
    put_short(buf, &msg.exchange);
    put_short(buf, &msg.routing_key);
    finish(buf, at);
    content(buf, channel, msg, frame_max);
}

/// Appends `basic.get-ok` and the message content.
pub fn get_ok(
    buf: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    message_count: u32,
    msg: &Message,
    frame_max: u32,
) {
    let at = begin(buf, FRAME_METHOD, channel);
    buf.put_u16(CLASS_BASIC);
    buf.put_u16(71);
    buf.put_u64(delivery_tag);
    buf.put_u8(u8::from(redelivered));
    put_short(buf, &msg.exchange);
    put_short(buf, &msg.routing_key);
    buf.put_u32(message_count);
    finish(buf, at);
    content(buf, channel, msg, frame_max);
}

/// Appends `basic.return` and the message content.
pub fn basic_return(
    buf: &mut BytesMut,
    channel: u16,
    reply_code: u16,
    reply_text: &str,
    msg: &Message,
    frame_max: u32,
) {
    let at = begin(buf, FRAME_METHOD, channel);
    buf.put_u16(CLASS_BASIC);
    buf.put_u16(50);
    buf.put_u16(reply_code);
    put_short(buf, reply_text.as_bytes());
    put_short(buf, &msg.exchange);
    put_short(buf, &msg.routing_key);
    finish(buf, at);
    content(buf, channel, msg, frame_max);
}

/// Appends a publisher-confirm `basic.ack` (or `basic.nack` when `nack`).
pub fn confirm(buf: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool, nack: bool) {
    let at = begin(buf, FRAME_METHOD, channel);
    buf.put_u16(CLASS_BASIC);
    buf.put_u16(if nack { 120 } else { 80 });
    buf.put_u64(delivery_tag);
    // Bit 0 is `multiple`; a confirm nack leaves `requeue` (bit 1) clear.
    buf.put_u8(u8::from(multiple));
    finish(buf, at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{Frame, parse_frame};
    use bytes::Bytes;

    #[test]
    fn a_large_body_is_split_to_frame_max() {
        let msg = Message::new(
            Bytes::new(),
            Bytes::from_static(b"q"),
            Bytes::from_static(&[0, 0]),
            Default::default(),
            Bytes::from(vec![7u8; 10_000]),
        );
        let mut buf = BytesMut::new();
        deliver(&mut buf, 1, "ctag", 1, false, &msg, 4096);
        let mut bodies = 0;
        let mut total = 0;
        while let Ok(Some(f)) = parse_frame(&mut buf, 4096) {
            if let Frame::Body { payload, .. } = f {
                bodies += 1;
                total += payload.len();
            }
        }
        assert_eq!((bodies, total), (3, 10_000));
        assert!(buf.is_empty());
    }
}
