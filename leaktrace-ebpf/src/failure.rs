//! Probe failures are counted, never silent: per CPU, by reason.
use leaktrace_common::ProbeFailure;

use crate::maps::PROBE_FAILURES;

#[inline(always)]
pub(crate) fn count_failure(failure: ProbeFailure) {
    if let Some(count) = PROBE_FAILURES.get_ptr_mut(failure as u32) {
        // SAFETY: a per-CPU slot; programs do not preempt each other on one CPU.
        unsafe { *count += 1 };
    }
}
