//! Reads of kernel structs at the offsets userspace resolved from BTF.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use leaktrace_common::{
    Record, AF_INET, AF_INET6, FLAG_FIN_RECEIVED, FLAG_HAS_RECEIVE_STATE, OFFSET_UNKNOWN,
};

use crate::{config, error::ProbeError};

const IPPROTO_TCP: u16 = 6;
// File type bits of `inode.i_mode`: part of the stat(2) ABI, not a kernel-internal layout.
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Result<T, ProbeError> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }
        .map_err(|_| ProbeError::Read)
}

/// A TCP socket reached through an fd.
pub struct FdSocket {
    pub sk: u64,
    /// The `struct file` the fd points to.
    pub file: u64,
    /// Its inode number: `socket:[ino]` in /proc/<pid>/fd.
    pub ino: u64,
}

impl FdSocket {
    /// Whether references other than this fd's keep the file open (a dup, a forked child's
    /// copy, an fd passed over a unix socket): closing this fd then releases nothing.
    #[inline(always)]
    pub fn shared(&self) -> Result<bool, ProbeError> {
        let count: i64 = read(self.file, config!(kernel.file_count))?;
        Ok(count > config!(kernel.file_count_one) as i64)
    }
}

/// The TCP socket behind `fd` in the current task's fd table:
/// task->files->fdt->fd[fd]->private_data (a `struct socket`)->sk.
#[inline(always)]
pub fn tcp_sock_of_fd(fd: i32) -> Result<FdSocket, ProbeError> {
    if fd < 0 {
        return Err(ProbeError::NotTcpSocket);
    }
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, config!(kernel.task_files))?;
    let fdt: u64 = read(files, config!(kernel.files_fdt))?;
    let max_fds: u32 = read(fdt, config!(kernel.fdtable_max_fds))?;
    if fd as u32 >= max_fds {
        return Err(ProbeError::NotTcpSocket);
    }
    let fd_array: u64 = read(fdt, config!(kernel.fdtable_fd))?;
    let file: u64 = read(fd_array, fd as u32 * 8)?;
    if file == 0 {
        return Err(ProbeError::NotTcpSocket);
    }
    let inode: u64 = read(file, config!(kernel.file_inode))?;
    let mode: u16 = read(inode, config!(kernel.inode_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return Err(ProbeError::NotTcpSocket);
    }
    let socket: u64 = read(file, config!(kernel.file_private_data))?;
    let sk: u64 = read(socket, config!(kernel.socket_sk))?;
    if sk == 0 || !is_tcp(sk)? {
        return Err(ProbeError::NotTcpSocket);
    }
    let ino = read(inode, config!(kernel.inode_ino))?;
    Ok(FdSocket { sk, file, ino })
}

#[inline(always)]
pub fn is_tcp(sk: u64) -> Result<bool, ProbeError> {
    let family = family(sk)?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(false);
    }
    let protocol = if config!(kernel.sock_protocol_size) == 1 {
        read::<u8>(sk, config!(kernel.sock_protocol))? as u16
    } else {
        read::<u16>(sk, config!(kernel.sock_protocol))?
    };
    Ok(protocol == IPPROTO_TCP)
}

#[inline(always)]
pub fn family(sk: u64) -> Result<u16, ProbeError> {
    read(sk, config!(kernel.sock_family))
}

#[inline(always)]
pub fn local_port(sk: u64) -> Result<u16, ProbeError> {
    read(sk, config!(kernel.sock_num))
}

#[inline(always)]
pub fn state(sk: u64) -> Result<u8, ProbeError> {
    read(sk, config!(kernel.sock_state))
}

/// `sk_shutdown & SEND_SHUTDOWN`: the sending side was shut down (shutdown(2) or close).
#[inline(always)]
pub fn send_shutdown(sk: u64) -> Result<bool, ProbeError> {
    // include/net/sock.h: `#define SEND_SHUTDOWN 2`, a macro BTF does not carry; it has not
    // changed since the first TCP implementation.
    const SEND_SHUTDOWN: u8 = 2;
    let offset = config!(kernel.sock_shutdown);
    if offset == OFFSET_UNKNOWN {
        return Ok(false);
    }
    Ok(read::<u8>(sk, offset)? & SEND_SHUTDOWN != 0)
}

/// Addresses and ports of `sk`, into `record`. Best effort: a failed read leaves zeros.
#[inline(always)]
pub fn fill_endpoints(record: &mut Record, sk: u64) {
    let family = family(sk).unwrap_or(0);
    record.family = family;
    record.sport = local_port(sk).unwrap_or(0);
    record.dport = u16::from_be(read(sk, config!(kernel.sock_dport)).unwrap_or(0));
    if family == AF_INET {
        let saddr: [u8; 4] = read(sk, config!(kernel.sock_rcv_saddr)).unwrap_or([0; 4]);
        let daddr: [u8; 4] = read(sk, config!(kernel.sock_daddr)).unwrap_or([0; 4]);
        record.saddr[..4].copy_from_slice(&saddr);
        record.daddr[..4].copy_from_slice(&daddr);
    } else if family == AF_INET6 {
        record.saddr = read(sk, config!(kernel.sock_v6_rcv_saddr)).unwrap_or([0; 16]);
        record.daddr = read(sk, config!(kernel.sock_v6_daddr)).unwrap_or([0; 16]);
    }
}

/// The receive side of a TCP socket at one moment: how far the peer's stream reached, how far
/// the owner read it, whether the peer's FIN came, how many buffers are queued.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReceiveSide {
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub qlen: u32,
    /// `FLAG_HAS_RECEIVE_STATE` (the reads succeeded) and `FLAG_FIN_RECEIVED`.
    pub flags: u32,
}

impl ReceiveSide {
    /// Not read: a record carrying it says it has no receive state.
    pub const UNREAD: Self = Self {
        rcv_nxt: 0,
        copied_seq: 0,
        qlen: 0,
        flags: 0,
    };

    #[inline(always)]
    pub fn write_to(&self, record: &mut Record) {
        record.rcv_nxt = self.rcv_nxt;
        record.copied_seq = self.copied_seq;
        record.rcv_qlen = self.qlen;
        record.flags |= self.flags as u8;
    }
}

/// `sk`'s receive side now; `ReceiveSide::UNREAD` if a read fails.
#[inline(always)]
pub fn receive_side(sk: u64) -> ReceiveSide {
    let (Ok(rcv_nxt), Ok(copied_seq), Ok(sk_flags), Ok(qlen)) = (
        read::<u32>(sk, config!(kernel.tcp_rcv_nxt)),
        read::<u32>(sk, config!(kernel.tcp_copied_seq)),
        read::<u64>(sk, config!(kernel.sock_flags)),
        read::<u32>(sk, config!(kernel.sock_receive_qlen)),
    ) else {
        return ReceiveSide::UNREAD;
    };
    let mut flags = FLAG_HAS_RECEIVE_STATE;
    if sk_flags & (1u64 << (config!(kernel.sock_done_bit) & 63)) != 0 {
        flags |= FLAG_FIN_RECEIVED;
    }
    ReceiveSide {
        rcv_nxt,
        copied_seq,
        qlen,
        flags: u32::from(flags),
    }
}
