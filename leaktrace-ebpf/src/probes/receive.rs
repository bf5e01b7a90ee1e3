//! The receive side of watched (shut-down) sockets: the owner's reads (`sock:sock_recv_length`,
//! or `tcp:tcp_rcv_space_adjust` on kernels before 6.3, which does not see end-of-stream reads)
//! and the peer's data arriving (`sock:sk_data_ready`, 6.4+). Every other socket returns after
//! one map lookup, which keeps these per-packet and per-read hooks cheap.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use leaktrace_common::{RecordKind, RESULT_UNKNOWN};

use crate::{
    config,
    emit::{self, emit, owner_traced, Event},
    error::{ProbeError, ProbeResult},
    maps::SOCKS,
};

fn on_watched(sk: u64, kind: RecordKind, ret: i64) -> ProbeResult {
    let Some(meta) = (unsafe { SOCKS.get(sk) }).copied() else {
        return Ok(());
    };
    if meta.watched == 0 {
        return Ok(());
    }
    if !owner_traced(meta.owner_tgid) {
        return Err(ProbeError::Filtered);
    }
    let mut event = Event::new(kind, emit::now());
    event.ret = ret;
    emit(sk, &meta, &event)
}

fn read_ptr(ctx: &TracePointContext, offset: u32) -> Result<u64, ProbeError> {
    unsafe { ctx.read_at(offset as usize) }.map_err(|_| ProbeError::Read)
}

#[tracepoint]
pub fn recv_length(ctx: TracePointContext) -> u32 {
    let read = || -> Result<(u64, i32), ProbeError> {
        let sk = read_ptr(&ctx, config!(tracepoints.recv_length_sk))?;
        let ret = unsafe { ctx.read_at::<i32>(config!(tracepoints.recv_length_ret) as usize) }
            .map_err(|_| ProbeError::Read)?;
        Ok((sk, ret))
    };
    if let Ok((sk, ret)) = read() {
        let _ = on_watched(sk, RecordKind::Recv, ret as i64);
    }
    0
}

#[tracepoint]
pub fn recv_space_adjust(ctx: TracePointContext) -> u32 {
    if let Ok(sk) = read_ptr(&ctx, config!(tracepoints.rcv_space_adjust_skaddr)) {
        let _ = on_watched(sk, RecordKind::Recv, RESULT_UNKNOWN);
    }
    0
}

#[tracepoint]
pub fn data_ready(ctx: TracePointContext) -> u32 {
    if let Ok(sk) = read_ptr(&ctx, config!(tracepoints.data_ready_sk)) {
        let _ = on_watched(sk, RecordKind::Arrival, 0);
    }
    0
}
