//! Turns ring-buffer bytes into typed events: the only place that knows the raw [`Record`] layout
//! and its sentinel values and flags.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use leaktrace_common::{
    shutdown_how, Record, RecordKind, AF_INET, AF_INET6, COMM_LEN, FLAG_ESTABLISHED_AT_BIRTH,
    FLAG_FIN_RECEIVED, FLAG_HAS_RECEIVE_STATE, FLAG_OWNER_CONTEXT, FLAG_RELEASED,
    FLAG_SEND_SHUTDOWN, FLAG_SHUTDOWN, FLAG_TIME_WAIT, FLAG_UNTRACED, NO_FD, OWNER_UNKNOWN,
    RESULT_UNKNOWN,
};

/// One socket over its lifetime: the kernel reuses `struct sock` addresses, so the address alone
/// would merge unrelated connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKey {
    pub addr: u64,
    pub born_ns: u64,
}

/// A task's name as the kernel keeps it: at most 16 bytes, NUL-padded. Kept as bytes so a record
/// costs no allocation; spelled (lossily, as UTF-8) only when printed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; COMM_LEN]);

impl Comm {
    pub fn new(name: &str) -> Self {
        let mut raw = [0; COMM_LEN];
        let len = name.len().min(COMM_LEN);
        raw[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self(raw)
    }

    fn bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.0[..len]
    }

    pub fn is_empty(&self) -> bool {
        self.0[0] == 0
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        String::from_utf8_lossy(self.bytes()).fmt(f)
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// The task that was running when the event fired, which is not necessarily the socket's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    pub tgid: u32,
    pub tid: u32,
    pub comm: Comm,
}

/// The process the kernel side has bound to the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
    /// Known only for sockets found at start (from the fd leaktrace inspected); otherwise it is
    /// looked up in /proc when a finding needs it.
    pub fd: Option<i32>,
}

/// The socket's receive side when the event fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveState {
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub fin_received: bool,
    pub queue_len: u32,
}

impl ReceiveState {
    /// Data bytes the application has not read yet, as the kernel's `tcp_inq` counts them.
    pub fn unread_bytes(&self) -> u32 {
        let pending = self.rcv_nxt.wrapping_sub(self.copied_seq);
        // A received FIN advances rcv_nxt by one sequence number without being a data byte.
        if self.fin_received && pending > 0 {
            pending - 1
        } else {
            pending
        }
    }

    /// The peer's end-of-stream has arrived but the application has not read up to it.
    pub fn eof_unread(&self) -> bool {
        self.fin_received && self.rcv_nxt != self.copied_seq
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    State {
        old: u8,
        new: u8,
    },
    /// The owner's connect(): its SYN_SENT transition, which the kernel side leaves for the
    /// timeline to rebuild from the socket's birth (see [`Event::opening`]).
    Connect,
    /// Another process than the listener's took the connection (accept, or its first read).
    /// `traced`: false when that process is not traced; the socket leaves the trace.
    Accept {
        traced: bool,
    },
    /// The owner's shutdown(2) made the state change recorded with it.
    Shutdown {
        how: i32,
    },
    /// The owner's last close (or its exit) released the socket; nothing more is recorded of it.
    /// `time_wait`: this side's FIN went first, so the connection ends in TIME_WAIT here.
    Close {
        time_wait: bool,
    },
    Destroy,
    /// `ret` is `None` where the hook cannot see the read's result.
    Recv {
        ret: Option<i64>,
    },
    Arrival,
    /// The socket existed before the trace started: held by `fd`, in `state`, its sending side
    /// already shut down or not.
    Present {
        fd: i32,
        state: u8,
        send_shutdown: bool,
    },
    /// Not from the kernel: /proc showed that the task's process holds the socket as `fd` now,
    /// after its recorded owner let go of it (passed it on, exited) or records of it were lost.
    HandedOver {
        fd: i32,
    },
    /// Not about a socket: the task's process started `child`, which is traced from now on.
    Fork {
        child: u32,
    },
    /// Not about a socket: the task's process exited.
    Exit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub sock: SockKey,
    pub task: Task,
    pub owner: Option<Owner>,
    pub in_owner_context: bool,
    /// The socket came from a listener and its handshake ended at its birth, unrecorded
    /// (`FLAG_ESTABLISHED_AT_BIRTH`): rebuilt by [`Event::opening`].
    pub established_at_birth: bool,
    /// When a traced process took the socket from its listener, where an accept hook saw it.
    pub taken_ns: Option<u64>,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub receive: Option<ReceiveState>,
    /// The socket file's inode (`socket:[ino]` in /proc/<pid>/fd), where the socket had one.
    pub ino: Option<u64>,
    pub kind: EventKind,
}

impl Event {
    /// How the socket was opened, as far as this event, the first seen of it, tells: accepted
    /// from a listener (`Some(true)`) or connected (`Some(false)`).
    pub fn opened_accepted(&self) -> Option<bool> {
        use leaktrace_common::tcp_state::{SYN_RECV, SYN_SENT};
        match self.kind {
            EventKind::State { old: SYN_SENT, .. } => Some(false),
            EventKind::State { old: SYN_RECV, .. } => Some(true),
            _ => self.established_at_birth.then_some(true),
        }
    }

