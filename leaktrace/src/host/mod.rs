//! The one seam between the tick and the running system: who holds a socket and by which fd
//! (/proc), whether a process is gone, its name and where it runs, and connections' traffic
//! (netlink sock_diag, or a pidfd duplicate of the owner's fd). [`ProcHost`] asks the kernel;
//! unit tests answer with a fake, so what the store and the detectors make of the answers is
//! tested without the processes and sockets it would take to produce them.
pub(crate) mod activity;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod holders;
pub(crate) mod pidfd;

use std::collections::{BTreeMap, BTreeSet};
use std::io;

pub(crate) use activity::{KernelTimer, Sample, Wanted};
pub(crate) use holders::{FdHeld, Holder, Unreadable};

use crate::placement::Placement;

pub(crate) trait Host {
    /// Every (pid, fd) holding one of `inodes`, by inode (see [`holders::find`]).
    fn holders(&mut self, inodes: &BTreeSet<u64>)
        -> Result<BTreeMap<u64, Vec<Holder>>, Unreadable>;

    /// One look at processes' fds, which reads each process at most once while it lasts.
    fn fds(&mut self) -> Box<dyn Fds + '_>;

    /// Whether `pid` is gone (or a zombie); not when /proc cannot be read.
    fn gone(&mut self, pid: u32) -> bool;

    /// The process's name, while it runs.
    fn comm(&mut self, pid: u32) -> Option<String>;

    /// Where the process runs; what cannot be read stays unknown.
    fn placement(&mut self, pid: u32) -> Placement;

    /// The traffic and timers of the `wanted` sockets (see [`activity::Sampler::sample`]).
    fn activity(&mut self, wanted: &[Wanted]) -> io::Result<Vec<Sample>>;
}

/// See [`Host::fds`].
pub(crate) trait Fds {
    /// Whether `pid`'s `fd` is still the socket `ino` (see [`holders::FdLookup::holds`]).
    fn holds(&mut self, pid: u32, fd: i32, ino: Option<u64>) -> FdHeld;

    /// The fd by which `pid` holds the socket `ino`, if it does; none if `pid` is gone.
    fn fd_of(&mut self, pid: u32, ino: u64) -> Result<Option<i32>, Unreadable>;
}

/// The running system, as /proc, sock_diag and pidfds show it.
#[derive(Debug, Default)]
pub(crate) struct ProcHost {
    sampler: activity::Sampler,
}

impl Host for ProcHost {
    fn holders(
        &mut self,
        inodes: &BTreeSet<u64>,
    ) -> Result<BTreeMap<u64, Vec<Holder>>, Unreadable> {
        holders::find(inodes)
    }

    fn fds(&mut self) -> Box<dyn Fds + '_> {
        Box::new(holders::FdLookup::default())
    }

    fn gone(&mut self, pid: u32) -> bool {
        holders::gone(pid)
    }

    fn comm(&mut self, pid: u32) -> Option<String> {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        Some(comm.trim_end_matches('\n').to_owned())
    }

    fn placement(&mut self, pid: u32) -> Placement {
        Placement::of(pid)
    }

    fn activity(&mut self, wanted: &[Wanted]) -> io::Result<Vec<Sample>> {
        self.sampler.sample(wanted)
    }
}
