//! Outputs: what the session learns, rendered for people (text) or for other tools (JSON Lines),
//! and the exports beside them: Prometheus metrics (`metrics`) and the per-socket timelines as a
//! trace file (`trace_out`). Each is an [`Output`]; the session feeds them all through one
//! [`Outputs`], once per read of the ring buffer and once per look of the detectors. None of
//! them reaches into the timelines store: what they need of it comes with what they are fed.
//! An export that cannot be written is dropped, and the rest go on; whether the report's
//! failure ends the session is the session's to say.

mod event;
mod json;
mod metrics;
pub(crate) mod pipe;
mod text;
mod trace_out;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use leaktrace_common::tcp_state;

pub(crate) use json::JsonReporter;
pub(crate) use metrics::Metrics;
pub(crate) use text::TextReporter;
pub(crate) use trace_out::TraceOut;

use crate::decoder::{Event, EventKind, SockKey};
use crate::finding::Outcome;
use crate::stderr;
use crate::summary::{DroppedOutput, FinalReport, IngestCounts, Progress};
use crate::timeline::Timeline;
use pipe::Outlet;

/// How long the final report may wait for its reader.
const REPORT_DRAIN_LIMIT: Duration = Duration::from_secs(2);

pub(crate) struct StartInfo {
    /// (event, hook) pairs, e.g. ("state", "tracepoint:sock:inet_sock_set_state").
    pub hooks: Vec<(String, String)>,
    /// The family of those hooks, as `--hooks` names it, and why this one (see
    /// [`crate::hooks::FamilyChoice`]).
    pub family: (&'static str, String),
    /// Hooks tried and refused, with the kernel's reason ("event: hook: why").
    pub refused: Vec<String>,
    /// (event, what the user does not see because this kernel lacks its best hook).
    pub limits: Vec<(String, String)>,
    /// The pids named to trace (`--pid`); empty otherwise.
    pub pids: Vec<u32>,
    /// The cgroup traced (`--cgroup`, `--unit`), as /proc/PID/cgroup spells it.
    pub cgroup: Option<String>,
    /// What is traced, for people: "pid 4242", "all processes", ...
    pub scope: String,
    /// With `--follow-children` of `pids`: their descendants that were running already.
    pub descendants: Option<Vec<u32>>,
    pub leak_after: Duration,
    /// `idle_half_closed`'s wait instead of `leak_after`.
    pub idle_after: Duration,
    pub kernel: String,
    /// Where `--metrics` serves, once bound.
    pub metrics: Option<SocketAddr>,
}

/// One way out for what the session learns. Each output takes what it shows and leaves the
/// rest: the defaults do nothing.
pub(crate) trait Output: Send {
    /// Tracing is live.
    fn start(&mut self, _info: &StartInfo) -> io::Result<()> {
        Ok(())
    }

    /// What one read of the ring buffer brought.
    fn batch(&mut self, _batch: &Batch) {}

    /// What one look of the detectors found, and what the store let go of meanwhile.
    fn tick(&mut self, _tick: &Tick<'_>) -> io::Result<()> {
        Ok(())
    }

    /// A periodic summary while the session runs (`--interval`).
    fn progress(&mut self, _progress: &Progress) -> io::Result<()> {
        Ok(())
    }

    /// The session ends: its final report, and the timelines left.
    fn finish(&mut self, _end: &End<'_>) -> io::Result<()> {
        Ok(())
    }

    /// Whether it writes the timelines themselves: then the store keeps the ones it drops for
    /// [`Tick::swept`], and [`End::timelines`] holds every one left.
    fn wants_timelines(&self) -> bool {
        false
    }
}

/// Slots of [`Batch::entered`]: every TCP state, and 0 for any other number.
const STATE_SLOTS: usize = tcp_state::NEW_SYN_RECV as usize + 1;

/// What one read of the ring buffer brought.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    pub records: usize,
    /// Their bytes, the ring's record headers aside.
    pub bytes: usize,
    /// State transitions among them, by the state entered (the kernel's numbering; 0 for a
    /// number that is no TCP state).
    entered: [u64; STATE_SLOTS],
}

