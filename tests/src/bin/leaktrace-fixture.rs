//! Socket programs that reproduce the lifecycles of shared/INCIDENTS.md for leaktrace's tests.
//!
//! Servers and the client run as separate processes: on loopback the softirq work that moves a
//! server socket between states runs in the client's context, and the tests must show that
//! leaktrace still blames the server. Servers print `READY <port>` once listening, report each
//! accepted socket as `ACCEPTED fd=<fd> peer=<addr>`, and never exit by themselves, so their
//! sockets stay held until the test kills them.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

const USAGE: &str = "usage: leaktrace-fixture <command> [--ipv6] [options]
  close-wait-server --conns N [--pause-ms MS] [--release-after-ms MS] [--release-on-connect]
                    [--reuseport]
                                     read each connection to EOF, never close it (incident 1);
                                     --pause-ms waits MS before accepting the first; with
                                     --release-after-ms, close them all MS later; with
                                     --release-on-connect, when one more connection comes;
                                     --reuseport: listen with SO_REUSEPORT, so that others may
                                     listen on the same address and port
  shut-wr-server --mode never-read|read-then-stop --expect BYTES [--pause-ms MS]
                 [--release-after-ms MS]
                                     reply, shutdown(SHUT_WR), then never read the peer's
                                     end-of-stream; keep the fd (incident 3). read-then-stop
                                     waits MS, then reads exactly BYTES; with
                                     --release-after-ms, read to end-of-stream MS later
  repeat-server --calls N            accept one connection and call, N times each, connect()
                                     to its peer (EISCONN), close(dup(fd)) and
                                     shutdown(SHUT_WR) (the first one ends our side, the others
                                     change nothing; REPEATED fd=F once done), then keep the fd
                                     and never read what the peer sends after (incident 3)
  hold-server                        greet each connection with a line, then neither read nor
                                     close it: its fd stays held after the connection ends
                                     (incident 4)
  prefork-server [--leak-one]        a prefork server (nginx, Apache, gunicorn): the master
                                     listens, two workers it forked (each prints WORKER pid=P
                                     once running) take every connection and echo it until EOF;
                                     the master never touches one. --leak-one: the first
                                     connection any worker takes is read to EOF and never closed
                                     (LEAKED fd=F pid=P, incident 1 in a worker)
  echo-server [--close-first]        echo each connection until EOF, then close it; with
                                     --close-first, echo one read and close first (this side
                                     then goes through TIME_WAIT)
  pool-leak --conns N --pause-ms MS --exit-code C
                                     a client pool (incident 4): connects N times to its own
                                     listener, whose side closes at once; the pool never closes
                                     its end (CLOSE_WAIT on the connect side), holds it MS, exits C
  identity [pool-leak options]       print who the process runs as (IDENTITY pid= uid= gid=
                                     groups= home= user= logname=; uid and gid as /proc's
                                     status gives them: real, effective, saved, filesystem),
                                     then leak as pool-leak does
  clean-exit --exit-code C           connects, exchanges bytes, closes both ends, exits C
  exit --exit-code C                 exits C at once: a process that lives a millisecond
  handoff-server                     accepts one connection, hands its fd to a child process
                                     (inherited across exec), closes its own copy; the child
                                     never closes it
  dup-server                         accepts one connection, copies its fd to 100 or above
                                     (fcntl F_DUPFD_CLOEXEC), closes the accepted fd, never
                                     closes the copy
  hold-fd --fd N                     holds an inherited fd forever
  scm-server                         accepts one connection, passes its fd over a unix socket
                                     (SCM_RIGHTS) to a child process, closes its own copy
  scm-receiver --fd N                receives an fd over the unix socket N and holds it forever
  proxy --port P [--keepalive] [--propagate] [--hold-half-closed]
                                     pipe each client to the upstream at port P both ways; when
                                     the client half-closes, close its side and keep the upstream
                                     connection, ESTABLISHED and silent (a pool's shape);
                                     --hold-half-closed: keep the client's socket too, its
                                     end-of-stream never handled (incident 2). --keepalive: with
                                     SO_KEEPALIVE upstream; --propagate: well-behaved, pass each
                                     end-of-stream on (shutdown SHUT_WR) and close both after
  client --port P [--read-line] [--send BYTES] [--wait-eof] [--echo] [--wait-close]
         [--half-close [--leave]] [--pause-ms MS] [--reset] [--conns N] [--concurrency C]
                                     per connection: connect, [read the server's first line],
                                     [read to EOF], send BYTES, [read them back], [read to
                                     EOF], [shutdown(SHUT_WR) and read to EOF, or with --leave
                                     not wait for it], wait MS, close
                                     (--reset: abort with a RST instead of a FIN)
Every command takes --name NAME: the process names itself NAME (its comm) first, and
  --netns new|PATH                   runs in a network namespace: `new`, one of its own whose
                                     loopback is up (with --host's address on it too); a PATH
                                     (/proc/<pid>/ns/net of a server), that process's
  --host ADDR                        listens on and connects to the IPv4 address ADDR instead
                                     of loopback";

/// What an SMTP client sends after the server rejected it (incident 3); repeated to any length.
const PAYLOAD: &[u8] = b"RSET\r\nQUIT\r\n";

/// The incident 3 server's rejection, sent before it half-closes.
const REPLY: &[u8] = b"554 5.7.1 rejected\r\n";

/// What the hold server greets each connection with, which tells the client it was accepted.
const GREETING: &[u8] = b"220 ready\r\n";

/// Bounds every client read, so a server that never answers fails the run instead of hanging it.
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    NeverRead,
    ReadThenStop,
}

impl FromStr for Mode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "never-read" => Ok(Mode::NeverRead),
            "read-then-stop" => Ok(Mode::ReadThenStop),
            _ => bail!("unknown --mode {s:?}"),
        }
    }
}

