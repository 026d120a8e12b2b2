//! The `smartcar-sync` binary: parse the command line, run it on a tokio runtime.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc returns freed memory to the system: after a burst of connections (a flood of slow
/// clients) the daemon's memory comes back, where glibc's per-thread arenas keep it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = smartcar_sync::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(smartcar_sync::cli::run(cli))
}
