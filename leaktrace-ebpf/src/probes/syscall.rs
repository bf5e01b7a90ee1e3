//! Arguments of `syscalls:sys_enter_*` / `sys_exit_*` records, at offsets read from tracefs.
use aya_ebpf::programs::TracePointContext;

use crate::{config, error::ProbeError};

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
