//! The kernel side's entry for each followed socket: who claimed it, when it was born, and what
//! is left to tell about it. Claiming is also where `--pid` filters: a socket no traced process
//! claims gets no entry, so every later hook on it stops at one failed lookup (with `--pid`, most
//! often at an empty slot of `FOLLOWED_SLOTS`), and on a busy host the entries of other
//! processes' sockets cannot fill the map the traced ones need.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid};
use leaktrace_common::ProbeFailure;

use crate::{
    clock::now,
    config,
    failure::count_failure,
    kernel::Sock,
    maps::{
        SockMeta, ADDRESS_SCRATCH, ARRIVALS_WATCHED_COUNT, FOLLOWED_SLOTS, FOLLOWED_SLOT_BITS,
        SOCKS, TARGETS,
    },
};

/// The owner shut the socket down or its peer did (CLOSE_WAIT): from now on its reads are
/// recorded, for whether the owner ever reads the end-of-stream.
pub(crate) const READS_WATCHED: u32 = 1 << 0;
/// It came from a listener and is claimed by the listener's process until the process that
/// accepts it is known.
pub(crate) const FROM_LISTENER: u32 = 1 << 1;
/// The owner shut its sending side down: what the peer sends from now on is recorded too. (After
/// the peer's own FIN nothing more can arrive, so CLOSE_WAIT alone does not need it.) Set by
/// [`watch_arrivals`] only.
pub(crate) const ARRIVALS_WATCHED: u32 = 1 << 2;
/// Its handshake ended at its birth, unrecorded: every record says so
/// ([`leaktrace_common::FLAG_ESTABLISHED_AT_BIRTH`]).
pub(crate) const ESTABLISHED_AT_BIRTH: u32 = 1 << 3;

/// The current task: (tgid, tid).
#[inline(always)]
pub(crate) fn current() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// The entry of a socket the kernel side follows.
#[inline(always)]
pub(crate) fn followed(sk: Sock) -> Option<&'static mut SockMeta> {
    // SAFETY: a slot of an array map; a torn read cannot happen to an aligned u32.
    if slots_kept() && slot(sk).is_some_and(|count| unsafe { count.read_volatile() } == 0) {
        return None;
    }
    // SAFETY: an entry stays valid for the program's run; another CPU updating the same
    // socket's entry can at worst mix two updates of its flags.
    SOCKS
        .get_ptr_mut(sk.addr())
        .map(|meta| unsafe { &mut *meta })
}

/// Whether sockets `tgid` claims are followed: with `--pid`, only a traced process's are.
#[inline(always)]
pub(crate) fn traced(tgid: u32) -> bool {
    if config!(filter_targets) == 0 {
        return true;
    }
    if tgid == 0 {
        return false;
    }
    // SAFETY: the value is not used, only its presence.
    if unsafe { TARGETS.get(tgid) }.is_some() {
        return true;
    }
    config!(cgroup_id) != 0 && joins_traced_cgroup(tgid)
}

/// Whether `tgid`, running now, is in the traced cgroup (or one below it): the cgroup it is in
/// when it claims a socket decides, so a service's processes started later, or moved in by a
/// service manager, are traced too. It then joins `TARGETS`, where the hooks that run for it on
/// other CPUs (a connection accepted on its listener, in softirq) and its exit find it.
#[inline(always)]
fn joins_traced_cgroup(tgid: u32) -> bool {
    // Only the current task's cgroup can be read; in softirq `tgid` is not the current task.
    if current().0 != tgid {
        return false;
    }
    // SAFETY: no preconditions; 0 when the task's cgroup is not that deep.
    let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(config!(cgroup_level) as i32) };
    if ancestor != config!(cgroup_id) {
        return false;
    }
    if TARGETS.insert(tgid, 1, 0).is_err() {
        // Its sockets are followed still; only its exit goes unseen, and userspace warns.
        count_failure(ProbeFailure::TargetMapFull);
    }
    true
}

