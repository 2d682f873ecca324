//! The opening handshake as one straight-line exchange: header, start, tune, open.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use crate::broker::access::Permissions;
use crate::broker::{Broker, LoginError, VHost, auth};
use crate::protocol::frame::{FRAME_MIN_SIZE, Frame, PROTOCOL_HEADER, parse_frame};
use crate::protocol::method::{Method, decode};
use crate::protocol::{ConnectionError, code, encode};

/// The AMQP 0-9 protocol header.
const PROTOCOL_HEADER_0_9: &[u8; 8] = b"AMQP\x01\x01\x00\x09";

/// What the handshake settled.
pub(super) struct Negotiated {
    pub user: String,
    pub mechanism: &'static str,
    pub permissions: Arc<Permissions>,
    pub client_properties: FieldTable,
    pub vhost: Arc<VHost>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub cancel_notify: bool,
    pub blocked_notify: bool,
}

fn server_properties(product: &str) -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
        "consumer_priorities",
        "connection.blocked",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props.insert("product".into(), text(product));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), text("Rust"));
    props.insert("cluster_name".into(), text("warren"));
    props.insert(
        "information".into(),
        text("An AMQP 0-9-1 broker for RabbitMQ clients"),
    );
    props
}

/// What the handshake runs over: a plain socket today, TLS later.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for S {}

async fn write(stream: &mut impl Transport, class: AMQPClass) -> io::Result<()> {
    let mut out = BytesMut::new();
    encode::method(&mut out, 0, class);
    write_all(stream, &out).await
}

