//! Harness for leaktrace's integration tests.
//!
//! The tests drive the real `leaktrace` binary and the `leaktrace-fixture` socket programs as
//! separate processes, the way a user would. Every process started here is killed when its
//! handle drops, so a failing test leaves no server or tracer (and so no eBPF program) behind.
//!
//! `cargo xtask vm-test` runs these binaries on other kernels and steers them with
//! `LEAKTRACE_BIN`, `LEAKTRACE_HOOKS` (`--hooks` for every leaktrace started) and
//! `LEAKTRACE_EXPECT_HOOKS` (the hook family every traced run must have attached).
//!
//! One module per job; the test files import everything from here.

mod bpf_objects;
mod child;
mod fixture;
pub mod full_disk;
mod ground_truth;
pub mod kernel_limits;
mod leaktrace;
pub mod netns;
pub mod nginx;
mod privilege;
mod report;
mod reuseport;

pub use bpf_objects::{BpfKind, BpfObjects};
pub use fixture::{
    close_wait_client, close_wait_clients, close_wait_server, run_client, Accepted, ClientRun,
    Family, Fixture, LATE_BYTES,
};
pub use ground_truth::{
    comm, kernel_connections_to, kernel_socket, kernel_sockets, TCP_CLOSE, TCP_CLOSE_WAIT,
    TCP_ESTABLISHED,
};
pub use leaktrace::{
    hook_family, leaktrace_bin, run_leaktrace, run_leaktrace_within, signal_run, signal_startup,
    Finished, Leaktrace, FAMILY_EVENTS, FINDING_TIMEOUT, LEAK_AFTER_MS, RUN_LIMIT, SETTLE,
};
pub use privilege::{is_root, skip};
pub use report::Report;
pub use reuseport::{reuseport_listener, steer_to_first_listener};
