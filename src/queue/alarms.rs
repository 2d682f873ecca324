//! The broker's resource alarms (memory, disk) as one state that connections read per batch.
//!
//! The memory gauge and the disk checker each raise and clear their own alarm here; a connection
//! reads the combination with one relaxed load and waits on the watch only while it is blocked.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::sync::watch;

/// One resource that can run low.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// Message bytes in memory past the budget.
    Memory,
    /// Free space on the data dir's filesystem under the limit.
    Disk,
}

impl Alarm {
    fn bit(self) -> u8 {
        match self {
            Self::Memory => 1,
            Self::Disk => 2,
        }
    }
}

/// The alarms raised at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Raised(u8);

impl Raised {
    /// Whether any alarm is raised.
    pub fn any(self) -> bool {
        self.0 != 0
    }

    /// Whether `alarm` is raised.
    pub fn has(self, alarm: Alarm) -> bool {
        self.0 & alarm.bit() != 0
    }

    /// The reason RabbitMQ gives in `connection.blocked` for these alarms, if any is raised.
    pub fn reason(self) -> Option<&'static str> {
        match (self.has(Alarm::Memory), self.has(Alarm::Disk)) {
            (true, true) => Some("low on memory & disk"),
            (true, false) => Some("low on memory"),
            (false, true) => Some("low on disk"),
            (false, false) => None,
        }
    }
}

/// The broker-wide alarm state, and the free-disk limit the disk checker holds the data dir to.
#[derive(Debug)]
pub struct Alarms {
    /// The raised alarms as bits, mirrored from the watch so readers need no lock.
    raised: AtomicU8,
    changes: watch::Sender<Raised>,
    disk_free_limit: AtomicU64,
    /// Free bytes on the data dir's filesystem at the disk checker's last look (0: unknown).
    disk_free: AtomicU64,
}

impl Alarms {
    /// No alarm raised; the disk alarm goes off under `disk_free_limit` free bytes.
    pub fn new(disk_free_limit: u64) -> Self {
        Self {
            raised: AtomicU8::new(0),
            changes: watch::channel(Raised::default()).0,
            disk_free_limit: AtomicU64::new(disk_free_limit),
            disk_free: AtomicU64::new(0),
        }
    }

    /// The alarms raised now: one relaxed load.
    pub fn raised(&self) -> Raised {
        Raised(self.raised.load(Ordering::Relaxed))
    }

    /// Wakes on every change of the raised alarms.
    pub fn subscribe(&self) -> watch::Receiver<Raised> {
        self.changes.subscribe()
    }

    /// Raises (`on`) or clears `alarm`; true if that changed it.
    pub fn set(&self, alarm: Alarm, on: bool) -> bool {
        // Under the watch's lock, so that concurrent changes of the two alarms publish in order.
        self.changes.send_if_modified(|current| {
            let bits = if on {
                current.0 | alarm.bit()
            } else {
                current.0 & !alarm.bit()
            };
            if bits == current.0 {
                return false;
            }
            *current = Raised(bits);
            self.raised.store(bits, Ordering::Relaxed);
            true
        })
    }

    /// Free bytes under which the disk alarm goes off.
    pub fn disk_free_limit(&self) -> u64 {
        self.disk_free_limit.load(Ordering::Relaxed)
    }

    /// Free bytes on the data dir's filesystem at the last look (0: unknown).
    pub fn disk_free(&self) -> u64 {
        self.disk_free.load(Ordering::Relaxed)
    }

    /// Records what the disk checker saw.
    pub fn set_disk_free(&self, bytes: u64) {
        self.disk_free.store(bytes, Ordering::Relaxed);
    }

    /// Changes the free-disk limit at runtime (as `rabbitmqctl set_disk_free_limit`); the disk
    /// checker applies it at its next look.
    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.disk_free_limit.store(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_rabbitmqs_and_each_alarm_clears_alone() {
        let alarms = Alarms::new(0);
        let watch = alarms.subscribe();
        assert_eq!(alarms.raised().reason(), None);
        assert!(alarms.set(Alarm::Memory, true));
        assert!(!alarms.set(Alarm::Memory, true));
        assert_eq!(alarms.raised().reason(), Some("low on memory"));
        assert!(alarms.set(Alarm::Disk, true));
        assert_eq!(alarms.raised().reason(), Some("low on memory & disk"));
        assert!(alarms.set(Alarm::Memory, false));
        assert_eq!(alarms.raised().reason(), Some("low on disk"));
        assert_eq!(*watch.borrow(), alarms.raised());
        assert!(alarms.set(Alarm::Disk, false));
        assert!(!alarms.raised().any());
        assert!(!watch.borrow().any());
    }
}
