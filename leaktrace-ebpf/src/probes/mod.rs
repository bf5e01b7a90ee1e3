//! One module per kernel area. Each module's entry points (one per hook family) only extract
//! their arguments and call that area's handler, so every family produces the same records.
mod accept;
mod close;
mod connect;
mod destroy;
mod listen;
mod process;
mod receive;
mod seed;
mod shutdown;
mod state;
mod syscall;

/// Key of `LISTENERS`.
#[inline(always)]
fn listener_key(family: u16, port: u16) -> u32 {
    (family as u32) << 16 | port as u32
}