impl Batch {
    /// Counts `event` among the batch's transitions, if it is one.
    #[inline(always)]
    pub(crate) fn count(&mut self, event: &Event) {
        if let EventKind::State { new, .. } = event.kind {
            let slot = usize::from(new);
            self.entered[if slot < STATE_SLOTS { slot } else { 0 }] += 1;
        }
    }

    /// (state, transitions into it) for the states entered.
    pub(crate) fn entered(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        (0..STATE_SLOTS as u8)
            .zip(self.entered)
            .filter(|(_, n)| *n > 0)
    }
}

/// A socket's timeline, for an output that writes timelines (see [`Output::wants_timelines`]).
pub(crate) struct Track<'a> {
    pub key: SockKey,
    pub timeline: &'a Timeline,
    /// Its owner's process name, where known.
    pub comm: Option<String>,
}

/// What one look of the detectors found.
pub(crate) struct Tick<'a> {
    pub outcomes: &'a [Outcome],
    /// Timelines the store let go of since the last tick: sockets whose story is over.
    pub swept: &'a [Track<'a>],
    pub ingest: &'a IngestCounts,
    /// Timelines in memory now.
    pub sockets_tracked: usize,
    /// CLOCK_MONOTONIC, the records' clock.
    pub now_ns: u64,
}

/// The end of the session.
pub(crate) struct End<'a> {
    pub report: &'a FinalReport,
    /// Every timeline the store still holds, for outputs that want them.
    pub timelines: &'a [Track<'a>],
    /// CLOCK_MONOTONIC, the records' clock: where states still current end.
    pub now_ns: u64,
}

/// An export, as the user asked for it: what its failure is reported with.
pub(crate) struct Export {
    /// The flag that asked for it: `--trace-out`.
    pub flag: &'static str,
    /// Where it goes: a path, an address.
    pub to: String,
    /// What a failure to write it loses: "the trace file stops here".
    pub loses: &'static str,
}

/// The report (text or JSON Lines, whose lines leave through a thread of their own) and the
/// exports, fed as one.
#[derive(Default)]
pub(crate) struct Outputs {
    /// `None` until the report starts, and once given up.
    report: Option<(Box<dyn Output>, Outlet)>,
    exports: Vec<(Export, Box<dyn Output>)>,
    /// Exports that failed, dropped: the final report says so.
    dropped: Vec<DroppedOutput>,
}

impl Outputs {
    pub(crate) fn export(&mut self, export: Export, output: impl Output + 'static) {
        self.exports.push((export, Box::new(output)));
    }

    /// Sets the report, whose lines `outlet` hands on.
    pub(crate) fn set_report(&mut self, report: Box<dyn Output>, outlet: Outlet) {
        self.report = Some((report, outlet));
    }

    pub(crate) fn has_report(&self) -> bool {
        self.report.is_some()
    }

    /// Stops writing the report; the exports go on.
    pub(crate) fn give_up_report(&mut self) {
        self.report = None;
    }

    pub(crate) fn wants_timelines(&self) -> bool {
        self.each_output().any(|output| output.wants_timelines())
    }

    /// An `Err` here, as from `tick`, `progress` and `finish`, is the report's: an export that
    /// fails is dropped instead (see [`Self::each_export`]).
    pub(crate) fn start(&mut self, info: &StartInfo) -> io::Result<()> {
        self.each(|output| output.start(info))
    }

    pub(crate) fn batch(&mut self, batch: &Batch) {
        self.each_output_mut()
            .for_each(|output| output.batch(batch));
    }

    pub(crate) fn tick(&mut self, tick: &Tick<'_>) -> io::Result<()> {
        self.each(|output| output.tick(tick))
    }

    pub(crate) fn progress(&mut self, progress: &Progress) -> io::Result<()> {
        self.each(|output| output.progress(progress))
    }

