//! Processes: with `--follow-children` (and in `leaktrace run`), a process started by a traced
//! process is traced from its first instruction, because the kernel adds it to `TARGETS` before
//! it runs; and a traced process's exit is recorded so its findings resolve and leaktrace knows
//! when nothing it traces is left. Rare events: classic tracepoints are cheap enough here.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use leaktrace_common::{ProbeFailure, RecordKind, OFFSET_UNKNOWN};

use crate::{
    config, emit::process_record, failure::count_failure, idle, kernel::tracepoint_field,
    maps::TARGETS, sock_meta::current,
};

// include/uapi/linux/sched.h: a new thread, not a new process.
const CLONE_THREAD: u64 = 0x0001_0000;

#[inline(always)]
fn on_newtask(ctx: &TracePointContext) -> Option<()> {
    if config!(follow_children) == 0 {
        return None;
    }
    // Runs in the parent, before the child is first scheduled.
    let (parent, _) = current();
    // SAFETY: the value is not used, only its presence.
    unsafe { TARGETS.get(parent) }?;
    let clone_flags: u64 = tracepoint_field(ctx, config!(tracepoints.newtask_clone_flags))?;
    if clone_flags & CLONE_THREAD != 0 {
        return None;
    }
    let child = tracepoint_field::<u64>(ctx, config!(tracepoints.newtask_pid))? as u32;
    if TARGETS.insert(child, 1, 0).is_err() {
        // Untraced, its exit would never be recorded: userspace must not wait for it.
        count_failure(ProbeFailure::TargetMapFull);
        return None;
    }
    process_record(RecordKind::Fork, child);
    Some(())
}

#[tracepoint]
#[inline(always)]
pub(crate) fn newtask(ctx: TracePointContext) -> u32 {
    if !idle() {
        let _ = on_newtask(&ctx);
    }
    0
}

#[inline(always)]
fn on_process_exit(ctx: &TracePointContext) -> Option<()> {
    let (tgid, tid) = current();
    let offset = config!(tracepoints.process_exit_group_dead);
    let process_ends = if offset == OFFSET_UNKNOWN {
        // Older kernels do not say whether this is the last thread: the leader's exit stands in.
        tid == tgid
    } else {
        tracepoint_field::<u8>(ctx, offset)? != 0
    };
    if !process_ends {
        return None;
    }
    if config!(filter_targets) != 0 {
        // SAFETY: the value is not used, only its presence.
        unsafe { TARGETS.get(tgid) }?;
        let _ = TARGETS.remove(tgid);
    }
    process_record(RecordKind::Exit, 0);
    Some(())
}

#[tracepoint]
#[inline(always)]
pub(crate) fn process_exit(ctx: TracePointContext) -> u32 {
    if !idle() {
        let _ = on_process_exit(&ctx);
    }
    0
}
