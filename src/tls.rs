//! TLS with rustls (its `ring` provider, no OpenSSL): the server configurations the AMQPS and
//! HTTPS listeners accept with, read from the PEM files `[tls]` names and read again on SIGHUP,
//! and the user name an `EXTERNAL` login takes from a client's certificate.
//!
//! A listener takes the configuration current when a client connects, so a reload reaches new
//! connections and leaves established ones alone, as RabbitMQ does.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509Name};

use crate::config::{self, CertLoginFrom, SanType, Verify};

/// The TLS side of the broker: its settings and the server configurations made from them.
pub struct Tls {
    settings: config::Tls,
    current: RwLock<Configs>,
}

/// What the listeners accept with, made together from one reading of the files.
#[derive(Clone)]
struct Configs {
    /// For AMQPS: asks for client certificates as `verify` says.
    amqp: Arc<ServerConfig>,
    /// For HTTPS: no client certificates, HTTP/1.1 by ALPN.
    http: Arc<ServerConfig>,
}

impl Tls {
    /// Reads the certificate, key and CA bundle that `settings` name; an error says which file
    /// and why.
    pub fn load(settings: &config::Tls) -> Result<Self, String> {
        Ok(Self {
            current: RwLock::new(configs(settings)?),
            settings: settings.clone(),
        })
    }

    /// Reads the files again; on an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = configs(&self.settings)?;
        *self.current.write() = fresh;
        Ok(())
    }

    /// An acceptor for one AMQPS client.
    pub fn amqp_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().amqp))
    }

    /// An acceptor for one HTTPS client.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().http))
    }

    /// Whether AMQPS clients' certificates are checked, which is when `EXTERNAL` is offered.
    pub fn verifies_peers(&self) -> bool {
        self.settings.verify == Verify::VerifyPeer
    }

    /// The user name an `EXTERNAL` login gets from a (verified) client certificate, as
    /// `cert_login_from` says; `None` when the certificate has no such name.
    pub fn login_name(&self, cert: &CertificateDer<'_>) -> Option<String> {
        let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
        match self.settings.cert_login_from {
            CertLoginFrom::DistinguishedName => Some(rfc4514(cert.subject())),
            CertLoginFrom::CommonName => cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            CertLoginFrom::SubjectAlternativeName => {
                let san = cert.subject_alternative_name().ok()??;
                let kind = self.settings.cert_login_san_type;
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| san_text(name, kind))
                    .nth(self.settings.cert_login_san_index)
            }
        }
    }
}

/// A certificate's subject and issuer as RFC 4514 writes them; `None`s when it does not parse.
pub fn names(cert: &CertificateDer<'_>) -> (Option<String>, Option<String>) {
    match X509Certificate::from_der(cert.as_ref()) {
        Ok((_, c)) => (Some(rfc4514(c.subject())), Some(rfc4514(c.issuer()))),
        Err(_) => (None, None),
    }
}

/// How long an HTTPS client has for its TLS handshake.
const HTTPS_HANDSHAKE: Duration = Duration::from_secs(10);

/// A TCP listener whose connections come out TLS-accepted, for axum. Handshakes run side by
/// side, so a slow or silent client holds up no one; a failed one is a log line.
pub struct HttpsListener {
    tcp: TcpListener,
    tls: Arc<Tls>,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl HttpsListener {
    /// Serves HTTPS on `tcp` with `tls`'s HTTP configuration.
    pub fn new(tcp: TcpListener, tls: Arc<Tls>) -> Self {
        Self {
            tcp,
            tls,
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        let acceptor = self.tls.http_acceptor();
                        self.handshakes.spawn(async move {
                            match tokio::time::timeout(HTTPS_HANDSHAKE, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => Some((stream, peer)),
                                Ok(Err(e)) => {
                                    info!(%peer, cause = %e, "HTTPS handshake failed");
                                    None
                                }
                                Err(_) => {
                                    info!(%peer, "HTTPS handshake timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors: back off rather than spin.
                        warn!(cause = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(accepted)) = done {
                        return accepted;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The text of a subject alternative name of `kind`, if `name` is one.
fn san_text(name: &GeneralName<'_>, kind: SanType) -> Option<String> {
    match (name, kind) {
        (GeneralName::DNSName(s), SanType::Dns)
        | (GeneralName::RFC822Name(s), SanType::Email)
        | (GeneralName::URI(s), SanType::Uri) => Some((*s).to_owned()),
        (GeneralName::IPAddress(bytes), SanType::Ip) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes)
                .ok()
                .map(|b| IpAddr::from(b).to_string()),
            16 => <[u8; 16]>::try_from(*bytes)
                .ok()
                .map(|b| IpAddr::from(b).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// A distinguished name as RFC 4514 writes it, as RabbitMQ's `distinguished_name` login does:
/// the most specific part first (`CN=app,OU=ops,O=Example`), special characters escaped.
fn rfc4514(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map_or_else(|_| attr.attr_type().to_id_string(), str::to_owned);
                    let value = attr.as_str().map_or_else(
                        |_| {
                            let hex: String = attr
                                .attr_value()
                                .data
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect();
                            format!("#{hex}")
                        },
                        escape,
                    );
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// An attribute value escaped as RFC 4514 asks.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Both server configurations, from one reading of the files.
fn configs(settings: &config::Tls) -> Result<Configs, String> {
    let (Some(certfile), Some(keyfile)) = (&settings.certfile, &settings.keyfile) else {
        return Err("TLS needs tls.certfile and tls.keyfile".into());
    };
    let chain = certificates(certfile)?;
    let key = PrivateKeyDer::from_pem_file(keyfile)
        .map_err(|e| format!("tls.keyfile {}: {e}", keyfile.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static SupportedProtocolVersion> = settings
        .versions
        .iter()
        .filter_map(|v| match v.as_str() {
            "tlsv1.3" => Some(&rustls::version::TLS13),
            "tlsv1.2" => Some(&rustls::version::TLS12),
            _ => None,
        })
        .collect();
    let builder = || {
        ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)
            .map_err(|e| format!("tls.versions: {e}"))
    };
    let amqp = match (settings.verify, &settings.cacertfile) {
        (Verify::VerifyPeer, Some(cacertfile)) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(cacertfile)? {
                roots
                    .add(ca)
                    .map_err(|e| format!("tls.cacertfile {}: {e}", cacertfile.display()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if settings.fail_if_no_peer_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder()?.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("tls.cacertfile {}: {e}", cacertfile.display()))?,
            )
        }
        (Verify::VerifyPeer, None) => {
            return Err("tls.verify = \"verify_peer\" needs tls.cacertfile".into());
        }
        (Verify::VerifyNone, _) => builder()?.with_no_client_auth(),
    }
    .with_single_cert(chain.clone(), key.clone_key())
    .map_err(|e| format!("tls.certfile and tls.keyfile: {e}"))?;
    let mut http = builder()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls.certfile and tls.keyfile: {e}"))?;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Configs {
        amqp: Arc::new(amqp),
        http: Arc::new(http),
    })
}

/// Every certificate in a PEM file; an error if there is none.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn values_are_escaped_as_rfc_4514_asks() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape("#x "), "\\#x\\ ");
        assert_eq!(escape(" lead"), "\\ lead");
        assert_eq!(escape("q\"<>;\\"), "q\\\"\\<\\>\\;\\\\");
    }
}
