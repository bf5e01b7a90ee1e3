//! Writing records: the one place that fills a [`Record`] and reserves ring buffer space.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_get_current_comm,
};
use leaktrace_common::{
    ProbeFailure, Record, RecordKind, COMM_LEN, FLAG_ESTABLISHED_AT_BIRTH, FLAG_OWNER_CONTEXT,
    NO_FD, OWNER_UNKNOWN,
};

use crate::{
    clock::now,
    config,
    failure::count_failure,
    kernel::{File, Reader, ReceiveSide, Sock},
    maps::SockMeta,
    maps::{LOST, RECORDS, SINCE_FILL_CHECK},
    sock_meta::{claimed, current, ESTABLISHED_AT_BIRTH},
};

/// What one record on a socket says besides what every socket record carries.
pub(crate) struct Event {
    pub kind: RecordKind,
    pub ts_ns: u64,
    pub old_state: u8,
    pub new_state: u8,
    pub flags: u16,
    pub how: i32,
    pub ret: i64,
    pub fd: i32,
    /// The socket's file, where the hook has read it already; else read at emission.
    pub file: Option<File>,
    /// The receive side as the hook saw it; read at emission if `None`.
    pub receive: Option<ReceiveSide>,
}

impl Event {
    #[inline(always)]
    pub(crate) fn new(kind: RecordKind, ts_ns: u64) -> Self {
        Self {
            kind,
            ts_ns,
            old_state: 0,
            new_state: 0,
            flags: 0,
            how: 0,
            ret: 0,
            fd: NO_FD,
            file: None,
            receive: None,
        }
    }
}

/// Writes one record about `sk`: the event, the socket's owner, addresses and receive side.
#[inline(always)]
pub(crate) fn socket_record<R: Reader>(sk: Sock, meta: &mut SockMeta, event: &Event) {
    let (tgid, tid) = current();
    let mut flags = event.flags;
    if meta.owner_tgid != OWNER_UNKNOWN && meta.owner_tgid == tgid {
        flags |= FLAG_OWNER_CONTEXT;
    }
    if meta.flags & ESTABLISHED_AT_BIRTH != 0 {
        flags |= FLAG_ESTABLISHED_AT_BIRTH;
    }
    let receive = match event.receive {
        Some(receive) => receive,
        None => sk.receive_side::<R>(),
    };
    let mut record = blank(event.kind, event.ts_ns, tgid, tid);
    record.sock = sk.addr();
    record.sock_born_ns = meta.born_ns;
    record.sock_taken_ns = meta.taken_ns;
    record.owner_tgid = meta.owner_tgid;
    // The inode is what finds the fd that holds the socket: named wherever the socket has a file.
    if meta.ino == 0 {
        let file = match event.file {
            Some(file) => Some(file),
            None => sk.socket::<R>().and_then(|socket| socket.file::<R>()),
        };
        meta.ino = file.map_or(0, |file| file.ino::<R>());
    }
    record.ino = meta.ino;
    record.ret = event.ret;
    record.fd = event.fd;
    record.how = event.how;
    record.old_state = event.old_state;
    record.new_state = event.new_state;
    record.flags = flags | receive.flags;
    record.rcv_nxt = receive.rcv_nxt;
    record.copied_seq = receive.copied_seq;
    record.rcv_qlen = receive.qlen;
    let (family, sport, dport) = sk.endpoints::<R>(&mut record.saddr, &mut record.daddr);
    record.family = family;
    record.sport = sport;
    record.dport = dport;
    submit(&record);
}

/// Starts following `sk` for `owner` if `owner` is traced, and records the step that made it
/// followed, dated at the socket's birth: the claim is its birth.
#[inline(always)]
pub(crate) fn claim_and_record<R: Reader>(
    sk: Sock,
    owner: u32,
    kind: RecordKind,
    old_state: u8,
    new_state: u8,
) {
    if let Some(meta) = claimed(sk, owner, 0) {
        let mut event = Event::new(kind, meta.born_ns);
        event.old_state = old_state;
        event.new_state = new_state;
        event.file = sk.socket::<R>().and_then(|socket| socket.file::<R>());
        socket_record::<R>(sk, meta, &event);
    }
}

/// Writes one record about a process (`Fork`, `Exit`), which names no socket.
#[inline(always)]
pub(crate) fn process_record(kind: RecordKind, child_tgid: u32) {
    let (tgid, tid) = current();
    let mut record = blank(kind, now(), tgid, tid);
    record.child_tgid = child_tgid;
    submit(&record);
}

#[inline(always)]
fn blank(kind: RecordKind, ts_ns: u64, tgid: u32, tid: u32) -> Record {
    Record {
        ts_ns,
        sock: 0,
        sock_born_ns: 0,
        sock_taken_ns: 0,
        ino: 0,
        ret: 0,
        tgid,
        tid,
        owner_tgid: OWNER_UNKNOWN,
        child_tgid: 0,
        fd: NO_FD,
        how: 0,
        rcv_nxt: 0,
        copied_seq: 0,
        rcv_qlen: 0,
        sport: 0,
        dport: 0,
        family: 0,
        flags: 0,
        kind: kind as u8,
        old_state: 0,
        new_state: 0,
        _pad: [0; 1],
        saddr: [0; 16],
        daddr: [0; 16],
        comm: bpf_get_current_comm().unwrap_or_else(|_| {
            count_failure(ProbeFailure::Comm);
            [0; COMM_LEN]
        }),
    }
}

/// A full ring buffer is counted in `LOST`, never silently dropped.
#[inline(always)]
fn submit(record: &Record) {
    let Some(mut entry) = RECORDS.reserve::<Record>(0) else {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot.
            unsafe { *lost += 1 };
        }
        return;
    };
    entry.write(*record);
    entry.submit(wakeup_flags());
}

/// Records a CPU writes between two looks at the ring's fill: the look reads positions the
/// reader writes on another CPU, a cache miss each time, and an eighth of the ring holds
/// thousands of records.
const FILL_CHECK_EVERY: u32 = 32;

/// Wakes the reader only once an eighth of the ring is waiting; it drains what is less on its
/// own every 250 ms. The default, a wake-up whenever the reader has caught up, costs the traced
/// workload an irq_work and leaktrace a context switch per record or two on a busy host.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let Some(since) = SINCE_FILL_CHECK.get_ptr_mut(0) else {
        return BPF_RB_NO_WAKEUP as u64;
    };
    // SAFETY: a per-CPU slot; programs do not preempt each other on one CPU.
    let since = unsafe { &mut *since };
    *since += 1;
    if *since < FILL_CHECK_EVERY {
        return BPF_RB_NO_WAKEUP as u64;
    }
    *since = 0;
    if RECORDS.query(BPF_RB_AVAIL_DATA as u64) >= u64::from(config!(ring_size) / 8) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
