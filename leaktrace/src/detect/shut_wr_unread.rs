//! Incident 3: the owner shut down its write side, the peer sent more (data, its FIN or both)
//! and the owner never consumed it, yet kept the fd, even after the connection itself finished.

use super::{held_for, LeakClass, Since, Verdict, Wait};
use crate::decoder::ReceiveState;
use crate::finding::{ClassEnd, Finding, LeakKind, Resolution};
use crate::format::unread;
use crate::timeline::Timeline;

pub(crate) const KIND: LeakKind = LeakKind::named("shut_wr_unread");

/// The owner consumed what the peer sent after its shutdown.
pub(super) const DRAINED: Resolution = Resolution::Class(ClassEnd::named("drained"));

pub(super) const CLASS: LeakClass = LeakClass {
    kind: KIND,
    wait: Wait::LeakAfter,
    check,
    explain,
    resolutions: &[DRAINED],
};

pub(super) fn check(timeline: &Timeline) -> Verdict {
    match unconsumed(timeline) {
        Unconsumed::Since(ns) => Verdict::Holds {
            since: Since {
                ns,
                // Held from the moment tracing found the socket shut down.
                present_at_start: timeline
                    .write_shutdown()
                    .is_some_and(|s| s.present_at_start && s.ts_ns == ns),
            },
        },
        Unconsumed::Never | Unconsumed::Until(_) => Verdict::Clear { how: DRAINED },
    }
}

fn explain(f: &Finding) -> String {
    if f.age_at_least {
        return format!(
            "{}, shut down for writing before tracing started, {}, fd still open",
            f.state,
            unread(f.unread_bytes, f.eof_unread),
        );
    }
    format!(
        "{}, shut down for writing; the peer then sent {} bytes{}, {} {}, fd still open",
        f.state,
        f.bytes_after_shutdown.unwrap_or_default(),
        if f.eof_unread { " and its FIN" } else { "" },
        unread(f.unread_bytes, f.eof_unread),
        held_for(f)
    )
}

/// Whether what the peer sent after the owner's write shutdown lies unconsumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unconsumed {
    /// No write shutdown, or nothing sent after it was ever left unconsumed.
    Never,
    /// Unconsumed since this kernel time, and still.
    Since(u64),
    /// It was, until the owner consumed it at this kernel time.
    Until(u64),
}

pub(super) fn unconsumed(timeline: &Timeline) -> Unconsumed {
    let Some((shutdown_ns, baseline)) = baseline(timeline) else {
        return Unconsumed::Never;
    };
    let present_at_start = timeline
        .write_shutdown()
        .is_some_and(|s| s.present_at_start);
    // The condition can come and go (data arrives, is read, more arrives); its start is the first
    // event of the stretch that still holds, its end the event that cleared the last stretch.
    let mut since = None;
    let mut until = None;
    let mut track = |ts_ns: u64, now: &ReceiveState| {
        let eof_unread = timeline.eof_unread_at(ts_ns, now);
        if unconsumed_since_shutdown(&baseline, now, eof_unread, present_at_start) {
            since.get_or_insert(ts_ns);
        } else if since.take().is_some() {
            until = Some(ts_ns);
        }
    };
    for (ts_ns, receive) in receive_states(timeline).filter(|(ts, _)| *ts >= shutdown_ns) {
        track(ts_ns, &receive);
    }
    // Reads and arrivals past the timeline's size limit are only reflected here.
    if let Some(latest) = timeline.receive().filter(|r| r.ts_ns >= shutdown_ns) {
        track(latest.ts_ns, &latest.value);
    }
    match (since, until) {
        (Some(ns), _) => Unconsumed::Since(ns),
        (None, Some(ns)) => Unconsumed::Until(ns),
        (None, None) => Unconsumed::Never,
    }
}

/// The shutdown's time and the receive side to measure later arrivals against: the one recorded
/// with the shutdown, else the last one known before it, else the first one after it (which can
/// only undercount what the peer sent).
pub(super) fn baseline(timeline: &Timeline) -> Option<(u64, ReceiveState)> {
    let shutdown = timeline.write_shutdown()?;
    let receive = shutdown
        .receive
        .or_else(|| {
            receive_states(timeline)
                .take_while(|(ts, _)| *ts <= shutdown.ts_ns)
                .last()
                .map(|(_, r)| r)
        })
        .or_else(|| {
            receive_states(timeline)
                .find(|(ts, _)| *ts >= shutdown.ts_ns)
                .map(|(_, r)| r)
        })?;
    Some((shutdown.ts_ns, receive))
}

fn receive_states(timeline: &Timeline) -> impl Iterator<Item = (u64, ReceiveState)> + '_ {
    timeline
        .entries()
        .iter()
        .filter_map(|e| Some((e.ts_ns, e.receive?)))
}

