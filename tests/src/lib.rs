//! Harness for leaktrace's integration tests.
//!
//! The tests drive the real `leaktrace` binary and the `leaktrace-fixture` socket programs as
//! separate processes, the way a user would. Every process started here is killed when its
//! handle drops, so a failing test leaves no server or tracer (and so no eBPF program) behind.
//!
//! `cargo xtask vm-test` runs these binaries on other kernels and steers them with
//! `LEAKTRACE_BIN`, `LEAKTRACE_HOOKS` (`--hooks` for every leaktrace started) and
//! `LEAKTRACE_EXPECT_HOOKS` (the hook family every traced run must have attached).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

pub mod netns;
pub mod nginx;

/// `--leak-after` of every traced run, in milliseconds.
pub const LEAK_AFTER_MS: u64 = 500;

/// TCP state codes, as in /proc/net/tcp and `tcp_info.tcpi_state`.
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_CLOSE: u8 = 0x07;
pub const TCP_CLOSE_WAIT: u8 = 0x08;

/// Loading the eBPF programs parses the kernel's BTF; a debug build on a busy 2-core machine
/// (tests run in parallel) needs a few seconds.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const FIXTURE_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Exit codes by which leaktrace says this machine cannot trace (not root, no BTF, no tracefs,
/// a hook refused): the environment's limit, not a bug, unless privileged runs are required.
const CANNOT_TRACE_HERE: [i32; 4] = [3, 5, 6, 7];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// In CI, or when asked, a privileged test that cannot run is a failure rather than a skip:
/// otherwise a broken setup would pass by testing nothing.
fn privileged_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("LEAKTRACE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// Says why a privileged test cannot run here, or fails it where it must run (CI).
pub fn skip(test: &str, reason: &str) {
    if privileged_required() {
        panic!("{test} must run here (CI=true or LEAKTRACE_REQUIRE_PRIVILEGED=1): {reason}");
    }
    // Straight to the stderr handle: libtest captures eprintln! of passing tests, and a skip
    // that nobody sees looks like a pass. One write, so parallel tests don't interleave lines.
    let _ = io::stderr().write_all(format!("SKIPPED {test}: {reason}\n").as_bytes());
}

/// The events whose hook tells the family apart: state changes and the rest are tracepoints in
/// every family (BTF or classic), which connection was accepted by which process is not.
pub const FAMILY_EVENTS: [&str; 1] = ["accept"];

/// The hook family (`fentry`, `kprobe` or `tracepoint`, as `--hooks` names them) serving the
/// family-specific events of a leaktrace `start` record; an error if they are served by a mix.
pub fn hook_family(start: &Value) -> Result<&'static str> {
    let mut hooks = Vec::new();
    let mut families = Vec::new();
    for event in FAMILY_EVENTS {
        let hook = start["hooks"][event]
            .as_str()
            .with_context(|| format!("the start record names no {event} hook: {start}"))?;
        families.push(match hook.split_once(':').map(|(kind, _)| kind) {
            Some("fentry" | "fexit") => "fentry",
            Some("kprobe" | "kretprobe") => "kprobe",
            // What a tracepoint (the first read) or the listener says.
            _ => "tracepoint",
        });
        hooks.push(format!("{event}={hook}"));
    }
    ensure!(
        families.iter().all(|f| *f == families[0]),
        "hooks of different families: {}",
        hooks.join(", ")
    );
    Ok(families[0])
}

/// `$LEAKTRACE_BIN`, else the `leaktrace` built in the same target profile as this test.
pub fn leaktrace_bin() -> Result<PathBuf> {
    let bin = match std::env::var_os("LEAKTRACE_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let exe = std::env::current_exe()?;
            // Test executables live in target/<profile>/deps/.
            let profile_dir = exe.parent().and_then(Path::parent);
            profile_dir
                .with_context(|| format!("no target dir above {}", exe.display()))?
                .join("leaktrace")
        }
    };
    ensure!(
        bin.is_file(),
        "leaktrace binary not found at {}: build it first (`cargo build -p leaktrace`) or set LEAKTRACE_BIN",
        bin.display()
    );
    Ok(bin)
}

enum Wait {
    Met,
    Closed,
    TimedOut,
}

/// A child's stdout, read line by line on a thread so that waits can time out.
struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
    closed: bool,
    /// Asks the reader thread to stop reading and close its end of the pipe.
    hang_up: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

/// How often a reader waiting for output checks whether it should hang up.
const HANG_UP_POLL_MS: libc::c_int = 50;