    /// Finishes the exports, then the report, whose summary lists in `report` every export
    /// dropped, at the end too. The report's last lines may take [`REPORT_DRAIN_LIMIT`] to
    /// reach a slow reader, and one that stopped reading does not hold leaktrace past a stop
    /// for long.
    pub(crate) fn finish(
        &mut self,
        report: &mut FinalReport,
        timelines: &[Track<'_>],
        now_ns: u64,
    ) -> io::Result<()> {
        let end = End {
            report: &*report,
            timelines,
            now_ns,
        };
        self.each_export(|export| export.finish(&end));
        report.outputs_dropped.clone_from(&self.dropped);
        let Some((reporter, outlet)) = &mut self.report else {
            return Ok(());
        };
        reporter.finish(&End {
            report,
            timelines,
            now_ns,
        })?;
        outlet.wait(REPORT_DRAIN_LIMIT)
    }

    /// Waits, at most [`REPORT_DRAIN_LIMIT`], for the report's lines handed over so far to be
    /// written: a line leaktrace then writes to stderr itself comes after them.
    pub(crate) fn written(&self) {
        if let Some((_, outlet)) = &self.report {
            // A reader that stopped reading is the report's failure, seen at its next write.
            let _ = outlet.wait(REPORT_DRAIN_LIMIT);
        }
    }

    /// Hands something to the report, then to every export, even after the report failed: the
    /// report's failure, returned, ends the session or only the report (see
    /// [`Self::give_up_report`]).
    fn each(&mut self, mut send: impl FnMut(&mut dyn Output) -> io::Result<()>) -> io::Result<()> {
        let report = match &mut self.report {
            Some((report, _)) => send(report.as_mut()),
            None => Ok(()),
        };
        self.each_export(send);
        report
    }

    /// Hands something to every export. One that fails is dropped, with a warning: a full disk
    /// under the trace file must not cost the session, its report or the other exports.
    fn each_export(&mut self, mut send: impl FnMut(&mut dyn Output) -> io::Result<()>) {
        self.exports.retain_mut(|(export, output)| {
            let Err(e) = send(output.as_mut()) else {
                return true;
            };
            stderr::line(format_args!(
                "leaktrace: warning: dropped {} {}: {e}: {}; tracing and the report go on",
                export.flag, export.to, export.loses
            ));
            self.dropped.push(DroppedOutput {
                flag: export.flag,
                to: export.to.clone(),
                error: e.to_string(),
            });
            false
        });
    }

    fn each_output(&self) -> impl Iterator<Item = &dyn Output> {
        let report = self.report.iter().map(|(report, _)| report.as_ref());
        report.chain(self.exports.iter().map(|(_, export)| export.as_ref()))
    }

    fn each_output_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn Output>> {
        let report = self.report.iter_mut().map(|(report, _)| report);
        report.chain(self.exports.iter_mut().map(|(_, export)| export))
    }
}

/// Writes one whole line in a single call and flushes it, so a reader following the output (or a
/// crash mid-run) never sees half a line.
fn write_line(out: &mut dyn Write, line: &str) -> io::Result<()> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    out.write_all(&buf)?;
    out.flush()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use leaktrace_common::{tcp_state, ProbeFailure};

    use super::*;
    use crate::decoder::{EventKind, SockKey};
    use crate::detect::{close_wait, idle_half_closed, shut_wr_unread};
    use crate::finding::{Finding, Resolution, Resolved};
    use crate::placement::Placement;
    use crate::summary::{IngestCounts, PidStats, RemoteStats, Stats};
    use crate::timeline::tests::{event, from_peer, state, with_receive, DESTROY, RELEASE};
    use crate::timeline::Partner;
    use crate::timeline::{Dropped, Remote};

    /// A writer the test can read back after handing it to a reporter.
    #[derive(Clone, Default)]
    pub(super) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        pub(super) fn writer(&self) -> Box<dyn Write + Send> {
            Box::new(self.clone())
        }

