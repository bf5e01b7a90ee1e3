//! `--trace-out FILE`: every socket's timeline in the Chrome trace-event JSON format, which
//! Perfetto and chrome://tracing open, to look at sockets over time rather than read them.
//!
//! One process per owning pid (named after its comm), one track per socket inside it (named
//! after its fd and endpoints), a complete ("X") slice per TCP state and an instant ("i") per
//! syscall or kernel event, its arguments those of the `--json` timeline entry. Times are the
//! records' CLOCK_MONOTONIC in microseconds.
//!
//! Sessions last hours, so the file is streamed: a socket's track is written, in a single
//! write, once the store lets go of its timeline, and the rest at the end. The events form the
//! trace format's "JSON Array Format", whose closing `]` is optional: a run killed before it
//! writes one still leaves a file the viewers open, up to the last socket written. So does a
//! write that fails (a full disk): what it wrote of a track is cut off again.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use leaktrace_common::tcp_state;
use serde_json::{json, Value};

use super::json::entry;
use super::{End, Output, Tick, Track};
use crate::decoder::EventKind;
use crate::format::{addr, kernel_address};

/// Track ids start past the largest pid Linux hands out (`PID_MAX_LIMIT`, 2^22), so a viewer
/// never takes a socket's track for a real process's main thread.
const FIRST_TRACK: u64 = 1 << 22;

/// The pid of tracks whose owner was never learned.
const NO_OWNER: u32 = 0;

/// Where the trace goes: a file, out of which a failed write can be cut again.
pub(crate) trait Sink: Write + Send {
    /// Cuts what was written back to its first `len` bytes.
    fn cut(&mut self, len: u64) -> io::Result<()>;
}

