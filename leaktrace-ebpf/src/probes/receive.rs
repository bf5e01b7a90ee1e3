//! The receive side of watched sockets: the owner's reads of a socket it shut down or whose peer
//! did (CLOSE_WAIT) (`sock:sock_recv_length`, or `tcp:tcp_rcv_space_adjust` on kernels before
//! 6.3, which does not see end-of-stream reads), and the peer's data arriving after the owner's
//! shutdown (`sock:sk_data_ready`, 6.4+).
//! These run on every read and every packet of every socket: anything not followed stops at one
//! map lookup. Where no accept hook exists, the first read of a connection also says which
//! process accepted it.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use leaktrace_common::{RecordKind, RESULT_UNKNOWN};

use super::accept::taken_over;
use crate::{
    clock::now,
    config,
    emit::{socket_record, Event},
    idle,
    kernel::{tracepoint_field, Btf, Probe, Reader, Sock},
    sock_meta::{
        arrivals_watched, current, followed, ARRIVALS_WATCHED, FROM_LISTENER, READS_WATCHED,
    },
};

#[inline(always)]
fn on_read<R: Reader>(sk: Sock, ret: i64) {
    let Some(meta) = followed(sk) else {
        return;
    };
    // With an accept hook the flag is gone by now; without one, the first reader accepted it.
    if meta.flags & FROM_LISTENER != 0 && !taken_over::<R>(sk, meta, current().0, now()) {
        return;
    }
    if meta.flags & READS_WATCHED == 0 {
        return;
    }
    let mut event = Event::new(RecordKind::Recv, now());
    event.ret = ret;
    socket_record::<R>(sk, meta, &event);
}

#[inline(always)]
fn on_arrival<R: Reader>(sk: Sock) {
    if !arrivals_watched() {
        return;
    }
    let Some(meta) = followed(sk) else {
        return;
    };
    if meta.flags & ARRIVALS_WATCHED == 0 {
        return;
    }
    socket_record::<R>(sk, meta, &Event::new(RecordKind::Arrival, now()));
}

#[btf_tracepoint(function = "sock_recv_length")]
#[inline(always)]
pub(crate) fn recv_tp_btf(ctx: BtfTracePointContext) -> i32 {
    if idle() {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    on_read::<Btf>(Sock(sk), ret as i64);
    0
}

#[tracepoint]
#[inline(always)]
pub(crate) fn recv_tp(ctx: TracePointContext) -> u32 {
    if idle() {
        return 0;
    }
    let read = || -> Option<(u64, i32)> {
        Some((
            tracepoint_field(&ctx, config!(tracepoints.recv_length_sk))?,
            tracepoint_field(&ctx, config!(tracepoints.recv_length_ret))?,
        ))
    };
    if let Some((sk, ret)) = read() {
        on_read::<Probe>(Sock(sk), ret as i64);
    }
    0
}

#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
#[inline(always)]
pub(crate) fn rcvspace_tp_btf(ctx: BtfTracePointContext) -> i32 {
    if idle() {
        return 0;
    }
    on_read::<Btf>(Sock(ctx.arg(0)), RESULT_UNKNOWN);
    0
}

#[tracepoint]
#[inline(always)]
pub(crate) fn rcvspace_tp(ctx: TracePointContext) -> u32 {
    if idle() {
        return 0;
    }
    if let Some(sk) = tracepoint_field(&ctx, config!(tracepoints.rcv_space_adjust_skaddr)) {
        on_read::<Probe>(Sock(sk), RESULT_UNKNOWN);
    }
    0
}

#[btf_tracepoint(function = "sk_data_ready")]
#[inline(always)]
pub(crate) fn arrival_tp_btf(ctx: BtfTracePointContext) -> i32 {
    if idle() {
        return 0;
    }
    on_arrival::<Btf>(Sock(ctx.arg(0)));
    0
}

#[tracepoint]
#[inline(always)]
pub(crate) fn arrival_tp(ctx: TracePointContext) -> u32 {
    if idle() {
        return 0;
    }
    if let Some(sk) = tracepoint_field(&ctx, config!(tracepoints.data_ready_sk)) {
        on_arrival::<Probe>(Sock(sk));
    }
    0
}
