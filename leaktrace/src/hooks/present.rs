//! Sockets that predate the trace: a process that has leaked for hours already holds its stuck
//! sockets when leaktrace starts. Each socket fd of the traced processes is duplicated into
//! leaktrace (pidfd_getfd) and named to the `present` program through a `getsockname` on the
//! duplicate; the program records the socket's present state and binds it to its owner in the
//! kernel, so its later transitions join the same timeline. Unlike a sock_diag dump, this also
//! finds sockets whose connection already finished (CLOSE) but whose fd is still held: exactly
//! the shape of a half-close leak. The program's syscall tracepoint is attached only during
//! this scan: left attached, it would put every syscall on the host on the kernel's slow path.
use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, MapData},
    programs::TracePoint,
    Ebpf,
};
use leaktrace_common::PresentRequest;
use procfs::{
    process::{FDTarget, Process},
    ProcError,
};

use crate::host::pidfd::{pidfd_getfd, pidfd_open};
use crate::stop;

/// What the scan of present sockets found, for the startup log.
#[derive(Debug, Default)]
pub(crate) struct PresentFound {
    /// Socket fds named to the kernel (TCP or not: the kernel tells).
    pub sockets: usize,
    /// Processes that could not be inspected, with the first reason. One that exited since it
    /// was listed is not among them: it held nothing any more.
    pub failed: usize,
    pub first_failure: Option<String>,
}

/// The tracepoint the `present` program runs on, on leaktrace's own calls.
pub(crate) const PRESENT_HOOK: (&str, &str) = ("syscalls", "sys_enter_getsockname");

/// Records every TCP socket the processes `pids` (all processes if empty) hold now, calling
/// `drain` after every `batch` sockets: a host may hold more than the ring buffer can take at
/// once.
pub(crate) fn record_present(
    ebpf: &mut Ebpf,
    pids: &[u32],
    batch: usize,
    drain: &mut dyn FnMut(),
) -> Result<PresentFound> {
    let mut request: Array<MapData, PresentRequest> = Array::try_from(
        ebpf.take_map("PRESENT_REQUEST")
            .ok_or_else(|| anyhow!("PRESENT_REQUEST map missing"))?,
    )?;
    let program: &mut TracePoint = ebpf
        .program_mut("present")
        .ok_or_else(|| anyhow!("program present missing from the eBPF object"))?
        .try_into()?;
    program.load().context("loading the present program")?;
    let link = program
        .attach(PRESENT_HOOK.0, PRESENT_HOOK.1)
        .context("attaching the present program")?;
    let mut batches = Batches {
        size: batch.max(1),
        left: batch.max(1),
        drain,
    };
    let found = record_present_in(&mut request, pids, &mut batches);
    program
        .detach(link)
        .context("detaching the present program")?;
    found
}

/// Counts the sockets recorded as present down to the next drain of the ring buffer.
struct Batches<'a> {
    size: usize,
    left: usize,
    drain: &'a mut dyn FnMut(),
}

impl Batches<'_> {
    fn recorded_one(&mut self) {
        self.left -= 1;
        if self.left == 0 {
            (self.drain)();
            self.left = self.size;
        }
    }
}

fn record_present_in(
    request: &mut Array<MapData, PresentRequest>,
    pids: &[u32],
    batches: &mut Batches<'_>,
) -> Result<PresentFound> {
    let own = std::process::id();
    let pids: Vec<u32> = if pids.is_empty() {
        procfs::process::all_processes()
            .context("listing processes")?
            .filter_map(|p| p.ok().map(|p| p.pid as u32))
            .collect()
    } else {
        pids.to_vec()
    };
    let mut found = PresentFound::default();
    for pid in pids.into_iter().filter(|&pid| pid != own) {
        // With many sockets the scan takes seconds; a stop signal ends startup without waiting.
        if stop::held().is_some() {
            break;
        }
        match record_present_of(request, pid, &mut found, batches) {
            Err(e) if !exited(&e) => {
                found.failed += 1;
                found
                    .first_failure
                    .get_or_insert_with(|| format!("pid {pid}: {e:#}"));
            }
            // PresentFound, or exited since the listing with nothing left to record.
            Ok(()) | Err(_) => {}
        }
    }
    Ok(found)
}

/// Whether `e` says the process is gone: on a busy host, processes exit between the listing
/// and their turn all the time, and that hides nothing.
fn exited(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        // procfs reads ESRCH, as well as a missing /proc/PID, as NotFound.
        matches!(cause.downcast_ref(), Some(ProcError::NotFound(_)))
            || cause
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.raw_os_error() == Some(libc::ESRCH))
    })
}

fn record_present_of(
    request: &mut Array<MapData, PresentRequest>,
    pid: u32,
    found: &mut PresentFound,
    batches: &mut Batches<'_>,
) -> Result<()> {
    let process = Process::new(pid as i32)?;
    let socket_fds: Vec<RawFd> = process
        .fd()?
        .filter_map(|fd| fd.ok())
        .filter(|fd| matches!(fd.target, FDTarget::Socket(_)))
        .map(|fd| fd.fd)
        .collect();
    if socket_fds.is_empty() {
        return Ok(());
    }
    let pidfd = pidfd_open(pid).context("pidfd_open")?;
    for fd in socket_fds {
        let duplicate = match pidfd_getfd(&pidfd, fd) {
            Ok(duplicate) => duplicate,
            // Closed since the listing: nothing to record.
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => continue,
            // Refused (EPERM under Yama's ptrace_scope 3 or an LSM) or out of fds: that socket
            // goes unseen, which the warning must say; ESRCH, the process exited, is no failure.
            Err(e) => return Err(anyhow::Error::new(e).context(format!("pidfd_getfd of fd {fd}"))),
        };
        request.set(
            0,
            PresentRequest {
                owner_tgid: pid,
                owner_fd: fd,
            },
            0,
        )?;
        trigger_present_record(&duplicate);
        found.sockets += 1;
        batches.recorded_one();
    }
    Ok(())
}

/// The `present` program runs on this syscall; its result does not matter.
fn trigger_present_record(duplicate: &OwnedFd) {
    // SAFETY: sockaddr_storage is plain data, for which all zeros is a valid value.
    let mut address: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length for the duration of the call.
    unsafe {
        libc::getsockname(
            duplicate.as_raw_fd(),
            (&raw mut address).cast(),
            &mut length,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past any pid_max (2^22 at most): no process has it.
    const GONE: u32 = i32::MAX as u32;

    #[test]
    fn a_process_that_exited_is_no_failure() {
        let listed = Process::new(GONE as i32)
            .map(drop)
            .map_err(anyhow::Error::from);
        assert!(exited(&listed.unwrap_err()));
        let opened = pidfd_open(GONE).map(drop).context("pidfd_open");
        assert!(exited(&opened.unwrap_err()));
    }

    #[test]
    fn a_refusal_is_a_failure() {
        let refused = anyhow::Error::new(io::Error::from_raw_os_error(libc::EPERM))
            .context("pidfd_getfd of fd 7");
        assert!(!exited(&refused));
        let unreadable: anyhow::Error = ProcError::PermissionDenied(None).into();
        assert!(!exited(&unreadable));
    }
}