struct Opts {
    ipv6: bool,
    conns: usize,
    concurrency: usize,
    port: u16,
    send: usize,
    wait_eof: bool,
    echo: bool,
    read_line: bool,
    wait_close: bool,
    half_close: bool,
    leave: bool,
    hold_half_closed: bool,
    reset: bool,
    close_first: bool,
    leak_one: bool,
    reuseport: bool,
    keepalive: bool,
    propagate: bool,
    pause: Duration,
    mode: Mode,
    expect: usize,
    /// A leak that its owner finally mends, to check it is reported as resolved.
    release_after: Option<Duration>,
    /// Mend it when the test says so, by connecting once more: at a moment of its choosing.
    release_on_connect: bool,
    exit_code: i32,
    /// How many times `repeat-server` makes each of its calls.
    calls: usize,
    fd: i32,
    name: Option<String>,
    netns: Option<Netns>,
    host: Option<Ipv4Addr>,
}

/// Where `--netns` puts the process.
enum Netns {
    New,
    Of(String),
}

impl Opts {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Opts> {
        let mut o = Opts {
            ipv6: false,
            conns: 1,
            concurrency: 1,
            port: 0,
            send: 0,
            wait_eof: false,
            echo: false,
            read_line: false,
            wait_close: false,
            half_close: false,
            leave: false,
            hold_half_closed: false,
            reset: false,
            close_first: false,
            leak_one: false,
            reuseport: false,
            keepalive: false,
            propagate: false,
            pause: Duration::ZERO,
            mode: Mode::NeverRead,
            expect: 0,
            release_after: None,
            release_on_connect: false,
            exit_code: 0,
            calls: 0,
            fd: -1,
            name: None,
            netns: None,
            host: None,
        };
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--ipv6" => o.ipv6 = true,
                "--wait-eof" => o.wait_eof = true,
                "--echo" => o.echo = true,
                "--read-line" => o.read_line = true,
                "--wait-close" => o.wait_close = true,
                "--half-close" => o.half_close = true,
                "--leave" => o.leave = true,
                "--hold-half-closed" => o.hold_half_closed = true,
                "--keepalive" => o.keepalive = true,
                "--propagate" => o.propagate = true,
                "--reset" => o.reset = true,
                "--close-first" => o.close_first = true,
                "--leak-one" => o.leak_one = true,
                "--reuseport" => o.reuseport = true,
                "--release-on-connect" => o.release_on_connect = true,
                "--conns" => o.conns = value()?.parse()?,
                "--concurrency" => o.concurrency = value()?.parse()?,
                "--port" => o.port = value()?.parse()?,
                "--send" => o.send = value()?.parse()?,
                "--pause-ms" => o.pause = Duration::from_millis(value()?.parse()?),
                "--mode" => o.mode = value()?.parse()?,
                "--expect" => o.expect = value()?.parse()?,
                "--exit-code" => o.exit_code = value()?.parse()?,
                "--calls" => o.calls = value()?.parse()?,
                "--fd" => o.fd = value()?.parse()?,
                "--name" => o.name = Some(value()?),
                "--netns" => {
                    o.netns = Some(match value()?.as_str() {
                        "new" => Netns::New,
                        path => Netns::Of(path.to_owned()),
                    });
                }
                "--host" => o.host = Some(value()?.parse()?),
                "--release-after-ms" => {
                    o.release_after = Some(Duration::from_millis(value()?.parse()?));
                }
                _ => bail!("unknown argument {flag:?}"),
            }
        }
        ensure!(o.concurrency > 0, "--concurrency must be at least 1");
        ensure!(
            !(o.ipv6 && o.host.is_some()),
            "--host is an IPv4 address, --ipv6 asks for loopback's IPv6 one"
        );
        Ok(o)
    }

    fn addr(&self, port: u16) -> SocketAddr {
        match self.host {
            Some(host) => (host, port).into(),
            None if self.ipv6 => (Ipv6Addr::LOCALHOST, port).into(),
            None => (Ipv4Addr::LOCALHOST, port).into(),
        }
    }

    fn listen(&self) -> Result<TcpListener> {
        let listener = match self.addr(0) {
            SocketAddr::V4(addr) if self.reuseport => {
                leaktrace_tests::reuseport_listener(addr).context("listen with SO_REUSEPORT")?
            }
            _ if self.reuseport => bail!("--reuseport listens on IPv4 only"),
            addr => TcpListener::bind(addr).context("bind")?,
        };
        println!("READY {}", listener.local_addr()?.port());
        Ok(listener)
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().context(USAGE)?;
    let opts = Opts::parse(args).context(USAGE)?;
    if let Some(name) = &opts.name {
        set_name(name)?;
    }
    // Before any socket or thread: a socket belongs to the namespace it was made in, and a
    // thread starts in its creator's.
    match &opts.netns {
        Some(Netns::New) => new_netns(opts.host)?,
        Some(Netns::Of(path)) => enter_netns(path)?,
        None => {}
    }
    match command.as_str() {
        "close-wait-server" => close_wait_server(&opts),
        "shut-wr-server" => shut_wr_server(&opts),
        "hold-server" => hold_server(&opts),
        "repeat-server" => repeat_server(&opts),
        "echo-server" => echo_server(&opts),
        "prefork-server" => prefork_server(&opts),
        "proxy" => proxy(&opts),
        "client" => client(&opts),
        "pool-leak" => pool_leak(&opts),
        "identity" => identity(&opts),
        "clean-exit" => clean_exit(&opts),
        "exit" => std::process::exit(opts.exit_code),
        "handoff-server" => handoff_server(&opts),
        "dup-server" => dup_server(&opts),
        "scm-server" => scm_server(&opts),
        "scm-receiver" => scm_receiver(&opts),
        "hold-fd" => {
            println!("HOLDING fd={}", opts.fd);
            hold_forever(Vec::new())
        }
        _ => bail!("unknown command {command:?}\n{USAGE}"),
    }
}

