//! The kernel's monotonic clock, which every record and socket birth is timed by.
use aya_ebpf::helpers::bpf_ktime_get_ns;

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