    /// The transitions that opened the socket, which the kernel side does not record: their time
    /// is the socket's birth and their states follow from the first recorded transition's
    /// `old`, or from [`Event::established_at_birth`]. For the first event seen of a socket;
    /// empty when it tells nothing of an opening.
    pub fn opening(&self) -> impl Iterator<Item = Event> {
        use leaktrace_common::tcp_state::{CLOSE, ESTABLISHED, LISTEN, SYN_RECV, SYN_SENT};
        let connected = self.opened_accepted() == Some(false);
        let accepted = self.opened_accepted() == Some(true);
        let first = *self;
        let at_birth = move |kind| Event {
            ts_ns: first.sock.born_ns,
            task: match first.owner {
                // connect() ran in the owner; a passive opening ran in softirq, for nobody.
                Some(owner) if connected => Task {
                    tgid: owner.tgid,
                    tid: owner.tgid,
                    comm: Comm::default(),
                },
                _ => Task {
                    tgid: 0,
                    tid: 0,
                    comm: Comm::default(),
                },
            },
            in_owner_context: connected,
            receive: None,
            kind,
            ..first
        };
        let state = |old, new| EventKind::State { old, new };
        [
            connected.then_some(EventKind::Connect),
            connected.then_some(state(CLOSE, SYN_SENT)),
            accepted.then_some(state(LISTEN, SYN_RECV)),
            self.established_at_birth
                .then_some(state(SYN_RECV, ESTABLISHED)),
        ]
        .into_iter()
        .flatten()
        .map(at_birth)
    }
}

/// The events one record carries: one, or two where the owner's call made a state change (the
/// call, then the change). The two differ only in their kind, which is all that is kept of the
/// second: a record is decoded for every socket event of a busy host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub first: Event,
    pub then: Option<EventKind>,
}

