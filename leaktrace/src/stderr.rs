//! leaktrace's own lines on stderr: warnings, errors, the demo's introduction.
use std::{
    fmt,
    io::{self, Write as _},
};

/// Writes `text` and a newline to stderr in one write, so that lines from threads never mix,
/// and ignores a failure: a stderr that is closed, full (`2>/dev/full`) or whose reader is gone
/// (`2>&1 | head -1`) loses the line, while eprintln! would panic and end the session.
pub fn line(text: impl fmt::Display) {
    let _ = io::stderr().write_all(format!("{text}\n").as_bytes());
}
