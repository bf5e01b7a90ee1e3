//! Incident 2: a proxy pipes two sockets, one peer half-closes, and the proxy never passes the
//! end-of-stream on: the other socket stays open, silent, with no timer that would ever end it.
//!
//! An idle connection alone is no leak (pools keep them by design); what makes it one is its
//! pair's other socket having half-closed when this one fell silent, and the proxy still
//! holding that half-closed socket without having closed or shut it down. Once it did, it
//! handled the end-of-stream: a pool keeps the other connection for the next client. A socket whose own peer
//! half-closed is in CLOSE_WAIT, `close_wait`'s, and one holding unconsumed data after its
//! owner's shutdown is `shut_wr_unread`'s: this class gives way to both.

use leaktrace_common::tcp_state;

use super::shut_wr_unread::{self, Unconsumed};
use super::{held_for, LeakClass, Since, Verdict, Wait};
use crate::finding::{ClassEnd, Finding, LeakKind, Resolution};
use crate::format::partner;
use crate::timeline::KernelTimer;
use crate::timeline::Timeline;

pub(crate) const KIND: LeakKind = LeakKind::named("idle_half_closed");

/// Data moved again, or a timer runs that will end the connection.
pub(super) const TRAFFIC: Resolution = Resolution::Class(ClassEnd::named("traffic"));
/// A keepalive was turned on.
pub(super) const KEEPALIVE: Resolution = Resolution::Class(ClassEnd::named("keepalive"));
/// The connection moved on toward its end.
pub(super) const ENDED: Resolution = Resolution::Class(ClassEnd::named("ended"));
/// The owner closed or shut down the half-closed partner.
pub(super) const PARTNER_CLOSED: Resolution = Resolution::Class(ClassEnd::named("partner closed"));

/// Its own wait: an idle connection is no leak for a while (see `--idle-after`).
pub(super) const CLASS: LeakClass = LeakClass {
    kind: KIND,
    wait: Wait::IdleAfter,
    check,
    explain,
    resolutions: &[TRAFFIC, KEEPALIVE, ENDED, PARTNER_CLOSED],
};

/// Traffic this soon after the partner's half-close still counts as before it: the proxy
/// forwards the bytes that came with the peer's FIN after the FIN arrived, and the kernel reports
/// the last traffic in milliseconds of jiffies.
const QUIET_SLACK_NS: u64 = 1_000_000_000;

pub(super) fn check(timeline: &Timeline) -> Verdict {
    let Some(partner) = timeline.partner() else {
        return Verdict::Clear { how: TRAFFIC };
    };
    if timeline.partner_let_go() {
        return Verdict::Clear {
            how: PARTNER_CLOSED,
        };
    }
    match timeline.state() {
        Some(tcp_state::ESTABLISHED | tcp_state::FIN_WAIT2) => {}
        Some(tcp_state::CLOSE_WAIT) => {
            return Verdict::Clear {
                how: Resolution::Superseded,
            }
        }
        // A shutdown, the peer's FIN after ours, or a reset: the connection is ending.
        _ => return Verdict::Clear { how: ENDED },
    }
    if let Unconsumed::Since(_) = shut_wr_unread::unconsumed(timeline) {
        return Verdict::Clear {
            how: Resolution::Superseded,
        };
    }
    // Only a sample taken after the half-close can tell that nothing moved since.
    let Some(activity) = timeline
        .activity()
        .filter(|a| a.sampled_ns >= partner.half_closed_ns)
    else {
        return Verdict::Clear { how: TRAFFIC };
    };
    match activity.timer {
        Some(KernelTimer::Keepalive) => Verdict::Clear { how: KEEPALIVE },
        Some(KernelTimer::Other) => Verdict::Clear { how: TRAFFIC },
        None if activity.last_traffic_ns > partner.half_closed_ns + QUIET_SLACK_NS => {
            Verdict::Clear { how: TRAFFIC }
        }
        None => Verdict::Holds {
            since: Since {
                ns: activity.last_traffic_ns.max(partner.half_closed_ns),
                // Pairs are known only from openings seen while tracing.
                present_at_start: false,
            },
        },
    }
}