impl Decoded {
    pub(crate) fn second(&self) -> Option<Event> {
        self.then.map(|kind| Event { kind, ..self.first })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    Length { got: usize },
    UnknownKind(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length { got } => write!(
                f,
                "record is {got} bytes, expected {} (kernel and userspace built from different leaktrace-common?)",
                Record::SIZE
            ),
            Self::UnknownKind(kind) => write!(f, "record has unknown kind {kind}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The one spelling of `shutdown(2)`'s `how` values.
pub(crate) fn shutdown_how_name(how: i32) -> &'static str {
    match how {
        shutdown_how::SHUT_RD => "SHUT_RD",
        shutdown_how::SHUT_WR => "SHUT_WR",
        shutdown_how::SHUT_RDWR => "SHUT_RDWR",
        _ => "UNKNOWN",
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    if bytes.len() != Record::SIZE {
        return Err(DecodeError::Length { got: bytes.len() });
    }
    // SAFETY: the length is exactly one Record, Record is plain integer data for which every bit
    // pattern is valid, and read_unaligned copes with the ring buffer's lack of alignment.
    let record = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Record>()) };
    let kind = RecordKind::try_from(record.kind).map_err(DecodeError::UnknownKind)?;
    let flag = |bit: u16| record.flags & bit != 0;
    let state = EventKind::State {
        old: record.old_state,
        new: record.new_state,
    };
    let (first, then) = match kind {
        RecordKind::State if flag(FLAG_RELEASED) => {
            // Closing a socket in FIN_WAIT1 or FIN_WAIT2 restates its state: nothing changed.
            let changed = record.old_state != record.new_state;
            (
                EventKind::Close {
                    time_wait: flag(FLAG_TIME_WAIT),
                },
                changed.then_some(state),
            )
        }
        RecordKind::State if flag(FLAG_SHUTDOWN) => {
            (EventKind::Shutdown { how: record.how }, Some(state))
        }
        RecordKind::State => (state, None),
        // Closing a socket whose connection was already over destroys it at once.
        RecordKind::Destroy if flag(FLAG_RELEASED) => (
            EventKind::Close { time_wait: false },
            Some(EventKind::Destroy),
        ),
        RecordKind::Destroy => (EventKind::Destroy, None),
        RecordKind::Accept => (
            EventKind::Accept {
                traced: !flag(FLAG_UNTRACED),
            },
            None,
        ),
        RecordKind::Recv => (
            EventKind::Recv {
                ret: (record.ret != RESULT_UNKNOWN).then_some(record.ret),
            },
            None,
        ),
        RecordKind::Arrival => (EventKind::Arrival, None),
        RecordKind::Present => (
            EventKind::Present {
                fd: record.fd,
                state: record.new_state,
                send_shutdown: flag(FLAG_SEND_SHUTDOWN),
            },
            None,
        ),
        RecordKind::Fork => (
            EventKind::Fork {
                child: record.child_tgid,
            },
            None,
        ),
        RecordKind::Exit => (EventKind::Exit, None),
    };
    let first = Event {
        ts_ns: record.ts_ns,
        sock: SockKey {
            addr: record.sock,
            born_ns: record.sock_born_ns,
        },
        task: Task {
            tgid: record.tgid,
            tid: record.tid,
            comm: Comm(record.comm),
        },
        owner: (record.owner_tgid != OWNER_UNKNOWN).then_some(Owner {
            tgid: record.owner_tgid,
            fd: (kind == RecordKind::Present && record.fd != NO_FD).then_some(record.fd),
        }),
        in_owner_context: flag(FLAG_OWNER_CONTEXT),
        established_at_birth: flag(FLAG_ESTABLISHED_AT_BIRTH),
        taken_ns: (record.sock_taken_ns != 0).then_some(record.sock_taken_ns),
        local: socket_addr(record.family, &record.saddr, record.sport),
        remote: socket_addr(record.family, &record.daddr, record.dport),
        receive: flag(FLAG_HAS_RECEIVE_STATE).then_some(ReceiveState {
            rcv_nxt: record.rcv_nxt,
            copied_seq: record.copied_seq,
            fin_received: flag(FLAG_FIN_RECEIVED),
            queue_len: record.rcv_qlen,
        }),
        ino: (record.ino != 0).then_some(record.ino),
        kind: first,
    };
    Ok(Decoded { first, then })
}

fn socket_addr(family: u16, addr: &[u8; 16], port: u16) -> Option<SocketAddr> {
    // Whole words, not byte by byte: a record's addresses are built for every socket event, and
    // bytes stored one at a time then read back as a word stall the CPU.
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::from(u32::from_be_bytes([
            addr[0], addr[1], addr[2], addr[3],
        ]))),
        // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; showing them as the IPv4
        // address they are matches what the peer itself and `ss -4` would print.
        AF_INET6 => Ipv6Addr::from(u128::from_be_bytes(*addr)).to_canonical(),
        _ => return None,
    };
    // Port 0: not bound yet, or the kernel already released the port (a finished connection
    // whose fd is still held); the address alone would be a misleading endpoint.
    (port != 0).then_some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use leaktrace_common::tcp_state;

