//! Human-readable output: one line per live outcome, then a table of open leaks with the timeline
//! that led to each.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use leaktrace_common::tcp_state;

use super::event::describe;
use super::{write_line, End, Output, StartInfo, Tick};
use crate::decoder::Event;
use crate::finding::{Finding, Outcome};
use crate::format::{
    addr, duration, endpoints, fd, how_resolved, kernel_address, partner, printable,
    probe_failure_meaning, ring_size_hint, unread,
};
use crate::hooks::UNAVAILABLE;
use crate::placement::Placement;
use crate::summary::{Progress, Stats};
use crate::timeline::Dropped;

pub(crate) struct TextReporter {
    out: Box<dyn Write + Send>,
    /// One line per hook at start, rather than one line for them all.
    verbose: bool,
}

impl TextReporter {
    pub(crate) fn new(out: Box<dyn Write + Send>, verbose: bool) -> Self {
        Self { out, verbose }
    }

    fn line(&mut self, line: &str) -> io::Result<()> {
        write_line(&mut self.out, line)
    }

    /// A leak or resolution, as the detectors find it.
    pub(crate) fn outcome(&mut self, outcome: &Outcome) -> io::Result<()> {
        let line = match outcome {
            Outcome::Leak(f) => format!(
                "LEAK  {}  pid {} ({}){} fd {}  {}  {}",
                f.kind.name(),
                f.pid,
                printable(&f.comm),
                placement(&f.placement),
                fd(f.fd),
                endpoints(f.local, f.remote, f.accepted),
                f.kind.explain(f)
            ),
            Outcome::Resolved(r) => format!(
                "RESOLVED {} pid {} fd {}  {}  ({})",
                r.kind.name(),
                r.pid,
                fd(r.fd),
                endpoints(r.local, r.remote, r.accepted),
                how_resolved(r.how)
            ),
        };
        self.line(&line)
    }
}

impl Output for TextReporter {
    fn start(&mut self, info: &StartInfo) -> io::Result<()> {
        self.line(&format!(
            "leaktrace: tracing {} on kernel {}; a socket counts as leaked after {} (idle after \
             its partner's half-close: after {})",
            info.scope,
            info.kernel,
            duration(info.leak_after),
            duration(info.idle_after)
        ))?;
        let (family, why) = &info.family;
        if self.verbose {
            self.line(&format!("leaktrace: hooks: {family} family, {why}:"))?;
            let width = info.hooks.iter().map(|(event, _)| event.len()).max();
            for (event, hook) in &info.hooks {
                self.line(&format!(
                    "  {event:<width$}  {hook}",
                    width = width.unwrap_or(0)
                ))?;
            }
        } else {
            self.line(&format!(
                "leaktrace: hooks: {family} family, {why}: {}",
                hooks_summary(&info.hooks)
            ))?;
        }
        for (_, what) in &info.limits {
            self.line(&format!("leaktrace: on this kernel, {what}"))?;
        }
        if let Some(addr) = info.metrics {
            self.line(&format!("leaktrace: metrics at http://{addr}/metrics"))?;
        }
        Ok(())
    }

    fn tick(&mut self, tick: &Tick<'_>) -> io::Result<()> {
        tick.outcomes
            .iter()
            .try_for_each(|outcome| self.outcome(outcome))
    }

