//! Incident 1: the peer closed, the owner never did, and the socket sits in CLOSE_WAIT.

use leaktrace_common::tcp_state;

use super::{held_for, LeakClass, Since, Verdict, Wait};
use crate::finding::{ClassEnd, Finding, LeakKind, Resolution};
use crate::timeline::Timeline;

pub(crate) const KIND: LeakKind = LeakKind::named("close_wait");

/// The peer reset the connection.
pub(super) const RESET: Resolution = Resolution::Class(ClassEnd::named("reset"));
/// The owner shut its side down.
pub(super) const SHUTDOWN: Resolution = Resolution::Class(ClassEnd::named("shutdown"));

pub(super) const CLASS: LeakClass = LeakClass {
    kind: KIND,
    wait: Wait::LeakAfter,
    check,
    explain,
    resolutions: &[RESET, SHUTDOWN],
};

pub(super) fn check(timeline: &Timeline) -> Verdict {
    match (timeline.state(), timeline.close_wait_since()) {
        (Some(tcp_state::CLOSE_WAIT), Some(ns)) => Verdict::Holds {
            since: Since {
                ns,
                present_at_start: timeline.close_wait_present_at_start(),
            },
        },
        // Left CLOSE_WAIT without a close: straight to CLOSE, the peer reset the connection
        // (the fd is still held: fd_after_close takes over); else shutdown(SHUT_WR) moved it on
        // to LAST_ACK.
        (Some(tcp_state::CLOSE), _) if timeline.write_shutdown().is_none() => {
            Verdict::Clear { how: RESET }
        }
        _ => Verdict::Clear { how: SHUTDOWN },
    }
}

