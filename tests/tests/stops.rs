//! How leaktrace ends from outside: each stop signal brings the final report and exit 0, or
//! during startup one line and 128 + the signal; SIGKILL leaves the cleanup to the kernel, a
//! closed stdout ends it with status 8; and in every case none of the BPF programs, maps or
//! links it loaded outlives it. Under `run`, SIGTERM and SIGHUP reach the command too.
//! Privileged like kernel.rs: SKIPPED without root unless CI=true.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use leaktrace_tests::{
    close_wait_client, close_wait_server, signal_run, signal_startup, BpfObjects, Family, Fixture,
    Leaktrace, FINDING_TIMEOUT, RUN_LIMIT,
};
use serde_json::Value;

const FIXTURE: &str = env!("CARGO_BIN_EXE_leaktrace-fixture");

/// leaktrace's status when its stdout was closed (`--help`, README).
const OUTPUT_CLOSED: i32 = 8;

/// leaktrace's one-second watch, with slack for two busy (or emulated) cores.
const CLOSED_STDOUT_EXIT: Duration = Duration::from_secs(10);

/// Where the BPF filesystem is mounted, by convention.
const BPFFS: &str = "/sys/fs/bpf";

/// A server holding one connection in CLOSE_WAIT, and leaktrace, started on it, reporting it.
fn traced_leak(test: &str) -> Result<Option<(Fixture, Leaktrace, BpfObjects)>> {
    let mut server = close_wait_server(FIXTURE, Family::V4, 1)?;
    let Some(mut leaktrace) = Leaktrace::start(test, &[server.pid()], RUN_LIMIT)? else {
        return Ok(None);
    };
    // Once the start line is out, everything is loaded and attached.
    let held = BpfObjects::held_by(leaktrace.pid())?;
    close_wait_client(FIXTURE, &server, Family::V4, 1)?;
    server.lines("EOF ", 1)?;
    leaktrace.wait_for_leaks(1, FINDING_TIMEOUT)?;
    Ok(Some((server, leaktrace, held)))
}

fn stop_signal_reports_and_releases(test: &str, signal: i32) -> Result<()> {
    let Some((server, leaktrace, held)) = traced_leak(test)? else {
        return Ok(());
    };
    // Exit 0, every line JSON, from the start line to the summary.
    let report = leaktrace.stop_with(signal)?;
    ensure!(report.summary()["leaks_open"] == 1, "{report}");
    let leaks = report.leaks();
    ensure!(
        matches!(&leaks[..], [leak] if leak["pid"] == server.pid() && leak["kind"] == "close_wait"),
        "expected the server's close_wait leak\n{report}"
    );
    held.wait_released()
}

#[test]
fn sigint_reports_and_releases() -> Result<()> {
    stop_signal_reports_and_releases("sigint_reports_and_releases", libc::SIGINT)
}

#[test]
fn sigterm_reports_and_releases() -> Result<()> {
    stop_signal_reports_and_releases("sigterm_reports_and_releases", libc::SIGTERM)
}

#[test]
fn sighup_reports_and_releases() -> Result<()> {
    stop_signal_reports_and_releases("sighup_reports_and_releases", libc::SIGHUP)
}

/// leaktrace pins nothing, so when it is killed with no chance to clean up, closing its fds is
/// enough for the kernel to free everything.
#[test]
fn sigkill_leaves_nothing_loaded() -> Result<()> {
    let Some((_server, leaktrace, held)) = traced_leak("sigkill_leaves_nothing_loaded")? else {
        return Ok(());
    };
    let run = leaktrace.kill()?;
    ensure!(
        run.status.code().is_none(),
        "leaktrace survived SIGKILL?! {}",
        run.status
    );
    held.check_not_pinned(Path::new(BPFFS))?;
    held.wait_released()
}

/// `leaktrace --json | head -1`: once the reader is gone leaktrace stops by itself, within its
/// one-second watch even with nothing to print, with one line on stderr and no panic.
#[test]
fn closed_stdout_ends_the_run() -> Result<()> {
    let Some((_server, mut leaktrace, held)) = traced_leak("closed_stdout_ends_the_run")? else {
        return Ok(());
    };
    leaktrace.close_stdout();
    let run = leaktrace.exited(CLOSED_STDOUT_EXIT)?;
    ensure!(
        run.status.code() == Some(OUTPUT_CLOSED),
        "expected exit {OUTPUT_CLOSED}, got {}; stderr:\n{}",
        run.status,
        run.stderr
    );
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("leaktrace: error: "))
        .collect();
    ensure!(
        errors.len() == 1 && errors[0].contains("broken pipe") && !run.stderr.contains("panic"),
        "expected one error line about the closed output, no panic:\n{}",
        run.stderr
    );
    held.wait_released()
}