    fn progress(&mut self, p: &Progress) -> io::Result<()> {
        let open: u64 = p.open.values().sum();
        let by_kind: Vec<String> = p
            .open
            .iter()
            .map(|(kind, n)| format!("{} {n}", kind.name()))
            .collect();
        let by_kind = if by_kind.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_kind.join(", "))
        };
        self.line(&format!(
            "[{}] leaks open {open}{by_kind}, reported {}, resolved {}; sockets tracked {}, \
             seen {}; records {}, lost events {}; {}",
            duration(p.elapsed),
            p.leaks_reported,
            p.leaks_resolved,
            p.sockets_tracked,
            p.sockets_seen,
            p.ingest.records,
            p.ingest.lost_events,
            dropped(&p.dropped)
        ))
    }

    fn finish(&mut self, end: &End<'_>) -> io::Result<()> {
        let report = end.report;
        let sections = stats_sections(&report.stats);
        self.line("")?;
        if report.open.is_empty() {
            self.line("No leaked sockets found.")?;
            if !sections.is_empty() {
                self.line("")?;
            }
        } else {
            self.line(&format!("Open leaks: {}", report.open.len()))?;
            for row in table(&report.open) {
                self.line(&row)?;
            }
            for finding in &report.open {
                self.line("")?;
                for line in timeline(finding) {
                    self.line(&line)?;
                }
            }
            self.line("")?;
        }
        for section in sections {
            for line in section {
                self.line(&line)?;
            }
            self.line("")?;
        }
        // Only a session long enough to have a trend gets the series.
        if report.open_over_time.len() > 2 {
            let points: Vec<String> = report
                .open_over_time
                .iter()
                .map(|&(at, open)| format!("{} {open}", duration(at)))
                .collect();
            self.line(&format!("leaks open over time: {}", points.join(", ")))?;
        }
        let ingest = &report.ingest;
        self.line(&format!(
            "summary: leaks open {}, resolved {}; sockets seen {}, records {}, decode errors {}, \
             lost events {}, unattributed {}; {}",
            report.open.len(),
            report.leaks_resolved,
            report.sockets_seen,
            ingest.records,
            ingest.decode_errors,
            ingest.lost_events,
            report.unattributed,
            dropped(&report.dropped)
        ))?;
        for (failure, n) in ingest.failures() {
            self.line(&format!(
                "warning: {} {n}: {}",
                failure.name(),
                probe_failure_meaning(failure)
            ))?;
        }
        if report.dropped.evicted > 0 {
            self.line(&format!(
                "warning: {} sockets were forgotten because leaktrace held --max-sockets \
                 timelines: leaks among them may be missed; raise --max-sockets",
                report.dropped.evicted
            ))?;
        }
        if report.unattributed > 0 {
            self.line(&format!(
                "note: {} sockets met a leak condition but no owning process was known, so they \
                 are not reported",
                report.unattributed
            ))?;
        }
        if ingest.lost_events > 0 {
            self.line(&format!(
                "warning: {} events were lost (ring buffer full): timelines may be incomplete \
                 and leaks missed; {}",
                ingest.lost_events,
                ring_size_hint(ingest.ring_size)
            ))?;
        }
        for dropped in &report.outputs_dropped {
            self.line(&format!(
                "warning: {} {} was dropped when it could not be written ({}): it holds only \
                 what came before",
                dropped.flag, dropped.to, dropped.error
            ))?;
        }
        Ok(())
    }
}

/// The hooks in a line: how many programs of each kind, and by name the events served some
/// other way (a fallback that sees less) or not at all, as those change what leaktrace can tell.
fn hooks_summary(hooks: &[(String, String)]) -> String {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    let mut otherwise = Vec::new();
    for (event, hook) in hooks {
        match hook.split_once(':') {
            Some((kind, _)) if !hook.starts_with(UNAVAILABLE) && !kind.contains(' ') => {
                match kinds.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, n)) => *n += 1,
                    None => kinds.push((kind, 1)),
                }
            }
            _ => otherwise.push(format!("; {event}: {hook}")),
        }
    }
    let kinds: Vec<String> = kinds
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect();
    format!(
        "{} (--verbose lists each){}",
        kinds.join(", "),
        otherwise.concat()
    )
}

/// Where the owner runs, where it says something: ` in container 3f4c2a9b8e7d`, ` in
/// nginx.service`, ` in cgroup /batch/job-7`; and ` netns 4026532281` when its addresses are
/// another network namespace's than leaktrace's.
fn placement(p: &Placement) -> String {
    let mut text = match (&p.names.container, &p.names.unit, &p.cgroup) {
        // Runtimes and `docker ps` show the first twelve digits.
        (Some(id), _, _) => format!(" in container {}", &id[..id.len().min(12)]),
        (None, Some(unit), _) => format!(" in {}", printable(unit)),
        (None, None, Some(cgroup)) if cgroup != "/" => format!(" in cgroup {}", printable(cgroup)),
        _ => String::new(),
    };
    if p.in_other_netns() {
        if let Some(netns) = p.netns {
            let _ = write!(text, " netns {netns}");
        }
    }
    text
}

