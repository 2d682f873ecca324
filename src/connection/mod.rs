//! One task per socket: the handshake, the channel table, heartbeats, and the batched writer.
//!
//! The task reads whatever the transport has, handles every complete frame in it, drains the
//! queue events waiting in its inbox, and writes all resulting frames with as few writes as the
//! transport takes. Control messages from the broker (close, block, unblock) come on a path of
//! their own and are handled before anything else.
//!
//! The inbox is unbounded, but what can wait in it is bounded: deliveries by the consumer's
//! credit (prefetch, `consumer_max_unacked`, or [`crate::queue::NO_ACK_WINDOW`] for no-ack
//! consumers; further ones wait in the queue), store-flush completions and cancellations by what
//! the connection has in flight, and direct replies by what its requests asked for. None of these
//! may block a queue or be dropped, so the inbox never refuses them.

mod handshake;

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use amq_protocol::protocol::{AMQPClass, channel, connection};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::broker::connections::{Control, ControlReceiver, Identity, Registered};
use crate::channel::{Channel, Ctx};
use crate::protocol::error::Reply;
use crate::protocol::frame::{Frame, parse_frame};
use crate::protocol::method::{Method, decode};
use crate::protocol::{AmqpError, ChannelError, ConnectionError, Limit, code, encode};
use crate::queue::alarms::Raised;
use crate::queue::{QueueEvent, QueueEvent::Deliver};
use crate::stats::Stat;
use handshake::Transport;

/// Past this many unwritten bytes the connection stops reading until the socket drains.
const HIGH_WATER: usize = 4 * 1024 * 1024;
/// Read chunk reserved when the read buffer runs low.
const READ_CHUNK: usize = 64 * 1024;
/// Space left in the read buffer below which a fresh chunk is reserved. Reads fill a chunk
/// before taking another: queued messages are slices of the chunk they arrived in and keep all of
/// it alive, so a chunk per read would cost a publisher that sends one small message per read
/// 64 KiB for each message it leaves queued.
const READ_MIN: usize = 4 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum State {
    Open,
    /// One side sent `connection.close`; only closing frames count until the deadline.
    Closing {
        deadline: Instant,
        desync: bool,
        /// The client closed first: we answered, and wait for it to hang up.
        by_peer: bool,
    },
    /// Finished: flush what is left and drop the socket.
    Done,
}

#[derive(Debug)]
enum ChannelSlot {
    Open(Box<Channel>),
    /// We sent `channel.close` and wait for `close-ok`, discarding everything else.
    Closing,
}

struct Connection {
    ctx: Ctx,
    peer: SocketAddr,
    channels: HashMap<u16, ChannelSlot>,
    channel_max: u16,
    heartbeat: Duration,
    state: State,
    close_timeout: Duration,
    /// Whether the client understands `connection.blocked`.
    blocked_notify: bool,
    /// Reading stopped because the memory alarm is on (or the broker said so) and this
    /// connection publishes.
    blocked: bool,
    /// The reason of a block the broker asked for on the control path, until it lifts it.
    held: Option<String>,
    /// This connection in the broker's registry.
    registered: Arc<Registered>,
}

/// Serves one TCP client (see [`serve`]).
pub async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    // Frames are batched by the loop; Nagle would only hold the last one of a batch back.
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    serve(stream, peer, local, PeerAuth::default(), broker, shutdown).await;
}

/// What the transport says about a client before AMQP starts, for the login.
#[derive(Debug, Default)]
pub struct PeerAuth {
    /// Whether `EXTERNAL` is offered: a TLS connection on a listener that verifies peers.
    pub external: bool,
    /// The user name the client's verified certificate gives, if it showed one.
    pub cert_user: Option<String>,
    /// The TLS session, for the management API.
    pub session: Option<crate::broker::connections::TlsSession>,
}

