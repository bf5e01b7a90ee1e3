//! TCP state transitions: `tcp_set_state` (fentry, kprobe) or `inet_sock_set_state` (tp_btf,
//! classic tracepoint).
use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use leaktrace_common::{tcp_state, RecordKind, OWNER_UNKNOWN};

use super::listener_key;
use crate::{
    config,
    emit::{self, current, emit, ensure_configured, owner_traced, sock_meta, Event},
    error::{ProbeError, ProbeResult},
    kernel,
    maps::LISTENERS,
};

fn on_state(sk: u64, old: u8, new: u8) -> ProbeResult {
    ensure_configured()?;
    if !kernel::is_tcp(sk)? {
        return Err(ProbeError::NotTcpSocket);
    }
    if old == tcp_state::LISTEN && new == tcp_state::CLOSE {
        let _ = LISTENERS.remove(listener_key(kernel::family(sk)?, kernel::local_port(sk)?));
    }
    let now = emit::now();
    let claimant = claimant(sk, old, new)?;
    let meta = unsafe { &mut *sock_meta(sk, now, claimant)? };
    if meta.owner_tgid == OWNER_UNKNOWN {
        meta.owner_tgid = claimant;
    }
    if new == tcp_state::CLOSE_WAIT {
        // Whether the owner then reads the end-of-stream is part of a CLOSE_WAIT finding.
        meta.watched = 1;
    }
    if !owner_traced(meta.owner_tgid) {
        return Err(ProbeError::Filtered);
    }
    let mut event = Event::new(RecordKind::State, now);
    event.old_state = old;
    event.new_state = new;
    emit(sk, meta, &event)
}

/// Who will own a socket whose transition is the first thing seen of it.
fn claimant(sk: u64, old: u8, new: u8) -> Result<u32, ProbeError> {
    if new == tcp_state::SYN_SENT {
        // connect() moves the socket to SYN_SENT in the caller's own context.
        return Ok(current().tgid);
    }
    if old == tcp_state::LISTEN || old == tcp_state::SYN_RECV {
        // A passive connection before accept(): its listener's process will own it.
        let key = listener_key(kernel::family(sk)?, kernel::local_port(sk)?);
        if let Some(tgid) = unsafe { LISTENERS.get(key) } {
            return Ok(*tgid);
        }
    }
    Ok(OWNER_UNKNOWN)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn state_tp_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let _ = on_state(sk, old as u8, new as u8);
    0
}

#[tracepoint]
pub fn state_tp(ctx: TracePointContext) -> u32 {
    let read = || -> Result<(u64, i32, i32), i32> {
        unsafe {
            Ok((
                ctx.read_at(config!(tracepoints.set_state_skaddr) as usize)?,
                ctx.read_at(config!(tracepoints.set_state_oldstate) as usize)?,
                ctx.read_at(config!(tracepoints.set_state_newstate) as usize)?,
            ))
        }
    };
    if let Ok((sk, old, new)) = read() {
        let _ = on_state(sk, old as u8, new as u8);
    }
    0
}

/// `tcp_set_state(sk, state)` runs before the store, so the old state is still in the socket.
fn on_tcp_set_state(sk: u64, new: i32) -> ProbeResult {
    let old = kernel::state(sk)?;
    on_state(sk, old, new as u8)
}

#[fentry(function = "tcp_set_state")]
pub fn state_fentry(ctx: FEntryContext) -> i32 {
    let _ = on_tcp_set_state(ctx.arg(0), ctx.arg(1));
    0
}

#[kprobe]
pub fn state_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(new)) = (ctx.arg::<u64>(0), ctx.arg::<i32>(1)) {
        let _ = on_tcp_set_state(sk, new);
    }
    0
}