/// Writes and flushes: a transport that buffers (TLS) must not keep a handshake reply back.
async fn write_all(stream: &mut impl Transport, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Reads the next method on channel 0; `None` if the peer hung up or sent something else.
async fn read_method(
    stream: &mut impl Transport,
    rbuf: &mut BytesMut,
    frame_max: u32,
) -> io::Result<Result<connection::AMQPMethod, ConnectionError>> {
    loop {
        match parse_frame(rbuf, frame_max) {
            Err(e) => return Ok(Err(e)),
            Ok(Some(Frame::Heartbeat { .. })) => continue,
            Ok(Some(Frame::Method {
                channel: 0,
                payload,
            })) => {
                return Ok(match decode(&payload) {
                    Ok(d) => match d.method {
                        Method::Other(AMQPClass::Connection(m)) => Ok(m),
                        _ => Err(ConnectionError::new(
                            code::CHANNEL_ERROR,
                            "unexpected method in connection state",
                        )
                        .on(d.class_id, d.method_id)),
                    },
                    Err(e) => Err(e),
                });
            }
            Ok(Some(_)) => {
                return Ok(Err(ConnectionError::unexpected_frame(
                    "expected a method on channel 0 during the handshake",
                )));
            }
            Ok(None) => {
                if stream.read_buf(rbuf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
}

async fn refuse(stream: &mut impl Transport, e: ConnectionError) -> io::Result<Option<Negotiated>> {
    let r = e.0;
    write(
        stream,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: r.reply_code,
            reply_text: r.reply_text.into(),
            class_id: r.class_id,
            method_id: r.method_id,
        })),
    )
    .await?;
    // Give the peer a moment to read the close before the socket goes.
    let mut scratch = [0u8; 512];
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), async {
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    Ok(None)
}

macro_rules! expect {
    ($stream:expr, $rbuf:expr, $fm:expr, $variant:ident) => {
        match read_method($stream, $rbuf, $fm).await? {
            Ok(connection::AMQPMethod::$variant(m)) => m,
            Ok(_) => {
                return refuse(
                    $stream,
                    ConnectionError::new(
                        code::COMMAND_INVALID,
                        "unexpected method during the handshake",
                    ),
                )
                .await;
            }
            Err(e) => return refuse($stream, e).await,
        }
    };
}

fn negotiate(field: &str, server: u32, client: u32, min: u32) -> Result<u32, ConnectionError> {
    // RabbitMQ explains a zero only for channel_max.
    let detail = if client == 0 && field == "channel_max" {
        " (no limit)"
    } else {
        ""
    };
    let fail = |dir: &str, bound: &str, limit: u32| {
        ConnectionError::new(
            code::NOT_ALLOWED,
            format!(
                "negotiated {field} = {client}{detail} is {dir} than the {bound} allowed value ({limit})"
            ),
        )
        .on(10, 30)
    };
    if server != 0 && (client == 0 || client > server) {
        return Err(fail("higher", "maximum", server));
    }
    if client != 0 && client < min {
        return Err(fail("lower", "minimum", min));
    }
    Ok(client)
}

/// Runs the handshake; `Ok(None)` when the client was refused (already answered).
pub(super) async fn run(
    stream: &mut impl Transport,
    rbuf: &mut BytesMut,
    broker: &Broker,
    peer: SocketAddr,
    auth: &super::PeerAuth,
) -> io::Result<Option<Negotiated>> {
    while rbuf.len() < 8 {
        if stream.read_buf(rbuf).await? == 0 {
            return Ok(None);
        }
    }
    // RabbitMQ serves the 0-9 header as 0-9-1: the two differ in nothing a client relies on.
    if &rbuf[..8] != PROTOCOL_HEADER && &rbuf[..8] != PROTOCOL_HEADER_0_9 {
        info!(%peer, "refused a client that does not speak AMQP 0-9-1");
        write_all(stream, PROTOCOL_HEADER).await?;
        return Ok(None);
    }
    let _ = rbuf.split_to(8);
    write(
        stream,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(&broker.config.product),
            mechanisms: if auth.external {
                "EXTERNAL PLAIN AMQPLAIN".into()
            } else {
                "PLAIN AMQPLAIN".into()
            },
            locales: "en_US".into(),
        })),
    )
    .await?;
    let start_ok = expect!(stream, rbuf, FRAME_MIN_SIZE, StartOk);
    let caps = match start_ok.client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        _ => FieldTable::default(),
    };
    let cap = |name: &str| matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)));
    let client_properties = start_ok.client_properties;
    let mechanism = start_ok.mechanism.as_str();
    // EXTERNAL takes the name from the certificate the TLS handshake verified, and no password.
    let credentials = match mechanism {
        "PLAIN" => auth::parse_plain(start_ok.response.as_bytes()),
        "AMQPLAIN" => auth::parse_amqplain(start_ok.response.as_bytes()),
        "EXTERNAL" if auth.external => auth.cert_user.clone().map(|u| (u, String::new())),
        other => {
            return refuse(
                stream,
                ConnectionError::new(
                    code::COMMAND_INVALID,
                    format!("unknown authentication mechanism '{other}'"),
                )
                .on(10, 11),
            )
            .await;
        }
    };
    // A dual-stack listener shows an IPv4 client as ::ffff:a.b.c.d; the loopback rule must see
    // 127.0.0.1 there, as RabbitMQ does.
    let canonical_peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let login = broker
        .login_paced(canonical_peer.ip(), |b| match &credentials {
            None => Err(LoginError::Refused),
            Some((u, _)) if mechanism == "EXTERNAL" => b.login_external(u, canonical_peer),
            Some((u, p)) => b.login(u, p, canonical_peer),
        })
        .await;
    let user = match login {
        Ok(u) => u,
        Err((why, next_delay)) => {
            let name = credentials.map(|(u, _)| u).unwrap_or_default();
            warn!(%peer, user = %name, reason = ?why, next_attempt_delay_ms = next_delay.as_millis() as u64, "login refused");
            if cap("authentication_failure_close") {
                return refuse(
                    stream,
                    ConnectionError::new(
                        code::ACCESS_REFUSED,
                        format!(
                            "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                        ),
                    ),
                )
                .await;
            }
            return Ok(None);
        }
    };
    let config = &broker.config;
    write(
        stream,
        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: config.channel_max,
            frame_max: config.frame_max,
            heartbeat: config.heartbeat,
        })),
    )
    .await?;
    let tune_ok = expect!(stream, rbuf, FRAME_MIN_SIZE, TuneOk);
    let frame_max = match negotiate(
        "frame_max",
        config.frame_max,
        tune_ok.frame_max,
        FRAME_MIN_SIZE,
    ) {
        Ok(v) => v,
        Err(e) => return refuse(stream, e).await,
    };
    let channel_max = match negotiate(
        "channel_max",
        u32::from(config.channel_max),
        u32::from(tune_ok.channel_max),
        1,
    ) {
        Ok(v) => u16::try_from(v).unwrap_or(config.channel_max),
        Err(e) => return refuse(stream, e).await,
    };
    let open = expect!(stream, rbuf, frame_max, Open);
    let vhost_name = open.virtual_host.as_str();
    let Some(vhost) = broker.vhost(vhost_name) else {
        return refuse(
            stream,
            ConnectionError::new(code::NOT_ALLOWED, format!("vhost {vhost_name} not found"))
                .on(10, 40),
        )
        .await;
    };
    let Some(permissions) = broker.permissions(&user.name, vhost_name) else {
        return refuse(
            stream,
            ConnectionError::new(
                code::NOT_ALLOWED,
                format!(
                    "access to vhost '{vhost_name}' refused for user '{}'",
                    user.name
                ),
            )
            .on(10, 40),
        )
        .await;
    };
    if let Err((limit, text)) = broker.check_connection_limits(&user.name, vhost_name) {
        broker.limits.hit(limit);
        warn!(%peer, user = %user.name, vhost = %vhost_name, limit = limit.name(), text = %text, "connection refused: limit reached");
        return refuse(
            stream,
            ConnectionError::new(code::NOT_ALLOWED, text).on(10, 40),
        )
        .await;
    }
    write(
        stream,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    )
    .await?;
    Ok(Some(Negotiated {
        user: user.name,
        mechanism: match mechanism {
            "EXTERNAL" => "EXTERNAL",
            "AMQPLAIN" => "AMQPLAIN",
            _ => "PLAIN",
        },
        permissions,
        client_properties,
        vhost,
        frame_max,
        channel_max,
        heartbeat: tune_ok.heartbeat,
        cancel_notify: cap("consumer_cancel_notify"),
        blocked_notify: cap("connection.blocked"),
    }))
}