/// Serves one AMQPS client: the TLS handshake (within the handshake timeout; a failure is one
/// log line and costs nothing more), then AMQP over it as [`serve`].
pub async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<crate::tls::Tls>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let accept = tls.amqp_acceptor().accept(stream);
    let stream = match tokio::time::timeout(broker.config.handshake_timeout(), accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            info!(%peer, cause = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            info!(%peer, "TLS handshake timed out, dropping connection");
            return;
        }
    };
    let external = tls.verifies_peers();
    let session = stream.get_ref().1;
    let cert = session.peer_certificates().and_then(<[_]>::first);
    let cert_user = cert.filter(|_| external).and_then(|c| tls.login_name(c));
    let (peer_subject, peer_issuer) = cert.map(crate::tls::names).unzip();
    let auth = PeerAuth {
        external,
        cert_user,
        session: Some(crate::broker::connections::TlsSession {
            protocol: match session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "tlsv1.3",
                _ => "tlsv1.2",
            },
            cipher: session
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
            peer_subject: peer_subject.flatten(),
            peer_issuer: peer_issuer.flatten(),
        }),
    };
    serve(stream, peer, local, auth, broker, shutdown).await;
}

/// Serves one client over any transport until it closes, the peer fails, or the broker shuts
/// down.
pub async fn serve(
    mut stream: impl AsyncRead + AsyncWrite + Unpin + Send,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    auth: PeerAuth,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let timeout = broker.config.handshake_timeout();
    let negotiated = tokio::select! {
        r = tokio::time::timeout(timeout, handshake::run(&mut stream, &mut rbuf, &broker, peer, &auth)) => match r {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                debug!(%peer, cause = %e, "handshake failed");
                return;
            }
            Err(_) => {
                info!(%peer, "handshake timed out, dropping connection");
                return;
            }
        },
        _ = shutdown.changed() => return,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let conn_id = broker.next_connection_id();
    let user = negotiated.user.clone();
    let vhost_name = negotiated.vhost.name.clone();
    let (registered, control) = broker.connections.register(
        conn_id,
        Identity {
            peer,
            local,
            user: user.clone(),
            vhost: vhost_name.clone(),
            client_properties: negotiated.client_properties,
            auth_mechanism: negotiated.mechanism,
            tls: auth.session,
        },
    );
    let client = registered.name().unwrap_or_default();
    let product = registered.client_property("product").unwrap_or_default();
    info!(%peer, user = %user, vhost = %vhost_name, conn_id, client = %client, product = %product, "connection opened");
    let mut conn = Connection {
        close_timeout: broker.config.close_timeout(),
        ctx: Ctx {
            broker,
            vhost: negotiated.vhost,
            conn_id,
            user: negotiated.user,
            permissions: negotiated.permissions,
            // Epochs start at 0, so a change made since the handshake is taken up at once.
            permissions_epoch: 0,
            out: BytesMut::with_capacity(READ_CHUNK),
            frame_max: negotiated.frame_max,
            tx,
            cancel_notify: negotiated.cancel_notify,
            throttle: None,
            published: false,
            topology: None,
            now: Instant::now(),
        },
        peer,
        channels: HashMap::new(),
        channel_max: negotiated.channel_max,
        heartbeat: Duration::from_secs(u64::from(negotiated.heartbeat)),
        state: State::Open,
        blocked_notify: negotiated.blocked_notify,
        blocked: false,
        held: None,
        registered,
    };
    let mut io = Io {
        stream,
        needs_flush: false,
        registered: conn.registered.clone(),
    };
    let result = conn.run(&mut io, rbuf, rx, control, &mut shutdown).await;
    conn.cleanup();
    if let Some(gone) = conn.ctx.broker.connections.remove(conn_id) {
        conn.ctx.vhost.retired.absorb(&gone.counters.totals());
    }
    match result {
        Ok(()) => {
            info!(%peer, user = %user, vhost = %vhost_name, conn_id, client = %client, "connection closed")
        }
        Err(e) => {
            info!(%peer, user = %user, vhost = %vhost_name, conn_id, client = %client, cause = %e, "connection lost")
        }
    }
}

