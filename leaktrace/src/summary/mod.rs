//! Where a session stands: the counts of what was read, the open leaks over time, the counts per
//! process and per remote, and the final report that gathers them. The detectors fill them in,
//! the outputs render them; neither needs the other for it.
mod history;

use std::collections::BTreeMap;
use std::time::Duration;

use leaktrace_common::ProbeFailure;

pub(crate) use history::History;

use crate::error::exit_code;
use crate::finding::{Finding, LeakKind};
use crate::timeline::{Dropped, Remote};

/// What the session counted while reading the ring buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestCounts {
    pub records: u64,
    pub decode_errors: u64,
    pub lost_events: u64,
    /// `--ring-size`, what to raise when records were lost.
    pub ring_size: u32,
    /// What the eBPF programs could not do, by `ProbeFailure` discriminant.
    pub probe_failures: [u64; ProbeFailure::COUNT as usize],
}

impl IngestCounts {
    /// The probe failures that happened, and how often.
    pub fn failures(&self) -> impl Iterator<Item = (ProbeFailure, u64)> + '_ {
        ProbeFailure::ALL
            .into_iter()
            .map(|failure| (failure, self.probe_failures[failure as usize]))
            .filter(|(_, n)| *n > 0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalReport {
    /// Findings still open, ordered by pid and fd.
    pub open: Vec<Finding>,
    pub leaks_resolved: u64,
    pub sockets_seen: u64,
    /// Sockets that met a leak condition but whose owning process was never learned.
    pub unattributed: u64,
    pub ingest: IngestCounts,
    pub stats: Stats,
    /// Timelines let go of to bound memory.
    pub dropped: Dropped,
    /// (time since the start, open leaks then), ending with the final count.
    pub open_over_time: Vec<(Duration, u64)>,
    /// Exports that could not be written and were dropped meanwhile (a full disk under
    /// `--trace-out`).
    pub outputs_dropped: Vec<DroppedOutput>,
}

impl FinalReport {
    /// leaktrace's own status for a session that ran to its end: 0, or 8 when an export was
    /// dropped, so that a script relying on the file it asked for knows it is incomplete.
    pub fn exit_status(&self) -> u8 {
        if self.outputs_dropped.is_empty() {
            0
        } else {
            exit_code::OUTPUT
        }
    }
}

/// An export that failed and was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedOutput {
    /// The flag that asked for it: `--trace-out`.
    pub flag: &'static str,
    /// Where it went: a path, an address.
    pub to: String,
    /// Why: the OS's error.
    pub error: String,
}

/// Where a running session stands: what `--interval` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub elapsed: Duration,
    /// Open findings by class; classes with none are absent.
    pub open: BTreeMap<LeakKind, u64>,
    pub leaks_reported: u64,
    pub leaks_resolved: u64,
    /// Timelines in memory now.
    pub sockets_tracked: usize,
    pub sockets_seen: u64,
    pub ingest: IngestCounts,
    pub dropped: Dropped,
}

/// Counts per process and per remote endpoint over the whole session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// How long the session ran, which the leak rates are over.
    pub elapsed: Duration,
    /// Likeliest leakers first: most open leaks, then most sockets held.
    pub per_pid: Vec<PidStats>,
    /// Likewise: most open leaks, then most connections.
    pub per_remote: Vec<RemoteStats>,
}

impl Stats {
    /// `leaks` per minute of the session, to two decimals.
    pub fn per_minute(&self, leaks: u64) -> f64 {
        // A session shorter than a second would make a rate out of nothing.
        let minutes = self.elapsed.max(Duration::from_secs(1)).as_secs_f64() / 60.0;
        (leaks as f64 / minutes * 100.0).round() / 100.0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidStats {
    pub pid: u32,
    /// "?" when neither the records nor /proc named the process.
    pub comm: String,
    /// Sockets the process holds at the end (neither closed nor destroyed), by TCP state in the
    /// kernel's numbering.
    pub states: Vec<(u8, u64)>,
    pub leaks_open: u64,
    /// Findings whose condition began during the session: the rate at which it leaks, unlike
    /// the leaks found already there at start.
    pub leaks_new: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteStats {
    pub remote: Remote,
    pub connections: u64,
    /// Connections this side closed first, each leaving a TIME_WAIT socket.
    pub time_wait: u64,
    pub leaks_open: u64,
}