/// What the process is called in /proc/PID/comm and in the kernel's records of it.
fn set_name(name: &str) -> Result<()> {
    let name = std::ffi::CString::new(name)?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string, at most 16 bytes of it.
    let ret = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    ensure!(ret == 0, "PR_SET_NAME: {}", io::Error::last_os_error());
    Ok(())
}

/// A network namespace of this process's own, as a container gets: nothing in it but a
/// loopback interface, down until brought up here. Nothing names it, so it goes away with the
/// last process in it, however the test that made it ends.
fn new_netns(host: Option<Ipv4Addr>) -> Result<()> {
    // SAFETY: unshare takes flags only; the process is still single-threaded.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    ensure!(
        ret == 0,
        "unshare(CLONE_NEWNET): {}",
        io::Error::last_os_error()
    );
    // Interfaces are configured through any socket of the namespace; ioctls rather than
    // netlink, as busybox's `ifconfig` does, and no `ip` needed.
    // SAFETY: socket takes integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    ensure!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: the fd was just returned to us and nothing else owns it.
    let control = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut lo = interface_request("lo");
    interface_ioctl(
        &control,
        libc::SIOCGIFFLAGS as libc::Ioctl,
        &mut lo,
        "SIOCGIFFLAGS lo",
    )?;
    // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
    unsafe { lo.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // Up, lo gets 127.0.0.1 and ::1 from the kernel.
    interface_ioctl(
        &control,
        libc::SIOCSIFFLAGS as libc::Ioctl,
        &mut lo,
        "SIOCSIFFLAGS lo up",
    )?;
    if let Some(host) = host {
        // An alias label adds the address beside 127.0.0.1 instead of replacing it.
        let mut alias = interface_request("lo:host");
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(host).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in fits in the union's sockaddr, which is what SIOCSIFADDR reads.
        unsafe { std::ptr::write_unaligned((&raw mut alias.ifr_ifru).cast(), addr) };
        interface_ioctl(
            &control,
            libc::SIOCSIFADDR as libc::Ioctl,
            &mut alias,
            "SIOCSIFADDR",
        )?;
    }
    Ok(())
}

