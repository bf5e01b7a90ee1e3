//! The kernel side's entry for each followed socket: who claimed it, when it was born, and what
//! is left to tell about it. Claiming is also where `--pid` filters: a socket no traced process
//! claims gets no entry, so every later hook on it stops at one failed lookup, and on a busy host
//! the entries of other processes' sockets cannot push the traced ones out of the LRU map.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use leaktrace_common::ProbeFailure;

use crate::{
    config,
    failure::count_failure,
    kernel::Sock,
    maps::{SOCKS, TARGETS},
};

/// The owner shut the socket down or its peer did (CLOSE_WAIT): from now on its reads are
/// recorded, for whether the owner ever reads the end-of-stream.
pub const READS_WATCHED: u32 = 1 << 0;
/// It came from a listener and is claimed by the listener's process until the process that
/// accepts it is known.
pub const FROM_LISTENER: u32 = 1 << 1;
/// The owner shut its sending side down: what the peer sends from now on is recorded too. (After
/// the peer's own FIN nothing more can arrive, so CLOSE_WAIT alone does not need it.)
pub const ARRIVALS_WATCHED: u32 = 1 << 2;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockMeta {
    pub born_ns: u64,
    /// The inode of the socket's file, once it has one (0 before): read once, as reaching it
    /// takes four dependent loads.
    pub ino: u64,
    pub owner_tgid: u32,
    pub flags: u32,
}

/// The current task: (tgid, tid).
#[inline(always)]
pub fn current() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// The entry of a socket the kernel side follows.
#[inline(always)]
pub fn followed(sk: Sock) -> Option<&'static mut SockMeta> {
    // SAFETY: an entry stays valid for the program's run; another CPU updating the same
    // socket's entry can at worst mix two updates of its flags.
    SOCKS
        .get_ptr_mut(sk.addr())
        .map(|meta| unsafe { &mut *meta })
}

/// Whether sockets `tgid` claims are followed: with `--pid`, only a traced process's are.
#[inline(always)]
pub fn traced(tgid: u32) -> bool {
    if config!(filter_targets) == 0 {
        return true;
    }
    // SAFETY: the value is not used, only its presence.
    tgid != 0 && unsafe { TARGETS.get(tgid) }.is_some()
}

/// Starts following `sk` for `owner`, if `owner` is traced; an entry made meanwhile by another
/// CPU is kept, with its birth time.
#[inline(always)]
pub fn claim(sk: Sock, owner: u32, born_ns: u64, flags: u32) -> Option<&'static mut SockMeta> {
    if !traced(owner) {
        return None;
    }
    let meta = SockMeta {
        born_ns,
        ino: 0,
        owner_tgid: owner,
        flags,
    };
    // BPF_NOEXIST: another CPU may have claimed it first.
    if let Err(error) = SOCKS.insert(sk.addr(), meta, 1) {
        // -EEXIST is that race; anything else means the map could not take it.
        const EEXIST: i32 = 17;
        if error != -EEXIST {
            count_failure(ProbeFailure::SocketMapFull);
        }
    }
    followed(sk)
}

/// Stops following `sk`.
#[inline(always)]
pub fn forget(sk: Sock) {
    let _ = SOCKS.remove(sk.addr());
}
