//! The `smartcar-sync` binary: parse the command line, run it on a tokio runtime.

use std::process::ExitCode;

use clap::Parser;

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
