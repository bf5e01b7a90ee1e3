//! The probe tier: leaktrace's eBPF programs loaded in this test process through its own loader,
//! one syscall or TCP transition made on loopback, the ring buffer drained through its own
//! decoder, and the records asserted. A probe that stops recording shows up here, at the probe,
//! rather than three stages later as a finding that never comes.
//!
//! The tests trace this very process (or a child it forks): its pid goes into `TARGETS`, so the
//! kernel side follows only its sockets. Other tests of this binary run in parallel and may make
//! sockets and children too, so every assertion picks its socket by address and its process by
//! pid; one probe test runs at a time, each with its own copy of the programs.
//!
//! They need root; without it they say why they skip, and under `CI=true` (or
//! `LEAKTRACE_REQUIRE_PRIVILEGED=1`) they fail, as the kernel tests of `tests/` do.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, RawFd},
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use leaktrace_common::{shutdown_how::SHUT_WR, tcp_state};
use leaktrace_tests::{is_root, kernel_socket, skip};

use super::{load, record_present, Attached, HookFamily, LoadError, LoadOptions};
use crate::decoder::{decode, Event, EventKind, SockKey};

/// One probe test at a time: each loads the programs (parsing the kernel's BTF), and the tests
/// that follow children would see each other's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long the records of one step may take: loopback's softirq work runs at once, mostly in the
/// caller's syscall, but a busy machine may defer it to ksoftirqd.
const RECORDS_WITHIN: Duration = Duration::from_secs(5);

/// leaktrace's programs loaded in this process, and the records they wrote so far.
struct Probes {
    attached: Attached,
    ring: RingBuf<MapData>,
    events: Vec<Event>,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Probes {
    /// Loads and attaches the programs as leaktrace does with `--pid` (and `--follow-children`
    /// when asked), tracing `pids`. `None`: skipped, with the reason printed.
    fn load(test: &str, follow_children: bool, pids: &[u32]) -> Option<Probes> {
        if !is_root() {
            skip(test, "loading eBPF programs needs root");
            return None;
        }
        let one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let mut attached = match load(&LoadOptions {
            family: HookFamily::Auto,
            filter_targets: true,
            follow_children,
            cgroup: None,
            ring_size: 1 << 20,
            max_processes: 64,
            max_kernel_sockets: 4096,
            floor: false,
        }) {
            Ok(attached) => attached,
            // What leaktrace itself reports as this machine's limit (exit codes 5, 6 and 7).
            Err(
                e @ (LoadError::NoBtf
                | LoadError::Btf(_)
                | LoadError::NoTracefs(_)
                | LoadError::HookRefused { .. }),
            ) => {
                skip(test, &format!("this kernel cannot run leaktrace: {e}"));
                return None;
            }
            Err(e) => panic!("{test}: loading leaktrace's eBPF programs: {e}"),
        };
        {
            let mut targets = attached.targets().expect("TARGETS map");
            for &pid in pids {
                targets.insert(pid).expect("tracing a pid");
            }
        }
        let ring = attached.ebpf.take_map("RECORDS").expect("RECORDS map");
        Some(Probes {
            attached,
            ring: RingBuf::try_from(ring).expect("RECORDS is a ring buffer"),
            events: Vec::new(),
            _one_at_a_time: one_at_a_time,
        })
    }

    /// Decodes what the ring buffer holds now into [`Probes::events`].
    fn drain(&mut self) {
        drain_into(&mut self.ring, &mut self.events);
    }

    /// Drains until `met` holds for the records so far; fails with them after [`RECORDS_WITHIN`].
    fn wait_for(&mut self, what: &str, met: impl Fn(&[Event]) -> bool) {
        let deadline = Instant::now() + RECORDS_WITHIN;
        loop {
            self.drain();
            if met(&self.events) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no record of {what} within {RECORDS_WITHIN:?}; records:\n{:#?}",
                self.events
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the first record that `names` the socket sought, and returns that socket.
    fn wait_for_socket(&mut self, what: &str, names: impl Fn(&Event) -> bool) -> SockKey {
        self.wait_for(what, |events| events.iter().any(&names));
        let first = self.events.iter().find(|e| names(e));
        first.expect("just seen").sock
    }

    /// [`Probes::wait_for_socket`] for the socket from `local` to `remote` (`None`: no peer).
    fn wait_for_endpoints(&mut self, local: SocketAddr, remote: Option<SocketAddr>) -> SockKey {
        self.wait_for_socket(&format!("the socket {local} -> {remote:?}"), |e| {
            e.local == Some(local) && e.remote == remote
        })
    }

    /// The kinds of the records of `sock`, in order.
    fn kinds(&self, sock: SockKey) -> Vec<EventKind> {
        self.of(sock).map(|e| e.kind).collect()
    }

    fn of(&self, sock: SockKey) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.sock == sock)
    }

    /// Waits until a record of `sock` has `kind`, and returns it.
    fn wait_for_kind(&mut self, sock: SockKey, kind: EventKind) -> Event {
        self.wait_for(&format!("{kind:?} of {sock:?}"), |events| {
            events.iter().any(|e| e.sock == sock && e.kind == kind)
        });
        *self.of(sock).find(|e| e.kind == kind).expect("just seen")
    }
}

fn drain_into(ring: &mut RingBuf<MapData>, events: &mut Vec<Event>) {
    while let Some(item) = ring.next() {
        let decoded = decode(&item).expect("a record leaktrace's decoder reads");
        events.push(decoded.first);
        events.extend(decoded.second());
    }
}

fn state(old: u8, new: u8) -> EventKind {
    EventKind::State { old, new }
}

fn own_pid() -> u32 {
    std::process::id()
}

/// The inode of the socket behind `fd` of this process: what the kernel side names it by.
fn inode(fd: RawFd) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    // stat follows the link to the socket itself.
    std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .expect("stat of an open fd")
        .ino()
}

/// A loopback listener and one connection to it, both ends in this process.
struct Connection {
    listener: TcpListener,
    client: TcpStream,
    server: TcpStream,
}

impl Connection {
    fn open() -> Connection {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
        let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        Connection {
            listener,
            client,
            server,
        }
    }

