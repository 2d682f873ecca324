//! The broker's memory budget for queued messages, and paging past it.
//!
//! Every queue charges the messages it holds ready in memory to one broker-wide [`Pager`]. Once
//! the memory [`MemoryGauge`] counts reaches its paging point, a message entering a queue is
//! paged out instead: a copy goes to the store's `pages` tree through [`Pages`] (a persistent
//! message recovered at start needs none: its stored body is read back instead), and the queue
//! keeps only a [`Slot`] of 48 bytes. A paged message is read back when it leaves the queue's ready list, as a consumer or
//! `basic.get` reaches it.
//!
//! A durable queue needs no copy of a persistent message: past the first [`WINDOW`] ready
//! messages of the queue (or past the budget), it drops the message to its stored record once
//! the store says the append is on disk ([`Charge::drop_written`]), and reads it back from there.
//! Until then the message stays in memory, so a consumer never reaches a record that is not
//! written yet.
//!
//! Queues report their charges in steps of [`GRANULE`], under their own lock, so the shared
//! counter is not touched per message: a message that goes straight to a waiting consumer costs
//! no atomic operation at all. The price is that each queue may hold up to a granule more than
//! the budget says (80 MiB across 10,000 queues).

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::log::{Pages, RecordId};
use super::memory::{GRANULE, MemoryGauge, footprint};
use super::{Entry, QueuedMessage};
use crate::protocol::Message;

/// Ready messages a queue keeps in memory at its head before persistent ones it has on disk are
/// read back from there instead: enough that consumers of a queue with a backlog rarely wait
/// for a read, small enough that 10,000 such queues fit the default budget's paging point.
pub const WINDOW: usize = 2048;

/// The broker-wide budget for message bytes held in queues, and the pages that take the rest.
#[derive(Debug)]
pub struct Pager {
    pages: Pages,
    gauge: Arc<MemoryGauge>,
    paged_out: AtomicU64,
}

impl Pager {
    /// Pages to `pages` once `gauge` says the budget is spent.
    pub fn new(pages: Pages, gauge: Arc<MemoryGauge>) -> Arc<Self> {
        Arc::new(Self {
            pages,
            gauge,
            paged_out: AtomicU64::new(0),
        })
    }

    /// Bytes of queued messages held in memory, as queues last reported them.
    pub fn resident_bytes(&self) -> u64 {
        self.gauge.ready_bytes()
    }

    /// Messages paged out since start.
    pub fn paged_out(&self) -> u64 {
        self.paged_out.load(Ordering::Relaxed)
    }

    fn has_room(&self) -> bool {
        self.gauge.has_room()
    }

    fn report(&self, delta: i64) {
        self.gauge.report_ready(delta);
    }

    /// Pages out a message whose stored record is on disk already.
    fn stored(&self, record: RecordId) -> Page {
        self.paged_out.fetch_add(1, Ordering::Relaxed);
        Page::Stored(record)
    }

    /// Writes a copy of `msg` and returns its page.
    fn page_out(&self, msg: &Message) -> Option<Page> {
        let id = self.pages.page_out(msg)?;
        self.paged_out.fetch_add(1, Ordering::Relaxed);
        Some(Page::Copy(id))
    }

    /// Reads a paged message back; `None` (logged) if its record is gone or damaged.
    fn page_in(&self, page: Page) -> Option<Arc<Message>> {
        match page {
            Page::Copy(id) => self.pages.page_in(id),
            Page::Stored(record) => self.pages.read(record),
        }
        .map(Arc::new)
    }

    /// Forgets a page whose message is dropped unread.
    fn forget(&self, page: Page) {
        if let Page::Copy(id) = page {
            self.pages.drop_page(id);
        }
    }
}

/// Where a paged message is.
#[derive(Debug, Clone, Copy)]
enum Page {
    /// A copy in the store's `pages` tree, under this page id.
    Copy(u64),
    /// Its stored record, on disk already (a recovered message).
    Stored(RecordId),
}

/// How a message may be held when it enters a queue's ready list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Paged out if the budget is spent.
    Pageable,
    /// Read back from its stored body past the window or the budget, which is safe once its
    /// write is on disk (a message recovered at start).
    Stored,
    /// Appended to the queue's log just now: held in memory until the append is on disk, then
    /// past the window or the budget dropped to its record ([`Charge::drop_written`]).
    Logged,
    /// Kept in memory whatever the budget (a message coming back from a consumer).
    Resident,
}

#[derive(Debug)]
enum Held {
    Resident(Arc<Message>),
    /// Flattened from [`Page`] so the bool's spare values hold the variant: 16 bytes in all.
    Paged {
        id: u64,
        len: u32,
        stored: bool,
    },
}

impl Held {
    fn paged(page: Page, len: u32) -> Self {
        match page {
            Page::Copy(id) => Self::Paged {
                id,
                len,
                stored: false,
            },
            Page::Stored(record) => Self::Paged {
                id: record.get(),
                len,
                stored: true,
            },
        }
    }
}

fn page(id: u64, stored: bool) -> Page {
    match RecordId::new(id) {
        Some(record) if stored => Page::Stored(record),
        _ => Page::Copy(id),
    }
}

/// A message in a queue's ready list: an [`Entry`] whose message may be paged out. All a paged
/// message costs in memory is this record, 48 bytes.
#[derive(Debug)]
pub struct Slot {
    seq: u64,
    /// When its TTL runs out, in µs on the queue clock.
    pub expires: u64,
    held: Held,
    /// A quorum queue's delivery count (`counted` says whether there is one), kept flat.
    delivery_count: u32,
    counted: bool,
    priority: u8,
    redelivered: bool,
    /// Its record in the queue's log, if the log keeps it.
    record: Option<RecordId>,
}