impl Connection {
    async fn run(
        &mut self,
        io: &mut Io<impl Transport>,
        mut rbuf: BytesMut,
        mut rx: mpsc::UnboundedReceiver<QueueEvent>,
        mut control: ControlReceiver,
        shutdown: &mut watch::Receiver<bool>,
    ) -> io::Result<()> {
        let tick = if self.heartbeat.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.heartbeat / 2
        };
        let mut ticker = tokio::time::interval(
            tick.min(Duration::from_millis(500))
                .max(Duration::from_millis(100)),
        );
        let mut last_read = Instant::now();
        let mut last_write = Instant::now();
        let mut alarm = self.ctx.broker.alarms.subscribe();
        // Frames already buffered from the handshake are handled before the first read.
        self.process(&mut rbuf);
        loop {
            // Control messages go first, whatever else is waiting: the select below only wakes
            // the loop for them. A fair select serves the rest, so that neither a busy socket nor
            // a busy inbox starves the other.
            while let Ok(msg) = control.try_recv() {
                self.handle_control(msg);
            }
            // Replies to durable declares, deletes and bindings are held until they are on disk.
            if self.ctx.topology.is_some() && !self.ctx.topology_durable().await {
                self.refuse_unwritten();
            }
            if !self.ctx.out.is_empty() && io.write_now(&mut self.ctx.out).await? {
                last_write = Instant::now();
            }
            if self.state == State::Done && self.ctx.out.is_empty() && !io.needs_flush {
                return Ok(());
            }
            // The alarms are one relaxed load; the watch only wakes a blocked connection.
            self.follow_alarm(self.ctx.broker.alarms.raised());
            if self.blocked {
                // A blocked client cannot be heard, so its silence is no missed heartbeat.
                last_read = Instant::now();
            }
            let has_room = self.ctx.out.len() < HIGH_WATER;
            let can_read = has_room && self.state != State::Done && !self.blocked;
            if can_read && rbuf.capacity() - rbuf.len() < READ_MIN {
                rbuf.reserve(READ_CHUNK);
            }
            let socket_wanted = can_read || !self.ctx.out.is_empty() || io.needs_flush;
            let events_open = has_room && matches!(self.state, State::Open);
            tokio::select! {
                progress = poll_fn(|cx| io.poll_io(cx, &mut self.ctx.out, can_read.then_some(&mut rbuf))), if socket_wanted => {
                    let Progress { wrote, read } = progress?;
                    if wrote {
                        last_write = Instant::now();
                    }
                    match read {
                        Some(0) => return Ok(()),
                        Some(_) => {
                            last_read = Instant::now();
                            self.process(&mut rbuf);
                            // A publisher with data always ready would otherwise keep the
                            // consumers it wakes (queued behind it on this worker) from running.
                            tokio::task::yield_now().await;
                            // Credit flow: a publisher outrunning a queue's consumers waits
                            // for them, as RabbitMQ blocks it, so the backlog stays bounded.
                            if let Some(q) = self.ctx.throttle.take() {
                                if !self.ctx.out.is_empty() && io.write_now(&mut self.ctx.out).await? {
                                    last_write = Instant::now();
                                }
                                q.caught_up().await;
                            }
                        }
                        None => {}
                    }
                }
                Some(event) = rx.recv(), if events_open => {
                    self.ctx.now = Instant::now();
                    self.handle_event(event);
                    while self.ctx.out.len() < HIGH_WATER {
                        let Ok(event) = rx.try_recv() else { break };
                        self.handle_event(event);
                    }
                }
                Some(msg) = control.recv() => self.handle_control(msg),
                _ = ticker.tick() => {
                    let now = Instant::now();
                    if let State::Closing { deadline, .. } = self.state && now >= deadline {
                        return Ok(());
                    }
                    if !self.heartbeat.is_zero() {
                        if now.duration_since(last_read) > self.heartbeat * 2 {
                            warn!(peer = %self.peer, "missed heartbeats from client, timeout: {}s", self.heartbeat.as_secs());
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "heartbeat timeout"));
                        }
                        if now.duration_since(last_write) >= self.heartbeat / 2 {
                            encode::heartbeat(&mut self.ctx.out);
                        }
                    }
                    self.time_out_acks(now);
                }
                _ = alarm.changed() => {}
                _ = shutdown.changed(), if self.state == State::Open => {
                    self.close_connection(ConnectionError::new(
                        code::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'",
                    ), false);
                }
            }
        }
    }

    /// Handles every complete frame in the read buffer.
    fn process(&mut self, rbuf: &mut BytesMut) {
        self.ctx.now = Instant::now();
        loop {
            if let State::Closing { desync: true, .. } | State::Done = self.state {
                rbuf.clear();
                return;
            }
            let before = rbuf.len();
            let frame = match parse_frame(rbuf, self.ctx.frame_max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    // A frame the parser consumed leaves the stream in step: close-ok can follow.
                    let in_step = rbuf.len() < before;
                    self.close_connection(e, !in_step);
                    if !in_step {
                        self.lose_step();
                        rbuf.clear();
                        return;
                    }
                    continue;
                }
            };
            if let Err(e) = self.handle_frame(frame) {
                self.close_connection(e, false);
            }
        }
        for slot in self.channels.values_mut() {
            if let ChannelSlot::Open(ch) = slot {
                ch.flush_confirms(&mut self.ctx);
            }
        }
        if rbuf.is_empty() && rbuf.capacity() > 4 * READ_CHUNK {
            *rbuf = BytesMut::with_capacity(READ_CHUNK);
        }
    }

    fn handle_frame(&mut self, frame: Frame) -> Result<(), ConnectionError> {
        if let State::Closing { .. } = self.state {
            // After our connection.close, only close-ok (or the peer's own close) matters.
            if let Frame::Method {
                channel: 0,
                payload,
            } = frame
                && let Ok(d) = decode(&payload)
            {
                match d.method {
                    Method::Other(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                        self.state = State::Done;
                    }
                    // A close crossing ours ends it, as in RabbitMQ; a client that closes twice
                    // gets a second close-ok and hangs up when it likes.
                    Method::Other(AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                        self.send_close_ok();
                        if let State::Closing { by_peer: false, .. } = self.state {
                            self.state = State::Done;
                        }
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        match frame {
            Frame::Heartbeat { channel: 0 } => Ok(()),
            Frame::Heartbeat { .. } => Err(ConnectionError::unexpected_frame(
                "type 8, all octets = <<>>",
            )),
            Frame::Method {
                channel: 0,
                payload,
            } => {
                let d = decode(&payload)?;
                match d.method {
                    Method::Other(AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                        debug!(peer = %self.peer, code = c.reply_code, text = %c.reply_text, "client closed connection");
                        // Release everything before close-ok, as RabbitMQ does, then leave the
                        // socket to the client: some send close again before they hang up.
                        self.cleanup();
                        self.send_close_ok();
                        self.state = State::Closing {
                            deadline: Instant::now() + self.close_timeout,
                            desync: false,
                            by_peer: true,
                        };
                        Ok(())
                    }
                    Method::Other(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                        self.state = State::Done;
                        Ok(())
                    }
                    Method::Other(AMQPClass::Connection(
                        connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
                    )) => Ok(()),
                    _ => Err(ConnectionError::new(
                        code::CHANNEL_ERROR,
                        "unexpected method in connection state running",
                    )
                    .on(d.class_id, d.method_id)),
                }
            }
            Frame::Method { channel, payload } => {
                let d = decode(&payload)?;
                self.channel_method(channel, d)
            }
            Frame::Header { channel, payload } => {
                self.channel_content(channel, |ch, ctx| ch.handle_header(ctx, payload))
            }
            Frame::Body { channel, payload } => {
                self.channel_content(channel, |ch, ctx| ch.handle_body(ctx, payload))
            }
        }
    }

    /// RabbitMQ bounds how many channels are open, not their numbers, and checks it for any frame
    /// on a channel it does not know yet, before looking at the frame.
    fn check_channel_count(&self) -> Result<(), ConnectionError> {
        let open = self.channels.len();
        if self.channel_max != 0 && open >= usize::from(self.channel_max) {
            return Err(ConnectionError::new(
                code::NOT_ALLOWED,
                format_args!(
                    "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                    self.channel_max
                ),
            )
            .limit(Limit::ChannelMax));
        }
        self.ctx
            .broker
            .check_channel_limit(&self.ctx.user)
            .map_err(|text| {
                ConnectionError::new(code::NOT_ALLOWED, text).limit(Limit::UserChannels)
            })
    }

    fn channel_method(
        &mut self,
        id: u16,
        d: crate::protocol::method::Decoded,
    ) -> Result<(), ConnectionError> {
        let (class_id, method_id) = (d.class_id, d.method_id);
        let Some(slot) = self.channels.get_mut(&id) else {
            self.check_channel_count()?;
            if let Method::Other(AMQPClass::Channel(channel::AMQPMethod::Open(_))) = d.method {
                let stats = self.registered.open_channel(id);
                self.channels.insert(
                    id,
                    ChannelSlot::Open(Box::new(Channel::new(
                        id,
                        self.ctx.broker.memory.clone(),
                        stats,
                    ))),
                );
                self.registered.set_channels(self.channels.len());
                self.ctx.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                );
                return Ok(());
            }
            return Err(
                ConnectionError::new(code::CHANNEL_ERROR, "expected 'channel.open'")
                    .on(class_id, method_id),
            );
        };
        match (slot, d.method) {
            (slot, Method::Other(AMQPClass::Channel(channel::AMQPMethod::Close(_)))) => {
                // When both sides close at once, ours still awaits its close-ok: keep the slot.
                if let ChannelSlot::Open(ch) = slot {
                    ch.close(&mut self.ctx);
                    self.channels.remove(&id);
                    self.registered.set_channels(self.channels.len());
                    self.registered.close_channel(id);
                }
                self.ctx.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                Ok(())
            }
            (
                ChannelSlot::Closing,
                Method::Other(AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))),
            ) => {
                self.channels.remove(&id);
                self.registered.set_channels(self.channels.len());
                self.registered.close_channel(id);
                Ok(())
            }
            (ChannelSlot::Closing, _) => Ok(()),
            (ChannelSlot::Open(ch), method) => {
                let r = ch.handle_method(
                    &mut self.ctx,
                    crate::protocol::method::Decoded {
                        class_id,
                        method_id,
                        method,
                    },
                );
                self.channel_result(id, r)
            }
        }
    }

    fn channel_content(
        &mut self,
        id: u16,
        f: impl FnOnce(&mut Channel, &mut Ctx) -> Result<(), AmqpError>,
    ) -> Result<(), ConnectionError> {
        match self.channels.get_mut(&id) {
            None => {
                self.check_channel_count()?;
                Err(ConnectionError::unexpected_frame(
                    "expected method frame, got non method frame instead",
                ))
            }
            Some(ChannelSlot::Closing) => Ok(()),
            Some(ChannelSlot::Open(ch)) => {
                let r = f(ch, &mut self.ctx);
                self.channel_result(id, r)
            }
        }
    }

    /// Turns a channel's failure into `channel.close`, or passes a connection error up.
    fn channel_result(&mut self, id: u16, r: Result<(), AmqpError>) -> Result<(), ConnectionError> {
        match r {
            Ok(()) => Ok(()),
            Err(AmqpError::Connection(e)) => Err(e),
            Err(AmqpError::Channel(e)) => {
                self.count_limit(&e.0);
                warn!(
                    peer = %self.peer,
                    user = %self.ctx.user,
                    vhost = %self.ctx.vhost.name,
                    channel = id,
                    code = e.0.reply_code,
                    text = %e.0.reply_text,
                    method = e.0.method_name(),
                    limit = e.0.limit.map(Limit::name),
                    "channel error"
                );
                if let Some(ChannelSlot::Open(ch)) = self.channels.get_mut(&id) {
                    ch.flush_confirms(&mut self.ctx);
                    ch.close(&mut self.ctx);
                }
                self.channels.insert(id, ChannelSlot::Closing);
                let Reply {
                    reply_code,
                    reply_text,
                    class_id,
                    method_id,
                    ..
                } = e.0;
                self.ctx.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                        reply_code,
                        reply_text: reply_text.into(),
                        class_id,
                        method_id,
                    })),
                );
                Ok(())
            }
        }
    }

    fn handle_event(&mut self, event: QueueEvent) {
        match event {
            Deliver {
                channel,
                consumer_tag,
                queue,
                message,
            } => {
                let undelivered = match self.channels.get_mut(&channel) {
                    Some(ChannelSlot::Open(ch)) => {
                        match ch.deliver(&mut self.ctx, &consumer_tag, queue, message) {
                            Ok(()) => None,
                            Err(back) => {
                                ch.release_undelivered();
                                Some(back)
                            }
                        }
                    }
                    _ => Some((queue, message)),
                };
                if let Some((queue, message)) = undelivered {
                    queue.return_undelivered(message);
                }
            }
            QueueEvent::Cancelled {
                channel,
                consumer_tag,
            } => {
                if let Some(ChannelSlot::Open(ch)) = self.channels.get_mut(&channel) {
                    ch.consumer_cancelled(&mut self.ctx, &consumer_tag);
                }
            }
            QueueEvent::Reply { channel, msg } => {
                if let Some(ChannelSlot::Open(ch)) = self.channels.get_mut(&channel) {
                    ch.deliver_reply(&mut self.ctx, &msg);
                }
            }
            QueueEvent::Flushed {
                channel,
                upto,
                commit,
                written,
            } => {
                if let Some(ChannelSlot::Open(ch)) = self.channels.get_mut(&channel) {
                    let r = ch.flushed(&mut self.ctx, upto, commit, written);
                    // A failed commit closes its channel only: never a connection error.
                    let _ = self.channel_result(channel, r.map_err(AmqpError::Channel));
                }
            }
        }
    }

    /// Acts on a message from the broker's control path.
    fn handle_control(&mut self, msg: Control) {
        match msg {
            Control::Close { code, text } => self.close_connection(
                ConnectionError(Reply {
                    reply_code: code,
                    reply_text: text,
                    class_id: 0,
                    method_id: 0,
                    limit: None,
                }),
                false,
            ),
            Control::Block { reason } => self.held = Some(reason),
            Control::Unblock => self.held = None,
        }
    }

    /// Blocks a publishing connection while a resource alarm is on or the broker holds it (it
    /// reads nothing more, as RabbitMQ stops reading a publisher's socket), and unblocks it when
    /// both clear, telling clients that asked for `connection.blocked`. A change of reason while
    /// blocked (memory, then memory and disk) sends nothing: RabbitMQ 3.10 does not either.
    fn follow_alarm(&mut self, alarms: Raised) {
        let block = (alarms.any() || self.held.is_some())
            && self.ctx.published
            && self.state == State::Open;
        if block == self.blocked {
            return;
        }
        self.blocked = block;
        // A resource alarm speaks first: its reason is the one RabbitMQ gives.
        let reason = match (alarms.reason(), &self.held) {
            (Some(alarm), _) => alarm,
            (None, Some(held)) => held.as_str(),
            (None, None) => "",
        };
        if alarms.any() || !block {
            info!(peer = %self.peer, conn_id = self.ctx.conn_id, blocked = block, reason, "resource alarm: publishing connection {}", if block { "blocked" } else { "unblocked" });
        } else {
            info!(peer = %self.peer, conn_id = self.ctx.conn_id, blocked = block, reason, "publishing connection blocked by the broker");
        }
        if !self.blocked_notify {
            return;
        }
        let method = if block {
            connection::AMQPMethod::Blocked(connection::Blocked {
                reason: reason.into(),
            })
        } else {
            connection::AMQPMethod::Unblocked(connection::Unblocked {})
        };
        self.ctx.send(0, AMQPClass::Connection(method));
    }

    fn send_close_ok(&mut self) {
        self.ctx.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
    }

    /// Sends `connection.close` and waits (bounded) for the peer's `close-ok`.
    /// The store could not write what this batch's replies promise: they are dropped unsent and
    /// the connection is closed (its unacked deliveries go back to their queues).
    fn refuse_unwritten(&mut self) {
        if self.state != State::Open {
            return;
        }
        self.ctx.out.clear();
        self.close_connection(
            ConnectionError::new(code::INTERNAL_ERROR, "the store could not write to disk"),
            false,
        );
    }

    /// Closes, with RabbitMQ's 406, each channel whose oldest unacked delivery is older than
    /// `consumer_timeout`; its unacked messages go back to their queues.
    fn time_out_acks(&mut self, now: Instant) {
        let Some(timeout) = self.ctx.broker.config.consumer_timeout() else {
            return;
        };
        if self.state != State::Open {
            return;
        }
        let overdue: Vec<u16> = self
            .channels
            .iter()
            .filter_map(|(&id, slot)| match slot {
                ChannelSlot::Open(ch) if ch.ack_overdue(now, timeout) => Some(id),
                _ => None,
            })
            .collect();
        for id in overdue {
            let e = ChannelError::precondition(format_args!(
                "delivery acknowledgement on channel {id} timed out. Timeout value used: {} ms. \
                 This timeout value can be configured, see consumers doc guide to learn more",
                timeout.as_millis()
            ))
            .limit(Limit::ConsumerTimeout);
            // A channel error cannot fail the connection.
            let _ = self.channel_result(id, Err(e.into()));
        }
    }

    /// Counts a refusal that enforces a limit (the log line that reports it names the limit).
    fn count_limit(&self, reply: &Reply) {
        if let Some(limit) = reply.limit {
            self.ctx.broker.limits.hit(limit);
        }
    }

    fn close_connection(&mut self, e: ConnectionError, desync: bool) {
        if self.state != State::Open {
            return;
        }
        self.count_limit(&e.0);
        if e.0.reply_code == code::CONNECTION_FORCED {
            info!(peer = %self.peer, user = %self.ctx.user, text = %e.0.reply_text, "closing connection");
        } else {
            warn!(
                peer = %self.peer,
                user = %self.ctx.user,
                vhost = %self.ctx.vhost.name,
                code = e.0.reply_code,
                text = %e.0.reply_text,
                method = e.0.method_name(),
                limit = e.0.limit.map(Limit::name),
                "connection error"
            );
        }
        let Reply {
            reply_code,
            reply_text,
            class_id,
            method_id,
            ..
        } = e.0;
        self.ctx.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code,
                reply_text: reply_text.into(),
                class_id,
                method_id,
            })),
        );
        self.release_channels();
        self.state = State::Closing {
            deadline: Instant::now() + self.close_timeout,
            desync,
            by_peer: false,
        };
    }

    /// After a framing error that leaves the stream out of step, no later frame can be trusted,
    /// not even a close-ok: the connection waits out its close timeout.
    fn lose_step(&mut self) {
        if let State::Closing { desync, .. } = &mut self.state {
            *desync = true;
        }
    }

    fn release_channels(&mut self) {
        for (_, slot) in self.channels.drain() {
            if let ChannelSlot::Open(mut ch) = slot {
                ch.close(&mut self.ctx);
            }
        }
        self.registered.set_channels(0);
        self.registered.close_channels();
    }

    fn cleanup(&mut self) {
        self.release_channels();
        self.ctx.vhost.drop_exclusive_queues(self.ctx.conn_id);
    }
}

