//! Where leaktrace writes, failing. A stdout closed from the start or that cannot take the
//! report is an output failure, status 8, with one line on stderr. A stderr it cannot write to
//! (full, or a pipe whose reader is gone) loses leaktrace's warnings, never the session; under
//! `run`, where the report is on stderr, it loses the report, and the command still runs and
//! gives its status. Privileged like kernel.rs where leaktrace traces: SKIPPED without root
//! unless CI=true.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use leaktrace_tests::{
    close_wait_clients, close_wait_server, is_root, leaktrace_bin, skip, Family, Fixture,
};
use serde_json::Value;

const FIXTURE: &str = env!("CARGO_BIN_EXE_leaktrace-fixture");

/// leaktrace's status when an output failed (`--help`, README).
const OUTPUT_FAILED: i32 = 8;

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

/// A pipe nobody reads any more, as stderr is under `2>&1 | head -1` once head has its line.
fn reader_gone() -> Result<Stdio> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    Ok(writer.into())
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

/// The one line of an output failure: status 8, `leaktrace: error: ` and what failed.
fn ensure_output_failure(run: &Output, what: &str) -> Result<()> {
    let stderr = text(&run.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    ensure!(
        run.status.code() == Some(OUTPUT_FAILED)
            && matches!(&lines[..], [line] if line.starts_with("leaktrace: error: ")
                && line.contains(what)),
        "expected exit {OUTPUT_FAILED} and one line about {what:?}, got {}; stderr:\n{stderr}",
        run.status
    );
    Ok(())
}

/// `leaktrace >&-`: nowhere to write the report, so nothing to trace for. Before the kernel is
/// touched, so this runs without root too.
#[test]
fn closed_stdout_is_refused_before_tracing() -> Result<()> {
    let mut command = leaktrace(&["--duration", "1s"])?;
    // SAFETY: between fork and exec the closure only calls close, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::close(libc::STDOUT_FILENO);
            Ok(())
        });
    }
    ensure_output_failure(&finish(&mut command)?, "stdout is closed")
}

/// `leaktrace >/dev/full`, as on a full disk: the report cannot be written, an output failure.
#[test]
fn full_stdout_is_an_output_failure() -> Result<()> {
    const TEST: &str = "full_stdout_is_an_output_failure";
    if !is_root() {
        skip(TEST, "leaktrace needs root");
        return Ok(());
    }
    let server = close_wait_server(FIXTURE, Family::V4, 1)?;
    let pid = server.pid().to_string();
    let args = ["--pid", &pid, "--duration", "1s"];
    let run = finish(leaktrace(&args)?.stdout(dev_full()?))?;
    ensure_output_failure(&run, "writing the report: No space left on device")
}

/// `leaktrace run -- CMD 2>/dev/full`, or with stderr's reader gone: the report (on stderr
/// under run) is lost, but the command runs, is traced to its end, and its status is
/// leaktrace's.
#[test]
fn run_runs_the_command_whatever_stderr() -> Result<()> {
    const TEST: &str = "run_runs_the_command_whatever_stderr";
    if !is_root() {
        skip(TEST, "leaktrace needs root");
        return Ok(());
    }
    for (stderr, how) in [(dev_full()?, "full"), (reader_gone()?, "without reader")] {
        let args = ["run", "--", "sh", "-c", "echo the command ran; exit 3"];
        let run = finish(leaktrace(&args)?.stderr(stderr))?;
        let stdout = text(&run.stdout);
        ensure!(
            run.status.code() == Some(3) && stdout == "the command ran\n",
            "stderr {how}: expected the command to run and its status 3, got {}; stdout:\n{stdout}",
            run.status
        );
    }
    Ok(())
}

/// `leaktrace --json | less`, left alone: the pipe fills and stays full. The session must go on
/// regardless (its metrics answer), each stop signal must still end it, promptly, and the report
/// it could not deliver is an output failure, not a hang.
#[test]
fn a_reader_that_stops_reading_holds_nothing_up() -> Result<()> {
    const TEST: &str = "a_reader_that_stops_reading_holds_nothing_up";
    if !is_root() {
        skip(TEST, "leaktrace needs root");
        return Ok(());
    }
    for (signal, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        stops_while_stdout_is_full(signal).with_context(|| format!("stopped by {name}"))?;
    }
    Ok(())
}

