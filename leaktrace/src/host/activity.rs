//! When a connection last carried data, and whether the kernel keeps a timer on it, without a
//! hook on every packet: the kernel's own socket table, read with netlink sock_diag (what `ss -tio`
//! shows). `tcp_info` says how long ago data last went either way, and the timer field whether a
//! keepalive (or a retransmission) is pending; an idle socket with SO_KEEPALIVE always has its
//! keepalive timer armed. One dump answers for every socket, and sock_diag has been stable since
//! long before the oldest kernel leaktrace supports.
//!
//! Its TCP part (inet_diag, tcp_diag) is a loadable module on many distributions' kernels, Debian's
//! among them; where it is neither loaded nor loadable, each socket of interest is read through a
//! duplicate of its owner's fd instead (`TCP_INFO`, `SO_KEEPALIVE`).
use std::collections::HashSet;
use std::io;
use std::mem::offset_of;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

use super::pidfd::{pidfd_getfd, pidfd_open};

/// A timer the kernel keeps on a connection: something will happen on it even if neither side
/// sends anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelTimer {
    Keepalive,
    /// Retransmission or zero-window probing: data is still on its way.
    Other,
}

/// One connection as the kernel's socket table shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    /// The socket file's inode, 0 for a socket no file refers to any more.
    pub ino: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// How long ago data last went either way.
    pub idle: Duration,
    pub timer: Option<KernelTimer>,
}

/// A socket whose traffic is wanted: where its owner holds it, and what the timeline knows of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub pid: u32,
    pub fd: i32,
    pub ino: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Up to this many sockets are read through their fds: a sock_diag dump walks every TCP socket
/// of the host, TIME_WAIT ones included, which on a host churning connections costs far more
/// than a few `getsockopt` calls.
const THROUGH_FDS_AT_MOST: usize = 32;

/// Reads connections' traffic and timers. Once the kernel said it has no TCP part of sock_diag
/// (ENOENT: the module is not loaded and could not be), it is not asked again, nor made to try
/// its module loader every second.
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    diag_missing: bool,
}

impl Sampler {
    /// The wanted sockets' samples, and maybe others': through their fds when they are few, else
    /// from sock_diag. The dump covers leaktrace's network namespace only, so the wanted sockets
    /// it lacks (a traced process in a container's namespace) are read through their fds too.
    pub(crate) fn sample(&mut self, wanted: &[Wanted]) -> io::Result<Vec<Sample>> {
        let diag_error = if self.diag_missing || wanted.len() <= THROUGH_FDS_AT_MOST {
            None
        } else {
            match sock_diag() {
                Ok(mut samples) => {
                    let dumped: HashSet<u64> = samples.iter().map(|s| s.ino).collect();
                    let elsewhere: Vec<Wanted> = wanted
                        .iter()
                        .filter(|w| !dumped.contains(&w.ino))
                        .copied()
                        .collect();
                    samples.extend(through_fds(&elsewhere)?);
                    return Ok(samples);
                }
                Err(e) => {
                    self.diag_missing = e.raw_os_error() == Some(libc::ENOENT);
                    Some(e)
                }
            }
        };
        through_fds(wanted).map_err(|e| match diag_error {
            Some(diag_error) => io::Error::other(format!("sock_diag: {diag_error}; {e}")),
            None => e,
        })
    }
}

fn through_fds(wanted: &[Wanted]) -> io::Result<Vec<Sample>> {
    let mut samples = Vec::with_capacity(wanted.len());
    for socket in wanted {
        match through_fd(socket) {
            Ok(Some(sample)) => samples.push(sample),
            // The owner closed the fd or exited since: nothing left to sample.
            Ok(None) => {}
            Err(e) => {
                return Err(io::Error::other(format!(
                    "through pid {} fd {}: {e}",
                    socket.pid, socket.fd
                )))
            }
        }
    }
    Ok(samples)
}

