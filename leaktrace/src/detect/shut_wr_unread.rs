//! Incident 3: the owner shut down its write side, the peer sent more (data, its FIN or both)
//! and the owner never consumed it, yet kept the fd, even after the connection itself finished.

use super::{held_for, LeakClass, Since, Verdict, Wait};
use crate::decoder::ReceiveState;
use crate::finding::{Finding, LeakKind, Resolution};
use crate::format::unread;
use crate::timeline::Timeline;

pub(super) const CLASS: LeakClass = LeakClass {
    kind: LeakKind::ShutWrUnread,
    name: "shut_wr_unread",
    wait: Wait::LeakAfter,
    check,
    explain,
};

pub(super) fn check(timeline: &Timeline) -> Verdict {
    match unconsumed(timeline) {
        Unconsumed::Since(ns) => Verdict::Holds {
            since: Since {
                ns,
                // Held from the moment tracing found the socket shut down.
                before_trace: timeline
                    .write_shutdown()
                    .is_some_and(|s| s.before_trace && s.ts_ns == ns),
            },
        },
        Unconsumed::Never | Unconsumed::Until(_) => Verdict::Clear {
            how: Resolution::Drained,
        },
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
    let before_trace = timeline.write_shutdown().is_some_and(|s| s.before_trace);
    // The condition can come and go (data arrives, is read, more arrives); its start is the first
    // event of the stretch that still holds, its end the event that cleared the last stretch.
    let mut since = None;
    let mut until = None;
    let mut track = |ts_ns: u64, now: &ReceiveState| {
        let eof_unread = timeline.eof_unread_at(ts_ns, now);
        if unconsumed_since_shutdown(&baseline, now, eof_unread, before_trace) {
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
    use super::*;

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
}
