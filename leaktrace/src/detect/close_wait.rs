//! Incident 1: the peer closed, the owner never did, and the socket sits in CLOSE_WAIT.

use leaktrace_common::tcp_state;

use super::{held_for, LeakClass, Since, Verdict, Wait};
use crate::finding::{Finding, LeakKind, Resolution};
use crate::timeline::Timeline;

pub(super) const CLASS: LeakClass = LeakClass {
    kind: LeakKind::CloseWait,
    name: "close_wait",
    wait: Wait::LeakAfter,
    check,
    explain,
};

pub(super) fn check(timeline: &Timeline) -> Verdict {
    match (timeline.state(), timeline.close_wait_since()) {
        (Some(tcp_state::CLOSE_WAIT), Some(ns)) => Verdict::Holds {
            since: Since {
                ns,
                before_trace: timeline.close_wait_before_trace(),
            },
        },
        // Left CLOSE_WAIT without a close: straight to CLOSE, the peer reset the connection
        // (the fd is still held: fd_after_close takes over); else shutdown(SHUT_WR) moved it on
        // to LAST_ACK.
        (Some(tcp_state::CLOSE), _) if timeline.write_shutdown().is_none() => Verdict::Clear {
            how: Resolution::Reset,
        },
        _ => Verdict::Clear {
            how: Resolution::Shutdown,
        },
    }
}

fn explain(f: &Finding) -> String {
    let pool = match f.close_waits_to_remote {
        // A client pool keeps one per connection until its next use: not a pile.
        Some(1) => "; the only one to this server: likely a pooled keep-alive connection the \
                    server timed out, dropped at its next use"
            .to_owned(),
        Some(n) => format!("; {n} held in CLOSE_WAIT to this server"),
        None => String::new(),
    };
    format!("{} {}, never closed{pool}", f.state, held_for(f))
}
