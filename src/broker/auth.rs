//! Authentication helpers: RabbitMQ-compatible salted password hashes and SASL PLAIN/AMQPLAIN parsing.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256, Sha512};

use crate::protocol::table::{self, ShortS};

/// RabbitMQ's salt is always four bytes, whatever the hashing algorithm.
const SALT_LEN: usize = 4;

/// How a password hash was made, under RabbitMQ's names for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HashingAlgorithm {
    /// base64(salt ++ sha256(salt ++ password)), RabbitMQ's default.
    #[default]
    #[serde(rename = "rabbit_password_hashing_sha256")]
    Sha256,
    /// base64(salt ++ sha512(salt ++ password)).
    #[serde(rename = "rabbit_password_hashing_sha512")]
    Sha512,
}

impl HashingAlgorithm {
    /// RabbitMQ's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "rabbit_password_hashing_sha256",
            Self::Sha512 => "rabbit_password_hashing_sha512",
        }
    }

    /// The algorithm by RabbitMQ's name for it.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Sha256, Self::Sha512]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// The algorithm that made `hash`, told by its length (SHA-256 unless it is SHA-512's).
    pub fn of_hash(hash: &str) -> Self {
        match STANDARD.decode(hash.trim()) {
            Ok(d) if d.len() == SALT_LEN + 64 => Self::Sha512,
            _ => Self::Sha256,
        }
    }

    /// Hashes `password` with a fresh salt.
    pub fn hash(self, password: &str) -> String {
        hash_with_salt(self, rand::random::<[u8; SALT_LEN]>(), password)
    }
}

/// Hashes `password` in RabbitMQ's `rabbit_password_hashing_sha256` format: base64(salt ++ sha256(salt ++ password)).
pub fn hash_password(password: &str) -> String {
    HashingAlgorithm::Sha256.hash(password)
}

fn hash_with_salt(algorithm: HashingAlgorithm, salt: [u8; SALT_LEN], password: &str) -> String {
    let pw = password.as_bytes();
    let digest = match algorithm {
        HashingAlgorithm::Sha256 => Sha256::new()
            .chain_update(salt)
            .chain_update(pw)
            .finalize()
            .to_vec(),
        HashingAlgorithm::Sha512 => Sha512::new()
            .chain_update(salt)
            .chain_update(pw)
            .finalize()
            .to_vec(),
    };
    let mut stored = Vec::with_capacity(SALT_LEN + digest.len());
    stored.extend_from_slice(&salt);
    stored.extend_from_slice(&digest);
    STANDARD.encode(stored)
}

/// Checks `password` against a stored RabbitMQ hash; false for a wrong password or a malformed hash.
///
/// Accepts SHA-256 hashes and, so that definitions exported with
/// `rabbit_password_hashing_sha512` still work, SHA-512 ones (told apart by length).
pub fn verify_password(stored_hash: &str, password: &str) -> bool {
    let Ok(decoded) = STANDARD.decode(stored_hash.trim()) else {
        return false;
    };
    let Some((salt, expected)) = decoded.split_at_checked(SALT_LEN) else {
        return false;
    };
    let pw = password.as_bytes();
    match expected.len() {
        32 => constant_time_eq(
            &Sha256::new().chain_update(salt).chain_update(pw).finalize(),
            expected,
        ),
        64 => constant_time_eq(
            &Sha512::new().chain_update(salt).chain_update(pw).finalize(),
            expected,
        ),
        _ => false,
    }
}

/// Avoids an early exit so the comparison time does not reveal how many bytes matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a SASL PLAIN response (`[authzid] NUL user NUL password`) into (user, password).
///
/// The authorization identity is ignored: the connection always acts as the
/// authenticated user, so a client cannot use it to impersonate anyone.
pub fn parse_plain(response: &[u8]) -> Option<(String, String)> {
    let mut fields = response.split(|&b| b == 0);
    let _authzid = fields.next()?;
    let user = fields.next()?;
    let password = fields.next()?;
    // RFC 4616 forbids NUL inside the fields, so a fourth part means a malformed response.
    if fields.next().is_some() {
        return None;
    }
    Some((utf8(user)?, utf8(password)?))
}

