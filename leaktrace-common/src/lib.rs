//! Records and load-time configuration shared by the eBPF programs and userspace.
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel side writes [`Record`]s into the
//! ring buffer byte for byte and userspace decodes the same layout; userspace fills [`Config`] from
//! the running kernel's BTF and tracefs and hands it to the programs as a global.
#![no_std]

/// What a [`Record`] reports. Stored as `u8` in the record so the layout stays fixed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A TCP state transition (`old_state` -> `new_state`).
    State = 1,
    /// The owner accepted the socket: `tgid`/`fd` hold it from now on.
    Accept = 2,
    /// `shutdown(fd, how)` returned `ret`.
    Shutdown = 3,
    /// The owner released the socket (`close(fd)`, or the kernel's `tcp_close`).
    Close = 4,
    /// The kernel destroyed the socket; its address may be reused afterwards.
    Destroy = 5,
    /// The owner read from a socket it had shut down (`ret` bytes; 0 is end-of-stream).
    Recv = 6,
    /// Data or a FIN arrived on a socket its owner had shut down.
    Arrival = 7,
    /// The socket already existed when tracing started: its state and receive side now.
    Present = 8,
    /// `connect(fd)` returned `ret`: the caller owns the socket.
    Connect = 9,
    /// A traced process (`tgid`) started a new process (`owner_tgid`), now traced too. No socket.
    Fork = 10,
    /// A traced process (`tgid`) exited. No socket.
    Exit = 11,
}

impl RecordKind {
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::State,
            2 => Self::Accept,
            3 => Self::Shutdown,
            4 => Self::Close,
            5 => Self::Destroy,
            6 => Self::Recv,
            7 => Self::Arrival,
            8 => Self::Present,
            9 => Self::Connect,
            10 => Self::Fork,
            11 => Self::Exit,
            _ => return None,
        })
    }
}

/// `Record::flags`: the current task is the socket's recorded owner (not softirq on behalf of
/// another task, not the peer process on loopback).
pub const FLAG_OWNER_CONTEXT: u8 = 1 << 0;
/// `Record::flags`: the peer's FIN has been received (`SOCK_DONE`); `rcv_nxt` counts it.
pub const FLAG_FIN_RECEIVED: u8 = 1 << 1;
/// `Record::flags`: `rcv_nxt`/`copied_seq`/`rcv_qlen` were read from the socket.
pub const FLAG_HAS_RECEIVE_STATE: u8 = 1 << 2;
/// `Record::flags` of a `Present` record: the socket's sending side was already shut down.
pub const FLAG_SEND_SHUTDOWN: u8 = 1 << 3;
/// `Record::flags` of a `Close` record: another fd (a dup, a forked child's copy, one passed over
/// a unix socket) still refers to the socket, so this close did not release it.
pub const FLAG_STILL_HELD: u8 = 1 << 4;

/// `Record::ret` of a `Recv` whose hook cannot see the read's result.
pub const RESULT_UNKNOWN: i64 = i64::MIN;
/// `Record::owner_tgid` when no process has been bound to the socket yet.
pub const OWNER_UNKNOWN: u32 = 0;
/// `Record::fd`/`owner_fd` when there is no file descriptor.
pub const NO_FD: i32 = -1;

pub const COMM_LEN: usize = 16;

/// One event on one socket, as written into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock`.
    pub sock: u64,
    /// When the kernel side first saw this socket alive: with `sock`, tells apart two sockets
    /// that reuse one address over time.
    pub sock_born_ns: u64,
    /// Syscall result (shutdown, recv) where the kind has one.
    pub ret: i64,
    /// The current task when the event fired.
    pub tgid: u32,
    pub tid: u32,
    /// The process bound to the socket in the kernel (accept, connect, listen's children).
    pub owner_tgid: u32,
    pub owner_fd: i32,
    /// The fd the syscall named (accept's result, shutdown's and close's argument).
    pub fd: i32,
    /// shutdown's `how`.
    pub how: i32,
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub rcv_qlen: u32,
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// AF_INET or AF_INET6.
    pub family: u16,
    pub kind: u8,
    pub old_state: u8,
    pub new_state: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    /// IPv4 in the first four bytes, IPv6 in all sixteen; network byte order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    /// Inode of the socket's file where the hook went through an fd (0 otherwise): what
    /// /proc/<pid>/fd shows as `socket:[ino]`, to find every process holding it.
    pub ino: u64,
}

