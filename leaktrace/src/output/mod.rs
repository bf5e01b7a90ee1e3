//! Outputs: the same start, live outcomes and final report rendered for people (text) or for
//! other tools (JSON Lines); and the exports beside them: Prometheus metrics (`metrics`) and the
//! per-socket timelines as a trace file (`trace_out`).

mod format;
mod json;
mod metrics;
pub mod pipe;
mod text;
mod trace_out;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

pub(crate) use format::printable;
pub use format::{probe_failure_meaning, ring_size_hint};
pub use json::JsonReporter;
pub use metrics::Metrics;
pub use text::TextReporter;
pub use trace_out::TraceOut;

use crate::finding::Outcome;
use crate::summary::{FinalReport, Progress};

pub struct StartInfo {
    /// (event, hook) pairs, e.g. ("state", "tracepoint:sock:inet_sock_set_state").
    pub hooks: Vec<(String, String)>,
    /// Hooks tried and refused, with the kernel's reason ("event: hook: why").
    pub refused: Vec<String>,
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

pub trait Reporter: Send {
    fn start(&mut self, info: &StartInfo) -> io::Result<()>;
    /// A leak or resolution, as the detectors find it.
    fn outcome(&mut self, outcome: &Outcome) -> io::Result<()>;
    /// A periodic summary while the session runs (`--interval`).
    fn progress(&mut self, progress: &Progress) -> io::Result<()>;
    fn finish(&mut self, report: &FinalReport) -> io::Result<()>;
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
mod tests {
    use std::sync::{Arc, Mutex};

    use leaktrace_common::{tcp_state, ProbeFailure};

    use super::*;
    use crate::decoder::{EventKind, SockKey};
    use crate::finding::{Finding, LeakKind, Resolved};
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
            refused: vec!["accept: fexit:inet_csk_accept: Operation not permitted".into()],
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
    pub(super) fn finding() -> Finding {
        let shutdown = EventKind::Shutdown {
            how: leaktrace_common::shutdown_how::SHUT_WR,
        };
        Finding {
            kind: LeakKind::ShutWrUnread,
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
            kind: LeakKind::IdleHalfClosed,
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
            kind: LeakKind::CloseWait,
            sock: SOCK,
            pid: 4242,
            fd: None,
            local: Some("[::1]:8080".parse().unwrap()),
            remote: Some("[::1]:50412".parse().unwrap()),
            accepted: None,
            how: "closed",
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
        }
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
