//! The kernel destroying a socket: the end of its story. Its address may be reused after this,
//! so the kernel side forgets it here.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use leaktrace_common::{RecordKind, FLAG_RELEASED, FLAG_TIME_WAIT};

use crate::{
    config,
    emit::{now, socket_record, Event},
    idle,
    kernel::{Btf, Probe, Reader, Sock},
    sock_meta::{followed, forget, RELEASED, TIME_WAIT},
};

#[inline(always)]
fn on_destroy<R: Reader>(sk: Sock) {
    let Some(meta) = followed(sk) else {
        return;
    };
    let mut meta = *meta;
    forget(sk);
    let mut event = Event::new(RecordKind::Destroy, now());
    if meta.flags & TIME_WAIT != 0 {
        event.flags |= FLAG_TIME_WAIT;
    }
    // A socket that was never released is destroyed by its owner's close: one whose connection
    // was already over (CLOSE) changes no state when closed.
    if meta.flags & RELEASED == 0 {
        event.flags |= FLAG_RELEASED;
    }
    socket_record::<R>(sk, &mut meta, &event);
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn destroy_tp_btf(ctx: BtfTracePointContext) -> i32 {
    if idle() {
        return 0;
    }
    on_destroy::<Btf>(Sock(ctx.arg(0)));
    0
}

#[tracepoint]
pub fn destroy_tp(ctx: TracePointContext) -> u32 {
    if idle() {
        return 0;
    }
    // SAFETY: offset from this kernel's tracefs format file for the event.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(config!(tracepoints.destroy_skaddr) as usize) } {
        on_destroy::<Probe>(Sock(sk));
    }
    0
}
