//! The `bb2tc` binary; the command line lives in `bb2tc::cli`.

// glibc's allocator spent ~10 % of bb2tc's CPU under ingest load (malloc_consolidate, chunk
// unlinking across the intake threads); see BENCHMARKS.md, "Ingest through the intake log".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bb2tc::cli::main()
}
