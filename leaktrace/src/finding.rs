//! What the detectors tell the outputs: a leak found, with everything a user checks about it,
//! or a leak that stopped holding. Below both, so the outputs need nothing of how leaks are found.
use std::net::SocketAddr;
use std::time::Duration;

use crate::decoder::{Event, SockKey};
use crate::placement::Placement;
use crate::timeline::Partner;

/// A leak class, known by the name the text report, the JSON and the metrics give it. Each
/// class's file in `detect` makes its own (`KIND`); how it is found, how its findings read and
/// the order of the classes are `detect::CLASSES`'s (which also orders kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeakKind(&'static str);

impl LeakKind {
    pub(crate) const fn named(name: &'static str) -> Self {
        Self(name)
    }

    /// What the text report, the JSON and the metrics call the class.
    pub fn name(self) -> &'static str {
        self.0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: LeakKind,
    pub sock: SockKey,
    pub pid: u32,
    /// "?" when neither the records nor /proc named the process.
    pub comm: String,
    /// Where the process runs: cgroup, container or unit, network namespace.
    pub placement: Placement,
    pub fd: Option<i32>,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// The owner accepted the connection (`Some(true)`) or made it.
    pub accepted: Option<bool>,
    pub state: &'static str,
    pub unread_bytes: u32,
    pub eof_unread: bool,
    /// Data the peer sent after the owner's shutdown; `None` when tracing did not see the
    /// shutdown (none, or before tracing started): what arrived after it is unknown.
    pub bytes_after_shutdown: Option<u32>,
    /// How long the condition has held.
    pub age: Duration,
    /// The condition already held when tracing started: `age` is a lower bound.
    pub age_at_least: bool,
    pub timeline: Vec<Event>,
    /// Reads and arrivals the timeline left out to bound memory.
    pub elided: u64,
    /// `idle_half_closed` only: the other socket of the proxied pair, whose peer half-closed.
    pub partner: Option<Partner>,
    /// `close_wait` of a connection the process made: how many it holds in CLOSE_WAIT to the
    /// same remote, this one included (see [`Store::close_waits_to`]).
    pub close_waits_to_remote: Option<u32>,
}

impl Finding {
    /// The fd by which the process behind `event` holds the socket, where that is the owner's:
    /// the kernel side names no fds, /proc named the owner's.
    pub fn fd_of(&self, event: &Event) -> Option<i32> {
        (event.task.tgid == self.pid).then_some(self.fd).flatten()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub kind: LeakKind,
    /// The socket of the finding this resolves.
    pub sock: SockKey,
    pub pid: u32,
    pub fd: Option<i32>,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub accepted: Option<bool>,
    pub how: Resolution,
}

/// What ended a leak; the outputs put it in words (see [`crate::format::how_resolved`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Resolution {
    /// Every class: the owner exited, and nobody else holds the socket.
    OwnerExited,
    /// Every class: /proc shows the socket no longer held, its close among the lost records.
    ClosedUnrecorded,
    /// Every class: the owner closed it.
    Closed,
    /// Every class: the kernel destroyed the socket.
    Destroyed,
    /// Another class describes the socket now.
    Superseded,
    /// An end only one class has: declared in its file, listed in its `CLASS`.
    Class(ClassEnd),
}

/// An end of one leak class's own, by the word the text report and the JSON's `how` give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ClassEnd(&'static str);

impl ClassEnd {
    pub(crate) const fn named(word: &'static str) -> Self {
        Self(word)
    }

    pub(crate) fn word(self) -> &'static str {
        self.0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Boxed: a finding carries its timeline and where its owner runs, several times the size
    /// of a resolution.
    Leak(Box<Finding>),
    Resolved(Resolved),
}
