//! The owner releasing the socket: `tcp_close` (fentry, kprobe) sees every release, including
//! the implicit ones at process exit; where it cannot be hooked, `close(2)` on a TCP fd.
use aya_ebpf::{
    macros::{fentry, kprobe, tracepoint},
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use leaktrace_common::{RecordKind, FLAG_STILL_HELD, NO_FD, OWNER_UNKNOWN};

use super::syscall;
use crate::{
    config,
    emit::{self, current, emit, ensure_configured, owner_traced, sock_meta, Event},
    error::{ProbeError, ProbeResult},
    kernel,
    maps::SEED_DUPS,
};

/// `still_held`: other references keep the socket's file open after this close.
fn on_close(sk: u64, fd: i32, still_held: bool, ino: u64) -> ProbeResult {
    ensure_configured()?;
    let now = emit::now();
    // tcp_close names no fd: a socket first seen there was nobody's that leaktrace knew of.
    let claimant = if fd == NO_FD {
        OWNER_UNKNOWN
    } else {
        current().tgid
    };
    let meta = unsafe { &mut *sock_meta(sk, now, claimant)? };
    if meta.owner_tgid == OWNER_UNKNOWN && fd != NO_FD {
        meta.owner_tgid = current().tgid;
        meta.owner_fd = fd;
    }
    if !owner_traced(meta.owner_tgid) {
        return Err(ProbeError::Filtered);
    }
    let mut event = Event::new(RecordKind::Close, now);
    event.fd = fd;
    event.ino = ino;
    if still_held {
        event.flags = FLAG_STILL_HELD;
    }
    emit(sk, meta, &event)
}

#[fentry(function = "tcp_close")]
pub fn close_fentry(ctx: FEntryContext) -> i32 {
    // tcp_close runs only once the last reference is gone.
    let _ = on_close(ctx.arg(0), NO_FD, false, 0);
    0
}

#[kprobe]
pub fn close_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        let _ = on_close(sk, NO_FD, false, 0);
    }
    0
}

fn on_close_enter(ctx: &TracePointContext) -> ProbeResult {
    ensure_configured()?;
    let fd = syscall::arg0(ctx)? as i32;
    if current().tgid == config!(seeder_tgid) && SEED_DUPS.remove(fd).is_ok() {
        return Ok(());
    }
    let socket = kernel::tcp_sock_of_fd(fd)?;
    on_close(socket.sk, fd, socket.shared()?, socket.ino)
}

#[tracepoint]
pub fn close_enter(ctx: TracePointContext) -> u32 {
    let _ = on_close_enter(&ctx);
    0
}
