use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use leaktrace_common::{ProbeFailure, SeedRequest};

use crate::sock_meta::SockMeta;

/// The records, in the order they were reserved. Userspace may resize it (`--ring-size`).
#[map]
pub static RECORDS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Records that did not fit in `RECORDS`, per CPU; userspace sums and reports them.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Records written since the ring's fill was last looked at, per CPU (see `emit::wakeup_flags`).
#[map]
pub static SINCE_FILL_CHECK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Failures by `ProbeFailure`, per CPU; userspace sums and reports them.
#[map]
pub static PROBE_FAILURES: PerCpuArray<u64> = PerCpuArray::with_max_entries(ProbeFailure::COUNT, 0);

/// Processes whose sockets are traced when `CONFIG.filter_targets` is set (value unused).
#[map]
pub static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// What the kernel side knows about each socket it follows, by `struct sock` address: only
/// sockets claimed by a traced process have an entry, removed at its destruction or at its
/// owner's final close. Not LRU: an LRU map's shared lock costs every hook, and it would evict
/// followed sockets silently where a full map fails an insert, which is counted.
#[map]
pub static SOCKS: HashMap<u64, SockMeta> = HashMap::with_max_entries(65536, 0);

/// Listening ports and the process that listens, by `family << 16 | port`: a connection's
/// transitions before `accept` run in softirq and name no process, so they are attributed to
/// the listener until the process that accepts it is known.
#[map]
pub static LISTENERS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

/// Which socket the seeding `getsockname` stands for (see `probes::seed`).
#[map]
pub static SEED_REQUEST: Array<SeedRequest> = Array::with_max_entries(1, 0);
