//! When a connection last carried data, and whether the kernel keeps a timer on it, without a
//! hook on every packet: the kernel's own socket table, read with netlink sock_diag (what `ss -tio`
//! shows). `tcp_info` says how long ago data last went either way, and the timer field whether a
//! keepalive (or a retransmission) is pending; an idle socket with SO_KEEPALIVE always has its
//! keepalive timer armed. One dump answers for every socket, and sock_diag has been stable since
//! long before the oldest kernel leaktrace supports.
use std::io;
use std::mem::offset_of;
use std::net::SocketAddr;
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

/// A timer the kernel keeps on a connection: something will happen on it even if neither side
/// sends anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelTimer {
    Keepalive,
    /// Retransmission or zero-window probing: data is still on its way.
    Other,
}

/// One connection as the kernel's socket table shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The socket file's inode, 0 for a socket no file refers to any more.
    pub ino: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// How long ago data last went either way.
    pub idle: Duration,
    pub timer: Option<KernelTimer>,
}

/// Where samples come from: [`sample`], or what a test makes up.
pub type Sampler = dyn FnMut() -> io::Result<Vec<Sample>> + Send;

/// Every TCP connection of this network namespace in ESTABLISHED or FIN_WAIT2, the states in
/// which a connection can sit idle with no end in sight (CLOSE_WAIT is `close_wait`'s).
pub fn sample() -> io::Result<Vec<Sample>> {
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

        let samples = sample().unwrap();
        let quiet = find(&samples, &client);
        let guarded = find(&samples, &server);
        assert_eq!(quiet.timer, None);
        assert_eq!(guarded.timer, Some(KernelTimer::Keepalive));
        for s in [quiet, guarded] {
            assert!(
                s.idle >= Duration::from_millis(250) && s.idle < Duration::from_secs(10),
                "{s:?}"
            );
            assert_ne!(s.ino, 0);
        }
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
