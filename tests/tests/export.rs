//! Privileged end-to-end tests of what leaktrace exports beside its report: the Prometheus
//! metrics a dashboard scrapes while a leak is open (`--metrics`), and the per-socket
//! timelines a user opens in Perfetto (`--trace-out`). Skipped without root, as kernel.rs.

use std::collections::HashMap;
use std::fs::Permissions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use leaktrace_tests::full_disk::FullDisk;
use leaktrace_tests::{
    close_wait_client, close_wait_server, comm, is_root, run_client, run_leaktrace,
    run_leaktrace_within, skip, Accepted, Family, Fixture, Leaktrace, FINDING_TIMEOUT, RUN_LIMIT,
};
use serde_json::{json, Value};

const FIXTURE: &str = env!("CARGO_BIN_EXE_leaktrace-fixture");

/// Exit status for an output that cannot be opened (`--metrics`, `--trace-out`), or that was
/// dropped during the session.
const OUTPUT_UNAVAILABLE: i32 = 8;

/// `GET /metrics`, as Prometheus does it; the body.
fn scrape(addr: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    ensure!(head.starts_with("HTTP/1.1 200 "), "scrape failed: {head}");
    Ok(body.to_owned())
}

/// The value of the sample `series` (name and labels, exactly as exposed).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_show_open_close_wait_leaks() -> Result<()> {
    const CONNS: usize = 2;
    let test = "metrics_show_open_close_wait_leaks";
    let mut server = close_wait_server(FIXTURE, Family::V4, CONNS)?;
    // A bare port: leaktrace chooses where to listen, and must choose loopback.
    let Some(mut leaktrace) =
        Leaktrace::start_with(test, &[server.pid()], RUN_LIMIT, &["--metrics", "0"])?
    else {
        return Ok(());
    };
    let start = leaktrace.start_record()?;
    let addr: SocketAddr = start["metrics"]
        .as_str()
        .with_context(|| format!("the start record names no metrics address: {start}"))?
        .parse()?;
    assert_eq!(
        addr.ip(),
        Ipv4Addr::LOCALHOST,
        "a bare port must listen on loopback only: {start}"
    );
    let before = scrape(addr)?;
    assert!(
        !before.contains("leaktrace_open_leaks{"),
        "open leaks before any connection:\n{before}"
    );

    close_wait_client(FIXTURE, &server, Family::V4, CONNS)?;
    server.accepted(CONNS)?;
    server.lines("EOF ", CONNS)?;
    leaktrace.wait_for_leaks(CONNS, FINDING_TIMEOUT)?;
    let body = scrape(addr)?;
    // Then the labels of where it runs (container, unit), which depend on the machine's.
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", server.pid()))?;
    let cgroup = cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or_default();
    let series = format!(
        "leaktrace_open_leaks{{kind=\"close_wait\",pid=\"{}\",comm=\"{}\",cgroup=\"{cgroup}\",",
        server.pid(),
        comm(server.pid())?
    );
    let value = body
        .lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, value)| value.parse::<f64>().ok());
    assert_eq!(value, Some(CONNS as f64), "{series}...}} in\n{body}");
    let open_series = body
        .lines()
        .filter(|l| l.starts_with("leaktrace_open_leaks{"))
        .count();
    assert_eq!(open_series, 1, "only the server leaks:\n{body}");
    assert_eq!(
        sample(&body, "leaktrace_leaks_reported_total{kind=\"close_wait\"}"),
        Some(CONNS as f64),
        "{body}"
    );
    assert_eq!(
        sample(&body, "leaktrace_lost_events_total"),
        Some(0.0),
        "{body}"
    );
    assert!(
        sample(&body, "leaktrace_sockets_tracked").is_some_and(|n| n > 0.0),
        "{body}"
    );
    assert!(
        sample(&body, "leaktrace_records_total").is_some_and(|n| n > 0.0),
        "{body}"
    );
    assert!(
        sample(&body, "leaktrace_transitions_total{state=\"CLOSE_WAIT\"}")
            .is_some_and(|n| n >= CONNS as f64),
        "each leaked connection entered CLOSE_WAIT:\n{body}"
    );
    assert!(
        sample(&body, "leaktrace_ring_buffer_fill_ratio").is_some_and(|r| (0.0..=1.0).contains(&r)),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    let report = leaktrace.stop()?;
    assert_eq!(
        report.leaks().len(),
        CONNS,
        "the metrics and the report agree\n{report}"
    );
    Ok(())
}