    fn listening(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    fn client_end(&self) -> SocketAddr {
        self.client.local_addr().unwrap()
    }
}

/// A process forked from this one, killed (if still running) and reaped on drop. It runs only
/// async-signal-safe calls: this process has other threads, whose locks it inherits held.
struct Forked {
    pid: libc::pid_t,
    reaped: bool,
}

impl Forked {
    /// Runs `child` in a new process, which then exits with status 0.
    fn run(child: impl FnOnce()) -> Forked {
        // SAFETY: the child runs only `child`, whose callers keep it to async-signal-safe
        // calls, and then `_exit`s without unwinding or running this process's destructors.
        match unsafe { libc::fork() } {
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                child();
                // SAFETY: ends the child at once, as above.
                unsafe { libc::_exit(0) }
            }
            pid => Forked { pid, reaped: false },
        }
    }

    fn pid(&self) -> u32 {
        u32::try_from(self.pid).expect("a pid")
    }

    /// Waits for the child to exit by itself; fails unless it exited with status 0.
    fn wait(mut self) {
        let mut status = 0;
        // SAFETY: our own child, not reaped yet; `status` is a valid pointer.
        let waited = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        self.reaped = true;
        assert_eq!(
            waited,
            self.pid,
            "waitpid: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child ended with status {status:#x}"
        );
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own child, not reaped yet, so the pid is still its.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Closes every fd from 3 on except `kept` (ascending). Async-signal-safe.
fn close_all_but(kept: &[RawFd]) {
    let mut first = 3;
    for &fd in kept.iter().chain(&[RawFd::MAX]) {
        if fd > first {
            // SAFETY: closes fds of this (forked) process only; no memory is touched.
            unsafe { libc::syscall(libc::SYS_close_range, first, fd - 1, 0) };
        }
        first = fd.saturating_add(1);
    }
}

/// Waits until the TCP socket `stream` is in `state`, as the kernel says.
fn wait_for_state(stream: &TcpStream, state: u8) {
    let deadline = Instant::now() + RECORDS_WITHIN;
    loop {
        let (now, _) = kernel_socket(own_pid(), stream.as_raw_fd().into()).expect("TCP_INFO");
        if now == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the socket stays in state {} rather than {}",
            tcp_state::name(now),
            tcp_state::name(state)
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// `accept` on `listener`, then read one byte: the first read is where a kernel without an
/// accept hook learns who accepted. Async-signal-safe.
fn accept_and_read(listener: RawFd) {
    // SAFETY: plain syscalls on fds the child inherited; the buffer outlives the read.
    unsafe {
        let fd = libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut());
        let mut byte = 0u8;
        if fd < 0 || libc::read(fd, (&raw mut byte).cast(), 1) != 1 {
            libc::_exit(1);
        }
    }
}

#[test]
fn listen_and_connect_are_recorded_with_their_owner_and_endpoints() {
    let test = "listen_and_connect_are_recorded_with_their_owner_and_endpoints";
    let Some(mut probes) = Probes::load(test, false, &[own_pid()]) else {
        return;
    };
    let connection = Connection::open();
    let (listening, client_end) = (connection.listening(), connection.client_end());

    let listener = probes.wait_for_endpoints(listening, None);
    let listen = probes.of(listener).next().copied().unwrap();
    assert_eq!(listen.kind, state(tcp_state::CLOSE, tcp_state::LISTEN));
    assert_eq!(listen.owner.map(|o| o.tgid), Some(own_pid()));
    assert_eq!(listen.task.tgid, own_pid());
    assert!(listen.in_owner_context);
    assert_eq!(listen.remote, None, "a listener has no peer");
    assert_eq!(listen.ino, Some(inode(connection.listener.as_raw_fd())));

    let client = probes.wait_for_endpoints(client_end, Some(listening));
    let connected = probes.of(client).next().copied().unwrap();
    assert_eq!(
        connected.kind,
        state(tcp_state::SYN_SENT, tcp_state::ESTABLISHED)
    );
    assert_eq!(connected.owner.map(|o| o.tgid), Some(own_pid()));
    assert_eq!(
        connected.opened_accepted(),
        Some(false),
        "a connect, not an accept"
    );
    assert_eq!(connected.ino, Some(inode(connection.client.as_raw_fd())));
    // The opening the kernel side leaves out, rebuilt from this first record.
    let opening: Vec<EventKind> = connected.opening().map(|e| e.kind).collect();
    assert_eq!(
        opening,
        [
            EventKind::Connect,
            state(tcp_state::CLOSE, tcp_state::SYN_SENT)
        ]
    );
}

#[test]
fn close_is_recorded_once_and_the_peer_sees_close_wait() {
    let test = "close_is_recorded_once_and_the_peer_sees_close_wait";
    let Some(mut probes) = Probes::load(test, false, &[own_pid()]) else {
        return;
    };
    let Connection {
        listener,
        client,
        server,
    } = Connection::open();
    let (listening, client_end) = (listener.local_addr().unwrap(), client.local_addr().unwrap());
    let server_ino = inode(server.as_raw_fd());
    drop(client);

    let client = probes.wait_for_endpoints(client_end, Some(listening));
    let close = probes.wait_for_kind(client, EventKind::Close { time_wait: true });
    assert_eq!(close.task.tgid, own_pid(), "close runs in its caller");
    assert!(close.in_owner_context);
    let server_sock = probes.wait_for_endpoints(listening, Some(client_end));
    let close_wait = probes.wait_for_kind(
        server_sock,
        state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
    );
    assert_eq!(close_wait.owner.map(|o| o.tgid), Some(own_pid()));
    assert_eq!(close_wait.ino, Some(server_ino));
    assert_eq!(
        probes.of(server_sock).next().unwrap().opened_accepted(),
        Some(true),
        "the server's end came from the listener"
    );
    let receive = close_wait
        .receive
        .expect("a state record carries the receive side");
    assert!(
        receive.eof_unread(),
        "the peer's FIN is not read yet: {receive:?}"
    );

    drop(server);
    probes.wait_for_kind(server_sock, EventKind::Close { time_wait: false });
    // The client's end is forgotten at its close: its FIN_WAIT2 and TIME_WAIT are not recorded.
    assert_eq!(
        probes.kinds(client),
        [
            state(tcp_state::SYN_SENT, tcp_state::ESTABLISHED),
            EventKind::Close { time_wait: true },
            state(tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1),
        ]
    );
    let server_kinds: Vec<EventKind> = probes
        .kinds(server_sock)
        .into_iter()
        // A handshake slower than what the kernel side folds into the socket's birth (1ms) is
        // recorded on its own.
        .filter(|kind| *kind != state(tcp_state::SYN_RECV, tcp_state::ESTABLISHED))
        .collect();
    assert_eq!(
        server_kinds,
        [
            state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
            EventKind::Close { time_wait: false },
            state(tcp_state::CLOSE_WAIT, tcp_state::LAST_ACK),
        ]
    );
}

#[test]
fn a_refused_connect_ends_in_close_and_its_close_destroys_the_socket() {
    let test = "a_refused_connect_ends_in_close_and_its_close_destroys_the_socket";
    let Some(mut probes) = Probes::load(test, false, &[own_pid()]) else {
        return;
    };
    // A loopback port nobody listens on any more: the kernel answers the SYN with a reset.
    let refusing = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind on loopback");
    let refused = TcpStream::connect(refusing).expect_err("nobody listens there");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // The connecting end's own address is gone with the failed connect: it is found by its peer.
    let sock = probes.wait_for_socket(&format!("a connection to {refusing}"), |e| {
        e.remote == Some(refusing)
    });
    let destroy = probes.wait_for_kind(sock, EventKind::Destroy);
    assert_eq!(
        destroy.task.tgid,
        own_pid(),
        "destroyed by its owner's close"
    );
    assert_eq!(
        probes.kinds(sock),
        [
            state(tcp_state::SYN_SENT, tcp_state::CLOSE),
            EventKind::Close { time_wait: false },
            EventKind::Destroy,
        ]
    );
}

#[test]
fn shutdown_then_the_peers_late_data_and_its_read_are_recorded() {
    let test = "shutdown_then_the_peers_late_data_and_its_read_are_recorded";
    let Some(mut probes) = Probes::load(test, false, &[own_pid()]) else {
        return;
    };
    let Connection {
        listener,
        mut client,
        mut server,
    } = Connection::open();
    let (listening, client_end) = (listener.local_addr().unwrap(), client.local_addr().unwrap());
    client.shutdown(Shutdown::Write).expect("shutdown");

    let sock = probes.wait_for_endpoints(client_end, Some(listening));
    let shutdown = probes.wait_for_kind(sock, EventKind::Shutdown { how: SHUT_WR });
    assert_eq!(shutdown.task.tgid, own_pid(), "shutdown runs in its caller");
    assert_eq!(shutdown.owner.map(|o| o.tgid), Some(own_pid()));
    let kinds = probes.kinds(sock);
    let at = kinds
        .iter()
        .position(|k| *k == EventKind::Shutdown { how: SHUT_WR })
        .unwrap();
    assert_eq!(
        kinds.get(at + 1),
        Some(&state(tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1)),
        "the shutdown's record carries its state change: {kinds:?}"
    );

    // What the peer sends after the shutdown is watched, and so is the owner's reading it.
    const LATE: &[u8] = b"RSET\r\n";
    server.write_all(LATE).expect("write");
    if probes.attached.serves("arrival") {
        probes.wait_for(&format!("the late data's arrival on {sock:?}"), |events| {
            events.iter().any(|e| {
                e.sock == sock
                    && e.kind == EventKind::Arrival
                    && e.receive
                        .is_some_and(|r| r.unread_bytes() == LATE.len() as u32)
            })
        });
    }
    let mut read = [0; LATE.len()];
    client.read_exact(&mut read).expect("read");
    if probes.attached.serves("recv") {
        probes.wait_for(&format!("the owner's read of {sock:?}"), |events| {
            events.iter().any(|e| {
                e.sock == sock
                    && matches!(e.kind, EventKind::Recv { ret } if ret.is_none_or(|n| n == LATE.len() as i64))
                    && e.receive.is_some_and(|r| r.unread_bytes() == 0)
            })
        });
    }
}

/// A connection to a listener of this process that a forked child accepts and reads from: the
/// accepted socket, the child's pid, and the client's end, still open.
fn accepted_by_a_child(probes: &mut Probes) -> (SockKey, u32, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let listening = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();
    let acceptor = Forked::run(|| accept_and_read(fd));
    let acceptor_pid = acceptor.pid();
    let mut client = TcpStream::connect(listening).expect("connect");
    client.write_all(b"x").expect("write");
    acceptor.wait();
    let accepted = probes.wait_for_endpoints(listening, Some(client.local_addr().unwrap()));
    (accepted, acceptor_pid, client)
}

#[test]
fn a_connection_another_traced_process_takes_is_recorded_as_accepted_by_it() {
    let test = "a_connection_another_traced_process_takes_is_recorded_as_accepted_by_it";
    // Followed children: the acceptor, forked from this process, is traced from its start.
    let Some(mut probes) = Probes::load(test, true, &[own_pid()]) else {
        return;
    };
    let (accepted, acceptor_pid, _client) = accepted_by_a_child(&mut probes);
    let accept = probes.wait_for_kind(accepted, EventKind::Accept { traced: true });
    assert_eq!(accept.task.tgid, acceptor_pid, "the acceptor's own call");
    assert_eq!(accept.owner.map(|o| o.tgid), Some(acceptor_pid));
    assert!(accept.in_owner_context);
}

#[test]
fn a_connection_an_untraced_process_takes_leaves_the_trace() {
    let test = "a_connection_an_untraced_process_takes_leaves_the_trace";
    let Some(mut probes) = Probes::load(test, false, &[own_pid()]) else {
        return;
    };
    let (accepted, acceptor_pid, client) = accepted_by_a_child(&mut probes);
    let accept = probes.wait_for_kind(accepted, EventKind::Accept { traced: false });
    assert_eq!(accept.task.tgid, acceptor_pid);
    assert_eq!(accept.owner.map(|o| o.tgid), Some(acceptor_pid));
    // The acceptor's exit closed its end; an untraced process's socket is no longer followed.
    drop(client);
    thread::sleep(Duration::from_millis(200));
    probes.drain();
    let kinds = probes.kinds(accepted);
    assert_eq!(
        kinds.last(),
        Some(&EventKind::Accept { traced: false }),
        "records of the socket after it left the trace: {kinds:?}"
    );
}

#[test]
fn sockets_held_when_tracing_starts_are_recorded_with_their_fd_and_state() {
    let test = "sockets_held_when_tracing_starts_are_recorded_with_their_fd_and_state";
    // Made before the programs load: a listener, and a connection whose client end is shut
    // down (FIN_WAIT2) and whose server end saw that FIN (CLOSE_WAIT).
    let connection = Connection::open();
    connection
        .client
        .shutdown(Shutdown::Write)
        .expect("shutdown");
    wait_for_state(&connection.client, tcp_state::FIN_WAIT2);
    wait_for_state(&connection.server, tcp_state::CLOSE_WAIT);
    // leaktrace does not look at its own sockets: a child holds them, as their owner, and
    // nothing else this process has open (other tests' sockets, which it would keep alive).
    let mut kept = [
        connection.listener.as_raw_fd(),
        connection.client.as_raw_fd(),
        connection.server.as_raw_fd(),
    ];
    kept.sort_unstable();
    let holder = Forked::run(|| {
        close_all_but(&kept);
        loop {
            // SAFETY: waits for the signal that ends the child; async-signal-safe.
            unsafe { libc::pause() };
        }
    });
    let Some(mut probes) = Probes::load(test, false, &[holder.pid()]) else {
        return;
    };
    if !probes.attached.can_record_present {
        skip(
            test,
            "this kernel has no tracepoint to record the sockets present at start",
        );
        return;
    }
    let Probes {
        attached,
        ring,
        events,
        ..
    } = &mut probes;
    let found = record_present(&mut attached.ebpf, &[holder.pid()], 1, &mut || {
        drain_into(ring, events)
    })
    .expect("recording the sockets present");
    assert_eq!(found.failed, 0, "{:?}", found.first_failure);
    probes.drain();

    let expected = [
        (connection.listener.as_raw_fd(), tcp_state::LISTEN, false),
        (connection.client.as_raw_fd(), tcp_state::FIN_WAIT2, true),
        (connection.server.as_raw_fd(), tcp_state::CLOSE_WAIT, false),
    ];
    for (fd, state, send_shutdown) in expected {
        let ino = inode(fd);
        let present: Vec<&Event> = probes
            .events
            .iter()
            .filter(|e| e.ino == Some(ino))
            .collect();
        let [present] = present[..] else {
            panic!("fd {fd}: expected one record, got {present:#?}");
        };
        assert_eq!(
            present.kind,
            EventKind::Present {
                fd,
                state,
                send_shutdown
            },
            "fd {fd}"
        );
        assert_eq!(
            present.owner.map(|o| (o.tgid, o.fd)),
            Some((holder.pid(), Some(fd))),
            "fd {fd}"
        );
    }
    let server = probes.wait_for_endpoints(connection.listening(), Some(connection.client_end()));
    let receive = probes.of(server).next().unwrap().receive.unwrap();
    assert!(receive.eof_unread(), "{receive:?}");
}

#[test]
fn a_traced_process_forking_and_its_child_exiting_are_recorded() {
    let test = "a_traced_process_forking_and_its_child_exiting_are_recorded";
    let Some(mut probes) = Probes::load(test, true, &[own_pid()]) else {
        return;
    };
    // A thread is no new process: no record.
    // SAFETY: gettid has no preconditions.
    let thread_id = thread::spawn(|| unsafe { libc::gettid() }).join().unwrap();
    let child = Forked::run(|| {});
    let child_pid = child.pid();
    child.wait();

    probes.wait_for(&format!("the exit of child {child_pid}"), |events| {
        events
            .iter()
            .any(|e| e.kind == EventKind::Exit && e.task.tgid == child_pid)
    });
    let fork = probes
        .events
        .iter()
        .position(|e| e.kind == EventKind::Fork { child: child_pid });
    let fork = fork.expect("a fork record for the child");
    assert_eq!(
        probes.events[fork].task.tgid,
        own_pid(),
        "the parent's call"
    );
    let exit = probes
        .events
        .iter()
        .position(|e| e.kind == EventKind::Exit && e.task.tgid == child_pid)
        .unwrap();
    assert!(fork < exit, "the child's exit before its birth");
    let thread_id = u32::try_from(thread_id).unwrap();
    assert!(
        !probes
            .events
            .iter()
            .any(|e| e.kind == EventKind::Fork { child: thread_id }),
        "a thread was recorded as a process"
    );
}
