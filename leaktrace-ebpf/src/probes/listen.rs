//! listen(2): records which process listens on which port, so a connection's transitions
//! before accept() (softirq) can already be attributed. Resolved at the syscall's exit because
//! listen() may pick the port itself.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use super::{listener_key, syscall};
use crate::{
    emit::{self, current, ensure_configured, sock_meta},
    error::{ProbeError, ProbeResult},
    kernel,
    maps::{PendingCall, LISTENERS, PENDING},
};

#[tracepoint]
pub fn listen_enter(ctx: TracePointContext) -> u32 {
    if ensure_configured().is_ok() {
        if let Ok(fd) = syscall::arg0(&ctx) {
            let call = PendingCall {
                ts_ns: 0,
                sock: 0,
                fd: fd as i32,
                how: 0,
                ino: 0,
            };
            let _ = PENDING.insert(current().tid, call, 0);
        }
    }
    0
}

fn on_listen_exit(ret: i64) -> ProbeResult {
    let task = current();
    let call = unsafe { PENDING.get(task.tid) }
        .copied()
        .ok_or(ProbeError::NoPendingCall)?;
    let _ = PENDING.remove(task.tid);
    if ret != 0 {
        return Ok(());
    }
    let sk = kernel::tcp_sock_of_fd(call.fd)?.sk;
    let meta = unsafe { &mut *sock_meta(sk, emit::now())? };
    meta.owner_tgid = task.tgid;
    meta.owner_fd = call.fd;
    let key = listener_key(kernel::family(sk)?, kernel::local_port(sk)?);
    let _ = LISTENERS.insert(key, task.tgid, 0);
    Ok(())
}

#[tracepoint]
pub fn listen_exit(ctx: TracePointContext) -> u32 {
    if let Ok(ret) = syscall::ret(&ctx) {
        let _ = on_listen_exit(ret);
    }
    0
}