impl Record {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

/// Byte offsets of the kernel struct fields the programs read, taken from the running kernel's
/// BTF at load time: aya emits no CO-RE relocations for Rust programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_private_data: u32,
    pub file_inode: u32,
    /// `file.f_ref` (6.13+) or `file.f_count`: references to the open file.
    pub file_count: u32,
    /// The value of that counter for exactly one reference (`f_ref` stores references - 1).
    pub file_count_one: u32,
    pub inode_mode: u32,
    pub inode_ino: u32,
    pub socket_sk: u32,
    pub sock_family: u32,
    pub sock_state: u32,
    pub sock_num: u32,
    pub sock_dport: u32,
    pub sock_rcv_saddr: u32,
    pub sock_daddr: u32,
    pub sock_v6_rcv_saddr: u32,
    pub sock_v6_daddr: u32,
    pub sock_protocol: u32,
    /// Width in bytes of `sock.sk_protocol` (2 on current kernels).
    pub sock_protocol_size: u32,
    pub sock_flags: u32,
    /// `sock.sk_receive_queue.qlen`.
    pub sock_receive_qlen: u32,
    pub tcp_rcv_nxt: u32,
    pub tcp_copied_seq: u32,
    /// Bit number of `SOCK_DONE` in `enum sock_flags`.
    pub sock_done_bit: u32,
    /// `sock.sk_shutdown`, or [`OFFSET_UNKNOWN`] where it is a bitfield.
    pub sock_shutdown: u32,
}

/// A `KernelOffsets` field this kernel's BTF does not let us read.
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Field offsets inside classic tracepoint records, from tracefs `format` files.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    pub set_state_skaddr: u32,
    pub set_state_oldstate: u32,
    pub set_state_newstate: u32,
    pub destroy_skaddr: u32,
    pub recv_length_sk: u32,
    pub recv_length_ret: u32,
    pub rcv_space_adjust_skaddr: u32,
    pub data_ready_sk: u32,
    /// `args[0]` and `args[1]` of a `syscalls:sys_enter_*` record.
    pub syscall_arg0: u32,
    pub syscall_arg1: u32,
    /// `ret` of a `syscalls:sys_exit_*` record.
    pub syscall_ret: u32,
    pub newtask_pid: u32,
    pub newtask_clone_flags: u32,
    /// `sched:sched_process_exit`'s `group_dead`, or [`OFFSET_UNKNOWN`] on kernels without it.
    pub process_exit_group_dead: u32,
}

/// Everything userspace tells the programs at load time, as the `CONFIG` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Non-zero once userspace filled this in; programs do nothing until then.
    pub ready: u32,
    /// Non-zero: only sockets owned by a tgid in the `TARGETS` map reach the ring buffer.
    pub filter_targets: u32,
    /// leaktrace's own tgid: only it may ask for sockets that predate the trace to be recorded.
    pub seeder_tgid: u32,
    /// Non-zero: processes started by traced processes are traced too.
    pub follow_children: u32,
    pub kernel: KernelOffsets,
    pub tracepoints: TracepointOffsets,
}

/// TCP states as the kernel numbers and spells them (`include/net/tcp_states.h`); the one place
/// that knows these names.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;

    pub const fn name(state: u8) -> &'static str {
        match state {
            ESTABLISHED => "ESTABLISHED",
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            FIN_WAIT1 => "FIN_WAIT1",
            FIN_WAIT2 => "FIN_WAIT2",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            LISTEN => "LISTEN",
            CLOSING => "CLOSING",
            NEW_SYN_RECV => "NEW_SYN_RECV",
            _ => "UNKNOWN",
        }
    }
}

/// What userspace asks the `seed` program to record: the socket the next `getsockname(2)` of
/// leaktrace names is a duplicate of `owner_fd` in process `owner_tgid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedRequest {
    pub owner_tgid: u32,
    pub owner_fd: i32,
}

/// `shutdown(2)`'s `how`.
pub mod shutdown_how {
    pub const SHUT_RD: i32 = 0;
    pub const SHUT_WR: i32 = 1;
    pub const SHUT_RDWR: i32 = 2;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data with no padding-dependent invariants; any bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Record {}
    unsafe impl aya::Pod for super::SeedRequest {}
}
