//! Per-socket bookkeeping shared by every hook, the owner filter, and writing records.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
};
use leaktrace_common::{Record, RecordKind, FLAG_OWNER_CONTEXT, NO_FD, OWNER_UNKNOWN};

use crate::{
    config,
    error::{ProbeError, ProbeResult},
    kernel::{self, ReceiveSide},
    maps::{SockMeta, EVENTS, LOST, SOCKS, TARGETS},
};

pub struct Current {
    pub tgid: u32,
    pub tid: u32,
}

#[inline(always)]
pub fn current() -> Current {
    let pid_tgid = bpf_get_current_pid_tgid();
    Current {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
    }
}

#[inline(always)]
pub fn ensure_configured() -> ProbeResult {
    if config!(ready) == 0 {
        return Err(ProbeError::NotConfigured);
    }
    Ok(())
}

/// The kernel side's entry for `sk`, created on first sight: its creation time is what tells this
/// socket apart from a later one at the same address. `claimant` is the process that would own a
/// socket seen for the first time here; with `--pid`, a socket no traced process claims gets no
/// entry, or on a busy host the entries of every other socket would push the traced ones out of
/// the LRU map, losing their owner and splitting their timelines.
#[inline(always)]
pub fn sock_meta(sk: u64, now: u64, claimant: u32) -> Result<*mut SockMeta, ProbeError> {
    if let Some(meta) = SOCKS.get_ptr_mut(sk) {
        return Ok(meta);
    }
    if !owner_traced(claimant) {
        return Err(ProbeError::Filtered);
    }
    let fresh = SockMeta {
        born_ns: now,
        owner_tgid: OWNER_UNKNOWN,
        owner_fd: NO_FD,
        watched: 0,
        _pad: 0,
    };
    // BPF_NOEXIST: if another CPU created the entry meanwhile, keep its birth time.
    let _ = SOCKS.insert(sk, fresh, 1);
    SOCKS.get_ptr_mut(sk).ok_or(ProbeError::Read)
}

/// With `--pid`, only sockets whose recorded owner is traced pass: the current task is the
/// wrong test because receive-side transitions run in softirq on behalf of nobody (or, on
/// loopback, on behalf of the peer process).
#[inline(always)]
pub fn owner_traced(owner_tgid: u32) -> bool {
    if config!(filter_targets) == 0 {
        return true;
    }
    owner_tgid != OWNER_UNKNOWN && unsafe { TARGETS.get(owner_tgid) }.is_some()
}

/// What one record says besides the socket itself.
pub struct Event {
    pub kind: RecordKind,
    pub ts_ns: u64,
    pub old_state: u8,
    pub new_state: u8,
    pub fd: i32,
    pub how: i32,
    pub ret: i64,
    /// Extra `Record::flags` the hook knows of.
    pub flags: u8,
    /// The socket file's inode, where the hook went through an fd.
    pub ino: u64,
    /// The receive side as the hook saw it earlier; read at emission if `None`.
    pub receive: Option<ReceiveSide>,
}

impl Event {
    #[inline(always)]
    pub fn new(kind: RecordKind, ts_ns: u64) -> Self {
        Self {
            kind,
            ts_ns,
            old_state: 0,
            new_state: 0,
            fd: NO_FD,
            how: 0,
            ret: 0,
            flags: 0,
            ino: 0,
            receive: None,
        }
    }
}

/// Writes one record for `sk`.
#[inline(always)]
pub fn emit(sk: u64, meta: &SockMeta, event: &Event) -> ProbeResult {
    let task = current();
    let mut record = record(event, &task, meta.owner_tgid);
    record.sock = sk;
    record.sock_born_ns = meta.born_ns;
    record.owner_fd = meta.owner_fd;
    if meta.owner_tgid != OWNER_UNKNOWN && meta.owner_tgid == task.tgid {
        record.flags |= FLAG_OWNER_CONTEXT;
    }
    kernel::fill_endpoints(&mut record, sk);
    event
        .receive
        .unwrap_or_else(|| kernel::receive_side(sk))
        .write_to(&mut record);
    submit(record)
}

/// Writes one record about a process (`Fork`, `Exit`), which names no socket; `other_tgid` is
/// the process it is about besides the current one.
#[inline(always)]
pub fn emit_process(event: &Event, other_tgid: u32) -> ProbeResult {
    submit(record(event, &current(), other_tgid))
}

/// A full ring buffer is counted in `LOST`, never silently dropped.
#[inline(always)]
fn submit(record: Record) -> ProbeResult {
    let Some(mut entry) = EVENTS.reserve::<Record>(0) else {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            unsafe { *lost += 1 };
        }
        return Ok(());
    };
    entry.write(record);
    entry.submit(wakeup_flags());
    Ok(())
}

/// Wakes the reader only once an eighth of the ring is waiting; it drains what is less on its
/// own every 100 ms. The default, a wake-up whenever the reader has caught up, costs the traced
/// workload an irq_work and leaktrace a context switch per record or two on a busy host.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if waiting >= size / 8 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn record(event: &Event, task: &Current, owner_tgid: u32) -> Record {
    Record {
        ts_ns: event.ts_ns,
        sock: 0,
        sock_born_ns: 0,
        ret: event.ret,
        tgid: task.tgid,
        tid: task.tid,
        owner_tgid,
        owner_fd: NO_FD,
        fd: event.fd,
        how: event.how,
        rcv_nxt: 0,
        copied_seq: 0,
        rcv_qlen: 0,
        sport: 0,
        dport: 0,
        family: 0,
        kind: event.kind as u8,
        old_state: event.old_state,
        new_state: event.new_state,
        flags: event.flags,
        _pad: [0; 2],
        saddr: [0; 16],
        daddr: [0; 16],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ino: event.ino,
    }
}

#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}
