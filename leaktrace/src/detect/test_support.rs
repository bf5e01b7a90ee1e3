//! What the detectors' unit tests share, in `mod.rs` and in each class's file: the detectors as a
//! tick runs them, readers of their outcomes, and the sockets of the field reports' incidents as
//! the kernel side records them.

use std::time::Duration;

use leaktrace_common::tcp_state::*;

use crate::decoder::{Event, EventKind, SockKey};
use crate::finding::{Finding, LeakKind, Outcome, Resolution};
use crate::host::fake::FakeHost;
use crate::tick::Evaluator;
use crate::timeline::tests::{event, from_peer, state, with_receive, ACCEPT, RELEASE};
use crate::timeline::Store;

pub(super) const MS: u64 = 1_000_000;
pub(super) const SOCK: SockKey = SockKey {
    addr: 0x1000,
    born_ns: 1,
};

/// The detectors (leaks after 1s, idle after 3s) as each tick runs them, on a host where
/// none of the records' processes runs.
pub(super) fn detectors() -> Evaluator {
    detectors_on(FakeHost::default())
}

/// The detectors of [`detectors`] on `host`.
pub(super) fn detectors_on(host: FakeHost) -> Evaluator {
    Evaluator::new(
        Duration::from_secs(1),
        Duration::from_secs(3),
        Box::new(host),
    )
}

pub(super) fn leaks(outcomes: &[Outcome]) -> Vec<&Finding> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Leak(f) => Some(&**f),
            Outcome::Resolved(_) => None,
        })
        .collect()
}

/// The one leak the detectors report at `now_ns`, and nothing else.
pub(super) fn the_leak(detectors: &mut Evaluator, store: &mut Store, now_ns: u64) -> Finding {
    let outcomes = detectors.evaluate(store, now_ns);
    let [finding] = leaks(&outcomes)[..] else {
        panic!("expected one leak: {outcomes:?}");
    };
    finding.clone()
}

pub(super) fn kinds(outcomes: &[Outcome]) -> Vec<LeakKind> {
    leaks(outcomes).iter().map(|f| f.kind).collect()
}

pub(super) fn resolutions(outcomes: &[Outcome]) -> Vec<(LeakKind, Resolution)> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Resolved(r) => Some((r.kind, r.how)),
            Outcome::Leak(_) => None,
        })
        .collect()
}

/// An accepted connection whose peer closes at `fin_ms`: the socket enters CLOSE_WAIT.
pub(super) fn close_wait(store: &mut Store, sock: SockKey, fin_ms: u64) {
    let mut established = from_peer(event(sock, fin_ms - 50 * MS, state(SYN_RECV, ESTABLISHED)));
    established.owner = None;
    store.insert(established);
    store.insert(event(sock, fin_ms - 49 * MS, ACCEPT));
    store.insert(from_peer(with_receive(
        event(sock, fin_ms, state(ESTABLISHED, CLOSE_WAIT)),
        101,
        100,
        true,
    )));
}

pub(super) fn close(store: &mut Store, sock: SockKey, at: u64) {
    store.insert(event(sock, at, RELEASE));
    store.insert(event(sock, at, state(CLOSE_WAIT, LAST_ACK)));
}

/// Accepted at 1 ms, shut down with `how` at 100 ms with nothing unread, FIN_WAIT2 after.
pub(super) fn shut_down(store: &mut Store, how: i32) {
    store.insert(event(SOCK, MS, ACCEPT));
    let shutdown = EventKind::Shutdown { how };
    store.insert(with_receive(
        event(SOCK, 100 * MS, shutdown),
        1000,
        1000,
        false,
    ));
    store.insert(event(SOCK, 100 * MS, state(ESTABLISHED, FIN_WAIT1)));
    store.insert(from_peer(event(
        SOCK,
        101 * MS,
        state(FIN_WAIT1, FIN_WAIT2),
    )));
}

/// The peer's data (up to `rcv_nxt`, the owner having read up to 1000) or FIN arriving at `ts`.
pub(super) fn arrival(ts: u64, rcv_nxt: u32, fin: bool) -> Event {
    from_peer(with_receive(
        event(SOCK, ts, EventKind::Arrival),
        rcv_nxt,
        1000,
        fin,
    ))
}

/// The peer sends `n` bytes at 200 ms, then its FIN at 210 ms, which ends the connection.
pub(super) fn peer_sends_and_closes(store: &mut Store, n: u32) {
    store.insert(arrival(200 * MS, 1000 + n, false));
    store.insert(arrival(210 * MS, 1000 + n + 1, true));
    store.insert(from_peer(event(SOCK, 210 * MS, state(FIN_WAIT2, CLOSE))));
}

/// A read after the peer's FIN arrived.
pub(super) fn recv(store: &mut Store, at: u64, ret: i64, copied_seq: u32, rcv_nxt: u32) {
    store.insert(with_receive(
        event(SOCK, at, EventKind::Recv { ret: Some(ret) }),
        rcv_nxt,
        copied_seq,
        true,
    ));
}

/// Found at `at` among the sockets present when tracing started, as the kernel side records it.
pub(super) fn present(at: u64, state: u8, send_shutdown: bool, rcv_nxt: u32, fin: bool) -> Event {
    let kind = EventKind::Present {
        fd: 7,
        state,
        send_shutdown,
    };
    let mut event = with_receive(event(SOCK, at, kind), rcv_nxt, 1000, fin);
    // leaktrace's own context, not the owner's.
    event.task.tgid = 999;
    event.in_owner_context = false;
    event
}

/// An accepted connection whose peer sent 5 bytes the owner never read, then reset it at
/// `reset_ms`: the socket is in CLOSE, the owner still holds fd 7.
pub(super) fn reset(store: &mut Store, sock: SockKey, reset_ms: u64) {
    let mut established = from_peer(event(
        sock,
        reset_ms - 50 * MS,
        state(SYN_RECV, ESTABLISHED),
    ));
    established.owner = None;
    store.insert(established);
    store.insert(event(sock, reset_ms - 49 * MS, ACCEPT));
    let mut reset = from_peer(with_receive(
        event(sock, reset_ms, state(ESTABLISHED, CLOSE)),
        1005,
        1000,
        false,
    ));
    // The kernel released the local port with the connection.
    reset.local = None;
    store.insert(reset);
}