/// An `ifreq` for the interface (or alias) `name`, the rest zero.
fn interface_request(name: &str) -> libc::ifreq {
    // SAFETY: an all-zero ifreq is valid: integers, addresses and a union of them.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    request
}

/// `ioctl(control, request, ifreq)`, which reads and may fill in `ifreq`.
fn interface_ioctl(
    control: &OwnedFd,
    request: libc::Ioctl,
    ifreq: &mut libc::ifreq,
    what: &str,
) -> Result<()> {
    // SAFETY: the interface ioctls read and write at most one ifreq, which lives for the call.
    let ret = unsafe { libc::ioctl(control.as_raw_fd(), request, &raw mut *ifreq) };
    ensure!(ret == 0, "{what}: {}", io::Error::last_os_error());
    Ok(())
}

/// Joins the network namespace at `path`, another process's.
fn enter_netns(path: &str) -> Result<()> {
    let ns = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns takes an fd open for the call's duration and a flag.
    let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(ret == 0, "setns({path}): {}", io::Error::last_os_error());
    Ok(())
}

fn accept(listener: &TcpListener) -> Result<TcpStream> {
    let (stream, peer) = listener.accept().context("accept")?;
    println!("ACCEPTED fd={} peer={peer}", stream.as_raw_fd());
    Ok(stream)
}

/// Never returns, so the sockets it owns are never closed.
fn hold_forever(_sockets: Vec<TcpStream>) -> ! {
    loop {
        thread::park();
    }
}

/// Incident 1: the handler gives up on the connection but forgets to close it.
fn close_wait_server(o: &Opts) -> Result<()> {
    let listener = o.listen()?;
    // Connections queue up in the backlog meanwhile, their request and FIN with them.
    thread::sleep(o.pause);
    let mut held = Vec::with_capacity(o.conns);
    for _ in 0..o.conns {
        let mut stream = accept(&listener)?;
        stream.read_to_end(&mut Vec::new()).context("read")?;
        println!("EOF fd={}", stream.as_raw_fd());
        held.push(stream);
    }
    if let Some(after) = o.release_after {
        thread::sleep(after);
        drop(held);
        println!("RELEASED");
        hold_forever(Vec::new())
    }
    if o.release_on_connect {
        drop(accept(&listener)?);
        drop(held);
        println!("RELEASED");
        hold_forever(Vec::new())
    }
    hold_forever(held)
}

/// Incident 3: reject, half-close, then stop reading before the peer's end-of-stream.
fn shut_wr_server(o: &Opts) -> Result<()> {
    let listener = o.listen()?;
    let mut stream = accept(&listener)?;
    stream.write_all(REPLY).context("write")?;
    stream.shutdown(Shutdown::Write).context("shutdown")?;
    if o.mode == Mode::ReadThenStop {
        // Like Node.js's paused stream: the late bytes are pulled out of the kernel, and no read
        // returns end-of-stream. Pausing first lets the client's FIN queue up behind its bytes,
        // as when a busy event loop gets to the socket late.
        thread::sleep(o.pause);
        stream.read_exact(&mut vec![0; o.expect]).context("read")?;
        println!("READ {}", o.expect);
    }
    if let Some(after) = o.release_after {
        thread::sleep(after);
        stream.read_to_end(&mut Vec::new()).context("draining")?;
        println!("RELEASED");
    }
    hold_forever(vec![stream])
}