/// What the store let go of: finished sockets as planned, and any dropped over the cap.
fn dropped(d: &Dropped) -> String {
    let mut text = format!("timelines forgotten: {} finished", d.finished);
    if d.evicted > 0 {
        write!(text, ", {} over the cap", d.evicted).unwrap_or_default();
    }
    text
}

/// The finding's age in the table, `>` marking a lower bound (held since before tracing).
fn age(f: &Finding) -> String {
    if f.age_at_least {
        format!(">{}", duration(f.age))
    } else {
        duration(f.age)
    }
}

fn table(open: &[Finding]) -> Vec<String> {
    let header = [
        "KIND", "PID", "COMM", "FD", "LOCAL", "REMOTE", "STATE", "UNREAD", "EOF", "AGE",
    ];
    aligned(
        header,
        open.iter().map(|f| {
            [
                f.kind.name().to_owned(),
                f.pid.to_string(),
                printable(&f.comm),
                fd(f.fd),
                addr(f.local),
                addr(f.remote),
                f.state.to_owned(),
                f.unread_bytes.to_string(),
                if f.eof_unread { "unread" } else { "-" }.to_owned(),
                age(f),
            ]
        }),
    )
}

/// Rows of a stats section; more than this are summed up in one line.
const TOP: usize = 10;

/// The "Per process" and "Per remote" sections, each a title and a table; none when the
/// session saw no socket.
fn stats_sections(stats: &Stats) -> Vec<Vec<String>> {
    let mut sections = Vec::new();
    if !stats.per_pid.is_empty() {
        let rows = stats.per_pid.iter().take(TOP).map(|p| {
            let held: u64 = p.states.iter().map(|(_, n)| n).sum();
            let states: Vec<String> = p
                .states
                .iter()
                .map(|&(state, n)| format!("{} {n}", tcp_state::name(state)))
                .collect();
            [
                p.pid.to_string(),
                printable(&p.comm),
                p.leaks_open.to_string(),
                p.leaks_new.to_string(),
                format!("{:.1}", stats.per_minute(p.leaks_new)),
                held.to_string(),
                if states.is_empty() {
                    "-".to_owned()
                } else {
                    states.join(", ")
                },
            ]
        });
        let header = [
            "PID",
            "COMM",
            "LEAKS_OPEN",
            "LEAKS_NEW",
            "LEAKS/MIN",
            "HELD",
            "STATES",
        ];
        sections.push(section(
            "Per process (by open leaks, then sockets held; HELD, STATES: sockets held now)",
            aligned(header, rows),
            stats.per_pid.len(),
            "processes",
        ));
    }
    if !stats.per_remote.is_empty() {
        let rows = stats.per_remote.iter().take(TOP).map(|r| {
            [
                r.remote.to_string(),
                r.remote.direction().unwrap_or("-").to_owned(),
                r.connections.to_string(),
                r.time_wait.to_string(),
                r.leaks_open.to_string(),
            ]
        });
        let header = ["REMOTE", "DIR", "CONNECTIONS", "TIME_WAIT", "LEAKS_OPEN"];
        sections.push(section(
            "Per remote (by open leaks, then connections; DIR out: connected to, in: accepted \
             from)",
            aligned(header, rows),
            stats.per_remote.len(),
            "remotes",
        ));
    }
    sections
}

fn section(title: &str, table: Vec<String>, total: usize, what: &str) -> Vec<String> {
    let mut lines = vec![format!("{title}:")];
    lines.extend(table);
    if total > TOP {
        lines.push(format!("... and {} more {what}", total - TOP));
    }
    lines
}

/// A header and rows in columns, each as wide as its widest cell.
fn aligned<const N: usize>(
    header: [&str; N],
    rows: impl Iterator<Item = [String; N]>,
) -> Vec<String> {
    let rows: Vec<[String; N]> = std::iter::once(header.map(str::to_owned))
        .chain(rows)
        .collect();
    let mut widths = [0; N];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(widths) {
                let _ = write!(line, "{cell:<width$}  ");
            }
            line.trim_end().to_owned()
        })
        .collect()
}

