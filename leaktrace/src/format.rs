//! Formatting shared by the outputs and the words the leak classes give their findings, so that a
//! process name, an address, a duration or a warning reads the same in the text report, the
//! metrics' labels, the trace file and stderr. Below both: it knows neither.

use std::net::SocketAddr;
use std::time::Duration;

use leaktrace_common::ProbeFailure;

use crate::finding::Resolution;
use crate::timeline::Partner;

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

/// The two ends, the arrow pointing the way the connection was made: `<-` accepted from the
/// remote end, `->` connected to it.
pub(crate) fn endpoints(
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    accepted: Option<bool>,
) -> String {
    let arrow = match accepted {
        Some(true) => "<-",
        Some(false) => "->",
        None => "--",
    };
    format!("{} {arrow} {}", addr(local), addr(remote))
}

/// Whole seconds and up get one decimal; long ages read better in minutes and hours.
pub(crate) fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// What lies unread in the kernel: data bytes, and the peer's FIN if the owner never read it.
pub(crate) fn unread(bytes: u32, eof: bool) -> String {
    if eof {
        format!("unread {bytes} + EOF")
    } else {
        format!("unread {bytes}")
    }
}

/// The other socket of a proxied pair, for people.
pub(crate) fn partner(p: &Partner) -> String {
    format!(
        "its partner fd {} ({})",
        fd(p.fd),
        endpoints(p.local, p.remote, Some(p.accepted))
    )
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
        Resolution::Superseded => "superseded",
        Resolution::Class(end) => end.word(),
    }
}

/// What a probe failure costs and what to do about it, for the live warning and the summary.
pub(crate) fn probe_failure_meaning(failure: ProbeFailure) -> &'static str {
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
        ProbeFailure::TracepointArgs => {
            "a tracepoint's record could not be read: the events it reported are missing from \
             the timelines"
        }
        ProbeFailure::Comm => "a process's command name could not be read: some records have none",
    }
}

/// What to do about lost records, for the live warning and both summaries.
pub(crate) fn ring_size_hint(ring_size: u32) -> String {
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