/// Issue 11's attempt to grow root's leaktrace from an unprivileged process: calls on one socket
/// that change nothing after the first, made as fast as the process can.
fn repeat_server(o: &Opts) -> Result<()> {
    let listener = o.listen()?;
    let stream = accept(&listener)?;
    let fd = stream.as_raw_fd();
    // SAFETY: an all-zero sockaddr_storage is valid; getpeername fills at most `len` bytes of it.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&peer))?;
    // SAFETY: `peer` and `len` live for the call, and `len` says how much `peer` can take.
    let ret = unsafe { libc::getpeername(fd, (&raw mut peer).cast(), &mut len) };
    ensure!(ret == 0, "getpeername: {}", io::Error::last_os_error());
    for _ in 0..o.calls {
        // SAFETY: the kernel reads `len` bytes of `peer`, which lives for the call.
        let ret = unsafe { libc::connect(fd, (&raw const peer).cast(), len) };
        let error = io::Error::last_os_error();
        ensure!(
            ret == -1 && error.raw_os_error() == Some(libc::EISCONN),
            "connect() of a connected socket: {ret}, {error}"
        );
    }
    for _ in 0..o.calls {
        // SAFETY: dup of an fd this process owns; the copy is closed right away, by us alone.
        let copy = unsafe { libc::dup(fd) };
        ensure!(copy >= 0, "dup: {}", io::Error::last_os_error());
        // SAFETY: `copy` is a fresh fd nobody else owns.
        drop(unsafe { OwnedFd::from_raw_fd(copy) });
    }
    stream.shutdown(Shutdown::Write).context("shutdown")?;
    for _ in 1..o.calls {
        // Once the peer's FIN ends the connection it says ENOTCONN, and changes nothing either.
        let _ = stream.shutdown(Shutdown::Write);
    }
    println!("REPEATED fd={fd}");
    hold_forever(vec![stream])
}

/// Incident 4's "can't identify protocol" fds: the server keeps every connection's fd without
/// ever reading, so when the peer ends the connection (a reset, here) the fd outlives it.
fn hold_server(o: &Opts) -> Result<()> {
    let listener = o.listen()?;
    let mut held = Vec::new();
    loop {
        let mut stream = accept(&listener)?;
        stream.write_all(GREETING).context("write")?;
        held.push(stream);
    }
}

fn echo_server(o: &Opts) -> Result<()> {
    let listener = o.listen()?;
    let close_first = o.close_first;
    loop {
        let stream = accept(&listener)?;
        thread::spawn(move || {
            if let Err(e) = echo(stream, close_first) {
                eprintln!("echo: {e}");
            }
        });
    }
}

fn prefork_server(o: &Opts) -> Result<()> {
    const WORKERS: usize = 2;
    let listener = o.listen()?;
    // One byte shared by the workers: whoever reads it leaks the connection it has in hand.
    let leak_token = if o.leak_one {
        let (token, mut put) = UnixStream::pair().context("socketpair")?;
        token.set_nonblocking(true)?;
        put.write_all(&[1])?;
        Some(token)
    } else {
        None
    };
    for _ in 0..WORKERS {
        // SAFETY: the fixture has one thread here, and the child only accepts and echoes.
        match unsafe { libc::fork() } {
            -1 => bail!("fork: {}", io::Error::last_os_error()),
            0 => {
                // The test stops the master; its workers go with it.
                // SAFETY: prctl with PR_SET_PDEATHSIG only sets this process's death signal.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                println!("WORKER pid={}", std::process::id());
                let mut leaked = Vec::new();
                loop {
                    let mut stream = accept(&listener)?;
                    if leak_token
                        .as_ref()
                        .is_some_and(|mut token| token.read(&mut [0]).is_ok_and(|n| n == 1))
                    {
                        stream.read_to_end(&mut Vec::new()).context("read")?;
                        println!(
                            "LEAKED fd={} pid={}",
                            stream.as_raw_fd(),
                            std::process::id()
                        );
                        leaked.push(stream);
                    } else {
                        echo(stream, false)?;
                    }
                }
            }
            _ => {}
        }
    }
    loop {
        thread::park();
    }
}

