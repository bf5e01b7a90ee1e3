//! One module per kernel area. Each module's entry points (one per program type) only extract
//! their arguments and call that area's handler, generic over how kernel memory is read, so every
//! hook family produces the same records.
mod accept;
mod destroy;
mod process;
mod receive;
mod seed;
mod state;

/// Key of `LISTENERS`.
#[inline(always)]
fn listener_key(family: u16, port: u16) -> u32 {
    (family as u32) << 16 | port as u32
}
