//! leaktrace: finds the TCP sockets a process leaks.
//!
//! Data path, one module per stage: `hooks` (load and attach the eBPF programs) -> ring buffer
//! records -> `decoder` -> `timeline` (per-socket store) -> `detect` (one detector per leak
//! class) -> `output` (text, JSON Lines, metrics, trace file). `session` drives it; `demo` feeds it leaky servers;
//! `run` traces a command it starts.
mod cgroup;
mod cli;
mod decoder;
mod demo;
mod detect;
mod enrich;
mod error;
mod finding;
mod format;
mod hooks;
mod host;
mod output;
mod placement;
mod run;
mod session;
mod settings;
mod stderr;
mod stop;
mod summary;
mod tick;
mod timeline;
mod tree;

use std::process::ExitCode;

use clap::Parser as _;

use crate::{
    cli::{Cli, Command},
    error::Failure,
    session::{Scope, Session, SessionOptions},
};

fn main() -> ExitCode {
    // First of all: from here on a stop signal cannot end leaktrace without a word.
    stop::hold();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            stderr::line(cli::usage_error(&e, std::env::args_os().nth(1).as_deref()));
            return ExitCode::from(error::exit_code::USAGE);
        }
        // --help and --version, which clap hands over as errors.
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            stderr::line(format_args!(
                "leaktrace: error: starting the async runtime: {e}"
            ));
            return ExitCode::from(error::exit_code::RUNTIME);
        }
    };
    // Under run, leaktrace's own failures are told apart from the command's statuses.
    let mut run_json = None;
    let result = match cli.command {
        Some(Command::Demo(args)) => runtime.block_on(demo::run(args.common.into())).map(|()| 0),
        Some(Command::Run(args)) => {
            run_json = Some(args.common.json);
            runtime.block_on(run::run(args.into()))
        }
        None => runtime.block_on(trace(cli.trace.into())).map(|()| 0),
    };
    match result {
        Ok(status) => ExitCode::from(status),
        Err(failure) => {
            stderr::line(format_args!("leaktrace: error: {failure}"));
            if let Some(json) = run_json {
                run::say_whose(json, failure.exit_code(), "leaktrace", "the error above");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn trace(args: settings::Trace) -> Result<(), Failure> {
    let scope = if let Some(path) = &args.cgroup {
        Scope::Cgroup(cgroup::resolve(path).map_err(Failure::NoSuchService)?)
    } else if let Some(name) = &args.unit {
        Scope::Cgroup(cgroup::unit(name).map_err(Failure::NoSuchService)?)
    } else if args.pids.is_empty() {
        Scope::All
    } else {
        Scope::Pids(args.pids)
    };
    let options = SessionOptions {
        follow_children: args.follow_children,
        duration: args.duration,
        ..SessionOptions::new(scope, args.common, args.leaks)
    };
    let mut session = Session::start(&options)?;
    session.run_until(std::future::pending()).await?;
    session.finish()?;
    Ok(())
}