impl Lines {
    fn read(source: impl Read + AsRawFd + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        let hang_up = Arc::new(AtomicBool::new(false));
        let asked = Arc::clone(&hang_up);
        let reader = thread::spawn(move || {
            let fd = source.as_raw_fd();
            let mut source = BufReader::new(source);
            loop {
                // A blocked read would keep the pipe open until the child writes again: wait for
                // data in short polls instead, so a hang-up takes effect at once.
                if source.buffer().is_empty() && !readable_unless(fd, &asked) {
                    return;
                }
                let mut line = String::new();
                if !matches!(source.read_line(&mut line), Ok(1..)) {
                    return;
                }
                let line = line.strip_suffix('\n').unwrap_or(&line);
                let line = line.strip_suffix('\r').unwrap_or(line);
                if tx.send(line.to_owned()).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
            closed: false,
            hang_up,
            reader: Some(reader),
        }
    }

    /// Closes the read end, as `head -1` does once it has its line: the child's next write fails
    /// with EPIPE. Lines not read yet are lost.
    fn hang_up(&mut self) {
        self.hang_up.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stdout reader panicked");
        }
        self.closed = true;
    }

    fn wait_for(&mut self, timeout: Duration, met: impl Fn(&[String]) -> bool) -> Wait {
        let deadline = Instant::now() + timeout;
        loop {
            if met(&self.seen) {
                return Wait::Met;
            }
            if self.closed {
                return Wait::Closed;
            }
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => return Wait::TimedOut,
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }
}

/// Waits until `fd` has something to read (or an error to report), or `hang_up` is set (false).
fn readable_unless(fd: RawFd, hang_up: &AtomicBool) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    while !hang_up.load(Ordering::Relaxed) {
        // SAFETY: one valid pollfd; the fd stays open while its owner, the caller, runs.
        if unsafe { libc::poll(&mut poll, 1, HANG_UP_POLL_MS) } != 0 {
            // Readable, at the end, or an error (EINTR included) that the read will report.
            return true;
        }
    }
    false
}

/// A child process, killed and reaped on drop.
struct Running {
    child: Child,
    name: String,
    stdout: Lines,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Running {
    fn spawn<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> Result<Running> {
        let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        let name = format!(
            "`{} {}`",
            program.display(),
            args.join(OsStr::new(" ")).to_string_lossy()
        );
        let mut child = Command::new(program)
            .args(&args)
            // The suite may itself run under sudo (`cargo xtask test` as a user): `leaktrace run`
            // would then run its commands as that user. The tests of that set these themselves.
            .env_remove("SUDO_UID")
            .env_remove("SUDO_GID")
            .env_remove("SUDO_USER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = Lines::read(child.stdout.take().expect("stdout is piped"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let source = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(source).lines().map_while(Result::ok) {
                let mut text = sink.lock().expect("stderr lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
        Ok(Running {
            child,
            name,
            stdout,
            stderr,
            stderr_reader: Some(stderr_reader),
        })
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Waits until the process has printed a line containing `text` on stderr.
    fn wait_for_stderr(&self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.stderr().lines().any(|l| l.contains(text)) {
            ensure!(
                Instant::now() < deadline,
                "{} printed no stderr line with {text:?} within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits until at least `n` stdout lines start with `prefix`, and returns them.
    fn lines_starting(&mut self, prefix: &str, n: usize, timeout: Duration) -> Result<Vec<String>> {
        let count = |lines: &[String]| lines.iter().filter(|l| l.starts_with(prefix)).count();
        let end = self.stdout.wait_for(timeout, |lines| count(lines) >= n);
        let seen = count(&self.stdout.seen);
        match end {
            Wait::Met => Ok(self
                .stdout
                .seen
                .iter()
                .filter(|l| l.starts_with(prefix))
                .cloned()
                .collect()),
            Wait::Closed => bail!(
                "{} exited after {seen} of {n} `{prefix}` lines; stderr:\n{}",
                self.name,
                self.stderr()
            ),
            Wait::TimedOut => bail!(
                "{} printed {seen} of {n} `{prefix}` lines within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            ),
        }
    }

    /// [`Self::exit`], with all the process printed.
    fn finished(&mut self, timeout: Duration) -> Result<Finished> {
        let status = self.exit(timeout)?;
        Ok(Finished {
            status,
            stdout: std::mem::take(&mut self.stdout.seen),
            stderr: self.stderr(),
        })
    }

    /// Waits for the process to end on its own, reading all it prints.
    fn exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        // Drain stdout before waiting: a child blocked on a full pipe would never exit.
        if let Wait::TimedOut = self.stdout.wait_for(timeout, |_| false) {
            bail!(
                "{} still running after {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            ensure!(
                Instant::now() < deadline,
                "{} closed stdout but did not exit within {timeout:?}",
                self.name
            );
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().expect("stderr reader panicked");
        }
        Ok(status)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Either may fail only because the child already exited and was reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server subcommand of `leaktrace-fixture`, listening.
pub struct Fixture {
    run: Running,
    port: u16,
}

/// An `ACCEPTED fd=<fd> peer=<addr>` line of a fixture server.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Accepted {
    pub fd: i64,
    pub peer: String,
}

impl Fixture {
    pub fn server(fixture: &str, args: &[&str]) -> Result<Fixture> {
        let mut run = Running::spawn(Path::new(fixture), args)?;
        let ready = run.lines_starting("READY ", 1, FIXTURE_TIMEOUT)?;
        let port = ready[0]["READY ".len()..]
            .parse()
            .with_context(|| format!("bad line from {}: {:?}", run.name, ready[0]))?;
        Ok(Fixture { run, port })
    }

    pub fn pid(&self) -> u32 {
        self.run.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The first `n` connections the server accepted.
    pub fn accepted(&mut self, n: usize) -> Result<Vec<Accepted>> {
        self.lines("ACCEPTED ", n)?
            .iter()
            .map(|line| {
                let parsed = line
                    .strip_prefix("ACCEPTED fd=")
                    .and_then(|rest| rest.split_once(" peer="))
                    .and_then(|(fd, peer)| Some((fd.parse().ok()?, peer)));
                let (fd, peer) =
                    parsed.with_context(|| format!("bad line from {}: {line:?}", self.run.name))?;
                Ok(Accepted {
                    fd,
                    peer: peer.to_owned(),
                })
            })
            .collect()
    }

    /// Waits for `n` stdout lines starting with `prefix` (e.g. `EOF ` once per connection).
    pub fn lines(&mut self, prefix: &str, n: usize) -> Result<Vec<String>> {
        self.run.lines_starting(prefix, n, FIXTURE_TIMEOUT)
    }
}

/// A finished `leaktrace-fixture client` run.
pub struct ClientRun {
    pub pid: u32,
    /// The client's end of each connection, as the server sees the peer.
    pub local_addrs: Vec<String>,
}

/// Runs `leaktrace-fixture client <args>` to completion.
pub fn run_client(fixture: &str, args: &[&str]) -> Result<ClientRun> {
    let mut run = Running::spawn(Path::new(fixture), &[&["client"], args].concat())?;
    let status = run.exit(CLIENT_TIMEOUT)?;
    ensure!(
        status.success(),
        "{} failed with {status}; stderr:\n{}",
        run.name,
        run.stderr()
    );
    let local_addrs = run
        .stdout
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("CONNECTED local="))
        .map(str::to_owned)
        .collect();
    Ok(ClientRun {
        pid: run.child.id(),
        local_addrs,
    })
}

/// The loopback address family of a fixture's sockets.
#[derive(Clone, Copy)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Family::V4 => &[],
            Family::V6 => &["--ipv6"],
        }
    }

    /// How leaktrace must render a loopback endpoint of this family.
    pub fn endpoint(self, port: u16) -> String {
        match self {
            Family::V4 => format!("127.0.0.1:{port}"),
            Family::V6 => format!("[::1]:{port}"),
        }
    }
}

/// Incident 1's server: takes `conns` connections, reads their requests and never closes them.
pub fn close_wait_server(fixture: &str, family: Family, conns: usize) -> Result<Fixture> {
    let conns = conns.to_string();
    Fixture::server(
        fixture,
        &[&["close-wait-server", "--conns", &conns], family.flags()].concat(),
    )
}

/// Incident 1's client: sends a request, then closes. The pause lets the server drain the request
/// and sleep in read() before the FIN arrives, so the FIN is processed in softirq in the client's
/// context instead of from the socket backlog in the server's; only then does a test of
/// attribution test anything.
pub fn close_wait_client(
    fixture: &str,
    server: &Fixture,
    family: Family,
    conns: usize,
) -> Result<ClientRun> {
    close_wait_clients(fixture, server, family, conns, 1)
}

/// [`close_wait_client`]'s connections, `concurrency` at a time: for many of them.
pub fn close_wait_clients(
    fixture: &str,
    server: &Fixture,
    family: Family,
    conns: usize,
    concurrency: usize,
) -> Result<ClientRun> {
    let (port, conns) = (server.port().to_string(), conns.to_string());
    let concurrency = concurrency.to_string();
    let args = [
        "--port",
        &port,
        "--send",
        "5",
        "--pause-ms",
        "100",
        "--conns",
        &conns,
        "--concurrency",
        &concurrency,
    ];
    run_client(fixture, &[&args, family.flags()].concat())
}

/// A finished leaktrace run, whatever its end: a usage error, `--help`, SIGKILL, a closed stdout.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

pub fn run_leaktrace(args: &[&str]) -> Result<Finished> {
    run_leaktrace_within(args, EXIT_TIMEOUT)
}

/// [`run_leaktrace`], for a run with more to do than start and stop.
pub fn run_leaktrace_within(args: &[&str], limit: Duration) -> Result<Finished> {
    spawn_leaktrace(args)?.finished(limit)
}

/// Starts `leaktrace run --json ... -- CMD...` (`args` from `--json` on), sends it `signal` once
/// it has attached, and waits for it to end. `None` means the test was skipped: not root.
pub fn signal_run(test: &str, args: &[&str], signal: i32) -> Result<Option<Finished>> {
    if !is_root() {
        skip(test, "leaktrace needs root");
        return Ok(None);
    }
    let mut run = spawn_leaktrace(&[&["run", "--json"], args].concat())?;
    // Under run the report, start line included, goes to stderr.
    run.wait_for_stderr(r#"{"type":"start""#, START_TIMEOUT)?;
    let pid = libc::pid_t::try_from(run.child.id())?;
    // SAFETY: kill has no memory-safety preconditions; the child is not reaped before
    // `finished`, so the pid cannot have been reused.
    ensure!(
        unsafe { libc::kill(pid, signal) } == 0,
        "cannot signal leaktrace"
    );
    run.finished(EXIT_TIMEOUT).map(Some)
}

/// When [`signal_startup`] sends its signal at the latest: well within leaktrace's startup, which
/// parses the kernel's BTF before anything else.
const STARTUP_SIGNAL_WITHIN: Duration = Duration::from_millis(100);

/// Starts leaktrace with `args` and sends it `signal` while it starts up: as soon as it blocks or
/// catches the signal (as `/proc/<pid>/status` says), and within [`STARTUP_SIGNAL_WITHIN`]
/// whatever it does with it; then waits for it to end. `None` means the test was skipped: not
/// root.
pub fn signal_startup(test: &str, args: &[&str], signal: i32) -> Result<Option<Finished>> {
    if !is_root() {
        skip(test, "leaktrace needs root");
        return Ok(None);
    }
    let mut run = spawn_leaktrace(args)?;
    let pid = libc::pid_t::try_from(run.child.id())?;
    let deadline = Instant::now() + STARTUP_SIGNAL_WITHIN;
    while Instant::now() < deadline && !takes_signal(pid, signal)? {
        thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill has no memory-safety preconditions; the child is not reaped before
    // `finished`, so the pid cannot have been reused.
    ensure!(
        unsafe { libc::kill(pid, signal) } == 0,
        "cannot signal leaktrace"
    );
    run.finished(EXIT_TIMEOUT).map(Some)
}

/// Whether process `pid` blocks or catches `signal` rather than dying of it.
fn takes_signal(pid: libc::pid_t, signal: i32) -> Result<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let bit = 1u64 << (signal - 1);
    Ok(status
        .lines()
        .filter_map(|line| {
            line.strip_prefix("SigBlk:")
                .or_else(|| line.strip_prefix("SigCgt:"))
        })
        .any(|mask| u64::from_str_radix(mask.trim(), 16).is_ok_and(|mask| mask & bit != 0)))
}

/// Starts leaktrace, with `--hooks $LEAKTRACE_HOOKS` when that is set.
fn spawn_leaktrace(args: &[&str]) -> Result<Running> {
    let hooks = std::env::var("LEAKTRACE_HOOKS");
    let mut args = args.to_vec();
    // A test that names a family itself (or a wrong one, for its error) keeps it.
    if let Some(family) = hooks.as_ref().ok().filter(|_| !args.contains(&"--hooks")) {
        // Options belong to the subcommand, when there is one.
        let at = usize::from(matches!(args.first(), Some(&("run" | "demo"))));
        args.splice(at..at, ["--hooks", family.as_str()]);
    }
    Running::spawn(&leaktrace_bin()?, &args)
}

/// A `leaktrace --json` run whose probes are attached.
pub struct Leaktrace {
    run: Running,
}

impl Leaktrace {
    /// Starts `leaktrace --json --leak-after 500ms --duration <duration> --pid <pid>...` and waits
    /// for its `start` line. `None` means the test was skipped: this machine cannot trace.
    pub fn start(test: &str, pids: &[u32], duration: &str) -> Result<Option<Leaktrace>> {
        Self::start_with(test, pids, duration, &[])
    }

    /// [`Self::start`] with more leaktrace options.
    pub fn start_with(
        test: &str,
        pids: &[u32],
        duration: &str,
        extra: &[&str],
    ) -> Result<Option<Leaktrace>> {
        if !is_root() {
            skip(test, "leaktrace needs root");
            return Ok(None);
        }
        let leak_after = format!("{LEAK_AFTER_MS}ms");
        let mut args = vec![
            "--json",
            "--leak-after",
            &leak_after,
            "--duration",
            duration,
        ];
        let pid_args: Vec<String> = pids.iter().map(u32::to_string).collect();
        for pid in &pid_args {
            args.extend(["--pid", pid]);
        }
        args.extend(extra);
        let mut run = spawn_leaktrace(&args)?;
        match run
            .stdout
            .wait_for(START_TIMEOUT, |lines| !lines.is_empty())
        {
            Wait::Met => {}
            Wait::Closed => {
                let status = run.exit(EXIT_TIMEOUT)?;
                let reason = format!(
                    "{} exited with {status} before attaching: {}",
                    run.name,
                    run.stderr().trim()
                );
                if status
                    .code()
                    .is_some_and(|c| CANNOT_TRACE_HERE.contains(&c))
                {
                    skip(test, &reason);
                    return Ok(None);
                }
                bail!(reason);
            }
            Wait::TimedOut => bail!(
                "{} printed no start line within {START_TIMEOUT:?}; stderr:\n{}",
                run.name,
                run.stderr()
            ),
        }
        let first = &run.stdout.seen[0];
        let start: Value = serde_json::from_str(first)
            .with_context(|| format!("first stdout line is not JSON: {first:?}"))?;
        ensure!(
            start["type"] == "start"
                && start["pids"] == json!(pids)
                && start["leak_after_ms"] == LEAK_AFTER_MS,
            "unexpected start line for --pid {pids:?} --leak-after {leak_after}: {first}"
        );
        if let Some(expected) = std::env::var("LEAKTRACE_EXPECT_HOOKS")
            .ok()
            .filter(|e| !e.is_empty())
        {
            // The refusals leaktrace printed say why a preferred hook was not used.
            let why = || format!("{first}\nstderr:\n{}", run.stderr());
            let family = hook_family(&start)
                .with_context(|| format!("LEAKTRACE_EXPECT_HOOKS={expected}: {}", why()))?;
            ensure!(
                family == expected,
                "LEAKTRACE_EXPECT_HOOKS={expected} but {} attached the {family} family: {}",
                run.name,
                why()
            );
        }
        Ok(Some(Leaktrace { run }))
    }

    /// The `start` record, the first line leaktrace printed.
    pub fn start_record(&self) -> Result<Value> {
        let first = self.run.stdout.seen.first().context("no start line")?;
        Ok(serde_json::from_str(first)?)
    }

    /// Waits until leaktrace has reported at least `n` leaks.
    pub fn wait_for_leaks(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let leaks = |lines: &[String]| {
            lines
                .iter()
                .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["type"] == "leak"))
                .count()
        };
        match self.run.stdout.wait_for(timeout, |lines| leaks(lines) >= n) {
            Wait::Met => Ok(()),
            Wait::Closed | Wait::TimedOut => bail!(
                "expected {n} leak lines within {timeout:?}, got {}; stdout:\n{}\nstderr:\n{}",
                leaks(&self.run.stdout.seen),
                self.run.stdout.seen.join("\n"),
                self.run.stderr()
            ),
        }
    }

    /// Waits until leaktrace has printed a line containing `text` on stderr.
    pub fn wait_for_stderr(&self, text: &str, timeout: Duration) -> Result<()> {
        self.run.wait_for_stderr(text, timeout)
    }

    /// Keeps tracing for `period`, long enough for findings that should not exist to show up.
    pub fn settle(&mut self, period: Duration) -> Result<()> {
        match self.run.stdout.wait_for(period, |_| false) {
            Wait::TimedOut => Ok(()),
            _ => bail!(
                "leaktrace stopped early; stdout:\n{}\nstderr:\n{}",
                self.run.stdout.seen.join("\n"),
                self.run.stderr()
            ),
        }
    }

    /// Sends `signal` to leaktrace (SIGSTOP/SIGCONT: a reader that falls behind).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = libc::pid_t::try_from(self.run.child.id())?;
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped before
        // `finish` or `exited`, which consume self, so the pid cannot have been reused.
        ensure!(
            unsafe { libc::kill(pid, signal) } == 0,
            "cannot signal leaktrace"
        );
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.run.child.id()
    }

    /// Ends the run the way an operator does, with SIGTERM, and returns everything it printed.
    pub fn stop(self) -> Result<Report> {
        self.stop_with(libc::SIGTERM)
    }

    /// Ends the run with `signal` (SIGINT, SIGTERM or SIGHUP), which must bring the final report
    /// and exit 0.
    pub fn stop_with(self, signal: i32) -> Result<Report> {
        self.signal(signal)?;
        self.finish(EXIT_TIMEOUT)
    }

    /// SIGKILL: no report, the kernel cleans up alone.
    pub fn kill(self) -> Result<Finished> {
        self.signal(libc::SIGKILL)?;
        self.exited(EXIT_TIMEOUT)
    }

    /// Closes leaktrace's stdout, as a reader that has seen enough does (`| head -1`).
    pub fn close_stdout(&mut self) {
        self.run.stdout.hang_up();
    }

    /// Waits for the run to end by itself (`--duration`) and returns everything it printed.
    pub fn finish(self, timeout: Duration) -> Result<Report> {
        let run = self.exited(timeout)?;
        let report = Report::parse(&run.stdout, run.stderr)?;
        ensure!(
            run.status.code() == Some(0),
            "leaktrace exited with {}\n{report}",
            run.status
        );
        Ok(report)
    }

    /// Waits for the run to end, however it ends, and returns what it printed.
    pub fn exited(mut self, timeout: Duration) -> Result<Finished> {
        self.run.finished(timeout)
    }
}

/// All JSON lines of a finished leaktrace run, which began with `start` and ended with `summary`.
pub struct Report {
    pub lines: Vec<Value>,
    pub stderr: String,
}

impl Report {
    /// Whether this kernel lets leaktrace see reads return end-of-stream
    /// (`sock:sock_recv_length`, 6.3+). Before that only data reads are seen, so a socket
    /// whose owner read the EOF still looks like its EOF is unread, and a shut-down socket
    /// drained to the end never shows as drained: tests check those claims where the kernel
    /// can back them.
    pub fn sees_end_of_stream_reads(&self) -> bool {
        self.lines[0]["hooks"]["recv"]
            .as_str()
            .is_some_and(|hook| hook.starts_with("tracepoint:sock:sock_recv_length"))
    }

    fn parse(lines: &[String], stderr: String) -> Result<Report> {
        let parsed: Result<Vec<Value>, _> = lines.iter().map(|l| serde_json::from_str(l)).collect();
        let dump = || format!("stdout:\n{}\nstderr:\n{stderr}", lines.join("\n"));
        let Ok(parsed) = parsed else {
            bail!(
                "leaktrace --json printed a line that is not JSON\n{}",
                dump()
            );
        };
        ensure!(
            parsed.first().is_some_and(|v| v["type"] == "start")
                && parsed.last().is_some_and(|v| v["type"] == "summary"),
            "leaktrace output must begin with a start line and end with a summary line\n{}",
            dump()
        );
        Ok(Report {
            lines: parsed,
            stderr,
        })
    }

    pub fn leaks(&self) -> Vec<&Value> {
        self.lines.iter().filter(|v| v["type"] == "leak").collect()
    }

    pub fn summary(&self) -> &Value {
        self.lines.last().expect("parse checked the summary line")
    }

    /// The `stats` line, which must come right before the summary.
    pub fn stats(&self) -> &Value {
        let n = self.lines.len();
        match self.lines.get(n.wrapping_sub(2)) {
            Some(stats) if stats["type"] == "stats" => stats,
            _ => panic!("no stats line just before the summary\n{self}"),
        }
    }

    /// The `per_pid` row of `pid`.
    pub fn pid_stats(&self, pid: u32) -> &Value {
        let rows = self.stats()["per_pid"].as_array();
        rows.and_then(|rows| rows.iter().find(|row| row["pid"] == pid))
            .unwrap_or_else(|| panic!("no per_pid row for pid {pid}\n{self}"))
    }
}

/// The whole run, for assertion messages.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "leaktrace stdout:")?;
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        write!(f, "leaktrace stderr:\n{}", self.stderr)
    }
}

/// How many of the connections from `peers` (the clients' ends, as `ClientRun::local_addrs`
/// gives them) to local port `port` the kernel lists in `state` (a /proc/net/tcp state code),
/// IPv4 and IPv6: ground truth that does not depend on leaktrace. The peers matter: a server's
/// port comes from the ephemeral range, and on a busy machine another process's outgoing
/// connection can use the same local port number.
pub fn kernel_sockets(port: u16, peers: &[String], state: u8) -> Result<usize> {
    let peer_ports: BTreeSet<u16> = peers
        .iter()
        .map(|peer| {
            peer.rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .with_context(|| format!("not an address: {peer:?}"))
        })
        .collect::<Result<_>>()?;
    Ok(kernel_tcp_table()?
        .into_iter()
        .filter(|s| s.local_port == port && s.state == state && peer_ports.contains(&s.remote_port))
        .count())
}

/// How many connections to remote port `port` (a local server's, on loopback) the kernel lists
/// in `state`, IPv4 and IPv6.
pub fn kernel_connections_to(port: u16, state: u8) -> Result<usize> {
    Ok(kernel_tcp_table()?
        .into_iter()
        .filter(|s| s.remote_port == port && s.state == state)
        .count())
}

/// A row of /proc/net/tcp{,6}.
struct KernelSocket {
    local_port: u16,
    remote_port: u16,
    state: u8,
}

fn kernel_tcp_table() -> Result<Vec<KernelSocket>> {
    let hex_port = |field: Option<&&str>| {
        field
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).with_context(|| format!("read {table}"))?;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let row = hex_port(fields.get(1))
                .zip(hex_port(fields.get(2)))
                .zip(fields.get(3).and_then(|s| u8::from_str_radix(s, 16).ok()));
            let ((local_port, remote_port), state) =
                row.with_context(|| format!("unexpected line in {table}: {line:?}"))?;
            sockets.push(KernelSocket {
                local_port,
                remote_port,
                state,
            });
        }
    }
    Ok(sockets)
}

