//! leaktrace's own lines on stderr: warnings, errors, the demo's introduction. They reach stderr
//! from a thread of their own, as the report does (see [`crate::output::pipe`]): a stderr whose
//! reader stopped reading (`leaktrace run -- cmd 2>&1 | less`, left alone, once the command's
//! output filled the pipe) holds up that thread only, never the session, its stop signals or
//! its scrapes.
use std::{
    fmt,
    io::{self, Write as _},
    sync::{Mutex, OnceLock, PoisonError},
    time::Duration,
};

use crate::output::pipe::{self, Outlet, Pipe};

/// The thread writing to stderr, started by the first line; `None` where it could not start,
/// and lines are then written in place.
static WRITER: OnceLock<Option<(Mutex<Pipe>, Outlet)>> = OnceLock::new();

fn writer() -> Option<&'static (Mutex<Pipe>, Outlet)> {
    WRITER
        .get_or_init(|| {
            let (pipe, outlet) = pipe::open(io::stderr()).ok()?;
            Some((Mutex::new(pipe), outlet))
        })
        .as_ref()
}

/// Writes `text` and a newline to stderr in one write, so that lines from threads never mix,
/// and ignores a failure: a stderr that is closed, full (`2>/dev/full`) or whose reader is gone
/// (`2>&1 | head -1`) loses the line, while eprintln! would panic and end the session.
pub fn line(text: impl fmt::Display) {
    let line = format!("{text}\n");
    match writer() {
        Some((pipe, _)) => {
            let mut pipe = pipe.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = pipe.write_all(line.as_bytes());
        }
        None => {
            let _ = io::stderr().write_all(line.as_bytes());
        }
    }
}

/// The way to stderr for a report that goes there (`run`'s): the warnings' own, so that the two
/// keep the order they were written in.
pub(crate) fn shared() -> io::Result<(Pipe, Outlet)> {
    match writer() {
        Some((pipe, outlet)) => {
            let pipe = pipe.lock().unwrap_or_else(PoisonError::into_inner).clone();
            Ok((pipe, outlet.clone()))
        }
        None => pipe::open(io::stderr()),
    }
}

/// Waits, at most `limit`, for the lines written so far to reach stderr: leaktrace's last
/// words before it exits, which a reader that stopped reading does not hold up for longer.
pub fn flush(limit: Duration) {
    if let Some((_, outlet)) = WRITER.get().and_then(Option::as_ref) {
        let _ = outlet.wait(limit);
    }
}