const _: () = assert!(std::mem::size_of::<Slot>() <= 48);

fn charge_of(m: &Message) -> i64 {
    i64::try_from(footprint(m)).unwrap_or(i64::MAX)
}

impl Slot {
    /// Body bytes, for `x-max-length-bytes`.
    pub fn body_len(&self) -> u64 {
        match &self.held {
            Held::Resident(m) => u64::try_from(m.body.len()).unwrap_or(u64::MAX),
            Held::Paged { len, .. } => u64::from(*len),
        }
    }

    /// Whether it goes before `other`: higher priority first, then publish order.
    pub fn before(&self, other: &Slot) -> bool {
        self.order() < other.order()
    }

    /// Its place in a ready list: by priority, highest first, then by sequence.
    fn order(&self) -> (Reverse<u8>, u64) {
        (Reverse(self.priority), self.seq)
    }
}

/// A message a queue holds in memory until its append is on disk.
#[derive(Debug, Clone, Copy)]
pub struct Unwritten {
    seq: u64,
    priority: u8,
    /// The store's failures when it was appended.
    failures: u64,
}

impl Unwritten {
    /// The message at `seq` and `priority`, appended when the store had failed `failures` times.
    pub fn new(seq: u64, priority: u8, failures: u64) -> Self {
        Self {
            seq,
            priority,
            failures,
        }
    }
}

/// A queue's ready messages' charge against the broker's budget.
#[derive(Debug, Default)]
pub struct Charge {
    pager: Option<Arc<Pager>>,
    /// Charged here and not yet reported to the pager.
    unreported: i64,
}

impl Charge {
    /// A queue's charge against `pager` (none: everything stays in memory).
    pub fn new(pager: Option<Arc<Pager>>) -> Self {
        Self {
            pager,
            unreported: 0,
        }
    }

    fn add(&mut self, delta: i64) {
        self.unreported += delta;
        if self.unreported.unsigned_abs() >= GRANULE
            && let Some(p) = &self.pager
        {
            p.report(self.unreported);
            self.unreported = 0;
        }
    }

    /// Whether the broker's budget leaves room for another message in memory.
    pub fn has_room(&self) -> bool {
        self.pager.as_ref().is_none_or(|p| p.has_room())
    }

    /// Makes `e` a slot: held in memory while the budget allows (or `admit` insists), else paged.
    /// `past_window` says whether the queue holds [`WINDOW`] ready messages already.
    pub fn admit(&mut self, e: Entry, admit: Admit, past_window: bool) -> Slot {
        let Entry {
            message:
                QueuedMessage {
                    seq,
                    msg,
                    redelivered,
                    record,
                },
            expires,
            priority,
            delivery_count,
        } = e;
        let page = match (&self.pager, admit) {
            (Some(p), Admit::Stored) if past_window || !p.has_room() => record.map(|r| p.stored(r)),
            (Some(p), Admit::Pageable) if !p.has_room() => p.page_out(&msg),
            _ => None,
        };
        let held = match page {
            Some(page) => Held::paged(page, u32::try_from(msg.body.len()).unwrap_or(u32::MAX)),
            None => {
                self.add(charge_of(&msg));
                Held::Resident(msg)
            }
        };
        Slot {
            seq,
            expires,
            delivery_count: delivery_count.unwrap_or(0),
            counted: delivery_count.is_some(),
            priority,
            redelivered,
            record,
            held,
        }
    }

    /// The entry a slot holds, read back from disk if it was paged; `None` (logged) if its page
    /// is lost.
    pub fn release(&mut self, s: Slot) -> Option<Entry> {
        let msg = match s.held {
            Held::Resident(msg) => {
                self.add(-charge_of(&msg));
                msg
            }
            Held::Paged { id, stored, .. } => self.pager.as_ref()?.page_in(page(id, stored))?,
        };
        Some(Entry {
            message: QueuedMessage {
                seq: s.seq,
                msg,
                redelivered: s.redelivered,
                record: s.record,
            },
            expires: s.expires,
            priority: s.priority,
            delivery_count: s.counted.then_some(s.delivery_count),
        })
    }

    /// Drops to their records the messages `unwritten` names whose appends are now on disk
    /// (below `written`, with the store's failures still at the count they were noted with);
    /// those whose write failed or may have stay in memory.
    pub fn drop_written(
        &mut self,
        ready: &mut VecDeque<Slot>,
        unwritten: &mut VecDeque<Unwritten>,
        written: u64,
        failures: u64,
    ) {
        while let Some(u) = unwritten.front().copied() {
            if u.seq >= written && u.failures == failures {
                break;
            }
            unwritten.pop_front();
            if u.failures != failures {
                continue;
            }
            let key = (Reverse(u.priority), u.seq);
            let at = ready.partition_point(|s| s.order() < key);
            if let Some(s) = ready.get_mut(at).filter(|s| s.seq == u.seq) {
                self.drop_to_record(s);
            }
        }
    }

    /// Drops a slot's message, keeping its record to read it back from.
    fn drop_to_record(&mut self, s: &mut Slot) {
        let (Held::Resident(msg), Some(record), Some(p)) = (&s.held, s.record, &self.pager) else {
            return;
        };
        let charge = charge_of(msg);
        let len = u32::try_from(msg.body.len()).unwrap_or(u32::MAX);
        s.held = Held::paged(p.stored(record), len);
        self.add(-charge);
    }

    /// Drops a slot unread.
    pub fn drop_slot(&mut self, s: Slot) {
        match s.held {
            Held::Resident(msg) => self.add(-charge_of(&msg)),
            Held::Paged { id, stored, .. } => {
                if let Some(p) = &self.pager {
                    p.forget(page(id, stored));
                }
            }
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(p) = &self.pager {
            p.report(self.unreported);
        }
    }
}
