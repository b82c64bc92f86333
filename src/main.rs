//! The `bb2tc` binary; the command line lives in `bb2tc::cli`.

fn main() -> std::process::ExitCode {
    bb2tc::cli::main()
}
