//! Turns ring-buffer bytes into typed events: the only place that knows the raw [`Record`] layout
//! and its sentinel values.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use leaktrace_common::{
    shutdown_how, Record, RecordKind, AF_INET, AF_INET6, FLAG_FIN_RECEIVED, FLAG_HAS_RECEIVE_STATE,
    FLAG_OWNER_CONTEXT, FLAG_SEND_SHUTDOWN, FLAG_STILL_HELD, NO_FD, OWNER_UNKNOWN, RESULT_UNKNOWN,
};

/// One socket over its lifetime: the kernel reuses `struct sock` addresses, so the address alone
/// would merge unrelated connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKey {
    pub addr: u64,
    pub born_ns: u64,
}

/// The task that was running when the event fired, which is not necessarily the socket's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub tgid: u32,
    pub tid: u32,
    pub comm: String,
}

/// The process the kernel side has bound to the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub tgid: u32,
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
    Accept {
        fd: i32,
    },
    Shutdown {
        fd: i32,
        how: i32,
        ret: i64,
    },
    /// `fd` is `None` when the kernel's `tcp_close` reported the release rather than `close(2)`.
    Close {
        fd: Option<i32>,
    },
    /// `close(fd)` that released nothing: another fd (a dup, a forked child's copy, one passed
    /// over a unix socket) still holds the socket.
    FdClosed {
        fd: i32,
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
    Connect {
        fd: i32,
        ret: i64,
    },
    /// Not about a socket: the task's process started `child`, which is traced from now on.
    Fork {
        child: u32,
    },
    /// Not about a socket: the task's process exited.
    Exit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub sock: SockKey,
    pub task: Task,
    pub owner: Option<Owner>,
    pub in_owner_context: bool,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub receive: Option<ReceiveState>,
    /// The socket file's inode (`socket:[ino]` in /proc/<pid>/fd), where the hook knew it.
    pub ino: Option<u64>,
    pub kind: EventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
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
pub fn shutdown_how_name(how: i32) -> &'static str {
    match how {
        shutdown_how::SHUT_RD => "SHUT_RD",
        shutdown_how::SHUT_WR => "SHUT_WR",
        shutdown_how::SHUT_RDWR => "SHUT_RDWR",
        _ => "UNKNOWN",
    }
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() != Record::SIZE {
        return Err(DecodeError::Length { got: bytes.len() });
    }
    // SAFETY: the length is exactly one Record, Record is plain integer data for which every bit
    // pattern is valid, and read_unaligned copes with the ring buffer's lack of alignment.
    let record = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Record>()) };
    let kind = RecordKind::from_u8(record.kind).ok_or(DecodeError::UnknownKind(record.kind))?;
    let fd = |fd: i32| (fd != NO_FD).then_some(fd);
    Ok(Event {
        ts_ns: record.ts_ns,
        sock: SockKey {
            addr: record.sock,
            born_ns: record.sock_born_ns,
        },
        task: Task {
            tgid: record.tgid,
            tid: record.tid,
            comm: comm(&record.comm),
        },
        owner: (record.owner_tgid != OWNER_UNKNOWN).then(|| Owner {
            tgid: record.owner_tgid,
            fd: fd(record.owner_fd),
        }),
        in_owner_context: record.flags & FLAG_OWNER_CONTEXT != 0,
        local: socket_addr(record.family, &record.saddr, record.sport),
        remote: socket_addr(record.family, &record.daddr, record.dport),
        receive: (record.flags & FLAG_HAS_RECEIVE_STATE != 0).then_some(ReceiveState {
            rcv_nxt: record.rcv_nxt,
            copied_seq: record.copied_seq,
            fin_received: record.flags & FLAG_FIN_RECEIVED != 0,
            queue_len: record.rcv_qlen,
        }),
        ino: (record.ino != 0).then_some(record.ino),
        kind: match kind {
            RecordKind::State => EventKind::State {
                old: record.old_state,
                new: record.new_state,
            },
            RecordKind::Accept => EventKind::Accept { fd: record.fd },
            RecordKind::Shutdown => EventKind::Shutdown {
                fd: record.fd,
                how: record.how,
                ret: record.ret,
            },
            RecordKind::Close if record.flags & FLAG_STILL_HELD != 0 => {
                EventKind::FdClosed { fd: record.fd }
            }
            RecordKind::Close => EventKind::Close { fd: fd(record.fd) },
            RecordKind::Destroy => EventKind::Destroy,
            RecordKind::Recv => EventKind::Recv {
                ret: (record.ret != RESULT_UNKNOWN).then_some(record.ret),
            },
            RecordKind::Arrival => EventKind::Arrival,
            RecordKind::Connect => EventKind::Connect {
                fd: record.fd,
                ret: record.ret,
            },
            RecordKind::Fork => EventKind::Fork {
                child: record.owner_tgid,
            },
            RecordKind::Exit => EventKind::Exit,
            RecordKind::Present => EventKind::Present {
                fd: record.fd,
                state: record.new_state,
                send_shutdown: record.flags & FLAG_SEND_SHUTDOWN != 0,
            },
        },
    })
}

