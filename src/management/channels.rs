//! Channels and consumers: `/api/channels[/NAME]`, `/api/connections/NAME/channels`,
//! `/api/vhosts/V/channels` and `/api/consumers[/V]`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde_json::{Value, json};

use super::convert::table_to_json;
use super::list::{ListQuery, respond};
use super::overview::{find_connection, node_name, vhost_connections_of, visible_connections};
use super::stats::{Ages, CHANNEL_STATS, add_message_stats};
use super::topology::listed_vhosts;
use super::{Api, ApiError, ApiResult, Caller, json_ok};
use crate::broker::connections::{ChannelStats, Mode, Registered};
use crate::queue::Queue;

/// The routes of this module.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/channels", get(list_channels))
        .route("/channels/{name}", get(get_channel))
        .route("/connections/{name}/channels", get(connection_channels))
        .route("/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/consumers", get(list_consumers))
        .route("/consumers/{vhost}", get(vhost_consumers))
}

/// RabbitMQ's default delivery acknowledgement timeout, which listings report: Warren does not
/// enforce one.
const CONSUMER_TIMEOUT_MS: u64 = 1_800_000;

/// The name RabbitMQ gives a channel: its connection's, then its number.
fn channel_name(c: &Registered, number: u16) -> String {
    format!("{} ({number})", c.display_name())
}

/// Who a channel or consumer belongs to, as RabbitMQ's `connection_details`.
fn connection_details(c: &Registered) -> Value {
    json!({
        "name": c.display_name(),
        "peer_host": c.identity.peer.ip().to_canonical().to_string(),
        "peer_port": c.identity.peer.port(),
    })
}

/// A channel as the API shows it.
fn channel_json(c: &Registered, ch: &ChannelStats, ages: Ages) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let mode = ch.mode();
    let mut json = json!({
        "name": channel_name(c, ch.number),
        "number": ch.number,
        "node": node_name(),
        "state": "running",
        "user": c.identity.user,
        "user_who_performed_action": c.identity.user,
        "vhost": *c.identity.vhost,
        "connection_details": connection_details(c),
        "consumer_count": ch.consumers.load(Relaxed),
        "messages_unacknowledged": ch.unacked.load(Relaxed),
        "messages_unconfirmed": ch.unconfirmed.load(Relaxed),
        "messages_uncommitted": ch.uncommitted.load(Relaxed),
        "acks_uncommitted": ch.acks_uncommitted.load(Relaxed),
        "prefetch_count": ch.prefetch.load(Relaxed),
        "global_prefetch_count": ch.global_prefetch.load(Relaxed),
        "confirm": mode == Mode::Confirm,
        "transactional": mode == Mode::Transactional,
        "pending_raft_commands": 0,
    });
    add_message_stats(
        &mut json,
        &ch.counters.totals(),
        &ch.history,
        CHANNEL_STATS,
        ages,
    );
    json
}

/// The channels of `connections`, in connection then number order.
fn channels_of(connections: &[Arc<Registered>], ages: Ages) -> Vec<Value> {
    connections
        .iter()
        .flat_map(|c| {
            c.channel_stats()
                .into_iter()
                .map(move |ch| channel_json(c, &ch, ages))
        })
        .collect()
}

async fn list_channels(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    respond(
        channels_of(&visible_connections(&api, &caller), Ages::of(&q)),
        &q,
    )
}

async fn get_channel(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let ages = Ages::of(&q);
    visible_connections(&api, &caller)
        .iter()
        .find_map(|c| {
            c.channel_stats()
                .into_iter()
                .find(|ch| channel_name(c, ch.number) == name)
                .map(|ch| json_ok(channel_json(c, &ch, ages)))
        })
        .ok_or(ApiError::NotFound)
}

async fn connection_channels(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let c = find_connection(&api, &caller, &name)?;
    respond(channels_of(&[c], Ages::of(&q)), &q)
}

async fn vhost_channels(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let mine = vhost_connections_of(&api, &caller, &vhost)?;
    respond(channels_of(&mine, Ages::of(&q)), &q)
}

/// A queue's consumers as RabbitMQ lists them.
pub(super) fn consumers_json(api: &Api, q: &Queue) -> Vec<Value> {
    q.consumer_views()
        .into_iter()
        .map(|c| {
            let channel_details = api.broker.connections.get(c.conn_id).map_or_else(
                || json!({}),
                |conn| {
                    json!({
                        "connection_name": conn.display_name(),
                        "name": channel_name(&conn, c.channel),
                        "node": node_name(),
                        "number": c.channel,
                        "peer_host": conn.identity.peer.ip().to_canonical().to_string(),
                        "peer_port": conn.identity.peer.port(),
                        "user": conn.identity.user,
                    })
                },
            );
            json!({
                "arguments": table_to_json(&c.arguments),
                "ack_required": c.ack_required,
                "active": true,
                "activity_status": "up",
                "channel_details": channel_details,
                "consumer_tag": *c.tag,
                "exclusive": c.exclusive,
                "prefetch_count": c.prefetch,
                "consumer_timeout": CONSUMER_TIMEOUT_MS,
                "queue": {"name": *q.name, "vhost": *q.vhost},
            })
        })
        .collect()
}

fn consumers_in(api: &Api, caller: &Caller, vhost: Option<&str>, q: &ListQuery) -> ApiResult {
    let vhosts = listed_vhosts(api, caller, vhost)?;
    let all = vhosts
        .iter()
        .flat_map(|v| v.queues())
        .flat_map(|queue| consumers_json(api, &queue))
        .collect();
    respond(all, q)
}

async fn list_consumers(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    consumers_in(&api, &caller, None, &q)
}

async fn vhost_consumers(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    consumers_in(&api, &caller, Some(&vhost), &q)
}
