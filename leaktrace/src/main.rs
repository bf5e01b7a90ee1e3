//! The `leaktrace` command: parses the command line and runs the mode it names (see the
//! library, `leaktrace`, for everything else).
use std::{process::ExitCode, time::Duration};

use clap::Parser as _;

use leaktrace::{
    cli::{self, Cli, Command},
    demo, error, run, stderr, stop, trace,
};

/// How long leaktrace's last lines on stderr may wait for a reader that does not read before
/// leaktrace exits without them.
const STDERR_DRAIN_LIMIT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    // First of all: from here on a stop signal cannot end leaktrace without a word.
    stop::hold();
    let status = run_command_line();
    stderr::flush(STDERR_DRAIN_LIMIT);
    status
}

fn run_command_line() -> ExitCode {
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
        Some(Command::Demo(args)) => runtime.block_on(demo::run(args.common.into())),
        Some(Command::Run(args)) => {
            run_json = Some(args.common.json);
            runtime.block_on(run::run(args.into()))
        }
        None => runtime.block_on(trace::run(cli.trace.into())),
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
