//! shutdown(2): which fd, `how`, the result, and the receive side at that moment. A successful
//! shutdown that stops sending marks the socket watched: its later reads and arrivals are what
//! tell a drained socket from one whose peer's bytes (or FIN) were never consumed.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use leaktrace_common::{shutdown_how, RecordKind, OWNER_UNKNOWN};

use super::syscall;
use crate::{
    emit::{current, emit, ensure_configured, owner_traced, sock_meta, Event},
    error::{ProbeError, ProbeResult},
    kernel,
};

fn on_shutdown_enter(ctx: &TracePointContext) -> ProbeResult {
    ensure_configured()?;
    let mut call = syscall::socket_call(syscall::arg0(ctx)? as i32, syscall::arg1(ctx)? as i32)?;
    // What the peer sends after the shutdown is measured from here: read at the exit, the
    // receive side would already count the peer's reply to a FIN the call sent, if the caller
    // was preempted before returning.
    call.receive = kernel::receive_side(call.sock);
    syscall::remember(call);
    Ok(())
}

#[tracepoint]
pub fn shutdown_enter(ctx: TracePointContext) -> u32 {
    let _ = on_shutdown_enter(&ctx);
    0
}

fn on_shutdown_exit(ret: i64) -> ProbeResult {
    let task = current();
    let call = syscall::recall()?;
    let meta = unsafe { &mut *sock_meta(call.sock, call.ts_ns, task.tgid)? };
    if meta.owner_tgid == OWNER_UNKNOWN {
        meta.owner_tgid = task.tgid;
        meta.owner_fd = call.fd;
    }
    if ret == 0 && call.how != shutdown_how::SHUT_RD {
        meta.watched = 1;
    }
    if !owner_traced(meta.owner_tgid) {
        return Err(ProbeError::Filtered);
    }
    // Stamped at entry: the transitions the call causes (ESTABLISHED -> FIN_WAIT1) follow it.
    let mut event = Event::new(RecordKind::Shutdown, call.ts_ns);
    event.fd = call.fd;
    event.how = call.how;
    event.ret = ret;
    event.ino = call.ino;
    event.receive = Some(call.receive);
    emit(call.sock, meta, &event)
}

#[tracepoint]
pub fn shutdown_exit(ctx: TracePointContext) -> u32 {
    if let Ok(ret) = syscall::ret(&ctx) {
        let _ = on_shutdown_exit(ret);
    }
    0
}
