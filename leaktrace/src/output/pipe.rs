//! The report's way out: its lines reach stdout (or stderr) from a thread of their own. A reader
//! that stops reading (`leaktrace | less`, left alone) fills the pipe and blocks that thread
//! only; the session goes on reading the ring buffer and answering scrapes and stop signals.
use std::{
    io::{self, Write},
    sync::{mpsc, Arc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

/// Report bytes that may wait for a reader that does not read before the report is given up:
/// far more than any pause of a reader that reads again leaves behind.
const MAX_WAITING: usize = 16 << 20;

/// How often [`Outlet::wait`] looks whether the thread is done.
const WAIT_STEP: Duration = Duration::from_millis(10);

#[derive(Default)]
struct State {
    /// Bytes handed to the thread and not written yet.
    waiting: usize,
    /// Why the thread stopped writing: the error's kind and what it said.
    failed: Option<(io::ErrorKind, String)>,
}

impl State {
    fn failure(&self) -> Option<io::Error> {
        let (kind, what) = self.failed.as_ref()?;
        Some(io::Error::new(*kind, what.clone()))
    }
}

/// What the reporters write to: whole lines, each handed to the thread at once. Clones hand
/// their lines to the same thread, in the order they are written.
#[derive(Clone)]
pub(crate) struct Pipe {
    lines: mpsc::Sender<Vec<u8>>,
    state: Arc<Mutex<State>>,
}

/// The session's handle on the thread, to wait for the last lines to go out.
#[derive(Clone)]
pub(crate) struct Outlet {
    state: Arc<Mutex<State>>,
}

/// Starts the thread that writes to `out`.
pub(crate) fn open(mut out: impl Write + Send + 'static) -> io::Result<(Pipe, Outlet)> {
    let (lines, incoming) = mpsc::channel::<Vec<u8>>();
    let state = Arc::new(Mutex::new(State::default()));
    let shared = Arc::clone(&state);
    thread::Builder::new()
        .name("report".into())
        .spawn(move || {
            for line in incoming {
                let written = out.write_all(&line).and_then(|()| out.flush());
                let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
                state.waiting -= line.len();
                if let Err(e) = written {
                    state.failed = Some((e.kind(), e.to_string()));
                    return;
                }
            }
        })?;
    let outlet = Outlet {
        state: Arc::clone(&state),
    };
    Ok((Pipe { lines, state }, outlet))
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(failure) = state.failure() {
            return Err(failure);
        }
        if state.waiting + buf.len() > MAX_WAITING {
            return Err(io::Error::other(format!(
                "the report's reader stopped reading ({} bytes waiting)",
                state.waiting
            )));
        }
        state.waiting += buf.len();
        self.lines
            .send(buf.to_vec())
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    /// The thread flushes after each line.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Outlet {
    /// Waits at most `limit` for every line handed over to be written.
    pub(crate) fn wait(&self, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            {
                let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(failure) = state.failure() {
                    return Err(failure);
                }
                if state.waiting == 0 {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(io::Error::other(format!(
                        "the report's reader stopped reading: the last {} bytes of the report \
                         were not written",
                        state.waiting
                    )));
                }
            }
            thread::sleep(WAIT_STEP);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Blocks every write until released, as a pipe whose reader stopped.
    struct Stuck(Arc<AtomicBool>, Arc<Mutex<Vec<u8>>>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            while !self.0.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(1));
            }
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_does_not_read_blocks_nobody_and_is_told_at_the_end() {
        let (released, written) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let (mut pipe, outlet) = open(Stuck(Arc::clone(&released), Arc::clone(&written))).unwrap();
        pipe.write_all(b"one\n").unwrap();
        pipe.write_all(b"two\n").unwrap();
        let waited = outlet.wait(Duration::from_millis(50)).unwrap_err();
        assert!(waited.to_string().contains("stopped reading"), "{waited}");
        released.store(true, Ordering::Relaxed);
        outlet.wait(Duration::from_secs(10)).unwrap();
        assert_eq!(&*written.lock().unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn past_the_cap_the_report_is_given_up() {
        let (released, written) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let (mut pipe, _outlet) = open(Stuck(Arc::clone(&released), written)).unwrap();
        let line = vec![b'x'; 1 << 20];
        let refused = (0..=MAX_WAITING >> 20).find_map(|_| pipe.write(&line).err());
        assert!(refused.is_some_and(|e| e.to_string().contains("stopped reading")));
        released.store(true, Ordering::Relaxed);
    }

    #[test]
    fn a_failed_write_fails_the_next() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (mut pipe, outlet) = open(Closed).unwrap();
        pipe.write_all(b"one\n").unwrap();
        let failed = outlet.wait(Duration::from_secs(10)).unwrap_err();
        assert_eq!(failed.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(
            pipe.write(b"two\n").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