/// A stop signal while leaktrace starts (loading BTF, attaching, reading the sockets already
/// open: seconds on a busy host) ends it with one line saying so and the shell's status for that
/// signal, 128 + its number. Nothing was traced: no report, not even a start record.
#[test]
fn stop_signal_during_startup_says_so() -> Result<()> {
    let server = close_wait_server(FIXTURE, Family::V4, 1)?;
    let pid = server.pid().to_string();
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let args = ["--json", "--pid", &pid, "--duration", RUN_LIMIT];
        let Some(run) = signal_startup("stop_signal_during_startup_says_so", &args, signal)? else {
            return Ok(());
        };
        let lines: Vec<&str> = run.stderr.lines().collect();
        ensure!(
            run.status.code() == Some(128 + signal)
                && run.stdout.is_empty()
                && matches!(&lines[..], [line] if is_interrupted_startup(line)),
            "signal {signal}: expected exit {} and one line saying the startup was interrupted, \
             got {}; stdout:\n{}\nstderr:\n{}",
            128 + signal,
            run.status,
            run.stdout.join("\n"),
            run.stderr
        );
    }
    Ok(())
}

/// Under `run`, a stop signal during startup means the command is never started, and the last
/// line, the exit record, says the status is leaktrace's own.
#[test]
fn run_interrupted_while_starting_never_starts_the_command() -> Result<()> {
    let args = ["run", "--json", "--", "sh", "-c", "echo the command ran"];
    let test = "run_interrupted_while_starting_never_starts_the_command";
    let Some(run) = signal_startup(test, &args, libc::SIGTERM)? else {
        return Ok(());
    };
    let lines: Vec<&str> = run.stderr.lines().collect();
    let exit_record = |line: &str| {
        serde_json::from_str::<Value>(line).is_ok_and(|exit| {
            exit["type"] == "exit"
                && exit["status"] == 128 + libc::SIGTERM
                && exit["whose"] == "leaktrace"
        })
    };
    ensure!(
        run.status.code() == Some(128 + libc::SIGTERM)
            && run.stdout.is_empty()
            && matches!(&lines[..], [error, exit] if is_interrupted_startup(error)
                && exit_record(exit)),
        "expected exit {}, the command not run, the error line and the exit record; got {}; \
         stdout:\n{}\nstderr:\n{}",
        128 + libc::SIGTERM,
        run.status,
        run.stdout.join("\n"),
        run.stderr
    );
    Ok(())
}

fn is_interrupted_startup(line: &str) -> bool {
    line.starts_with("leaktrace: error: interrupted by SIG") && line.contains("while starting")
}

/// i64::MAX seconds, as `--duration` or `--interval`: far past what the clock can count from now.
const BEYOND_THE_CLOCK: &str = "9223372036854775807s";

/// A `--duration` or `--interval` too long for the clock is one that never comes: leaktrace
/// traces until stopped, prints no interval line, and reports.
#[test]
fn durations_beyond_the_clock_never_come() -> Result<()> {
    let server = close_wait_server(FIXTURE, Family::V4, 1)?;
    let extra = ["--interval", BEYOND_THE_CLOCK];
    let test = "durations_beyond_the_clock_never_come";
    let Some(mut leaktrace) =
        Leaktrace::start_with(test, &[server.pid()], BEYOND_THE_CLOCK, &extra)?
    else {
        return Ok(());
    };
    leaktrace.settle(Duration::from_secs(2))?;
    let report = leaktrace.stop()?;
    ensure!(
        !report.lines.iter().any(|line| line["type"] == "interval"),
        "no interval line was due\n{report}"
    );
    Ok(())
}

/// Under `run`, SIGTERM and SIGHUP reach leaktrace alone (a CI timeout, a supervisor) and are
/// passed on: the command ends by them, and leaktrace reports and exits with its status.
#[test]
fn run_passes_sigterm_and_sighup_on() -> Result<()> {
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        // A server that waits for a connection forever: only the signal ends it.
        let args = ["--", FIXTURE, "close-wait-server", "--conns", "1"];
        let Some(run) = signal_run("run_passes_sigterm_and_sighup_on", &args, signal)? else {
            return Ok(());
        };
        let lines: Vec<Value> = run
            .stderr
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        // The summary, then the line that says the status is the command's.
        let summary_then_exit = match lines.as_slice() {
            [.., summary, exit] => {
                summary["type"] == "summary"
                    && exit["type"] == "exit"
                    && exit["status"] == 128 + signal
                    && exit["whose"] == "command"
            }
            _ => false,
        };
        ensure!(
            run.status.code() == Some(128 + signal) && summary_then_exit,
            "signal {signal}: expected the report and exit {}, got {}; stderr:\n{}",
            128 + signal,
            run.status,
            run.stderr
        );
    }
    Ok(())
}
