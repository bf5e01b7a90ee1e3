//! Running the `leaktrace` binary as a user would: to completion, stopped by a signal, or traced
//! live (`--json`) until the findings a test waits for show up.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::child::{Running, Wait};
use crate::privilege::{is_root, skip};
use crate::report::Report;

/// `--leak-after` of every traced run, in milliseconds.
pub const LEAK_AFTER_MS: u64 = 500;

/// How long a test waits for the findings it expects: --leak-after plus slack for tests
/// running in parallel on two cores.
pub const FINDING_TIMEOUT: Duration = Duration::from_secs(10);

/// Well past --leak-after, so a duplicate or misattributed finding would have been printed.
pub const SETTLE: Duration = Duration::from_millis(3 * LEAK_AFTER_MS);

/// `--duration` of traced runs, only a safety net: runs end with SIGTERM once their scenario
/// is over.
pub const RUN_LIMIT: &str = "60s";

/// Loading the eBPF programs parses the kernel's BTF; a debug build on a busy 2-core machine
/// (tests run in parallel) needs a few seconds.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit codes by which leaktrace says this machine cannot trace (not root, no BTF, no tracefs,
/// a hook refused): the environment's limit, not a bug, unless privileged runs are required.
const CANNOT_TRACE_HERE: [i32; 4] = [3, 5, 6, 7];

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
    pub(crate) run: Running,
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
