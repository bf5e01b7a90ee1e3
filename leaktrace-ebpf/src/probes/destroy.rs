//! The kernel destroying a socket: the end of its story. Its address may be reused after this,
//! so the kernel side forgets it here.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use leaktrace_common::{RecordKind, FLAG_RELEASED};

use crate::{
    clock::now,
    config,
    emit::{socket_record, Event},
    idle,
    kernel::{tracepoint_field, Btf, Probe, Reader, Sock},
    sock_meta::{followed, forget},
};

#[inline(always)]
fn on_destroy<R: Reader>(sk: Sock) {
    let Some(meta) = followed(sk) else {
        return;
    };
    let mut meta = *meta;
    forget(sk, &meta);
    // A followed socket was never released (a release forgets it): it is destroyed by its
    // owner's close, which changes no state when its connection was already over (CLOSE).
    let mut event = Event::new(RecordKind::Destroy, now());
    event.flags |= FLAG_RELEASED;
    socket_record::<R>(sk, &mut meta, &event);
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
#[inline(always)]
pub(crate) fn destroy_tp_btf(ctx: BtfTracePointContext) -> i32 {
    if idle() {
        return 0;
    }
    on_destroy::<Btf>(Sock(ctx.arg(0)));
    0
}

#[tracepoint]
#[inline(always)]
pub(crate) fn destroy_tp(ctx: TracePointContext) -> u32 {
    if idle() {
        return 0;
    }
    if let Some(sk) = tracepoint_field(&ctx, config!(tracepoints.destroy_skaddr)) {
        on_destroy::<Probe>(Sock(sk));
    }
    0
}
