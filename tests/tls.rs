//! TLS: AMQPS with lapin over rustls, certificates made by the test (rcgen): a trusted server,
//! an untrusted one, client certificates checked (missing, expired, from another CA),
//! `EXTERNAL` logins named by the certificate, plain AMQP on the TLS port, HTTPS for the
//! management API, and certificates reloaded on SIGHUP by the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::TestBroker;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::config::{CertLoginFrom, User, Verify};

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("CA").pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and its key (PEM) for `names` (subject alternative names), with subject
    /// `subject` (pairs of type and value) and the validity `tweak` sets.
    fn issue(
        &self,
        names: &[&str],
        subject: &[(DnType, &str)],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        tweak(&mut params);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

/// The server's files in `dir`, signed by `ca`: (certfile, keyfile, cacertfile).
fn server_files(dir: &Path, ca: &Ca, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (cert, key) = ca.issue(
        &["127.0.0.1", "localhost"],
        &[(DnType::CommonName, "warren")],
        |_| {},
    );
    let files = (
        dir.join(format!("server-{tag}.pem")),
        dir.join(format!("server-{tag}.key")),
        dir.join(format!("ca-{tag}.pem")),
    );
    std::fs::write(&files.0, cert).expect("write");
    std::fs::write(&files.1, key).expect("write");
    std::fs::write(&files.2, &ca.pem).expect("write");
    files
}

/// A broker with an AMQPS listener whose certificate `ca` signed; `tweak` adds settings.
async fn tls_broker(dir: &Path, ca: &Ca, tweak: impl FnOnce(&mut warren::Config)) -> TestBroker {
    let (cert, key, cacert) = server_files(dir, ca, "a");
    TestBroker::start_with(|c| {
        c.tls.listen = Some("127.0.0.1:0".parse().expect("addr"));
        c.tls.certfile = Some(cert);
        c.tls.keyfile = Some(key);
        c.tls.cacertfile = Some(cacert);
        tweak(c);
    })
    .await
}

/// A lapin connection over TLS to `port`, trusting `ca_pem`, showing `identity` (cert, key PEM)
/// if given; `query` ends the URI (credentials are guest's unless it asks for EXTERNAL).
async fn connect_tls(
    port: u16,
    ca_pem: &str,
    identity: Option<(String, String)>,
    query: &str,
) -> lapin::Result<Connection> {
    let credentials = if query.contains("external") {
        ""
    } else {
        "guest:guest@"
    };
    let uri = format!("amqps://{credentials}127.0.0.1:{port}/%2f{query}");
    let config = OwnedTLSConfig {
        identity: identity.map(|(cert, key)| OwnedIdentity::PKCS8 {
            pem: cert.into_bytes(),
            key: key.into_bytes(),
        }),
        cert_chain: Some(ca_pem.to_owned()),
    };
    let runtime = lapin::runtime::default_runtime().expect("runtime");
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect_with_config(&uri, ConnectionProperties::default(), config, runtime),
    )
    .await
    .expect("connect finishes")
}

/// A message through a queue of `conn`, both ways.
async fn round_trip(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        b"over tls",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("sent");
    let mut got = None;
    for _ in 0..100 {
        got = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get");
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got.expect("the message").delivery.data, b"over tls");
}

fn port(b: &TestBroker) -> u16 {
    b.tls.expect("a TLS listener").port()
}

#[tokio::test]
async fn lapin_talks_amqp_over_tls_and_the_plain_port_still_serves() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("Warren test CA");
    let b = tls_broker(dir.path(), &ca, |_| {}).await;
    let conn = connect_tls(port(&b), &ca.pem, None, "")
        .await
        .expect("TLS connect");
    round_trip(&conn, "tls-q").await;
    let plain = b.connect().await;
    round_trip(&plain, "plain-q").await;
    // The management API says which connection came over TLS.
    let connections = common::http::get_json(&b, "/api/connections").await;
    let tls: Vec<bool> = connections
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["ssl"].as_bool().expect("ssl"))
        .collect();
    assert_eq!(tls.iter().filter(|t| **t).count(), 1, "{connections}");
    assert_eq!(tls.len(), 2);
    let over_tls = connections
        .as_array()
        .expect("list")
        .iter()
        .find(|c| c["ssl"] == true)
        .expect("the TLS one");
    assert_eq!(over_tls["ssl_protocol"], "tlsv1.3", "{over_tls}");
    assert_eq!(over_tls["port"], port(&b), "{over_tls}");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused_and_others_go_on() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("Warren test CA");
    let other = Ca::new("Someone else's CA");
    let b = tls_broker(dir.path(), &ca, |_| {}).await;
    assert!(
        connect_tls(port(&b), &other.pem, None, "").await.is_err(),
        "a client that does not trust the server's CA must not connect"
    );
    let conn = connect_tls(port(&b), &ca.pem, None, "")
        .await
        .expect("TLS connect");
    round_trip(&conn, "after-refusal").await;
}

