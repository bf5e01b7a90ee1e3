//! Reads of kernel structs at the offsets userspace resolved from BTF.
//!
//! Two ways to read, chosen by the program type: [`Btf`] loads fields straight from the
//! BTF-typed pointers that `tp_btf`, `fentry` and `fexit` programs receive (the verifier checks
//! each load against the kernel's types, knowing the offset because `CONFIG` is frozen
//! `.rodata`, and the JIT emits a plain load with a fault handler: no helper call); [`Probe`]
//! goes through `bpf_probe_read_kernel`, which classic tracepoints and kprobes need, as their
//! pointers are bare integers. Each pointer has its own type ([`Sock`], [`TcpSock`], [`Socket`],
//! [`File`], [`Inode`], and the fd table's), and a read takes an [`Addr`], which only this module
//! can make from one of them: an offset of one struct is never applied to another.
use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_skc_to_tcp_sock, generated as gen},
    programs::TracePointContext,
};
use leaktrace_common::{
    shutdown_how, ProbeFailure, AF_INET, AF_INET6, FLAG_FIN_RECEIVED, FLAG_HAS_RECEIVE_STATE,
    OFFSET_UNKNOWN,
};

use crate::{config, failure::count_failure};

const IPPROTO_TCP: u16 = 6;
// include/net/sock.h: `#define RCV_SHUTDOWN 1`, `#define SEND_SHUTDOWN 2`, macros BTF does not
// carry; unchanged since the first TCP implementation.
const RCV_SHUTDOWN: u8 = 1;
const SEND_SHUTDOWN: u8 = 2;

/// The address of a kernel struct, to read a field of it: made only here, from the pointer type
/// whose offsets apply.
#[derive(Clone, Copy)]
pub(crate) struct Addr(u64);

/// How a program reads kernel memory.
pub(crate) trait Reader {
    /// The `T` at `base + offset`; zeros if it cannot be read (a failure counted). Never an
    /// `Option`: a branch per read multiplies the paths the verifier walks, past what older
    /// kernels' verifiers accept in a program with many reads.
    fn read<T: Copy>(base: Addr, offset: u32) -> T;

    /// The `tcp_sock` view of `sk` (the same address) for reading its TCP fields.
    fn tcp_sock(sk: Sock) -> Option<TcpSock>;
}

/// Direct loads through BTF-typed pointers: only for `tp_btf`, `fentry` and `fexit` programs,
/// and only on pointers that came from their arguments or from loads through those.
pub(crate) enum Btf {}

impl Reader for Btf {
    #[inline(always)]
    fn read<T: Copy>(base: Addr, offset: u32) -> T {
        // SAFETY: the verifier accepts the load only where `base` is a BTF pointer and the
        // offset names a field of type T in its struct; a fault (a NULL or stale pointer) reads
        // zeros instead of crashing.
        unsafe { core::ptr::read_volatile((base.0 as *const u8).add(offset as usize).cast()) }
    }

    #[inline(always)]
    fn tcp_sock(sk: Sock) -> Option<TcpSock> {
        // SAFETY: the helper checks that `sk` is a full TCP socket and returns NULL otherwise.
        let tcp = unsafe { bpf_skc_to_tcp_sock(sk.0 as *mut _) };
        (!tcp.is_null()).then_some(TcpSock(tcp as u64))
    }
}

/// `bpf_probe_read_kernel`: for programs whose pointers are plain integers.
pub(crate) enum Probe {}

impl Reader for Probe {
    #[inline(always)]
    fn read<T: Copy>(base: Addr, offset: u32) -> T {
        let mut value = MaybeUninit::<T>::zeroed();
        // SAFETY: the helper validates the address and writes `size_of::<T>()` bytes into
        // `value`, zeros on a fault.
        let ret = unsafe {
            gen::bpf_probe_read_kernel(
                value.as_mut_ptr().cast(),
                size_of::<T>() as u32,
                (base.0 + offset as u64) as *const _,
            )
        };
        if ret != 0 {
            count_failure(ProbeFailure::Read);
        }
        // SAFETY: zeroed, then written by the helper; T is plain integer data.
        unsafe { value.assume_init() }
    }