fn explain(f: &Finding) -> String {
    format!(
        "{}, no data either way and no keepalive {} since {} half-closed; its end-of-stream was \
         never passed on",
        f.state,
        held_for(f),
        f.partner
            .map_or_else(|| "its partner".to_owned(), |p| partner(&p))
    )
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use leaktrace_common::shutdown_how::SHUT_WR;
    use leaktrace_common::tcp_state::*;

    use super::super::close_wait;
    use super::super::test_support::{leaks, MS};
    use super::super::{LeakKind, Outcome, Resolution};
    use super::{ENDED, KIND, PARTNER_CLOSED, TRAFFIC};
    use crate::decoder::{Event, EventKind, Owner, SockKey};
    use crate::host::fake::FakeHost;
    use crate::host::{KernelTimer, Sample, Wanted};
    use crate::tick::Evaluator;
    use crate::timeline::tests::{event, from_peer, key, state, ACCEPT, OWNER, RELEASE};
    use crate::timeline::Store;

    /// The proxy's socket for its client, and the one it connected upstream for that client.
    const CLIENT: SockKey = SockKey {
        addr: 0xa000,
        born_ns: 1,
    };
    const UPSTREAM: SockKey = SockKey {
        addr: 0xb000,
        born_ns: 2,
    };
    const UPSTREAM_INO: u64 = 66;

    fn addr(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    /// What the kernel's socket table answers, set by the test as time goes on.
    #[derive(Clone, Default)]
    struct Kernel {
        upstream: Arc<Mutex<Option<Sample>>>,
        reads: Arc<Mutex<u32>>,
    }

    impl Kernel {
        /// The upstream socket last carried data at `last_ms`, as sampled at `now_ms`.
        fn quiet_since(&self, last_ms: u64, now_ms: u64, timer: Option<KernelTimer>) {
            *self.upstream.lock().unwrap() = Some(Sample {
                ino: UPSTREAM_INO,
                local: addr("127.0.0.1:41000").unwrap(),
                remote: addr("127.0.0.1:9000").unwrap(),
                idle: Duration::from_millis(now_ms - last_ms),
                timer,
            });
        }

        fn reads(&self) -> u32 {
            *self.reads.lock().unwrap()
        }
    }

    /// A proxy with no sockets yet: the kernel's answers, its timelines, its detectors.
    fn proxy() -> (Kernel, Store, Evaluator) {
        let kernel = Kernel::default();
        let detectors = detectors(&kernel);
        (kernel, Store::default(), detectors)
    }

    /// The proxy's detectors (idle after 3s) reading `kernel`.
    fn detectors(kernel: &Kernel) -> Evaluator {
        let kernel = kernel.clone();
        let host = FakeHost {
            activity: Some(Box::new(move |_: &[Wanted]| -> io::Result<Vec<Sample>> {
                *kernel.reads.lock().unwrap() += 1;
                Ok(kernel.upstream.lock().unwrap().iter().copied().collect())
            })),
            ..FakeHost::default()
        };
        Evaluator::new(
            Duration::from_secs(1),
            Duration::from_secs(3),
            Box::new(host),
        )
    }

    /// An event of the proxy's, which holds its client as fd 5 and its upstream as fd 6 (as
    /// /proc would say).
    fn on(sock: SockKey, at_ms: u64, kind: EventKind, local: &str, remote: &str) -> Event {
        let mut event = event(sock, at_ms * MS, kind);
        (event.local, event.remote) = (addr(local), addr(remote));
        event.owner = Some(Owner {
            tgid: OWNER,
            fd: Some(if sock == UPSTREAM { 6 } else { 5 }),
        });
        event
    }

    /// The proxy accepts its client as fd 5 at 100 ms and connects upstream as fd 6 at
    /// `upstream_ms`, the connect's record naming the socket's inode.
    fn proxied_pair(store: &mut Store, upstream_ms: u64) {
        proxied_pair_with(store, upstream_ms, Some(UPSTREAM_INO));
    }

    fn proxied_pair_with(store: &mut Store, upstream_ms: u64, ino: Option<u64>) {
        let (proxy, client) = ("127.0.0.1:8080", "127.0.0.1:50400");
        let mut established =
            from_peer(on(CLIENT, 99, state(SYN_RECV, ESTABLISHED), proxy, client));
        established.owner = None;
        store.insert(established);
        store.insert(on(CLIENT, 100, ACCEPT, proxy, client));
        let (ours, upstream) = ("127.0.0.1:41000", "127.0.0.1:9000");
        let mut connect = on(UPSTREAM, upstream_ms, EventKind::Connect, ours, upstream);
        connect.ino = ino;
        store.insert(connect);
        store.insert(on(
            UPSTREAM,
            upstream_ms,
            state(CLOSE, SYN_SENT),
            ours,
            upstream,
        ));
        store.insert(from_peer(on(
            UPSTREAM,
            upstream_ms + 1,
            state(SYN_SENT, ESTABLISHED),
            ours,
            upstream,
        )));
    }

    /// The client half-closes at `fin_ms`, and the proxy keeps its socket (incident 2: Node's
    /// `allowHalfOpen`, no 'end' handler): the end-of-stream is never handled.
    fn client_half_closes(store: &mut Store, fin_ms: u64) {
        let (proxy, client) = ("127.0.0.1:8080", "127.0.0.1:50400");
        store.insert(from_peer(on(
            CLIENT,
            fin_ms,
            state(ESTABLISHED, CLOSE_WAIT),
            proxy,
            client,
        )));
    }

    /// The proxy closes its half-closed client at `close_ms`: the end-of-stream was handled,
    /// as a pool does once it answered its client.
    fn proxy_closes_client(store: &mut Store, close_ms: u64) {
        let (proxy, client) = ("127.0.0.1:8080", "127.0.0.1:50400");
        store.insert(on(CLIENT, close_ms, RELEASE, proxy, client));
        store.insert(on(
            CLIENT,
            close_ms,
            state(CLOSE_WAIT, LAST_ACK),
            proxy,
            client,
        ));
    }

    /// The idle class's outcomes only: the client socket the proxy holds in CLOSE_WAIT is
    /// `close_wait`'s, reported on its own.
    fn idle(detectors: &mut Evaluator, store: &mut Store, now_ns: u64) -> Vec<Outcome> {
        let is_idle = |o: &Outcome| match o {
            Outcome::Leak(f) => f.kind == KIND,
            Outcome::Resolved(r) => r.kind == KIND,
        };
        detectors
            .evaluate(store, now_ns)
            .into_iter()
            .filter(is_idle)
            .collect()
    }

    #[test]
    fn upstream_silent_after_the_client_half_closed() {
        let (kernel, mut store, mut detectors) = proxy();
        proxied_pair(&mut store, 110);
        // Nothing to ask the kernel about before a half-close.
        assert!(idle(&mut detectors, &mut store, 400 * MS).is_empty());
        assert_eq!(kernel.reads(), 0);

        // The last bytes were forwarded upstream just after the client's FIN.
        client_half_closes(&mut store, 500);
        // Not asked so soon after the half-close: a proxy under load would be passing the
        // end-of-stream on and closing, and the answer costs a look through /proc.
        assert!(idle(&mut detectors, &mut store, 600 * MS).is_empty());
        assert_eq!(kernel.reads(), 0);
        kernel.quiet_since(505, 1500, None);
        assert!(idle(&mut detectors, &mut store, 1500 * MS).is_empty());
        assert_eq!(kernel.reads(), 1);
        kernel.quiet_since(505, 3504, None);
        assert!(idle(&mut detectors, &mut store, 3504 * MS).is_empty());
        let outcomes = idle(&mut detectors, &mut store, 3506 * MS);
        let [finding] = leaks(&outcomes)[..] else {
            panic!("expected one leak: {outcomes:?}");
        };
        assert_eq!(finding.kind, KIND);
        assert_eq!((finding.pid, finding.fd), (OWNER, Some(6)));
        assert_eq!(
            finding.accepted,
            Some(false),
            "the proxy connected upstream"
        );
        assert_eq!(finding.state, "ESTABLISHED");
        assert_eq!(finding.age, Duration::from_millis(3001));
        let partner = finding.partner.expect("the partner is named");
        // Still held: the proxy never closed it.
        assert_eq!((partner.sock, partner.fd), (CLIENT, Some(5)));
        assert!(partner.accepted, "the proxy accepted its client");
        assert_eq!(partner.remote, addr("127.0.0.1:50400"));
        assert_eq!(partner.half_closed_ns, 500 * MS);

        // Data again (the proxy finally forwards the end, or the upstream speaks): resolved.
        kernel.quiet_since(4400, 4600, None);
        let outcomes = idle(&mut detectors, &mut store, 4600 * MS);
        let [Outcome::Resolved(resolved)] = &outcomes[..] else {
            panic!("expected a resolution: {outcomes:?}");
        };
        assert_eq!((resolved.kind, resolved.how), (KIND, TRAFFIC));
    }

    #[test]
    fn a_pool_that_closed_its_finished_client_is_no_leak() {
        // nginx with upstream keepalive: the client closes, nginx closes its side at once, the
        // upstream connection waits in the pool, silent, by design.
        let (kernel, mut store, mut detectors) = proxy();
        proxied_pair(&mut store, 110);
        client_half_closes(&mut store, 500);
        proxy_closes_client(&mut store, 501);
        for now_ms in [600, 1600, 3600, 60_000] {
            kernel.quiet_since(505, now_ms, None);
            assert!(detectors.evaluate(&mut store, now_ms * MS).is_empty());
        }
        assert_eq!(
            kernel.reads(),
            0,
            "nothing to sample for a handled end-of-stream"
        );
    }

    #[test]
    fn closing_the_half_closed_client_later_resolves_the_finding() {
        let (kernel, mut store, mut detectors) = proxy();
        proxied_pair(&mut store, 110);
        client_half_closes(&mut store, 500);
        kernel.quiet_since(505, 3600, None);
        assert_eq!(leaks(&idle(&mut detectors, &mut store, 3600 * MS)).len(), 1);
        proxy_closes_client(&mut store, 4000);
        let outcomes = idle(&mut detectors, &mut store, 4100 * MS);
        let [Outcome::Resolved(resolved)] = &outcomes[..] else {
            panic!("expected a resolution: {outcomes:?}");
        };
        assert_eq!(resolved.how, PARTNER_CLOSED);
    }

    #[test]
    fn passing_the_end_on_later_resolves_the_finding() {
        let (kernel, mut store, mut detectors) = proxy();
        proxied_pair(&mut store, 110);
        client_half_closes(&mut store, 500);
        kernel.quiet_since(505, 3600, None);
        assert_eq!(leaks(&idle(&mut detectors, &mut store, 3600 * MS)).len(), 1);
        // The proxy finally shuts its upstream socket down for writing.
        let (ours, upstream) = ("127.0.0.1:41000", "127.0.0.1:9000");
        let shutdown = EventKind::Shutdown { how: SHUT_WR };
        store.insert(on(UPSTREAM, 4000, shutdown, ours, upstream));
        store.insert(on(
            UPSTREAM,
            4000,
            state(ESTABLISHED, FIN_WAIT1),
            ours,
            upstream,
        ));
        let outcomes = idle(&mut detectors, &mut store, 4100 * MS);
        let [Outcome::Resolved(resolved)] = &outcomes[..] else {
            panic!("expected a resolution: {outcomes:?}");
        };
        assert_eq!(resolved.how, ENDED);
    }

    #[test]
    fn without_an_inode_the_sample_is_found_by_addresses() {
        let (kernel, mut store, mut detectors) = proxy();
        proxied_pair_with(&mut store, 110, None);
        client_half_closes(&mut store, 500);
        kernel.quiet_since(505, 3600, None);
        let outcomes = idle(&mut detectors, &mut store, 3600 * MS);
        assert_eq!(leaks(&outcomes)[0].fd, Some(6));
    }

    #[test]
    fn with_an_inode_only_the_inode_matches() {
        // A sample of another inode is not this socket's, whatever the addresses say.
        let (kernel, mut store, mut detectors) = proxy();
        proxied_pair_with(&mut store, 110, Some(UPSTREAM_INO + 1));
        client_half_closes(&mut store, 500);
        kernel.quiet_since(505, 3600, None);
        assert!(idle(&mut detectors, &mut store, 3600 * MS).is_empty());
    }

    #[test]
    fn keepalive_or_data_in_flight_is_no_leak() {
        for timer in [KernelTimer::Keepalive, KernelTimer::Other] {
            let (kernel, mut store, mut detectors) = proxy();
            proxied_pair(&mut store, 110);
            client_half_closes(&mut store, 500);
            for now_ms in [600, 1600, 2600, 3600, 60_000] {
                kernel.quiet_since(505, now_ms, Some(timer));
                assert!(idle(&mut detectors, &mut store, now_ms * MS).is_empty());
            }
        }
    }

    #[test]
    fn upstream_still_talking_after_the_half_close_is_no_leak() {
        // The client sent its request and half-closed; the upstream answered afterwards and the
        // proxy keeps the connection (a response still streaming, or the proxy about to close it).
        let (kernel, mut store, mut detectors) = proxy();
        proxied_pair(&mut store, 110);
        client_half_closes(&mut store, 500);
        for now_ms in [600, 1600, 2600, 3600, 60_000] {
            kernel.quiet_since(1700, now_ms.max(1700), None);
            assert!(idle(&mut detectors, &mut store, now_ms * MS).is_empty());
        }
    }

    #[test]
    fn a_pooled_connection_has_no_partner() {
        // Opened for an earlier client long before this one: idle in the pool, no leak, and not
        // even a look at the kernel's socket table.
        let (kernel, mut store, mut detectors) = proxy();
        proxied_pair(&mut store, 100 + 10_000);
        client_half_closes(&mut store, 10_500);
        kernel.quiet_since(10_505, 60_000, None);
        for now_ms in [10_600, 13_000, 60_000] {
            assert!(idle(&mut detectors, &mut store, now_ms * MS).is_empty());
        }
        assert_eq!(kernel.reads(), 0);
    }

    #[test]
    fn two_accepted_clients_are_no_pair() {
        // A plain server: one client half-closes, another accepted at once sits idle.
        let (kernel, mut store, mut detectors) = proxy();
        let (server, client) = ("127.0.0.1:8080", "127.0.0.1:50400");
        store.insert(on(CLIENT, 100, ACCEPT, server, client));
        let other = key(0xc000, 3);
        store.insert(event(other, 105 * MS, ACCEPT));
        client_half_closes(&mut store, 500);
        for now_ms in [600, 3600, 60_000] {
            assert!(idle(&mut detectors, &mut store, now_ms * MS).is_empty());
        }
        assert_eq!(kernel.reads(), 0);
    }

    #[test]
    fn the_upstream_closing_too_is_close_wait_only() {
        let (kernel, mut store, mut detectors) = proxy();
        proxied_pair(&mut store, 110);
        client_half_closes(&mut store, 500);
        kernel.quiet_since(505, 3600, None);
        let outcomes = idle(&mut detectors, &mut store, 3600 * MS);
        assert_eq!(leaks(&outcomes)[0].kind, KIND);

        // The upstream gives up and closes; the proxy never closes its socket.
        let mut fin = from_peer(event(UPSTREAM, 4000 * MS, state(ESTABLISHED, CLOSE_WAIT)));
        fin.local = addr("127.0.0.1:41000");
        fin.remote = addr("127.0.0.1:9000");
        store.insert(fin);
        let outcomes = idle(&mut detectors, &mut store, 4100 * MS);
        let [Outcome::Resolved(resolved)] = &outcomes[..] else {
            panic!("expected a resolution: {outcomes:?}");
        };
        assert_eq!(
            (resolved.kind, resolved.how),
            (KIND, Resolution::Superseded)
        );
        let outcomes = detectors.evaluate(&mut store, 5000 * MS);
        let kinds: Vec<LeakKind> = leaks(&outcomes).iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [close_wait::KIND]);
    }
}
