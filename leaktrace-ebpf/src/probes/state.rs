//! TCP state transitions (`inet_sock_set_state`): most of a socket's story, and the owner's own
//! calls too. connect() moves the socket to SYN_SENT, listen() to LISTEN, shutdown() and close()
//! to FIN_WAIT1 or LAST_ACK, each inside the caller's call with the socket locked, so no syscall
//! hook is needed for them (a syscall tracepoint would put every syscall of every process on
//! the kernel's slow path). What tells a close from a shutdown is the socket's file: while the
//! kernel closes a socket, the last reference to its file is already gone.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use leaktrace_common::{tcp_state, RecordKind, FLAG_RELEASED, FLAG_SHUTDOWN, FLAG_TIME_WAIT};

use super::{accept::taken_over, listener};
use crate::{
    clock::now,
    config,
    emit::{claim_and_record, socket_record, Event},
    idle,
    kernel::{tracepoint_field, Btf, FileRefs, Probe, Reader, Sock},
    maps::SockMeta,
    sock_meta::{
        claim, current, followed, forget, traced, watch_arrivals, ESTABLISHED_AT_BIRTH,
        FROM_LISTENER, READS_WATCHED,
    },
};

#[inline(always)]
fn on_state<R: Reader>(sk: Sock, old: u8, new: u8) {
    if !sk.is_tcp::<R>() {
        return;
    }
    if old == tcp_state::LISTEN && new == tcp_state::CLOSE {
        // Only its own listener's close frees the port's slot: another listener on the port
        // may hold it (see on_first_sight). The closing process runs this.
        if let Some(owner) = listener::<R>(sk).filter(|owner| **owner == current().0) {
            *owner = 0;
        }
    }
    match followed(sk) {
        Some(meta) => on_followed::<R>(sk, meta, old, new),
        None => on_first_sight::<R>(sk, old, new),
    }
}

/// A socket not followed yet is claimed where its owner is known: the caller of connect() or
/// listen(), or for a connection not accepted yet, the process listening on its port. The opening
/// itself is not recorded: the next record carries its time (`sock_born_ns`).
#[inline(always)]
fn on_first_sight<R: Reader>(sk: Sock, old: u8, new: u8) {
    match (old, new) {
        (_, tcp_state::LISTEN) => {
            let (tgid, _) = current();
            // Every listener, traced or not: a process traced later (--follow-children) may
            // accept on it. But a second listener on the port number (an SO_REUSEPORT sibling,
            // anyone's on another local address) must not take a traced one's slot: the traced
            // server's connections, until accepted, would be nobody's.
            if let Some(owner) = listener::<R>(sk) {
                if *owner == 0 || traced(tgid) || !traced(*owner) {
                    *owner = tgid;
                }
            }
            claim_and_record::<R>(sk, tgid, RecordKind::State, old, new);
        }
        (_, tcp_state::SYN_SENT) => {
            let _ = claim(sk, current().0, 0);
        }
        (tcp_state::LISTEN, tcp_state::SYN_RECV) => {
            if let Some(&mut owner) = listener::<R>(sk) {
                let _ = claim(sk, owner, FROM_LISTENER);
            }
        }
        _ => {}
    }
}

#[inline(always)]
fn on_followed<R: Reader>(sk: Sock, meta: &mut SockMeta, old: u8, new: u8) {
    let now = now();
    // A connection from a listener, not accepted yet, ends its handshake in the call that made
    // its socket: one record fewer per connection. (With TCP Fast Open the socket is made at the
    // SYN, and the step, a round trip later, is recorded unless the round trip is that short.)
    if old == tcp_state::SYN_RECV
        && new == tcp_state::ESTABLISHED
        && meta.flags & FROM_LISTENER != 0
        && now.wrapping_sub(meta.born_ns) < HANDSHAKE_AT_BIRTH_NS
    {
        meta.flags |= ESTABLISHED_AT_BIRTH;
        return;
    }
    // Only these steps can be the owner's close or shutdown; the file is not looked at otherwise.
    let owners_step = old == new || new == tcp_state::CLOSE || stops_sending(old, new);
    let file = if owners_step {
        sk.socket::<R>().and_then(|socket| socket.file::<R>())
    } else {
        None
    };
    let released = file.is_some_and(|file| file.refs::<R>() == FileRefs::Released);
    let mut event = Event::new(RecordKind::State, now);
    event.old_state = old;
    event.new_state = new;
    event.file = file;
    if released {
        event.flags |= FLAG_RELEASED;
        // This side's FIN went first: the connection ends in TIME_WAIT here.
        if matches!(
            new,
            tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING | tcp_state::TIME_WAIT
        ) {
            event.flags |= FLAG_TIME_WAIT;
        }
    } else if file.is_some() && stops_sending(old, new) {
        // Only shutdown(2) makes these steps while an fd still holds the socket.
        if meta.flags & FROM_LISTENER != 0 && !taken_over::<R>(sk, meta, current().0, now) {
            return;
        }
        event.flags |= FLAG_SHUTDOWN;
        event.how = sk.shutdown_how::<R>();
        meta.flags |= READS_WATCHED;
        watch_arrivals(meta);
    }
    if new == tcp_state::CLOSE_WAIT {
        // Whether the owner then reads the end-of-stream is part of a CLOSE_WAIT finding.
        meta.flags |= READS_WATCHED;
    }
    socket_record::<R>(sk, meta, &event);
    if released {
        // No leak class outlives the owner's close: nothing more is followed of the socket.
        forget(sk, meta);
    }
}

/// How soon after its birth an accepted socket's SYN_RECV -> ESTABLISHED step counts as part of
/// it (see [`leaktrace_common::FLAG_ESTABLISHED_AT_BIRTH`]): the timeline puts it at the birth.
const HANDSHAKE_AT_BIRTH_NS: u64 = 1_000_000;

/// The steps `tcp_close_state` takes when the owner stops sending: a FIN goes out.
#[inline(always)]
fn stops_sending(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1)
            | (tcp_state::SYN_RECV, tcp_state::FIN_WAIT1)
            | (tcp_state::CLOSE_WAIT, tcp_state::LAST_ACK)
    )
}

#[btf_tracepoint(function = "inet_sock_set_state")]
#[inline(always)]
pub(crate) fn state_tp_btf(ctx: BtfTracePointContext) -> i32 {
    if idle() {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    on_state::<Btf>(Sock(sk), old as u8, new as u8);
    0
}

#[tracepoint]
#[inline(always)]
pub(crate) fn state_tp(ctx: TracePointContext) -> u32 {
    if idle() {
        return 0;
    }
    let read = || -> Option<(u64, i32, i32)> {
        Some((
            tracepoint_field(&ctx, config!(tracepoints.set_state_skaddr))?,
            tracepoint_field(&ctx, config!(tracepoints.set_state_oldstate))?,
            tracepoint_field(&ctx, config!(tracepoints.set_state_newstate))?,
        ))
    };
    if let Some((sk, old, new)) = read() {
        on_state::<Probe>(Sock(sk), old as u8, new as u8);
    }
    0
}
