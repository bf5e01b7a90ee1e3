//! Formatting shared by the outputs and the words the leak classes give their findings, so that a
//! process name, an address, a duration or a warning reads the same in the text report, the
//! metrics' labels, the trace file and stderr. Below both: it knows neither.

use std::net::SocketAddr;

use leaktrace_common::ProbeFailure;

use crate::finding::Resolution;

/// A string a process controls (its name), fit to print: every character Rust's `{:?}` would
/// escape is shown escaped (`\u{1b}`, `\n`, `\\`), so a process named with ESC, BEL or a
/// newline can neither drive the reader's terminal nor forge a line of the report. Quotes stay
/// as they are: names are not printed inside quotes.
pub(crate) fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '\'' => shown.push(c),
            _ => shown.extend(c.escape_debug()),
        }
    }
    shown
}

/// An fd, `?` where /proc did not name one.
pub(crate) fn fd(fd: Option<i32>) -> String {
    fd.map_or_else(|| "?".to_owned(), |fd| fd.to_string())
}

/// An address, `?` where the records did not carry it.
pub(crate) fn addr(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "?".to_owned(), |a| a.to_string())
}

/// A socket's kernel address, as `ss -e` and the kernel's own messages spell it.
pub(crate) fn kernel_address(addr: u64) -> String {
    format!("{addr:#x}")
}

/// How a leak ended, in the words of the text report and of the JSON's `how`.
pub(crate) fn how_resolved(how: Resolution) -> &'static str {
    match how {
        Resolution::OwnerExited => "owner exited",
        Resolution::ClosedUnrecorded => {
            "closed (found in /proc; the close was among the lost records)"
        }
        Resolution::Closed => "closed",
        Resolution::Destroyed => "destroyed",
        Resolution::Reset => "reset",
        Resolution::Shutdown => "shutdown",
        Resolution::Drained => "drained",
        Resolution::Reconnected => "reconnected",
        Resolution::Superseded => "superseded",
        Resolution::Traffic => "traffic",
        Resolution::Keepalive => "keepalive",
        Resolution::Ended => "ended",
        Resolution::PartnerClosed => "partner closed",
    }
}

/// What a probe failure costs and what to do about it, for the live warning and the summary.
pub fn probe_failure_meaning(failure: ProbeFailure) -> &'static str {
    match failure {
        ProbeFailure::Read => {
            "a read of kernel memory failed: some events may be missing from the timelines"
        }
        ProbeFailure::SocketMapFull => {
            "sockets of traced processes were not followed, the kernel's map of them being full: \
             leaks among them are missed; raise --max-kernel-sockets"
        }
        ProbeFailure::TargetMapFull => {
            "children of traced processes were not traced, the kernel's map of traced processes \
             being full: leaks in them are missed; raise --max-processes"
        }
    }
}

/// What to do about lost records, for the live warning and both summaries.
pub fn ring_size_hint(ring_size: u32) -> String {
    format!("raise --ring-size (now {ring_size} bytes)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_names_keep_what_prints() {
        assert_eq!(
            printable("caf\u{e9} \"it's\" [x]"),
            "caf\u{e9} \"it's\" [x]"
        );
        // Escaped backslashes keep the escapes unambiguous: this is no ESC.
        assert_eq!(printable(r"a\u{1b}"), r"a\\u{1b}");
        assert_eq!(printable("tab\there\u{202e}"), r"tab\there\u{202e}");
    }
}