fn timeline(f: &Finding) -> Vec<String> {
    let mut lines = vec![format!(
        "{} pid {} ({}) fd {}  {}  socket {}:",
        f.kind.name(),
        f.pid,
        printable(&f.comm),
        fd(f.fd),
        endpoints(f.local, f.remote, f.accepted),
        kernel_address(f.sock.addr)
    )];
    let start = f.timeline.first().map_or(0, |e| e.ts_ns);
    // Microseconds: on loopback a whole connection lifecycle fits in a millisecond. Signed: a
    // partner's half-close can come before this socket's first event (the proxy connected
    // upstream after its client's request and FIN).
    let offset = |ts_ns: u64| {
        let (sign, ns) = if ts_ns >= start {
            ('+', ts_ns - start)
        } else {
            ('-', start - ts_ns)
        };
        format!("{sign}{:.6}s", Duration::from_nanos(ns).as_secs_f64())
    };
    if let Some(p) = &f.partner {
        lines.push(format!(
            "  {}: its peer half-closed at {}",
            partner(p),
            offset(p.half_closed_ns)
        ));
    }
    lines.extend(f.timeline.iter().map(|event| {
        format!(
            "  {}  {}",
            offset(event.ts_ns),
            timeline_line(event, f.fd_of(event))
        )
    }));
    if f.elided > 0 {
        lines.push(format!(
            "  ({} later reads and arrivals not kept; the receive state above is current)",
            f.elided
        ));
    }
    lines
}

