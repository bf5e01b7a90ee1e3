//! Privileged end-to-end tests: incidents 1 and 3 in a network namespace of their own, as in a
//! container, server and client both in it, talking over its loopback; leaktrace on the host,
//! tracing every process or the server's pid. The findings must be those a server on the host
//! gets, with the addresses as the namespace sees them: each namespace gives its loopback an
//! address of RFC 5737's TEST-NET-3 that the host does not have. Each finding also names the
//! namespace (`netns`, its inode), and a well-behaved server in one gets no finding.
//!
//! The fixture makes the namespace itself (unshare, then ioctls), so these run in the VM
//! guests too, which have no iproute2. Nothing names the namespace: it goes away with the
//! fixture processes, which the harness kills however a test ends. Without root (or where no
//! namespace can be made) they print `SKIPPED`, unless CI=true or
//! LEAKTRACE_REQUIRE_PRIVILEGED=1 turns that into a failure.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use leaktrace_tests::netns::netns_inode;
use leaktrace_tests::{
    comm, kernel_socket, run_client, skip, Accepted, ClientRun, Fixture, Leaktrace, Report,
    FINDING_TIMEOUT, LATE_BYTES, LEAK_AFTER_MS, RUN_LIMIT, SETTLE, TCP_CLOSE, TCP_CLOSE_WAIT,
};
use serde_json::Value;

const FIXTURE: &str = env!("CARGO_BIN_EXE_leaktrace-fixture");

/// Whom leaktrace traces.
#[derive(Clone, Copy)]
enum Scope {
    /// `--pid` of the server in the namespace.
    Server,
    /// Every process of the host: those in other namespaces too.
    Everything,
}

/// A fixture server in a network namespace of its own, on `host` there.
struct Namespaced {
    server: Fixture,
    host: Ipv4Addr,
}

impl Namespaced {
    /// Starts `leaktrace-fixture <args>` in a new namespace whose loopback also has `host`.
    /// `None`: skipped, no namespace can be made here.
    fn start(test: &str, host: Ipv4Addr, args: &[&str]) -> Result<Option<Namespaced>> {
        // Were it the host's too, the findings' addresses would not show whose view they are.
        ensure!(
            TcpListener::bind((host, 0))
                .is_err_and(|e| e.kind() == io::ErrorKind::AddrNotAvailable),
            "the host has {host} itself: it would not tell the namespace's addresses from its own"
        );
        let probe = Command::new(FIXTURE)
            .args(["exit", "--netns", "new"])
            .output()
            .context("starting the fixture")?;
        if !probe.status.success() {
            let stderr = String::from_utf8_lossy(&probe.stderr);
            let why = stderr.lines().next().unwrap_or_default();
            skip(test, &format!("cannot make a network namespace: {why}"));
            return Ok(None);
        }
        let host_arg = host.to_string();
        let args = [args, &["--netns", "new", "--host", &host_arg]].concat();
        let server = Fixture::server(FIXTURE, &args)?;
        Ok(Some(Namespaced { server, host }))
    }

    /// Runs `leaktrace-fixture client <args>` to completion in the server's namespace.
    fn client(&self, args: &[&str]) -> Result<ClientRun> {
        let port = self.server.port().to_string();
        let netns = format!("/proc/{}/ns/net", self.server.pid());
        let host = self.host.to_string();
        let args = [args, &["--port", &port, "--netns", &netns, "--host", &host]].concat();
        run_client(FIXTURE, &args)
    }

    /// The server's end of its connections, as the namespace sees it.
    fn local(&self) -> String {
        format!("{}:{}", self.host, self.server.port())
    }

    fn trace(&self, test: &str, scope: Scope) -> Result<Option<Leaktrace>> {
        let pids = match scope {
            Scope::Server => vec![self.server.pid()],
            Scope::Everything => vec![],
        };
        Leaktrace::start(test, &pids, RUN_LIMIT)
    }
}

/// What a user checks for any finding in the namespace: the owner (pid, comm, fd), the
/// connection it accepted, with the addresses the namespace has, and the finding's age.
fn assert_owned_by_server(
    f: &Value,
    ns: &Namespaced,
    accepted: &Accepted,
    report: &Report,
) -> Result<()> {
    let pid = ns.server.pid();
    assert_eq!(f["pid"], pid, "not blamed on the server: {f}\n{report}");
    let comm = comm(pid)?;
    assert_eq!(f["comm"], comm.as_str(), "{f}\n{report}");
    assert_eq!(f["fd"], accepted.fd, "{f}\n{report}");
    assert_eq!(f["local"], ns.local(), "{f}\n{report}");
    assert_eq!(f["remote"], accepted.peer.as_str(), "{f}\n{report}");
    assert_eq!(
        f["direction"], "in",
        "the server accepted it: {f}\n{report}"
    );
    let age = f["age_ms"].as_u64();
    assert!(
        age.is_some_and(|age| age >= LEAK_AFTER_MS),
        "finding reported before --leak-after {LEAK_AFTER_MS}ms: {f}\n{report}"
    );
    Ok(())
}

