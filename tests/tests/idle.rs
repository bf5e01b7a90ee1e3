//! Incident 2: a proxy pipes a client to an upstream and never passes the client's half-close
//! on, so the upstream connection stays ESTABLISHED, silent, with no timer. leaktrace must name
//! the proxy's upstream fd and the client socket that half-closed, and stay quiet when the proxy
//! keeps the upstream connection under keepalive, passes the end-of-stream on, or closes its
//! client and keeps the upstream connection in a pool. Privileged like kernel.rs: SKIPPED
//! without root unless CI=true.

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use leaktrace_tests::{
    kernel_connections_to, kernel_limits, kernel_socket, run_client, ClientRun, Fixture, Leaktrace,
    Report, TCP_ESTABLISHED,
};

const FIXTURE: &str = env!("CARGO_BIN_EXE_leaktrace-fixture");

/// Short, so the tests need not wait a minute; long against loopback round trips.
const IDLE_AFTER: &str = "1s";

/// Long enough for a socket idle past IDLE_AFTER to be sampled (once a second) and reported.
const SETTLE: Duration = Duration::from_secs(4);

/// The proxy's upstream connection, as its `UPSTREAM` line names it, and the proxy's fd for
/// the client it was opened for.
struct Upstream {
    fd: i64,
    local: String,
    client_fd: i64,
}

/// An echo server as the upstream (it answers until the end-of-stream, then closes), the proxy
/// in front of it with `options`, and leaktrace tracing the proxy. `None`: skipped.
fn start(test: &str, options: &[&str]) -> Result<Option<(Fixture, Fixture, Leaktrace)>> {
    let upstream = Fixture::server(FIXTURE, &["echo-server"])?;
    let port = upstream.port().to_string();
    let proxy = Fixture::server(FIXTURE, &[&["proxy", "--port", &port], options].concat())?;
    let leaktrace =
        Leaktrace::start_with(test, &[proxy.pid()], "60s", &["--idle-after", IDLE_AFTER])?;
    Ok(leaktrace.map(|leaktrace| (upstream, proxy, leaktrace)))
}

/// One client through the proxy: 8 bytes there and back, then its half-close, then it leaves
/// without waiting for the proxy's end. Returns the client's address and the upstream
/// connection.
fn client_half_closes(proxy: &mut Fixture) -> Result<(String, Upstream)> {
    let client = half_closing_client(proxy.port())?.local_addrs.remove(0);
    let upstream = upstream_of(proxy, &client)?;
    Ok((client, upstream))
}

fn half_closing_client(proxy_port: u16) -> Result<ClientRun> {
    let port = proxy_port.to_string();
    run_client(
        FIXTURE,
        &[
            "--port",
            &port,
            "--send",
            "8",
            "--echo",
            "--half-close",
            "--leave",
        ],
    )
}

/// The upstream connection the proxy opened for its client at `client` (the client's address):
/// the `UPSTREAM` line that follows the client's `ACCEPTED` line, as the proxy accepts and
/// connects on one thread. Its fds alone would not tell: fds of connections closed since are
/// reused.
fn upstream_of(proxy: &mut Fixture, client: &str) -> Result<Upstream> {
    let peer = format!(" peer={client}");
    let mut wanted = 1;
    let line = loop {
        // Every line so far: waits for one more each round, until the proxy stops printing.
        let lines = proxy.lines("", wanted)?;
        let found = (lines.iter())
            .skip_while(|l| !(l.starts_with("ACCEPTED ") && l.ends_with(&peer)))
            .find(|l| l.starts_with("UPSTREAM "));
        if let Some(line) = found {
            break line.clone();
        }
        wanted = lines.len() + 1;
    };
    let field = |key: &str| -> Result<String> {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .map(str::to_owned)
            .with_context(|| format!("no {key} in {line:?}"))
    };
    Ok(Upstream {
        fd: field("fd=")?.parse()?,
        local: field("local=")?,
        client_fd: field("client_fd=")?.parse()?,
    })
}

/// How many short connections a load generator makes through the proxy, and how many at once.
const LOAD_CONNS: usize = 400;
const LOAD_CONCURRENCY: usize = 8;

/// A load generator's short connections through the proxy, on a thread, each one 8 bytes there
/// and back, then closed as `end` says (`--reset`, or a FIN without it). Returns once the proxy
/// has accepted some of them, so that what the test does next happens amid the others.
fn short_connections(
    proxy: &mut Fixture,
    end: &'static [&'static str],
) -> Result<JoinHandle<Result<ClientRun>>> {
    let port = proxy.port().to_string();
    let load = thread::spawn(move || {
        let (conns, concurrency) = (LOAD_CONNS.to_string(), LOAD_CONCURRENCY.to_string());
        let args = [
            "--port",
            &port,
            "--send",
            "8",
            "--echo",
            "--conns",
            &conns,
            "--concurrency",
            &concurrency,
        ];
        run_client(FIXTURE, &[&args[..], end].concat())
    });
    proxy.lines("ACCEPTED ", LOAD_CONNS / 10)?;
    Ok(load)
}

