//! What the fuzz targets and the seed generator share: amq-protocol's encoders into plain
//! bytes, a broker made fresh for each input, and an allocator that refuses huge allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, gen_class};
use amq_protocol::types::{AMQPValue, FieldTable, generation::gen_field_table};
use warren::Config;
use warren::broker::Broker;

/// A method frame's payload (class id, method id, arguments) as amq-protocol writes it.
pub fn method_bytes(class: &AMQPClass) -> Vec<u8> {
    cookie_factory::r#gen(gen_class(class), Vec::new())
        .map(|(out, _)| out)
        .expect("writing into a Vec cannot run out of room")
}

/// A field table, length prefix first, as amq-protocol writes it.
pub fn table_bytes(table: &FieldTable) -> Vec<u8> {
    cookie_factory::r#gen(gen_field_table(table), Vec::new())
        .map(|(out, _)| out)
        .expect("writing into a Vec cannot run out of room")
}

/// How many tables and arrays deep `value` nests, itself included.
pub fn depth(value: &AMQPValue) -> usize {
    match value {
        AMQPValue::FieldTable(t) => table_depth(t),
        AMQPValue::FieldArray(a) => 1 + a.as_slice().iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// How many tables and arrays deep `table` nests, itself included.
pub fn table_depth(table: &FieldTable) -> usize {
    1 + table.inner().values().map(depth).max().unwrap_or(0)
}

/// Runs `f` with a broker kept in memory, made for this input alone on a runtime of its own, so
/// that nothing one input declares (or spawns) is left for the next.
pub fn with_broker<T>(config: Config, f: impl AsyncFnOnce(&Arc<Broker>) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime builds");
    runtime.block_on(async {
        let broker = Broker::new(config);
        f(&broker).await
    })
}

/// A file of this process's own for text that an entry point reads from disk.
pub fn scratch_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("warren-fuzz-{}-{name}", std::process::id()))
}

/// The largest single allocation an input may cause. Inputs are a few KiB: anything near this
/// size is a length taken from the input and trusted.
pub const MALLOC_LIMIT: usize = 256 << 20;

/// The system allocator, aborting (a crash to libFuzzer, which keeps the input) on any one
/// allocation over [`MALLOC_LIMIT`]. libFuzzer's own `-malloc_limit_mb` needs a sanitizer's
/// allocator hooks, and the targets are built without one.
pub struct Limited;

// SAFETY: every call is passed to the system allocator unchanged, or aborts before reaching it.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: as for `dealloc`, and the caller's contract for `realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Aborts on an allocation over the limit; an allocator must not unwind, so no panic.
fn check(size: usize) {
    if size > MALLOC_LIMIT {
        // Formatting an integer into stderr does not allocate.
        eprintln!("==warren-fuzz== allocation of {size} bytes exceeds the limit of {MALLOC_LIMIT}");
        std::process::abort();
    }
}

#[global_allocator]
static ALLOCATOR: Limited = Limited;