/// Last, so that every other claim is checked before it: the finding names the server's
/// network namespace by its inode.
fn assert_netns(leaks: &[&Value], ns: &Namespaced, report: &Report) -> Result<()> {
    let inode = netns_inode(ns.server.pid())?;
    ensure!(
        inode != netns_inode(std::process::id())?,
        "the server is in the host's namespace"
    );
    for f in leaks {
        assert_eq!(
            f["netns"],
            inode,
            "not the server's namespace (/proc/{}/ns/net is net:[{inode}]): {f}\n{report}",
            ns.server.pid()
        );
    }
    Ok(())
}

/// Every endpoint the client connected from, as the namespace's sockets name it: on the
/// namespace's own address, not the host's loopback.
fn assert_client_in_namespace(client: &ClientRun, ns: &Namespaced, accepted: &[Accepted]) {
    let clients: BTreeSet<&str> = client.local_addrs.iter().map(String::as_str).collect();
    let peers: BTreeSet<&str> = accepted.iter().map(|a| a.peer.as_str()).collect();
    assert_eq!(clients, peers, "the server's peers are not the client");
    let prefix = format!("{}:", ns.host);
    assert!(
        clients.iter().all(|c| c.starts_with(&prefix)),
        "the client did not connect from {}: {clients:?}",
        ns.host
    );
}

/// Incident 1 in the namespace: the server reads each request to its end and never closes.
fn close_wait(test: &str, host: Ipv4Addr, scope: Scope) -> Result<()> {
    const CONNS: usize = 2;
    let conns = CONNS.to_string();
    let args = ["close-wait-server", "--conns", &conns];
    let Some(mut ns) = Namespaced::start(test, host, &args)? else {
        return Ok(());
    };
    let Some(mut leaktrace) = ns.trace(test, scope)? else {
        return Ok(());
    };
    // The pause lets the server sleep in read() before the FIN comes, as in kernel.rs.
    let client = ns.client(&["--send", "5", "--pause-ms", "100", "--conns", &conns])?;
    let accepted = ns.server.accepted(CONNS)?;
    ns.server.lines("EOF ", CONNS)?;
    let pid = ns.server.pid();
    leaktrace.wait_for_leaks_of(pid, CONNS, FINDING_TIMEOUT)?;
    leaktrace.settle(SETTLE)?;
    let report = leaktrace.stop()?;

    assert_client_in_namespace(&client, &ns, &accepted);
    let leaks = report.leaks_of(pid);
    assert_eq!(
        leaks.len(),
        CONNS,
        "one finding per stuck connection\n{report}"
    );
    let mut found = BTreeSet::new();
    for f in &leaks {
        assert_eq!(f["kind"], "close_wait", "{f}\n{report}");
        let fd = f["fd"].as_i64().unwrap_or(-1);
        let held = accepted.iter().find(|a| a.fd == fd);
        let held = held.unwrap_or_else(|| panic!("not an fd the server accepted: {f}\n{report}"));
        assert_owned_by_server(f, &ns, held, &report)?;
        assert_eq!(f["state"], "CLOSE_WAIT", "{f}\n{report}");
        // The server read up to and including the FIN: only the close is missing.
        assert_eq!(f["unread_bytes"], 0, "{f}\n{report}");
        // Ground truth through the server's fd table: that fd is the CLOSE_WAIT socket.
        assert_eq!(
            kernel_socket(pid, fd)?,
            (TCP_CLOSE_WAIT, 0),
            "{f}\n{report}"
        );
        found.insert(fd);
    }
    assert_eq!(found.len(), CONNS, "two findings for one fd\n{report}");
    assert!(
        report.leaks_of(client.pid).is_empty(),
        "the client closed its ends\n{report}"
    );
    assert_netns(&leaks, &ns, &report)
}

