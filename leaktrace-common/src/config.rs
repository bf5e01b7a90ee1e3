//! What userspace tells the programs: the `CONFIG` global at load time, and the requests for sockets present at start.

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
    pub leaktrace_tgid: u32,
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
            leaktrace_tgid: 0,
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

/// What userspace asks the `present` program to record: the socket the next `getsockname(2)` of
/// leaktrace names is a duplicate of `owner_fd` in process `owner_tgid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PresentRequest {
    pub owner_tgid: u32,
    pub owner_fd: i32,
}
