//! Who holds a socket now. A socket's owner is whoever holds an fd for it: the process that
//! accepted or connected it may have passed it on (fork, exec, dup, SCM_RIGHTS) and closed its
//! own copy. /proc/<pid>/fd shows each fd of a socket as `socket:[inode]`; one scan answers for
//! every inode of interest.
use std::collections::{BTreeMap, BTreeSet};

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

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    fn inode_of(fd: i32) -> u64 {
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
}
