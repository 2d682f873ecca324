//! The disk alarm: free space on the data dir's filesystem against the free-disk limit, looked at
//! by one task that runs beside the broker until shutdown.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::Broker;
use crate::queue::alarms::{Alarm, Alarms};
pub use crate::store::space::{Space, space};

/// The shortest wait between two looks, when free space is close to the limit.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest wait between two looks: far from the limit, unknown, or already alarmed.
const MAX_INTERVAL: Duration = Duration::from_secs(1);
/// The fastest a disk is assumed to fill, in bytes per millisecond (RabbitMQ's 250 MB/s).
const FAST_RATE: u64 = 250_000;

/// Turns each look at the filesystem into the disk alarm's state.
#[derive(Debug)]
pub struct DiskMonitor {
    alarms: Arc<Alarms>,
    /// A warning was given that free space is unknown; given again only after it was known.
    warned: bool,
}

impl DiskMonitor {
    /// A monitor that raises and clears the disk alarm in `alarms`.
    pub fn new(alarms: Arc<Alarms>) -> Self {
        Self {
            alarms,
            warned: false,
        }
    }

    /// Takes one look's result: raises the disk alarm while free space is under the limit and
    /// clears it otherwise (unknown space raises none); returns how long to wait for the next.
    pub fn observe(&mut self, look: io::Result<Space>) -> Duration {
        let limit = self.alarms.disk_free_limit();
        let space = match look {
            Ok(space) if space.total > 0 => space,
            unknown => {
                if !self.warned {
                    self.warned = true;
                    match unknown {
                        Err(e) => {
                            warn!(cause = %e, limit, "cannot read free disk space: no disk alarm")
                        }
                        Ok(_) => warn!(
                            limit,
                            "the filesystem reports no size: free disk space unknown, no disk alarm"
                        ),
                    }
                }
                if self.alarms.set(Alarm::Disk, false) {
                    info!(limit, "disk alarm cleared: free space unknown");
                }
                return MAX_INTERVAL;
            }
        };
        self.warned = false;
        self.alarms.set_disk_free(space.free);
        let low = space.free < limit;
        if self.alarms.set(Alarm::Disk, low) {
            if low {
                warn!(
                    free = space.free,
                    limit, "disk alarm set: blocking publishers"
                );
            } else {
                info!(free = space.free, limit, "disk alarm cleared");
            }
        }
        if low {
            return MAX_INTERVAL;
        }
        // As RabbitMQ: look again before a disk filling at full speed could cross the limit.
        let ideal = Duration::from_millis(2 * (space.free - limit) / FAST_RATE);
        ideal.clamp(MIN_INTERVAL, MAX_INTERVAL)
    }
}

/// Looks at the data dir's filesystem until `stop` turns true (or its sender goes).
pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let dir = Arc::new(broker.config.data_dir.clone());
    let mut monitor = DiskMonitor::new(Arc::clone(&broker.alarms));
    loop {
        let path = Arc::clone(&dir);
        // statvfs can hang on a stuck network filesystem: never on a runtime worker.
        let look = tokio::task::spawn_blocking(move || space(&path))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        let wait = monitor.observe(look);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(free: u64, total: u64) -> io::Result<Space> {
        Ok(Space { free, total })
    }

    #[test]
    fn the_alarm_follows_free_space_and_clears_with_room() {
        let alarms = Arc::new(Alarms::new(1000));
        let mut monitor = DiskMonitor::new(Arc::clone(&alarms));
        monitor.observe(look(5000, 10_000));
        assert!(!alarms.raised().any());
        monitor.observe(look(999, 10_000));
        assert_eq!(alarms.raised().reason(), Some("low on disk"));
        monitor.observe(look(1000, 10_000));
        assert!(!alarms.raised().any());
        alarms.set_disk_free_limit(2000);
        monitor.observe(look(1000, 10_000));
        assert!(alarms.raised().has(Alarm::Disk));
    }

    #[test]
    fn zero_total_blocks_mean_unknown_space_and_no_alarm() {
        let alarms = Arc::new(Alarms::new(1000));
        let mut monitor = DiskMonitor::new(Arc::clone(&alarms));
        monitor.observe(look(0, 0));
        assert!(!alarms.raised().any() && monitor.warned);
        monitor.observe(look(10, 10_000));
        assert!(alarms.raised().has(Alarm::Disk) && !monitor.warned);
        // Space that becomes unknown clears an alarm raised while it was known.
        monitor.observe(look(0, 0));
        assert!(!alarms.raised().any());
        monitor.observe(Err(io::Error::other("gone")));
        assert!(!alarms.raised().any());
    }

    #[test]
    fn looks_come_sooner_near_the_limit() {
        let alarms = Arc::new(Alarms::new(1000));
        let mut monitor = DiskMonitor::new(alarms);
        assert_eq!(monitor.observe(look(1001, 10_000)), MIN_INTERVAL);
        assert_eq!(monitor.observe(look(u64::MAX / 4, u64::MAX)), MAX_INTERVAL);
    }

    #[test]
    fn a_real_directory_reports_its_filesystem() {
        let dir = tempfile::tempdir().expect("temp dir");
        let s = space(dir.path()).expect("statvfs");
        assert!(s.free <= s.total || s.total == 0);
    }
}