#[tokio::test]
async fn verify_peer_refuses_missing_expired_and_foreign_client_certificates() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("Warren test CA");
    let b = tls_broker(dir.path(), &ca, |c| {
        c.tls.verify = Verify::VerifyPeer;
        c.tls.fail_if_no_peer_cert = true;
    })
    .await;
    let good = ca.issue(&[], &[(DnType::CommonName, "client")], |_| {});
    let conn = connect_tls(port(&b), &ca.pem, Some(good), "")
        .await
        .expect("a client with a good certificate connects");
    round_trip(&conn, "verified").await;

    assert!(
        connect_tls(port(&b), &ca.pem, None, "").await.is_err(),
        "no client certificate"
    );
    let expired = ca.issue(&[], &[(DnType::CommonName, "client")], |p| {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    assert!(
        connect_tls(port(&b), &ca.pem, Some(expired), "")
            .await
            .is_err(),
        "an expired client certificate"
    );
    let foreign =
        Ca::new("Someone else's CA").issue(&[], &[(DnType::CommonName, "client")], |_| {});
    assert!(
        connect_tls(port(&b), &ca.pem, Some(foreign), "")
            .await
            .is_err(),
        "a client certificate from another CA"
    );
    // None of that cost the broker anything: the good client is still served.
    round_trip(&conn, "verified").await;
}

/// A user allowed in every vhost, whose password no one knows.
fn cert_user(name: &str) -> User {
    User {
        name: name.into(),
        password_hash: warren::broker::auth::hash_password("not used by EXTERNAL"),
        vhosts: vec!["*".into()],
        tags: vec![],
    }
}

#[tokio::test]
async fn external_logs_in_as_the_certificates_distinguished_name() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("Warren test CA");
    // rcgen writes the common name first, so RFC 4514 (last first) puts it last.
    let dn = "O=Warren Tests\\, Inc.,CN=app-client";
    let b = tls_broker(dir.path(), &ca, |c| {
        c.tls.verify = Verify::VerifyPeer;
        c.users.push(cert_user(dn));
    })
    .await;
    let identity = ca.issue(
        &[],
        &[
            (DnType::OrganizationName, "Warren Tests, Inc."),
            (DnType::CommonName, "app-client"),
        ],
        |_| {},
    );
    let conn = connect_tls(
        port(&b),
        &ca.pem,
        Some(identity.clone()),
        "?auth_mechanism=external",
    )
    .await
    .expect("EXTERNAL login");
    round_trip(&conn, "external").await;
    let connections = common::http::get_json(&b, "/api/connections").await;
    assert_eq!(connections[0]["user"], dn, "{connections}");
    assert_eq!(
        connections[0]["auth_mechanism"], "EXTERNAL",
        "{connections}"
    );
    assert_eq!(connections[0]["peer_cert_subject"], dn, "{connections}");
    assert_eq!(
        connections[0]["peer_cert_issuer"], "CN=Warren test CA",
        "{connections}"
    );

    // A certificate naming no known user is refused; so is EXTERNAL on the plain port, where
    // it is not even offered.
    let stranger = ca.issue(&[], &[(DnType::CommonName, "stranger")], |_| {});
    assert!(
        connect_tls(
            port(&b),
            &ca.pem,
            Some(stranger),
            "?auth_mechanism=external"
        )
        .await
        .is_err()
    );
    let plain = format!("amqp://{}/%2f?auth_mechanism=external", b.addr);
    assert!(
        Connection::connect(&plain, ConnectionProperties::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn external_can_take_the_common_name_or_a_subject_alternative_name() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("Warren test CA");
    let b = tls_broker(dir.path(), &ca, |c| {
        c.tls.verify = Verify::VerifyPeer;
        c.tls.cert_login_from = CertLoginFrom::CommonName;
        c.users.push(cert_user("app-client"));
    })
    .await;
    let identity = ca.issue(
        &["second.example", "app-client"],
        &[(DnType::CommonName, "app-client")],
        |_| {},
    );
    connect_tls(
        port(&b),
        &ca.pem,
        Some(identity.clone()),
        "?auth_mechanism=external",
    )
    .await
    .expect("EXTERNAL login by common name");

    let dir = tempfile::tempdir().expect("dir");
    let b = tls_broker(dir.path(), &ca, |c| {
        c.tls.verify = Verify::VerifyPeer;
        c.tls.cert_login_from = CertLoginFrom::SubjectAlternativeName;
        c.tls.cert_login_san_index = 1;
        c.users.push(cert_user("app-client"));
    })
    .await;
    connect_tls(
        port(&b),
        &ca.pem,
        Some(identity),
        "?auth_mechanism=external",
    )
    .await
    .expect("EXTERNAL login by the second DNS name");
}

#[tokio::test]
async fn plain_amqp_on_the_tls_port_is_dropped_and_costs_nothing_else() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("Warren test CA");
    let b = tls_broker(dir.path(), &ca, |_| {}).await;
    let mut raw = tokio::net::TcpStream::connect(b.tls.expect("tls"))
        .await
        .expect("tcp");
    raw.write_all(b"AMQP\x00\x00\x09\x01").await.expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("the broker answers at once");
    // A TLS alert at most, then the close: never an AMQP connection.start.
    if let Ok(n) = n {
        assert!(n == 0 || buf[0] == 0x15, "{:?}", &buf[..n]);
    }
    let conn = connect_tls(port(&b), &ca.pem, None, "")
        .await
        .expect("TLS connect");
    round_trip(&conn, "after-plain").await;
}

#[tokio::test]
async fn the_management_api_serves_https() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("Warren test CA");
    let b = tls_broker(dir.path(), &ca, |c| c.management.tls = true).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()).flatten(),
    );
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(b.http).await.expect("tcp");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().expect("name"), tcp)
        .await
        .expect("HTTPS handshake");
    tls.write_all(
        b"GET /api/overview HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("\"https\""),
        "the listener is listed as https: {reply}"
    );

    // Plain HTTP on that port gets no API.
    let (status, _) = common::http::request(&b, "GET", "/api/overview", "").await;
    assert_ne!(status, 200);
}

