//! leaktrace: finds the TCP sockets a process leaks. The library behind the `leaktrace` binary,
//! whose `main` only parses the command line and runs the mode it names.
//!
//! Data path, one module per stage: `hooks` (load and attach the eBPF programs) -> ring buffer
//! records -> `decoder` -> `timeline` (per-socket store) -> `detect` (one detector per leak
//! class) -> `output` (text, JSON Lines, metrics, trace file). `session` drives it; `demo` feeds it leaky servers;
//! `run` traces a command it starts.
mod cgroup;
pub mod cli;
mod decoder;
pub mod demo;
mod detect;
mod enrich;
pub mod error;
mod finding;
mod format;
mod hooks;
mod host;
mod output;
mod placement;
pub mod run;
pub mod session;
pub mod settings;
pub mod stderr;
pub mod stop;
mod summary;
mod tick;
mod timeline;
pub mod trace;
mod tree;
