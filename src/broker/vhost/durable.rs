//! Durable topology: turning exchanges, queues and bindings into store records and back.

use std::sync::Arc;

use amq_protocol::types::FieldTable;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use tracing::warn;

use super::{Topology, VHost};
use crate::broker::delayed;
use crate::broker::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::protocol::table::check_depth;
use crate::queue::args::{Declared, QueueArgs, QueueType};
use crate::queue::log::{QueueLog, RecordId, StreamFiles};
use crate::queue::{Queue, QueueOptions, QueuedMessage, stream};
use crate::store::{BindingRecord, ExchangeRecord, QueueRecord, Recovered, Store};

/// Field tables are stored in their wire encoding.
fn encode_table(t: &FieldTable) -> Vec<u8> {
    cookie_factory::r#gen(gen_field_table(t), Vec::new())
        .map(|(v, _)| v)
        .unwrap_or_default()
}

/// Tables were checked on the wire before they were stored; a stored one nested too deep (a
/// damaged record) is read as empty rather than recursed into.
fn decode_table(raw: &[u8]) -> FieldTable {
    if let Err(e) = check_depth(raw) {
        warn!(cause = %e, "stored arguments ignored");
        return FieldTable::default();
    }
    parse_field_table(raw).map(|(_, t)| t).unwrap_or_default()
}

impl Topology {
    fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Stores a durable exchange.
    pub(super) fn persist_exchange(&self, x: &Exchange) {
        if let (Some(store), true) = (self.store(), x.durable) {
            let record = ExchangeRecord {
                vhost: self.vhost.to_string(),
                name: x.name.to_string(),
                kind: x.type_name().into(),
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: encode_table(&x.arguments),
            };
            store.put_meta(
                ExchangeRecord::key(&self.vhost, &x.name),
                Some(record.encode()),
            );
        }
    }

    /// Removes an exchange and everything stored about it and its bindings.
    pub(super) fn remove_exchange(&mut self, name: &str) -> Option<Exchange> {
        let x = self.exchanges.remove(name)?;
        if let (Some(store), true) = (self.store(), x.durable) {
            store.put_meta(ExchangeRecord::key(&self.vhost, name), None);
            for b in x.bindings() {
                self.forget_binding(&x, b);
            }
        }
        Some(x)
    }

    fn binding_record(&self, source: &Exchange, b: &Binding) -> Option<BindingRecord> {
        if !source.durable {
            return None;
        }
        let (destination, to_queue) = match &b.destination {
            Destination::Queue(q) if q.options.durable => (q.name.to_string(), true),
            Destination::Exchange(e) if self.exchanges.get(&**e).is_some_and(|x| x.durable) => {
                (e.to_string(), false)
            }
            _ => return None,
        };
        Some(BindingRecord {
            vhost: self.vhost.to_string(),
            source: source.name.to_string(),
            destination,
            to_queue,
            routing_key: b.routing_key.clone(),
            arguments: encode_table(&b.arguments),
        })
    }

    /// Stores a binding between durable entities.
    pub(super) fn persist_binding(&self, source: &str, b: &Binding) {
        if let (Some(store), Some(x)) = (self.store(), self.exchanges.get(source))
            && let Some(r) = self.binding_record(x, b)
        {
            store.put_meta(r.key(), Some(r.encode()));
        }
    }

    /// Forgets a stored binding.
    pub(super) fn forget_binding(&self, source: &Exchange, b: &Binding) {
        if let Some(store) = self.store()
            && let Some(r) = self.binding_record(source, b)
        {
            store.put_meta(r.key(), None);
        }
    }

    /// The log of a new queue, if it is durable.
    pub(super) fn queue_log(&self, durable: bool) -> Option<QueueLog> {
        let store = self.store()?;
        durable.then(|| QueueLog::create(store.clone()))
    }

    /// Stores a durable queue.
    pub(super) fn persist_queue(&self, q: &Queue) {
        if let (Some(store), Some(log)) = (self.store(), &q.options.log) {
            let record = QueueRecord {
                id: log.id(),
                vhost: self.vhost.to_string(),
                name: q.name.to_string(),
                auto_delete: q.options.auto_delete,
                arguments: encode_table(&q.options.arguments),
            };
            store.put_meta(
                QueueRecord::key(&self.vhost, &q.name),
                Some(record.encode()),
            );
        }
    }

