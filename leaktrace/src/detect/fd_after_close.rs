//! Incident 4's sockets that `lsof` shows as "can't identify protocol" or "protocol: TCP": the
//! connection is over (the socket reached CLOSE, by FINs both ways or by a reset) but the owner
//! still holds the fd, and with it the socket's memory and a slot in its fd table.
//!
//! One socket, one finding: a shut-down socket whose peer's data or FIN lies unconsumed is
//! `shut_wr_unread`, the more specific diagnosis of the same held fd. So this condition includes
//! that nothing is unconsumed, and starts only once the owner consumed it: an owner that reads the
//! end-of-stream and then closes at once is never reported in between.

use leaktrace_common::tcp_state;

use super::shut_wr_unread::{self, Unconsumed};
use super::{held_for, LeakClass, Since, Verdict, Wait};
use crate::finding::{ClassEnd, Finding, LeakKind, Resolution};
use crate::format::unread;
use crate::timeline::Timeline;

pub(crate) const KIND: LeakKind = LeakKind::named("fd_after_close");

/// The owner connected the socket again.
pub(super) const RECONNECTED: Resolution = Resolution::Class(ClassEnd::named("reconnected"));

pub(super) const CLASS: LeakClass = LeakClass {
    kind: KIND,
    wait: Wait::LeakAfter,
    check,
    explain,
    resolutions: &[RECONNECTED],
};

pub(super) fn check(timeline: &Timeline) -> Verdict {
    // A socket without a peer never had a connection to end: created and not yet connected, or a
    // listener shut down; both are in CLOSE too.
    let (Some(tcp_state::CLOSE), Some((ended, present_at_start)), Some(_)) = (
        timeline.state(),
        timeline.state_entered(),
        timeline.remote(),
    ) else {
        // Out of CLOSE again: connect(2) on the same socket after a failed attempt.
        return Verdict::Clear { how: RECONNECTED };
    };
    let ns = match shut_wr_unread::unconsumed(timeline) {
        // shut_wr_unread's finding. The how only shows if one of ours was open, which takes
        // records arriving far out of order: the peer sends nothing once the socket is in CLOSE.
        Unconsumed::Since(_) => {
            return Verdict::Clear {
                how: Resolution::Superseded,
            }
        }
        Unconsumed::Until(consumed) => ended.max(consumed),
        Unconsumed::Never => ended,
    };
    Verdict::Holds {
        since: Since {
            ns,
            present_at_start: present_at_start && ns == ended,
        },
    }
}

