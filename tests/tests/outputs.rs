//! Where leaktrace writes, failing. A stderr it cannot write to (full, or a pipe whose reader is
//! gone) loses leaktrace's warnings, never the session. Privileged like kernel.rs: SKIPPED
//! without root unless CI=true.

use std::fs::File;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use leaktrace_tests::{close_wait_server, is_root, leaktrace_bin, skip, Family};
use serde_json::Value;

const FIXTURE: &str = env!("CARGO_BIN_EXE_leaktrace-fixture");

/// Startup (a few seconds on two busy cores) and a one-second session, with slack.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// `leaktrace ARGS`, stdin from /dev/null, stdout and stderr captured unless the test says
/// otherwise.
fn leaktrace(args: &[&str]) -> Result<Command> {
    let mut command = Command::new(leaktrace_bin()?);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(command)
}

/// Runs `command` to its end, or kills it after [`RUN_TIMEOUT`].
fn finish(command: &mut Command) -> Result<Output> {
    let child = command.spawn().context("cannot start leaktrace")?;
    let pid = libc::pid_t::try_from(child.id())?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(output) => Ok(output?),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; the child is not reaped before
            // wait_with_output returns, which it has not.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            bail!("leaktrace still running after {RUN_TIMEOUT:?}")
        }
    }
}

/// `2>/dev/full`: every write fails with ENOSPC, as on a full disk.
fn dev_full() -> Result<Stdio> {
    Ok(File::options().write(true).open("/dev/full")?.into())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `leaktrace --verbose 2>/dev/full`: the lines about hooks not used cannot be written, and the
/// session goes on to its report on stdout.
#[test]
fn unwritable_stderr_loses_only_the_warnings() -> Result<()> {
    const TEST: &str = "unwritable_stderr_loses_only_the_warnings";
    if !is_root() {
        skip(TEST, "leaktrace needs root");
        return Ok(());
    }
    let server = close_wait_server(FIXTURE, Family::V4, 1)?;
    let pid = server.pid().to_string();
    let args = ["--json", "--verbose", "--pid", &pid, "--duration", "1s"];
    let run = finish(leaktrace(&args)?.stderr(dev_full()?))?;
    let stdout = text(&run.stdout);
    let types: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["type"].clone())
        .collect();
    ensure!(
        run.status.code() == Some(0)
            && types.first() == Some(&"start".into())
            && types.last() == Some(&"summary".into()),
        "expected exit 0 and the whole report on stdout, got {}; stdout:\n{stdout}",
        run.status
    );
    Ok(())
}
