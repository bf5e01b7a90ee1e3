//! The processes descended from the `--pid` ones, from /proc. A prefork server (nginx, Apache,
//! gunicorn, uwsgi, php-fpm, PostgreSQL) forks its workers long before anyone traces it, and
//! its workers, not the master named, accept and hold the connections: with `--follow-children`
//! they are traced like the master, and without it the user is told that its connections escape
//! the trace.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::SocketAddr,
};

use anyhow::{Context as _, Result};
use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};

use crate::format::printable;
use crate::hooks::Tracing;

/// The descendants [`trace_descendants`] found running.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Descendants {
    /// Traced from now on, by pid.
    pub added: Vec<u32>,
    /// Left untraced: no room in the kernel's map.
    pub untraced: usize,
}

/// Hands every process descended from `roots` that runs now to `trace`, which adds it to the
/// kernel's map of traced processes. Call it once the fork hook is live and `roots` are traced:
/// a process forked while /proc is read is then caught by the hook when its parent was traced
/// already, and otherwise by the next reading, which comes whenever the last one added a
/// process. The readings end when one finds nobody new, that is nobody the hook had not added:
/// a busy server forking all along does not keep them going.
pub(crate) fn trace_descendants(
    roots: &[u32],
    trace: &mut dyn FnMut(u32) -> Result<Tracing>,
) -> Result<Descendants> {
    let mut known: BTreeSet<u32> = roots.iter().copied().collect();
    let mut found = Descendants::default();
    loop {
        let mut parents = parents()?;
        // leaktrace itself descends from the shell whose pid the user may name: tracing its own
        // sockets would report on leaktrace, not on the user's processes.
        parents.remove(&std::process::id());
        let mut added_any = false;
        for pid in descendants(&parents, &known) {
            known.insert(pid);
            match trace(pid)? {
                Tracing::Started => {
                    found.added.push(pid);
                    added_any = true;
                }
                Tracing::Already => {}
                Tracing::NoRoom => found.untraced += 1,
            }
        }
        if !added_any {
            found.added.sort_unstable();
            return Ok(found);
        }
    }
}

/// Every running process's parent (zombies, which hold nothing and will not fork, left out).
fn parents() -> Result<HashMap<u32, u32>> {
    let mut parents = HashMap::new();
    for process in procfs::process::all_processes().context("listing processes")? {
        // A process that exits between the listing and the read has no children to miss.
        let Ok(stat) = process.and_then(|process| process.stat()) else {
            continue;
        };
        if !matches!(stat.state, 'Z' | 'X') {
            parents.insert(stat.pid as u32, stat.ppid as u32);
        }
    }
    Ok(parents)
}

/// The processes in `parents` descended from `roots`, but not in `roots`, parents first.
fn descendants(parents: &HashMap<u32, u32>, roots: &BTreeSet<u32>) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, &parent) in parents {
        children.entry(parent).or_default().push(pid);
    }
    let mut found = Vec::new();
    // A root may descend from another root: its subtree is walked once.
    let mut seen = roots.clone();
    let mut next: Vec<u32> = roots.iter().copied().collect();
    while let Some(parent) = next.pop() {
        for &child in children.get(&parent).into_iter().flatten() {
            if seen.insert(child) {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

/// A process named with `--pid` whose listening sockets its descendants hold, and so accept
/// from: a prefork server's master. Untraced, they take its connections out of the trace.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SharedListener {
    pub pid: u32,
    pub comm: String,
    /// Where it listens, on the sockets they share.
    pub addrs: Vec<SocketAddr>,
    pub acceptors: Vec<u32>,
}

impl fmt::Display for SharedListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<String> = self
            .addrs
            .iter()
            .map(|addr| {
                if addr.ip().is_unspecified() {
                    format!(":{}", addr.port())
                } else {
                    addr.to_string()
                }
            })
            .collect();
        let acceptors: Vec<String> = self.acceptors.iter().map(u32::to_string).collect();
        let (pids, accept) = if self.acceptors.len() == 1 {
            ("pid", "accepts")
        } else {
            ("pids", "accept")
        };
        write!(
            f,
            "pid {} ({}) listens on {} but {pids} {} {accept} its connections: add \
             --follow-children to trace them",
            self.pid,
            printable(&self.comm),
            addrs.join(", "),
            acceptors.join(", "),
        )
    }
}

