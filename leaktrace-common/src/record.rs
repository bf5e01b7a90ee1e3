//! The records the kernel side writes into the ring buffer, byte for byte, and userspace decodes.

/// What a [`Record`] reports. Stored as `u8` in the record so the layout stays fixed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A TCP state transition (`old_state` -> `new_state`); the `RELEASED` and `SHUTDOWN` flags
    /// say when the owner's close or shutdown made it.
    State = 1,
    /// Another process than the one that claimed the socket took it from the listener
    /// (`accept`, or its first read where no accept hook exists): `owner_tgid` from now on.
    Accept = 2,
    /// The kernel destroyed the socket; its address may be reused afterwards.
    Destroy = 3,
    /// The owner read from a watched socket (`ret` bytes; 0 is end-of-stream).
    Recv = 4,
    /// Data or a FIN arrived on a watched socket.
    Arrival = 5,
    /// The socket already existed when tracing started: its state and receive side now, and the
    /// fd (`fd`) that holds it.
    Present = 6,
    /// A traced process (`tgid`) started a new process (`child_tgid`), now traced too. No socket.
    Fork = 7,
    /// A traced process (`tgid`) exited. No socket.
    Exit = 8,
}

impl TryFrom<u8> for RecordKind {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        Ok(match value {
            1 => Self::State,
            2 => Self::Accept,
            3 => Self::Destroy,
            4 => Self::Recv,
            5 => Self::Arrival,
            6 => Self::Present,
            7 => Self::Fork,
            8 => Self::Exit,
            other => return Err(other),
        })
    }
}

/// `Record::flags`: the current task is the socket's recorded owner (not softirq on behalf of
/// another task, not the peer process on loopback).
pub const FLAG_OWNER_CONTEXT: u16 = 1 << 0;
/// `Record::flags`: the peer's FIN has been received (`SOCK_DONE`); `rcv_nxt` counts it.
pub const FLAG_FIN_RECEIVED: u16 = 1 << 1;
/// `Record::flags`: `rcv_nxt`/`copied_seq`/`rcv_qlen` were read from the socket.
pub const FLAG_HAS_RECEIVE_STATE: u16 = 1 << 2;
/// `Record::flags` of a `Present` record: the socket's sending side was already shut down.
pub const FLAG_SEND_SHUTDOWN: u16 = 1 << 3;
/// `Record::flags` of a `State` or `Destroy` record: the last reference to the socket's file
/// went with it: the owner's close (or its exit), after which nothing more is recorded of the
/// socket. A `Destroy` carries it when the socket was already over (CLOSE), as closing it then
/// changes no state.
pub const FLAG_RELEASED: u16 = 1 << 4;
/// `Record::flags` of a `State` record: the owner's `shutdown(2)` made it; `how` says which.
pub const FLAG_SHUTDOWN: u16 = 1 << 5;
/// `Record::flags` of a released `State` record: this side's FIN went first (or both at once),
/// so the connection ends in TIME_WAIT on this side, in a timewait socket the kernel makes once
/// the peer's FIN comes (unless a reset ends it first).
pub const FLAG_TIME_WAIT: u16 = 1 << 6;
/// `Record::flags` of an `Accept` record: the process that took the socket is not traced; the
/// socket leaves the trace with this record.
pub const FLAG_UNTRACED: u16 = 1 << 7;
/// `Record::flags` of any record about a socket that came from a listener: its handshake ended
/// (SYN_RECV -> ESTABLISHED) at its birth, `sock_born_ns`, with no record of its own. The kernel
/// makes the full socket only once the client's last ACK is in and moves it to ESTABLISHED in the
/// same call, so a record of that step would only repeat the birth; the timeline rebuilds it.
pub const FLAG_ESTABLISHED_AT_BIRTH: u16 = 1 << 8;

/// `Record::ret` of a `Recv` whose hook cannot see the read's result.
pub const RESULT_UNKNOWN: i64 = i64::MIN;
/// `Record::owner_tgid` when no process has been bound to the socket yet.
pub const OWNER_UNKNOWN: u32 = 0;
/// `Record::fd` when there is no file descriptor.
pub const NO_FD: i32 = -1;

pub const COMM_LEN: usize = 16;

/// One event on one socket (or one process), as written into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock`.
    pub sock: u64,
    /// When the kernel side first saw this socket alive (for a socket seen opening, its opening
    /// transition): with `sock`, tells apart two sockets that reuse one address over time.
    pub sock_born_ns: u64,
    /// When a traced process took the socket from its listener, as an accept hook saw it (0
    /// where none did, or for a socket not accepted): a proxy connects upstream for a client
    /// after taking it, which a birth time long before, in the listener's queue, cannot tell.
    pub sock_taken_ns: u64,
    /// Inode of the socket's file (0 while it has none, as before `accept`): what
    /// /proc/<pid>/fd shows as `socket:[ino]`, to find the fds that hold it.
    pub ino: u64,
    /// A read's result (`Recv`).
    pub ret: i64,
    /// The current task when the event fired.
    pub tgid: u32,
    pub tid: u32,
    /// The process bound to the socket in the kernel (connect, listen's children, accept).
    pub owner_tgid: u32,
    /// `Fork`: the new process.
    pub child_tgid: u32,
    /// `Present`: the owner's fd for the socket.
    pub fd: i32,
    /// `shutdown(2)`'s `how`, for a `State` record with `FLAG_SHUTDOWN`.
    pub how: i32,
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub rcv_qlen: u32,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// AF_INET or AF_INET6.
    pub family: u16,
    pub flags: u16,
    pub kind: u8,
    pub old_state: u8,
    pub new_state: u8,
    pub _pad: [u8; 1],
    /// IPv4 in the first four bytes, IPv6 in all sixteen; network byte order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; COMM_LEN],
}

impl Record {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}