        pub(super) fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }

        /// Keeps the first `len` bytes written, as a file cut to that length does.
        pub(super) fn truncate(&self, len: usize) {
            self.0.lock().unwrap().truncate(len);
        }

        pub(super) fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    pub(super) fn start_info() -> StartInfo {
        StartInfo {
            hooks: vec![
                ("state".into(), "tracepoint:sock:inet_sock_set_state".into()),
                (
                    "shutdown".into(),
                    "tracepoint:syscalls:sys_exit_shutdown".into(),
                ),
            ],
            family: (
                "tracepoint",
                "as this kernel refuses fentry (Operation not permitted) and kprobes (not in \
                 this kernel)"
                    .into(),
            ),
            refused: vec!["accept: fexit:inet_csk_accept: Operation not permitted".into()],
            limits: Vec::new(),
            pids: vec![4242],
            cgroup: None,
            scope: "pid 4242".into(),
            descendants: None,
            leak_after: Duration::from_millis(1500),
            idle_after: Duration::from_secs(60),
            kernel: "6.8.0-test".into(),
            metrics: None,
        }
    }

    pub(super) const SOCK: SockKey = SockKey {
        addr: 0xffff_8880_0000_1000,
        born_ns: 7,
    };

    /// Incident 3's shape: shut down, 6 late bytes read by the runtime, the FIN never read.
    pub(crate) fn finding() -> Finding {
        let shutdown = EventKind::Shutdown {
            how: leaktrace_common::shutdown_how::SHUT_WR,
        };
        Finding {
            kind: shut_wr_unread::KIND,
            sock: SOCK,
            pid: 4242,
            comm: "mailer".into(),
            placement: Placement::default(),
            fd: Some(7),
            local: Some("127.0.0.1:8080".parse().unwrap()),
            remote: Some("127.0.0.1:50412".parse().unwrap()),
            accepted: Some(true),
            state: tcp_state::name(tcp_state::CLOSE),
            unread_bytes: 0,
            eof_unread: true,
            bytes_after_shutdown: Some(6),
            age: Duration::from_millis(2300),
            age_at_least: false,
            timeline: vec![
                from_peer(event(
                    SOCK,
                    1_000_000_000,
                    state(tcp_state::SYN_RECV, tcp_state::ESTABLISHED),
                )),
                event(SOCK, 1_000_200_000, EventKind::Accept { traced: true }),
                with_receive(event(SOCK, 1_412_000_000, shutdown), 100, 100, false),
                from_peer(with_receive(
                    event(SOCK, 1_500_000_000, EventKind::Arrival),
                    107,
                    100,
                    true,
                )),
                with_receive(
                    event(SOCK, 1_600_000_000, EventKind::Recv { ret: Some(6) }),
                    107,
                    106,
                    true,
                ),
                event(SOCK, 1_700_000_000, RELEASE),
                event(SOCK, 1_800_000_000, DESTROY),
            ],
            elided: 0,
            partner: None,
            close_waits_to_remote: None,
        }
    }

    /// `finding` of a process that systemd runs as mailer.service.
    pub(super) fn in_a_service(mut finding: Finding) -> Finding {
        finding.placement = Placement {
            cgroup: Some("/system.slice/mailer.service".into()),
            names: crate::cgroup::names("/system.slice/mailer.service"),
            netns: Some(4_026_531_840),
        };
        finding
    }

    /// Incident 2's shape: the proxy's upstream socket, silent since the client half-closed.
    pub(super) fn idle_finding() -> Finding {
        Finding {
            kind: idle_half_closed::KIND,
            fd: Some(6),
            local: Some("127.0.0.1:41000".parse().unwrap()),
            remote: Some("127.0.0.1:9000".parse().unwrap()),
            accepted: Some(false),
            state: tcp_state::name(tcp_state::ESTABLISHED),
            eof_unread: false,
            bytes_after_shutdown: None,
            age: Duration::from_secs(61),
            timeline: finding().timeline[..2].to_vec(),
            partner: Some(Partner {
                sock: SockKey {
                    addr: 0xffff_8880_0000_2000,
                    born_ns: 3,
                },
                fd: Some(5),
                local: Some("127.0.0.1:8080".parse().unwrap()),
                remote: Some("127.0.0.1:50400".parse().unwrap()),
                accepted: true,
                half_closed_ns: 1_300_000_000,
            }),
            ..finding()
        }
    }

    pub(super) fn resolved() -> Resolved {
        Resolved {
            kind: close_wait::KIND,
            sock: SOCK,
            pid: 4242,
            fd: None,
            local: Some("[::1]:8080".parse().unwrap()),
            remote: Some("[::1]:50412".parse().unwrap()),
            accepted: None,
            how: Resolution::Closed,
        }
    }

    /// The end of a session that reported `report`, for the outputs that take only that.
    pub(super) fn end(report: &FinalReport) -> End<'_> {
        End {
            report,
            timelines: &[],
            now_ns: 0,
        }
    }

    pub(super) fn final_report(open: Vec<Finding>, lost_events: u64) -> FinalReport {
        FinalReport {
            open,
            leaks_resolved: 1,
            sockets_seen: 34,
            unattributed: 2,
            ingest: IngestCounts {
                records: 120,
                decode_errors: 3,
                lost_events,
                ring_size: 4096,
                probe_failures: [0; ProbeFailure::COUNT as usize],
            },
            stats: Stats::default(),
            dropped: Dropped::default(),
            open_over_time: Vec::new(),
            outputs_dropped: Vec::new(),
        }
    }

    /// `--trace-out` on a full disk.
    pub(super) fn trace_dropped() -> DroppedOutput {
        DroppedOutput {
            flag: "--trace-out",
            to: "/var/tmp/trace.json".into(),
            error: "No space left on device (os error 28)".into(),
        }
    }

    /// The kernel's maps filled up during the session: 12 sockets of traced processes not
    /// followed, 3 children not traced (issue 11's items 1 and 4).
    pub(super) fn fill_kernel_maps(ingest: &mut IngestCounts) {
        ingest.probe_failures[ProbeFailure::SocketMapFull as usize] = 12;
        ingest.probe_failures[ProbeFailure::TargetMapFull as usize] = 3;
    }

    /// A minute into a session: 4 leaks reported, 1 resolved, none open yet.
    pub(super) fn progress() -> Progress {
        let mut progress = Progress {
            elapsed: Duration::from_secs(60),
            leaks_reported: 4,
            leaks_resolved: 1,
            sockets_tracked: 120,
            sockets_seen: 1234,
            ..Progress::default()
        };
        progress.ingest.records = 45678;
        progress
    }

    /// Incident 4's shape: a mailer leaking CLOSE_WAIT sockets to its clients among a pool's
    /// healthy churn to a database, and a quiet second process.
    pub(super) fn stats() -> Stats {
        Stats {
            elapsed: Duration::from_secs(90),
            per_pid: vec![
                PidStats {
                    pid: 4242,
                    comm: "mailer".into(),
                    states: vec![
                        (tcp_state::ESTABLISHED, 12),
                        (tcp_state::CLOSE, 1),
                        (tcp_state::CLOSE_WAIT, 3),
                        (tcp_state::LISTEN, 1),
                    ],
                    leaks_open: 4,
                    leaks_new: 3,
                },
                PidStats {
                    pid: 77,
                    comm: "cron".into(),
                    states: Vec::new(),
                    leaks_open: 0,
                    leaks_new: 0,
                },
            ],
            per_remote: vec![
                RemoteStats {
                    remote: Remote::Client("10.0.0.2".parse().unwrap()),
                    connections: 40,
                    time_wait: 0,
                    leaks_open: 4,
                },
                RemoteStats {
                    remote: Remote::Service("[2001:db8::5]:5432".parse().unwrap()),
                    connections: 1200,
                    time_wait: 1188,
                    leaks_open: 0,
                },
            ],
        }
    }

    /// Logs what it is fed, by name, and fails the ticks or the finish if told to, as a full
    /// disk would.
    struct Fake {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        fails_tick: bool,
        fails_finish: bool,
    }

    impl Fake {
        fn new(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Fake {
            Fake {
                name,
                log: Arc::clone(log),
                fails_tick: false,
                fails_finish: false,
            }
        }

        fn fed(&self, what: String) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{} {what}", self.name));
        }
    }

    fn full_disk_if(fails: bool) -> io::Result<()> {
        if fails {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    impl Output for Fake {
        fn tick(&mut self, _tick: &Tick<'_>) -> io::Result<()> {
            self.fed("tick".into());
            full_disk_if(self.fails_tick)
        }

        /// Logs the outputs dropped that its final report names.
        fn finish(&mut self, end: &End<'_>) -> io::Result<()> {
            let dropped: Vec<&str> = (end.report.outputs_dropped.iter())
                .map(|d| d.flag)
                .collect();
            self.fed(format!("finish {dropped:?}"));
            full_disk_if(self.fails_finish)
        }
    }

    fn export(flag: &'static str) -> Export {
        Export {
            flag,
            to: format!("/full{flag}"),
            loses: "it stops here",
        }
    }

    fn fed(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        std::mem::take(&mut log.lock().unwrap())
    }

    fn with_tick(use_tick: impl FnOnce(&Tick<'_>)) {
        let ingest = IngestCounts::default();
        use_tick(&Tick {
            outcomes: &[],
            swept: &[],
            ingest: &ingest,
            sockets_tracked: 0,
            now_ns: 0,
        });
    }

    #[test]
    fn a_failed_report_is_returned_and_the_exports_are_fed_all_the_same() {
        let log = Arc::default();
        let mut outputs = Outputs::default();
        let (_pipe, outlet) = pipe::open(io::sink()).unwrap();
        let report = Fake {
            fails_tick: true,
            ..Fake::new("report", &log)
        };
        outputs.set_report(Box::new(report), outlet);
        outputs.export(export("--trace-out"), Fake::new("trace", &log));
        with_tick(|tick| {
            let failed = outputs.tick(tick).unwrap_err();
            assert_eq!(failed.raw_os_error(), Some(libc::ENOSPC));
            assert_eq!(fed(&log), ["report tick", "trace tick"], "fed all the same");

            outputs.give_up_report();
            assert!(!outputs.has_report());
            assert!(outputs.tick(tick).is_ok());
            assert_eq!(
                fed(&log),
                ["trace tick"],
                "the report given up: fed no more"
            );
        });
        assert!(outputs.dropped.is_empty(), "the export never failed");
    }

    #[test]
    fn a_failed_export_is_dropped_and_the_report_says_so_while_the_rest_go_on() {
        let log = Arc::default();
        let mut outputs = Outputs::default();
        let (_pipe, outlet) = pipe::open(io::sink()).unwrap();
        outputs.set_report(Box::new(Fake::new("report", &log)), outlet);
        let trace = Fake {
            fails_tick: true,
            ..Fake::new("trace", &log)
        };
        outputs.export(export("--trace-out"), trace);
        let metrics = Fake {
            fails_finish: true,
            ..Fake::new("metrics", &log)
        };
        outputs.export(export("--metrics"), metrics);
        with_tick(|tick| {
            assert!(
                outputs.tick(tick).is_ok(),
                "an export's failure is not the report's"
            );
            assert_eq!(fed(&log), ["report tick", "trace tick", "metrics tick"]);
            assert!(outputs.tick(tick).is_ok());
            assert_eq!(
                fed(&log),
                ["report tick", "metrics tick"],
                "the trace dropped"
            );
        });

        let mut report = final_report(Vec::new(), 0);
        outputs.finish(&mut report, &[], 0).unwrap();
        // The exports first, so the report names the one that failed at the end too.
        assert_eq!(
            fed(&log),
            [
                "metrics finish []",
                r#"report finish ["--trace-out", "--metrics"]"#
            ]
        );
        let enospc = io::Error::from_raw_os_error(libc::ENOSPC).to_string();
        assert_eq!(
            report.outputs_dropped,
            [
                DroppedOutput {
                    flag: "--trace-out",
                    to: "/full--trace-out".into(),
                    error: enospc.clone(),
                },
                DroppedOutput {
                    flag: "--metrics",
                    to: "/full--metrics".into(),
                    error: enospc,
                },
            ]
        );
        assert_eq!(report.exit_status(), crate::error::exit_code::OUTPUT);
        assert_eq!(final_report(Vec::new(), 0).exit_status(), 0);
    }

    #[test]
    fn leak_rates_are_per_minute_of_the_session() {
        let mut stats = stats();
        assert_eq!(stats.per_minute(3), 2.0);
        assert_eq!(stats.per_minute(0), 0.0);
        stats.elapsed = Duration::from_secs(7);
        assert_eq!(stats.per_minute(1), 8.57);
        // Not a division by zero, nor an absurd rate, right at the start.
        stats.elapsed = Duration::ZERO;
        assert_eq!(stats.per_minute(1), 60.0);
    }

    #[test]
    fn lines_are_whole_and_flushed() {
        let captured = Captured::default();
        let mut out = captured.writer();
        write_line(&mut out, "one").unwrap();
        write_line(&mut out, "two").unwrap();
        assert_eq!(captured.lines(), ["one", "two"]);
    }
}
