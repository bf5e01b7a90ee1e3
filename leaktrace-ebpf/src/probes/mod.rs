//! One module per kernel area. Each module's entry points (one per program type) only extract
//! their arguments and call that area's handler, generic over how kernel memory is read, so every
//! hook family produces the same records.
//!
//! Entry points are `#[inline(always)]` too: the program macros wrap each in the program's own
//! function, and LLVM left to itself keeps a body past its inlining threshold (state_tp's is at
//! it) out of line, a BPF-to-BPF call with a stack frame of its own.
mod accept;
mod destroy;
mod present;
mod process;
mod receive;
mod state;

use leaktrace_common::AF_INET6;

use crate::{
    kernel::{Reader, Sock},
    maps::LISTENERS,
};

/// The slot of `LISTENERS` for the family and port `sk` is bound to: who listens there.
#[inline(always)]
fn listener<R: Reader>(sk: Sock) -> Option<&'static mut u32> {
    let index = u32::from(sk.family::<R>() == AF_INET6) << 16 | u32::from(sk.local_port::<R>());
    // SAFETY: an array slot lives as long as the map; a u32 store or load is never torn.
    LISTENERS
        .get_ptr_mut(index)
        .map(|slot| unsafe { &mut *slot })
}