    #[inline(always)]
    fn tcp_sock(sk: Sock) -> Option<TcpSock> {
        Some(TcpSock(sk.0))
    }
}

/// A `struct sock *`.
#[derive(Clone, Copy)]
pub(crate) struct Sock(pub u64);

/// A `struct tcp_sock *`: a [`Sock`] known to be a full TCP socket, whose TCP fields lie past
/// `struct sock`.
#[derive(Clone, Copy)]
pub(crate) struct TcpSock(u64);

/// A `struct socket *`: the socket's file side, present once a process holds it.
#[derive(Clone, Copy)]
pub(crate) struct Socket(u64);

/// A `struct file *`.
#[derive(Clone, Copy)]
pub(crate) struct File(u64);

/// A `struct inode *`.
#[derive(Clone, Copy)]
struct Inode(u64);

/// A `struct files_struct *`: a task's open files.
#[derive(Clone, Copy)]
struct Files(u64);

/// A `struct fdtable *`.
#[derive(Clone, Copy)]
struct FdTable(u64);

/// Each pointer type reads only through its own address.
macro_rules! readable_at {
    ($($pointer:ident),+) => {$(
        impl $pointer {
            #[inline(always)]
            fn at(self) -> Addr {
                Addr(self.0)
            }
        }
    )+};
}
readable_at!(Sock, TcpSock, Socket, File, Inode, Files, FdTable);

/// Whether a file still has references, as read while a TCP state changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileRefs {
    /// Some fd (or an in-flight SCM_RIGHTS message, or a duplicate) still refers to it.
    Held,
    /// The last reference went: the kernel is closing the socket (`close(2)`, process exit).
    Released,
}

impl Sock {
    #[inline(always)]
    pub(crate) fn addr(self) -> u64 {
        self.0
    }

    #[inline(always)]
    pub(crate) fn family<R: Reader>(self) -> u16 {
        R::read(self.at(), config!(kernel.sock_family))
    }

    #[inline(always)]
    pub(crate) fn is_tcp<R: Reader>(self) -> bool {
        let family = self.family::<R>();
        if family != AF_INET && family != AF_INET6 {
            return false;
        }
        let protocol = if config!(kernel.sock_protocol_size) == 1 {
            u16::from(R::read::<u8>(self.at(), config!(kernel.sock_protocol)))
        } else {
            R::read::<u16>(self.at(), config!(kernel.sock_protocol))
        };
        protocol == IPPROTO_TCP
    }

    /// The bound port, else (a finished connection whose port the kernel released, its fd
    /// still held) the one `getsockname` still reports.
    #[inline(always)]
    pub(crate) fn local_port<R: Reader>(self) -> u16 {
        match R::read::<u16>(self.at(), config!(kernel.sock_num)) {
            // Past `struct sock`, so read through the TCP view the verifier knows the size of.
            0 => R::tcp_sock(self).map_or(0, |tcp| tcp.inet_sport::<R>()),
            port => port,
        }
    }

    #[inline(always)]
    pub(crate) fn state<R: Reader>(self) -> u8 {
        R::read(self.at(), config!(kernel.sock_state))
    }

    #[inline(always)]
    fn flag<R: Reader>(self, bit: u32) -> bool {
        R::read::<u64>(self.at(), config!(kernel.sock_flags)) & (1u64 << (bit & 63)) != 0
    }

    #[inline(always)]
    fn shutdown_bits<R: Reader>(self) -> u8 {
        let offset = config!(kernel.sock_shutdown);
        if offset == OFFSET_UNKNOWN {
            return 0;
        }
        R::read::<u8>(self.at(), offset)
    }

    /// The sending side was shut down (shutdown(2) or close).
    #[inline(always)]
    pub(crate) fn send_shutdown<R: Reader>(self) -> bool {
        self.shutdown_bits::<R>() & SEND_SHUTDOWN != 0
    }

