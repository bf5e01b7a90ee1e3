use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use leaktrace_common::SeedRequest;

use crate::kernel::ReceiveSide;

/// The records, in the order they were reserved. Userspace may resize it (`--ring-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Records that did not fit in `EVENTS`, per CPU; userspace sums and reports them.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Processes whose sockets are traced when `CONFIG.filter_targets` is set (value unused).
#[map]
pub static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// What the kernel side knows about each live socket, by `struct sock` address. LRU so a socket
/// whose destruction was missed cannot pin memory forever.
#[map]
pub static SOCKS: LruHashMap<u64, SockMeta> = LruHashMap::with_max_entries(65536, 0);

/// Listening ports and the process that listens, by `family << 16 | port`: a connection's
/// transitions before `accept` run in softirq and name no process, so they are attributed to
/// the listener until `accept` binds the real owner.
#[map]
pub static LISTENERS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

/// A syscall's arguments between its entry and exit, by thread id.
#[map]
pub static PENDING: HashMap<u32, PendingCall> = HashMap::with_max_entries(16384, 0);

/// Which socket the seeding `getsockname` stands for (see `probes::seed`).
#[map]
pub static SEED_REQUEST: Array<SeedRequest> = Array::with_max_entries(1, 0);

/// leaktrace's own duplicates of other processes' fds, made only to seed them: closing one is
/// not the owner closing its socket.
#[map]
pub static SEED_DUPS: HashMap<i32, u8> = HashMap::with_max_entries(64, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockMeta {
    pub born_ns: u64,
    pub owner_tgid: u32,
    pub owner_fd: i32,
    /// The owner shut the socket down: from now on its reads and arrivals are recorded.
    pub watched: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    pub ts_ns: u64,
    /// The socket the call named, or that `inet_csk_accept` returned; 0 if not yet known.
    pub sock: u64,
    pub fd: i32,
    pub how: i32,
    /// The socket file's inode, when the call named an fd.
    pub ino: u64,
    /// The socket's receive side at the call's entry, for calls whose record must show it as it
    /// was before the call (shutdown); else `ReceiveSide::UNREAD`.
    pub receive: ReceiveSide,
}
