//! What ends a session from outside: the stop signals, and a report whose reader went away or
//! that had nowhere to go from the start.
use std::{
    os::fd::RawFd,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT (Ctrl-C), SIGTERM (kill, service managers) and SIGHUP (the terminal or ssh session
/// closed), in the order a startup interrupted by more than one names them.
const STOP: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Holds the stop signals back from the start of main until [`StopSignals::install`]: their
/// default action would end leaktrace without a word while it loads BTF, attaches and reads the
/// sockets already open, which takes seconds on a busy host. A held signal waits in the kernel
/// until startup looks ([`held`]) and gives up, or until the handlers take it over. Threads
/// started meanwhile keep the signals held, so they still reach this thread; a command that
/// `run` starts gets a cleared mask from std.
pub fn hold() {
    mask(libc::SIG_BLOCK);
}

/// The stop signal that came while held, if any.
pub fn held() -> Option<libc::c_int> {
    let mut pending = empty_set();
    // SAFETY: sigpending fills the valid set it is given.
    unsafe { libc::sigpending(&mut pending) };
    // SAFETY: sigismember reads a valid set.
    STOP.into_iter()
        .find(|&signal| unsafe { libc::sigismember(&pending, signal) } == 1)
}

/// How people and the kernel's headers name a stop signal.
pub fn name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a stop signal",
    }
}

/// Blocks (`SIG_BLOCK`) or unblocks (`SIG_UNBLOCK`) the stop signals in this thread.
fn mask(how: libc::c_int) {
    let mut set = empty_set();
    for signal in STOP {
        // SAFETY: a valid set and a valid signal number.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    // SAFETY: a valid set; pthread_sigmask fails only for an invalid `how`.
    unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
}

fn empty_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, and sigemptyset initializes it whatever it holds.
    unsafe {
        let mut set = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// Each stop signal ends the session with its final report, where the default action would
/// kill leaktrace with nothing printed.
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    /// Takes the stop signals over from [`hold`]: one that came since startup last looked is
    /// received like any later one.
    pub fn install() -> anyhow::Result<StopSignals> {
        let stops = StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            hangup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        };
        mask(libc::SIG_UNBLOCK);
        Ok(stops)
    }

    /// The next stop signal's number, so that `run` can pass it on to its command.
    pub async fn recv(&mut self) -> libc::c_int {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.hangup.recv() => libc::SIGHUP,
        }
    }
}

/// Whether `fd` is a pipe whose read end is closed (`leaktrace | head -1` once head is done).
/// A write would fail with EPIPE, but leaktrace may have nothing to write for a long time, and
/// the pipeline should not wait for that.
pub fn reader_gone(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and a zero timeout: poll only reports, it never blocks.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    // The kernel reports POLLERR on a pipe's write end once no reader is left; ttys and files
    // never do.
    ready == 1 && poll.revents & libc::POLLERR != 0
}

/// Whether stdout was closed when leaktrace started (`leaktrace >&-`). Before main, Rust's
/// runtime opens /dev/null over a closed standard fd, after which every write of the report
/// would succeed and go nowhere: only code that runs before the runtime's can tell.
pub fn stdout_closed_at_start() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

// SAFETY: the C runtime calls each function of .init_array once, before main and so before
// Rust's runtime; this one only asks the kernel about an fd and stores a flag.
#[used]
#[unsafe(link_section = ".init_array")]
static NOTE_STDOUT_CLOSED: extern "C" fn() = note_stdout_closed;

extern "C" fn note_stdout_closed() {
    // SAFETY: F_GETFD only reads the fd's flags, and fails (EBADF) when the fd is not open.
    let closed = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFD) } == -1;
    STDOUT_CLOSED.store(closed, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two fds into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds were just created and nothing else owns them.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_pipe_without_reader_is_noticed() {
        let (read, write) = pipe();
        assert!(!reader_gone(write.as_raw_fd()));
        drop(read);
        assert!(reader_gone(write.as_raw_fd()));
    }
}
