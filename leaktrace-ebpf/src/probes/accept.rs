//! accept: binds the accepted socket to its owner (tgid, fd). The fd exists only once the
//! syscall returns, so the record is written at `sys_exit_accept{,4}`; where the kernel lets us
//! hook `inet_csk_accept`, it hands over the socket directly instead of an fd-table walk.
use aya_ebpf::{
    macros::{fexit, kretprobe, tracepoint},
    programs::{FExitContext, RetProbeContext, TracePointContext},
};
use leaktrace_common::RecordKind;

use super::syscall;
use crate::{
    emit::{self, current, emit, ensure_configured, owner_traced, sock_meta, Event},
    error::{ProbeError, ProbeResult},
    kernel::{self, ReceiveSide},
    maps::PendingCall,
};

fn stash_accepted(sk: u64) {
    if sk == 0 {
        return;
    }
    syscall::remember(PendingCall {
        ts_ns: emit::now(),
        sock: sk,
        fd: -1,
        how: 0,
        ino: 0,
        receive: ReceiveSide::UNREAD,
    });
}

#[fexit(function = "inet_csk_accept")]
pub fn accept_fexit(ctx: FExitContext) -> i32 {
    if let Ok(sk) = ctx.ret::<u64>() {
        stash_accepted(sk);
    }
    0
}

#[kretprobe]
pub fn accept_kretprobe(ctx: RetProbeContext) -> u32 {
    stash_accepted(ctx.ret::<u64>());
    0
}

fn on_accept_exit(ret: i64) -> ProbeResult {
    ensure_configured()?;
    let task = current();
    // Present only where `inet_csk_accept` is hooked; otherwise the fd table tells.
    let stashed = syscall::recall().ok().map(|call| call.sock);
    if ret < 0 {
        return Ok(());
    }
    let fd = ret as i32;
    // The fd table walk also yields the inode, which finds the socket's holders later.
    let (sk, ino) = match (stashed, kernel::tcp_sock_of_fd(fd)) {
        (Some(sk), socket) if sk != 0 => (sk, socket.map_or(0, |s| s.ino)),
        (_, socket) => {
            let socket = socket?;
            (socket.sk, socket.ino)
        }
    };
    let now = emit::now();
    let meta = unsafe { &mut *sock_meta(sk, now, task.tgid)? };
    meta.owner_tgid = task.tgid;
    meta.owner_fd = fd;
    if !owner_traced(meta.owner_tgid) {
        return Err(ProbeError::Filtered);
    }
    let mut event = Event::new(RecordKind::Accept, now);
    event.fd = fd;
    event.ret = ret;
    event.ino = ino;
    emit(sk, meta, &event)
}

#[tracepoint]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    if let Ok(ret) = syscall::ret(&ctx) {
        let _ = on_accept_exit(ret);
    }
    0
}
