//! SO_REUSEPORT listeners: several sockets, of one process or several, listening on one address
//! and port, among which the kernel spreads new connections (a server's workers, or a second
//! instance of it started beside the first for a zero-downtime restart).

use std::io;
use std::net::{SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Listens on `addr` with SO_REUSEPORT, joining the listeners there that set it too (as the
/// same user).
pub fn reuseport_listener(addr: SocketAddrV4) -> io::Result<TcpListener> {
    // SAFETY: socket takes integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    set_option(socket.as_raw_fd(), libc::SO_REUSEPORT, 1 as libc::c_int)?;
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = libc::socklen_t::try_from(std::mem::size_of_val(&sin)).expect("a sockaddr_in");
    // SAFETY: the kernel reads `len` bytes of `sin`, which lives for the call.
    if unsafe { libc::bind(socket.as_raw_fd(), (&raw const sin).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen takes an fd open for the call's duration and a backlog.
    if unsafe { libc::listen(socket.as_raw_fd(), 128) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(socket))
}

/// Sends every new connection to the listeners of `listener`'s group to the group's first
/// listener (the one that listened first), rather than spreading them by a hash of their
/// addresses: a classic BPF program that returns index 0 for every connection.
pub fn steer_to_first_listener(listener: &TcpListener) -> io::Result<()> {
    let mut program = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let filter = libc::sock_fprog {
        len: 1,
        filter: program.as_mut_ptr(),
    };
    set_option(listener.as_raw_fd(), libc::SO_ATTACH_REUSEPORT_CBPF, filter)
}

/// `setsockopt(SOL_SOCKET, name, value)`.
fn set_option<T>(fd: RawFd, name: libc::c_int, value: T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of_val(&value)).expect("a small option");
    // SAFETY: the kernel reads `len` bytes of `value`, which lives for the call, and what it
    // points to (the filter's program) outlives it too.
    let ret =
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, name, (&raw const value).cast(), len) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
