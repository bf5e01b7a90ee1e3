//! Ground truth that does not depend on leaktrace: the kernel's TCP tables in /proc, a process's
//! name, and the state of the socket behind one of its fds.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{ensure, Context, Result};

/// TCP state codes, as in /proc/net/tcp and `tcp_info.tcpi_state`.
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_CLOSE: u8 = 0x07;
pub const TCP_CLOSE_WAIT: u8 = 0x08;

/// How many of the connections from `peers` (the clients' ends, as `ClientRun::local_addrs`
/// gives them) to local port `port` the kernel lists in `state` (a /proc/net/tcp state code),
/// IPv4 and IPv6: ground truth that does not depend on leaktrace. The peers matter: a server's
/// port comes from the ephemeral range, and on a busy machine another process's outgoing
/// connection can use the same local port number.
pub fn kernel_sockets(port: u16, peers: &[String], state: u8) -> Result<usize> {
    let peer_ports: BTreeSet<u16> = peers
        .iter()
        .map(|peer| {
            peer.rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .with_context(|| format!("not an address: {peer:?}"))
        })
        .collect::<Result<_>>()?;
    Ok(kernel_tcp_table()?
        .into_iter()
        .filter(|s| s.local_port == port && s.state == state && peer_ports.contains(&s.remote_port))
        .count())
}

/// How many connections to remote port `port` (a local server's, on loopback) the kernel lists
/// in `state`, IPv4 and IPv6.
pub fn kernel_connections_to(port: u16, state: u8) -> Result<usize> {
    Ok(kernel_tcp_table()?
        .into_iter()
        .filter(|s| s.remote_port == port && s.state == state)
        .count())
}

/// A row of /proc/net/tcp{,6}.
struct KernelSocket {
    local_port: u16,
    remote_port: u16,
    state: u8,
}

fn kernel_tcp_table() -> Result<Vec<KernelSocket>> {
    let hex_port = |field: Option<&&str>| {
        field
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).with_context(|| format!("read {table}"))?;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let row = hex_port(fields.get(1))
                .zip(hex_port(fields.get(2)))
                .zip(fields.get(3).and_then(|s| u8::from_str_radix(s, 16).ok()));
            let ((local_port, remote_port), state) =
                row.with_context(|| format!("unexpected line in {table}: {line:?}"))?;
            sockets.push(KernelSocket {
                local_port,
                remote_port,
                state,
            });
        }
    }
    Ok(sockets)
}

/// The process name leaktrace should report for `pid`.
pub fn comm(pid: u32) -> Result<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    Ok(comm.trim_end().to_owned())
}

/// The TCP state and the count of received but unread bytes of the socket behind `fd` in
/// process `pid`: ground truth for a socket that `ss` no longer lists because its connection
/// is over (state CLOSE) while the process still holds the fd.
pub fn kernel_socket(pid: u32, fd: i64) -> Result<(u8, usize)> {
    let (pid, fd) = (libc::pid_t::try_from(pid)?, RawFd::try_from(fd)?);
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    ensure!(
        pidfd >= 0,
        "pidfd_open({pid}): {}",
        io::Error::last_os_error()
    );
    // SAFETY: the fd was just returned to us and nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(RawFd::try_from(pidfd)?) };
    // SAFETY: as above; the copy shares the socket without consuming anything from it.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    ensure!(
        copy >= 0,
        "pidfd_getfd({pid}, {fd}): {}",
        io::Error::last_os_error()
    );
    // SAFETY: as above.
    let copy = unsafe { OwnedFd::from_raw_fd(RawFd::try_from(copy)?) };
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer.
    let ret = unsafe { libc::ioctl(copy.as_raw_fd(), libc::FIONREAD, &mut unread) };
    ensure!(ret == 0, "FIONREAD: {}", io::Error::last_os_error());
    // SAFETY: tcp_info is plain integers, for which all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&info))?;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let ret = unsafe {
        libc::getsockopt(
            copy.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    ensure!(ret == 0, "TCP_INFO: {}", io::Error::last_os_error());
    Ok((info.tcpi_state, usize::try_from(unread)?))
}