/// The process name leaktrace should report for `pid`.
pub fn comm(pid: u32) -> Result<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    Ok(comm.trim_end().to_owned())
}

/// The TCP state and the count of received but unread bytes of the socket behind `fd` in
/// process `pid`: ground truth for a socket that `ss` no longer lists because its connection
/// is over (state CLOSE) while the process still holds the fd.
pub fn kernel_socket(pid: u32, fd: i64) -> Result<(u8, usize)> {
    let (pid, fd) = (libc::pid_t::try_from(pid)?, RawFd::try_from(fd)?);
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    ensure!(
        pidfd >= 0,
        "pidfd_open({pid}): {}",
        io::Error::last_os_error()
    );
    // SAFETY: the fd was just returned to us and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(RawFd::try_from(pidfd)?) };
    // SAFETY: as above; the copy shares the socket without consuming anything from it.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    ensure!(
        copy >= 0,
        "pidfd_getfd({pid}, {fd}): {}",
        io::Error::last_os_error()
    );
    // SAFETY: as above.
    let copy = unsafe { OwnedFd::from_raw_fd(RawFd::try_from(copy)?) };
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer.
    let ret = unsafe { libc::ioctl(copy.as_raw_fd(), libc::FIONREAD, &mut unread) };
    ensure!(ret == 0, "FIONREAD: {}", io::Error::last_os_error());
    // SAFETY: tcp_info is plain integers, for which all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&info))?;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let ret = unsafe {
        libc::getsockopt(
            copy.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    ensure!(ret == 0, "TCP_INFO: {}", io::Error::last_os_error());
    Ok((info.tcpi_state, usize::try_from(unread)?))
}

