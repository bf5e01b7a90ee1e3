//! connect(2): binds the socket to the caller's fd. Its owner is already known from the
//! SYN_SENT transition, which runs in the caller's context; the fd is known only here.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use leaktrace_common::RecordKind;

use super::syscall;
use crate::{
    emit::{current, emit, ensure_configured, owner_traced, sock_meta, Event},
    error::{ProbeError, ProbeResult},
};

fn on_connect_enter(ctx: &TracePointContext) -> ProbeResult {
    ensure_configured()?;
    syscall::remember(syscall::socket_call(syscall::arg0(ctx)? as i32, 0)?);
    Ok(())
}

#[tracepoint]
pub fn connect_enter(ctx: TracePointContext) -> u32 {
    let _ = on_connect_enter(&ctx);
    0
}

fn on_connect_exit(ret: i64) -> ProbeResult {
    let task = current();
    let call = syscall::recall()?;
    let meta = unsafe { &mut *sock_meta(call.sock, call.ts_ns, task.tgid)? };
    meta.owner_tgid = task.tgid;
    meta.owner_fd = call.fd;
    if !owner_traced(meta.owner_tgid) {
        return Err(ProbeError::Filtered);
    }
    let mut event = Event::new(RecordKind::Connect, call.ts_ns);
    event.fd = call.fd;
    event.ret = ret;
    event.ino = call.ino;
    emit(call.sock, meta, &event)
}

#[tracepoint]
pub fn connect_exit(ctx: TracePointContext) -> u32 {
    if let Ok(ret) = syscall::ret(&ctx) {
        let _ = on_connect_exit(ret);
    }
    0
}
