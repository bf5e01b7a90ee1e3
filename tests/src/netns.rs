//! What tests of processes in a network namespace of their own (a container's) need: that
//! namespace's identity, and the findings of one process among those of a whole host, as
//! leaktrace tracing every process reports them.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::child::Wait;
use crate::{Leaktrace, Report};

/// The inode of the network namespace `pid` is in: what `ip netns identify`, `lsns` and
/// `readlink /proc/<pid>/ns/net` (`net:[<inode>]`) name it by.
pub fn netns_inode(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/ns/net");
    Ok(std::fs::metadata(&path)
        .with_context(|| format!("stat {path}"))?
        .ino())
}

fn is_leak_of(line: &Value, pid: u32) -> bool {
    line["type"] == "leak" && line["pid"] == pid
}

impl Leaktrace {
    /// Waits until leaktrace has reported at least `n` leaks of `pid`, whatever else it reports.
    pub fn wait_for_leaks_of(&mut self, pid: u32, n: usize, timeout: Duration) -> Result<()> {
        let leaks = |lines: &[String]| {
            lines
                .iter()
                .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| is_leak_of(&v, pid)))
                .count()
        };
        match self.run.stdout.wait_for(timeout, |lines| leaks(lines) >= n) {
            Wait::Met => Ok(()),
            Wait::Closed | Wait::TimedOut => bail!(
                "expected {n} leak lines of pid {pid} within {timeout:?}, got {}; stdout:\n{}\nstderr:\n{}",
                leaks(&self.run.stdout.seen),
                self.run.stdout.seen.join("\n"),
                self.run.stderr()
            ),
        }
    }
}

impl Report {
    /// The findings that name `pid` as the owner.
    pub fn leaks_of(&self, pid: u32) -> Vec<&Value> {
        self.lines.iter().filter(|v| is_leak_of(v, pid)).collect()
    }
}