/// A kind of BPF object, as `/proc/<pid>/fdinfo` names its id and as `bpf(2)` looks it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BpfKind {
    Prog,
    Map,
    Link,
}

impl BpfKind {
    const ALL: [BpfKind; 3] = [BpfKind::Prog, BpfKind::Map, BpfKind::Link];

    fn fdinfo_key(self) -> &'static str {
        match self {
            BpfKind::Prog => "prog_id:",
            BpfKind::Map => "map_id:",
            BpfKind::Link => "link_id:",
        }
    }

    /// `BPF_{PROG,MAP,LINK}_GET_FD_BY_ID` of uapi/linux/bpf.h.
    fn get_fd_by_id(self) -> libc::c_long {
        match self {
            BpfKind::Prog => 13,
            BpfKind::Map => 14,
            BpfKind::Link => 30,
        }
    }
}

/// `BPF_OBJ_GET` of uapi/linux/bpf.h: opens a pinned object.
const BPF_OBJ_GET: libc::c_long = 7;

/// The BPF objects one process holds: ids the kernel never reuses soon, so unlike names they
/// tell one leaktrace's programs from those of the leaktraces other tests run at the same time.
#[derive(Debug)]
pub struct BpfObjects {
    pid: u32,
    ids: BTreeSet<(BpfKind, u32)>,
}

