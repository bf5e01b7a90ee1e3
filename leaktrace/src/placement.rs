//! Where a finding's owner runs: its cgroup, the container or systemd unit that cgroup belongs
//! to, and its network namespace, whose addresses the finding's are.
use std::{fs, os::unix::fs::MetadataExt as _};

use crate::cgroup;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The cgroup v2 path (`/system.slice/nginx.service`).
    pub cgroup: Option<String>,
    pub names: cgroup::Names,
    /// The inode of the network namespace (`/proc/PID/ns/net`), as `ip netns identify` and
    /// `lsns` name it.
    pub netns: Option<u64>,
}

impl Placement {
    /// Read from /proc while `pid` runs; what cannot be read stays unknown.
    pub fn of(pid: u32) -> Self {
        let cgroup = cgroup::of_process(pid);
        Self {
            names: cgroup.as_deref().map(cgroup::names).unwrap_or_default(),
            cgroup,
            netns: netns_of(&format!("/proc/{pid}/ns/net")),
        }
    }

    /// Whether the owner runs in another network namespace than leaktrace: its addresses are that
    /// namespace's, which the text report then says.
    pub fn in_other_netns(&self) -> bool {
        self.netns.is_some() && self.netns != netns_of("/proc/self/ns/net")
    }
}

fn netns_of(path: &str) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.ino())
}