#[test]
fn outputs_that_cannot_be_opened_fail_before_tracing() -> Result<()> {
    let test = "outputs_that_cannot_be_opened_fail_before_tracing";
    if !is_root() {
        skip(
            test,
            "leaktrace checks its outputs after checking it runs as root",
        );
        return Ok(());
    }
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let missing = std::env::temp_dir().join("leaktrace-no-such-dir/trace.json");
    let missing = missing.to_string_lossy();
    for (args, message) in [
        (
            ["--metrics", addr.as_str()],
            format!("cannot serve metrics on {addr}"),
        ),
        (
            ["--trace-out", &*missing],
            format!("cannot write the trace to {missing}"),
        ),
    ] {
        let run = run_leaktrace(&[&["--json", "--duration", "5s"], &args[..]].concat())?;
        assert_eq!(
            run.status.code(),
            Some(OUTPUT_UNAVAILABLE),
            "{args:?}: stderr: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(&message),
            "{args:?}: the error should say what failed: {}",
            run.stderr
        );
        assert!(
            run.stdout.is_empty(),
            "{args:?}: nothing may be traced: {:?}",
            run.stdout
        );
    }
    Ok(())
}

/// Another user, whose files are planted where the trace is to go.
const NOBODY: u32 = 65534;

/// Root writing its trace into a directory every user can write to (`/tmp`, a shared build
/// directory) must not write where another user pointed it, nor into what they put there first.
#[test]
fn trace_out_refuses_what_another_user_planted() -> Result<()> {
    let test = "trace_out_refuses_what_another_user_planted";
    if !is_root() {
        skip(test, "planting another user's files takes root");
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir)?;
    // World-writable without the sticky bit: the kernel's fs.protected_* settings, which guard
    // sticky directories only, leave it to leaktrace.
    std::fs::set_permissions(&dir, Permissions::from_mode(0o777))?;
    let secret = dir.join("secret");
    std::fs::write(&secret, "root only\n")?;
    let trace = dir.join("trace.json");
    let path = trace.to_string_lossy().into_owned();
    let pid = std::process::id().to_string();
    let run = || {
        run_leaktrace(&[
            "--json",
            "--duration",
            "1s",
            "--pid",
            &pid,
            "--trace-out",
            &path,
        ])
    };
    let refused = |why: &str| -> Result<()> {
        let run = run()?;
        assert_eq!(
            run.status.code(),
            Some(OUTPUT_UNAVAILABLE),
            "{why}: {}",
            run.stderr
        );
        assert!(
            run.stderr.starts_with(&format!(
                "leaktrace: error: cannot write the trace to {path}: {why}"
            )),
            "{why}: {}",
            run.stderr
        );
        assert_eq!(run.stderr.lines().count(), 1, "{why}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{why}: traced: {:?}", run.stdout);
        assert_eq!(std::fs::read_to_string(&secret)?, "root only\n", "{why}");
        Ok(())
    };

    std::os::unix::fs::symlink(&secret, &trace)?;
    std::os::unix::fs::lchown(&trace, Some(NOBODY), Some(NOBODY))?;
    refused("it is a symbolic link, which leaktrace does not follow")?;
    std::fs::remove_file(&trace)?;

    std::fs::write(&trace, "theirs\n")?;
    std::os::unix::fs::chown(&trace, Some(NOBODY), Some(NOBODY))?;
    refused("it belongs to uid 65534")?;
    assert_eq!(std::fs::read_to_string(&trace)?, "theirs\n");
    std::fs::remove_file(&trace)?;

    // Opening a FIFO to write waits for a reader: a planted one must not stop leaktrace.
    let fifo = std::ffi::CString::new(path.as_str())?;
    // SAFETY: mkfifo reads the NUL-terminated path, alive for the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    std::os::unix::fs::chown(&trace, Some(NOBODY), Some(NOBODY))?;
    refused("it is a FIFO that nobody reads")?;
    std::fs::remove_file(&trace)?;

    // Where the kernel lets users link to files they do not own (fs.protected_hardlinks=0).
    std::fs::hard_link(&secret, &trace)?;
    refused("it has 2 names (hard links)")?;
    std::fs::remove_file(&trace)?;

    for (what, before) in [
        ("a new file", None),
        ("its own file", Some("stale ".repeat(9999))),
    ] {
        if let Some(before) = &before {
            std::fs::write(&trace, before)?;
        }
        let run = run()?;
        assert_eq!(run.status.code(), Some(0), "{what}: {}", run.stderr);
        let text = std::fs::read_to_string(&trace)?;
        serde_json::from_str::<Vec<Value>>(&text)
            .with_context(|| format!("{what}: not a JSON array: {text:?}"))?;
        if before.is_none() {
            let mode = std::fs::metadata(&trace)?.permissions().mode() & 0o777;
            assert_eq!(
                mode, 0o600,
                "{what}: the trace names processes: root's alone"
            );
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A trace file in the temporary directory.
struct TraceFile(PathBuf);

impl TraceFile {
    fn new(test: &str) -> TraceFile {
        let path = std::env::temp_dir().join(format!("{test}-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TraceFile(path)
    }

    /// The events written so far; a run still going has not closed the array yet.
    fn events(&self) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.0)?;
        let text = if text.trim_end().ends_with(']') {
            text
        } else {
            format!("{text}\n]")
        };
        serde_json::from_str(&text).with_context(|| format!("not a JSON array: {text}"))
    }
}

impl Drop for TraceFile {
    /// Kept when the test fails, to be looked at.
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A socket's track in a trace: its events, in the file's order.
struct Track<'a> {
    events: Vec<&'a Value>,
}

impl Track<'_> {
    /// The track named after the socket `accepted` by the server listening on `port` in `pid`:
    /// by its addresses, after its fd where leaktrace learned it.
    fn find<'a>(
        events: &'a [Value],
        pid: u32,
        port: u16,
        accepted: &Accepted,
    ) -> Option<Track<'a>> {
        let endpoints = format!("127.0.0.1:{port} -> {}", accepted.peer);
        let with_fd = format!("fd {} {endpoints}", accepted.fd);
        let thread = events.iter().find(|e| {
            e["ph"] == "M"
                && e["name"] == "thread_name"
                && (e["args"]["name"] == endpoints.as_str()
                    || e["args"]["name"] == with_fd.as_str())
        })?;
        assert_eq!(
            thread["pid"], pid,
            "{endpoints} is in the wrong process: {thread}"
        );
        let tid = &thread["tid"];
        let events = events
            .iter()
            .filter(|e| e["tid"] == *tid && e["ph"] != "M")
            .collect();
        Some(Track { events })
    }

    /// (state, start µs, duration µs) of each state slice, in time order.
    fn slices(&self) -> Vec<(String, f64, f64)> {
        self.events
            .iter()
            .filter(|e| e["ph"] == "X")
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_owned(),
                    e["ts"].as_f64().unwrap_or(f64::NAN),
                    e["dur"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect()
    }

    /// The `name` instants that process `pid` caused. Others can show up on a track: another
    /// leaktrace that traces every process (another test, or another user of this machine)
    /// duplicates each socket it finds with pidfd_getfd and closes the duplicate, a close
    /// this one records too, truthfully, as run by that leaktrace.
    fn instants(&self, name: &str, pid: u32) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["ph"] == "i" && e["name"] == name && e["args"]["pid"] == pid)
            .copied()
            .collect()
    }

    /// The slices follow each other in time without overlapping, none lasting a negative time,
    /// and the states named come in this order.
    fn assert_states(&self, states: &[&str], what: &str) {
        let slices = self.slices();
        for pair in slices.windows(2) {
            let ((_, ts, dur), (_, next, _)) = (&pair[0], &pair[1]);
            assert!(
                ts + dur <= next + 0.001,
                "{what}: slices overlap or are out of order: {slices:?}"
            );
        }
        assert!(
            slices.iter().all(|(_, ts, dur)| *ts > 0.0 && *dur >= 0.0),
            "{what}: {slices:?}"
        );
        let names: Vec<&str> = slices.iter().map(|(name, _, _)| name.as_str()).collect();
        let mut rest = names.iter();
        assert!(
            states.iter().all(|want| rest.any(|s| s == want)),
            "{what}: expected the states {states:?} in order, got {names:?}"
        );
    }
}

