//! Debian's nginx, traced as users trace it: the shapes that the fixture imitates in idle.rs and
//! kernel.rs, on the real server. A reverse proxy whose upstream pool keeps a connection after
//! its clients are gone must get no finding; `--pid` of a prefork master must not keep the
//! connections its workers take. Privileged like kernel.rs, and nginx must be installed
//! (`cargo xtask test` installs it): SKIPPED otherwise, unless CI=true or
//! LEAKTRACE_REQUIRE_PRIVILEGED=1 turns that into a failure.

use std::time::Duration;

use anyhow::Result;
use leaktrace_tests::nginx::{self, Nginx, Site};
use leaktrace_tests::{kernel_connections_to, skip, Leaktrace, RUN_LIMIT, TCP_ESTABLISHED};
use serde_json::json;

/// As in idle.rs: short, so the test need not wait a minute.
const IDLE_AFTER: &str = "1s";

/// Long enough for a pool connection idle past IDLE_AFTER to be sampled and, wrongly, reported.
const SETTLE: Duration = Duration::from_secs(4);

/// nginx serving `site` with `workers`, or `None` (printed skip) where nginx is not installed.
fn start(test: &str, site: Site, workers: usize) -> Result<Option<Nginx>> {
    if nginx::executable().is_none() {
        skip(
            test,
            "nginx is not installed (`cargo xtask test` installs nginx-light)",
        );
        return Ok(None);
    }
    Nginx::start(site, workers).map(Some)
}

/// nginx as a reverse proxy with upstream `keepalive`: each client connection is accepted,
/// answered through a pooled connection to the backend and closed, and the pooled connection
/// then waits, ESTABLISHED and silent, by design. Clients of both kinds end their connection:
/// nginx closes first (HTTP/1.0, as ApacheBench's), or the client does (HTTP/1.1 keep-alive).
#[test]
fn nginx_pool_keeping_its_upstream_connection_reports_nothing() -> Result<()> {
    let test = "nginx_pool_keeping_its_upstream_connection_reports_nothing";
    let Some(nginx) = start(test, Site::ProxyWithPool, 1)? else {
        return Ok(());
    };
    let Some(mut leaktrace) = Leaktrace::start_with(
        test,
        &nginx.workers,
        RUN_LIMIT,
        &["--idle-after", IDLE_AFTER],
    )?
    else {
        return Ok(());
    };
    const CLIENTS: [bool; 4] = [false, true, false, true];
    for keep_alive in CLIENTS {
        assert_eq!(nginx.request(keep_alive)?, "backend\n");
    }
    leaktrace.settle(SETTLE)?;
    let backend = nginx.backend_port.expect("a proxy has a backend");
    assert!(
        kernel_connections_to(backend, TCP_ESTABLISHED)? >= 1,
        "the pool kept its connection to the backend"
    );
    let report = leaktrace.stop()?;
    assert!(report.leaks().is_empty(), "{report}");
    assert_eq!(report.summary()["leaks_open"], 0, "{report}");
    // The clients' sockets, the pooled connection and the backend's end of it were all seen:
    // no finding is a finding, not a blind spot.
    let seen = report.summary()["sockets_seen"]
        .as_u64()
        .unwrap_or_default();
    assert!(
        seen >= CLIENTS.len() as u64 + 2,
        "{seen} sockets seen\n{report}"
    );
    Ok(())
}

/// `--pid` of the master of a prefork server: its workers, forked before tracing and untraced,
/// take every connection from the master's listener. None may stay counted as the master's,
/// nor be kept in memory (which grew with every request).
#[test]
fn nginx_master_keeps_none_of_its_workers_connections() -> Result<()> {
    let test = "nginx_master_keeps_none_of_its_workers_connections";
    const REQUESTS: usize = 300;
    let Some(nginx) = start(test, Site::Answer, 2)? else {
        return Ok(());
    };
    // Progress lines each second: they count the timelines in memory.
    let Some(mut leaktrace) =
        Leaktrace::start_with(test, &[nginx.master()], RUN_LIMIT, &["--interval", "1s"])?
    else {
        return Ok(());
    };
    nginx.requests(REQUESTS, 4)?;
    leaktrace.settle(SETTLE)?;
    let report = leaktrace.stop()?;

    assert!(report.leaks().is_empty(), "no leak anywhere\n{report}");
    assert_eq!(
        report.pid_stats(nginx.master())["states"],
        json!({"LISTEN": 1}),
        "the master holds its listener only\n{report}"
    );
    let summary = report.summary();
    let forgotten = summary["dropped"]["finished"].as_u64().unwrap_or_default();
    assert!(
        forgotten >= REQUESTS as u64,
        "{forgotten} of {REQUESTS} connections forgotten once a worker took them\n{report}"
    );
    assert!(
        report
            .stderr
            .contains("add --follow-children to trace them"),
        "the workers accept out of the trace: leaktrace says so\n{report}"
    );
    let last_progress = report.lines.iter().rfind(|l| l["type"] == "interval");
    assert!(
        last_progress.is_some_and(|p| p["sockets_tracked"].as_u64().is_some_and(|n| n < 10)),
        "timelines kept for connections the master never held\n{report}"
    );
    Ok(())
}

/// `--pid` of the master with `--follow-children`, started after nginx forked its workers: the
/// workers are traced too, so the connections they accept are theirs in the report (one held
/// open at the end, ESTABLISHED, in a worker's row; the others followed to their close), and
/// clean traffic is no finding.
#[test]
fn nginx_master_with_follow_children_traces_its_workers() -> Result<()> {
    let test = "nginx_master_with_follow_children_traces_its_workers";
    const REQUESTS: usize = 50;
    let Some(nginx) = start(test, Site::Answer, 2)? else {
        return Ok(());
    };
    let Some(mut leaktrace) =
        Leaktrace::start_with(test, &[nginx.master()], RUN_LIMIT, &["--follow-children"])?
    else {
        return Ok(());
    };
    nginx.requests(REQUESTS, 4)?;
    let _kept_open = nginx.request_kept_open()?;
    leaktrace.settle(SETTLE)?;
    let report = leaktrace.stop()?;

    assert!(report.leaks().is_empty(), "no leak anywhere\n{report}");
    let established: u64 = report.stats()["per_pid"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| nginx.workers.iter().any(|&worker| row["pid"] == worker))
        .filter_map(|row| row["states"]["ESTABLISHED"].as_u64())
        .sum();
    assert_eq!(
        established, 1,
        "the connection kept open, in its worker's row\n{report}"
    );
    // nginx's close comes after its worker accepted: only a traced worker's socket is still
    // followed then. Which side closes first races the client's own close, so not every one.
    let time_wait: u64 = report.stats()["per_remote"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["direction"] == "in")
        .filter_map(|row| row["time_wait"].as_u64())
        .sum();
    assert!(
        time_wait > 0,
        "no connection seen through the worker's close to TIME_WAIT\n{report}"
    );
    Ok(())
}