impl Sink for File {
    fn cut(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

pub(crate) struct TraceOut {
    out: Box<dyn Sink>,
    /// Bytes written whole: where a failed write is cut back to.
    written: u64,
    /// Processes whose name was written already.
    named: HashSet<u32>,
    next_track: u64,
    /// Nothing after the opening `[` yet: the next event needs no separating comma.
    empty: bool,
}

impl TraceOut {
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        Self::new(Box::new(open_own(path)?))
    }

    fn new(out: Box<dyn Sink>) -> io::Result<Self> {
        let mut trace = Self {
            out,
            written: 0,
            named: HashSet::new(),
            next_track: FIRST_TRACK,
            empty: true,
        };
        trace.put(b"[\n")?;
        Ok(trace)
    }

    /// Writes `bytes` whole, or else cuts off what it wrote of them, so that a trace that ends
    /// on a failed write (a full disk) ends with a whole event and still opens.
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.out.write_all(bytes).and_then(|()| self.out.flush()) {
            // A FIFO cannot be cut: its reader has had what it has had.
            let _ = self.out.cut(self.written);
            return Err(e);
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes the track of a socket. A state still current when its timeline ends (no
    /// destruction recorded) lasts until `end_ns`.
    fn socket(&mut self, track: &Track<'_>, end_ns: u64) -> io::Result<()> {
        let Track {
            key,
            timeline,
            comm,
        } = track;
        let comm = comm.as_deref();
        let owner = timeline.owner();
        let pid = owner.map_or(NO_OWNER, |o| o.tgid);
        let tid = self.next_track;
        self.next_track += 1;
        let mut events = Vec::new();
        if self.named.insert(pid) {
            let name = match (owner, comm) {
                (None, _) => "owner unknown",
                (Some(_), comm) => comm.unwrap_or("?"),
            };
            events.push(json!({
                "name": "process_name", "ph": "M", "pid": pid, "args": {"name": name},
            }));
        }
        // The fd is known where /proc was asked (a finding, a socket found at start).
        let endpoints = format!("{} -> {}", addr(timeline.local()), addr(timeline.remote()));
        let name = match owner.and_then(|o| o.fd) {
            Some(fd) => format!("fd {fd} {endpoints}"),
            None => endpoints,
        };
        events.push(json!({
            "name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name},
        }));

        let sock = kernel_address(key.addr);
        let slice = |state: u8, start_ns: u64, end_ns: u64, args: Value| {
            let mut args = args;
            args["sock"] = sock.clone().into();
            json!({
                "name": tcp_state::name(state), "cat": "tcp_state", "ph": "X",
                "ts": micros(start_ns), "dur": micros(end_ns.saturating_sub(start_ns)),
                "pid": pid, "tid": tid, "args": args,
            })
        };
        // The state the socket is in, since when, and how it got there.
        let mut current: Option<(u8, u64, Value)> = None;
        let mut destroyed_ns = None;
        for event in timeline.entries() {
            let entered = match event.kind {
                EventKind::State { old, new } => Some((new, json!({"from": tcp_state::name(old)}))),
                EventKind::Present { state, .. } => {
                    Some((state, json!({"present_at_start": true})))
                }
                _ => None,
            };
            // After its owner's final close, nothing more is recorded of the socket.
            if let EventKind::Destroy | EventKind::Close { .. } = event.kind {
                destroyed_ns.get_or_insert(event.ts_ns);
            }
            if !matches!(event.kind, EventKind::State { .. }) {
                let fd = owner
                    .filter(|o| o.tgid == event.task.tgid)
                    .and_then(|o| o.fd);
                events.push(instant(event, fd, pid, tid));
            }
            if let Some((state, args)) = entered {
                if let Some((previous, since, args)) = current.take() {
                    events.push(slice(previous, since, event.ts_ns, args));
                }
                current = Some((state, event.ts_ns, args));
            }
        }
        if let Some((state, since, args)) = current {
            let until = destroyed_ns.unwrap_or(end_ns).max(since);
            events.push(slice(state, since, until, args));
        }
        self.write(&events)
    }

    /// One write for the whole track, so a run killed meanwhile leaves whole events only.
    fn write(&mut self, events: &[Value]) -> io::Result<()> {
        let mut text = String::new();
        for event in events {
            if !std::mem::take(&mut self.empty) {
                text.push_str(",\n");
            }
            text.push_str(&event.to_string());
        }
        self.put(text.as_bytes())
    }
}

impl Output for TraceOut {
    /// Writes the tracks of the timelines the store let go of: sockets destroyed a while ago,
    /// whose last state ends at their destruction.
    fn tick(&mut self, tick: &Tick<'_>) -> io::Result<()> {
        for track in tick.swept {
            self.socket(track, tick.now_ns)?;
        }
        Ok(())
    }

    /// Writes the tracks of the timelines left, whose current states last until the end, and
    /// closes the JSON array: the file is whole.
    fn finish(&mut self, end: &End<'_>) -> io::Result<()> {
        let mut left: Vec<&Track<'_>> = end.timelines.iter().collect();
        left.sort_unstable_by_key(|track| (track.key.born_ns, track.key.addr));
        for track in left {
            self.socket(track, end.now_ns)?;
        }
        self.put(b"\n]\n")
    }

    fn wants_timelines(&self) -> bool {
        true
    }
}

/// Opens `path` to write, as root may in a directory other users can write to (`/tmp`), where
/// what is already at `path` may be another user's doing: never through a symbolic link (theirs
/// could point at any file), never into a file of theirs nor into one with other names (a hard
/// link to a file root cares about), and never truncating one before it is known to be fit. A
/// new file is created 0600: the trace names processes, addresses and ports.
fn open_own(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        // O_NONBLOCK: opening a FIFO someone left there would wait for a reader for ever.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            let found = path.symlink_metadata().map(|m| m.file_type());
            match (e.raw_os_error(), found) {
                (Some(libc::ELOOP), Ok(t)) if t.is_symlink() => {
                    refused("it is a symbolic link, which leaktrace does not follow".to_owned())
                }
                (Some(libc::ENXIO), Ok(t)) if t.is_fifo() => {
                    refused("it is a FIFO that nobody reads".to_owned())
                }
                _ => e,
            }
        })?;
    let found = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    if found.uid() != own {
        return Err(refused(format!(
            "it belongs to uid {}, not to leaktrace's user (uid {own}): remove it or name \
             another file",
            found.uid()
        )));
    }
    if found.is_file() {
        if found.nlink() > 1 {
            return Err(refused(format!(
                "it has {} names (hard links), and writing it would change the others too",
                found.nlink()
            )));
        }
        file.set_len(0)?;
    }
    // Blocking again: the trace's writes must wait for a slow reader of a FIFO, not fail.
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd `file` owns; F_GETFL and F_SETFL take and return flags only.
    let blocking = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) == 0
    };
    if !blocking {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why)
}

