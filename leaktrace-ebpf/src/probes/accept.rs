//! Who accepted a connection. Until then it is claimed by the process listening on its port;
//! where several processes accept on one listener (a prefork server's workers), the one that
//! takes it is learned from `inet_csk_accept`'s return (fexit, kretprobe) or, where neither can
//! be hooked, from the first read of the socket (see `receive`).
use aya_ebpf::{
    macros::{fexit, kretprobe},
    programs::{FExitContext, RetProbeContext},
};
use leaktrace_common::{RecordKind, FLAG_UNTRACED};

use crate::{
    clock::now,
    emit::{claim_and_record, socket_record, Event},
    idle,
    kernel::{Btf, Probe, Reader, Sock},
    maps::SockMeta,
    sock_meta::{current, followed, forget, traced, FROM_LISTENER},
};

/// `tgid` holds `sk`, which its listener's process claimed: the socket moves to `tgid`, and out
/// of the trace if `tgid` is not traced. Whether it is still followed.
#[inline(always)]
pub(super) fn taken_over<R: Reader>(sk: Sock, meta: &mut SockMeta, tgid: u32, now: u64) -> bool {
    meta.flags &= !FROM_LISTENER;
    if meta.owner_tgid == tgid {
        return true;
    }
    meta.owner_tgid = tgid;
    let followed = traced(tgid);
    let mut event = Event::new(RecordKind::Accept, now);
    if !followed {
        event.flags |= FLAG_UNTRACED;
    }
    event.file = sk.socket::<R>().and_then(|socket| socket.file::<R>());
    socket_record::<R>(sk, meta, &event);
    if !followed {
        forget(sk, meta);
    }
    followed
}

#[inline(always)]
fn on_accepted<R: Reader>(sk: Sock) {
    if sk.addr() == 0 {
        return;
    }
    let (tgid, _) = current();
    match followed(sk) {
        Some(meta) => {
            let now = now();
            // Only here is the time exact: a first read or a shutdown, where no accept hook
            // exists, comes later than the proxy's connect upstream for the client it took.
            meta.taken_ns = now;
            let _ = taken_over::<R>(sk, meta, tgid, now);
        }
        // Its listener is nobody's we trace, but a traced process took it.
        None => claim_and_record::<R>(sk, tgid, RecordKind::Accept, 0, 0),
    }
}

// The return value follows the parameters in the context, typed as the kernel declares it: a BTF
// pointer to read fields from (`bpf_get_func_ret` would hand back a bare number). Context reads
// must be at a constant offset, so there is one program per signature and the loader picks.

/// `inet_csk_accept(struct sock *sk, struct proto_accept_arg *arg)`, 6.10+.
#[fexit(function = "inet_csk_accept")]
#[inline(always)]
pub(crate) fn accept_fexit_2(ctx: FExitContext) -> i32 {
    if !idle() {
        on_accepted::<Btf>(Sock(ctx.arg(2)));
    }
    0
}

/// `inet_csk_accept(struct sock *sk, int flags, int *err, bool kern)`, before 6.10.
#[fexit(function = "inet_csk_accept")]
#[inline(always)]
pub(crate) fn accept_fexit_4(ctx: FExitContext) -> i32 {
    if !idle() {
        on_accepted::<Btf>(Sock(ctx.arg(4)));
    }
    0
}

#[kretprobe]
#[inline(always)]
pub(crate) fn accept_retprobe(ctx: RetProbeContext) -> u32 {
    if idle() {
        return 0;
    }
    on_accepted::<Probe>(Sock(ctx.ret::<u64>()));
    0
}
