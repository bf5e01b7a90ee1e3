//! A host made up by a unit test: by default one where no process runs and no connection
//! carries traffic, which the test fills with what it needs.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{FdHeld, Fds, Holder, Host, Sample, Unreadable, Wanted};
use crate::placement::Placement;

/// Answers for [`Host::activity`]: what the kernel's socket table says of the wanted sockets.
pub(crate) type Activity = Box<dyn FnMut(&[Wanted]) -> io::Result<Vec<Sample>> + Send>;

#[derive(Default)]
pub(crate) struct FakeHost {
    /// The fds of each running process, by socket inode.
    pub(crate) fds: BTreeMap<u32, BTreeMap<u64, i32>>,
    pub(crate) comms: HashMap<u32, String>,
    pub(crate) placements: HashMap<u32, Placement>,
    pub(crate) activity: Option<Activity>,
    /// /proc cannot be read (leaktrace is out of fds): nothing about the processes can be told.
    /// Shared, so that a test can mend it while the host is in use.
    pub(crate) unreadable: Arc<AtomicBool>,
}

impl FakeHost {
    fn unreadable(&self) -> bool {
        self.unreadable.load(Ordering::Relaxed)
    }

    /// What the running processes hold, as a scan of /proc would find it.
    fn holders_of(&self, ino: u64) -> Vec<Holder> {
        let mut holders: Vec<Holder> = (self.fds.iter())
            .filter_map(|(&pid, fds)| {
                Some(Holder {
                    pid,
                    fd: *fds.get(&ino)?,
                })
            })
            .collect();
        holders.sort_unstable();
        holders
    }
}

impl Host for FakeHost {
    fn holders(
        &mut self,
        inodes: &BTreeSet<u64>,
    ) -> Result<BTreeMap<u64, Vec<Holder>>, Unreadable> {
        if self.unreadable() {
            return Err(Unreadable);
        }
        Ok(inodes
            .iter()
            .map(|&ino| (ino, self.holders_of(ino)))
            .filter(|(_, holders)| !holders.is_empty())
            .collect())
    }

    fn fds(&mut self) -> Box<dyn Fds + '_> {
        Box::new(&*self)
    }

    fn gone(&mut self, pid: u32) -> bool {
        !self.unreadable() && !self.fds.contains_key(&pid)
    }

    fn comm(&mut self, pid: u32) -> Option<String> {
        self.comms.get(&pid).cloned()
    }

    fn placement(&mut self, pid: u32) -> Placement {
        self.placements.get(&pid).cloned().unwrap_or_default()
    }

    fn activity(&mut self, wanted: &[Wanted]) -> io::Result<Vec<Sample>> {
        match &mut self.activity {
            Some(activity) => activity(wanted),
            None => Ok(Vec::new()),
        }
    }
}

impl Fds for &FakeHost {
    fn holds(&mut self, pid: u32, fd: i32, ino: Option<u64>) -> FdHeld {
        if self.unreadable() {
            return FdHeld::Unknown;
        }
        let Some(fds) = self.fds.get(&pid) else {
            return FdHeld::ProcessGone;
        };
        let held = match ino {
            Some(ino) => fds.get(&ino) == Some(&fd),
            None => fds.values().any(|&held| held == fd),
        };
        if held {
            FdHeld::Yes
        } else {
            FdHeld::No
        }
    }

    fn fd_of(&mut self, pid: u32, ino: u64) -> Result<Option<i32>, Unreadable> {
        if self.unreadable() {
            return Err(Unreadable);
        }
        Ok(self.fds.get(&pid).and_then(|fds| fds.get(&ino)).copied())
    }
}