fn comm(raw: &[u8]) -> String {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..len]).into_owned()
}

fn socket_addr(family: u16, addr: &[u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; showing them as the IPv4
        // address they are matches what the peer itself and `ss -4` would print.
        AF_INET6 => Ipv6Addr::from(*addr).to_canonical(),
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
            ret: 0,
            tgid: 4242,
            tid: 4243,
            owner_tgid: 4242,
            owner_fd: 7,
            fd: 7,
            how: shutdown_how::SHUT_WR,
            rcv_nxt: 110,
            copied_seq: 100,
            rcv_qlen: 1,
            sport: 8080,
            dport: 50412,
            family: AF_INET,
            kind: RecordKind::State as u8,
            old_state: tcp_state::ESTABLISHED,
            new_state: tcp_state::CLOSE_WAIT,
            flags: FLAG_OWNER_CONTEXT | FLAG_HAS_RECEIVE_STATE | FLAG_FIN_RECEIVED,
            _pad: [0; 2],
            saddr,
            daddr,
            comm,
            ino: 0,
        }
    }

    fn bytes(record: &Record) -> Vec<u8> {
        // SAFETY: Record is plain data without padding; viewing it as bytes is what the kernel does.
        unsafe { std::slice::from_raw_parts((record as *const Record).cast::<u8>(), Record::SIZE) }
            .to_vec()
    }

    #[test]
    fn decodes_state_record() {
        let event = decode(&bytes(&record())).unwrap();
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
                comm: "mailer".into()
            }
        );
        assert_eq!(
            event.owner,
            Some(Owner {
                tgid: 4242,
                fd: Some(7)
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
        assert_eq!(decode(&buf[1..]).unwrap().ts_ns, 1_000);
    }

    #[test]
    fn sentinels_become_none() {
        let mut r = record();
        r.owner_tgid = OWNER_UNKNOWN;
        r.flags = 0;
        r.kind = RecordKind::Close as u8;
        r.fd = NO_FD;
        let event = decode(&bytes(&r)).unwrap();
        assert_eq!(event.owner, None);
        assert!(!event.in_owner_context);
        assert_eq!(event.receive, None);
        assert_eq!(event.kind, EventKind::Close { fd: None });

        r.owner_tgid = 4242;
        r.owner_fd = NO_FD;
        r.fd = 9;
        let event = decode(&bytes(&r)).unwrap();
        assert_eq!(
            event.owner,
            Some(Owner {
                tgid: 4242,
                fd: None
            })
        );
        assert_eq!(event.kind, EventKind::Close { fd: Some(9) });
    }

    #[test]
    fn decodes_every_kind() {
        let cases = [
            (RecordKind::Accept, EventKind::Accept { fd: 7 }),
            (
                RecordKind::Shutdown,
                EventKind::Shutdown {
                    fd: 7,
                    how: shutdown_how::SHUT_WR,
                    ret: -107,
                },
            ),
            (RecordKind::Destroy, EventKind::Destroy),
            (RecordKind::Recv, EventKind::Recv { ret: Some(-107) }),
            (RecordKind::Arrival, EventKind::Arrival),
        ];
        for (kind, expected) in cases {
            let mut r = record();
            r.kind = kind as u8;
            r.ret = -107;
            assert_eq!(decode(&bytes(&r)).unwrap().kind, expected);
        }
    }

    #[test]
    fn addresses() {
        let mut r = record();
        r.family = AF_INET6;
        r.saddr = Ipv6Addr::LOCALHOST.octets();
        r.daddr = "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets();
        let event = decode(&bytes(&r)).unwrap();
        assert_eq!(event.local.unwrap().to_string(), "[::1]:8080");
        assert_eq!(event.remote.unwrap().to_string(), "[2001:db8::2]:50412");

        r.saddr = Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        assert_eq!(
            decode(&bytes(&r)).unwrap().local.unwrap().to_string(),
            "127.0.0.1:8080"
        );

        r.daddr = [0; 16];
        r.dport = 0;
        assert_eq!(decode(&bytes(&r)).unwrap().remote, None);

        // A finished connection whose port the kernel released: the address alone is no endpoint.
        r.sport = 0;
        assert_eq!(decode(&bytes(&r)).unwrap().local, None);

        r.family = 1;
        let event = decode(&bytes(&r)).unwrap();
        assert_eq!((event.local, event.remote), (None, None));
    }

    #[test]
    fn comm_is_trimmed_and_lossy() {
        let mut r = record();
        r.comm = *b"abc\xff\0garbage\0\0\0\0";
        assert_eq!(decode(&bytes(&r)).unwrap().task.comm, "abc\u{fffd}");
        r.comm = *b"sixteen-chars-xx";
        assert_eq!(decode(&bytes(&r)).unwrap().task.comm, "sixteen-chars-xx");
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