/// Starts following `sk` for `owner`, if `owner` is traced, born now; an entry made meanwhile by
/// another CPU is kept, with its birth time. Whether `sk` is followed now: callers that need its
/// entry use [`claimed`], the others save the lookup.
#[inline(always)]
pub(crate) fn claim(sk: Sock, owner: u32, flags: u32) -> bool {
    if !traced(owner) {
        return false;
    }
    // Read only here: the clock costs a socket nobody traces more than the checks above.
    let meta = SockMeta {
        born_ns: now(),
        taken_ns: 0,
        ino: 0,
        owner_tgid: owner,
        flags,
    };
    // Counted before the entry exists, so that no other CPU finds its slot empty meanwhile.
    count_in_slot(sk, 1);
    // BPF_NOEXIST: another CPU may have claimed it first.
    if let Err(error) = SOCKS.insert(sk.addr(), meta, 1) {
        // The entry that exists was counted by whoever made it.
        count_in_slot(sk, u32::MAX);
        // -EEXIST is that race; anything else means the map could not take it.
        const EEXIST: i32 = 17;
        if error != -EEXIST {
            count_failure(ProbeFailure::SocketMapFull);
            return false;
        }
    }
    true
}

/// [`claim`], and the entry of `sk` if it is followed now.
#[inline(always)]
pub(crate) fn claimed(sk: Sock, owner: u32, flags: u32) -> Option<&'static mut SockMeta> {
    if claim(sk, owner, flags) {
        followed(sk)
    } else {
        None
    }
}

/// Stops following `sk`, whose entry is `meta`.
#[inline(always)]
pub(crate) fn forget(sk: Sock, meta: &SockMeta) {
    // Read before the entry goes: the map may hand its memory to another socket at once.
    let arrivals_watched = meta.flags & ARRIVALS_WATCHED != 0;
    // Only the removal that took the entry away uncounts it.
    if SOCKS.remove(sk.addr()).is_ok() {
        count_in_slot(sk, u32::MAX);
        if arrivals_watched {
            count_arrivals_watched(u32::MAX);
        }
    }
}

/// Records what the peer sends to the socket of `meta` from now on.
#[inline(always)]
pub(crate) fn watch_arrivals(meta: &mut SockMeta) {
    if meta.flags & ARRIVALS_WATCHED == 0 {
        // Counted before the flag is set, uncounted after the entry is gone: the count is never
        // below the sockets flagged. (Two CPUs flagging one socket at once count it twice, which
        // only costs lookups.)
        count_arrivals_watched(1);
        meta.flags |= ARRIVALS_WATCHED;
    }
}

/// Whether any followed socket has [`ARRIVALS_WATCHED`]: mostly none does, and the hook that
/// runs on every packet of every socket then stops at one load.
#[inline(always)]
pub(crate) fn arrivals_watched() -> bool {
    // SAFETY: an array slot; a torn read cannot happen to an aligned u32.
    ARRIVALS_WATCHED_COUNT
        .get_ptr(0)
        .is_none_or(|count| unsafe { count.read_volatile() } != 0)
}

#[inline(always)]
fn count_arrivals_watched(delta: u32) {
    if let Some(count) = ARRIVALS_WATCHED_COUNT.get_ptr_mut(0) {
        atomic_add(count, delta);
    }
}

/// Whether `FOLLOWED_SLOTS` is kept: only with `--pid`. Without it every process's sockets are
/// followed, nearly every slot is taken, and the counting would cost without ever saving a lookup.
#[inline(always)]
fn slots_kept() -> bool {
    config!(filter_targets) != 0
}

/// The slot of `sk` in `FOLLOWED_SLOTS`: a multiplicative hash of its address, as the allocator
/// places sockets at regular strides that a plain mask would crowd into a few slots.
#[inline(always)]
fn slot(sk: Sock) -> Option<*mut u32> {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    // The verifier allows no arithmetic on a BTF pointer, but what a map holds reads back as a
    // plain number.
    let scratch = ADDRESS_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot; programs do not preempt each other on one CPU.
    let address = unsafe {
        scratch.write_volatile(sk.addr());
        scratch.read_volatile()
    };
    let index = (address.wrapping_mul(GOLDEN) >> (64 - FOLLOWED_SLOT_BITS)) as u32;
    FOLLOWED_SLOTS.get_ptr_mut(index)
}

/// Adds `delta` (wrapping: `u32::MAX` takes one away) to the count of `sk`'s slot.
#[inline(always)]
fn count_in_slot(sk: Sock, delta: u32) {
    if slots_kept() {
        if let Some(count) = slot(sk) {
            atomic_add(count, delta);
        }
    }
}

/// Adds `delta` to a count in a map that every CPU changes.
#[inline(always)]
fn atomic_add(count: *mut u32, delta: u32) {
    // SAFETY: a slot of an array map, changed only by atomic adds. The eBPF target has no
    // `AtomicU32::fetch_add`, but its atomic add instruction is what this lowers to.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(count, delta) };
}