    fn record() -> Record {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"mailer");
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        Record {
            ts_ns: 1_000,
            sock: 0xffff_8880_1234_5678,
            sock_born_ns: 500,
            sock_taken_ns: 0,
            ino: 0,
            ret: 0,
            tgid: 4242,
            tid: 4243,
            owner_tgid: 4242,
            child_tgid: 0,
            fd: 7,
            how: shutdown_how::SHUT_WR,
            rcv_nxt: 110,
            copied_seq: 100,
            rcv_qlen: 1,
            sport: 8080,
            dport: 50412,
            family: AF_INET,
            flags: FLAG_OWNER_CONTEXT | FLAG_HAS_RECEIVE_STATE | FLAG_FIN_RECEIVED,
            kind: RecordKind::State as u8,
            old_state: tcp_state::ESTABLISHED,
            new_state: tcp_state::CLOSE_WAIT,
            _pad: [0; 1],
            saddr,
            daddr,
            comm,
        }
    }

    fn bytes(record: &Record) -> Vec<u8> {
        // SAFETY: Record is plain data without padding; viewing it as bytes is what the kernel does.
        unsafe { std::slice::from_raw_parts((record as *const Record).cast::<u8>(), Record::SIZE) }
            .to_vec()
    }

    fn one(record: &Record) -> Event {
        let decoded = decode(&bytes(record)).unwrap();
        assert_eq!(decoded.then, None, "{decoded:?}");
        decoded.first
    }

    #[test]
    fn decodes_state_record() {
        let event = one(&record());
        assert_eq!(event.ts_ns, 1_000);
        assert_eq!(
            event.sock,
            SockKey {
                addr: 0xffff_8880_1234_5678,
                born_ns: 500
            }
        );
        assert_eq!(
            event.task,
            Task {
                tgid: 4242,
                tid: 4243,
                comm: Comm::new("mailer")
            }
        );
        // Only a socket found at start comes with its owner's fd.
        assert_eq!(
            event.owner,
            Some(Owner {
                tgid: 4242,
                fd: None
            })
        );
        assert!(event.in_owner_context);
        assert_eq!(event.local, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(event.remote, Some("10.0.0.2:50412".parse().unwrap()));
        assert_eq!(
            event.kind,
            EventKind::State {
                old: tcp_state::ESTABLISHED,
                new: tcp_state::CLOSE_WAIT
            }
        );
        let receive = event.receive.unwrap();
        assert!(receive.fin_received);
        assert_eq!(receive.queue_len, 1);
        assert_eq!(receive.unread_bytes(), 9);
        assert!(receive.eof_unread());
    }

    #[test]
    fn decodes_unaligned_input() {
        let mut buf = vec![0u8];
        buf.extend(bytes(&record()));
        assert_eq!(decode(&buf[1..]).unwrap().first.ts_ns, 1_000);
    }

    #[test]
    fn sentinels_become_none() {
        let mut r = record();
        r.owner_tgid = OWNER_UNKNOWN;
        r.flags = 0;
        let event = one(&r);
        assert_eq!(event.owner, None);
        assert!(!event.in_owner_context);
        assert_eq!(event.receive, None);
        assert_eq!(event.ino, None);

        r.kind = RecordKind::Present as u8;
        r.owner_tgid = 4242;
        r.ino = 77;
        let event = one(&r);
        assert_eq!(
            event.owner,
            Some(Owner {
                tgid: 4242,
                fd: Some(7)
            })
        );
        assert_eq!(event.ino, Some(77));
        r.fd = NO_FD;
        assert_eq!(one(&r).owner.unwrap().fd, None);
    }

    #[test]
    fn the_owners_calls_come_before_the_change_they_made() {
        let mut r = record();
        r.old_state = tcp_state::ESTABLISHED;
        r.new_state = tcp_state::FIN_WAIT1;
        r.flags |= FLAG_SHUTDOWN;
        r.how = shutdown_how::SHUT_RDWR;
        let decoded = decode(&bytes(&r)).unwrap();
        assert_eq!(
            decoded.first.kind,
            EventKind::Shutdown {
                how: shutdown_how::SHUT_RDWR
            }
        );
        assert_eq!(
            decoded.then,
            Some(EventKind::State {
                old: tcp_state::ESTABLISHED,
                new: tcp_state::FIN_WAIT1
            })
        );

        r.flags = FLAG_RELEASED | FLAG_TIME_WAIT;
        r.old_state = tcp_state::ESTABLISHED;
        r.new_state = tcp_state::FIN_WAIT1;
        let decoded = decode(&bytes(&r)).unwrap();
        assert_eq!(decoded.first.kind, EventKind::Close { time_wait: true });
        assert!(decoded.then.is_some());

        // A close that restates the state is the close alone.
        r.flags = FLAG_RELEASED;
        r.old_state = tcp_state::FIN_WAIT2;
        r.new_state = tcp_state::FIN_WAIT2;
        assert_eq!(one(&r).kind, EventKind::Close { time_wait: false });

        // Closing a finished connection destroys it at once.
        r.kind = RecordKind::Destroy as u8;
        let decoded = decode(&bytes(&r)).unwrap();
        assert_eq!(decoded.first.kind, EventKind::Close { time_wait: false });
        assert_eq!(decoded.then, Some(EventKind::Destroy));
        r.flags = 0;
        assert_eq!(one(&r).kind, EventKind::Destroy);
    }

    #[test]
    fn decodes_every_other_kind() {
        let cases = [
            (RecordKind::Accept, 0, EventKind::Accept { traced: true }),
            (
                RecordKind::Accept,
                FLAG_UNTRACED,
                EventKind::Accept { traced: false },
            ),
            (RecordKind::Recv, 0, EventKind::Recv { ret: Some(-107) }),
            (RecordKind::Arrival, 0, EventKind::Arrival),
            (RecordKind::Fork, 0, EventKind::Fork { child: 99 }),
            (RecordKind::Exit, 0, EventKind::Exit),
        ];
        for (kind, flags, expected) in cases {
            let mut r = record();
            r.kind = kind as u8;
            r.flags = flags;
            r.ret = -107;
            r.child_tgid = 99;
            assert_eq!(one(&r).kind, expected);
        }
        let mut r = record();
        r.kind = RecordKind::Recv as u8;
        r.ret = RESULT_UNKNOWN;
        assert_eq!(one(&r).kind, EventKind::Recv { ret: None });
    }

    #[test]
    fn the_opening_is_rebuilt_from_the_birth() {
        let mut r = record();
        r.old_state = tcp_state::SYN_SENT;
        r.new_state = tcp_state::ESTABLISHED;
        let opening: Vec<Event> = one(&r).opening().collect();
        assert_eq!(opening.len(), 2);
        assert_eq!(opening[0].kind, EventKind::Connect);
        assert!(opening
            .iter()
            .all(|e| e.ts_ns == 500 && e.task.tgid == 4242));
        assert_eq!(
            opening[1].kind,
            EventKind::State {
                old: tcp_state::CLOSE,
                new: tcp_state::SYN_SENT
            }
        );

        r.old_state = tcp_state::SYN_RECV;
        let opening: Vec<Event> = one(&r).opening().collect();
        assert_eq!(opening.len(), 1);
        assert!(!opening[0].in_owner_context);
        assert_eq!(
            opening[0].kind,
            EventKind::State {
                old: tcp_state::LISTEN,
                new: tcp_state::SYN_RECV
            }
        );

        r.old_state = tcp_state::ESTABLISHED;
        assert_eq!(one(&r).opening().count(), 0);

        // An accepted connection whose handshake went unrecorded: both of its steps, at birth,
        // before whatever its first record says (here, the owner's close).
        r.new_state = tcp_state::FIN_WAIT1;
        r.flags = FLAG_ESTABLISHED_AT_BIRTH | FLAG_RELEASED;
        let decoded = decode(&bytes(&r)).unwrap();
        assert_eq!(decoded.first.opened_accepted(), Some(true));
        let opening: Vec<Event> = decoded.first.opening().collect();
        let steps: Vec<EventKind> = opening.iter().map(|e| e.kind).collect();
        assert_eq!(
            steps,
            [
                EventKind::State {
                    old: tcp_state::LISTEN,
                    new: tcp_state::SYN_RECV
                },
                EventKind::State {
                    old: tcp_state::SYN_RECV,
                    new: tcp_state::ESTABLISHED
                },
            ]
        );
        assert!(opening
            .iter()
            .all(|e| e.ts_ns == 500 && e.task.tgid == 0 && !e.in_owner_context));
    }

    #[test]
    fn addresses() {
        let mut r = record();
        r.family = AF_INET6;
        r.saddr = Ipv6Addr::LOCALHOST.octets();
        r.daddr = "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets();
        let event = one(&r);
        assert_eq!(event.local.unwrap().to_string(), "[::1]:8080");
        assert_eq!(event.remote.unwrap().to_string(), "[2001:db8::2]:50412");

        r.saddr = Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        assert_eq!(one(&r).local.unwrap().to_string(), "127.0.0.1:8080");

        r.daddr = [0; 16];
        r.dport = 0;
        assert_eq!(one(&r).remote, None);

        // A finished connection whose port the kernel released: the address alone is no endpoint.
        r.sport = 0;
        assert_eq!(one(&r).local, None);

        r.family = 1;
        let event = one(&r);
        assert_eq!((event.local, event.remote), (None, None));
    }

    #[test]
    fn comm_is_trimmed_and_lossy() {
        let mut r = record();
        r.comm = *b"abc\xff\0garbage\0\0\0\0";
        assert_eq!(one(&r).task.comm.to_string(), "abc\u{fffd}");
        r.comm = *b"sixteen-chars-xx";
        assert_eq!(one(&r).task.comm.to_string(), "sixteen-chars-xx");
        assert!(Comm::default().is_empty());
    }

    #[test]
    fn rejects_bad_input() {
        let raw = bytes(&record());
        let err = decode(&raw[..raw.len() - 1]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Length {
                got: Record::SIZE - 1
            }
        );
        assert!(err.to_string().contains(&Record::SIZE.to_string()));
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Length { got: 0 });

        let mut r = record();
        r.kind = 99;
        let err = decode(&bytes(&r)).unwrap_err();
        assert_eq!(err, DecodeError::UnknownKind(99));
        assert_eq!(err.to_string(), "record has unknown kind 99");
    }

    #[test]
    fn receive_state_arithmetic() {
        let rs = |rcv_nxt, copied_seq, fin_received| ReceiveState {
            rcv_nxt,
            copied_seq,
            fin_received,
            queue_len: 0,
        };
        // Only the FIN is outstanding.
        assert_eq!(rs(101, 100, true).unread_bytes(), 0);
        assert!(rs(101, 100, true).eof_unread());
        // Everything read, EOF included.
        assert_eq!(rs(101, 101, true).unread_bytes(), 0);
        assert!(!rs(101, 101, true).eof_unread());
        // Data but no FIN.
        assert_eq!(rs(106, 100, false).unread_bytes(), 6);
        assert!(!rs(106, 100, false).eof_unread());
        // Sequence numbers wrap around.
        assert_eq!(rs(3, u32::MAX - 2, false).unread_bytes(), 6);
    }

    #[test]
    fn shutdown_names() {
        assert_eq!(shutdown_how_name(shutdown_how::SHUT_RD), "SHUT_RD");
        assert_eq!(shutdown_how_name(shutdown_how::SHUT_WR), "SHUT_WR");
        assert_eq!(shutdown_how_name(shutdown_how::SHUT_RDWR), "SHUT_RDWR");
        assert_eq!(shutdown_how_name(7), "UNKNOWN");
    }
}
