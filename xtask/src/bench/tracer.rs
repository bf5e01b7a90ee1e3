//! A `leaktrace --json` run under measurement: its CPU time and memory from /proc while it
//! runs, its findings and its summary once SIGINT has ended it, as an operator's Ctrl-C would.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

/// Loading parses the kernel's BTF and, without `--pid`, inspects every process's sockets; on a
/// busy machine that can take a while.
const START_LIMIT: Duration = Duration::from_secs(60);
/// The final report, after a backlog of records is read.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// A process's memory, from /proc/PID/status.
#[derive(Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    /// The peak resident set (VmHWM).
    pub peak_kib: u64,
}

/// utime + stime of a process (of all its threads).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = procfs::process::Process::new(i32::try_from(pid)?)?.stat()?;
    Ok(Duration::from_secs_f64(
        (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64,
    ))
}

pub fn memory(pid: u32) -> Result<Memory> {
    let status = procfs::process::Process::new(i32::try_from(pid)?)?.status()?;
    Ok(Memory {
        rss_kib: status.vmrss.unwrap_or_default(),
        peak_kib: status.vmhwm.unwrap_or_default(),
    })
}

pub struct Tracer {
    child: Child,
    lines: Receiver<Value>,
    /// Kept for error messages: its warnings and the hooks it could not use would bury the
    /// bench's progress lines.
    stderr: Arc<Mutex<String>>,
    /// The `start` record.
    pub start: Value,
}

/// What a run printed, once it ended.
pub struct Finished {
    pub start: Value,
    /// Every `leak` record.
    pub leaks: Vec<Value>,
    pub summary: Value,
}

impl Tracer {
    /// Starts `leaktrace --json ARGS` and waits until its hooks are attached (its start line).
    pub fn start(binary: &Path, args: &[&str]) -> Result<Tracer> {
        let mut child = Command::new(binary)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let source = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(source).lines().map_while(Result::ok) {
                let mut text = sink.lock().expect("stderr lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        // Read continuously: a full pipe would stall leaktrace and so the figures.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("xtask: bench: leaktrace printed a line that is not JSON: {line}");
                    continue;
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut tracer = Tracer {
            child,
            lines,
            stderr,
            start: Value::Null,
        };
        match tracer.lines.recv_timeout(START_LIMIT) {
            Ok(start) if start["type"] == "start" => tracer.start = start,
            Ok(other) => bail!(
                "leaktrace's first line is not its start record: {other}{}",
                tracer.stderr()
            ),
            Err(RecvTimeoutError::Timeout) => bail!(
                "leaktrace printed no start line within {START_LIMIT:?}{}",
                tracer.stderr()
            ),
            Err(RecvTimeoutError::Disconnected) => bail!(
                "leaktrace exited before attaching ({}){}",
                tracer.child.wait()?,
                tracer.stderr()
            ),
        }
        Ok(tracer)
    }

    /// What it printed on stderr, for an error message.
    fn stderr(&self) -> String {
        let text = self.stderr.lock().expect("stderr lock");
        if text.is_empty() {
            String::new()
        } else {
            format!("; its stderr:\n{text}")
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_time(&self) -> Result<Duration> {
        cpu_time(self.pid())
    }

    pub fn memory(&self) -> Result<Memory> {
        memory(self.pid())
    }

    /// SIGINT, then everything it printed until it exited.
    pub fn stop(mut self) -> Result<Finished> {
        let pid = Pid::from_raw(i32::try_from(self.pid())?).context("pid 0")?;
        kill_process(pid, Signal::INT).context("sending SIGINT to leaktrace")?;
        let deadline = Instant::now() + STOP_LIMIT;
        let mut leaks = Vec::new();
        let mut summary = None;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line["type"] == "leak" => leaks.push(line),
                Ok(line) if line["type"] == "summary" => summary = Some(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    // Only an already reaped child cannot be killed; either way it is gone.
                    let _ = self.child.kill();
                    bail!(
                        "leaktrace did not finish within {STOP_LIMIT:?} of SIGINT: killed{}",
                        self.stderr()
                    );
                }
            }
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("leaktrace exited with {status}{}", self.stderr());
        }
        Ok(Finished {
            start: std::mem::take(&mut self.start),
            leaks,
            summary: summary.with_context(|| {
                format!("leaktrace ended without a summary line{}", self.stderr())
            })?,
        })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // A bench that failed half-way leaves no eBPF programs behind. After `stop` the child is
        // reaped already and both calls fail harmlessly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Finished {
    pub fn count(&self, key: &str) -> u64 {
        self.summary[key].as_u64().unwrap_or_default()
    }
}