/// The kernel frees BPF objects after an RCU grace period and from work queues, not at close.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

impl BpfObjects {
    /// The programs, maps and links behind the fds `pid` holds now. A link's fdinfo also names
    /// its program.
    pub fn held_by(pid: u32) -> Result<BpfObjects> {
        let dir = format!("/proc/{pid}/fdinfo");
        let mut ids = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
            // An fd closed since the listing has no fdinfo any more, and held nothing that stays.
            let Ok(info) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            ids.extend(fdinfo_ids(&info));
        }
        let objects = BpfObjects { pid, ids };
        ensure!(
            [BpfKind::Prog, BpfKind::Map]
                .iter()
                .all(|kind| objects.ids.iter().any(|(k, _)| k == kind)),
            "pid {pid} holds no BPF program or no map: {objects:?}"
        );
        Ok(objects)
    }

    /// Waits until the kernel has freed every object, now that their holder has exited.
    pub fn wait_released(&self) -> Result<()> {
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        loop {
            let mut alive = Vec::new();
            for &(kind, id) in &self.ids {
                if bpf_object_exists(kind, id)? {
                    alive.push((kind, id));
                }
            }
            if alive.is_empty() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{RELEASE_TIMEOUT:?} after pid {} exited, the kernel still has its BPF objects {alive:?}",
                self.pid
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails if any of these objects is pinned in the BPF filesystem under `root`, where it
    /// would outlive its process.
    pub fn check_not_pinned(&self, root: &Path) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(root) else {
            // Not mounted, or no such directory: nothing can be pinned there.
            return Ok(());
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                self.check_not_pinned(&path)?;
                continue;
            }
            let Some(fd) = bpf_obj_get(&path)? else {
                continue;
            };
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
            let pinned: BTreeSet<_> = fdinfo_ids(&info).collect();
            ensure!(
                pinned.is_disjoint(&self.ids),
                "{} pins BPF objects {pinned:?} of pid {}",
                path.display(),
                self.pid
            );
        }
        Ok(())
    }
}

