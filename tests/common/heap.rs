//! A counting global allocator: every live heap byte of a test process (broker, store, client),
//! so a test bounds memory itself rather than a counter the broker keeps. A test crate installs it
//! with `#[global_allocator] static HEAP: Counting = Counting;` and should hold one test, so that
//! nothing else runs in the process while it measures.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The allocator.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                + (new_size - layout.size());
            PEAK.fetch_max(live, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Live heap bytes now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Live heap growth since `base`, and the peak growth, in bytes.
pub fn growth(base: usize) -> (usize, usize) {
    (
        live().saturating_sub(base),
        PEAK.load(Ordering::Relaxed).saturating_sub(base),
    )
}

/// Starts a new peak from the live heap, and returns it as the base to measure growth from.
pub fn reset_peak() -> usize {
    let live = live();
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// Asserts that the live heap grew by less than `bound` bytes since `base`, and says by how much;
/// returns the growth, live and at peak.
pub fn assert_grew_under(what: &str, base: usize, bound: usize) -> (usize, usize) {
    const MIB: f64 = (1 << 20) as f64;
    let (live, peak) = growth(base);
    eprintln!(
        "{what}: heap grew {:.1} MiB ({:.1} MiB at peak), bound {:.1} MiB",
        live as f64 / MIB,
        peak as f64 / MIB,
        bound as f64 / MIB
    );
    assert!(
        live < bound,
        "{what}: heap grew {live} bytes, bound {bound}"
    );
    (live, peak)
}