#[tokio::test]
async fn sighup_reloads_the_certificates_and_keeps_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let first = Ca::new("First CA");
    let second = Ca::new("Second CA");
    let (cert, key, _) = server_files(dir.path(), &first, "live");
    let tls_port = common::process::free_port();
    let config = dir.path().join("warren.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .expect("config");
    let port = common::process::free_port();
    let data = dir.path().join("data");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_warren"));
    command
        .args(common::process::serve_args(&data, port))
        .arg("--config")
        .arg(&config);
    let warren = common::process::start_command(command, port).await;

    let before = connect_tls(tls_port, &first.pem, None, "")
        .await
        .expect("TLS with the first certificate");
    // The new certificate goes where the config points, then SIGHUP.
    let (new_cert, new_key, _) = server_files(dir.path(), &second, "next");
    std::fs::rename(new_cert, &cert).expect("swap");
    std::fs::rename(new_key, &key).expect("swap");
    warren.signal("HUP");
    let mut after = None;
    for _ in 0..100 {
        if let Ok(c) = connect_tls(tls_port, &second.pem, None, "").await {
            after = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = after.expect("new clients get the new certificate");
    assert!(
        connect_tls(tls_port, &first.pem, None, "").await.is_err(),
        "the old certificate is gone for new clients"
    );
    round_trip(&before, "kept").await;
    round_trip(&after, "kept").await;
    assert!(warren.terminate().expect("exits").success());
}
