//! Who holds a socket now. A socket's owner is whoever holds an fd for it: the process that
//! accepted or connected it may have passed it on (fork, exec, dup, SCM_RIGHTS) and closed its
//! own copy. /proc/<pid>/fd shows each fd of a socket as `socket:[inode]`; one scan answers for
//! every inode of interest.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Fds;

use procfs::{
    process::{FDTarget, Process},
    ProcError,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Holder {
    pub pid: u32,
    pub fd: i32,
}

/// A /proc read failed for want of leaktrace's own resources (fds, memory: idle `--metrics`
/// clients can take every fd): it tells nothing about the process, and nothing may be concluded
/// from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unreadable;

/// Whether a /proc read failed for want of leaktrace's own resources. Any other failure means
/// that what it read is gone (the process, the fd), or could not be read in passing.
fn unreadable(e: &ProcError) -> bool {
    matches!(
        e,
        ProcError::Io(e, _) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM))
    )
}

/// Every (pid, fd) holding one of `inodes`, by inode; processes and fds that vanish during the
/// scan are passed over. `Unreadable`: a holder may be missing.
pub(crate) fn find(inodes: &BTreeSet<u64>) -> Result<BTreeMap<u64, Vec<Holder>>, Unreadable> {
    let mut found: BTreeMap<u64, Vec<Holder>> = BTreeMap::new();
    if inodes.is_empty() {
        return Ok(found);
    }
    let processes = match procfs::process::all_processes() {
        Ok(processes) => processes,
        Err(e) if unreadable(&e) => return Err(Unreadable),
        Err(_) => return Ok(found),
    };
    for process in processes {
        let fds = match process.and_then(|process| Ok((process.pid, process.fd()?))) {
            Ok(fds) => fds,
            Err(e) if unreadable(&e) => return Err(Unreadable),
            Err(_) => continue,
        };
        let (pid, fds) = fds;
        for fd in fds {
            let fd = match fd {
                Ok(fd) => fd,
                Err(e) if unreadable(&e) => return Err(Unreadable),
                Err(_) => continue,
            };
            if let FDTarget::Socket(inode) = fd.target {
                if inodes.contains(&inode) {
                    found.entry(inode).or_default().push(Holder {
                        pid: pid as u32,
                        fd: fd.fd,
                    });
                }
            }
        }
    }
    for holders in found.values_mut() {
        holders.sort_unstable();
    }
    Ok(found)
}

/// Whether a process's fd is still the socket it was known to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FdHeld {
    Yes,
    /// Closed, or reused for another file.
    No,
    /// The process itself is gone, or a zombie whose fds are released.
    ProcessGone,
    /// /proc could not be read (see [`Unreadable`]).
    Unknown,
}

/// Answers [`FdLookup::holds`] and [`FdLookup::fd_of`] for many sockets, opening each
/// process's /proc entry once and listing its fds at most once.
#[derive(Default)]
pub(crate) struct FdLookup {
    processes: HashMap<u32, Looked>,
    /// Per process, the fd of each socket inode it holds (the lowest, where several do).
    sockets: HashMap<u32, HashMap<u64, i32>>,
}

impl FdLookup {
    fn process(&mut self, pid: u32) -> &Looked {
        self.processes.entry(pid).or_insert_with(|| look_up(pid))
    }
}

impl Fds for FdLookup {
    /// Looks at `/proc/<pid>/fd/<fd>`. Without the socket's inode only a closed fd can be told
    /// apart; an fd reused for another file then passes as held.
    fn holds(&mut self, pid: u32, fd: i32, ino: Option<u64>) -> FdHeld {
        let process = match self.process(pid) {
            Looked::Alive(process) => process,
            Looked::Gone => return FdHeld::ProcessGone,
            Looked::Unknown => return FdHeld::Unknown,
        };
        match (process.fd_from_fd(fd), ino) {
            (Ok(info), Some(ino)) if info.target != FDTarget::Socket(ino) => FdHeld::No,
            (Ok(_), _) => FdHeld::Yes,
            (Err(e), _) if unreadable(&e) => FdHeld::Unknown,
            (Err(_), _) => FdHeld::No,
        }
    }