fn explain(f: &Finding) -> String {
    let pool = match f.close_waits_to_remote {
        // A client pool keeps one per connection until its next use: not a pile.
        Some(1) => "; the only one to this server: likely a pooled keep-alive connection the \
                    server timed out, dropped at its next use"
            .to_owned(),
        Some(n) => format!("; {n} held in CLOSE_WAIT to this server"),
        None => String::new(),
    };
    format!("{} {}, never closed{pool}", f.state, held_for(f))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use leaktrace_common::shutdown_how::SHUT_WR;
    use leaktrace_common::tcp_state::{self, *};

    use super::super::fd_after_close;
    use super::super::test_support::{
        close, close_wait, detectors, kinds, leaks, present, recv, resolutions, the_leak, MS, SOCK,
    };
    use super::{KIND, RESET, SHUTDOWN};
    use crate::decoder::{EventKind, SockKey};
    use crate::finding::{Outcome, Resolution};
    use crate::output::tests::finding;
    use crate::timeline::tests::{
        event, from_peer, key, state, with_receive, ACCEPT, DESTROY, OWNER, RELEASE,
    };
    use crate::timeline::Store;

    #[test]
    fn a_client_close_wait_says_how_many_it_holds_to_that_server() {
        // A pool's connections to one server, which timed them out; an accepted one apart.
        let mut detectors = detectors();
        let mut store = Store::default();
        let server = "127.0.0.1:8000".parse().unwrap();
        for (n, addr) in [(1, 0x1000), (2, 0x2000)] {
            let sock = key(addr, n);
            let mut connected = event(sock, n * MS, state(SYN_SENT, ESTABLISHED));
            connected.remote = Some(server);
            store.insert(connected);
            let mut fin = from_peer(event(sock, 10 * MS, state(ESTABLISHED, CLOSE_WAIT)));
            fin.remote = Some(server);
            store.insert(fin);
        }
        let accepted = key(0x3000, 3);
        store.insert(from_peer(event(
            accepted,
            3 * MS,
            state(SYN_RECV, ESTABLISHED),
        )));
        store.insert(from_peer(event(
            accepted,
            10 * MS,
            state(ESTABLISHED, CLOSE_WAIT),
        )));
        let outcomes = detectors.evaluate(&mut store, 1100 * MS);
        let counts: Vec<(SockKey, Option<u32>)> = leaks(&outcomes)
            .iter()
            .map(|f| (f.sock, f.close_waits_to_remote))
            .collect();
        assert_eq!(counts.len(), 3, "{outcomes:?}");
        for (sock, count) in counts {
            let expected = if sock == accepted { None } else { Some(2) };
            assert_eq!(count, expected, "{sock:?}");
        }
    }

    #[test]
    fn close_wait_reported_after_grace_then_resolved_by_close() {
        let mut store = Store::default();
        let mut detectors = detectors();
        close_wait(&mut store, SOCK, 100 * MS);

        assert!(detectors.evaluate(&mut store, 1099 * MS).is_empty());
        let finding = the_leak(&mut detectors, &mut store, 1100 * MS);
        assert_eq!(finding.kind, KIND);
        assert_eq!((finding.pid, finding.fd), (OWNER, Some(7)));
        assert_eq!(finding.comm, "mailer");
        assert_eq!(finding.state, "CLOSE_WAIT");
        assert_eq!(finding.age, Duration::from_secs(1));
        assert_eq!((finding.unread_bytes, finding.eof_unread), (0, true));
        assert_eq!(finding.local, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(finding.remote, Some("127.0.0.1:50412".parse().unwrap()));
        // With its opening (LISTEN -> SYN_RECV), rebuilt from the socket's birth.
        assert_eq!(finding.timeline.len(), 4);
        // Reported once only.
        assert!(detectors.evaluate(&mut store, 2000 * MS).is_empty());

        close(&mut store, SOCK, 2100 * MS);
        let outcomes = detectors.evaluate(&mut store, 2200 * MS);
        assert_eq!(resolutions(&outcomes), [(KIND, Resolution::Closed)]);
        let Outcome::Resolved(resolved) = &outcomes[0] else {
            unreachable!()
        };
        assert_eq!((resolved.pid, resolved.fd), (OWNER, Some(7)));
        assert!(detectors.evaluate(&mut store, 9000 * MS).is_empty());

        let report = detectors.summary(&mut store, 9000 * MS, Default::default());
        assert!(report.open.is_empty());
        assert_eq!((report.leaks_resolved, report.sockets_seen), (1, 1));
    }

    #[test]
    fn close_wait_closed_within_grace_is_no_leak() {
        let mut store = Store::default();
        let mut detectors = detectors();
        close_wait(&mut store, SOCK, 100 * MS);
        close(&mut store, SOCK, 1099 * MS);
        assert!(detectors.evaluate(&mut store, 1100 * MS).is_empty());
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn close_wait_late_records_from_another_cpu() {
        let mut store = Store::default();
        let mut detectors = detectors();
        // The close and LAST_ACK reach userspace before the CLOSE_WAIT transition that preceded
        // them.
        close(&mut store, SOCK, 500 * MS);
        close_wait(&mut store, SOCK, 100 * MS);
        assert!(detectors.evaluate(&mut store, 5000 * MS).is_empty());
    }

    #[test]
    fn close_wait_resolved_by_shutdown_or_destroy() {
        let mut store = Store::default();
        let mut detectors = detectors();
        let other = key(0x2000, 1);
        close_wait(&mut store, SOCK, 100 * MS);
        close_wait(&mut store, other, 100 * MS);
        assert_eq!(leaks(&detectors.evaluate(&mut store, 1100 * MS)).len(), 2);

        let shutdown = EventKind::Shutdown { how: SHUT_WR };
        store.insert(event(SOCK, 1200 * MS, shutdown));
        store.insert(event(SOCK, 1200 * MS, state(CLOSE_WAIT, LAST_ACK)));
        store.insert(event(other, 1200 * MS, DESTROY));
        let mut outcomes = resolutions(&detectors.evaluate(&mut store, 1300 * MS));
        outcomes.sort_unstable();
        assert_eq!(outcomes, [(KIND, Resolution::Destroyed), (KIND, SHUTDOWN)]);
    }

    #[test]
    fn close_wait_reports_whether_the_owner_read_the_eof() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(event(SOCK, MS, ACCEPT));
        store.insert(from_peer(with_receive(
            event(SOCK, 10 * MS, state(ESTABLISHED, CLOSE_WAIT)),
            1001,
            1000,
            true,
        )));
        recv(&mut store, 20 * MS, 0, 1001, 1001);
        let finding = the_leak(&mut detectors, &mut store, 1100 * MS);
        assert_eq!(finding.kind, KIND);
        assert_eq!((finding.unread_bytes, finding.eof_unread), (0, false));
    }

    #[test]
    fn close_wait_found_at_start_is_reported_at_once() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(present(100 * MS, CLOSE_WAIT, false, 1001, true));
        let finding = the_leak(&mut detectors, &mut store, 150 * MS);
        assert_eq!(finding.kind, KIND);
        assert_eq!((finding.pid, finding.fd), (OWNER, Some(7)));
        assert!(finding.age_at_least);
        assert_eq!(finding.age, Duration::from_millis(50));

        // Its later transitions join the same timeline: the owner finally closes.
        store.insert(event(SOCK, 200 * MS, RELEASE));
        store.insert(event(SOCK, 200 * MS, state(CLOSE_WAIT, LAST_ACK)));
        let outcomes = detectors.evaluate(&mut store, 300 * MS);
        assert_eq!(resolutions(&outcomes), [(KIND, Resolution::Closed)]);
    }

    #[test]
    fn close_wait_entered_while_tracing_waits_for_the_grace_period() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(present(100 * MS, ESTABLISHED, false, 1000, false));
        store.insert(from_peer(event(
            SOCK,
            200 * MS,
            state(ESTABLISHED, CLOSE_WAIT),
        )));
        assert!(detectors.evaluate(&mut store, 1199 * MS).is_empty());
        let finding = the_leak(&mut detectors, &mut store, 1200 * MS);
        assert!(!finding.age_at_least);
    }

    #[test]
    fn close_wait_reset_by_the_peer_becomes_fd_after_close() {
        let mut store = Store::default();
        let mut detectors = detectors();
        close_wait(&mut store, SOCK, 100 * MS);
        assert_eq!(kinds(&detectors.evaluate(&mut store, 1100 * MS)), [KIND]);
        store.insert(from_peer(event(SOCK, 2000 * MS, state(CLOSE_WAIT, CLOSE))));
        let outcomes = detectors.evaluate(&mut store, 2100 * MS);
        assert_eq!(resolutions(&outcomes), [(KIND, RESET)]);
        assert!(leaks(&outcomes).is_empty());
        assert_eq!(
            kinds(&detectors.evaluate(&mut store, 3000 * MS)),
            [fd_after_close::KIND]
        );
    }

    #[test]
    fn a_client_close_wait_says_whether_it_is_one_or_a_pile() {
        let mut pooled = finding();
        pooled.kind = KIND;
        pooled.state = tcp_state::name(tcp_state::CLOSE_WAIT);
        pooled.close_waits_to_remote = Some(1);
        assert!(
            pooled.kind.explain(&pooled).ends_with(
                "never closed; the only one to this server: likely a pooled keep-alive \
                 connection the server timed out, dropped at its next use"
            ),
            "{}",
            pooled.kind.explain(&pooled)
        );
        pooled.close_waits_to_remote = Some(30);
        assert!(pooled
            .kind
            .explain(&pooled)
            .ends_with("never closed; 30 held in CLOSE_WAIT to this server"));
    }
}