/// An event that is not a state change, as a thread-scoped instant with the `--json` entry's
/// fields as its arguments.
fn instant(event: &crate::decoder::Event, fd: Option<i32>, pid: u32, tid: u64) -> Value {
    let mut args = entry(event, fd);
    let name = args.as_object_mut().and_then(|fields| {
        fields.remove("t_ns");
        fields.remove("event")
    });
    json!({
        "name": name, "cat": "socket", "ph": "i", "s": "t", "ts": micros(event.ts_ns),
        "pid": pid, "tid": tid, "args": args,
    })
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use leaktrace_common::tcp_state::*;

    use super::super::tests::{final_report, Captured};
    use super::*;
    use crate::decoder::{Owner, SockKey};
    use crate::summary::IngestCounts;
    use crate::timeline::tests::{
        event, from_peer, key, state, with_receive, ACCEPT, DESTROY, OWNER, RELEASE,
    };
    use crate::timeline::{Store, Timeline};

    const MS: u64 = 1_000_000;

    impl Sink for Captured {
        fn cut(&mut self, len: u64) -> io::Result<()> {
            self.truncate(len as usize);
            Ok(())
        }
    }

    /// A disk with room for `room` more bytes: a write takes what fits, and the next one fails
    /// with ENOSPC, as write(2) does.
    struct FullDisk {
        written: Captured,
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 && !buf.is_empty() {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.written.write(&buf[..n])
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink for FullDisk {
        fn cut(&mut self, len: u64) -> io::Result<()> {
            self.written.cut(len)
        }
    }

    /// Parses what was written, which must be one JSON array.
    fn parse(captured: &Captured) -> Vec<Value> {
        let text = captured.lines().join("\n");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn named<'a>(events: &'a [Value], ph: &str, name: &str) -> Vec<&'a Value> {
        events
            .iter()
            .filter(|e| e["ph"] == ph && e["name"] == name)
            .collect()
    }

    /// The timelines as the session hands them over, with their owner's name: the records
    /// name `OWNER` mailer.
    fn tracks<'a>(timelines: impl Iterator<Item = (&'a SockKey, &'a Timeline)>) -> Vec<Track<'a>> {
        timelines
            .map(|(key, timeline)| Track {
                key: *key,
                timeline,
                comm: timeline.owner().map(|_| "mailer".to_owned()),
            })
            .collect()
    }

    /// Ends the trace with the timelines `store` holds.
    fn finish(mut trace: TraceOut, store: &Store, end_ns: u64) -> io::Result<()> {
        trace.finish(&End {
            report: &final_report(Vec::new(), 0),
            timelines: &tracks(store.iter()),
            now_ns: end_ns,
        })
    }

    /// A look of the detectors, after which the session hands over what `store` swept.
    fn tick(trace: &mut TraceOut, store: &mut Store, now_ns: u64) -> io::Result<()> {
        let swept = store.take_swept();
        trace.tick(&Tick {
            outcomes: &[],
            swept: &tracks(swept.iter().map(|(key, timeline)| (key, &**timeline))),
            ingest: &IngestCounts::default(),
            sockets_tracked: store.tracked(),
            now_ns,
        })
    }

    /// Incident 1's shape, and a well-behaved connection next to it that the sweep let go.
    fn store() -> Store {
        let mut store = Store::default().keeping_swept();
        let leak = key(0x1000, 1);
        let mut established = from_peer(event(leak, 10 * MS, state(SYN_RECV, ESTABLISHED)));
        established.owner = None;
        store.insert(established);
        store.insert(event(leak, 11 * MS, ACCEPT));
        store.insert(from_peer(with_receive(
            event(leak, 20 * MS, state(ESTABLISHED, CLOSE_WAIT)),
            6,
            5,
            true,
        )));
        store.insert(event(leak, 21 * MS, EventKind::Recv { ret: Some(5) }));

        let fine = key(0x2000, 2);
        let fd_8 = |ts_ns, kind| {
            let mut event = event(fine, ts_ns, kind);
            event.owner = Some(Owner {
                tgid: OWNER,
                fd: Some(8),
            });
            event
        };
        store.insert(fd_8(30 * MS, ACCEPT));
        store.insert(fd_8(31 * MS, state(ESTABLISHED, CLOSE_WAIT)));
        store.insert(fd_8(32 * MS, RELEASE));
        store.insert(fd_8(32 * MS + 500, state(CLOSE_WAIT, LAST_ACK)));
        store.insert(fd_8(33 * MS, state(LAST_ACK, CLOSE)));
        store.insert(fd_8(33 * MS, DESTROY));
        store
    }

    #[test]
    fn a_track_per_socket_with_state_slices_and_instants() {
        let store = store();
        let captured = Captured::default();
        let trace = TraceOut::new(Box::new(captured.clone())).unwrap();
        finish(trace, &store, 50 * MS).unwrap();
        let events = parse(&captured);

        let processes = named(&events, "M", "process_name");
        assert_eq!(processes.len(), 1, "one process, named once: {events:?}");
        assert_eq!(processes[0]["pid"], 4242);
        assert_eq!(processes[0]["args"]["name"], "mailer");
        let threads = named(&events, "M", "thread_name");
        let names: Vec<&Value> = threads.iter().map(|t| &t["args"]["name"]).collect();
        assert_eq!(
            names,
            [
                "fd 7 127.0.0.1:8080 -> 127.0.0.1:50412",
                "fd 8 127.0.0.1:8080 -> 127.0.0.1:50412"
            ]
        );
        let (leak_tid, fine_tid) = (&threads[0]["tid"], &threads[1]["tid"]);
        assert_ne!(leak_tid, fine_tid);

        let slices = |tid: &Value| -> Vec<(String, f64, f64)> {
            events
                .iter()
                .filter(|e| e["ph"] == "X" && e["tid"] == *tid)
                .map(|e| {
                    assert_eq!(e["pid"], 4242);
                    let name = e["name"].as_str().unwrap().to_owned();
                    (name, e["ts"].as_f64().unwrap(), e["dur"].as_f64().unwrap())
                })
                .collect()
        };
        // Microseconds; the leak's CLOSE_WAIT is still current, so it lasts until the end.
        assert_eq!(
            slices(leak_tid),
            [
                // Its opening, rebuilt from its birth at 1 ns.
                ("SYN_RECV".into(), 0.001, 9_999.999),
                ("ESTABLISHED".into(), 10_000.0, 10_000.0),
                ("CLOSE_WAIT".into(), 20_000.0, 30_000.0)
            ]
        );
        // Its first transition starts its first slice: how long it was ESTABLISHED before is
        // unknown. Its last state ends at its destruction, not at the end of the trace.
        assert_eq!(
            slices(fine_tid),
            [
                ("CLOSE_WAIT".into(), 31_000.0, 1_000.5),
                ("LAST_ACK".into(), 32_000.5, 999.5),
                ("CLOSE".into(), 33_000.0, 0.0),
            ]
        );
        let leak_slice = events
            .iter()
            .find(|e| e["ph"] == "X" && e["name"] == "CLOSE_WAIT" && e["tid"] == *leak_tid)
            .unwrap();
        assert_eq!(leak_slice["args"]["from"], "ESTABLISHED");
        assert_eq!(leak_slice["args"]["sock"], "0x1000");

        let instants: Vec<(&Value, &Value)> = events
            .iter()
            .filter(|e| e["ph"] == "i")
            .map(|e| (&e["name"], &e["tid"]))
            .collect();
        assert_eq!(
            instants,
            [
                (&json!("accept"), leak_tid),
                (&json!("recv"), leak_tid),
                (&json!("accept"), fine_tid),
                (&json!("close"), fine_tid),
                (&json!("destroy"), fine_tid),
            ]
        );
        let recv = named(&events, "i", "recv")[0];
        assert_eq!(recv["s"], "t");
        assert_eq!(recv["ts"], 21_000.0);
        assert_eq!(recv["args"]["ret"], 5);
        assert_eq!(recv["args"]["comm"], "mailer");
        assert_eq!(named(&events, "i", "close")[0]["args"]["fd"], 8);
    }

    #[test]
    fn unknown_owners_and_sockets_found_at_start() {
        let mut store = Store::default();
        let sock = key(0x3000, 3);
        let mut present = event(
            sock,
            5 * MS,
            EventKind::Present {
                fd: 9,
                state: CLOSE_WAIT,
                send_shutdown: false,
            },
        );
        present.owner = None;
        present.remote = None;
        store.insert(present);
        let captured = Captured::default();
        let trace = TraceOut::new(Box::new(captured.clone())).unwrap();
        finish(trace, &store, 6 * MS).unwrap();
        let events = parse(&captured);
        // Present records carry the fd and pid only as the owner; without one, neither is known.
        assert_eq!(
            named(&events, "M", "process_name")[0]["args"]["name"],
            "owner unknown"
        );
        let thread = named(&events, "M", "thread_name")[0];
        assert_eq!(thread["pid"], NO_OWNER);
        assert_eq!(thread["args"]["name"], "127.0.0.1:8080 -> ?");
        let slice = named(&events, "X", "CLOSE_WAIT")[0];
        assert_eq!(slice["args"]["present_at_start"], true);
        assert_eq!(slice["dur"], 1_000.0);
        assert_eq!(named(&events, "i", "present")[0]["args"]["fd"], 9);
    }

    /// The trace of `store()`'s swept socket, then of the socket left, on a disk with room
    /// for `room` bytes: what was written once the swept socket was, what was written in the
    /// end, and how the end went.
    fn on_a_disk(room: usize) -> (Vec<u8>, Vec<u8>, io::Result<()>) {
        let mut store = store();
        store.insert(event(key(0x3000, 3), 2_000 * MS, EventKind::Arrival));
        store.sweep(|_| false);
        let written = Captured::default();
        let disk = FullDisk {
            written: written.clone(),
            room,
        };
        let mut trace = TraceOut::new(Box::new(disk)).unwrap();
        tick(&mut trace, &mut store, 2_000 * MS).unwrap();
        let swept = written.bytes();
        let ended = finish(trace, &store, 2_000 * MS);
        (swept, written.bytes(), ended)
    }

    #[test]
    fn a_full_disk_cuts_off_the_track_it_could_not_write() {
        let (swept, _, ended) = on_a_disk(usize::MAX);
        ended.unwrap();
        // Room for the swept socket's track and a part of the other's.
        let (_, cut, ended) = on_a_disk(swept.len() + 100);
        assert_eq!(ended.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(cut, swept, "cut back to the whole events");
        let text = String::from_utf8(cut).unwrap();
        let events: Vec<Value> = serde_json::from_str(&format!("{text}]")).unwrap();
        let threads = named(&events, "M", "thread_name");
        assert_eq!(
            threads.len(),
            1,
            "the swept socket's track alone: {events:?}"
        );
    }

    #[test]
    fn swept_sockets_are_written_at_once_and_a_cut_run_leaves_whole_events() {
        let mut store = store();
        // Records from well after the closed connection's destruction let the sweep drop it.
        store.insert(event(key(0x3000, 3), 2_000 * MS, EventKind::Arrival));
        store.sweep(|_| false);
        let captured = Captured::default();
        let mut trace = TraceOut::new(Box::new(captured.clone())).unwrap();
        tick(&mut trace, &mut store, 2_000 * MS).unwrap();
        // No finish: what SIGKILL leaves. Closing the array is all a reader has to add.
        let text = captured.lines().join("\n");
        assert!(text.starts_with("[\n") && !text.ends_with(','), "{text}");
        let events: Vec<Value> = serde_json::from_str(&format!("{text}]")).unwrap();
        let threads = named(&events, "M", "thread_name");
        let names: Vec<&Value> = threads.iter().map(|t| &t["args"]["name"]).collect();
        assert_eq!(names, ["fd 8 127.0.0.1:8080 -> 127.0.0.1:50412"]);
        assert_eq!(named(&events, "X", "CLOSE")[0]["dur"], 0.0);
        tick(&mut trace, &mut store, 2_000 * MS).unwrap();
        assert_eq!(
            captured.lines().join("\n"),
            text,
            "each swept socket is written once"
        );
    }
}
