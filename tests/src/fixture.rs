//! The `leaktrace-fixture` socket programs: servers that leak the way the incidents did, and
//! their clients.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::child::Running;

/// What the incident 3 client sends after the server's FIN: `RSET\r\nQUIT\r\n`.
pub const LATE_BYTES: usize = 12;

const FIXTURE_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A server subcommand of `leaktrace-fixture`, listening.
pub struct Fixture {
    run: Running,
    port: u16,
}

/// An `ACCEPTED fd=<fd> peer=<addr>` line of a fixture server.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Accepted {
    pub fd: i64,
    pub peer: String,
}

impl Fixture {
    pub fn server(fixture: &str, args: &[&str]) -> Result<Fixture> {
        let mut run = Running::spawn(Path::new(fixture), args)?;
        let ready = run.lines_starting("READY ", 1, FIXTURE_TIMEOUT)?;
        let port = ready[0]["READY ".len()..]
            .parse()
            .with_context(|| format!("bad line from {}: {:?}", run.name, ready[0]))?;
        Ok(Fixture { run, port })
    }

    pub fn pid(&self) -> u32 {
        self.run.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends the server `signal`: SIGSTOP and SIGCONT make it a server too busy to accept for a
    /// while, its new connections waiting in its listener's queue.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid())?;
        // SAFETY: kill has no memory-safety preconditions; the server is reaped only when this
        // handle drops, so the pid cannot have been reused.
        let ret = unsafe { libc::kill(pid, signal) };
        ensure!(
            ret == 0,
            "cannot signal {}: {}",
            self.run.name,
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// The first `n` connections the server accepted.
    pub fn accepted(&mut self, n: usize) -> Result<Vec<Accepted>> {
        self.lines("ACCEPTED ", n)?
            .iter()
            .map(|line| {
                let parsed = line
                    .strip_prefix("ACCEPTED fd=")
                    .and_then(|rest| rest.split_once(" peer="))
                    .and_then(|(fd, peer)| Some((fd.parse().ok()?, peer)));
                let (fd, peer) =
                    parsed.with_context(|| format!("bad line from {}: {line:?}", self.run.name))?;
                Ok(Accepted {
                    fd,
                    peer: peer.to_owned(),
                })
            })
            .collect()
    }

    /// Waits for `n` stdout lines starting with `prefix` (e.g. `EOF ` once per connection).
    pub fn lines(&mut self, prefix: &str, n: usize) -> Result<Vec<String>> {
        self.run.lines_starting(prefix, n, FIXTURE_TIMEOUT)
    }
}

/// A finished `leaktrace-fixture client` run.
pub struct ClientRun {
    pub pid: u32,
    /// The client's end of each connection, as the server sees the peer.
    pub local_addrs: Vec<String>,
}

/// Runs `leaktrace-fixture client <args>` to completion.
pub fn run_client(fixture: &str, args: &[&str]) -> Result<ClientRun> {
    let mut run = Running::spawn(Path::new(fixture), &[&["client"], args].concat())?;
    let status = run.exit(CLIENT_TIMEOUT)?;
    ensure!(
        status.success(),
        "{} failed with {status}; stderr:\n{}",
        run.name,
        run.stderr()
    );
    let local_addrs = run
        .stdout
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("CONNECTED local="))
        .map(str::to_owned)
        .collect();
    Ok(ClientRun {
        pid: run.child.id(),
        local_addrs,
    })
}

/// The loopback address family of a fixture's sockets.
#[derive(Clone, Copy)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Family::V4 => &[],
            Family::V6 => &["--ipv6"],
        }
    }

    /// How leaktrace must render a loopback endpoint of this family.
    pub fn endpoint(self, port: u16) -> String {
        match self {
            Family::V4 => format!("127.0.0.1:{port}"),
            Family::V6 => format!("[::1]:{port}"),
        }
    }
}

/// Incident 1's server: takes `conns` connections, reads their requests and never closes them.
pub fn close_wait_server(fixture: &str, family: Family, conns: usize) -> Result<Fixture> {
    let conns = conns.to_string();
    Fixture::server(
        fixture,
        &[&["close-wait-server", "--conns", &conns], family.flags()].concat(),
    )
}

/// Incident 1's client: sends a request, then closes. The pause lets the server drain the request
/// and sleep in read() before the FIN arrives, so the FIN is processed in softirq in the client's
/// context instead of from the socket backlog in the server's; only then does a test of
/// attribution test anything.
pub fn close_wait_client(
    fixture: &str,
    server: &Fixture,
    family: Family,
    conns: usize,
) -> Result<ClientRun> {
    close_wait_clients(fixture, server, family, conns, 1)
}

/// [`close_wait_client`]'s connections, `concurrency` at a time: for many of them.
pub fn close_wait_clients(
    fixture: &str,
    server: &Fixture,
    family: Family,
    conns: usize,
    concurrency: usize,
) -> Result<ClientRun> {
    let (port, conns) = (server.port().to_string(), conns.to_string());
    let concurrency = concurrency.to_string();
    let args = [
        "--port",
        &port,
        "--send",
        "5",
        "--pause-ms",
        "100",
        "--conns",
        &conns,
        "--concurrency",
        &concurrency,
    ];
    run_client(fixture, &[&args, family.flags()].concat())
}
