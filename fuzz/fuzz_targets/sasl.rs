//! The SASL responses of PLAIN and AMQPLAIN: a login read from one is what a client would have
//! sent for it, and reads the same again when a client writes it.
#![no_main]

use amq_protocol::auth::{Credentials, SASLMechanism};
use libfuzzer_sys::fuzz_target;
// Linked for its allocator, which turns a huge allocation into a crash.
use warren::broker::auth::{parse_amqplain, parse_plain};
use warren::protocol::table;
use warren_fuzz as _;

fuzz_target!(|data: &[u8]| {
    if let Some((user, password)) = parse_plain(data) {
        let tail = format!("\0{user}\0{password}");
        assert!(
            data.ends_with(tail.as_bytes()),
            "PLAIN is authzid NUL user NUL password"
        );
        assert!(!data[..data.len() - tail.len()].contains(&0));
        assert!(!user.contains('\0') && !password.contains('\0'));
        let again = written(SASLMechanism::Plain, &user, &password);
        assert_eq!(parse_plain(&again), Some((user, password)));
    }
    if let Some((login, password)) = parse_amqplain(data) {
        let again = written(SASLMechanism::AMQPlain, &login, &password);
        assert_eq!(
            parse_amqplain(&again),
            Some((login.clone(), password.clone()))
        );
        // Some clients write short strings, tagged 's' as the 0-9-1 spec has it.
        let short = |s: &str| -> Option<Vec<u8>> {
            Some([&[b's', u8::try_from(s.len()).ok()?][..], s.as_bytes()].concat())
        };
        if let (Some(l), Some(p)) = (short(&login), short(&password)) {
            let mut out = Vec::new();
            table::put_table(
                &mut out,
                [(&b"LOGIN"[..], &l[..]), (&b"PASSWORD"[..], &p[..])],
            );
            assert_eq!(parse_amqplain(&out[4..]), Some((login, password)));
        }
    }
});

/// The response a client (amq-protocol's) sends for these credentials.
fn written(mechanism: SASLMechanism, user: &str, password: &str) -> Vec<u8> {
    Credentials::new(user.into(), password.into())
        .sasl_auth_string(mechanism)
        .as_bytes()
        .to_vec()
}