#[test]
fn trace_out_has_a_track_per_socket() -> Result<()> {
    let test = "trace_out_has_a_track_per_socket";
    let file = TraceFile::new(test);
    let mut leaky = close_wait_server(FIXTURE, Family::V4, 1)?;
    let mut echo = Fixture::server(FIXTURE, &["echo-server"])?;
    let path = file.0.to_string_lossy().into_owned();
    let Some(mut leaktrace) = Leaktrace::start_with(
        test,
        &[leaky.pid(), echo.pid()],
        RUN_LIMIT,
        &["--trace-out", &path],
    )?
    else {
        return Ok(());
    };

    // A well-behaved connection: echoed, closed on both sides, destroyed.
    let echo_port = echo.port().to_string();
    run_client(FIXTURE, &["--port", &echo_port, "--send", "5", "--echo"])?;
    let echoed = echo.accepted(1)?.remove(0);
    // leaktrace keeps a destroyed socket's timeline for 1s of later records' time; the leaky
    // connection's records come after that.
    thread::sleep(Duration::from_millis(1200));
    close_wait_client(FIXTURE, &leaky, Family::V4, 1)?;
    let leaked = leaky.accepted(1)?.remove(0);
    leaky.lines("EOF ", 1)?;
    leaktrace.wait_for_leaks(1, FINDING_TIMEOUT)?;

    // Streamed: the finished connection is in the file while leaktrace still runs.
    let so_far = file.events()?;
    assert!(
        Track::find(&so_far, echo.pid(), echo.port(), &echoed).is_some(),
        "the finished connection's track was not written when it went away: {so_far:?}"
    );
    assert!(
        Track::find(&so_far, leaky.pid(), leaky.port(), &leaked).is_none(),
        "the leaked socket is still open, its track comes at the end: {so_far:?}"
    );

    let report = leaktrace.stop()?;
    let text = std::fs::read_to_string(&file.0)?;
    let events: Vec<Value> = serde_json::from_str(&text)
        .with_context(|| format!("the finished trace is not a JSON array: {text}"))?;
    let names: HashMap<u64, &str> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "process_name")
        .filter_map(|e| Some((e["pid"].as_u64()?, e["args"]["name"].as_str()?)))
        .collect();
    for pid in [leaky.pid(), echo.pid()] {
        assert_eq!(
            names.get(&u64::from(pid)).copied(),
            Some(comm(pid)?.as_str()),
            "process {pid} is not named after its comm: {names:?}"
        );
    }

    let leak = Track::find(&events, leaky.pid(), leaky.port(), &leaked)
        .with_context(|| format!("no track for the leaked socket {leaked:?}\n{report}"))?;
    leak.assert_states(&["ESTABLISHED", "CLOSE_WAIT"], "leaked socket");
    let slices = leak.slices();
    assert_eq!(
        slices.last().map(|(name, _, _)| name.as_str()),
        Some("CLOSE_WAIT"),
        "the leak is still in CLOSE_WAIT when leaktrace stops: {slices:?}"
    );
    // Its fd, looked up in /proc for the finding, names the track.
    assert!(
        events.iter().any(|e| e["name"] == "thread_name"
            && e["args"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("fd {} ", leaked.fd)))),
        "the leaked socket's track does not name fd {}: {events:?}",
        leaked.fd
    );
    assert!(
        leak.instants("close", leaky.pid()).is_empty(),
        "the server never closed it: {:?}",
        leak.events
    );

    let fine = Track::find(&events, echo.pid(), echo.port(), &echoed)
        .with_context(|| format!("no track for the echoed connection {echoed:?}"))?;
    // The client closes first: the server sees its FIN, then closes.
    fine.assert_states(
        &["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"],
        "echoed connection",
    );
    // The server's close is the last thing recorded of it: past LAST_ACK nothing is left that a
    // finding could show, so neither its last transition nor its destruction is sent.
    let closes = fine.instants("close", echo.pid());
    assert_eq!(closes.len(), 1, "{:?}", fine.events);
    let close_wait_at = fine
        .slices()
        .iter()
        .find(|(name, _, _)| name == "CLOSE_WAIT")
        .map(|(_, ts, _)| *ts);
    assert!(
        closes[0]["ts"].as_f64() >= close_wait_at,
        "the server closed after the client's FIN: {:?}",
        fine.events
    );
    let last_ack = fine
        .slices()
        .into_iter()
        .find(|(name, _, _)| name == "LAST_ACK");
    assert_eq!(
        last_ack.map(|(_, ts, _)| ts),
        closes[0]["ts"].as_f64(),
        "the close moved it to LAST_ACK: {:?}",
        fine.events
    );
    Ok(())
}

