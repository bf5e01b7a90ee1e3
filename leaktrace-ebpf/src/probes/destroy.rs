//! The kernel destroying a socket: the end of its timeline. Its address may be reused after
//! this, so the kernel side forgets it here.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use leaktrace_common::RecordKind;

use crate::{
    config,
    emit::{self, emit, ensure_configured, owner_traced, Event},
    error::{ProbeError, ProbeResult},
    maps::SOCKS,
};

fn on_destroy(ctx: &TracePointContext) -> ProbeResult {
    ensure_configured()?;
    let sk: u64 = unsafe { ctx.read_at(config!(tracepoints.destroy_skaddr) as usize) }
        .map_err(|_| ProbeError::Read)?;
    let Some(meta) = (unsafe { SOCKS.get(sk) }).copied() else {
        return Ok(());
    };
    let _ = SOCKS.remove(sk);
    if !owner_traced(meta.owner_tgid) {
        return Err(ProbeError::Filtered);
    }
    emit(sk, &meta, &Event::new(RecordKind::Destroy, emit::now()))
}

#[tracepoint]
pub fn destroy_tp(ctx: TracePointContext) -> u32 {
    let _ = on_destroy(&ctx);
    0
}