/// `fd`: the fd by which the event's process holds the socket, where known.
fn timeline_line(event: &Event, fd: Option<i32>) -> String {
    let described = describe(event, fd);
    let mut text = described.text;
    if let Some(receive) = event.receive {
        let _ = write!(
            text,
            "  {}",
            unread(receive.unread_bytes(), receive.eof_unread())
        );
    }
    // The owner's own actions need no attribution; what the kernel did on its own, the process
    // that happened to run did not cause; anything else another process did.
    if !event.in_owner_context && event.task.tgid != 0 {
        let (pid, comm) = (event.task.tgid, printable(&event.task.comm.to_string()));
        let _ = if described.by_kernel {
            write!(text, "  (in the kernel, while pid {pid} {comm} ran)")
        } else {
            write!(text, "  (by pid {pid} {comm}, not the owner)")
        };
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::tests::{
        end, fill_kernel_maps, final_report, finding, idle_finding, in_a_service, progress,
        resolved, start_info, stats, trace_dropped, Captured,
    };
    use super::*;
    use crate::decoder::EventKind;
    use crate::detect::{close_wait, fd_after_close};

    fn reporter() -> (Captured, TextReporter) {
        let captured = Captured::default();
        let reporter = TextReporter::new(captured.writer(), false);
        (captured, reporter)
    }

    #[test]
    fn start_lines() {
        let first = "leaktrace: tracing pid 4242 on kernel 6.8.0-test; a socket counts as leaked \
                     after 1.5s (idle after its partner's half-close: after 1m00s)";
        let captured = Captured::default();
        let mut verbose = TextReporter::new(captured.writer(), true);
        verbose.start(&start_info()).unwrap();
        assert_eq!(
            captured.lines(),
            [
                first,
                "leaktrace: hooks: tracepoint family, as this kernel refuses fentry (Operation \
                 not permitted) and kprobes (not in this kernel):",
                "  state     tracepoint:sock:inet_sock_set_state",
                "  shutdown  tracepoint:syscalls:sys_exit_shutdown",
            ]
        );
        let (captured, mut reporter) = reporter();
        reporter.start(&start_info()).unwrap();
        assert_eq!(
            captured.lines(),
            [
                first,
                "leaktrace: hooks: tracepoint family, as this kernel refuses fentry (Operation \
                 not permitted) and kprobes (not in this kernel): 2 tracepoint (--verbose lists \
                 each)"
            ]
        );
        let (captured, mut limited) = self::reporter();
        let mut info = start_info();
        info.limits = vec![(
            "arrival".into(),
            "data arriving after the owner's shutdown is not seen as it comes".into(),
        )];
        limited.start(&info).unwrap();
        assert_eq!(
            captured.lines().last().unwrap(),
            "leaktrace: on this kernel, data arriving after the owner's shutdown is not seen as \
             it comes"
        );
        let (captured, mut with_metrics) = self::reporter();
        let mut info = start_info();
        info.metrics = Some(([127, 0, 0, 1], 9464).into());
        with_metrics.start(&info).unwrap();
        assert_eq!(
            captured.lines().last().unwrap(),
            "leaktrace: metrics at http://127.0.0.1:9464/metrics"
        );
    }

    #[test]
    fn hooks_in_one_line_name_the_events_served_otherwise() {
        let hooks = [
            ("state", "tp_btf:inet_sock_set_state"),
            ("recv", "tp_btf:sock_recv_length"),
            ("accept", "the connection's first read (recv)"),
            ("arrival", "unavailable (no sock:sk_data_ready: 6.4+)"),
            ("fork", "tracepoint:task:task_newtask"),
        ]
        .map(|(event, hook)| (event.to_owned(), hook.to_owned()));
        assert_eq!(
            hooks_summary(&hooks),
            "2 tp_btf, 1 tracepoint (--verbose lists each); accept: the \
             connection's first read (recv); arrival: unavailable (no sock:sk_data_ready: 6.4+)"
        );
    }

    #[test]
    fn a_leak_line_says_where_its_owner_runs() {
        let line = |finding: Finding| {
            let (captured, mut reporter) = reporter();
            reporter.outcome(&Outcome::Leak(Box::new(finding))).unwrap();
            let line = captured.lines().remove(0);
            line.split("  ").nth(2).unwrap().to_owned()
        };
        let mut in_service = in_a_service(finding());
        // Where leaktrace runs too: nothing to say.
        in_service.placement.netns = None;
        assert_eq!(line(in_service), "pid 4242 (mailer) in mailer.service fd 7");
        let mut in_container = finding();
        let id = "3f4c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3";
        in_container.placement.cgroup = Some(format!("/system.slice/docker-{id}.scope"));
        in_container.placement.names = crate::cgroup::names(&format!("/docker/{id}"));
        // Not leaktrace's own namespace: the addresses are the container's.
        in_container.placement.netns = Some(1);
        assert_eq!(
            line(in_container),
            "pid 4242 (mailer) in container 3f4c2a9b8e7d netns 1 fd 7"
        );
        let mut in_cgroup = finding();
        in_cgroup.placement.cgroup = Some("/batch/job-7".into());
        assert_eq!(
            line(in_cgroup),
            "pid 4242 (mailer) in cgroup /batch/job-7 fd 7"
        );
        let mut at_root = finding();
        at_root.placement.cgroup = Some("/".into());
        assert_eq!(line(at_root), "pid 4242 (mailer) fd 7");
    }

    #[test]
    fn live_lines() {
        let (captured, mut reporter) = reporter();
        let mut close_wait = finding();
        close_wait.kind = close_wait::KIND;
        close_wait.state = tcp_state::name(tcp_state::CLOSE_WAIT);
        close_wait.age = Duration::from_millis(1200);
        reporter
            .outcome(&Outcome::Leak(Box::new(close_wait)))
            .unwrap();
        reporter
            .outcome(&Outcome::Leak(Box::new(finding())))
            .unwrap();
        let mut fd_after_close = finding();
        fd_after_close.kind = fd_after_close::KIND;
        (fd_after_close.local, fd_after_close.unread_bytes) = (None, 5);
        (fd_after_close.eof_unread, fd_after_close.age_at_least) = (false, true);
        reporter
            .outcome(&Outcome::Leak(Box::new(fd_after_close)))
            .unwrap();
        reporter.outcome(&Outcome::Resolved(resolved())).unwrap();
        assert_eq!(
            captured.lines(),
            [
                "LEAK  close_wait  pid 4242 (mailer) fd 7  127.0.0.1:8080 <- 127.0.0.1:50412  \
                 CLOSE_WAIT for 1.2s, never closed",
                "LEAK  shut_wr_unread  pid 4242 (mailer) fd 7  127.0.0.1:8080 <- 127.0.0.1:50412  \
                 CLOSE, shut down for writing; the peer then sent 6 bytes and its FIN, \
                 unread 0 + EOF for 2.3s, fd still open",
                "LEAK  fd_after_close  pid 4242 (mailer) fd 7  ? <- 127.0.0.1:50412  \
                 CLOSE, the connection is over, unread 5, fd still open since before tracing \
                 started",
                "RESOLVED close_wait pid 4242 fd ?  [::1]:8080 -- [::1]:50412  (closed)",
            ]
        );
    }

    #[test]
    fn events_not_of_the_owner_say_who_ran_them() {
        use crate::decoder::Task;
        use crate::timeline::tests::{event, key, state, OWNER};
        let sock = key(0x1000, 1);
        let peer = Task {
            tgid: 5151,
            tid: 5151,
            comm: crate::decoder::Comm::new("curl"),
        };
        let mut packet = event(
            sock,
            0,
            state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
        );
        (packet.task, packet.in_owner_context) = (peer, false);
        assert!(timeline_line(&packet, None).ends_with("(in the kernel, while pid 5151 curl ran)"));
        let mut closed = event(sock, 0, EventKind::Close { time_wait: false });
        (closed.task, closed.in_owner_context) = (peer, false);
        assert!(timeline_line(&closed, None).ends_with("(by pid 5151 curl, not the owner)"));
        let own = event(sock, 0, EventKind::Close { time_wait: false });
        assert_eq!(own.task.tgid, OWNER);
        assert!(
            !timeline_line(&own, Some(7)).contains("pid"),
            "{}",
            timeline_line(&own, Some(7))
        );
    }

    /// What a process once named itself to retitle the reader's terminal (ESC ] 0 ; ... BEL)
    /// and forge a second finding on a line of its own.
    const HOSTILE_NAME: &str = "\x1b]0;x\x07\nLEAK x";

    #[test]
    fn process_names_cannot_drive_the_terminal_or_forge_lines() {
        let mut leak = finding();
        leak.comm = HOSTILE_NAME.into();
        // The peer that ran while the kernel moved the socket is named in the timeline.
        for event in &mut leak.timeline {
            if !event.in_owner_context {
                event.task.comm = crate::decoder::Comm::new(HOSTILE_NAME);
            }
        }
        let mut report = final_report(vec![leak.clone()], 0);
        report.stats = stats();
        report.stats.per_pid[0].comm = HOSTILE_NAME.into();
        let (captured, mut reporter) = reporter();
        reporter.outcome(&Outcome::Leak(Box::new(leak))).unwrap();
        reporter.finish(&end(&report)).unwrap();
        let lines = captured.lines();
        assert!(
            lines.iter().all(|l| !l.contains(char::is_control)),
            "{lines:#?}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("LEAK")).count(),
            1,
            "{lines:#?}"
        );
        // The live line, the table row, the timeline's heading and its two events in the
        // kernel, the per-process row.
        let shown = r"\u{1b}]0;x\u{7}\nLEAK x";
        assert_eq!(
            lines.iter().filter(|l| l.contains(shown)).count(),
            6,
            "{lines:#?}"
        );
    }

    #[test]
    fn an_age_from_before_tracing_is_a_lower_bound() {
        let mut present = finding();
        present.kind = close_wait::KIND;
        present.state = tcp_state::name(tcp_state::CLOSE_WAIT);
        present.age_at_least = true;
        assert_eq!(
            present.kind.explain(&present),
            "CLOSE_WAIT since before tracing started, never closed"
        );
        let row = table(&[present]).pop().unwrap();
        assert!(row.ends_with("  >2.3s"), "{row:?}");
    }

    #[test]
    fn final_report_with_findings() {
        let (captured, mut reporter) = reporter();
        reporter
            .finish(&end(&final_report(vec![finding()], 5)))
            .unwrap();
        let lines = captured.lines();
        let expected = [
            "",
            "Open leaks: 1",
            "KIND            PID   COMM    FD  LOCAL           REMOTE           STATE  UNREAD  \
             EOF     AGE",
            "shut_wr_unread  4242  mailer  7   127.0.0.1:8080  127.0.0.1:50412  CLOSE  0       \
             unread  2.3s",
            "",
            "shut_wr_unread pid 4242 (mailer) fd 7  127.0.0.1:8080 <- 127.0.0.1:50412  \
             socket 0xffff888000001000:",
            "  +0.000000s  SYN_RECV -> ESTABLISHED  (in the kernel, while pid 5151 curl ran)",
            "  +0.000200s  accepted (fd 7)",
            "  +0.412000s  shutdown(fd 7, SHUT_WR) = 0  unread 0",
            "  +0.500000s  peer data or FIN arrived  unread 6 + EOF  (in the kernel, while pid \
             5151 curl ran)",
            "  +0.600000s  read() = 6  unread 0 + EOF",
            "  +0.700000s  close(fd 7)",
            "  +0.800000s  destroyed",
            "",
            "summary: leaks open 1, resolved 1; sockets seen 34, records 120, decode errors 3, \
             lost events 5, unattributed 2; timelines forgotten: 0 finished",
            "note: 2 sockets met a leak condition but no owning process was known, so they are \
             not reported",
            "warning: 5 events were lost (ring buffer full): timelines may be incomplete and \
             leaks missed; raise --ring-size (now 4096 bytes)",
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn idle_half_closed_names_its_partner() {
        let (captured, mut reporter) = reporter();
        reporter
            .outcome(&Outcome::Leak(Box::new(idle_finding())))
            .unwrap();
        let mut report = final_report(vec![idle_finding()], 0);
        report.unattributed = 0;
        reporter.finish(&end(&report)).unwrap();
        let lines = captured.lines();
        assert_eq!(
            lines[0],
            "LEAK  idle_half_closed  pid 4242 (mailer) fd 6  127.0.0.1:41000 -> 127.0.0.1:9000  \
             ESTABLISHED, no data either way and no keepalive for 1m01s since its partner fd 5 \
             (127.0.0.1:8080 <- 127.0.0.1:50400) half-closed; its end-of-stream was never \
             passed on"
        );
        assert_eq!(
            lines[7..10],
            [
                "  its partner fd 5 (127.0.0.1:8080 <- 127.0.0.1:50400): its peer half-closed at \
                 +0.300000s",
                "  +0.000000s  SYN_RECV -> ESTABLISHED  (in the kernel, while pid 5151 curl ran)",
                "  +0.000200s  accepted (fd 6)",
            ],
            "{lines:#?}"
        );
    }

    #[test]
    fn a_half_close_before_the_first_event_is_before_it() {
        let mut finding = idle_finding();
        let first = finding.timeline[0].ts_ns;
        if let Some(partner) = &mut finding.partner {
            partner.half_closed_ns = first - 3_700_000;
        }
        let lines = timeline(&finding);
        assert!(
            lines[1].ends_with("its peer half-closed at -0.003700s"),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_dropped_output_is_a_warning_after_the_summary() {
        let (captured, mut reporter) = reporter();
        let mut report = final_report(Vec::new(), 0);
        report.unattributed = 0;
        report.outputs_dropped = vec![trace_dropped()];
        reporter.finish(&end(&report)).unwrap();
        let lines = captured.lines();
        assert_eq!(
            lines.last().map(String::as_str),
            Some(
                "warning: --trace-out /var/tmp/trace.json was dropped when it could not be \
                 written (No space left on device (os error 28)): it holds only what came before"
            ),
            "{lines:#?}"
        );
        assert!(
            lines[lines.len() - 2].starts_with("summary: "),
            "{lines:#?}"
        );
    }

    #[test]
    fn final_report_without_findings() {
        let (captured, mut reporter) = reporter();
        let mut report = final_report(Vec::new(), 0);
        report.unattributed = 0;
        reporter.finish(&end(&report)).unwrap();
        assert_eq!(
            captured.lines(),
            [
                "",
                "No leaked sockets found.",
                "summary: leaks open 0, resolved 1; sockets seen 34, records 120, decode \
                 errors 3, lost events 0, unattributed 0; timelines forgotten: 0 finished",
            ]
        );
    }

    /// A kernel map that filled up hid sockets or processes from the trace: the summary says
    /// how many, what it cost and which flag raises the map.
    #[test]
    fn final_report_with_full_kernel_maps() {
        let (captured, mut reporter) = reporter();
        let mut report = final_report(Vec::new(), 0);
        report.unattributed = 0;
        fill_kernel_maps(&mut report.ingest);
        reporter.finish(&end(&report)).unwrap();
        assert_eq!(
            captured.lines()[3..],
            [
                "warning: socket_map_full 12: sockets of traced processes were not followed, the \
                 kernel's map of them being full: leaks among them are missed; raise \
                 --max-kernel-sockets",
                "warning: target_map_full 3: children of traced processes were not traced, the \
                 kernel's map of traced processes being full: leaks in them are missed; raise \
                 --max-processes",
            ]
        );
    }

    #[test]
    fn final_report_with_stats() {
        let (captured, mut reporter) = reporter();
        let mut report = final_report(Vec::new(), 0);
        report.unattributed = 0;
        report.stats = stats();
        reporter.finish(&end(&report)).unwrap();
        assert_eq!(
            captured.lines(),
            [
                "",
                "No leaked sockets found.",
                "",
                "Per process (by open leaks, then sockets held; HELD, STATES: sockets held now):",
                "PID   COMM    LEAKS_OPEN  LEAKS_NEW  LEAKS/MIN  HELD  STATES",
                "4242  mailer  4           3          2.0        17    ESTABLISHED 12, CLOSE 1, \
                 CLOSE_WAIT 3, LISTEN 1",
                "77    cron    0           0          0.0        0     -",
                "",
                "Per remote (by open leaks, then connections; DIR out: connected to, in: accepted \
                 from):",
                "REMOTE              DIR  CONNECTIONS  TIME_WAIT  LEAKS_OPEN",
                "10.0.0.2            in   40           0          4",
                "[2001:db8::5]:5432  out  1200         1188       0",
                "",
                "summary: leaks open 0, resolved 1; sockets seen 34, records 120, decode \
                 errors 3, lost events 0, unattributed 0; timelines forgotten: 0 finished",
            ]
        );
    }

    #[test]
    fn long_session_trend_and_forgotten_timelines() {
        let captured = Captured::default();
        let mut reporter = TextReporter::new(captured.writer(), false);
        let mut report = final_report(Vec::new(), 0);
        report.unattributed = 0;
        report.dropped = Dropped {
            finished: 5000,
            evicted: 12,
            late_records: 3,
        };
        report.open_over_time = vec![
            (Duration::ZERO, 0),
            (Duration::from_secs(10), 2),
            (Duration::from_secs(75), 3),
        ];
        reporter.finish(&end(&report)).unwrap();
        let lines = captured.lines();
        assert_eq!(
            lines[lines.len() - 3..],
            [
                "leaks open over time: 0.0s 0, 10.0s 2, 1m15s 3",
                "summary: leaks open 0, resolved 1; sockets seen 34, records 120, decode \
                 errors 3, lost events 0, unattributed 0; timelines forgotten: 5000 finished, 12 \
                 over the cap",
                "warning: 12 sockets were forgotten because leaktrace held --max-sockets \
                 timelines: leaks among them may be missed; raise --max-sockets",
            ]
        );
    }

    #[test]
    fn progress_line() {
        let captured = Captured::default();
        let mut reporter = TextReporter::new(captured.writer(), false);
        let mut progress = progress();
        progress.dropped.finished = 1000;
        reporter.progress(&progress).unwrap();
        progress.open.insert(close_wait::KIND, 2);
        progress.open.insert(fd_after_close::KIND, 1);
        reporter.progress(&progress).unwrap();
        assert_eq!(
            captured.lines(),
            [
                "[1m00s] leaks open 0, reported 4, resolved 1; sockets tracked 120, seen 1234; \
                 records 45678, lost events 0; timelines forgotten: 1000 finished",
                "[1m00s] leaks open 3 (close_wait 2, fd_after_close 1), reported 4, resolved 1; \
                 sockets tracked 120, seen 1234; records 45678, lost events 0; timelines \
                 forgotten: 1000 finished",
            ]
        );
    }

    #[test]
    fn stats_sections_show_the_top_rows() {
        let mut stats = stats();
        let remote = stats.per_remote[1].clone();
        stats.per_remote = vec![remote; TOP + 4];
        let sections = stats_sections(&stats);
        let [_, remotes] = &sections[..] else {
            panic!("expected two sections: {sections:?}");
        };
        // Title, header, the top rows, then what was left out.
        assert_eq!(remotes.len(), 2 + TOP + 1);
        assert_eq!(remotes.last().unwrap(), "... and 4 more remotes");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(240)), "0.2s");
        assert_eq!(duration(Duration::from_secs(59)), "59.0s");
        assert_eq!(duration(Duration::from_secs(61)), "1m01s");
        assert_eq!(duration(Duration::from_secs(7384)), "2h03m");
    }
}
