//! Incident 2: a proxy pipes a client to an upstream and never passes the client's half-close
//! on, so the upstream connection stays ESTABLISHED, silent, with no timer. leaktrace must name
//! the proxy's upstream fd and the client socket that half-closed, and stay quiet when the proxy
//! keeps the upstream connection under keepalive, passes the end-of-stream on, or closes its
//! client and keeps the upstream connection in a pool. Privileged like kernel.rs: SKIPPED
//! without root unless CI=true.

use std::time::Duration;

use anyhow::{Context, Result};
use leaktrace_tests::{kernel_socket, run_client, Fixture, Leaktrace, Report, TCP_ESTABLISHED};

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
    let port = proxy.port().to_string();
    let client = run_client(
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
    )?;
    let line = proxy.lines("UPSTREAM ", 1)?.remove(0);
    let field = |key: &str| -> Result<String> {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .map(str::to_owned)
            .with_context(|| format!("no {key} in {line:?}"))
    };
    let upstream = Upstream {
        fd: field("fd=")?.parse()?,
        local: field("local=")?,
        client_fd: field("client_fd=")?.parse()?,
    };
    Ok((client.local_addrs[0].clone(), upstream))
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

    let leaks = report.leaks();
    assert_eq!(leaks.len(), 2, "two sockets, one finding each\n{report}");
    assert!(
        leaks
            .iter()
            .any(|l| l["kind"] == "close_wait" && l["fd"] == upstream.client_fd),
        "the half-closed client socket the proxy holds\n{report}"
    );
    let idle = idle_findings(&report);
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