    /// `shutdown(2)`'s `how`, as the socket's shutdown bits show it after a shutdown that
    /// stopped sending.
    #[inline(always)]
    pub(crate) fn shutdown_how<R: Reader>(self) -> i32 {
        if self.shutdown_bits::<R>() & RCV_SHUTDOWN != 0 {
            shutdown_how::SHUT_RDWR
        } else {
            shutdown_how::SHUT_WR
        }
    }

    /// The socket's file side; `None` before `accept` has given it one.
    #[inline(always)]
    pub(crate) fn socket<R: Reader>(self) -> Option<Socket> {
        Some(R::read::<u64>(self.at(), config!(kernel.sock_socket)))
            .filter(|&socket| socket != 0)
            .map(Socket)
    }

    /// Addresses and ports: `(family, local port, remote port)`, and the addresses into `saddr`
    /// and `daddr`. A failed read leaves zeros.
    #[inline(always)]
    pub(crate) fn endpoints<R: Reader>(
        self,
        saddr: &mut [u8; 16],
        daddr: &mut [u8; 16],
    ) -> (u16, u16, u16) {
        let family = self.family::<R>();
        let sport = self.local_port::<R>();
        let dport = u16::from_be(R::read(self.at(), config!(kernel.sock_dport)));
        if family == AF_INET {
            let local: u32 = R::read(self.at(), config!(kernel.sock_rcv_saddr));
            let remote: u32 = R::read(self.at(), config!(kernel.sock_daddr));
            saddr[..4].copy_from_slice(&local.to_ne_bytes());
            daddr[..4].copy_from_slice(&remote.to_ne_bytes());
        } else if family == AF_INET6 {
            copy_v6::<R>(self, config!(kernel.sock_v6_rcv_saddr), saddr);
            copy_v6::<R>(self, config!(kernel.sock_v6_daddr), daddr);
        }
        (family, sport, dport)
    }

    /// The receive side now; `ReceiveSide::UNREAD` if it cannot be read.
    #[inline(always)]
    pub(crate) fn receive_side<R: Reader>(self) -> ReceiveSide {
        let Some(tcp) = R::tcp_sock(self) else {
            return ReceiveSide::UNREAD;
        };
        let rcv_nxt = R::read::<u32>(tcp.at(), config!(kernel.tcp_rcv_nxt));
        let copied_seq = R::read::<u32>(tcp.at(), config!(kernel.tcp_copied_seq));
        let qlen = R::read::<u32>(self.at(), config!(kernel.sock_receive_qlen));
        let mut flags = FLAG_HAS_RECEIVE_STATE;
        if self.flag::<R>(config!(kernel.sock_done_bit)) {
            flags |= FLAG_FIN_RECEIVED;
        }
        ReceiveSide {
            rcv_nxt,
            copied_seq,
            qlen,
            flags,
        }
    }
}

