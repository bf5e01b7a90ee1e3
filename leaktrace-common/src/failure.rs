//! Probe failures: what the programs count when they cannot do their work.

/// Why a program could not do its work, counted per CPU in the `PROBE_FAILURES` map (indexed by
/// the discriminant) and shown in the summary and the metrics: a failure must never be silent.
/// Filtered events and fds that are not TCP sockets are outcomes, not failures, and not counted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeFailure {
    /// `bpf_probe_read_kernel` failed on a kernel pointer. (A direct load in a BTF-typed program
    /// reads zeros on a fault and says nothing: those cannot be counted.)
    Read = 0,
    /// The socket map was full: a socket of a traced process is not followed.
    SocketMapFull = 1,
    /// The traced-process map was full: a child of a traced process is not traced.
    TargetMapFull = 2,
    /// A classic tracepoint's record could not be read: the event it reports is not handled.
    TracepointArgs = 3,
    /// `bpf_get_current_comm` failed: the record names no command.
    Comm = 4,
}

impl ProbeFailure {
    pub const ALL: [ProbeFailure; 5] = [
        Self::Read,
        Self::SocketMapFull,
        Self::TargetMapFull,
        Self::TracepointArgs,
        Self::Comm,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The name the summary and the metrics use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::SocketMapFull => "socket_map_full",
            Self::TargetMapFull => "target_map_full",
            Self::TracepointArgs => "tracepoint_args",
            Self::Comm => "comm",
        }
    }
}