/// Those of `pids` whose listening sockets processes descended from them hold, other than
/// `pids` themselves. What /proc cannot tell (a process gone, unreadable) counts as no listener.
pub(crate) fn shared_listeners(pids: &[u32]) -> Vec<SharedListener> {
    let named: BTreeSet<u32> = pids.iter().copied().collect();
    let Ok(parents) = parents() else {
        return Vec::new();
    };
    let mut shared = Vec::new();
    for &pid in pids {
        let Some((comm, listening)) = listening(pid) else {
            continue;
        };
        let mut addrs = BTreeSet::new();
        let mut acceptors = BTreeSet::new();
        for descendant in descendants(&parents, &BTreeSet::from([pid])) {
            if named.contains(&descendant) {
                continue;
            }
            for inode in socket_inodes(descendant) {
                if let Some(addr) = listening.get(&inode) {
                    addrs.insert(*addr);
                    acceptors.insert(descendant);
                }
            }
        }
        if !acceptors.is_empty() {
            shared.push(SharedListener {
                pid,
                comm,
                addrs: addrs.into_iter().collect(),
                acceptors: acceptors.into_iter().collect(),
            });
        }
    }
    shared
}

/// `pid`'s name and its TCP listening sockets, by inode, with their addresses.
fn listening(pid: u32) -> Option<(String, BTreeMap<u64, SocketAddr>)> {
    let process = Process::new(i32::try_from(pid).ok()?).ok()?;
    let held = socket_inodes(pid);
    // Its own network namespace's tables: a container's server listens in its own.
    let tables = [process.tcp(), process.tcp6()];
    let listening: BTreeMap<u64, SocketAddr> = tables
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry: &TcpNetEntry| {
            entry.state == TcpState::Listen && held.contains(&entry.inode)
        })
        .map(|entry| (entry.inode, entry.local_address))
        .collect();
    if listening.is_empty() {
        return None;
    }
    Some((process.stat().ok()?.comm, listening))
}

/// The inodes of the sockets `pid` holds.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let Some(fds) = i32::try_from(pid)
        .ok()
        .and_then(|pid| Process::new(pid).ok()?.fd().ok())
    else {
        return BTreeSet::new();
    };
    fds.filter_map(|fd| match fd.ok()?.target {
        FDTarget::Socket(inode) => Some(inode),
        _ => None,
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn descendants_are_found_at_any_depth_parents_first() {
        // 1 -> 10 -> 100 -> 1000, 10 -> 101; 2 -> 20; 3 unrelated.
        let parents = HashMap::from([(10, 1), (100, 10), (101, 10), (1000, 100), (20, 2), (30, 3)]);
        let mut found = descendants(&parents, &BTreeSet::from([1, 2]));
        let position = |pid| found.iter().position(|&p| p == pid).unwrap();
        assert!(position(10) < position(100) && position(100) < position(1000));
        found.sort_unstable();
        assert_eq!(found, [10, 20, 100, 101, 1000]);
        // A named process is no descendant of another, but its children are.
        let mut found = descendants(&parents, &BTreeSet::from([1, 100]));
        found.sort_unstable();
        assert_eq!(found, [10, 101, 1000]);
    }

    #[test]
    fn the_warning_names_the_processes_and_the_flag() {
        let shared = SharedListener {
            pid: 100,
            comm: "nginx\x1b".into(),
            addrs: vec!["0.0.0.0:8080".parse().unwrap()],
            acceptors: vec![101, 102],
        };
        assert_eq!(
            shared.to_string(),
            "pid 100 (nginx\\u{1b}) listens on :8080 but pids 101, 102 accept its connections: \
             add --follow-children to trace them"
        );
        let one = SharedListener {
            addrs: vec![
                "127.0.0.1:8080".parse().unwrap(),
                "[::]:8443".parse().unwrap(),
            ],
            acceptors: vec![101],
            ..shared
        };
        assert!(
            one.to_string()
                .contains("listens on 127.0.0.1:8080, :8443 but pid 101 accepts its"),
            "{one}"
        );
    }

    #[test]
    fn this_process_listening_is_seen_in_proc() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (_, listening) = listening(std::process::id()).unwrap();
        assert!(
            listening
                .values()
                .any(|&a| a == listener.local_addr().unwrap()),
            "{listening:?}"
        );
    }
}
