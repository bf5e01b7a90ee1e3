//! leaktrace: finds the TCP sockets a process leaks.
//!
//! Data path, one module per stage: `hooks` (load and attach the eBPF programs) -> ring buffer
//! records -> `decoder` -> `timeline` (per-socket store) -> `detect` (one detector per leak
//! class) -> `report` (text, JSON Lines). `session` drives it; `demo` feeds it leaky servers.
mod cli;
mod decoder;
mod demo;
mod detect;
mod error;
mod hooks;
mod report;
mod session;
mod timeline;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    cli::{Cli, Command},
    session::SessionOptions,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("leaktrace: error: starting the async runtime: {e}");
            return ExitCode::from(error::exit_code::RUNTIME);
        }
    };
    let result = match cli.command {
        Some(Command::Demo(args)) => runtime.block_on(demo::run(args)),
        None => {
            let options = SessionOptions {
                pids: cli.trace.pids,
                json: cli.trace.common.json,
                hooks: cli.trace.common.hooks,
                ring_size: cli.trace.common.ring_size,
                leak_after: cli.trace.leak_after,
                duration: cli.trace.duration,
            };
            runtime.block_on(session::run(options, || {}))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("leaktrace: error: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}
