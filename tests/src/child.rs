//! A child process of a test: its stdout read line by line with timeouts, its stderr collected,
//! and the process killed and reaped when its handle drops.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::leaktrace::Finished;

pub(crate) enum Wait {
    Met,
    Closed,
    TimedOut,
}

/// A child's stdout, read line by line on a thread so that waits can time out.
pub(crate) struct Lines {
    rx: Receiver<String>,
    pub(crate) seen: Vec<String>,
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
    pub(crate) fn hang_up(&mut self) {
        self.hang_up.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stdout reader panicked");
        }
        self.closed = true;
    }

    pub(crate) fn wait_for(&mut self, timeout: Duration, met: impl Fn(&[String]) -> bool) -> Wait {
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
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) name: String,
    pub(crate) stdout: Lines,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Running {
    pub(crate) fn spawn<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> Result<Running> {
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

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Waits until the process has printed a line containing `text` on stderr.
    pub(crate) fn wait_for_stderr(&self, text: &str, timeout: Duration) -> Result<()> {
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
    pub(crate) fn lines_starting(
        &mut self,
        prefix: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<String>> {
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
    pub(crate) fn finished(&mut self, timeout: Duration) -> Result<Finished> {
        let status = self.exit(timeout)?;
        Ok(Finished {
            status,
            stdout: std::mem::take(&mut self.stdout.seen),
            stderr: self.stderr(),
        })
    }

    /// Waits for the process to end on its own, reading all it prints.
    pub(crate) fn exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
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
