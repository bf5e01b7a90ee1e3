//! Kernel side of leaktrace: hooks on TCP socket lifecycles that write one `Record` per event
//! worth telling into a ring buffer. Each hook lives in `probes/`, one module per kernel area;
//! every family of hooks funnels into the same handlers so the records do not depend on which
//! hooks the running kernel allows.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd: the eBPF target declares no atomic read-modify-write, yet the kernel \
              has an atomic add instruction, and one followed-socket count is shared by all CPUs"
)]

mod clock;
mod emit;
mod failure;
mod kernel;
mod maps;
mod probes;
mod sock_meta;

use leaktrace_common::Config;

/// Filled in by userspace at load time from the running kernel's BTF and tracefs.
#[no_mangle]
static CONFIG: Config = Config::PLACEHOLDER;

/// Reads one field of `CONFIG` through a volatile load: the compiler must not fold the
/// placeholder values into the programs; the verifier knows the real ones (frozen `.rodata`).
macro_rules! config {
    ($($field:ident).+) => {{
        #[allow(unused_unsafe, reason = "call sites may already be inside an unsafe block")]
        // SAFETY: CONFIG is a plain static; a volatile read of one field has no other effect.
        let value = unsafe { core::ptr::read_volatile(&$crate::CONFIG.$($field).+) };
        value
    }};
}
pub(crate) use config;

/// Whether a program should stop before doing anything: userspace has not filled `CONFIG` in, or
/// asked for programs that cost only their attach point (the bench's floor).
#[inline(always)]
fn idle() -> bool {
    config!(ready) == 0 || config!(floor) != 0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