#[cfg(test)]
mod tests {
    use super::negotiate;

    #[test]
    fn only_working_capabilities_are_advertised() {
        let props = super::server_properties("Warren");
        let Some(amq_protocol::types::AMQPValue::FieldTable(caps)) =
            props.inner().get("capabilities")
        else {
            panic!("no capabilities table");
        };
        for cap in [
            "publisher_confirms",
            "consumer_priorities",
            "direct_reply_to",
            "connection.blocked",
        ] {
            assert!(caps.contains_key(cap), "{cap} works and is advertised");
        }
    }

    #[test]
    fn tune_values_above_the_offer_or_below_the_minimum_are_refused() {
        assert_eq!(negotiate("frame_max", 131072, 4096, 4096).ok(), Some(4096));
        let e = negotiate("frame_max", 131072, 0, 4096)
            .err()
            .map(|e| e.0.reply_text);
        assert_eq!(
            e.as_deref(),
            Some(
                "NOT_ALLOWED - negotiated frame_max = 0 is higher than the maximum allowed value (131072)"
            )
        );
        let e = negotiate("channel_max", 2047, 0, 1)
            .err()
            .map(|e| (e.0.reply_text, e.0.class_id, e.0.method_id));
        assert_eq!(
            e,
            Some((
                "NOT_ALLOWED - negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)"
                    .to_string(),
                10,
                30
            ))
        );
        let e = negotiate("frame_max", 131072, 1024, 4096)
            .err()
            .map(|e| e.0.reply_text);
        assert_eq!(
            e.as_deref(),
            Some(
                "NOT_ALLOWED - negotiated frame_max = 1024 is lower than the minimum allowed value (4096)"
            )
        );
    }
}