/// What leaktrace says, once, when the trace file's disk is full.
fn trace_dropped_warning(path: &str) -> String {
    format!(
        "leaktrace: warning: dropped --trace-out {path}: No space left on device (os error 28): \
         the trace file stops here; tracing and the report go on"
    )
}

/// The summary's account of the trace file dropped.
fn trace_dropped_summary(path: &str) -> Value {
    json!([{
        "output": "--trace-out",
        "to": path,
        "error": "No space left on device (os error 28)",
    }])
}

/// The events of a trace file cut short: whole ones only, the array left open.
fn cut_trace(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    ensure!(
        !text.trim_end().ends_with(']'),
        "the trace was dropped, yet closed: {text}"
    );
    serde_json::from_str(&format!("{text}]"))
        .with_context(|| format!("not whole events up to where the disk filled: {text}"))
}

/// A full disk under `--trace-out` costs the trace file, not the session: one warning, then
/// tracing and the report go on, a leak that comes later is reported, the final report is
/// whole and names the dropped file, and leaktrace exits 8, as the file asked for is
/// incomplete.
#[test]
fn a_trace_out_on_a_full_disk_is_dropped_and_tracing_goes_on() -> Result<()> {
    let test = "a_trace_out_on_a_full_disk_is_dropped_and_tracing_goes_on";
    let Some(disk) = FullDisk::mount(test)? else {
        return Ok(());
    };
    let trace = disk.fill_but("trace.json")?;
    let path = trace.to_string_lossy().into_owned();
    let mut leaky = close_wait_server(FIXTURE, Family::V4, 1)?;
    let echo = Fixture::server(FIXTURE, &["echo-server"])?;
    let Some(mut leaktrace) = Leaktrace::start_with(
        test,
        &[leaky.pid(), echo.pid()],
        RUN_LIMIT,
        &["--trace-out", &path],
    )?
    else {
        return Ok(());
    };

    // Well-behaved connections, whose tracks are more than the one page of room left: they are
    // written once leaktrace lets go of them, which the next connection's records allow.
    let echo_port = echo.port().to_string();
    let echoed = ["--port", &echo_port, "--send", "5", "--echo"];
    run_client(FIXTURE, &[&echoed[..], &["--conns", "20"]].concat())?;
    thread::sleep(Duration::from_millis(1200));
    run_client(FIXTURE, &echoed)?;
    let warning = trace_dropped_warning(&path);
    leaktrace.wait_for_stderr(&warning, FINDING_TIMEOUT)?;

    // A leak from after the trace was dropped.
    close_wait_client(FIXTURE, &leaky, Family::V4, 1)?;
    let leaked = leaky.accepted(1)?.remove(0);
    leaky.lines("EOF ", 1)?;
    leaktrace.wait_for_leaks(1, FINDING_TIMEOUT)?;
    let (status, report) = leaktrace.stop_with_any_status(FINDING_TIMEOUT)?;

    assert_eq!(status.code(), Some(OUTPUT_UNAVAILABLE), "{report}");
    let warnings: Vec<&str> = report
        .stderr
        .lines()
        .filter(|l| l.starts_with("leaktrace: ") && l.contains("--trace-out"))
        .collect();
    assert_eq!(warnings, [warning.as_str()], "one warning\n{report}");
    let leaks = report.leaks();
    assert_eq!(
        leaks.len(),
        1,
        "the leak alone, no echoed connection\n{report}"
    );
    assert_eq!(
        (&leaks[0]["kind"], &leaks[0]["pid"], &leaks[0]["fd"]),
        (&json!("close_wait"), &json!(leaky.pid()), &json!(leaked.fd)),
        "{report}"
    );
    assert_eq!(report.summary()["leaks_open"], 1, "{report}");
    assert_eq!(
        report.summary()["outputs_dropped"],
        trace_dropped_summary(&path),
        "{report}"
    );
    // Whole: the stats line just before the summary.
    report.stats();
    let events = cut_trace(&trace)?;
    let leak_track = format!("fd {} 127.0.0.1:{}", leaked.fd, leaky.port());
    assert!(
        !events.iter().any(|e| e["name"] == "thread_name"
            && e["args"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&leak_track))),
        "the leak's track, due at the end, came after the trace was dropped: {events:?}"
    );
    Ok(())
}

