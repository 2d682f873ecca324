//! Method decoding: a decoded method says what its octets say, and one that amq-protocol wrote
//! back decodes to the same method again.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use warren::protocol::method::{Decoded, Method, decode};
use warren_fuzz::method_bytes;

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    let decoded = match decode(&payload) {
        Ok(decoded) => decoded,
        Err(e) => {
            assert!(
                matches!(e.code(), 501 | 503),
                "unexpected reply code {}",
                e.code()
            );
            return;
        }
    };
    assert_eq!(data[..2], decoded.class_id.to_be_bytes());
    assert_eq!(data[2..4], decoded.method_id.to_be_bytes());
    match decoded.method {
        Method::Publish {
            exchange,
            routing_key,
            mandatory,
            immediate,
        } => {
            let bits = u8::from(mandatory) | (u8::from(immediate) << 1);
            let len = |s: &[u8]| u8::try_from(s.len()).expect("a short string");
            let wire = [
                &data[..6],
                &[len(&exchange)][..],
                &exchange[..],
                &[len(&routing_key)][..],
                &routing_key[..],
            ]
            .concat();
            assert!(data.starts_with(&wire), "publish fields are read in order");
            assert_eq!(data[wire.len()] & 3, bits);
        }
        Method::Ack {
            delivery_tag,
            multiple,
        } => {
            assert_eq!(data[4..12], delivery_tag.to_be_bytes());
            assert_eq!(data[12] & 1 != 0, multiple);
        }
        Method::Qos {
            prefetch_size,
            prefetch_count,
            global,
        } => {
            assert_eq!(data[4..8], prefetch_size.to_be_bytes());
            assert_eq!(data[8..10], prefetch_count.to_be_bytes());
            assert_eq!(data[10] & 1 != 0, global);
        }
        Method::Other(class) => {
            // Floats make `==` on methods unreliable (NaN); their encodings compare exactly.
            let written = method_bytes(&class);
            let again = decode(&Bytes::from(written.clone()));
            let Ok(Decoded {
                method: Method::Other(again),
                class_id,
                method_id,
            }) = again
            else {
                panic!("a method amq-protocol wrote does not decode: {again:?}");
            };
            assert_eq!((class_id, method_id), (decoded.class_id, decoded.method_id));
            assert_eq!(method_bytes(&again), written);
        }
    }
});