/// Incident 3 in the namespace: the server replies, shuts its side down and never reads the
/// client's late command nor its FIN.
fn shut_wr_unread(test: &str, host: Ipv4Addr, scope: Scope) -> Result<()> {
    let late = LATE_BYTES.to_string();
    let args = ["shut-wr-server", "--mode", "never-read", "--expect", &late];
    let Some(mut ns) = Namespaced::start(test, host, &args)? else {
        return Ok(());
    };
    let Some(mut leaktrace) = ns.trace(test, scope)? else {
        return Ok(());
    };
    let client = ns.client(&["--wait-eof", "--send", &late])?;
    let accepted = ns.server.accepted(1)?;
    let pid = ns.server.pid();
    leaktrace.wait_for_leaks_of(pid, 1, FINDING_TIMEOUT)?;
    leaktrace.settle(SETTLE)?;
    let report = leaktrace.stop()?;

    assert_client_in_namespace(&client, &ns, &accepted);
    // Control: the kernel agrees the connection is over with the late bytes still queued.
    assert_eq!(
        kernel_socket(pid, accepted[0].fd)?,
        (TCP_CLOSE, LATE_BYTES),
        "the fixture did not reproduce incident 3"
    );
    let leaks = report.leaks_of(pid);
    assert_eq!(leaks.len(), 1, "one half-closed socket leaked\n{report}");
    let f = leaks[0];
    assert_eq!(f["kind"], "shut_wr_unread", "{report}");
    assert_owned_by_server(f, &ns, &accepted[0], &report)?;
    assert_eq!(f["state"], "CLOSE", "only the fd holds it\n{report}");
    assert_eq!(f["unread_bytes"], LATE_BYTES, "{report}");
    assert_eq!(f["eof_unread"], true, "{report}");
    assert_eq!(f["bytes_after_shutdown"], LATE_BYTES, "{report}");
    assert!(
        report.leaks_of(client.pid).is_empty(),
        "the client closed its end\n{report}"
    );
    assert_netns(&leaks, &ns, &report)
}

/// A well-behaved server in the namespace: no finding, though leaktrace saw every connection,
/// by the namespace's address (otherwise "no finding" would hold trivially).
fn echo(test: &str, host: Ipv4Addr, scope: Scope) -> Result<()> {
    const CONNS: u64 = 50;
    let Some(ns) = Namespaced::start(test, host, &["echo-server"])? else {
        return Ok(());
    };
    let Some(mut leaktrace) = ns.trace(test, scope)? else {
        return Ok(());
    };
    let conns = CONNS.to_string();
    let client = ns.client(&["--send", "64", "--echo", "--conns", &conns])?;
    leaktrace.settle(SETTLE)?;
    let report = leaktrace.stop()?;

    for pid in [ns.server.pid(), client.pid] {
        assert!(
            report.leaks_of(pid).is_empty(),
            "false positive for pid {pid} in the namespace\n{report}"
        );
    }
    let per_remote = report.stats()["per_remote"].as_array();
    let accepted = per_remote.and_then(|rows| {
        rows.iter()
            .find(|r| r["remote"] == host.to_string() && r["direction"] == "in")
    });
    let accepted =
        accepted.unwrap_or_else(|| panic!("no connections accepted from {host} counted\n{report}"));
    assert_eq!(accepted["connections"], CONNS, "{report}");
    assert_eq!(accepted["leaks_open"], 0, "{report}");
    Ok(())
}

/// The namespaces' own addresses, in 203.0.113.0/24 (TEST-NET-3, RFC 5737): one per test, so
/// that a run tracing every process tells its connections from those of the tests beside it.
fn test_net(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, host)
}

#[test]
fn close_wait_in_netns_traced_by_pid() -> Result<()> {
    close_wait(
        "close_wait_in_netns_traced_by_pid",
        test_net(1),
        Scope::Server,
    )
}

#[test]
fn close_wait_in_netns_traced_everywhere() -> Result<()> {
    let test = "close_wait_in_netns_traced_everywhere";
    close_wait(test, test_net(2), Scope::Everything)
}

#[test]
fn shut_wr_unread_in_netns_traced_by_pid() -> Result<()> {
    let test = "shut_wr_unread_in_netns_traced_by_pid";
    shut_wr_unread(test, test_net(3), Scope::Server)
}

#[test]
fn shut_wr_unread_in_netns_traced_everywhere() -> Result<()> {
    let test = "shut_wr_unread_in_netns_traced_everywhere";
    shut_wr_unread(test, test_net(4), Scope::Everything)
}

#[test]
fn echo_in_netns_reports_no_leak_traced_by_pid() -> Result<()> {
    let test = "echo_in_netns_reports_no_leak_traced_by_pid";
    echo(test, test_net(5), Scope::Server)
}

#[test]
fn echo_in_netns_reports_no_leak_traced_everywhere() -> Result<()> {
    let test = "echo_in_netns_reports_no_leak_traced_everywhere";
    echo(test, test_net(6), Scope::Everything)
}