/// Every TCP connection of this network namespace in ESTABLISHED or FIN_WAIT2, the states in
/// which a connection can sit idle with no end in sight (CLOSE_WAIT is `close_wait`'s).
fn sock_diag() -> io::Result<Vec<Sample>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut samples = Vec::new();
    for (family, socket_id) in [
        (AF_INET, SocketId::new_v4()),
        (AF_INET6, SocketId::new_v6()),
    ] {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::INFO,
                states: StateFlags::ESTABLISHED | StateFlags::FIN_WAIT2,
                socket_id,
            })
            .into(),
        );
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        socket.send(&buf, 0)?;
        read_dump(&socket, &mut samples)?;
    }
    Ok(samples)
}

/// Reads one dump's replies up to its end marker.
fn read_dump(socket: &Socket, samples: &mut Vec<Sample>) -> io::Result<()> {
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        let mut rest = &datagram[..];
        while !rest.is_empty() {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(rest)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    samples.extend(parse(&response));
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::from_raw_os_error(-e.raw_code()));
                }
                _ => {}
            }
            // Messages are padded to 4 bytes; a zero length would never advance.
            let advance = length.next_multiple_of(4);
            if advance == 0 || advance > rest.len() {
                break;
            }
            rest = &rest[advance..];
        }
    }
}

/// The sample for one reply; `None` without the `tcp_info` it was asked to carry.
fn parse(response: &InetResponse) -> Option<Sample> {
    let id = &response.header.socket_id;
    let info = response.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(bytes) => Some(bytes.as_slice()),
        _ => None,
    })?;
    let timer = response
        .header
        .timer
        .as_ref()
        .and_then(|timer| match timer {
            Timer::KeepAlive(_) => Some(KernelTimer::Keepalive),
            Timer::Retransmit(..) | Timer::Probe(_) => Some(KernelTimer::Other),
            Timer::TimeWait => None,
        });
    Some(Sample {
        ino: u64::from(response.header.inode),
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        idle: idle(info)?,
        timer,
    })
}

