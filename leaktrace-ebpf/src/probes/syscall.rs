//! Arguments of `syscalls:sys_enter_*` / `sys_exit_*` records, at offsets read from tracefs.
use aya_ebpf::programs::TracePointContext;

use crate::{
    config,
    emit::{self, current},
    error::ProbeError,
    kernel::{self, ReceiveSide},
    maps::{PendingCall, PENDING},
};

#[inline(always)]
pub fn arg0(ctx: &TracePointContext) -> Result<i64, ProbeError> {
    unsafe { ctx.read_at::<i64>(config!(tracepoints.syscall_arg0) as usize) }
        .map_err(|_| ProbeError::Read)
}

#[inline(always)]
pub fn arg1(ctx: &TracePointContext) -> Result<i64, ProbeError> {
    unsafe { ctx.read_at::<i64>(config!(tracepoints.syscall_arg1) as usize) }
        .map_err(|_| ProbeError::Read)
}

#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> Result<i64, ProbeError> {
    unsafe { ctx.read_at::<i64>(config!(tracepoints.syscall_ret) as usize) }
        .map_err(|_| ProbeError::Read)
}

/// Keeps a syscall's arguments from its entry to its exit, by thread: a thread is in one
/// syscall at a time.
#[inline(always)]
pub fn remember(call: PendingCall) {
    let _ = PENDING.insert(current().tid, call, 0);
}

/// At a socket syscall's entry: `fd`, `how` and the TCP socket `fd` names, to `remember`.
#[inline(always)]
pub fn socket_call(fd: i32, how: i32) -> Result<PendingCall, ProbeError> {
    let socket = kernel::tcp_sock_of_fd(fd)?;
    Ok(PendingCall {
        ts_ns: emit::now(),
        sock: socket.sk,
        fd,
        how,
        ino: socket.ino,
        receive: ReceiveSide::UNREAD,
    })
}

/// At a syscall's exit: what its entry remembered, forgotten now.
#[inline(always)]
pub fn recall() -> Result<PendingCall, ProbeError> {
    let tid = current().tid;
    let call = unsafe { PENDING.get(tid) }
        .copied()
        .ok_or(ProbeError::NoPendingCall)?;
    let _ = PENDING.remove(tid);
    Ok(call)
}