fn explain(f: &Finding) -> String {
    format!(
        "{}, the connection is over, {}, fd still open {}",
        f.state,
        unread(f.unread_bytes, f.eof_unread),
        held_for(f)
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use leaktrace_common::shutdown_how::SHUT_WR;
    use leaktrace_common::tcp_state::*;

    use super::super::shut_wr_unread;
    use super::super::test_support::{
        detectors, kinds, leaks, peer_sends_and_closes, present, recv, reset, resolutions,
        shut_down, the_leak, MS, SOCK,
    };
    use super::{KIND, RECONNECTED};
    use crate::finding::Resolution;
    use crate::timeline::tests::{event, from_peer, key, state, DESTROY, OWNER, RELEASE};
    use crate::timeline::Store;

    #[test]
    fn fd_after_close_reset_while_held() {
        for (end, how) in [
            (RELEASE, Resolution::Closed),
            (DESTROY, Resolution::Destroyed),
        ] {
            let mut store = Store::default();
            let mut detectors = detectors();
            reset(&mut store, SOCK, 100 * MS);

            assert!(detectors.evaluate(&mut store, 1099 * MS).is_empty());
            let finding = the_leak(&mut detectors, &mut store, 1100 * MS);
            assert_eq!(finding.kind, KIND);
            assert_eq!((finding.pid, finding.fd), (OWNER, Some(7)));
            assert_eq!(finding.state, "CLOSE");
            assert_eq!(finding.local, Some("127.0.0.1:8080".parse().unwrap()));
            assert_eq!(finding.remote, Some("127.0.0.1:50412".parse().unwrap()));
            assert_eq!((finding.unread_bytes, finding.eof_unread), (5, false));
            assert_eq!(finding.age, Duration::from_secs(1));
            assert!(!finding.age_at_least);
            assert_eq!(
                finding.timeline.last().map(|e| e.kind),
                Some(state(ESTABLISHED, CLOSE))
            );
            assert!(detectors.evaluate(&mut store, 2000 * MS).is_empty());

            store.insert(event(SOCK, 2100 * MS, end));
            let outcomes = detectors.evaluate(&mut store, 2200 * MS);
            assert_eq!(resolutions(&outcomes), [(KIND, how)]);
        }
    }

    #[test]
    fn fd_after_close_closed_within_grace_is_no_leak() {
        let mut store = Store::default();
        let mut detectors = detectors();
        reset(&mut store, SOCK, 100 * MS);
        store.insert(event(SOCK, 1099 * MS, RELEASE));
        store.insert(event(SOCK, 1099 * MS, DESTROY));
        assert!(detectors.evaluate(&mut store, 1100 * MS).is_empty());
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn fd_after_close_waits_while_shut_wr_unread_holds() {
        // Incident 3's socket is in CLOSE with its fd held too: one socket, one finding, the
        // more specific one. Once the owner reads the end-of-stream but keeps the fd, the held
        // fd is all that is left, and it gets its own grace period from that read.
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 6);
        let outcomes = detectors.evaluate(&mut store, 1200 * MS);
        assert_eq!(kinds(&outcomes), [shut_wr_unread::KIND]);
        assert!(detectors.evaluate(&mut store, 5000 * MS).is_empty());

        recv(&mut store, 5100 * MS, 6, 1006, 1007);
        recv(&mut store, 5200 * MS, 0, 1007, 1007);
        let outcomes = detectors.evaluate(&mut store, 5300 * MS);
        assert_eq!(
            resolutions(&outcomes),
            [(shut_wr_unread::KIND, shut_wr_unread::DRAINED)]
        );
        assert!(leaks(&outcomes).is_empty());
        assert!(detectors.evaluate(&mut store, 6199 * MS).is_empty());
        let finding = the_leak(&mut detectors, &mut store, 6200 * MS);
        assert_eq!(finding.kind, KIND);
        assert_eq!(finding.age, Duration::from_secs(1));
        assert_eq!((finding.unread_bytes, finding.eof_unread), (0, false));
    }

    #[test]
    fn fd_after_close_not_between_reading_eof_and_closing() {
        // The connection ended long ago, but the owner only now reads the end-of-stream and
        // closes right after: no instant in between is a leak.
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 0);
        assert_eq!(
            kinds(&detectors.evaluate(&mut store, 5000 * MS)),
            [shut_wr_unread::KIND]
        );
        recv(&mut store, 5100 * MS, 0, 1001, 1001);
        let outcomes = detectors.evaluate(&mut store, 5150 * MS);
        assert!(leaks(&outcomes).is_empty(), "{outcomes:?}");
        store.insert(event(SOCK, 5160 * MS, RELEASE));
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn fd_after_close_found_at_start_is_reported_at_once() {
        // Reset before tracing started (the kernel marks a socket in CLOSE as shut down itself,
        // and no FIN came from the peer), the data it sent still unread; and a connection that
        // ended with FINs both ways, everything read, fd kept.
        for (rcv_nxt, fin, unread) in [(1005, false, 5), (1000, true, 0)] {
            let mut store = Store::default();
            let mut detectors = detectors();
            store.insert(present(100 * MS, CLOSE, true, rcv_nxt, fin));
            let finding = the_leak(&mut detectors, &mut store, 150 * MS);
            assert_eq!(finding.kind, KIND);
            assert_eq!((finding.pid, finding.fd), (OWNER, Some(7)));
            assert_eq!(finding.state, "CLOSE");
            assert_eq!(finding.unread_bytes, unread);
            assert!(finding.age_at_least);
            assert_eq!(finding.age, Duration::from_millis(50));
        }
    }

    #[test]
    fn sockets_without_a_peer_are_no_leak() {
        // Created and never connected, or a listener shut down: CLOSE, but no connection ended.
        let mut store = Store::default();
        let mut detectors = detectors();
        let mut fresh = present(100 * MS, CLOSE, false, 0, false);
        fresh.remote = None;
        store.insert(fresh);
        let listener = key(0x2000, 1);
        let mut shut = event(listener, 200 * MS, state(LISTEN, CLOSE));
        shut.remote = None;
        store.insert(shut);
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn fd_after_close_failed_connect_until_reconnected() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(event(SOCK, 100 * MS, state(CLOSE, SYN_SENT)));
        // Refused: the peer's reset, processed in softirq.
        store.insert(from_peer(event(SOCK, 101 * MS, state(SYN_SENT, CLOSE))));
        assert_eq!(kinds(&detectors.evaluate(&mut store, 1101 * MS)), [KIND]);
        store.insert(event(SOCK, 5000 * MS, state(CLOSE, SYN_SENT)));
        let outcomes = detectors.evaluate(&mut store, 5100 * MS);
        assert_eq!(resolutions(&outcomes), [(KIND, RECONNECTED)]);
    }
}
