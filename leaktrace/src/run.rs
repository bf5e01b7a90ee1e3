//! `leaktrace run -- CMD`: starts CMD, traces it and every process it starts from their first
//! instruction, and exits with CMD's status (or 10 with --fail-on-leak when a leak was
//! reported): a test suite wrapped in it fails on leaked sockets. Its last line on stderr
//! always says whose status it exits with, as the command's codes and leaktrace's overlap.
use std::{
    io::{self, Write as _},
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
    let json = args.common.json;
    let options = SessionOptions {
        follow_children: true,
        report_to_stderr: true,
        ..SessionOptions::new(Scope::Added, args.common, args.leaks)
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
            let (status, why) = match e.kind() {
                io::ErrorKind::NotFound => (NOT_FOUND, "the command was not found"),
                _ => (CANNOT_EXECUTE, "the command could not be executed"),
            };
            say_whose(json, status, "command", why);
            return Ok(status);
        }
    };
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("the command exited before it started"))?;
    session.trace(pid)?;

    let mut status = None;
    {
        let exited = async { status = Some(child.wait().await) };
        tokio::pin!(exited);
        // Tracing goes on until the command is gone, whatever stops leaktrace: what the command
        // does while it shuts down belongs in the report.
        loop {
            match session.run_until(exited.as_mut()).await? {
                Ended::Caller => break,
                // Ctrl-C reaches the command from the terminal already (one process group):
                // passing it on would deliver it twice, and a second Ctrl-C often means "now".
                Ended::Signal(signal) if signal != libc::SIGINT => pass_on(pid, signal)?,
                Ended::Signal(_) | Ended::NothingLeft | Ended::Duration => {}
            }
        }
    }
    let status = status
        .ok_or_else(|| anyhow!("the command's status is unknown"))?
        .context("waiting for the command")?;
    let report = session.finish()?;
    let leaks_reported = !report.open.is_empty() || report.leaks_resolved > 0;
    let command = exit_status(status);
    let how = match status.signal() {
        Some(signal) => format!("was killed by signal {signal}"),
        None => format!("exited with {command}"),
    };
    Ok(if args.fail_on_leak && leaks_reported {
        say_whose(
            json,
            LEAKS_FOUND,
            "leaktrace",
            &format!("leaks were reported (--fail-on-leak); the command {how}"),
        );
        LEAKS_FOUND
    } else {
        say_whose(json, command, "command", &format!("the command {how}"));
        command
    })
}

/// The last line of a run: the status leaktrace exits with, and whose it is (`whose`: "command"
/// or "leaktrace"), as a JSON record with `--json`.
pub fn say_whose(json: bool, status: u8, whose: &str, why: &str) {
    let line = if json {
        serde_json::json!({"type": "exit", "status": status, "whose": whose, "why": why})
            .to_string()
    } else {
        let whose = if whose == "command" {
            "the command's"
        } else {
            "leaktrace's own"
        };
        format!("leaktrace: exit status {status} is {whose}: {why}")
    };
    // Not eprintln!, which panics when stderr is closed.
    let _ = writeln!(io::stderr(), "{line}");
}

/// SIGTERM and SIGHUP are usually sent to leaktrace alone (a supervisor, `timeout`, a closed
/// ssh session): the command must stop too, or leaktrace would wait for it forever.
fn pass_on(pid: u32, signal: libc::c_int) -> Result<(), Failure> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions. The command is not reaped until its wait
    // completes, which ends the loop, so the pid is still the command's.
    if unsafe { libc::kill(pid, signal) } != 0 {
        let e = io::Error::last_os_error();
        // ESRCH: the command exited meanwhile, which is what the signal asked for.
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(anyhow!("passing signal {signal} on to the command: {e}").into());
        }
    }
    Ok(())
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
fn exit_status(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        (None, None) => 1,
    }
}
