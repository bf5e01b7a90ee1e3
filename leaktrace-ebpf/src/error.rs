/// Why a handler gave up on an event. Handlers return it so each failure path is named; the
/// program entry points turn every variant into "no record" (a reservation failure is counted
/// separately, in `LOST`).
#[derive(Clone, Copy, Debug)]
pub enum ProbeError {
    /// `bpf_probe_read_kernel` failed on a kernel pointer.
    Read,
    /// The fd does not name a TCP socket (or names no open file).
    NotTcpSocket,
    /// A syscall's exit had no matching entry (attached mid-call).
    NoPendingCall,
    /// The socket is not owned by a traced process.
    Filtered,
    /// Userspace has not filled `CONFIG` yet.
    NotConfigured,
}

pub type ProbeResult = Result<(), ProbeError>;
