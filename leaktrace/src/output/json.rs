//! JSON Lines: one object per line, a contract other tools parse. Keys may be added, never
//! renamed or removed.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use leaktrace_common::tcp_state;
use serde_json::{json, Map, Value};

use super::event::describe;
use super::{write_line, End, Output, StartInfo, Tick};
use crate::decoder::Event;
use crate::finding::{Finding, Outcome, Resolved};
use crate::format::{how_resolved, kernel_address, ring_size_hint};
use crate::summary::{Progress, Stats};
use crate::timeline::{Dropped, Partner};

pub(crate) struct JsonReporter {
    out: Box<dyn Write + Send>,
}

impl JsonReporter {
    pub(crate) fn new(out: Box<dyn Write + Send>) -> Self {
        Self { out }
    }

    fn emit(&mut self, value: &Value) -> io::Result<()> {
        write_line(&mut self.out, &value.to_string())
    }

    /// A leak or resolution, as the detectors find it.
    pub(crate) fn outcome(&mut self, outcome: &Outcome) -> io::Result<()> {
        match outcome {
            Outcome::Leak(finding) => self.emit(&leak(finding)),
            Outcome::Resolved(resolved) => self.emit(&resolution(resolved)),
        }
    }
}

impl Output for JsonReporter {
    fn start(&mut self, info: &StartInfo) -> io::Result<()> {
        let hooks: Map<String, Value> = info
            .hooks
            .iter()
            .map(|(event, hook)| (event.clone(), Value::from(hook.as_str())))
            .collect();
        let limits: Map<String, Value> = info
            .limits
            .iter()
            .map(|(event, what)| (event.clone(), Value::from(what.as_str())))
            .collect();
        let mut start = json!({
            "type": "start",
            "hooks": hooks,
            "family": info.family.0,
            "family_why": info.family.1,
            "refused": info.refused,
            "limits": limits,
            "pids": info.pids,
            "cgroup": info.cgroup,
            "leak_after_ms": millis(info.leak_after),
            "idle_after_ms": millis(info.idle_after),
            "kernel": info.kernel,
        });
        if let Some(descendants) = &info.descendants {
            start["descendants"] = descendants.as_slice().into();
        }
        if let Some(metrics) = info.metrics {
            start["metrics"] = metrics.to_string().into();
        }
        self.emit(&start)
    }

    fn tick(&mut self, tick: &Tick<'_>) -> io::Result<()> {
        tick.outcomes
            .iter()
            .try_for_each(|outcome| self.outcome(outcome))
    }

    fn progress(&mut self, progress: &Progress) -> io::Result<()> {
        let open: Map<String, Value> = progress
            .open
            .iter()
            .map(|(kind, n)| (kind.name().to_owned(), Value::from(*n)))
            .collect();
        self.emit(&json!({
            "type": "interval",
            "elapsed_ms": millis(progress.elapsed),
            "leaks_open": open,
            "leaks_reported": progress.leaks_reported,
            "leaks_resolved": progress.leaks_resolved,
            "sockets_tracked": progress.sockets_tracked,
            "sockets_seen": progress.sockets_seen,
            "records": progress.ingest.records,
            "decode_errors": progress.ingest.decode_errors,
            "lost_events": progress.ingest.lost_events,
            "dropped": dropped(&progress.dropped),
        }))
    }