/// One session of [`a_reader_that_stops_reading_holds_nothing_up`], ended by `signal`.
fn stops_while_stdout_is_full(signal: libc::c_int) -> Result<()> {
    // Each finding is a JSON line of a kilobyte or more: together far more than a pipe holds.
    const CONNS: usize = 200;
    let server = close_wait_server(FIXTURE, Family::V4, CONNS)?;
    let pid = server.pid().to_string();
    let mut command = leaktrace(&[
        "--json",
        "--leak-after",
        "200ms",
        "--metrics",
        "0",
        "--pid",
        &pid,
    ])?;
    let mut child = command.spawn().context("cannot start leaktrace")?;
    let _kill = KillOnDrop(libc::pid_t::try_from(child.id())?);
    // The start line, then nothing more is read: the reader has stopped.
    let mut stdout = std::io::BufReader::new(child.stdout.take().context("no stdout")?);
    let mut start = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut start)?;
    let start: Value = serde_json::from_str(&start).with_context(|| format!("{start:?}"))?;
    let metrics = start["metrics"]
        .as_str()
        .with_context(|| format!("no metrics address in {start}"))?
        .to_owned();
    close_wait_clients(FIXTURE, &server, Family::V4, CONNS, 20)?;
    // The findings matured and filled the pipe meanwhile.
    std::thread::sleep(Duration::from_secs(2));
    let scrape = scrape(&metrics).context("/metrics did not answer while stdout was full")?;
    ensure!(
        scrape.contains("leaktrace_"),
        "not leaktrace's metrics: {scrape}"
    );
    let status = stop(&mut child, signal)
        .context("the signal did not end leaktrace while its reader was not reading")?;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("no stderr")?, &mut stderr)?;
    ensure!(
        status.code() == Some(OUTPUT_FAILED) && stderr.contains("stopped reading"),
        "expected status {OUTPUT_FAILED} and why, got {status}; stderr:\n{stderr}"
    );
    Ok(())
}

/// `leaktrace run -- cmd 2>&1 | less`, left alone once the command's output filled the pipe:
/// stderr is a full pipe nobody reads. leaktrace's warning at start (`--pid` of a prefork
/// master) waits for a reader; the session starts, and a stop signal ends it with its report.
#[test]
fn a_full_stderr_holds_nothing_up() -> Result<()> {
    const TEST: &str = "a_full_stderr_holds_nothing_up";
    if !is_root() {
        skip(TEST, "leaktrace needs root");
        return Ok(());
    }
    let mut server = Fixture::server(FIXTURE, &["prefork-server"])?;
    // Its workers share its listener, which leaktrace warns of at start.
    server.lines("WORKER pid=", 2)?;
    let (unread, full) = full_pipe()?;
    let pid = server.pid().to_string();
    let mut child = leaktrace(&["--json", "--pid", &pid])?
        .stderr(full)
        .spawn()
        .context("cannot start leaktrace")?;
    let _kill = KillOnDrop(libc::pid_t::try_from(child.id())?);
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let start = lines
        .recv_timeout(RUN_TIMEOUT)
        .context("no start line: leaktrace blocked on its full stderr")?;
    ensure!(
        start.contains(r#""type":"start""#),
        "not a start line: {start}"
    );
    let status = stop(&mut child, libc::SIGTERM)
        .context("SIGTERM did not end leaktrace while its stderr was full")?;
    let rest: Vec<String> = lines.iter().collect();
    ensure!(
        status.success() && rest.iter().any(|l| l.contains(r#""type":"summary""#)),
        "expected status 0 and the final report, got {status}; stdout:\n{}",
        rest.join("\n")
    );
    drop(unread);
    Ok(())
}

/// A pipe filled to the brim, with its reading end (kept open, never read) and its writing end.
fn full_pipe() -> Result<(std::io::PipeReader, Stdio)> {
    use std::io::Write as _;
    use std::os::fd::AsRawFd as _;
    let (reader, mut writer) = std::io::pipe()?;
    let fd = writer.as_raw_fd();
    // SAFETY: fcntl on an fd this function owns; only its status flags change.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    ensure!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } == 0);
    // Small writes are all or nothing: bytes one at a time fill the last of it.
    for chunk in [&[b'x'; 4096][..], b"x"] {
        loop {
            match writer.write(chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    // Blocking again, as a shell's pipe is: a write waits for a reader.
    // SAFETY: as above.
    ensure!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } == 0);
    Ok((reader, writer.into()))
}

/// Sends `child` `signal` and waits, at most 15 s, for it to end.
fn stop(child: &mut std::process::Child, signal: libc::c_int) -> Result<ExitStatus> {
    // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet.
    unsafe { libc::kill(libc::pid_t::try_from(child.id())?, signal) };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "still running after 15s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One GET of http://ADDR/metrics, which must answer within a few seconds.
fn scrape(addr: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: leaktrace\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Kills leaktrace if the test ends before it does.
struct KillOnDrop(libc::pid_t);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}