fn utf8(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

/// Parses an AMQPLAIN response (a field table without its length prefix) into (LOGIN, PASSWORD).
///
/// 's' is read as the 0-9-1 spec's short string rather than RabbitMQ's 16-bit int, because a
/// client that sends 's' here means a string login. Only string types can carry a login or
/// password; an unknown type (its size cannot be known) or a truncation refuses the response.
pub fn parse_amqplain(response: &[u8]) -> Option<(String, String)> {
    let mut login = None;
    let mut password = None;
    for entry in table::entries(response, ShortS::ShortString) {
        let (key, value) = entry.ok()?;
        // First occurrence wins, as with RabbitMQ's lists:keysearch over the table.
        let slot = match key {
            b"LOGIN" => &mut login,
            b"PASSWORD" => &mut password,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(utf8(value.string()?)?);
        }
    }
    Some((login?, password?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trip() {
        let h = hash_password("s3cret");
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3cret "));
        assert!(!verify_password(&h, ""));
        assert_eq!(STANDARD.decode(&h).expect("hash is base64").len(), 36);
    }

    #[test]
    fn hashes_are_salted() {
        // Four random bytes collide with probability 2^-32; two tries make a flake negligible.
        let a = hash_password("guest");
        let b = hash_password("guest");
        let c = hash_password("guest");
        assert!(a != b || b != c);
        assert!(verify_password(&a, "guest") && verify_password(&b, "guest"));
    }

    #[test]
    fn known_salt_produces_rabbitmq_layout() {
        let salt = [0xDE, 0xAD, 0xBE, 0xEF];
        let h = hash_with_salt(HashingAlgorithm::Sha256, salt, "guest");
        assert_eq!(h.len(), 48);
        let raw = STANDARD.decode(&h).expect("hash is base64");
        assert_eq!(raw.len(), 36);
        assert_eq!(raw[..4], salt);
        let mut salted = salt.to_vec();
        salted.extend_from_slice(b"guest");
        assert_eq!(raw[4..], Sha256::digest(&salted)[..]);
        assert!(verify_password(&h, "guest"));
        assert!(!verify_password(&h, "Guest"));
        // Computed independently (Python hashlib + base64) so the format cannot drift.
        assert_eq!(h, "3q2+75aNGf124eTg+tvb47eka+41cdHPe6D/bajJtf6epOu5");
    }

    #[test]
    fn sha512_hashes_verify() {
        let salt = [1u8, 2, 3, 4];
        let mut stored = salt.to_vec();
        stored.extend_from_slice(
            &Sha512::new()
                .chain_update(salt)
                .chain_update(b"pw")
                .finalize(),
        );
        let h = STANDARD.encode(stored);
        assert!(verify_password(&h, "pw"));
        assert!(!verify_password(&h, "px"));
        assert_eq!(hash_with_salt(HashingAlgorithm::Sha512, salt, "pw"), h);
        assert_eq!(HashingAlgorithm::of_hash(&h), HashingAlgorithm::Sha512);
        let fresh = HashingAlgorithm::Sha512.hash("pw");
        assert!(verify_password(&fresh, "pw"));
    }

    #[test]
    fn malformed_hashes_never_verify() {
        for bad in [
            "",
            "!!!!",
            "AAAA",
            "AAAAAAAA",
            "not base64 at all",
            "3q2+7w==",
        ] {
            assert!(!verify_password(bad, ""), "{bad}");
            assert!(!verify_password(bad, "guest"), "{bad}");
        }
        let h = hash_with_salt(HashingAlgorithm::Sha256, [9, 9, 9, 9], "x");
        let truncated = STANDARD.encode(&STANDARD.decode(&h).expect("hash is base64")[..35]);
        assert!(!verify_password(&truncated, "x"));
    }

    #[test]
    fn plain_parsing() {
        assert_eq!(
            parse_plain(b"\0guest\0guest"),
            Some(("guest".into(), "guest".into()))
        );
        assert_eq!(
            parse_plain(b"admin\0bob\0pw"),
            Some(("bob".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"\0\0"), Some((String::new(), String::new())));
        assert_eq!(parse_plain(b""), None);
        assert_eq!(parse_plain(b"guest"), None);
        assert_eq!(parse_plain(b"\0guest"), None);
        assert_eq!(parse_plain(b"\0guest\0pass\0extra"), None);
        assert_eq!(parse_plain(b"\0gu\xffest\0pass"), None);
    }

    fn entry(key: &str, kind: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![key.len() as u8];
        out.extend_from_slice(key.as_bytes());
        out.push(kind);
        match kind {
            b'S' | b'x' | b'A' | b'F' => {
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            }
            b's' => out.push(value.len() as u8),
            _ => {}
        }
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn amqplain_parsing() {
        let mut r = entry("LOGIN", b'S', b"guest");
        r.extend(entry("PASSWORD", b'S', b"secret"));
        assert_eq!(parse_amqplain(&r), Some(("guest".into(), "secret".into())));

        let mut r = entry("PASSWORD", b's', b"pw");
        r.extend(entry("LOGIN", b's', b"me"));
        assert_eq!(parse_amqplain(&r), Some(("me".into(), "pw".into())));
    }

    #[test]
    fn amqplain_skips_unknown_keys_of_known_size() {
        let mut r = entry("client", b'F', &entry("k", b'S', b"v"));
        r.extend(entry("n", b'I', &7i32.to_be_bytes()));
        r.extend(entry("LOGIN", b'S', b"u"));
        r.extend(entry("flag", b't', &[1]));
        r.extend(entry("ts", b'T', &0u64.to_be_bytes()));
        r.extend(entry("dec", b'D', &[2, 0, 0, 0, 5]));
        r.extend(entry("void", b'V', &[]));
        r.extend(entry("PASSWORD", b'S', b"p"));
        r.extend(entry("LOGIN", b'S', b"ignored-second"));
        assert_eq!(parse_amqplain(&r), Some(("u".into(), "p".into())));
    }

    #[test]
    fn amqplain_malformed() {
        assert_eq!(parse_amqplain(b""), None);
        assert_eq!(parse_amqplain(&entry("LOGIN", b'S', b"u")), None);
        assert_eq!(parse_amqplain(&entry("PASSWORD", b'S', b"p")), None);

        let mut full = entry("LOGIN", b'S', b"guest");
        full.extend(entry("PASSWORD", b'S', b"guest"));
        for cut in 0..full.len() {
            assert_eq!(parse_amqplain(&full[..cut]), None, "cut at {cut}");
        }

        let mut huge = entry("LOGIN", b'S', b"");
        huge.truncate(huge.len() - 4);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(b"abc");
        assert_eq!(parse_amqplain(&huge), None);

        let mut unknown = entry("weird", b'Z', b"");
        unknown.extend(entry("LOGIN", b'S', b"u"));
        unknown.extend(entry("PASSWORD", b'S', b"p"));
        assert_eq!(parse_amqplain(&unknown), None);

        let mut wrong_type = entry("LOGIN", b'I', &1i32.to_be_bytes());
        wrong_type.extend(entry("PASSWORD", b'S', b"p"));
        assert_eq!(parse_amqplain(&wrong_type), None);

        let mut bad_utf8 = entry("LOGIN", b'S', b"\xff");
        bad_utf8.extend(entry("PASSWORD", b'S', b"p"));
        assert_eq!(parse_amqplain(&bad_utf8), None);

        let mut trailing = full.clone();
        trailing.push(9);
        assert_eq!(parse_amqplain(&trailing), None);
    }

    #[test]
    fn amqplain_never_panics_on_garbage() {
        let mut state = 0x1234_5678_u32;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 24) as u8
                })
                .collect();
            let _ = parse_amqplain(&junk);
            let _ = parse_plain(&junk);
            let _ = verify_password(&String::from_utf8_lossy(&junk), "x");
        }
    }
}