fn fdinfo_ids(info: &str) -> impl Iterator<Item = (BpfKind, u32)> + '_ {
    info.lines().filter_map(|line| {
        BpfKind::ALL.into_iter().find_map(|kind| {
            let id = line.strip_prefix(kind.fdinfo_key())?.trim().parse().ok()?;
            Some((kind, id))
        })
    })
}

/// Whether the kernel still has BPF object `id` of `kind`, asked with `bpf(2)` directly: the
/// tests do not link aya.
fn bpf_object_exists(kind: BpfKind, id: u32) -> Result<bool> {
    // The leading fields of `union bpf_attr` for the GET_FD_BY_ID commands.
    #[repr(C)]
    struct GetFdById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let attr = GetFdById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: the kernel reads `size_of::<GetFdById>()` bytes of `attr`, which all exist.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            kind.get_fd_by_id(),
            &raw const attr,
            std::mem::size_of::<GetFdById>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(RawFd::try_from(fd)?) });
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    ensure!(
        e.raw_os_error() == Some(libc::ENOENT),
        "bpf GET_FD_BY_ID for {kind:?} {id}: {e}"
    );
    Ok(false)
}

/// Opens the object pinned at `path`; `None` when `path` is not a BPF object.
fn bpf_obj_get(path: &Path) -> Result<Option<OwnedFd>> {
    // The leading fields of `union bpf_attr` for BPF_OBJ_GET.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: the kernel reads `attr` and the NUL-terminated path it points to, both alive.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const attr,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Ok(None);
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(RawFd::try_from(fd)?) }))
}