/// One socket read through a duplicate of its owner's fd; `None` if that fd no longer holds it.
/// The duplicate lives for a few syscalls only: a close(2) by the owner meanwhile would find the
/// socket still referenced and release nothing, its release then coming from leaktrace's own
/// close of the duplicate.
fn through_fd(socket: &Wanted) -> io::Result<Option<Sample>> {
    let gone = |e: &io::Error| matches!(e.raw_os_error(), Some(libc::ESRCH | libc::EBADF));
    let pidfd = match pidfd_open(socket.pid) {
        Ok(pidfd) => pidfd,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let duplicate = match pidfd_getfd(&pidfd, socket.fd) {
        Ok(duplicate) => duplicate,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: an all-zero stat is valid; fstat fills it for an open fd.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer for the call's duration.
    if unsafe { libc::fstat(duplicate.as_raw_fd(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The fd number was reused for another file since.
    if stat.st_ino != socket.ino {
        return Ok(None);
    }
    // SAFETY: tcp_info is plain integers, for which all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    get_option(&duplicate, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    let mut keepalive: libc::c_int = 0;
    get_option(
        &duplicate,
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        &mut keepalive,
    )?;
    let timer = if keepalive != 0 {
        Some(KernelTimer::Keepalive)
    } else if info.tcpi_unacked > 0 {
        // Unacknowledged data: the retransmission timer runs.
        Some(KernelTimer::Other)
    } else {
        None
    };
    let last = info.tcpi_last_data_sent.min(info.tcpi_last_data_recv);
    Ok(Some(Sample {
        ino: socket.ino,
        local: socket.local,
        remote: socket.remote,
        idle: Duration::from_millis(u64::from(last)),
        timer,
    }))
}

/// `getsockopt(level, name)` into `value`; the kernel writes at most its size.
fn get_option<T>(
    fd: impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<()> {
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<T>()).map_err(io::Error::other)?;
    // SAFETY: valid fd, and `value` has room for `len` bytes for the call's duration.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (value as *mut T).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Since the last data sent or received, from `tcp_info`. Read at the uapi struct's offsets
/// rather than as a whole struct: its length grows with every kernel, and these fields sit in
/// the part every kernel has.
fn idle(tcp_info: &[u8]) -> Option<Duration> {
    let field = |offset: usize| {
        let bytes = tcp_info.get(offset..offset + 4)?;
        Some(u32::from_ne_bytes(bytes.try_into().ok()?))
    };
    let sent = field(offset_of!(libc::tcp_info, tcpi_last_data_sent))?;
    let received = field(offset_of!(libc::tcp_info, tcpi_last_data_recv))?;
    Some(Duration::from_millis(u64::from(sent.min(received))))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    fn keepalive(stream: &TcpStream) {
        let on: libc::c_int = 1;
        // SAFETY: the fd is open for the call and the kernel reads one c_int.
        let ret = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_KEEPALIVE,
                (&raw const on).cast(),
                std::mem::size_of_val(&on) as libc::socklen_t,
            )
        };
        assert_eq!(ret, 0, "{}", io::Error::last_os_error());
    }

    fn find(samples: &[Sample], stream: &TcpStream) -> Sample {
        let (local, remote) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
        *samples
            .iter()
            .find(|s| s.local == local && s.remote == remote)
            .unwrap_or_else(|| panic!("{local} -> {remote} not sampled: {samples:?}"))
    }

    #[test]
    fn samples_this_process_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        keepalive(&server);
        client.write_all(b"ping").unwrap();
        server.read_exact(&mut [0; 4]).unwrap();
        std::thread::sleep(Duration::from_millis(300));

        let diag = sock_diag().unwrap();
        let wanted: Vec<Wanted> = [&client, &server]
            .iter()
            .map(|stream| Wanted {
                pid: std::process::id(),
                fd: stream.as_raw_fd(),
                ino: inode_of(stream),
                local: stream.local_addr().unwrap(),
                remote: stream.peer_addr().unwrap(),
            })
            .collect();
        let by_fd: Vec<Sample> = wanted
            .iter()
            .map(|w| through_fd(w).unwrap().expect("the fd holds the socket"))
            .collect();
        // Both ways tell the same.
        for samples in [diag, by_fd] {
            let quiet = find(&samples, &client);
            let guarded = find(&samples, &server);
            assert_eq!(quiet.timer, None);
            assert_eq!(guarded.timer, Some(KernelTimer::Keepalive));
            for (s, stream) in [(quiet, &client), (guarded, &server)] {
                assert!(
                    s.idle >= Duration::from_millis(250) && s.idle < Duration::from_secs(10),
                    "{s:?}"
                );
                assert_eq!(s.ino, inode_of(stream));
            }
        }
        // An fd that now holds another file is not the socket wanted.
        let reused = Wanted {
            ino: wanted[0].ino + 1,
            ..wanted[0]
        };
        assert_eq!(through_fd(&reused).unwrap(), None);
    }

    #[test]
    fn sockets_the_dump_lacks_are_read_through_their_fds() {
        // Stands in for a socket in another network namespace: one in CLOSE_WAIT, a state the
        // dump leaves out.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let wanted = Wanted {
            pid: std::process::id(),
            fd: server.as_raw_fd(),
            ino: inode_of(&server),
            local: server.local_addr().unwrap(),
            remote: server.peer_addr().unwrap(),
        };
        let samples = Sampler::default().sample(&[wanted]).unwrap();
        let found: Vec<&Sample> = samples.iter().filter(|s| s.ino == wanted.ino).collect();
        assert_eq!(found.len(), 1, "{samples:?}");
        assert_eq!((found[0].local, found[0].timer), (wanted.local, None));
    }

    fn inode_of(stream: &TcpStream) -> u64 {
        // SAFETY: an all-zero stat is valid; fstat fills it for an open fd.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and pointer for the call's duration.
        assert_eq!(unsafe { libc::fstat(stream.as_raw_fd(), &mut stat) }, 0);
        stat.st_ino
    }

    #[test]
    fn idle_is_the_later_of_the_last_send_and_receive() {
        // SAFETY: tcp_info is plain integers, for which all-zero is valid.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        (info.tcpi_last_data_sent, info.tcpi_last_data_recv) = (1500, 40);
        // SAFETY: reading the bytes of a plain integer struct.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const info).cast::<u8>(), size_of_val(&info))
        };
        assert_eq!(idle(bytes), Some(Duration::from_millis(40)));
        // An older kernel's shorter struct still has the fields; a truncated one does not.
        assert_eq!(idle(&bytes[..64]), Some(Duration::from_millis(40)));
        assert_eq!(idle(&bytes[..50]), None);
    }
}
