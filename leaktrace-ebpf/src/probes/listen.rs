//! listen(2): records which process listens on which port, so a connection's transitions
//! before accept() (softirq) can already be attributed. Resolved at the syscall's exit because
//! listen() may pick the port itself.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use super::{listener_key, syscall};
use crate::{
    emit::{self, current, ensure_configured, sock_meta},
    error::ProbeResult,
    kernel,
    maps::LISTENERS,
};

#[tracepoint]
pub fn listen_enter(ctx: TracePointContext) -> u32 {
    if ensure_configured().is_ok() {
        if let Ok(call) = syscall::arg0(&ctx).and_then(|fd| syscall::socket_call(fd as i32, 0)) {
            syscall::remember(call);
        }
    }
    0
}

fn on_listen_exit(ret: i64) -> ProbeResult {
    let call = syscall::recall()?;
    if ret != 0 {
        return Ok(());
    }
    let tgid = current().tgid;
    // Every listener, traced or not: a process traced later (--follow-children) may accept on it.
    let key = listener_key(kernel::family(call.sock)?, kernel::local_port(call.sock)?);
    let _ = LISTENERS.insert(key, tgid, 0);
    let meta = unsafe { &mut *sock_meta(call.sock, emit::now(), tgid)? };
    meta.owner_tgid = tgid;
    meta.owner_fd = call.fd;
    Ok(())
}

#[tracepoint]
pub fn listen_exit(ctx: TracePointContext) -> u32 {
    if let Ok(ret) = syscall::ret(&ctx) {
        let _ = on_listen_exit(ret);
    }
    0
}
