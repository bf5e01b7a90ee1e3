//! What leaktrace was asked to do, resolved from the command line: `cli` parses and checks the
//! arguments, and the modes (`trace`, `run`, `demo`) and the session see only these types.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::hooks::HookFamily;

/// What every mode takes: output, hooks, limits.
#[derive(Clone, Debug)]
pub struct Common {
    pub json: bool,
    pub hooks: HookFamily,
    pub ring_size: u32,
    pub interval: Option<Duration>,
    pub max_sockets: usize,
    pub max_processes: u32,
    pub max_kernel_sockets: u32,
    pub metrics: Option<SocketAddr>,
    pub trace_out: Option<PathBuf>,
    pub verbose: bool,
    /// Programs that return at once: what the attach points cost by themselves.
    pub floor: bool,
}

/// When a condition counts as a leak.
#[derive(Clone, Copy, Debug)]
pub struct Leaks {
    pub leak_after: Duration,
    /// `idle_half_closed`'s own wait.
    pub idle_after: Duration,
}

/// `leaktrace [--pid PID]... | --cgroup PATH | --unit NAME`.
#[derive(Debug)]
pub struct Trace {
    pub pids: Vec<u32>,
    pub follow_children: bool,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub duration: Option<Duration>,
    pub common: Common,
    pub leaks: Leaks,
}

/// `leaktrace run -- CMD`.
#[derive(Debug)]
pub struct Run {
    pub fail_on_leak: bool,
    pub as_root: bool,
    /// The command and its arguments; never empty.
    pub command: Vec<String>,
    pub common: Common,
    pub leaks: Leaks,
}