fn echo(mut stream: TcpStream, close_first: bool) -> io::Result<()> {
    let mut buf = [0; 4096];
    loop {
        match stream.read(&mut buf)? {
            0 => return Ok(()),
            n => stream.write_all(&buf[..n])?,
        }
        if close_first {
            return Ok(());
        }
    }
}

fn client(o: &Opts) -> Result<()> {
    ensure!(o.port != 0, "client needs --port");
    let next = AtomicUsize::new(0);
    thread::scope(|s| {
        let workers: Vec<_> = (0..o.concurrency)
            .map(|_| {
                s.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < o.conns {
                        connection(o)?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("client worker panicked"))
    })?;
    println!("DONE");
    Ok(())
}

fn connection(o: &Opts) -> Result<()> {
    let mut stream = TcpStream::connect(o.addr(o.port)).context("connect")?;
    stream.set_read_timeout(Some(CLIENT_IO_TIMEOUT))?;
    println!("CONNECTED local={}", stream.local_addr()?);
    if o.read_line {
        BufReader::new(&stream)
            .read_line(&mut String::new())
            .context("reading the server's first line")?;
    }
    if o.wait_eof {
        stream
            .read_to_end(&mut Vec::new())
            .context("waiting for the server's EOF")?;
    }
    let payload: Vec<u8> = PAYLOAD.iter().copied().cycle().take(o.send).collect();
    stream.write_all(&payload).context("write")?;
    if o.echo {
        let mut back = vec![0; payload.len()];
        stream.read_exact(&mut back).context("reading the echo")?;
        ensure!(back == payload, "echo differs from what was sent");
    }
    if o.wait_close {
        // The server then closed first, for sure.
        stream
            .read_to_end(&mut Vec::new())
            .context("waiting for the server to close")?;
    }
    if o.half_close {
        stream.shutdown(Shutdown::Write).context("shutdown")?;
        if !o.leave {
            stream
                .read_to_end(&mut Vec::new())
                .context("waiting for the server's end after the half-close")?;
        }
    }
    thread::sleep(o.pause);
    if o.reset {
        abort(&stream)?;
    }
    Ok(())
}

/// A proxy that pipes `from.on('data', c => to.write(c))` both ways and never `end`s the
/// upstream. On its client's end it closes the client's side (a pool keeping the upstream
/// connection), or with --hold-half-closed keeps it too (incident 2, Node's `allowHalfOpen`
/// without an 'end' handler). Each connection is piped on a thread of its own, which owns both
/// sockets.
fn proxy(o: &Opts) -> Result<()> {
    ensure!(o.port != 0, "proxy needs --port (the upstream's)");
    let listener = o.listen()?;
    loop {
        let client = accept(&listener)?;
        let upstream = TcpStream::connect(o.addr(o.port)).context("connect upstream")?;
        if o.keepalive {
            set_option(&upstream, libc::SO_KEEPALIVE, 1 as libc::c_int)?;
        }
        println!(
            "UPSTREAM fd={} local={} client_fd={}",
            upstream.as_raw_fd(),
            upstream.local_addr()?,
            client.as_raw_fd()
        );
        let on_end = if o.propagate {
            ClientEnd::Propagate
        } else if o.hold_half_closed {
            ClientEnd::Hold
        } else {
            ClientEnd::Close
        };
        thread::spawn(move || {
            if let Err(e) = pipe(client, upstream, on_end) {
                eprintln!("proxy: {e}");
            }
        });
    }
}

/// What the proxy does with its client's end-of-stream.
#[derive(Clone, Copy)]
enum ClientEnd {
    /// Closes the client's socket and keeps the upstream connection.
    Close,
    /// Keeps the client's socket, half-closed, and does nothing else (incident 2).
    Hold,
    /// Passes it upstream (shutdown SHUT_WR).
    Propagate,
}

/// Copies data both ways until the upstream ends. The client's end-of-stream is handled as
/// `on_end` says; the upstream's end is passed to the client.
fn pipe(client: TcpStream, mut upstream: TcpStream, on_end: ClientEnd) -> io::Result<()> {
    let mut client = Some(client);
    let mut client_readable = true;
    let mut buf = [0; 4096];
    loop {
        let mut fds = vec![pollfd(&upstream)];
        if let Some(client) = client.as_ref().filter(|_| client_readable) {
            fds.push(pollfd(client));
        }
        // SAFETY: `fds` holds `fds.len()` initialized pollfds for the call's duration.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if let (Some(from), Some(polled)) = (client.as_mut(), fds.get(1)) {
            if polled.revents != 0 {
                match (from.read(&mut buf)?, on_end) {
                    (0, ClientEnd::Propagate) => {
                        upstream.shutdown(Shutdown::Write)?;
                        client_readable = false;
                    }
                    (0, ClientEnd::Hold) => {
                        client_readable = false;
                        println!("CLIENT HALF-CLOSED");
                    }
                    (0, ClientEnd::Close) => {
                        client = None;
                        println!("CLIENT CLOSED");
                    }
                    (n, _) => upstream.write_all(&buf[..n])?,
                }
            }
        }
        if fds[0].revents != 0 {
            match upstream.read(&mut buf)? {
                0 => {
                    if let Some(to) = &client {
                        to.shutdown(Shutdown::Write)?;
                    }
                    return Ok(());
                }
                n => {
                    if let Some(to) = client.as_mut() {
                        to.write_all(&buf[..n])?;
                    }
                }
            }
        }
    }
}

fn pollfd(stream: &TcpStream) -> libc::pollfd {
    libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Makes the close that follows send a RST instead of a FIN: `SO_LINGER` on with a zero timeout.
fn abort(stream: &TcpStream) -> Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_option(stream, libc::SO_LINGER, linger)
}

/// `setsockopt(SOL_SOCKET, name, value)`.
fn set_option<T>(stream: &TcpStream, name: libc::c_int, value: T) -> Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of_val(&value))?;
    // SAFETY: the fd is open for the call's duration and the kernel reads `len` bytes of `value`.
    let ret = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw const value).cast(),
            len,
        )
    };
    ensure!(
        ret == 0,
        "setsockopt {name}: {}",
        io::Error::last_os_error()
    );
    Ok(())
}

