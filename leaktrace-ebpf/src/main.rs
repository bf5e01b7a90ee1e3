//! Kernel side of leaktrace: hooks on TCP socket lifecycles that write one `Record` per event into
//! a ring buffer. Each hook lives in `probes/`, one module per kernel area; every family of hooks
//! (fentry, kprobe, tracepoint) funnels into the same handlers so the records do not depend on
//! which hooks the running kernel allows.
#![no_std]
#![no_main]

mod emit;
mod error;
mod kernel;
mod maps;
mod probes;

use leaktrace_common::{Config, KernelOffsets, TracepointOffsets};

/// Filled in by userspace at load time from the running kernel's BTF and tracefs. One non-zero
/// placeholder keeps the value in `.rodata`, where the loader patches it; programs do nothing
/// until userspace sets `ready`.
#[no_mangle]
static CONFIG: Config = Config {
    ready: 0,
    filter_targets: 0,
    seeder_tgid: 0,
    follow_children: 0,
    kernel: KernelOffsets {
        task_files: u32::MAX,
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
        sock_family: 0,
        sock_state: 0,
        sock_num: 0,
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
    },
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
        syscall_arg1: 0,
        syscall_ret: 0,
        newtask_pid: 0,
        newtask_clone_flags: 0,
        process_exit_group_dead: 0,
    },
};

/// Reads one field of `CONFIG` through a volatile load: the compiler must not fold the
/// placeholder values above into the programs.
macro_rules! config {
    ($($field:ident).+) => {{
        #[allow(unused_unsafe, reason = "call sites may already be inside an unsafe block")]
        let value = unsafe { core::ptr::read_volatile(&$crate::CONFIG.$($field).+) };
        value
    }};
}
pub(crate) use config;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
