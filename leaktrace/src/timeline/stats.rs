//! Counts per process and per remote endpoint, kept as records arrive rather than derived from
//! the timelines, which are swept once their socket is gone: one run must show where all the
//! connections went, so that a real leak stands out from CLOSE_WAIT, TIME_WAIT and pool noise
//! (incident 4). Only counters: a process opening millions of connections costs no more memory
//! than one opening ten.

use std::collections::HashSet;

use rustc_hash::FxHashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use leaktrace_common::tcp_state;

use crate::decoder::{Event, EventKind};

/// TCP states are numbered below this (`include/net/tcp_states.h`).
const STATES: usize = 16;

/// Remote endpoints counted apart; connections to any further one count under
/// [`Remote::Other`], so a process talking to ever new peers cannot grow memory without bound.
const MAX_REMOTES: usize = 1024;

/// The other end of connections, as they are grouped: the ones the process made by the
/// service's address and port, the ones it accepted by the client's address alone, as their
/// ports are ephemeral, a new one per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Remote {
    /// The traced process connected to this address and port.
    Service(SocketAddr),
    /// The traced process accepted connections from this host.
    Client(IpAddr),
    /// Every remote past [`MAX_REMOTES`].
    Other,
}

impl Remote {
    /// "out" for connections the process made, "in" for the ones it accepted.
    pub fn direction(self) -> Option<&'static str> {
        match self {
            Self::Service(_) => Some("out"),
            Self::Client(_) => Some("in"),
            Self::Other => None,
        }
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service(addr) => addr.fmt(f),
            Self::Client(ip) => ip.fmt(f),
            Self::Other => f.write_str("other"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RemoteCounts {
    pub connections: u64,
    /// Connections this side closed first, which leave a TIME_WAIT socket behind for a minute.
    pub time_wait: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    In,
    Out,
}

/// What the counters took from one socket, so that each fact counts once; kept in its timeline.
#[derive(Debug, Default)]
pub(super) struct Tally {
    direction: Option<Direction>,
    remote: Option<Remote>,
    /// Entered TIME_WAIT; counted under `remote` once that is known.
    time_wait: bool,
    time_wait_counted: bool,
}

impl Tally {
    /// Where the socket's connection is counted, once known.
    pub(super) fn remote(&self) -> Option<Remote> {
        self.remote
    }

    /// Whether the socket was accepted (`Some(true)`) or connected, once known.
    pub(super) fn accepted(&self) -> Option<bool> {
        self.direction.map(|d| d == Direction::In)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Sockets each process holds (neither closed nor destroyed), by TCP state: updated on
    /// every record, so an array rather than a map.
    held: FxHashMap<u32, [u64; STATES]>,
    remotes: FxHashMap<Remote, RemoteCounts>,
    /// Local ports seen listening: a socket found at start on one of them was accepted.
    listening: HashSet<u16>,
}

impl Counts {
    /// Per process: how many sockets it holds in each TCP state. Processes holding none are
    /// left out.
    pub(crate) fn held(&self) -> impl Iterator<Item = (u32, Vec<(u8, u64)>)> + '_ {
        self.held.iter().map(|(pid, states)| {
            let states = (0..STATES)
                .filter(|&state| states[state] > 0)
                .map(|state| (state as u8, states[state]))
                .collect();
            (*pid, states)
        })
    }

    pub(crate) fn remotes(&self) -> impl Iterator<Item = (Remote, RemoteCounts)> + '_ {
        self.remotes
            .iter()
            .map(|(remote, counts)| (*remote, *counts))
    }

    /// Counts what `event` tells about its socket, whose remote end is `remote` as far as known.
    pub(super) fn observe(&mut self, tally: &mut Tally, event: &Event, remote: Option<SocketAddr>) {
        if let Some(port) = listening_port(event) {
            self.listening.insert(port);
        }
        if tally.direction.is_none() {
            tally.direction = self.direction(event);
        }
        tally.time_wait |= entered_time_wait(&event.kind);
        if tally.remote.is_none() && !handshake_unfinished(tally.direction, event) {
            if let (Some(direction), Some(addr)) = (tally.direction, event.remote.or(remote)) {
                let key = match direction {
                    Direction::Out => Remote::Service(addr),
                    Direction::In => Remote::Client(addr.ip()),
                };
                let key = if self.remotes.len() < MAX_REMOTES || self.remotes.contains_key(&key) {
                    key
                } else {
                    Remote::Other
                };
                self.remotes.entry(key).or_default().connections += 1;
                tally.remote = Some(key);
            }
        }
        if let Some(key) = tally.remote {
            if tally.time_wait && !tally.time_wait_counted {
                self.remotes.entry(key).or_default().time_wait += 1;
                tally.time_wait_counted = true;
            }
        }
    }

    /// A socket moves between the held counts: `(owner, state)` before and after a record, `None`
    /// while no process holds it.
    pub(super) fn move_held(&mut self, from: Option<(u32, u8)>, to: Option<(u32, u8)>) {
        if from == to {
            return;
        }
        if let Some((pid, state)) = from {
            if let Some(states) = self.held.get_mut(&pid) {
                let n = &mut states[usize::from(state) % STATES];
                *n = n.saturating_sub(1);
                if states.iter().all(|&n| n == 0) {
                    self.held.remove(&pid);
                }
            }
        }
        if let Some((pid, state)) = to {
            self.held.entry(pid).or_insert([0; STATES])[usize::from(state) % STATES] += 1;
        }
    }

    fn direction(&self, event: &Event) -> Option<Direction> {
        match event.kind {
            // The first record of an accepted connection may come after its handshake.
            _ if event.established_at_birth => Some(Direction::In),
            EventKind::State {
                new: tcp_state::SYN_SENT,
                ..
            }
            | EventKind::State {
                old: tcp_state::SYN_SENT,
                ..
            }
            | EventKind::Connect => Some(Direction::Out),
            EventKind::State {
                old: tcp_state::LISTEN | tcp_state::SYN_RECV,
                ..
            }
            | EventKind::State {
                new: tcp_state::SYN_RECV,
                ..
            }
            | EventKind::Accept { .. } => Some(Direction::In),
            // Nothing tells how a socket found at start came to be; the port it uses does.
            EventKind::Present { .. } => Some(
                if event
                    .local
                    .is_some_and(|local| self.listening.contains(&local.port()))
                {
                    Direction::In
                } else {
                    Direction::Out
                },
            ),
            _ => None,
        }
    }
}

/// Whether `event` leaves an accepted socket short of a connection. The kernel can make two
/// sockets for one connection request when the handshake's last ACK and the first data race on
/// two CPUs; the one that loses goes from SYN_RECV to CLOSE and is destroyed, and counting it
/// would show one connection more than the client made. Its destruction decodes as a close too
/// (nothing held it), so neither counts before the socket was seen established.
fn handshake_unfinished(direction: Option<Direction>, event: &Event) -> bool {
    direction == Some(Direction::In)
        && !event.established_at_birth
        && matches!(
            event.kind,
            EventKind::State {
                new: tcp_state::SYN_RECV,
                ..
            } | EventKind::State {
                old: tcp_state::SYN_RECV,
                new: tcp_state::CLOSE,
            } | EventKind::Close { .. }
                | EventKind::Destroy
        )
}

fn listening_port(event: &Event) -> Option<u16> {
    match event.kind {
        EventKind::State {
            new: tcp_state::LISTEN,
            ..
        }
        | EventKind::Present {
            state: tcp_state::LISTEN,
            ..
        } => event.local.map(|local| local.port()),
        _ => None,
    }
}

/// Whether the connection ends in TIME_WAIT on this side: this side sent its FIN first (see
/// [`tcp_state::enters_time_wait`]). The kernel side records no transitions after the owner's
/// close, and says at the close whose FIN went first.
fn entered_time_wait(kind: &EventKind) -> bool {
    match *kind {
        EventKind::State { old, new } => tcp_state::enters_time_wait(old, new),
        EventKind::Close { time_wait } => time_wait,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use leaktrace_common::tcp_state::*;

    use super::*;
    use crate::timeline::tests::{event, from_peer, key, state, DESTROY, OWNER, RELEASE};
    use crate::timeline::Store;

    const DB: &str = "10.0.0.5:5432";

    /// A connection made to `remote`, or accepted from it, as the records of its first moments
    /// have it.
    fn opened(store: &mut Store, sock: crate::decoder::SockKey, remote: &str, outbound: bool) {
        let (first, second) = if outbound {
            (state(CLOSE, SYN_SENT), state(SYN_SENT, ESTABLISHED))
        } else {
            (state(LISTEN, SYN_RECV), state(SYN_RECV, ESTABLISHED))
        };
        for (at, kind) in [(1, first), (2, second)] {
            let mut e = event(sock, at, kind);
            e.remote = Some(remote.parse().unwrap());
            store.insert(e);
        }
    }

    /// How the connection ended: the state changes that record it.
    fn ended(store: &mut Store, sock: crate::decoder::SockKey, changes: &[(u8, u8)]) {
        for (i, &(old, new)) in changes.iter().enumerate() {
            store.insert(from_peer(event(sock, 10 + i as u64, state(old, new))));
        }
    }

    fn remotes(store: &Store) -> Vec<(String, Option<&'static str>, RemoteCounts)> {
        let mut remotes: Vec<_> = store
            .counts()
            .remotes()
            .map(|(r, c)| (r.to_string(), r.direction(), c))
            .collect();
        remotes.sort_by(|a, b| a.0.cmp(&b.0));
        remotes
    }

    fn counts(connections: u64, time_wait: u64) -> RemoteCounts {
        RemoteCounts {
            connections,
            time_wait,
        }
    }

    #[test]
    fn connections_by_service_made_and_by_client_host_accepted() {
        let mut store = Store::default();
        // Two clients' connections from one host, each from its own ephemeral port.
        opened(&mut store, key(1, 1), "10.0.0.2:50412", false);
        opened(&mut store, key(2, 1), "10.0.0.2:50413", false);
        opened(&mut store, key(3, 1), DB, true);
        opened(&mut store, key(4, 1), "[2001:db8::7]:443", true);
        assert_eq!(
            remotes(&store),
            [
                ("10.0.0.2".to_owned(), Some("in"), counts(2, 0)),
                ("10.0.0.5:5432".to_owned(), Some("out"), counts(1, 0)),
                ("[2001:db8::7]:443".to_owned(), Some("out"), counts(1, 0)),
            ]
        );
    }

    #[test]
    fn time_wait_is_counted_where_this_side_closed_first() {
        let mut store = Store::default();
        let endings: [&[(u8, u8)]; 6] = [
            // Closed first: FIN_WAIT2 handed over to a timewait socket.
            &[
                (ESTABLISHED, FIN_WAIT1),
                (FIN_WAIT1, FIN_WAIT2),
                (FIN_WAIT2, CLOSE),
            ],
            // Both closed at once.
            &[
                (ESTABLISHED, FIN_WAIT1),
                (FIN_WAIT1, CLOSING),
                (CLOSING, CLOSE),
            ],
            // A kernel that reports the TIME_WAIT itself: counted once.
            &[(FIN_WAIT2, TIME_WAIT), (TIME_WAIT, CLOSE)],
            // The peer closed first: no TIME_WAIT on this side.
            &[
                (ESTABLISHED, CLOSE_WAIT),
                (CLOSE_WAIT, LAST_ACK),
                (LAST_ACK, CLOSE),
            ],
            // Reset.
            &[(ESTABLISHED, CLOSE)],
            // Still open.
            &[],
        ];
        // Closed first by its owner, after which the kernel side only says, at the end, that
        // it went through TIME_WAIT.
        let sock = key(99, 1);
        opened(&mut store, sock, DB, true);
        store.insert(event(sock, 10, EventKind::Close { time_wait: true }));
        for (i, changes) in endings.into_iter().enumerate() {
            let sock = key(i as u64, 1);
            opened(&mut store, sock, DB, true);
            ended(&mut store, sock, changes);
        }
        assert_eq!(
            remotes(&store),
            [("10.0.0.5:5432".to_owned(), Some("out"), counts(7, 4))]
        );
    }

    #[test]
    fn counts_survive_the_sweep_and_late_direction() {
        let mut store = Store::default();
        let sock = key(1, 1);
        // The end of the connection reaches userspace before its start (another CPU's record).
        ended(&mut store, sock, &[(FIN_WAIT2, CLOSE)]);
        assert_eq!(remotes(&store), []);
        opened(&mut store, sock, DB, true);
        store.insert(event(sock, 20, DESTROY));
        store.insert(event(key(2, 1), 5_000_000_000, EventKind::Arrival));
        store.sweep(|_| false);
        assert!(store.get(&sock).is_none());
        assert_eq!(
            remotes(&store),
            [("10.0.0.5:5432".to_owned(), Some("out"), counts(1, 1))]
        );
    }

    #[test]
    fn a_socket_that_lost_the_handshake_race_is_no_connection() {
        let mut store = Store::default();
        const CLIENT: &str = "10.0.0.2:50412";
        opened(&mut store, key(1, 1), CLIENT, false);
        // Its twin, made for the same request on another CPU, lost the race to the hash table.
        // The kernel side records its step to CLOSE and its destruction, which decodes as a
        // close (nothing held it) and the destruction.
        let twin = key(2, 1);
        for (at, kind) in [
            (2, state(SYN_RECV, CLOSE)),
            (3, EventKind::Close { time_wait: false }),
            (3, DESTROY),
        ] {
            let mut e = event(twin, at, kind);
            e.remote = Some(CLIENT.parse().unwrap());
            store.insert(e);
        }
        assert_eq!(
            remotes(&store),
            [("10.0.0.2".to_owned(), Some("in"), counts(1, 0))]
        );
    }

    #[test]
    fn found_at_start_accepted_when_on_a_listening_port() {
        let mut store = Store::default();
        let present = |sock, state, local: &str, remote: Option<&str>| {
            let mut e = event(
                sock,
                1,
                EventKind::Present {
                    fd: 7,
                    state,
                    send_shutdown: false,
                },
            );
            e.local = Some(local.parse().unwrap());
            e.remote = remote.map(|r| r.parse().unwrap());
            e
        };
        store.insert(present(key(1, 1), LISTEN, "127.0.0.1:8080", None));
        store.insert(present(
            key(2, 1),
            CLOSE_WAIT,
            "127.0.0.1:8080",
            Some("10.0.0.2:50412"),
        ));
        store.insert(present(key(3, 1), ESTABLISHED, "127.0.0.1:40000", Some(DB)));
        assert_eq!(
            remotes(&store),
            [
                ("10.0.0.2".to_owned(), Some("in"), counts(1, 0)),
                ("10.0.0.5:5432".to_owned(), Some("out"), counts(1, 0)),
            ]
        );
    }

    #[test]
    fn remotes_past_the_limit_count_as_other() {
        let mut store = Store::default();
        for i in 0..MAX_REMOTES as u64 + 2 {
            let remote = format!("10.0.{}.{}:443", i / 256, i % 256);
            opened(&mut store, key(i, 1), &remote, true);
        }
        // A remote counted apart before the limit still is.
        opened(&mut store, key(9999, 1), "10.0.0.0:443", true);
        let remotes = remotes(&store);
        assert_eq!(remotes.len(), MAX_REMOTES + 1);
        let other = remotes.iter().find(|(r, ..)| r == "other").unwrap();
        assert_eq!((other.1, other.2), (None, counts(2, 0)));
        let first = remotes.iter().find(|(r, ..)| r == "10.0.0.0:443").unwrap();
        assert_eq!(first.2, counts(2, 0));
    }

    fn held(store: &Store) -> Vec<(u32, Vec<(u8, u64)>)> {
        let mut held: Vec<_> = store.counts().held().collect();
        held.sort();
        held
    }

    #[test]
    fn held_sockets_by_process_and_state() {
        let mut store = Store::default();
        for i in 0..3 {
            opened(&mut store, key(i, 1), DB, true);
        }
        assert_eq!(held(&store), [(OWNER, vec![(ESTABLISHED, 3)])]);

        ended(&mut store, key(0, 1), &[(ESTABLISHED, CLOSE_WAIT)]);
        ended(&mut store, key(1, 1), &[(ESTABLISHED, CLOSE)]);
        assert_eq!(
            held(&store),
            [(OWNER, vec![(ESTABLISHED, 1), (CLOSE, 1), (CLOSE_WAIT, 1)])]
        );

        // Closed: no longer the process's, whatever the kernel still does with it.
        store.insert(event(key(0, 1), 20, RELEASE));
        store.insert(event(key(0, 1), 21, state(CLOSE_WAIT, LAST_ACK)));
        // Taken by another process from its listener's.
        let mut handed = event(key(2, 1), 30, EventKind::Accept { traced: true });
        handed.owner = Some(crate::decoder::Owner { tgid: 77, fd: None });
        store.insert(handed);
        assert_eq!(
            held(&store),
            [(77, vec![(ESTABLISHED, 1)]), (OWNER, vec![(CLOSE, 1)])]
        );

        store.insert(event(key(1, 1), 40, DESTROY));
        assert_eq!(held(&store), [(77, vec![(ESTABLISHED, 1)])]);

        // The exit releases every fd, whether or not the close is seen.
        store.owner_exited(77, 50);
        store.apply_exits();
        assert_eq!(held(&store), []);
    }
}
