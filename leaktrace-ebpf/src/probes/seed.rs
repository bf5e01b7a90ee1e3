//! Sockets that predate the trace. For each socket fd of a traced process, leaktrace duplicates
//! the fd into itself (pidfd_getfd), writes whose it is into `SEED_REQUEST`, and calls
//! `getsockname` on the duplicate: this program, in leaktrace's own context, resolves the fd to
//! the socket, binds it to its real owner (so the --pid filter passes its softirq transitions
//! from now on), and records its present state and receive side.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use leaktrace_common::{tcp_state, RecordKind, FLAG_SEND_SHUTDOWN, OWNER_UNKNOWN};

use super::{listener_key, syscall};
use crate::{
    config,
    emit::{self, current, emit, ensure_configured, owner_traced, sock_meta, Event},
    error::{ProbeError, ProbeResult},
    kernel,
    maps::{LISTENERS, SEED_DUPS, SEED_REQUEST},
};

fn on_seed(ctx: &TracePointContext) -> ProbeResult {
    ensure_configured()?;
    if current().tgid != config!(seeder_tgid) {
        return Ok(());
    }
    let fd = syscall::arg0(ctx)? as i32;
    let socket = kernel::tcp_sock_of_fd(fd)?;
    let sk = socket.sk;
    let request = SEED_REQUEST
        .get(0)
        .copied()
        .ok_or(ProbeError::NoPendingCall)?;
    let _ = SEED_DUPS.insert(fd, 1, 0);
    let now = emit::now();
    let meta = unsafe { &mut *sock_meta(sk, now, request.owner_tgid)? };
    if meta.owner_tgid == OWNER_UNKNOWN {
        meta.owner_tgid = request.owner_tgid;
        meta.owner_fd = request.owner_fd;
    }
    let state = kernel::state(sk)?;
    if state == tcp_state::LISTEN {
        let key = listener_key(kernel::family(sk)?, kernel::local_port(sk)?);
        let _ = LISTENERS.insert(key, meta.owner_tgid, 0);
    }
    let send_shutdown = kernel::send_shutdown(sk)?;
    if send_shutdown || state == tcp_state::CLOSE_WAIT {
        meta.watched = 1;
    }
    if !owner_traced(meta.owner_tgid) {
        return Err(ProbeError::Filtered);
    }
    let mut event = Event::new(RecordKind::Present, now);
    event.old_state = state;
    event.new_state = state;
    event.fd = request.owner_fd;
    event.ino = socket.ino;
    if send_shutdown {
        event.flags = FLAG_SEND_SHUTDOWN;
    }
    emit(sk, meta, &event)
}

#[tracepoint]
pub fn seed(ctx: TracePointContext) -> u32 {
    let _ = on_seed(&ctx);
    0
}