fn finished(clients: JoinHandle<Result<ClientRun>>) -> Result<ClientRun> {
    match clients.join() {
        Ok(run) => run,
        Err(_) => bail!("a client's thread panicked"),
    }
}

/// Waits until the kernel lists `n` connections to `port` established on the client side: done
/// with their handshake, whether or not the server accepted them yet.
fn wait_for_connections(port: u16, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while kernel_connections_to(port, TCP_ESTABLISHED)? < n {
        if Instant::now() > deadline {
            bail!("{n} connections to port {port} not established within 10s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn idle_findings(report: &Report) -> Vec<&serde_json::Value> {
    report
        .leaks()
        .into_iter()
        .filter(|l| l["kind"] == "idle_half_closed")
        .collect()
}

#[test]
fn proxy_leaves_upstream_idle_after_the_client_half_closed() -> Result<()> {
    let Some((upstream_server, mut proxy, mut leaktrace)) = start(
        "proxy_leaves_upstream_idle_after_the_client_half_closed",
        &["--hold-half-closed"],
    )?
    else {
        return Ok(());
    };
    let (client, upstream) = client_half_closes(&mut proxy)?;
    proxy.lines("CLIENT HALF-CLOSED", 1)?;
    // The client's socket, held in CLOSE_WAIT, is close_wait's; the upstream one is idle.
    leaktrace.wait_for_leaks(2, Duration::from_secs(15))?;
    // What `ss` would show: the proxy's upstream connection is still ESTABLISHED.
    let (state, _) = kernel_socket(proxy.pid(), upstream.fd)?;
    assert_eq!(state, TCP_ESTABLISHED);
    let report = leaktrace.stop()?;
    let pair = Pair::of(&proxy, &upstream_server, &client, &upstream);
    assert_names_the_pair(&report, &pair)
}

/// Incident 2's findings, as a user checks them against `ss` and the proxy's own log: the client
/// socket the proxy holds in CLOSE_WAIT, and the upstream connection it opened for that client,
/// idle, naming that client's socket as its partner.
fn assert_names_the_pair(report: &Report, pair: &Pair) -> Result<()> {
    let Pair {
        proxy,
        upstream_server,
        client,
        upstream,
    } = *pair;
    assert_eq!(
        report.leaks().len(),
        2,
        "two sockets, one finding each\n{report}"
    );
    assert_holds_the_client(report, upstream)?;
    let idle = idle_findings(report);
    assert_eq!(idle.len(), 1, "{report}");
    let leak = idle[0];
    assert_eq!(leak["pid"], proxy.pid(), "{report}");
    assert_eq!(
        leak["comm"],
        leaktrace_tests::comm(proxy.pid())?,
        "{report}"
    );
    assert_eq!(leak["fd"], upstream.fd, "{report}");
    assert_eq!(leak["local"], upstream.local, "{report}");
    assert_eq!(
        leak["remote"],
        format!("127.0.0.1:{}", upstream_server.port()),
        "{report}"
    );
    assert_eq!(leak["state"], "ESTABLISHED", "{report}");
    assert_eq!(
        leak["direction"], "out",
        "the proxy connected upstream\n{report}"
    );
    let partner = &leak["partner"];
    assert_eq!(partner["fd"], upstream.client_fd, "still held\n{report}");
    assert_eq!(
        partner["local"],
        format!("127.0.0.1:{}", proxy.port()),
        "{report}"
    );
    assert_eq!(partner["remote"], client, "{report}");
    assert_eq!(
        partner["direction"], "in",
        "the proxy accepted its client\n{report}"
    );
    assert_eq!(partner["half_closed"], true, "{report}");
    assert!(
        leak["age_ms"].as_u64().is_some_and(|ms| ms >= 1000),
        "reported before --idle-after\n{report}"
    );
    Ok(())
}

/// Incident 2's proxy amid a load generator's short connections, opened and closed before and
/// after the client that half-closes, each reset after its echo (the proxy then closes both its
/// sockets): the finding names the upstream connection the proxy opened for that client, and
/// that client's socket as its partner, not one of theirs. Where leaktrace does not see the
/// accepts themselves, only the client's held socket is checked (see the README).
#[test]
fn proxy_amid_short_connections_names_the_right_partner() -> Result<()> {
    const TEST: &str = "proxy_amid_short_connections_names_the_right_partner";
    let Some((upstream_server, mut proxy, leaktrace)) = start(TEST, &["--hold-half-closed"])?
    else {
        return Ok(());
    };
    let load = short_connections(&mut proxy, &["--reset"])?;
    let (client, upstream) = client_half_closes(&mut proxy)?;
    finished(load)?;
    proxy.lines("CLIENT HALF-CLOSED", 1)?;
    let pair = Pair::of(&proxy, &upstream_server, &client, &upstream);
    assert_busy_proxy_names_the_pair(TEST, leaktrace, &pair, true)
}

/// The sockets of a half-closed client's pair, as the proxy and its upstream server tell them.
struct Pair<'a> {
    proxy: &'a Fixture,
    upstream_server: &'a Fixture,
    client: &'a str,
    upstream: &'a Upstream,
}

impl<'a> Pair<'a> {
    fn of(
        proxy: &'a Fixture,
        upstream_server: &'a Fixture,
        client: &'a str,
        upstream: &'a Upstream,
    ) -> Self {
        Self {
            proxy,
            upstream_server,
            client,
            upstream,
        }
    }
}

/// [`assert_names_the_pair`] for a proxy busy with other clients, once the client half-closed:
/// where the pairing `needs_accepts` and leaktrace does not see them as they happen, only the
/// client's held socket is checked.
fn assert_busy_proxy_names_the_pair(
    test: &str,
    mut leaktrace: Leaktrace,
    pair: &Pair,
    needs_accepts: bool,
) -> Result<()> {
    if needs_accepts && !kernel_limits::sees_accepts(test, &leaktrace)? {
        leaktrace.wait_for_leaks(1, Duration::from_secs(15))?;
        let report = leaktrace.stop()?;
        return assert_holds_the_client(&report, pair.upstream);
    }
    leaktrace.wait_for_leaks(2, Duration::from_secs(15))?;
    // Another pairing would be reported about as late.
    leaktrace.settle(SETTLE)?;
    let report = leaktrace.stop()?;
    assert_names_the_pair(&report, pair)
}

/// The client socket the proxy holds half-closed, reported as `close_wait` under its fd.
fn assert_holds_the_client(report: &Report, upstream: &Upstream) -> Result<()> {
    assert!(
        (report.leaks().iter()).any(|l| l["kind"] == "close_wait" && l["fd"] == upstream.client_fd),
        "the half-closed client socket the proxy holds\n{report}"
    );
    Ok(())
}

/// Incident 2's proxy fallen behind: while it is busy (stopped, here), a client arrives, then a
/// load generator's burst of 16 connections; all wait in its listener's queue. Once it accepts
/// them, in that order, each gets an upstream connection, and the burst's stay open half a
/// second before they reset. The client's socket opened long before any upstream connection,
/// and the burst's accepted sockets opened next to it: the finding names the upstream
/// connection opened for the client, with the client's socket as its partner.
#[test]
fn proxy_behind_its_queue_names_the_right_partner() -> Result<()> {
    proxy_behind_its_queue(
        "proxy_behind_its_queue_names_the_right_partner",
        Queued::First,
    )
}

/// The same with the client queued behind the burst: its socket opened before any upstream
/// connection, as the burst's did, but the proxy took it last, and connected for it last. Only
/// the accept's time tells, so where leaktrace does not see accepts as they happen, only the
/// client's held socket is checked (see the README).
#[test]
fn proxy_behind_its_queue_names_the_right_partner_of_the_last_client() -> Result<()> {
    proxy_behind_its_queue(
        "proxy_behind_its_queue_names_the_right_partner_of_the_last_client",
        Queued::Last,
    )
}

/// Where the half-closing client waits in the proxy's queue, with respect to the burst.
#[derive(PartialEq)]
enum Queued {
    First,
    Last,
}

fn proxy_behind_its_queue(test: &str, queued: Queued) -> Result<()> {
    const BURST: usize = 16;
    let Some((upstream_server, mut proxy, leaktrace)) = start(test, &["--hold-half-closed"])?
    else {
        return Ok(());
    };
    let port = proxy.port();
    proxy.signal(libc::SIGSTOP)?;
    let client_arrives = move || thread::spawn(move || half_closing_client(port));
    let client_first = (queued == Queued::First).then(client_arrives);
    if client_first.is_some() {
        wait_for_connections(port, 1)?;
    }
    let burst = thread::spawn(move || {
        let (port, burst) = (port.to_string(), BURST.to_string());
        run_client(
            FIXTURE,
            &[
                "--port",
                &port,
                "--send",
                "8",
                "--echo",
                "--pause-ms",
                "500",
                "--reset",
                "--conns",
                &burst,
                "--concurrency",
                &burst,
            ],
        )
    });
    wait_for_connections(port, BURST + usize::from(client_first.is_some()))?;
    let client = client_first.unwrap_or_else(client_arrives);
    wait_for_connections(port, 1 + BURST)?;
    proxy.signal(libc::SIGCONT)?;
    let client = finished(client)?.local_addrs.remove(0);
    let upstream = upstream_of(&mut proxy, &client)?;
    finished(burst)?;
    proxy.lines("CLIENT HALF-CLOSED", 1)?;
    let pair = Pair::of(&proxy, &upstream_server, &client, &upstream);
    assert_busy_proxy_names_the_pair(test, leaktrace, &pair, queued == Queued::Last)
}

/// nginx with an upstream pool under a load generator: its pooled upstream connection was
/// reported idle_half_closed, paired with a load generator's connection that had closed a
/// millisecond after it opened. Here a client half-closes amid short connections that each close
/// after their echo; the proxy closes every client's socket and keeps each upstream connection
/// in its pool, idle: nothing is reported.
#[test]
fn pool_amid_short_connections_reports_nothing() -> Result<()> {
    let Some((_upstream_server, mut proxy, mut leaktrace)) =
        start("pool_amid_short_connections_reports_nothing", &[])?
    else {
        return Ok(());
    };
    let load = short_connections(&mut proxy, &[])?;
    let (_, upstream) = client_half_closes(&mut proxy)?;
    finished(load)?;
    proxy.lines("CLIENT CLOSED", LOAD_CONNS + 1)?;
    leaktrace.settle(SETTLE)?;
    let (state, _) = kernel_socket(proxy.pid(), upstream.fd)?;
    assert_eq!(
        state, TCP_ESTABLISHED,
        "the pool kept its upstream connection"
    );
    let report = leaktrace.stop()?;
    assert!(report.leaks().is_empty(), "{report}");
    // Every connection was seen: no finding is a finding, not a blind spot.
    assert!(
        report.summary()["sockets_seen"]
            .as_u64()
            .is_some_and(|n| n >= 2 * LOAD_CONNS as u64),
        "{report}"
    );
    Ok(())
}

#[test]
fn proxy_with_keepalive_upstream_is_not_idle_half_closed() -> Result<()> {
    let Some((_upstream_server, mut proxy, mut leaktrace)) = start(
        "proxy_with_keepalive_upstream_is_not_idle_half_closed",
        &["--keepalive", "--hold-half-closed"],
    )?
    else {
        return Ok(());
    };
    client_half_closes(&mut proxy)?;
    proxy.lines("CLIENT HALF-CLOSED", 1)?;
    leaktrace.settle(SETTLE)?;
    let report = leaktrace.stop()?;
    assert!(idle_findings(&report).is_empty(), "{report}");
    Ok(())
}

/// nginx with upstream keepalive, or an app with a `requests.Session`: the client closes, the
/// proxy closes its side, the upstream connection waits in the pool, silent, by design.
#[test]
fn pool_keeping_upstream_after_closing_its_client_reports_nothing() -> Result<()> {
    let Some((_upstream_server, mut proxy, mut leaktrace)) = start(
        "pool_keeping_upstream_after_closing_its_client_reports_nothing",
        &[],
    )?
    else {
        return Ok(());
    };
    let (_, upstream) = client_half_closes(&mut proxy)?;
    proxy.lines("CLIENT CLOSED", 1)?;
    leaktrace.settle(SETTLE)?;
    let (state, _) = kernel_socket(proxy.pid(), upstream.fd)?;
    assert_eq!(
        state, TCP_ESTABLISHED,
        "the pool kept its upstream connection"
    );
    let report = leaktrace.stop()?;
    assert!(report.leaks().is_empty(), "{report}");
    Ok(())
}

#[test]
fn proxy_passing_the_half_close_on_reports_nothing() -> Result<()> {
    let Some((_upstream_server, mut proxy, mut leaktrace)) = start(
        "proxy_passing_the_half_close_on_reports_nothing",
        &["--propagate"],
    )?
    else {
        return Ok(());
    };
    client_half_closes(&mut proxy)?;
    leaktrace.settle(SETTLE)?;
    let report = leaktrace.stop()?;
    assert!(report.leaks().is_empty(), "{report}");
    assert_eq!(report.summary()["leaks_open"], 0, "{report}");
    // Both sockets of the pair were seen: no finding is a finding, not a blind spot.
    assert!(
        report.summary()["sockets_seen"]
            .as_u64()
            .is_some_and(|n| n >= 2),
        "{report}"
    );
    Ok(())
}