/// Data bytes that arrived after the shutdown.
pub(super) fn bytes_after_shutdown(at_shutdown: &ReceiveState, now: &ReceiveState) -> u32 {
    // Sequence-number arithmetic: a "negative" distance means `now` is the older state.
    let advanced = now.rcv_nxt.wrapping_sub(at_shutdown.rcv_nxt);
    if advanced > i32::MAX as u32 {
        return 0;
    }
    // The FIN occupies a sequence number but is no data byte.
    advanced.saturating_sub(u32::from(fin_since_shutdown(at_shutdown, now)))
}

fn fin_since_shutdown(at_shutdown: &ReceiveState, now: &ReceiveState) -> bool {
    now.fin_received && !at_shutdown.fin_received
}

fn unconsumed_since_shutdown(
    at_shutdown: &ReceiveState,
    now: &ReceiveState,
    eof_unread: bool,
    shutdown_before_trace: bool,
) -> bool {
    // For a shutdown that predates the trace, whatever is unread may well have arrived after it.
    let peer_sent = shutdown_before_trace
        || bytes_after_shutdown(at_shutdown, now) > 0
        || fin_since_shutdown(at_shutdown, now);
    peer_sent && (now.unread_bytes() > 0 || eof_unread)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use leaktrace_common::shutdown_how::{SHUT_RD, SHUT_RDWR, SHUT_WR};
    use leaktrace_common::tcp_state::*;

    use super::super::fd_after_close;
    use super::super::test_support::{
        arrival, detectors, kinds, leaks, peer_sends_and_closes, present, recv, resolutions,
        shut_down, the_leak, MS, SOCK,
    };
    use super::*;
    use crate::decoder::EventKind;
    use crate::timeline::tests::{event, from_peer, with_receive, ACCEPT, DESTROY, OWNER, RELEASE};
    use crate::timeline::Store;

    fn at(rcv_nxt: u32, fin_received: bool) -> ReceiveState {
        ReceiveState {
            rcv_nxt,
            copied_seq: 0,
            fin_received,
            queue_len: 0,
        }
    }

    #[test]
    fn bytes_after_shutdown_arithmetic() {
        assert_eq!(bytes_after_shutdown(&at(100, false), &at(106, false)), 6);
        // Only the FIN arrived.
        assert_eq!(bytes_after_shutdown(&at(100, false), &at(101, true)), 0);
        // The FIN had arrived before the shutdown.
        assert_eq!(bytes_after_shutdown(&at(101, true), &at(101, true)), 0);
        // Sequence numbers wrap; 5 data bytes and the FIN.
        assert_eq!(
            bytes_after_shutdown(&at(u32::MAX - 1, false), &at(4, true)),
            5
        );
        // An older state than the shutdown's never gives a negative count.
        assert_eq!(bytes_after_shutdown(&at(100, false), &at(90, false)), 0);
    }

    #[test]
    fn shut_wr_late_bytes_never_read() {
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 6);

        assert!(detectors.evaluate(&mut store, 1199 * MS).is_empty());
        let finding = the_leak(&mut detectors, &mut store, 1200 * MS);
        assert_eq!(finding.kind, KIND);
        assert_eq!(finding.state, "CLOSE");
        assert_eq!((finding.pid, finding.fd), (OWNER, Some(7)));
        assert_eq!(finding.unread_bytes, 6);
        assert!(finding.eof_unread);
        assert_eq!(finding.bytes_after_shutdown, Some(6));
        assert_eq!(finding.age, Duration::from_secs(1));
    }

    #[test]
    fn shut_wr_late_bytes_read_but_not_eof() {
        // Incident 3: the runtime pulled the bytes into its own buffer, never read the EOF.
        // Whether the FIN came in a segment of its own (copied_seq stops before it) or with the
        // bytes (reading them moves copied_seq past it), the read returned 6, never 0: the owner
        // never learned of the end of the stream.
        for copied_after_read in [1006, 1007] {
            let mut store = Store::default();
            let mut detectors = detectors();
            shut_down(&mut store, SHUT_WR);
            peer_sends_and_closes(&mut store, 6);
            recv(&mut store, 220 * MS, 6, copied_after_read, 1007);

            let finding = the_leak(&mut detectors, &mut store, 1200 * MS);
            assert_eq!(
                (
                    finding.unread_bytes,
                    finding.eof_unread,
                    finding.bytes_after_shutdown
                ),
                (0, true, Some(6)),
                "copied_seq {copied_after_read}"
            );

            // Reading the EOF drains it.
            recv(&mut store, 1300 * MS, 0, 1007, 1007);
            let outcomes = detectors.evaluate(&mut store, 1400 * MS);
            assert_eq!(resolutions(&outcomes), [(KIND, DRAINED)]);
        }
    }

    #[test]
    fn shut_wr_without_read_results_trusts_the_counters() {
        // Kernels before 6.3 only report data reads, without their result: there the kernel's
        // counters are all there is, and counters past the FIN mean drained.
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 6);
        store.insert(with_receive(
            event(SOCK, 220 * MS, EventKind::Recv { ret: None }),
            1007,
            1007,
            true,
        ));
        // Drained, so no shut_wr_unread; the fd still held after the connection ended is
        // fd_after_close's.
        let outcomes = detectors.evaluate(&mut store, 5000 * MS);
        assert_eq!(kinds(&outcomes), [fd_after_close::KIND]);
    }

    #[test]
    fn shut_down_before_tracing_with_unread_data_is_reported_at_once() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(present(100 * MS, CLOSE, true, 1013, true));
        let finding = the_leak(&mut detectors, &mut store, 100 * MS);
        assert_eq!(finding.kind, KIND);
        assert_eq!((finding.unread_bytes, finding.eof_unread), (12, true));
        assert!(finding.age_at_least);
    }

    #[test]
    fn shut_down_before_tracing_and_drained_is_no_leak() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(present(100 * MS, FIN_WAIT2, true, 1000, false));
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn shut_wr_baseline_from_before_the_shutdown() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(with_receive(
            event(SOCK, 50 * MS, ACCEPT),
            1000,
            1000,
            false,
        ));
        // This shutdown record carries no receive state.
        let shutdown = EventKind::Shutdown { how: SHUT_WR };
        store.insert(event(SOCK, 100 * MS, shutdown));
        peer_sends_and_closes(&mut store, 6);
        let finding = the_leak(&mut detectors, &mut store, 1200 * MS);
        assert_eq!(finding.bytes_after_shutdown, Some(6));
    }

    #[test]
    fn shut_rdwr_counts_shut_rd_does_not() {
        // Without a write shutdown, the unread bytes of a finished connection whose fd is held
        // are no shut_wr_unread: just the held fd.
        for (how, expected) in [(SHUT_RDWR, KIND), (SHUT_RD, fd_after_close::KIND)] {
            let mut store = Store::default();
            let mut detectors = detectors();
            shut_down(&mut store, how);
            peer_sends_and_closes(&mut store, 6);
            let outcomes = detectors.evaluate(&mut store, 5000 * MS);
            assert_eq!(kinds(&outcomes), [expected], "how {how}");
        }
    }

    #[test]
    fn shut_wr_well_behaved_is_no_leak() {
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 6);
        recv(&mut store, 220 * MS, 6, 1006, 1007);
        recv(&mut store, 230 * MS, 0, 1007, 1007);
        store.insert(event(SOCK, 240 * MS, RELEASE));
        store.insert(event(SOCK, 240 * MS, DESTROY));
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn shut_wr_only_fin_after_shutdown() {
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 0);
        let finding = the_leak(&mut detectors, &mut store, 1300 * MS);
        assert_eq!(
            (
                finding.unread_bytes,
                finding.eof_unread,
                finding.bytes_after_shutdown
            ),
            (0, true, Some(0))
        );
        // Not a close_wait leak: the socket never was in CLOSE_WAIT.
        assert_eq!(finding.kind, KIND);
    }

    #[test]
    fn shut_wr_condition_restarts_after_a_drain() {
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        store.insert(arrival(200 * MS, 1006, false));
        store.insert(with_receive(
            event(SOCK, 300 * MS, EventKind::Recv { ret: Some(6) }),
            1006,
            1006,
            false,
        ));
        store.insert(from_peer(with_receive(
            event(SOCK, 400 * MS, EventKind::Arrival),
            1010,
            1006,
            false,
        )));
        assert!(detectors.evaluate(&mut store, 1399 * MS).is_empty());
        let finding = the_leak(&mut detectors, &mut store, 1400 * MS);
        assert_eq!(
            (finding.unread_bytes, finding.bytes_after_shutdown),
            (4, Some(10))
        );
        assert!(!finding.eof_unread);
    }

    #[test]
    fn shut_wr_resolved_by_close_and_destroy() {
        for (end, how) in [
            (RELEASE, Resolution::Closed),
            (DESTROY, Resolution::Destroyed),
        ] {
            let mut store = Store::default();
            let mut detectors = detectors();
            shut_down(&mut store, SHUT_WR);
            peer_sends_and_closes(&mut store, 6);
            assert_eq!(leaks(&detectors.evaluate(&mut store, 2000 * MS)).len(), 1);
            store.insert(event(SOCK, 2100 * MS, end));
            let outcomes = detectors.evaluate(&mut store, 2200 * MS);
            assert_eq!(resolutions(&outcomes), [(KIND, how)]);
        }
    }
}