/// Incident 4's pool: the server end of each connection closes (an idle timeout), the pool never
/// notices, and its connected sockets sit in CLOSE_WAIT until the process exits.
fn pool_leak(o: &Opts) -> Result<()> {
    let listener = TcpListener::bind(o.addr(0)).context("bind")?;
    let port = listener.local_addr()?.port();
    let mut pool = Vec::with_capacity(o.conns);
    for _ in 0..o.conns {
        let stream = TcpStream::connect(o.addr(port)).context("connect")?;
        println!(
            "CONNECTED fd={} local={}",
            stream.as_raw_fd(),
            stream.local_addr()?
        );
        drop(listener.accept().context("accept")?);
        pool.push(stream);
    }
    thread::sleep(o.pause);
    std::process::exit(o.exit_code)
}

/// Who runs this process, which `leaktrace run` chose; then a leak for it to find.
fn identity(o: &Opts) -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> String {
        let values = status.lines().find_map(|line| line.strip_prefix(name));
        values
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(",")
    };
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    println!(
        "IDENTITY pid={} uid={} gid={} groups={} home={} user={} logname={}",
        std::process::id(),
        field("Uid:"),
        field("Gid:"),
        field("Groups:"),
        var("HOME"),
        var("USER"),
        var("LOGNAME")
    );
    pool_leak(o)
}

/// Everything closed as it should be, then the given status: `run` must pass it through.
fn clean_exit(o: &Opts) -> Result<()> {
    let listener = TcpListener::bind(o.addr(0)).context("bind")?;
    let mut client = TcpStream::connect(listener.local_addr()?).context("connect")?;
    let (mut server, _) = listener.accept().context("accept")?;
    client.write_all(PAYLOAD)?;
    client.shutdown(Shutdown::Write)?;
    server.read_to_end(&mut Vec::new())?;
    drop(server);
    client.read_to_end(&mut Vec::new())?;
    drop(client);
    std::process::exit(o.exit_code)
}

/// The owner is whoever holds an fd: the accepting process passes the connection to a child
/// (as a pre-fork server or a supervisor does), drops its own copy, and the child leaks it.
fn handoff_server(o: &Opts) -> Result<()> {
    let listener = o.listen()?;
    let stream = accept(&listener)?;
    let fd = stream.as_raw_fd();
    let child = spawn_inheriting("hold-fd", fd)?;
    println!("HANDED fd={fd} holder={child}");
    drop(stream);
    hold_forever(vec![])
}

