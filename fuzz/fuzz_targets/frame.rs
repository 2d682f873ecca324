//! The frame reader over a byte stream arriving in pieces: it takes whole frames or nothing,
//! never more than it was given, and what it hands on decodes without panicking.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
// Linked for its allocator, which turns a huge allocation into a crash.
use warren::protocol::content::ContentHeader;
use warren::protocol::frame::{FRAME_END, FRAME_MIN_SIZE, Frame, parse_frame};
use warren::protocol::{ConnectionError, method};
use warren_fuzz as _;

fuzz_target!(|data: &[u8]| {
    let [max, piece, stream @ ..] = data else {
        return;
    };
    let frame_max = [0, FRAME_MIN_SIZE, 131_072][usize::from(*max % 3)];
    let mut buf = BytesMut::new();
    for chunk in stream.chunks(usize::from(*piece).max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            let before = Bytes::copy_from_slice(&buf);
            let result = parse_frame(&mut buf, frame_max);
            let taken = before.len() - buf.len();
            assert_eq!(
                buf[..],
                before[taken..],
                "only the front of the buffer is taken"
            );
            match result {
                Ok(None) => {
                    assert_eq!(taken, 0, "waiting for more takes nothing");
                    break;
                }
                Ok(Some(frame)) => check_frame(frame, &before[..taken], frame_max),
                // The connection closes after an error that leaves the stream out of step.
                Err(e) if taken == 0 => return check_error(&e),
                Err(e) => {
                    check_error(&e);
                    assert_eq!(
                        before[taken - 1],
                        FRAME_END,
                        "a frame consumed on error is whole"
                    );
                    assert_eq!(taken, declared(&before) + 8);
                }
            }
        }
    }
});

/// The payload size the header at the front of `raw` declares.
fn declared(raw: &[u8]) -> usize {
    let size = u32::from_be_bytes([raw[3], raw[4], raw[5], raw[6]]);
    usize::try_from(size).expect("a u32 fits in usize")
}

fn check_frame(frame: Frame, raw: &[u8], frame_max: u32) {
    assert_eq!(
        raw.len(),
        declared(raw) + 8,
        "a frame is its header, payload and end octet"
    );
    assert_eq!(raw[raw.len() - 1], FRAME_END);
    assert!(frame_max == 0 || declared(raw) <= usize::try_from(frame_max).unwrap_or(usize::MAX));
    let channel = u16::from_be_bytes([raw[1], raw[2]]);
    let payload = &raw[7..raw.len() - 1];
    let (kind, c, p) = match &frame {
        Frame::Method { channel, payload } => (1, *channel, &payload[..]),
        Frame::Header { channel, payload } => (2, *channel, &payload[..]),
        Frame::Body { channel, payload } => (3, *channel, &payload[..]),
        Frame::Heartbeat { channel } => (8, *channel, &[][..]),
    };
    assert_eq!((raw[0], c, p), (kind, channel, payload));
    match frame {
        Frame::Method { payload, .. } => {
            if let Err(e) = method::decode(&payload) {
                check_error(&e);
            }
        }
        Frame::Header { payload, .. } => {
            if let Err(e) = ContentHeader::parse(&payload) {
                check_error(&ConnectionError::from(e));
            }
        }
        Frame::Body { .. } | Frame::Heartbeat { .. } => {}
    }
}

/// Errors out of the reader are the connection-level codes RabbitMQ closes with.
fn check_error(e: &ConnectionError) {
    assert!(
        matches!(e.code(), 501..=505),
        "unexpected reply code {}",
        e.code()
    );
    assert!(
        e.0.reply_text.len() <= 255,
        "reply text must fit a short string"
    );
}
