use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use leaktrace_common::{PresentRequest, ProbeFailure};

/// What the kernel side knows of one followed socket, the value of `SOCKS` (see `sock_meta`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SockMeta {
    pub born_ns: u64,
    /// See [`leaktrace_common::Record::sock_taken_ns`].
    pub taken_ns: u64,
    /// The inode of the socket's file, once it has one (0 before): read once, as reaching it
    /// takes four dependent loads.
    pub ino: u64,
    pub owner_tgid: u32,
    pub flags: u32,
}

/// The records, in the order they were reserved. Userspace may resize it (`--ring-size`).
#[map]
pub(crate) static RECORDS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Records that did not fit in `RECORDS`, per CPU; userspace sums and reports them.
#[map]
pub(crate) static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Records written since the ring's fill was last looked at, per CPU (see `emit::wakeup_flags`).
#[map]
pub(crate) static SINCE_FILL_CHECK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Failures by `ProbeFailure`, per CPU; userspace sums and reports them.
#[map]
pub(crate) static PROBE_FAILURES: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(ProbeFailure::COUNT, 0);

/// Processes whose sockets are traced when `CONFIG.filter_targets` is set (value unused).
/// Userspace sizes it (`--max-processes`).
#[map]
pub(crate) static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// What the kernel side knows about each socket it follows, by `struct sock` address: only
/// sockets claimed by a traced process have an entry, removed at its destruction or at its
/// owner's final close. Not LRU: an LRU map's shared lock costs every hook, and it would evict
/// followed sockets silently where a full map fails an insert, which is counted. Userspace sizes
/// it (`--max-kernel-sockets`).
#[map]
pub(crate) static SOCKS: HashMap<u64, SockMeta> = HashMap::with_max_entries(65536, 0);

/// How many followed sockets fall in each slot (see `sock_meta::slot`). With `--pid` most
/// sockets the hooks see are nobody's traced: an empty slot turns one away with a load from an
/// array, where a `SOCKS` lookup hashes the address and reads a bucket far from anything cached.
#[map]
pub(crate) static FOLLOWED_SLOTS: Array<u32> = Array::with_max_entries(FOLLOWED_SLOT_COUNT, 0);

/// How many followed sockets have `sock_meta::ARRIVALS_WATCHED`, or more (see
/// `sock_meta::watch_arrivals`).
#[map]
pub(crate) static ARRIVALS_WATCHED_COUNT: Array<u32> = Array::with_max_entries(1, 0);

/// One number per CPU to pass a socket's address through (see `sock_meta::slot`).
#[map]
pub(crate) static ADDRESS_SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Slots of `FOLLOWED_SLOTS`: 64 KiB, a few thousand followed sockets leave most slots empty.
pub(crate) const FOLLOWED_SLOT_BITS: u32 = 14;
const FOLLOWED_SLOT_COUNT: u32 = 1 << FOLLOWED_SLOT_BITS;

/// The process listening on each port (0: none), by `probes::listener` (IPv4 ports, then IPv6
/// ports): a connection's transitions before `accept` run in softirq and name no process, so they
/// are attributed to the listener until the process that accepts it is known. An array: a slot
/// per port is one load for every connection a host accepts, where a hash costs a lookup, and it
/// is never full.
#[map]
pub(crate) static LISTENERS: Array<u32> = Array::with_max_entries(2 << 16, 0);

/// Which socket the `getsockname` that records a present socket stands for (see `probes::present`).
#[map]
pub(crate) static PRESENT_REQUEST: Array<PresentRequest> = Array::with_max_entries(1, 0);