/// The owner moves to another fd of the same process: `fcntl(F_DUPFD_CLOEXEC)` (what `dup`
/// and `dup2` amount to) copies the connection's fd to 100 or above, then the accepted fd is
/// closed, and the copy is leaked.
fn dup_server(o: &Opts) -> Result<()> {
    let listener = o.listen()?;
    let stream = accept(&listener)?;
    // SAFETY: fcntl on an fd this process owns; the new fd is owned by `copy` below.
    let copy = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    ensure!(copy >= 0, "F_DUPFD_CLOEXEC: {}", io::Error::last_os_error());
    // SAFETY: `copy` is a fresh fd nobody else owns.
    let copy = unsafe { TcpStream::from_raw_fd(copy) };
    println!(
        "HANDED fd={} holder={}",
        copy.as_raw_fd(),
        std::process::id()
    );
    drop(stream);
    hold_forever(vec![copy])
}

/// Starts this fixture as `command --fd <fd>`, the child inheriting `fd` across exec.
fn spawn_inheriting(command: &str, fd: RawFd) -> Result<u32> {
    // SAFETY: fcntl on an fd this process owns; only the close-on-exec flag changes.
    ensure!(
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == 0,
        "clearing FD_CLOEXEC: {}",
        io::Error::last_os_error()
    );
    let child = std::process::Command::new(std::env::current_exe()?)
        .args([command, "--fd", &fd.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the child")?;
    Ok(child.id())
}

/// The connection travels to another process as an fd in a unix socket message (SCM_RIGHTS),
/// as a connection-passing supervisor or a zero-downtime handover does.
fn scm_server(o: &Opts) -> Result<()> {
    let listener = o.listen()?;
    let stream = accept(&listener)?;
    let (ours, theirs) = UnixStream::pair().context("socketpair")?;
    let child = spawn_inheriting("scm-receiver", theirs.as_raw_fd())?;
    drop(theirs);
    send_fd(&ours, stream.as_raw_fd())?;
    let mut ack = [0u8; 32];
    let n = (&ours).read(&mut ack).context("waiting for the receiver")?;
    // The receiver's fd number, as it holds the socket now.
    println!(
        "HANDED {} holder={child}",
        String::from_utf8_lossy(&ack[..n]).trim()
    );
    drop(stream);
    hold_forever(vec![])
}

fn scm_receiver(o: &Opts) -> Result<()> {
    // SAFETY: the parent passed this fd to us across exec for exactly this use.
    let channel = unsafe { UnixStream::from_raw_fd(o.fd) };
    let fd = receive_fd(&channel)?;
    (&channel).write_all(format!("fd={fd}\n").as_bytes())?;
    hold_forever(vec![])
}

/// A one-byte message with room for one fd in its control data, handed to `use_message` while
/// its buffers live: sendmsg and recvmsg need the same setup.
fn with_fd_message<T>(use_message: impl FnOnce(&mut libc::msghdr) -> Result<T>) -> Result<T> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; its pointers are set to the live buffers above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // These lengths are size_t in glibc and socklen_t in musl (the VM tests' build).
    msg.msg_controllen = space as _;
    use_message(&mut msg)
}

fn send_fd(channel: &UnixStream, fd: RawFd) -> Result<()> {
    with_fd_message(|msg| {
        // SAFETY: the control buffer has room for one fd's header and data.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
            ensure!(
                libc::sendmsg(channel.as_raw_fd(), msg, 0) == 1,
                "sendmsg: {}",
                io::Error::last_os_error()
            );
        }
        Ok(())
    })
}

fn receive_fd(channel: &UnixStream) -> Result<RawFd> {
    with_fd_message(|msg| {
        // SAFETY: the kernel fills the control buffer with at most its length.
        unsafe {
            ensure!(
                libc::recvmsg(channel.as_raw_fd(), msg, 0) == 1,
                "recvmsg: {}",
                io::Error::last_os_error()
            );
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            ensure!(
                !cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS,
                "no fd in the message"
            );
            Ok(std::ptr::read_unaligned(
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            ))
        }
    })
}
