//! Sockets that predate the trace. For each socket fd of a traced process, leaktrace duplicates
//! the fd into itself (pidfd_getfd), writes whose it is into `PRESENT_REQUEST`, and calls
//! `getsockname` on the duplicate: this program, in leaktrace's own context, resolves the fd to
//! the socket, binds it to its real owner (so its later transitions are followed), and records
//! its present state and receive side. Attached only while leaktrace records the sockets
//! present at start: a syscall tracepoint left attached would slow every syscall on the host.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use leaktrace_common::{tcp_state, RecordKind, FLAG_SEND_SHUTDOWN};

use super::listener;
use crate::{
    clock::now,
    config,
    emit::{socket_record, Event},
    idle,
    kernel::{current_file, tracepoint_field, File, Probe, Reader, Sock},
    maps::PRESENT_REQUEST,
    sock_meta::{claimed, current, followed, watch_arrivals, READS_WATCHED},
};

/// The TCP socket behind `fd` in the current task's fd table, and its file: a socket file whose
/// private data is the `struct socket`.
#[inline(always)]
fn tcp_socket_of_fd(fd: i32) -> Option<(Sock, File)> {
    let file = current_file(fd)?;
    if !file.is_socket::<Probe>() {
        return None;
    }
    let sk = file.socket::<Probe>()?.sock::<Probe>()?;
    sk.is_tcp::<Probe>().then_some((sk, file))
}

/// Records `sk`, held by the fd of `PRESENT_REQUEST`, as present since before the trace.
#[inline(always)]
fn record_present<R: Reader>(sk: Sock, file: Option<File>) -> Option<()> {
    let request = *PRESENT_REQUEST.get(0)?;
    if request.owner_tgid == 0 || !sk.is_tcp::<R>() {
        return None;
    }
    let now = now();
    let meta = followed(sk).or_else(|| claimed(sk, request.owner_tgid, 0))?;
    let state = sk.state::<R>();
    if state == tcp_state::LISTEN {
        if let Some(owner) = listener::<R>(sk) {
            *owner = meta.owner_tgid;
        }
    }
    let send_shutdown = sk.send_shutdown::<R>();
    if send_shutdown {
        meta.flags |= READS_WATCHED;
        watch_arrivals(meta);
    } else if state == tcp_state::CLOSE_WAIT {
        meta.flags |= READS_WATCHED;
    }
    let mut event = Event::new(RecordKind::Present, now);
    event.old_state = state;
    event.new_state = state;
    event.fd = request.owner_fd;
    event.file = file;
    if send_shutdown {
        event.flags = FLAG_SEND_SHUTDOWN;
    }
    socket_record::<R>(sk, meta, &event);
    Some(())
}

#[inline(always)]
fn on_getsockname(ctx: &TracePointContext) -> Option<()> {
    if current().0 != config!(leaktrace_tgid) {
        return None;
    }
    let fd = tracepoint_field::<i64>(ctx, config!(tracepoints.syscall_arg0))? as i32;
    let (sk, file) = tcp_socket_of_fd(fd)?;
    record_present::<Probe>(sk, Some(file))
}

#[tracepoint]
#[inline(always)]
pub(crate) fn present(ctx: TracePointContext) -> u32 {
    if !idle() {
        let _ = on_getsockname(&ctx);
    }
    0
}