/// The same under `run`, whose status is the command's: the disk fills while the command runs,
/// the command runs on, is traced to its end, its leak is reported, and its status 3 is
/// leaktrace's.
#[test]
fn under_run_a_trace_out_on_a_full_disk_keeps_the_command_s_status() -> Result<()> {
    let test = "under_run_a_trace_out_on_a_full_disk_keeps_the_command_s_status";
    let Some(disk) = FullDisk::mount(test)? else {
        return Ok(());
    };
    let trace = disk.fill_but("trace.json")?;
    let path = trace.to_string_lossy().into_owned();
    // Connections that end well, whose tracks cannot be written; after them, a pool that leaks
    // one connection (its records let leaktrace write the others' tracks), then exits 3.
    let command = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do {FIXTURE} clean-exit --exit-code 0 || exit 99; done; \
         sleep 1.2; exec {FIXTURE} identity --conns 1 --pause-ms 1500 --exit-code 3"
    );
    let run = run_leaktrace_within(
        &[
            "run",
            "--json",
            "--leak-after",
            "300ms",
            "--trace-out",
            &path,
            "--",
            "sh",
            "-c",
            &command,
        ],
        Duration::from_secs(60),
    )?;
    let context = format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout.join("\n"),
        run.stderr
    );
    assert_eq!(
        run.status.code(),
        Some(3),
        "the command's status\n{context}"
    );
    let warning = trace_dropped_warning(&path);
    let warnings: Vec<&str> = (run.stderr.lines())
        .filter(|l| l.starts_with("leaktrace: ") && l.contains("--trace-out"))
        .collect();
    assert_eq!(warnings, [warning.as_str()], "one warning\n{context}");

    // Under run the report is on stderr; the command's lines on stdout.
    let lines: Vec<Value> = (run.stderr.lines())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let field = |prefix: &str, name: &str| -> Option<i64> {
        let line = run.stdout.iter().find_map(|l| l.strip_prefix(prefix))?;
        let value = line.split(' ').find_map(|f| f.strip_prefix(name))?;
        value.parse().ok()
    };
    let pool = field("IDENTITY ", "pid=").with_context(|| context.clone())?;
    let fd = field("CONNECTED ", "fd=").with_context(|| context.clone())?;
    let leaks: Vec<&Value> = lines.iter().filter(|l| l["type"] == "leak").collect();
    assert_eq!(leaks.len(), 1, "the pool's leak alone\n{context}");
    assert_eq!(
        (&leaks[0]["kind"], &leaks[0]["pid"], &leaks[0]["fd"]),
        (&json!("close_wait"), &json!(pool), &json!(fd)),
        "{context}"
    );
    let summaries: Vec<&Value> = lines.iter().filter(|l| l["type"] == "summary").collect();
    assert_eq!(summaries.len(), 1, "{context}");
    assert_eq!(
        summaries[0]["outputs_dropped"],
        trace_dropped_summary(&path),
        "{context}"
    );
    let exit = lines.last().context("no JSON line")?;
    assert_eq!(
        (&exit["type"], &exit["status"], &exit["whose"]),
        (&json!("exit"), &json!(3), &json!("command")),
        "the last line says whose status it is\n{context}"
    );
    cut_trace(&trace)?;
    Ok(())
}
