//! Services as their users name them: `--cgroup` traces every process of a cgroup v2 and of the
//! cgroups below it, those there at start and those that come later, and nothing outside it;
//! `--unit` finds a unit's cgroup; each finding names the cgroup and unit its owner runs in.
//! Privileged like kernel.rs: SKIPPED without root or cgroup v2, unless CI=true or
//! LEAKTRACE_REQUIRE_PRIVILEGED=1 turns that into a failure.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use leaktrace_tests::{
    close_wait_client, is_root, kernel_limits, skip, Accepted, Family, Fixture, Leaktrace,
    FINDING_TIMEOUT, RUN_LIMIT,
};
use serde_json::Value;

const FIXTURE: &str = env!("CARGO_BIN_EXE_leaktrace-fixture");
/// Long enough for a leak of the server outside the cgroup to be reported, wrongly.
const SETTLE: Duration = Duration::from_secs(2);
const CONNS: usize = 2;

/// A cgroup made for one test below the cgroup v2 root, removed at the end with its processes
/// moved back to the root.
struct TestCgroup {
    root: PathBuf,
    dir: PathBuf,
}

impl TestCgroup {
    /// `name` below the root, where cgroup v2 is mounted, we are root and the kernel lets
    /// leaktrace trace a cgroup; `None` (a printed skip, or where the kernel refuses, its checked
    /// refusal) elsewhere.
    fn new(test: &str, name: &str) -> Result<Option<Self>> {
        if !is_root() {
            skip(test, "making a cgroup needs root");
            return Ok(None);
        }
        let Some(root) = cgroup2_root()? else {
            skip(test, "no cgroup v2 hierarchy is mounted");
            return Ok(None);
        };
        if !kernel_limits::traces_cgroups(test)? {
            return Ok(None);
        }
        let dir = root.join(name);
        if dir.exists() {
            release(&root, &dir);
        }
        fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
        Ok(Some(Self { root, dir }))
    }

    /// Its path as /proc/PID/cgroup and leaktrace's findings spell it.
    fn path(&self) -> String {
        let relative = self.dir.strip_prefix(&self.root).unwrap_or(&self.dir);
        format!("/{}", relative.display())
    }

    /// A close_wait server (incident 1) started inside the cgroup: its shell joins it, then
    /// becomes the server, as a service manager starts a service's process.
    fn close_wait_server(&self) -> Result<Fixture> {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {FIXTURE} close-wait-server --conns {CONNS}",
            self.dir.display()
        );
        Fixture::server("/bin/sh", &["-c", &script])
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        release(&self.root, &self.dir);
    }
}

/// Moves the processes of `dir` and the cgroups below it to `root`, then removes them.
fn release(root: &Path, dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                release(root, &entry.path());
            }
        }
    }
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines() {
            let _ = fs::write(root.join("cgroup.procs"), pid);
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Where cgroup v2 is mounted, from /proc/self/mountinfo (its fifth field; the filesystem type
/// follows the ` - ` separator).
fn cgroup2_root() -> Result<Option<PathBuf>> {
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mounts.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        (rest.split_whitespace().next()? == "cgroup2")
            .then(|| fields.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    }))
}

/// The (fd, peer) of each finding, to compare with what the server accepted.
fn found(leaks: &[&Value]) -> BTreeSet<Accepted> {
    leaks
        .iter()
        .map(|f| Accepted {
            fd: f["fd"].as_i64().unwrap_or(-1),
            peer: f["remote"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// A service's server there at start and one started later are both traced, each finding names
/// the cgroup, and a server outside the cgroup is not traced at all.
#[test]
fn cgroup_traces_its_processes_now_and_later_and_nothing_else() -> Result<()> {
    let test = "cgroup_traces_its_processes_now_and_later_and_nothing_else";
    let Some(cgroup) = TestCgroup::new(test, &format!("leaktrace-test-{}", std::process::id()))?
    else {
        return Ok(());
    };
    let mut before = cgroup.close_wait_server()?;
    let mut outside = leaktrace_tests::close_wait_server(FIXTURE, Family::V4, CONNS)?;
    // Relative to the cgroup root, as /proc/PID/cgroup spells it.
    let Some(mut leaktrace) =
        Leaktrace::start_with(test, &[], RUN_LIMIT, &["--cgroup", &cgroup.path()])?
    else {
        return Ok(());
    };
    let mut later = cgroup.close_wait_server()?;
    let mut accepted = Vec::new();
    for server in [&mut before, &mut later, &mut outside] {
        close_wait_client(FIXTURE, server, Family::V4, CONNS)?;
        accepted.push(server.accepted(CONNS)?);
        server.lines("EOF ", CONNS)?;
    }
    leaktrace.wait_for_leaks(2 * CONNS, FINDING_TIMEOUT)?;
    leaktrace.settle(SETTLE)?;
    let report = leaktrace.stop()?;

    assert_eq!(
        report.leaks().len(),
        2 * CONNS,
        "the two servers in the cgroup leak {CONNS} each, the one outside is not traced\n{report}"
    );
    for (server, accepted) in [(&before, &accepted[0]), (&later, &accepted[1])] {
        let leaks = report.leaks_of(server.pid());
        let expected: BTreeSet<Accepted> = accepted.iter().cloned().collect();
        assert_eq!(found(&leaks), expected, "pid {}\n{report}", server.pid());
        for f in leaks {
            assert_eq!(f["kind"], "close_wait", "{f}\n{report}");
            assert_eq!(f["cgroup"], cgroup.path().as_str(), "{f}\n{report}");
            assert_eq!(f["container"], Value::Null, "{f}\n{report}");
        }
    }
    assert!(
        report.leaks_of(outside.pid()).is_empty(),
        "pid {} is outside the cgroup\n{report}",
        outside.pid()
    );
    Ok(())
}

/// `--unit NAME` finds the unit's cgroup (systemd knows no unit of that name, running or not:
/// found by its name in the cgroup tree), and each finding names the unit.
#[test]
fn unit_traces_the_units_cgroup_and_names_it() -> Result<()> {
    let test = "unit_traces_the_units_cgroup_and_names_it";
    let unit = format!("leaktrace-test-{}", std::process::id());
    let Some(cgroup) = TestCgroup::new(test, &format!("leaktrace-test.slice/{unit}.service"))?
    else {
        return Ok(());
    };
    let mut server = cgroup.close_wait_server()?;
    let Some(mut leaktrace) = Leaktrace::start_with(test, &[], RUN_LIMIT, &["--unit", &unit])?
    else {
        return Ok(());
    };
    close_wait_client(FIXTURE, &server, Family::V4, CONNS)?;
    let accepted = server.accepted(CONNS)?;
    server.lines("EOF ", CONNS)?;
    leaktrace.wait_for_leaks(CONNS, FINDING_TIMEOUT)?;
    let report = leaktrace.stop()?;

    let leaks = report.leaks_of(server.pid());
    assert_eq!(leaks.len(), report.leaks().len(), "{report}");
    assert_eq!(
        found(&leaks),
        accepted.into_iter().collect::<BTreeSet<_>>(),
        "{report}"
    );
    for f in leaks {
        assert_eq!(
            f["unit"],
            format!("{unit}.service").as_str(),
            "{f}\n{report}"
        );
        assert_eq!(f["cgroup"], cgroup.path().as_str(), "{f}\n{report}");
    }
    Ok(())
}