    /// Forgets a deleted durable queue's record (its messages go with `Queue::delete`).
    pub(super) fn forget_queue(&self, q: &Queue) {
        if let (Some(store), Some(_)) = (self.store(), &q.options.log) {
            store.put_meta(QueueRecord::key(&self.vhost, &q.name), None);
        }
    }
}

/// The files of a stream queue whose log is `log` (none for other queues).
pub(super) fn stream_files(
    log: Option<&QueueLog>,
    args: &QueueArgs,
) -> std::io::Result<Option<StreamFiles>> {
    match (args.queue_type, log) {
        (QueueType::Stream, Some(log)) => StreamFiles::open(log, stream::retention(args)).map(Some),
        _ => Ok(None),
    }
}

impl VHost {
    /// Brings back this vhost's durable exchanges, queues (with their messages) and bindings.
    pub(in crate::broker) fn restore(&self, recovered: &mut Recovered, store: &Arc<Store>) {
        let mut t = self.topology.write();
        for r in recovered
            .exchanges
            .iter()
            .filter(|r| *r.vhost == *self.name)
        {
            let arguments = decode_table(&r.arguments);
            let (kind, delayed) = if r.kind == delayed::EXCHANGE_TYPE {
                (delayed::routing_kind(&arguments).ok(), true)
            } else {
                (ExchangeKind::parse(&r.kind), false)
            };
            let Some(kind) = kind else {
                warn!(exchange = %r.name, kind = %r.kind, "skipping stored exchange of unknown type");
                continue;
            };
            t.exchanges.entry(r.name.clone()).or_insert_with(|| {
                let x = Exchange::new(&r.name, kind, true, r.auto_delete, r.internal, arguments);
                if delayed { x.into_delayed() } else { x }
            });
        }
        let mut missing = 0;
        for (r, messages) in recovered
            .queues
            .iter_mut()
            .filter(|(r, _)| *r.vhost == *self.name)
        {
            let log = QueueLog::new(store.clone(), r.id);
            let arguments = decode_table(&r.arguments);
            let declared = Declared {
                name: &r.name,
                vhost: &self.name,
                durable: true,
                exclusive: false,
                auto_delete: r.auto_delete,
            };
            let args = QueueArgs::parse(&arguments, declared).unwrap_or_else(|e| {
                warn!(queue = %r.name, cause = %e, "ignoring invalid queue arguments");
                QueueArgs::default()
            });
            let stream = match stream_files(Some(&log), &args) {
                Ok(s) => s,
                Err(e) => {
                    warn!(queue = %r.name, vhost = %self.name, cause = %e, "cannot open a stream's files; the stream is left out");
                    continue;
                }
            };
            let q = Queue::with_args(
                r.name.as_str().into(),
                self.name.clone(),
                QueueOptions {
                    durable: true,
                    exclusive_owner: None,
                    auto_delete: r.auto_delete,
                    arguments,
                    log: Some(log.clone()),
                    pager: t.pager.clone(),
                    stream,
                },
                args,
            );
            // Bodies are read one at a time: the queue keeps in memory what its budget allows.
            let loaded = std::mem::take(&mut messages.messages)
                .into_iter()
                .filter_map(|r| {
                    let read = RecordId::new(r.message_id).and_then(|id| Some((id, log.read(id)?)));
                    let Some((record, msg)) = read else {
                        missing += 1;
                        return None;
                    };
                    let m = QueuedMessage {
                        seq: r.seq,
                        msg: Arc::new(msg),
                        redelivered: r.delivered,
                        record: Some(record),
                    };
                    Some((m, r.stored_at, r.delivery_count))
                });
            q.restore(loaded);
            t.queues.insert(r.name.clone(), q);
        }
        recovered.damaged += missing;
        for r in recovered.bindings.iter().filter(|r| *r.vhost == *self.name) {
            let destination = if r.to_queue {
                match t.queues.get(&r.destination) {
                    Some(q) => Destination::Queue(q.clone()),
                    None => continue,
                }
            } else if t.exchanges.contains_key(&r.destination) {
                Destination::Exchange(r.destination.as_str().into())
            } else {
                continue;
            };
            if let Some(x) = t.exchanges.get_mut(&r.source) {
                x.bind(Binding {
                    destination,
                    routing_key: r.routing_key.clone(),
                    arguments: decode_table(&r.arguments),
                });
            }
        }
    }
}