    /// Findings were printed as they were found; the counts are left, and the summary, last.
    fn finish(&mut self, end: &End<'_>) -> io::Result<()> {
        let report = end.report;
        let ingest = &report.ingest;
        let hint = (ingest.lost_events > 0).then(|| ring_size_hint(ingest.ring_size));
        self.emit(&stats(&report.stats))?;
        let over_time: Vec<Value> = report
            .open_over_time
            .iter()
            .map(|&(at, open)| json!({"elapsed_ms": millis(at), "open": open}))
            .collect();
        self.emit(&json!({
            "type": "summary",
            "leaks_open": report.open.len(),
            "leaks_resolved": report.leaks_resolved,
            "sockets_seen": report.sockets_seen,
            "lost_events": ingest.lost_events,
            "unattributed": report.unattributed,
            "records": ingest.records,
            "decode_errors": ingest.decode_errors,
            "ring_size": ingest.ring_size,
            "hint": hint,
            "probe_failures": ingest
                .failures()
                .map(|(failure, n)| (failure.name().to_owned(), Value::from(n)))
                .collect::<serde_json::Map<_, _>>(),
            "dropped": dropped(&report.dropped),
            "leaks_open_over_time": over_time,
            "outputs_dropped": report
                .outputs_dropped
                .iter()
                .map(|d| json!({"output": d.flag, "to": d.to, "error": d.error}))
                .collect::<Vec<_>>(),
        }))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn dropped(dropped: &Dropped) -> Value {
    json!({
        "finished": dropped.finished,
        "evicted": dropped.evicted,
        "late_records": dropped.late_records,
    })
}

fn addr(addr: Option<SocketAddr>) -> Value {
    addr.map_or(Value::Null, |a| Value::String(a.to_string()))
}

fn leak(finding: &Finding) -> Value {
    json!({
        "type": "leak",
        "kind": finding.kind.name(),
        "pid": finding.pid,
        "comm": finding.comm,
        "cgroup": finding.placement.cgroup,
        "container": finding.placement.names.container,
        "unit": finding.placement.names.unit,
        "netns": finding.placement.netns,
        "fd": finding.fd,
        "local": addr(finding.local),
        "remote": addr(finding.remote),
        "direction": direction(finding.accepted),
        "state": finding.state,
        "unread_bytes": finding.unread_bytes,
        "eof_unread": finding.eof_unread,
        "bytes_after_shutdown": finding.bytes_after_shutdown,
        "age_ms": millis(finding.age),
        "age_at_least": finding.age_at_least,
        "sock": kernel_address(finding.sock.addr),
        "sock_born_ns": finding.sock.born_ns,
        "timeline": finding
            .timeline
            .iter()
            .map(|event| entry(event, finding.fd_of(event)))
            .collect::<Vec<_>>(),
        "timeline_elided": finding.elided,
        "partner": finding.partner.as_ref().map_or(Value::Null, partner),
        "close_waits_to_remote": finding.close_waits_to_remote,
    })
}

/// The other socket of a proxied pair; its peer's FIN is what it is named for.
fn partner(p: &Partner) -> Value {
    json!({
        "fd": p.fd,
        "local": addr(p.local),
        "remote": addr(p.remote),
        "direction": direction(Some(p.accepted)),
        "half_closed": true,
        "half_closed_ns": p.half_closed_ns,
        "sock": kernel_address(p.sock.addr),
        "sock_born_ns": p.sock.born_ns,
    })
}

/// A timeline entry, as `--json` and `--trace-out` give it. `fd`: the fd by which the event's
/// process holds the socket, where known, for the calls it made on it.
pub(super) fn entry(event: &Event, fd: Option<i32>) -> Value {
    let mut entry = json!({
        "t_ns": event.ts_ns,
        "pid": event.task.tgid,
        "tid": event.task.tid,
        "comm": event.task.comm.to_string(),
        "owner_context": event.in_owner_context,
    });
    let described = describe(event, fd);
    entry["event"] = described.name.into();
    if let Value::Object(entry) = &mut entry {
        entry.extend(described.fields);
    }
    if let Some(receive) = event.receive {
        entry["unread_bytes"] = receive.unread_bytes().into();
        entry["eof_unread"] = receive.eof_unread().into();
        entry["rcv_queue_len"] = receive.queue_len.into();
    }
    entry
}

fn stats(stats: &Stats) -> Value {
    let per_pid: Vec<Value> = stats
        .per_pid
        .iter()
        .map(|p| {
            let states: Map<String, Value> = p
                .states
                .iter()
                .map(|&(state, n)| (tcp_state::name(state).to_owned(), n.into()))
                .collect();
            json!({
                "pid": p.pid,
                "comm": p.comm,
                "states": states,
                "leaks_open": p.leaks_open,
                "leaks_new": p.leaks_new,
                "leaks_per_min": stats.per_minute(p.leaks_new),
            })
        })
        .collect();
    let per_remote: Vec<Value> = stats
        .per_remote
        .iter()
        .map(|r| {
            json!({
                "remote": r.remote.to_string(),
                "direction": r.remote.direction(),
                "connections": r.connections,
                "time_wait": r.time_wait,
                "leaks_open": r.leaks_open,
            })
        })
        .collect();
    json!({
        "type": "stats",
        "elapsed_ms": millis(stats.elapsed),
        "per_pid": per_pid,
        "per_remote": per_remote,
    })
}

fn resolution(resolved: &Resolved) -> Value {
    json!({
        "type": "resolved",
        "kind": resolved.kind.name(),
        "pid": resolved.pid,
        "fd": resolved.fd,
        "local": addr(resolved.local),
        "remote": addr(resolved.remote),
        "direction": direction(resolved.accepted),
        "how": how_resolved(resolved.how),
    })
}

/// "in" for a connection the owner accepted, "out" for one it made, as in the per-remote counts.
fn direction(accepted: Option<bool>) -> Value {
    accepted.map_or(Value::Null, |accepted| {
        Value::from(if accepted { "in" } else { "out" })
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{
        end, fill_kernel_maps, final_report, finding, idle_finding, in_a_service, progress,
        resolved, start_info, stats, trace_dropped, Captured,
    };
    use super::*;
    use crate::detect::close_wait;

    fn parse(line: &str) -> Value {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn start_line() {
        let captured = Captured::default();
        let mut reporter = JsonReporter::new(captured.writer());
        reporter.start(&start_info()).unwrap();
        let lines = captured.lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(
            parse(&lines[0]),
            json!({
                "type": "start",
                "hooks": {
                    "state": "tracepoint:sock:inet_sock_set_state",
                    "shutdown": "tracepoint:syscalls:sys_exit_shutdown",
                },
                "family": "tracepoint",
                "family_why": "as this kernel refuses fentry (Operation not permitted) and \
                               kprobes (not in this kernel)",
                "refused": ["accept: fexit:inet_csk_accept: Operation not permitted"],
                "limits": {},
                "pids": [4242],
                "cgroup": null,
                "leak_after_ms": 1500,
                "idle_after_ms": 60000,
                "kernel": "6.8.0-test",
            })
        );
        let captured = Captured::default();
        let mut reporter = JsonReporter::new(captured.writer());
        let mut info = start_info();
        info.metrics = Some("[::1]:9464".parse().unwrap());
        reporter.start(&info).unwrap();
        assert_eq!(parse(&captured.lines()[0])["metrics"], "[::1]:9464");
        let captured = Captured::default();
        let mut reporter = JsonReporter::new(captured.writer());
        let mut info = start_info();
        info.descendants = Some(vec![4243, 4244]);
        reporter.start(&info).unwrap();
        assert_eq!(
            parse(&captured.lines()[0])["descendants"],
            json!([4243, 4244])
        );
        let captured = Captured::default();
        let mut reporter = JsonReporter::new(captured.writer());
        let mut info = start_info();
        info.limits = vec![("recv".into(), "end-of-stream reads are not seen".into())];
        reporter.start(&info).unwrap();
        assert_eq!(
            parse(&captured.lines()[0])["limits"],
            json!({"recv": "end-of-stream reads are not seen"})
        );
    }

    #[test]
    fn leak_line() {
        let captured = Captured::default();
        let mut reporter = JsonReporter::new(captured.writer());
        reporter
            .outcome(&Outcome::Leak(Box::new(in_a_service(finding()))))
            .unwrap();
        let lines = captured.lines();
        assert_eq!(lines.len(), 1);
        let mut leak = parse(&lines[0]);
        let timeline = leak["timeline"].take();
        assert_eq!(
            leak,
            json!({
                "type": "leak",
                "kind": "shut_wr_unread",
                "pid": 4242,
                "comm": "mailer",
                "cgroup": "/system.slice/mailer.service",
                "container": null,
                "unit": "mailer.service",
                "netns": 4026531840u64,
                "fd": 7,
                "local": "127.0.0.1:8080",
                "remote": "127.0.0.1:50412",
                "direction": "in",
                "state": "CLOSE",
                "unread_bytes": 0,
                "eof_unread": true,
                "bytes_after_shutdown": 6,
                "age_ms": 2300,
                "age_at_least": false,
                "sock": "0xffff888000001000",
                "sock_born_ns": 7,
                "timeline": null,
                "timeline_elided": 0,
                "partner": null,
                "close_waits_to_remote": null,
            })
        );
        assert_eq!(
            timeline,
            json!([
                {"t_ns": 1_000_000_000u64, "event": "state", "pid": 5151, "tid": 5151,
                 "comm": "curl", "owner_context": false, "old": "SYN_RECV", "new": "ESTABLISHED"},
                {"t_ns": 1_000_200_000u64, "event": "accept", "pid": 4242, "tid": 4242,
                 "comm": "mailer", "owner_context": true, "fd": 7, "traced": true},
                {"t_ns": 1_412_000_000u64, "event": "shutdown", "pid": 4242, "tid": 4242,
                 "comm": "mailer", "owner_context": true, "fd": 7, "how": "SHUT_WR", "ret": 0,
                 "unread_bytes": 0, "eof_unread": false, "rcv_queue_len": 0},
                {"t_ns": 1_500_000_000u64, "event": "arrival", "pid": 5151, "tid": 5151,
                 "comm": "curl", "owner_context": false,
                 "unread_bytes": 6, "eof_unread": true, "rcv_queue_len": 0},
                {"t_ns": 1_600_000_000u64, "event": "recv", "pid": 4242, "tid": 4242,
                 "comm": "mailer", "owner_context": true, "ret": 6,
                 "unread_bytes": 0, "eof_unread": true, "rcv_queue_len": 0},
                {"t_ns": 1_700_000_000u64, "event": "close", "pid": 4242, "tid": 4242,
                 "comm": "mailer", "owner_context": true, "fd": 7, "time_wait": false},
                {"t_ns": 1_800_000_000u64, "event": "destroy", "pid": 4242, "tid": 4242,
                 "comm": "mailer", "owner_context": true},
            ])
        );
    }

    #[test]
    fn idle_half_closed_names_its_partner() {
        let captured = Captured::default();
        let mut reporter = JsonReporter::new(captured.writer());
        reporter
            .outcome(&Outcome::Leak(Box::new(idle_finding())))
            .unwrap();
        let leak = parse(&captured.lines()[0]);
        assert_eq!(leak["kind"], "idle_half_closed");
        assert_eq!(
            leak["partner"],
            json!({
                "fd": 5,
                "local": "127.0.0.1:8080",
                "remote": "127.0.0.1:50400",
                "direction": "in",
                "half_closed": true,
                "half_closed_ns": 1_300_000_000u64,
                "sock": "0xffff888000002000",
                "sock_born_ns": 3,
            })
        );
    }

    #[test]
    fn ipv6_and_unknown_addresses() {
        let mut finding = finding();
        finding.local = Some("[::1]:8080".parse().unwrap());
        finding.remote = None;
        finding.fd = None;
        let leak = super::leak(&finding);
        assert_eq!(leak["local"], "[::1]:8080");
        assert_eq!(leak["remote"], Value::Null);
        assert_eq!(leak["fd"], Value::Null);
    }

    #[test]
    fn resolved_and_summary_lines() {
        let captured = Captured::default();
        let mut reporter = JsonReporter::new(captured.writer());
        reporter.outcome(&Outcome::Resolved(resolved())).unwrap();
        // The counts and the summary are all `finish` prints, even with findings open.
        reporter
            .finish(&end(&final_report(vec![finding()], 5)))
            .unwrap();
        let lines = captured.lines();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            parse(&lines[0]),
            json!({
                "type": "resolved",
                "kind": "close_wait",
                "pid": 4242,
                "fd": null,
                "local": "[::1]:8080",
                "remote": "[::1]:50412",
                "direction": null,
                "how": "closed",
            })
        );
        assert_eq!(
            parse(&lines[1]),
            json!({"type": "stats", "elapsed_ms": 0, "per_pid": [], "per_remote": []})
        );
        assert_eq!(
            parse(&lines[2]),
            json!({
                "type": "summary",
                "leaks_open": 1,
                "leaks_resolved": 1,
                "sockets_seen": 34,
                "lost_events": 5,
                "unattributed": 2,
                "records": 120,
                "decode_errors": 3,
                "ring_size": 4096,
                "hint": "raise --ring-size (now 4096 bytes)",
                "probe_failures": {},
                "dropped": {"finished": 0, "evicted": 0, "late_records": 0},
                "leaks_open_over_time": [],
                "outputs_dropped": [],
            })
        );
    }

    #[test]
    fn the_summary_counts_full_kernel_maps_by_reason() {
        let captured = Captured::default();
        let mut reporter = JsonReporter::new(captured.writer());
        let mut report = final_report(Vec::new(), 0);
        fill_kernel_maps(&mut report.ingest);
        reporter.finish(&end(&report)).unwrap();
        let lines = captured.lines();
        let summary = parse(lines.last().unwrap());
        assert_eq!(summary["type"], "summary");
        assert_eq!(
            summary["probe_failures"],
            json!({"socket_map_full": 12, "target_map_full": 3})
        );
    }

    #[test]
    fn interval_line_and_trend() {
        let captured = Captured::default();
        let mut reporter = JsonReporter::new(captured.writer());
        let mut progress = progress();
        progress.open.insert(close_wait::KIND, 2);
        progress.dropped.evicted = 7;
        reporter.progress(&progress).unwrap();
        let mut report = final_report(Vec::new(), 0);
        report.open_over_time = vec![(Duration::ZERO, 0), (Duration::from_secs(10), 2)];
        reporter.finish(&end(&report)).unwrap();
        let lines = captured.lines();
        assert_eq!(
            parse(&lines[0]),
            json!({
                "type": "interval",
                "elapsed_ms": 60000,
                "leaks_open": {"close_wait": 2},
                "leaks_reported": 4,
                "leaks_resolved": 1,
                "sockets_tracked": 120,
                "sockets_seen": 1234,
                "records": 45678,
                "decode_errors": 0,
                "lost_events": 0,
                "dropped": {"finished": 0, "evicted": 7, "late_records": 0},
            })
        );
        assert_eq!(
            parse(lines.last().unwrap())["leaks_open_over_time"],
            json!([{"elapsed_ms": 0, "open": 0}, {"elapsed_ms": 10000, "open": 2}])
        );
    }

    #[test]
    fn the_summary_names_the_outputs_dropped() {
        let captured = Captured::default();
        let mut reporter = JsonReporter::new(captured.writer());
        let mut report = final_report(Vec::new(), 0);
        report.outputs_dropped = vec![trace_dropped()];
        reporter.finish(&end(&report)).unwrap();
        let summary = parse(captured.lines().last().unwrap());
        assert_eq!(
            summary["outputs_dropped"],
            json!([{
                "output": "--trace-out",
                "to": "/var/tmp/trace.json",
                "error": "No space left on device (os error 28)",
            }])
        );
    }

    #[test]
    fn stats_line_comes_just_before_the_summary() {
        let captured = Captured::default();
        let mut reporter = JsonReporter::new(captured.writer());
        let mut report = final_report(Vec::new(), 0);
        report.stats = stats();
        reporter.finish(&end(&report)).unwrap();
        let lines: Vec<Value> = captured.lines().iter().map(|l| parse(l)).collect();
        let [stats, summary] = &lines[..] else {
            panic!("expected a stats and a summary line: {lines:?}");
        };
        assert_eq!(summary["type"], "summary");
        assert_eq!(
            *stats,
            json!({
                "type": "stats",
                "elapsed_ms": 90_000,
                "per_pid": [
                    {"pid": 4242, "comm": "mailer",
                     "states": {"ESTABLISHED": 12, "CLOSE": 1, "CLOSE_WAIT": 3, "LISTEN": 1},
                     "leaks_open": 4, "leaks_new": 3, "leaks_per_min": 2.0},
                    {"pid": 77, "comm": "cron", "states": {}, "leaks_open": 0, "leaks_new": 0,
                     "leaks_per_min": 0.0},
                ],
                "per_remote": [
                    {"remote": "10.0.0.2", "direction": "in", "connections": 40, "time_wait": 0,
                     "leaks_open": 4},
                    {"remote": "[2001:db8::5]:5432", "direction": "out", "connections": 1200,
                     "time_wait": 1188, "leaks_open": 0},
                ],
            })
        );
    }
}
