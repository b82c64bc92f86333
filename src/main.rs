//! The `bb2tc` binary; the command line lives in `bb2tc::cli`.

fn main() -> std::process::ExitCode {
    bb2tc::cli::main()
}

/// jemalloc, not glibc's allocator: sled copies a node on every insert, and with glibc's
/// free lists, allocation was over a third of the intake applier's samples
/// (BENCHMARKS.md, "jemalloc"). mimalloc was as fast but held over twice the memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Memory freed is handed back to the system within a second by jemalloc's own thread,
/// so resident memory follows the queue down after a backlog drains (SPEC §11). The
/// `_RJEM_MALLOC_CONF` environment variable still overrides it.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