/// What one turn of the transport did: whether anything went out, and what a read brought in
/// (`Some(0)` at end of stream).
struct Progress {
    wrote: bool,
    read: Option<usize>,
}

/// The connection's transport and whether bytes written to it still await a flush (a buffering
/// transport such as TLS holds them until flushed; a TCP socket never does).
struct Io<S> {
    stream: S,
    needs_flush: bool,
    /// Where the socket's bytes are counted.
    registered: Arc<Registered>,
}

impl<S: Transport> Io<S> {
    /// Writes what the transport takes of `out` now, and reads what it has if `rbuf` is given.
    /// Ready when either made progress. Cancel-safe: all progress is recorded in the buffers
    /// before it returns, so a select that drops it loses nothing.
    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut BytesMut,
        rbuf: Option<&mut BytesMut>,
    ) -> Poll<io::Result<Progress>> {
        let wrote = match self.poll_write_out(cx, out) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => true,
            Poll::Pending => false,
        };
        let read = match rbuf {
            Some(rbuf) => match pin!(self.stream.read_buf(rbuf)).poll(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(n)) => {
                    self.registered.counters.add(Stat::RecvOct, n as u64);
                    self.registered.counters.add(Stat::RecvCnt, 1);
                    Some(n)
                }
                Poll::Pending => None,
            },
            None => None,
        };
        if wrote || read.is_some() {
            Poll::Ready(Ok(Progress { wrote, read }))
        } else {
            Poll::Pending
        }
    }

    /// Writes what the transport takes of `out` now without waiting; true if anything went out.
    async fn write_now(&mut self, out: &mut BytesMut) -> io::Result<bool> {
        poll_fn(|cx| match self.poll_write_out(cx, out) {
            Poll::Ready(r) => Poll::Ready(r.map(|()| true)),
            Poll::Pending => Poll::Ready(Ok(false)),
        })
        .await
    }

    /// Writes `out` in as few writes as the transport takes, then flushes it. Ready once
    /// something went out (or a pending flush finished); pending, with the waker registered,
    /// when the transport takes nothing more.
    fn poll_write_out(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Poll<io::Result<()>> {
        let mut progress = false;
        while !out.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.registered.counters.add(Stat::SendOct, n as u64);
                    self.registered.counters.add(Stat::SendCnt, 1);
                    out.advance(n);
                    progress = true;
                    self.needs_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if out.is_empty() && self.needs_flush {
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.needs_flush = false;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if out.is_empty() && out.capacity() > 4 * HIGH_WATER {
            *out = BytesMut::with_capacity(READ_CHUNK);
        }
        if progress {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}
