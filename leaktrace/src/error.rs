//! Why leaktrace could not do its job, each with its own exit status so scripts can tell a
//! missing privilege from a kernel that lacks what leaktrace needs.
use std::{fmt, io};

use crate::{hooks::LoadError, stop};

/// Exit statuses, documented in `--help` and the README.
pub mod exit_code {
    pub const RUNTIME: u8 = 1;
    /// A bad command line, as clap would exit; leaktrace's own checks of one use it too.
    pub const USAGE: u8 = 2;
    pub const NOT_ROOT: u8 = 3;
    pub const NO_SUCH_PROCESS: u8 = 4;
    pub const NO_BTF: u8 = 5;
    pub const NO_TRACEFS: u8 = 6;
    pub const HOOK_REFUSED: u8 = 7;
    /// An output failed: stdout is closed or cannot take the report, the report's reader went
    /// away, or an output the user asked for cannot be opened; or an export was dropped while
    /// tracing, after which the session ran to its end (see `FinalReport::exit_status`).
    pub const OUTPUT: u8 = 8;

    /// The shell's status for a process that `signal` ended: 128 + its number.
    pub fn signalled(signal: libc::c_int) -> u8 {
        128u8.saturating_add(signal as u8)
    }
}

#[derive(Debug)]
pub enum Failure {
    /// A command line that cannot work, found beyond what the parser checks.
    Usage(String),
    NotRoot,
    NoSuchProcess(u32),
    /// The pid names a zombie: the process exited and holds nothing, its parent has not reaped it.
    Exited(u32),
    /// `--cgroup` or `--unit` names nothing that exists, and why.
    NoSuchService(String),
    /// The kernel side could not be set up.
    Load(LoadError),
    /// Whoever read the report closed it (`leaktrace | head -1`): nobody is left to tell.
    OutputClosed,
    /// An output cannot be used: stdout closed from the start, or one the user asked for that
    /// cannot be opened (`--metrics` address in use, `--trace-out` file not writable), both
    /// checked before tracing starts; or the report cannot be written (a full disk).
    Output(anyhow::Error),
    /// A stop signal, by number, came while leaktrace started: nothing was traced.
    Interrupted(libc::c_int),
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit_code::USAGE,
            Self::NotRoot => exit_code::NOT_ROOT,
            Self::NoSuchProcess(_) | Self::Exited(_) | Self::NoSuchService(_) => {
                exit_code::NO_SUCH_PROCESS
            }
            Self::Load(LoadError::NoBtf | LoadError::Btf(_)) => exit_code::NO_BTF,
            Self::Load(LoadError::NoTracefs(_)) => exit_code::NO_TRACEFS,
            Self::Load(LoadError::HookRefused { .. } | LoadError::NoHelper { .. }) => {
                exit_code::HOOK_REFUSED
            }
            Self::Load(LoadError::NoObject | LoadError::Other(_)) => exit_code::RUNTIME,
            Self::OutputClosed | Self::Output(_) => exit_code::OUTPUT,
            Self::Interrupted(signal) => exit_code::signalled(*signal),
            Self::Runtime(_) => exit_code::RUNTIME,
        }
    }

    /// A failed write of the report.
    pub fn writing(e: io::Error) -> Failure {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Self::OutputClosed
        } else {
            Self::Output(anyhow::Error::new(e).context("writing the report"))
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(why) | Self::NoSuchService(why) => write!(f, "{why}"),
            Self::NotRoot => write!(
                f,
                "leaktrace loads eBPF programs and needs root (CAP_BPF and CAP_PERFMON): run it with sudo"
            ),
            Self::NoSuchProcess(pid) => write!(f, "no process with pid {pid}"),
            Self::Exited(pid) => write!(
                f,
                "pid {pid} has exited (a zombie its parent has not reaped): it holds no sockets"
            ),
            Self::Load(e) => e.fmt(f),
            Self::OutputClosed => write!(
                f,
                "the report's reader closed it (broken pipe): stopped tracing"
            ),
            Self::Interrupted(signal) => write!(
                f,
                "interrupted by {} while starting, before tracing began",
                stop::name(*signal)
            ),
            Self::Output(e) | Self::Runtime(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<LoadError> for Failure {
    fn from(e: LoadError) -> Self {
        Self::Load(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Runtime(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_that_cannot_be_written_is_an_output_failure() {
        let closed = Failure::writing(io::ErrorKind::BrokenPipe.into());
        assert_eq!(closed.exit_code(), exit_code::OUTPUT);
        assert!(closed.to_string().contains("broken pipe"), "{closed}");
        let full = Failure::writing(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.exit_code(), exit_code::OUTPUT);
        assert!(
            full.to_string().starts_with("writing the report: "),
            "{full}"
        );
    }

    #[test]
    fn an_interrupted_startup_exits_as_its_signal_would() {
        let interrupted = Failure::Interrupted(libc::SIGTERM);
        assert_eq!(interrupted.exit_code(), 143);
        assert_eq!(
            interrupted.to_string(),
            "interrupted by SIGTERM while starting, before tracing began"
        );
    }
}
