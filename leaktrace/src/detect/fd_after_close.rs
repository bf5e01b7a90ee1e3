//! Incident 4's sockets that `lsof` shows as "can't identify protocol" or "protocol: TCP": the
//! connection is over (the socket reached CLOSE, by FINs both ways or by a reset) but the owner
//! still holds the fd, and with it the socket's memory and a slot in its fd table.
//!
//! One socket, one finding: a shut-down socket whose peer's data or FIN lies unconsumed is
//! `shut_wr_unread`, the more specific diagnosis of the same held fd. So this condition includes
//! that nothing is unconsumed, and starts only once the owner consumed it: an owner that reads the
//! end-of-stream and then closes at once is never reported in between.

use leaktrace_common::tcp_state;

use super::shut_wr_unread::{self, Unconsumed};
use super::{held_for, LeakClass, Since, Verdict, Wait};
use crate::finding::{Finding, LeakKind, Resolution};
use crate::format::unread;
use crate::timeline::Timeline;

pub(super) const CLASS: LeakClass = LeakClass {
    kind: LeakKind::FdAfterClose,
    name: "fd_after_close",
    wait: Wait::LeakAfter,
    check,
    explain,
};

pub(super) fn check(timeline: &Timeline) -> Verdict {
    // A socket without a peer never had a connection to end: created and not yet connected, or a
    // listener shut down; both are in CLOSE too.
    let (Some(tcp_state::CLOSE), Some((ended, found_at_start)), Some(_)) = (
        timeline.state(),
        timeline.state_entered(),
        timeline.remote(),
    ) else {
        // Out of CLOSE again: connect(2) on the same socket after a failed attempt.
        return Verdict::Clear {
            how: Resolution::Reconnected,
        };
    };
    let ns = match shut_wr_unread::unconsumed(timeline) {
        // shut_wr_unread's finding. The how only shows if one of ours was open, which takes
        // records arriving far out of order: the peer sends nothing once the socket is in CLOSE.
        Unconsumed::Since(_) => {
            return Verdict::Clear {
                how: Resolution::Superseded,
            }
        }
        Unconsumed::Until(consumed) => ended.max(consumed),
        Unconsumed::Never => ended,
    };
    Verdict::Holds {
        since: Since {
            ns,
            before_trace: found_at_start && ns == ended,
        },
    }
}

fn explain(f: &Finding) -> String {
    format!(
        "{}, the connection is over, {}, fd still open {}",
        f.state,
        unread(f.unread_bytes, f.eof_unread),
        held_for(f)
    )
}
