//! Who holds a socket now. A socket's owner is whoever holds an fd for it: the process that
//! accepted or connected it may have passed it on (fork, exec, dup, SCM_RIGHTS) and closed its
//! own copy. /proc/<pid>/fd shows each fd of a socket as `socket:[inode]`; one scan answers for
//! every inode of interest.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use procfs::process::FDTarget;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    pub pid: u32,
    pub fd: i32,
}

/// Every (pid, fd) holding one of `inodes`, by inode; processes that vanish or cannot be read
/// during the scan are passed over.
pub fn find(inodes: &BTreeSet<u64>) -> BTreeMap<u64, Vec<Holder>> {
    let mut found: BTreeMap<u64, Vec<Holder>> = BTreeMap::new();
    if inodes.is_empty() {
        return found;
    }
    let Ok(processes) = procfs::process::all_processes() else {
        return found;
    };
    for process in processes.flatten() {
        let Ok(fds) = process.fd() else {
            continue;
        };
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                if inodes.contains(&inode) {
                    found.entry(inode).or_default().push(Holder {
                        pid: process.pid as u32,
                        fd: fd.fd,
                    });
                }
            }
        }
    }
    for holders in found.values_mut() {
        holders.sort_unstable();
    }
    found
}

/// Whether a process's fd is still the socket it was known to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdHeld {
    Yes,
    /// Closed, or reused for another file.
    No,
    /// The process itself is gone, or a zombie whose fds are released.
    ProcessGone,
}

/// Answers [`FdLookup::holds`] and [`FdLookup::fd_of`] for many sockets, opening each
/// process's /proc entry once and listing its fds at most once.
#[derive(Default)]
pub struct FdLookup {
    processes: HashMap<u32, Option<procfs::process::Process>>,
    /// Per process, the fd of each socket inode it holds (the lowest, where several do).
    sockets: HashMap<u32, HashMap<u64, i32>>,
}

impl FdLookup {
    fn process(&mut self, pid: u32) -> Option<&procfs::process::Process> {
        self.processes
            .entry(pid)
            .or_insert_with(|| live_process(pid))
            .as_ref()
    }

    /// Looks at `/proc/<pid>/fd/<fd>`. Without the socket's inode only a closed fd can be told
    /// apart; an fd reused for another file then passes as held.
    pub fn holds(&mut self, pid: u32, fd: i32, ino: Option<u64>) -> FdHeld {
        let Some(process) = self.process(pid) else {
            return FdHeld::ProcessGone;
        };
        match (process.fd_from_fd(fd), ino) {
            (Ok(info), Some(ino)) if info.target != FDTarget::Socket(ino) => FdHeld::No,
            (Ok(_), _) => FdHeld::Yes,
            (Err(_), _) => FdHeld::No,
        }
    }

    /// The fd by which `pid` holds the socket `ino`, if it does.
    pub fn fd_of(&mut self, pid: u32, ino: u64) -> Option<i32> {
        if !self.sockets.contains_key(&pid) {
            let mut sockets = HashMap::new();
            if let Some(Ok(fds)) = self.process(pid).map(|p| p.fd()) {
                for fd in fds.flatten() {
                    if let FDTarget::Socket(inode) = fd.target {
                        let lowest = sockets.entry(inode).or_insert(fd.fd);
                        *lowest = (*lowest).min(fd.fd);
                    }
                }
            }
            self.sockets.insert(pid, sockets);
        }
        self.sockets.get(&pid)?.get(&ino).copied()
    }
}

/// Whether `pid` runs, neither gone nor a zombie.
pub fn alive(pid: u32) -> bool {
    live_process(pid).is_some()
}

fn live_process(pid: u32) -> Option<procfs::process::Process> {
    procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()
        .filter(|p| p.is_alive())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    /// The inode of this process's socket `fd`.
    pub(crate) fn inode_of(fd: i32) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let link = link.to_string_lossy();
        link.strip_prefix("socket:[")
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a socket: {link}"))
    }

    #[test]
    fn finds_every_fd_of_a_socket_in_this_process() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let duplicate = stream.try_clone().unwrap();
        let pid = std::process::id();
        let inode = inode_of(stream.as_raw_fd());
        assert_eq!(inode_of(duplicate.as_raw_fd()), inode);

        let found = find(&BTreeSet::from([inode]));
        let mut expected = vec![
            Holder {
                pid,
                fd: stream.as_raw_fd(),
            },
            Holder {
                pid,
                fd: duplicate.as_raw_fd(),
            },
        ];
        expected.sort_unstable();
        assert_eq!(found.get(&inode), Some(&expected));
        assert!(find(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn tells_a_held_fd_from_a_closed_or_reused_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let pid = std::process::id();
        let (fd, inode) = (stream.as_raw_fd(), inode_of(stream.as_raw_fd()));
        let holds = |pid, fd, ino| FdLookup::default().holds(pid, fd, ino);
        let other = inode_of(listener.as_raw_fd());
        assert_eq!(holds(pid, fd, Some(inode)), FdHeld::Yes);
        assert_eq!(holds(pid, fd, None), FdHeld::Yes);
        assert_eq!(holds(pid, fd, Some(other)), FdHeld::No, "fd reused");
        drop(stream);
        assert_eq!(holds(pid, fd, Some(inode)), FdHeld::No);
        // Not `fd` itself: the lookup may open /proc on the number just freed.
        assert_eq!(holds(pid, 1 << 20, None), FdHeld::No, "never open");
        // Beyond pid_max: no such process.
        assert_eq!(holds(1 << 23, fd, Some(inode)), FdHeld::ProcessGone);
    }
}
