//! Content headers and their properties: what the broker's scan finds lies inside the properties
//! and agrees with amq-protocol's full parse, and replacing reply-to keeps every other property.
#![no_main]

use std::ops::Range;

use amq_protocol::protocol::basic::parse_properties;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use warren::protocol::content::ContentHeader;
use warren::protocol::{ConnectionError, Message};
use warren_fuzz::table_bytes;

/// A direct reply-to name as the broker writes one into a request's properties.
const REPLY_TO: &str = "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAAAAAAAAB";

fuzz_target!(|data: &[u8]| {
    let header = match ContentHeader::parse(&Bytes::copy_from_slice(data)) {
        Ok(header) => header,
        Err(e) => {
            let code = ConnectionError::from(e).code();
            assert!(matches!(code, 501 | 505), "unexpected reply code {code}");
            return;
        }
    };
    let info = &header.info;
    let len = header.properties.len();
    for r in [
        &info.headers,
        &info.expiration,
        &info.user_id,
        &info.reply_to,
    ] {
        assert!(
            r.as_ref()
                .is_none_or(|r| r.start <= r.end && at(r).end <= len)
        );
    }
    let msg = Message::new(
        Bytes::new(),
        Bytes::new(),
        header.properties.clone(),
        info.clone(),
        Bytes::new(),
    );
    if let Ok((_, props)) = parse_properties(&header.properties[..]) {
        assert_eq!(props.delivery_mode().unwrap_or(0), info.delivery_mode);
        assert_eq!(props.priority().unwrap_or(0), info.priority);
        let text = |s: &Option<amq_protocol::types::ShortString>| {
            s.as_ref().map(|s| s.as_str().as_bytes().to_vec())
        };
        assert_eq!(
            text(props.expiration()),
            msg.expiration().map(<[u8]>::to_vec)
        );
        assert_eq!(text(props.reply_to()), msg.reply_to().map(<[u8]>::to_vec));
        assert_eq!(text(props.user_id()), msg.user_id().map(<[u8]>::to_vec));
        assert_eq!(props.headers().is_some(), info.headers.is_some());
        if props.headers().is_some() {
            // Floats make `==` on tables unreliable (NaN); their encodings compare exactly.
            let written = |t: Option<&amq_protocol::types::FieldTable>| t.map(table_bytes);
            assert_eq!(
                written(props.headers().as_ref()),
                written(msg.headers().as_ref())
            );
        }
    }
    let _ = msg.headers();
    if let Some(replaced) = msg.with_reply_to(REPLY_TO) {
        assert_eq!(replaced.reply_to(), Some(REPLY_TO.as_bytes()));
        assert_eq!(replaced.expiration(), msg.expiration());
        assert_eq!(replaced.user_id(), msg.user_id());
        assert_eq!(replaced.persistent(), msg.persistent());
        assert_eq!(replaced.info.priority, msg.info.priority);
        let headers = |m: &Message| {
            m.info
                .headers
                .as_ref()
                .map(|r| m.properties[at(r)].to_vec())
        };
        assert_eq!(headers(&replaced), headers(&msg));
    } else {
        assert!(
            msg.reply_to().is_none(),
            "a reply-to present can always be replaced"
        );
    }
});

fn at(r: &Range<u32>) -> Range<usize> {
    let index = |i: u32| usize::try_from(i).expect("a u32 fits in usize");
    index(r.start)..index(r.end)
}
