//! Numbers the Linux ABI fixes, spelled once for both sides.

/// TCP states as the kernel numbers and spells them (`include/net/tcp_states.h`); the one place
/// that knows these names.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;

    pub const fn name(state: u8) -> &'static str {
        match state {
            ESTABLISHED => "ESTABLISHED",
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            FIN_WAIT1 => "FIN_WAIT1",
            FIN_WAIT2 => "FIN_WAIT2",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            LISTEN => "LISTEN",
            CLOSING => "CLOSING",
            NEW_SYN_RECV => "NEW_SYN_RECV",
            _ => "UNKNOWN",
        }
    }

    /// Whether `old -> new` hands the connection to a timewait socket: the side that closed
    /// first (or both, closing at once) ends this way, and the `struct sock` goes to CLOSE
    /// while `inet_sock_set_state` says nothing of the timewait socket itself.
    pub const fn enters_time_wait(old: u8, new: u8) -> bool {
        new == TIME_WAIT || (new == CLOSE && matches!(old, FIN_WAIT2 | CLOSING))
    }
}

/// `shutdown(2)`'s `how`.
pub mod shutdown_how {
    pub const SHUT_RD: i32 = 0;
    pub const SHUT_WR: i32 = 1;
    pub const SHUT_RDWR: i32 = 2;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
