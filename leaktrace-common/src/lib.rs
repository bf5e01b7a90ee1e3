//! Records and load-time configuration shared by the eBPF programs and userspace.
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel side writes [`Record`]s into the
//! ring buffer byte for byte and userspace decodes the same layout; userspace fills [`Config`] from
//! the running kernel's BTF and tracefs and hands it to the programs as a global.
//!
//! # What reaches userspace
//!
//! The kernel side follows each socket of a traced process from the TCP state changes it makes,
//! most of them in the owner's own context (connect, listen, shutdown and close each change the
//! state inside the call), so it needs no syscall hook. To keep a connection that ends cleanly
//! cheap, it leaves out what userspace can rebuild or never needs:
//! - the opening transition (`CLOSE -> SYN_SENT`, `LISTEN -> SYN_RECV`): its time is the
//!   socket's `sock_born_ns`, carried by every later record, and its states follow from the next
//!   record's `old_state`;
//! - what happens after the owner's close (the `RELEASED` record): no leak class outlives it, and
//!   the socket is forgotten on both sides. Whether the connection ends in TIME_WAIT on this side,
//!   for the counts per remote endpoint, is known then: when this side's FIN went first.
#![no_std]

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
    pub socket_file: u32,
    pub sock_socket: u32,
    pub sock_family: u32,
    pub sock_state: u32,
    pub sock_num: u32,
    /// `inet_sock.inet_sport`, network order: the local port `getsockname` reports, kept once
    /// a finished connection's `skc_num` is cleared with its port released.
    pub inet_sport: u32,
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
    /// Bit number of `SOCK_DONE` (the peer's FIN arrived) in `enum sock_flags`.
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
    /// `args[0]` of a `syscalls:sys_enter_*` record.
    pub syscall_arg0: u32,
    pub newtask_pid: u32,
    pub newtask_clone_flags: u32,
    /// `sched:sched_process_exit`'s `group_dead`, or [`OFFSET_UNKNOWN`] on kernels without it.
    pub process_exit_group_dead: u32,
}

/// Everything userspace tells the programs at load time, as the `CONFIG` global. It lives in
/// frozen `.rodata`, so the verifier knows each value: offsets are constants to it, which lets
/// BTF-typed programs load fields directly, and branches on the switches below are pruned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Non-zero once userspace filled this in; programs do nothing until then.
    pub ready: u32,
    /// Non-zero: every program returns at once. `cargo xtask bench` measures with it what the
    /// attach points cost by themselves.
    pub floor: u32,
    /// Non-zero: only sockets claimed by a tgid in the `TARGETS` map are followed.
    pub filter_targets: u32,
    /// leaktrace's own tgid: only it may ask for sockets that predate the trace to be recorded.
    pub seeder_tgid: u32,
    /// Non-zero: processes started by traced processes are traced too.
    pub follow_children: u32,
    /// The ring buffer's size in bytes (`--ring-size`).
    pub ring_size: u32,
    /// Non-zero (`--cgroup`, `--unit`): a process of this cgroup v2, or of one below it, is
    /// traced from its first socket on, as if it were in `TARGETS`.
    pub cgroup_id: u64,
    /// How deep `cgroup_id` sits below the cgroup root (the root is level 0).
    pub cgroup_level: u32,
    /// Keeps the struct free of implicit padding, which userspace would copy uninitialized.
    pub _pad: u32,
    pub kernel: KernelOffsets,
    pub tracepoints: TracepointOffsets,
}

impl Config {
    /// What the eBPF object is built with. Not all zeros: an all-zero global would land in
    /// `.bss`, which the loader does not patch like `.rodata`. Programs do nothing until userspace
    /// sets `ready`.
    pub const PLACEHOLDER: Config = {
        let mut kernel = KernelOffsets {
            task_files: 0,
            files_fdt: 0,
            fdtable_max_fds: 0,
            fdtable_fd: 0,
            file_private_data: 0,
            file_inode: 0,
            file_count: 0,
            file_count_one: 0,
            inode_mode: 0,
            inode_ino: 0,
            socket_sk: 0,
            socket_file: 0,
            sock_socket: 0,
            sock_family: 0,
            sock_state: 0,
            sock_num: 0,
            inet_sport: 0,
            sock_dport: 0,
            sock_rcv_saddr: 0,
            sock_daddr: 0,
            sock_v6_rcv_saddr: 0,
            sock_v6_daddr: 0,
            sock_protocol: 0,
            sock_protocol_size: 0,
            sock_flags: 0,
            sock_receive_qlen: 0,
            tcp_rcv_nxt: 0,
            tcp_copied_seq: 0,
            sock_done_bit: 0,
            sock_shutdown: 0,
        };
        kernel.task_files = OFFSET_UNKNOWN;
        Config {
            ready: 0,
            floor: 0,
            filter_targets: 0,
            seeder_tgid: 0,
            follow_children: 0,
            ring_size: 0,
            cgroup_id: 0,
            cgroup_level: 0,
            _pad: 0,
            kernel,
            tracepoints: TracepointOffsets {
                set_state_skaddr: 0,
                set_state_oldstate: 0,
                set_state_newstate: 0,
                destroy_skaddr: 0,
                recv_length_sk: 0,
                recv_length_ret: 0,
                rcv_space_adjust_skaddr: 0,
                data_ready_sk: 0,
                syscall_arg0: 0,
                newtask_pid: 0,
                newtask_clone_flags: 0,
                process_exit_group_dead: 0,
            },
        }
    };
}

/// Why a program could not do its work, counted per CPU in the `PROBE_FAILURES` map (indexed by
/// the discriminant) and shown in the summary and the metrics: a failure must never be silent.
/// Filtered events and fds that are not TCP sockets are outcomes, not failures, and not counted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeFailure {
    /// `bpf_probe_read_kernel` failed on a kernel pointer.
    Read = 0,
    /// The socket map was full: a socket of a traced process is not followed.
    SocketMapFull = 1,
    /// The traced-process map was full: a child of a traced process is not traced.
    TargetMapFull = 2,
}

impl ProbeFailure {
    pub const ALL: [ProbeFailure; 3] = [Self::Read, Self::SocketMapFull, Self::TargetMapFull];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The name the summary and the metrics use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::SocketMapFull => "socket_map_full",
            Self::TargetMapFull => "target_map_full",
        }
    }
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

    /// Whether `old -> new` hands the connection to a timewait socket: the side that closed
    /// first (or both, closing at once) ends this way, and the `struct sock` goes to CLOSE
    /// while `inet_sock_set_state` says nothing of the timewait socket itself.
    pub const fn enters_time_wait(old: u8, new: u8) -> bool {
        new == TIME_WAIT || (new == CLOSE && matches!(old, FIN_WAIT2 | CLOSING))
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
    // SAFETY: plain #[repr(C)] integer data; any bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Record {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SeedRequest {}
}
