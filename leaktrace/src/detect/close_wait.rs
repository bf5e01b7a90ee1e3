//! Incident 1: the peer closed, the owner never did, and the socket sits in CLOSE_WAIT.

use leaktrace_common::tcp_state;

use super::{Since, Verdict};
use crate::finding::Resolution;
use crate::timeline::Timeline;

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
