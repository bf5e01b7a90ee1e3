//! `leaktrace run -- CMD`: starts CMD, traces it and every process it starts from their first
//! instruction, and exits with CMD's status (or 10 with --fail-on-leak when a leak was
//! reported): a test suite wrapped in it fails on leaked sockets.
use std::{
    io,
    os::unix::process::ExitStatusExt as _,
    process::{ExitStatus, Stdio},
};

use anyhow::{anyhow, Context as _};
use tokio::process::Command;

use crate::{
    cli::RunArgs,
    error::Failure,
    session::{Ended, Scope, Session, SessionOptions},
};

/// `--fail-on-leak` and a leak was reported.
pub const LEAKS_FOUND: u8 = 10;
/// As shells report a command that cannot be executed / does not exist.
const CANNOT_EXECUTE: u8 = 126;
const NOT_FOUND: u8 = 127;

pub async fn run(args: RunArgs) -> Result<u8, Failure> {
    let options = SessionOptions {
        scope: Scope::Added,
        follow_children: true,
        json: args.common.json,
        report_to_stderr: true,
        hooks: args.common.hooks,
        ring_size: args.common.ring_size,
        metrics: args.common.metrics,
        trace_out: args.common.trace_out,
        leak_after: args.leaks.leak_after,
        duration: None,
    };
    let mut session = Session::start(&options)?;
    // While leaktrace itself is traced, the kernel adds the process it starts to the traced
    // ones at fork, before the command's first instruction.
    session.trace(std::process::id())?;
    let spawned = Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn();
    session.untrace(std::process::id())?;
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            eprintln!("leaktrace: error: cannot run {}: {e}", args.command[0]);
            return Ok(match e.kind() {
                io::ErrorKind::NotFound => NOT_FOUND,
                _ => CANNOT_EXECUTE,
            });
        }
    };
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("the command exited before it started"))?;
    session.trace(pid)?;

    let mut status = None;
    let ended = session
        .run_until(async { status = Some(child.wait().await) })
        .await?;
    if ended != Ended::Caller {
        // Interrupted (the command got the same Ctrl-C from the terminal): report once it is gone.
        status = Some(child.wait().await);
    }
    let status = status
        .ok_or_else(|| anyhow!("the command's status is unknown"))?
        .context("waiting for the command")?;
    let report = session.finish()?;
    let leaks_reported = !report.open.is_empty() || report.leaks_resolved > 0;
    Ok(if args.fail_on_leak && leaks_reported {
        LEAKS_FOUND
    } else {
        exit_status(status)
    })
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
fn exit_status(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        (None, None) => 1,
    }
}
