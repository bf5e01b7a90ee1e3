//! Processes: with `--follow-children` (and in `leaktrace run`), a process started by a traced
//! process is traced from its first instruction, because the kernel adds it to `TARGETS` before
//! it runs; and a traced process's exit is recorded so its findings resolve and leaktrace knows
//! when nothing it traces is left.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use leaktrace_common::{RecordKind, OFFSET_UNKNOWN};

use crate::{
    config,
    emit::{self, current, emit_process, ensure_configured, Event},
    error::{ProbeError, ProbeResult},
    maps::TARGETS,
};

// include/uapi/linux/sched.h: a new thread, not a new process.
const CLONE_THREAD: u64 = 0x0001_0000;

fn on_newtask(ctx: &TracePointContext) -> ProbeResult {
    ensure_configured()?;
    if config!(follow_children) == 0 {
        return Ok(());
    }
    // Runs in the parent, before the child is first scheduled.
    let parent = current().tgid;
    if unsafe { TARGETS.get(parent) }.is_none() {
        return Err(ProbeError::Filtered);
    }
    let read = |offset: u32| -> Result<u64, ProbeError> {
        unsafe { ctx.read_at::<u64>(offset as usize) }.map_err(|_| ProbeError::Read)
    };
    if read(config!(tracepoints.newtask_clone_flags))? & CLONE_THREAD != 0 {
        return Ok(());
    }
    let child = read(config!(tracepoints.newtask_pid))? as u32;
    let _ = TARGETS.insert(child, 1, 0);
    emit_process(&Event::new(RecordKind::Fork, emit::now()), child)
}

#[tracepoint]
pub fn newtask(ctx: TracePointContext) -> u32 {
    let _ = on_newtask(&ctx);
    0
}

fn on_process_exit(ctx: &TracePointContext) -> ProbeResult {
    ensure_configured()?;
    let task = current();
    let offset = config!(tracepoints.process_exit_group_dead);
    let process_ends = if offset == OFFSET_UNKNOWN {
        // Older kernels do not say whether this is the last thread: the leader's exit stands in.
        task.tid == task.tgid
    } else {
        unsafe { ctx.read_at::<u8>(offset as usize) }.map_err(|_| ProbeError::Read)? != 0
    };
    if !process_ends {
        return Ok(());
    }
    if config!(filter_targets) != 0 {
        if unsafe { TARGETS.get(task.tgid) }.is_none() {
            return Err(ProbeError::Filtered);
        }
        let _ = TARGETS.remove(task.tgid);
    }
    emit_process(&Event::new(RecordKind::Exit, emit::now()), task.tgid)
}

#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    let _ = on_process_exit(&ctx);
    0
}
