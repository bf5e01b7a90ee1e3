//! Records and load-time configuration shared by the eBPF programs and userspace.
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel side writes [`Record`]s into the
//! ring buffer byte for byte and userspace decodes the same layout; userspace fills [`Config`] from
//! the running kernel's BTF and tracefs and hands it to the programs as a global.
//!
//! # What reaches userspace
//!
//! The kernel side follows each socket of a traced process from the TCP state changes it makes,
//! most of them in the owner's own context (connect, listen, shutdown and close each change the
//! state inside the call), so it needs no syscall hook. To keep a connection that ends cleanly
//! cheap, it leaves out what userspace can rebuild or never needs:
//! - the opening transition (`CLOSE -> SYN_SENT`, `LISTEN -> SYN_RECV`): its time is the
//!   socket's `sock_born_ns`, carried by every later record, and its states follow from the next
//!   record's `old_state`;
//! - what happens after the owner's close (the `RELEASED` record): no leak class outlives it, and
//!   the socket is forgotten on both sides. Whether the connection ends in TIME_WAIT on this side,
//!   for the counts per remote endpoint, is known then: when this side's FIN went first.
#![no_std]

mod config;
mod failure;
mod linux;
mod record;

pub use config::*;
pub use failure::*;
pub use linux::*;
pub use record::*;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] integer data; any bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Record {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PresentRequest {}
}