    /// The fd by which `pid` holds the socket `ino`, if it does; none if `pid` is gone.
    fn fd_of(&mut self, pid: u32, ino: u64) -> Result<Option<i32>, Unreadable> {
        if !self.sockets.contains_key(&pid) {
            let mut sockets = HashMap::new();
            let fds = match self.process(pid) {
                Looked::Alive(process) => match process.fd() {
                    Ok(fds) => Some(fds),
                    Err(e) if unreadable(&e) => return Err(Unreadable),
                    Err(_) => None,
                },
                Looked::Gone => None,
                Looked::Unknown => return Err(Unreadable),
            };
            for fd in fds.into_iter().flatten() {
                let fd = match fd {
                    Ok(fd) => fd,
                    Err(e) if unreadable(&e) => return Err(Unreadable),
                    Err(_) => continue,
                };
                if let FDTarget::Socket(inode) = fd.target {
                    let lowest = sockets.entry(inode).or_insert(fd.fd);
                    *lowest = (*lowest).min(fd.fd);
                }
            }
            self.sockets.insert(pid, sockets);
        }
        Ok(self.sockets.get(&pid).and_then(|s| s.get(&ino)).copied())
    }
}

/// What /proc says of a process.
enum Looked {
    /// Running, neither gone nor a zombie.
    Alive(Process),
    /// Gone, or a zombie, whose fds are released.
    Gone,
    /// See [`Unreadable`].
    Unknown,
}

fn look_up(pid: u32) -> Looked {
    let Ok(pid) = i32::try_from(pid) else {
        return Looked::Gone;
    };
    let process = match Process::new(pid) {
        Ok(process) => process,
        Err(e) if unreadable(&e) => return Looked::Unknown,
        Err(_) => return Looked::Gone,
    };
    match process.stat() {
        Ok(stat) if matches!(stat.state, 'Z' | 'X') => Looked::Gone,
        Ok(_) => Looked::Alive(process),
        Err(e) if unreadable(&e) => Looked::Unknown,
        Err(_) => Looked::Gone,
    }
}

/// Whether `pid` is gone (or a zombie); not when leaktrace lacks the resources to read /proc.
pub(crate) fn gone(pid: u32) -> bool {
    matches!(look_up(pid), Looked::Gone)
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
        assert_eq!(found.unwrap().get(&inode), Some(&expected));
        assert!(find(&BTreeSet::new()).unwrap().is_empty());
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

    /// Set in the copy of this test binary that runs with no fd to spare.
    const OUT_OF_FDS: &str = "LEAKTRACE_TEST_OUT_OF_FDS";

    /// leaktrace out of fds (idle `--metrics` clients can take them all) cannot read /proc: that
    /// must not pass for processes gone and fds closed, which ended sessions and resolved leaks.
    #[test]
    fn unreadable_proc_is_neither_an_exit_nor_a_close() {
        if std::env::var_os(OUT_OF_FDS).is_none() {
            // The fd limit is per process: lowered in a copy of this test, not in the harness.
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "host::holders::tests::unreadable_proc_is_neither_an_exit_nor_a_close",
                ])
                .env(OUT_OF_FDS, "1")
                .output()
                .unwrap();
            // Its output is not passed on: a harness counting "test result" lines would count
            // this test twice.
            assert!(
                child.status.success(),
                "{}",
                String::from_utf8_lossy(&child.stdout)
            );
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (pid, fd) = (std::process::id(), listener.as_raw_fd());
        let inode = inode_of(fd);
        // The lowest free fd becomes the limit: every open from here on fails with EMFILE.
        // SAFETY: F_DUPFD returns a new fd or -1; the new one is closed at once.
        let free = unsafe { libc::fcntl(0, libc::F_DUPFD, 0) };
        assert!(free > 0);
        // SAFETY: closing the fd just made.
        unsafe { libc::close(free) };
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid rlimit for the calls' duration.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            limit.rlim_cur = free as libc::rlim_t;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }

        assert!(!gone(pid), "this process runs");
        let holds = FdLookup::default().holds(pid, fd, Some(inode));
        assert_eq!(holds, FdHeld::Unknown);
        assert_eq!(FdLookup::default().fd_of(pid, inode), Err(Unreadable));
        assert_eq!(find(&BTreeSet::from([inode])), Err(Unreadable));
    }
}