/// Four 32-bit loads: one 16-byte copy is no single instruction, and a load must stay inside
/// one field of `struct in6_addr` for the verifier.
#[inline(always)]
fn copy_v6<R: Reader>(sk: Sock, offset: u32, out: &mut [u8; 16]) {
    for i in 0..4 {
        let word: u32 = R::read(sk.at(), offset + i * 4);
        out[i as usize * 4..i as usize * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
}

impl TcpSock {
    /// `inet_sock.inet_sport`, past `struct sock`: the local port `getsockname` reports.
    #[inline(always)]
    fn inet_sport<R: Reader>(self) -> u16 {
        u16::from_be(R::read(self.at(), config!(kernel.inet_sport)))
    }
}

impl Socket {
    #[inline(always)]
    pub(crate) fn file<R: Reader>(self) -> Option<File> {
        Some(R::read::<u64>(self.at(), config!(kernel.socket_file)))
            .filter(|&file| file != 0)
            .map(File)
    }

    #[inline(always)]
    pub(crate) fn sock<R: Reader>(self) -> Option<Sock> {
        Some(R::read::<u64>(self.at(), config!(kernel.socket_sk)))
            .filter(|&sk| sk != 0)
            .map(Sock)
    }
}

impl File {
    /// Whether anything still refers to the file. Read while the kernel closes the socket, the
    /// counter has already dropped past one reference (`f_count` to 0, `f_ref` below 0).
    #[inline(always)]
    pub(crate) fn refs<R: Reader>(self) -> FileRefs {
        if R::read::<i64>(self.at(), config!(kernel.file_count))
            < config!(kernel.file_count_one) as i64
        {
            FileRefs::Released
        } else {
            FileRefs::Held
        }
    }

    #[inline(always)]
    fn inode<R: Reader>(self) -> Option<Inode> {
        Some(R::read::<u64>(self.at(), config!(kernel.file_inode)))
            .filter(|&inode| inode != 0)
            .map(Inode)
    }

    /// The inode number: `socket:[ino]` in /proc/<pid>/fd.
    #[inline(always)]
    pub(crate) fn ino<R: Reader>(self) -> u64 {
        self.inode::<R>().map_or(0, |inode| {
            R::read::<u64>(inode.at(), config!(kernel.inode_ino))
        })
    }

    /// Whether the file is a socket (`S_IFSOCK` in the inode's mode).
    #[inline(always)]
    pub(crate) fn is_socket<R: Reader>(self) -> bool {
        // File type bits of `inode.i_mode`: part of the stat(2) ABI, not a kernel layout.
        const S_IFMT: u16 = 0o170000;
        const S_IFSOCK: u16 = 0o140000;
        self.inode::<R>().is_some_and(|inode| {
            R::read::<u16>(inode.at(), config!(kernel.inode_mode)) & S_IFMT == S_IFSOCK
        })
    }

    #[inline(always)]
    pub(crate) fn socket<R: Reader>(self) -> Option<Socket> {
        Some(R::read::<u64>(self.at(), config!(kernel.file_private_data)))
            .filter(|&socket| socket != 0)
            .map(Socket)
    }
}

/// The field at `offset` (from this kernel's tracefs format file for the event) of a classic
/// tracepoint's record; `None` if it cannot be read (a failure counted).
#[inline(always)]
pub(crate) fn tracepoint_field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // SAFETY: the helper behind `read_at` validates the address; the offsets of `T`-typed fields
    // come from the format file.
    let field = unsafe { ctx.read_at::<T>(offset as usize) };
    if field.is_err() {
        count_failure(ProbeFailure::TracepointArgs);
    }
    field.ok()
}

/// The current task's file at `fd`: task->files->fdt->fd[fd], bounded by the table's size.
/// Through `bpf_probe_read_kernel`: `bpf_get_current_task` gives a bare number (its BTF-typed
/// twin is missing before 5.11).
#[inline(always)]
pub(crate) fn current_file(fd: i32) -> Option<File> {
    if fd < 0 {
        return None;
    }
    // SAFETY: no preconditions; the task is only read through bpf_probe_read_kernel.
    let task = Addr(unsafe { bpf_get_current_task() });
    let files = Files(Probe::read(task, config!(kernel.task_files)));
    let fdt = FdTable(Probe::read(files.at(), config!(kernel.files_fdt)));
    let max_fds: u32 = Probe::read(fdt.at(), config!(kernel.fdtable_max_fds));
    if fd as u32 >= max_fds {
        return None;
    }
    let fd_array = Addr(Probe::read(fdt.at(), config!(kernel.fdtable_fd)));
    Some(File(Probe::read(fd_array, fd as u32 * 8))).filter(|&File(file)| file != 0)
}

/// The receive side of a TCP socket at one moment: how far the peer's stream reached, how far
/// the owner read it, whether the peer's FIN came, how many buffers are queued.
#[derive(Clone, Copy)]
pub(crate) struct ReceiveSide {
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub qlen: u32,
    /// `FLAG_HAS_RECEIVE_STATE` (the reads succeeded) and `FLAG_FIN_RECEIVED`.
    pub flags: u16,
}

impl ReceiveSide {
    /// Not read: a record carrying it says it has no receive state.
    pub(crate) const UNREAD: Self = Self {
        rcv_nxt: 0,
        copied_seq: 0,
        qlen: 0,
        flags: 0,
    };
}
