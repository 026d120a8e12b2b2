//! The `smartcar-sim` binary: the Smartcar v3 simulator on its own (`--help` lists fleet size,
//! faults, limits and shape variants).

use std::process::ExitCode;

use clap::Parser;

/// A faithful fake of the Smartcar v3 API, for tests, demos and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "smartcar-sim", version)]
struct Cli {
    #[command(flatten)]
    args: smartcar_sim::SimArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(smartcar_sim::run_cli(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
