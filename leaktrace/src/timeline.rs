//! Per-socket timelines: every decoded event lands here, ordered by kernel time, together with the
//! facts the detectors ask about (state, owner, shutdown, close, receive side), and the counts
//! per process and per remote endpoint that outlive the timelines.

mod stats;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use rustc_hash::{FxHashMap, FxHashSet};
use std::net::SocketAddr;

use leaktrace_common::{shutdown_how, tcp_state};

use crate::decoder::{Comm, Event, EventKind, Owner, ReceiveState, SockKey, Task};
use crate::host::Holder;
pub(crate) use crate::host::KernelTimer;
use crate::placement::Placement;
pub(crate) use stats::{Counts, Remote};

/// Entries a socket's timeline usually ends up with (opening, establishment, the peer's or the
/// owner's end, the release), allocated at once.
const TYPICAL_ENTRIES: usize = 6;

/// Entries one timeline keeps. Reads and arrivals on a shut-down socket repeat without bound (a
/// peer streaming into a half-closed connection), and so do state changes of a socket that one
/// process connects and disconnects (`connect(AF_UNSPEC)`) in a loop: past this many entries,
/// events are counted instead of stored, but for the owner's close and the socket's end, so
/// that no socket grows memory without limit and each timeline still shows how it ended.
const MAX_ENTRIES: usize = 1000;

/// How long a dropped timeline's socket is remembered, in kernel time of later records: records
/// from other CPUs can still arrive slightly out of order, and one arriving after the timeline was
/// dropped must not start a bogus new timeline for a dead socket.
const RETIRED_GRACE_NS: u64 = 2_000_000_000;

/// How long a socket whose story ended without a timeline is remembered, in kernel time of later
/// records. A CPU that looked the socket up just before its close made the kernel side forget it
/// still records the state change it was handling (the peer's ACK of the FIN, say), which reaches
/// userspace after the close, possibly in the next read: as the first record of a timeline it
/// would count the connection twice. Shorter than [`RETIRED_GRACE_NS`]: under churn nearly
/// every socket ends this way, and the set stays small enough to stay in cache.
const FINISHED_GRACE_NS: u64 = 500_000_000;

/// How long a timeline stays after its owner closed the socket without the kernel destroying it
/// yet. Every leak class ends with the owner's close, so the rest of the socket's life (FIN_WAIT2
/// waits up to a minute by default, LAST_ACK retransmits) only adds detail no finding will show.
const CLOSED_RETENTION_NS: u64 = 60_000_000_000;

/// How often, in kernel time, the timelines are looked through for ones closed long enough.
const CLOSED_SCAN_EVERY_NS: u64 = 5_000_000_000;

/// Timelines kept by default, whatever the churn: at a few hundred bytes to a few KiB each, tens
/// of MiB. Past it, the least recently active sockets without an open finding are dropped.
pub(crate) const DEFAULT_MAX_SOCKETS: usize = 100_000;

/// Events staged before they go into the store, whatever the read: a read of the ring can hold
/// a quarter second of a busy host, thousands of 176-byte events, and staged past the CPU's
/// cache each is a cache miss to write and another to go through. Measured under paced churn
/// (40k records/s): 1,024 costs leaktrace a quarter less CPU than a whole read, 256 and 4,096
/// more than 1,024. A socket whose story a chunk boundary cuts gets a timeline, as one a read's
/// boundary cuts does.
const STAGE_LIMIT: usize = 1024;

/// Past the cap, this share of the cap is dropped at once, so that one scan for the least
/// recently active pays for many new sockets.
const EVICT_BATCH_DIVISOR: usize = 10;

/// How close in time a proxy opens the two sockets of one proxied pair: it accepts the client and
/// connects upstream for it (or the other way round) within this much, including the time to read
/// what tells it where to connect. Sockets opened further apart are not a pair: a pooled upstream
/// connection, opened for an earlier client, never pairs with a later one.
const PAIR_WINDOW_NS: u64 = 2_000_000_000;

/// See [`Store::wants_activity`].
const ACTIVITY_AFTER_HALF_CLOSE_NS: u64 = 1_000_000_000;

/// A value together with the kernel time it was observed at, so out-of-order arrivals cannot
/// overwrite newer facts with older ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamped<T> {
    pub ts_ns: u64,
    pub value: T,
}

impl<T> Stamped<T> {
    /// Keeps the later observation; on equal times the one that arrived last wins.
    fn update(slot: &mut Option<Self>, ts_ns: u64, value: T) {
        if slot.as_ref().is_none_or(|old| ts_ns >= old.ts_ns) {
            *slot = Some(Stamped { ts_ns, value });
        }
    }
}

/// A TCP state and how it was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SeenState {
    state: u8,
    /// From a `Present` record: the socket was already in it when tracing started.
    present_at_start: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OwnerInfo {
    pub tgid: u32,
    pub fd: Option<i32>,
}

/// The first successful `shutdown(SHUT_WR | SHUT_RDWR)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WriteShutdown {
    /// When it happened, or for one that predates the trace, when tracing found it.
    pub ts_ns: u64,
    /// The receive side at that moment, when the record carried it.
    pub receive: Option<ReceiveState>,
    /// It happened before tracing started: what the peer sent since is unknown.
    pub present_at_start: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Timeline {
    entries: Vec<Event>,
    elided: u64,
    state: Option<Stamped<SeenState>>,
    close_wait_since: Option<u64>,
    /// A transition into CLOSE_WAIT was recorded (as opposed to finding it there at start).
    close_wait_entered: bool,
    local: Option<Stamped<SocketAddr>>,
    remote: Option<Stamped<SocketAddr>>,
    owner: Option<Stamped<OwnerInfo>>,
    write_shutdown: Option<WriteShutdown>,
    closed_ns: Option<u64>,
    /// The close was inferred from /proc after records were lost (see
    /// [`crate::enrich::recheck_owners`]), not recorded.
    close_unrecorded: bool,
    destroyed_ns: Option<u64>,
    receive: Option<Stamped<ReceiveState>>,
    /// When the owning process exited: every finding on the socket ends there, unless another
    /// process still holds it (see [`crate::enrich`]).
    owner_exited_ns: Option<u64>,
    /// The owner was found by looking for who holds the socket, not from a record: later
    /// records, which carry the kernel's first idea of the owner, must not undo it.
    reattributed: bool,
    /// Latest known inode of the socket's file.
    ino: Option<u64>,
    /// Kernel time as of which the timeline is known to tell the socket's whole story: its
    /// first record's (the socket's birth, where its opening is rebuilt), or the latest look in
    /// /proc that found its owner holding it. Records lost after it may have ended what the
    /// timeline shows (see [`Store::may_be_incomplete`]).
    confirmed_ns: u64,
    /// When the holders of this socket were last looked for, to look at most once a second.
    holders_scanned_ns: Option<u64>,
    /// When a read first returned 0: the owner saw end-of-stream.
    eof_read_ns: Option<u64>,
    /// The read hook reports results, so a missing 0-byte read means the owner never saw
    /// end-of-stream, whatever the kernel's counters say (see [`Self::eof_unread_at`]).
    recv_results_known: bool,
    tally: stats::Tally,
    /// Kernel time of the latest record, for dropping the least recently active first.
    last_ns: u64,
    /// The other socket of the proxied pair, whose peer half-closed.
    partner: Option<Partner>,
    /// See [`Self::partner_let_go`].
    partner_let_go: bool,
    /// This socket's peer half-closed, and its pair's other socket was looked for (found or
    /// not): nothing more to look for.
    paired: bool,
    /// Traffic and timers, as last sampled while the socket had a half-closed partner.
    activity: Option<Activity>,
    /// The accept or connect that made the socket, if tracing saw it: a socket found at start
    /// has no opening time to pair it by.
    opened: Option<Opened>,
    /// When the owner took the socket from its listener, where an accept hook saw it.
    taken_ns: Option<u64>,
}

/// The other socket of a proxied pair (accepted and connected by one process about together),
/// whose peer half-closed: its FIN arrived, moving it to CLOSE_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partner {
    pub sock: SockKey,
    pub fd: Option<i32>,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// The owner accepted it, rather than connected it.
    pub accepted: bool,
    /// Kernel time its peer's FIN arrived.
    pub half_closed_ns: u64,
}

/// What the kernel's socket table said of a connection's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Activity {
    /// Kernel time of the sample.
    pub sampled_ns: u64,
    /// Kernel time data last went either way.
    pub last_traffic_ns: u64,
    pub timer: Option<KernelTimer>,
}

/// How a socket came to be: accepted (true) or connected by its owner, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Opened {
    ts_ns: u64,
    accepted: bool,
}

impl Timeline {
    fn insert(&mut self, event: Event) {
        let ts = event.ts_ns;
        self.last_ns = self.last_ns.max(ts);
        self.learn_owner(&event);
        if self.taken_ns.is_none() {
            self.taken_ns = event.taken_ns;
        }
        if let Some(addr) = event.local {
            Stamped::update(&mut self.local, ts, addr);
        }
        if let Some(addr) = event.remote {
            Stamped::update(&mut self.remote, ts, addr);
        }
        if let Some(receive) = event.receive {
            Stamped::update(&mut self.receive, ts, receive);
        }
        match event.kind {
            EventKind::State { new, .. } => {
                let seen = SeenState {
                    state: new,
                    present_at_start: false,
                };
                Stamped::update(&mut self.state, ts, seen);
                if new == tcp_state::CLOSE_WAIT {
                    self.close_wait_since = Some(self.close_wait_since.map_or(ts, |t| t.min(ts)));
                    self.close_wait_entered = true;
                }
                if new == tcp_state::SYN_RECV {
                    self.opened_at(ts, true);
                }
            }
            EventKind::Present {
                state,
                send_shutdown,
                ..
            } => {
                let seen = SeenState {
                    state,
                    present_at_start: true,
                };
                Stamped::update(&mut self.state, ts, seen);
                if state == tcp_state::CLOSE_WAIT {
                    self.close_wait_since = Some(self.close_wait_since.map_or(ts, |t| t.min(ts)));
                }
                // The kernel marks the sending side shut down itself when a connection reaches
                // CLOSE (tcp_done), so there the flag tells of the owner's shutdown only with the
                // peer's FIN: a connection that ended with FINs both ways while the fd stays
                // open sent ours through shutdown(2); without the peer's FIN it was reset.
                let owner_shut_down = send_shutdown
                    && (state != tcp_state::CLOSE || event.receive.is_some_and(|r| r.fin_received));
                if owner_shut_down && self.write_shutdown.is_none() {
                    self.write_shutdown = Some(WriteShutdown {
                        ts_ns: ts,
                        receive: event.receive,
                        present_at_start: true,
                    });
                }
            }
            EventKind::Shutdown { how }
                if (how == shutdown_how::SHUT_WR || how == shutdown_how::SHUT_RDWR)
                    && self.write_shutdown.is_none_or(|first| ts < first.ts_ns) =>
            {
                self.write_shutdown = Some(WriteShutdown {
                    ts_ns: ts,
                    receive: event.receive,
                    present_at_start: false,
                });
            }
            EventKind::Connect => self.opened_at(ts, false),
            EventKind::Close { .. } => {
                self.closed_ns = Some(self.closed_ns.map_or(ts, |t| t.min(ts)));
            }
            EventKind::Destroy => self.destroyed_ns = Some(ts),
            EventKind::Recv { ret: Some(ret) } => {
                self.recv_results_known = true;
                if ret == 0 {
                    self.eof_read_ns = Some(self.eof_read_ns.map_or(ts, |t| t.min(ts)));
                }
            }
            _ => {}
        }
        if self.entries.len() >= MAX_ENTRIES
            && !matches!(event.kind, EventKind::Close { .. } | EventKind::Destroy)
        {
            self.elided += 1;
            return;
        }
        // Stable for equal timestamps: records with one time keep their arrival order.
        let at = self.entries.partition_point(|e| e.ts_ns <= ts);
        self.entries.insert(at, event);
    }

    /// The earliest opening seen: whether accepted, and when.
    fn opened_at(&mut self, ts_ns: u64, accepted: bool) {
        if self.opened.is_none_or(|o| ts_ns < o.ts_ns) {
            self.opened = Some(Opened { ts_ns, accepted });
        }
    }

    fn learn_owner(&mut self, event: &Event) {
        if let Some(ino) = event.ino {
            self.ino = Some(ino);
        }
        // The kernel's claim stands until /proc showed another holder; a process taking the
        // socket from its listener is newer than either.
        if self.reattributed && !matches!(event.kind, EventKind::Accept { .. }) {
            return;
        }
        let Some(owner) = event.owner else {
            return;
        };
        let learned = OwnerInfo {
            tgid: owner.tgid,
            fd: owner.fd,
        };
        let ts = event.ts_ns;
        match &mut self.owner {
            // Records that know the owner but not its fd must not erase a known fd.
            Some(known) if known.value.tgid == learned.tgid => {
                let newer = ts >= known.ts_ns;
                if learned.fd.is_some() && (newer || known.value.fd.is_none()) {
                    known.value.fd = learned.fd;
                }
                if newer {
                    known.ts_ns = ts;
                }
            }
            _ => Stamped::update(&mut self.owner, ts, learned),
        }
    }

    /// Entries ordered by kernel time.
    pub(crate) fn entries(&self) -> &[Event] {
        &self.entries
    }

    /// Reads and arrivals left out of [`Self::entries`] to bound memory.
    pub(crate) fn elided(&self) -> u64 {
        self.elided
    }

    /// The TCP state of the latest state change by kernel time.
    pub(crate) fn state(&self) -> Option<u8> {
        self.state.map(|s| s.value.state)
    }

    /// When the socket entered its current state, and whether that state was found when tracing
    /// started (`true`: the time is when it was found; it entered earlier, how much is unknown).
    pub(crate) fn state_entered(&self) -> Option<(u64, bool)> {
        self.state.map(|s| (s.ts_ns, s.value.present_at_start))
    }

    /// When the peer's FIN moved the socket into CLOSE_WAIT (or when a socket already there was
    /// first seen).
    pub(crate) fn close_wait_since(&self) -> Option<u64> {
        self.close_wait_since
    }

    /// The socket was already in CLOSE_WAIT when tracing started.
    pub(crate) fn close_wait_present_at_start(&self) -> bool {
        self.close_wait_since.is_some() && !self.close_wait_entered
    }

    pub(crate) fn local(&self) -> Option<SocketAddr> {
        self.local.map(|a| a.value)
    }

    pub(crate) fn remote(&self) -> Option<SocketAddr> {
        self.remote.map(|a| a.value)
    }

    pub(crate) fn owner(&self) -> Option<OwnerInfo> {
        self.owner.map(|o| o.value)
    }

    pub(crate) fn write_shutdown(&self) -> Option<WriteShutdown> {
        self.write_shutdown
    }

    /// The owner released the socket (`close(2)` or the kernel's `tcp_close`).
    pub(crate) fn closed(&self) -> bool {
        self.closed_ns.is_some()
    }

    /// The socket was found closed in /proc after records were lost, its close not recorded.
    pub(crate) fn close_unrecorded(&self) -> bool {
        self.close_unrecorded
    }

    pub(crate) fn destroyed(&self) -> bool {
        self.destroyed_ns.is_some()
    }

    pub(crate) fn owner_exited(&self) -> bool {
        self.owner_exited_ns.is_some()
    }

    /// The receive side as of the latest record (by kernel time) that carried it.
    pub(crate) fn receive(&self) -> Option<Stamped<ReceiveState>> {
        self.receive
    }

    /// Whether, at kernel time `ts_ns` with the receive side `receive`, the peer's FIN had
    /// arrived but the owner had not seen end-of-stream. The kernel's counters alone cannot
    /// tell: a read that takes the last data bytes of a segment carrying the FIN also moves
    /// `copied_seq` past the FIN, yet returns the bytes, not 0, and a runtime that pauses then
    /// never learns of the end (incident 3 as Node.js does it). So where reads report their
    /// result, only a read returning 0 counts as the EOF consumed.
    pub(crate) fn eof_unread_at(&self, ts_ns: u64, receive: &ReceiveState) -> bool {
        receive.fin_received
            && self.eof_read_ns.is_none_or(|read| read > ts_ns)
            && (self.recv_results_known || receive.eof_unread())
    }

    /// [`Self::eof_unread_at`] as of the latest receive state.
    pub(crate) fn eof_unread(&self) -> bool {
        self.receive
            .is_some_and(|r| self.eof_unread_at(r.ts_ns, &r.value))
    }

    /// Where the per-remote counts put this socket's connection, once its direction is known.
    pub(crate) fn remote_key(&self) -> Option<Remote> {
        self.tally.remote()
    }

    pub(crate) fn partner(&self) -> Option<Partner> {
        self.partner
    }

    /// Whether the owner accepted the connection (`Some(true)`) or made it: as tracing saw it
    /// open, else as the counts tell it (by its local port, for a socket found at start).
    pub(crate) fn accepted(&self) -> Option<bool> {
        self.opened
            .map(|o| o.accepted)
            .or_else(|| self.tally.accepted())
    }

    /// When the owner came to hold the socket, for pairing: the connect, or the accept where a
    /// hook saw it (exact, `true`); else the birth in the listener's queue, which may be long
    /// before the accept.
    fn held_since(&self) -> Option<(u64, bool)> {
        let opened = self.opened?;
        Some(match self.taken_ns {
            Some(taken_ns) if opened.accepted => (taken_ns, true),
            _ => (opened.ts_ns, !opened.accepted),
        })
    }

    pub(crate) fn activity(&self) -> Option<Activity> {
        self.activity
    }

    /// The inode of the socket's file, as the latest record naming it said.
    pub(crate) fn ino(&self) -> Option<u64> {
        self.ino
    }

    /// Still held: neither closed nor destroyed, its owner not gone.
    pub(crate) fn live(&self) -> bool {
        !self.closed() && !self.destroyed() && !self.owner_exited()
    }

    /// Its peer half-closed and its owner still holds it without having closed or shut it
    /// down: the end-of-stream is not handled (yet).
    fn end_of_stream_unanswered(&self) -> bool {
        self.close_wait_entered && self.live() && self.write_shutdown.is_none()
    }

    /// The owner closed or shut down the half-closed partner after pairing: it handled the
    /// end-of-stream, which a proxy then need not pass on.
    pub(crate) fn partner_let_go(&self) -> bool {
        self.partner_let_go
    }

    /// The states in which a connection can sit idle with nothing to end it.
    fn may_idle(&self) -> bool {
        matches!(
            self.state(),
            Some(tcp_state::ESTABLISHED | tcp_state::FIN_WAIT2)
        )
    }

    /// The inode to look for holders of, when the recorded owner exited and the socket may
    /// live on elsewhere (a child that inherited it, a process it was passed to).
    fn orphan_inode(&self) -> Option<u64> {
        let let_go = self.owner_exited_ns.is_some();
        (let_go && !self.closed() && !self.destroyed()).then_some(self.ino?)
    }

    /// `holder` holds the socket now, found in /proc at `now_ns` rather than recorded; the
    /// timeline says so.
    fn hand_over(&mut self, sock: SockKey, holder: &Holder, now_ns: u64) {
        let owner = Owner {
            tgid: holder.pid,
            fd: Some(holder.fd),
        };
        let ts_ns = now_ns.max(self.last_ns);
        let found = Event {
            ts_ns,
            sock,
            task: Task {
                tgid: holder.pid,
                tid: holder.pid,
                comm: Comm::default(),
            },
            owner: Some(owner),
            in_owner_context: true,
            established_at_birth: false,
            taken_ns: None,
            local: self.local(),
            remote: self.remote(),
            receive: None,
            ino: self.ino,
            kind: EventKind::HandedOver { fd: holder.fd },
        };
        let at = self.entries.partition_point(|e| e.ts_ns <= ts_ns);
        self.entries.insert(at, found);
        self.owner = Some(Stamped {
            ts_ns: self.owner.map_or(0, |o| o.ts_ns),
            value: OwnerInfo {
                tgid: holder.pid,
                fd: Some(holder.fd),
            },
        });
        self.reattributed = true;
        self.owner_exited_ns = None;
        self.confirmed_ns = self.confirmed_ns.max(now_ns);
    }

    /// The process holding the socket and the socket's state, while a process holds it.
    fn held(&self) -> Option<(u32, u8)> {
        if self.closed() || self.destroyed() || self.owner_exited() {
            return None;
        }
        Some((self.owner()?.tgid, self.state()?))
    }
}

/// What the store let go of to bound its memory, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Timelines of sockets that were destroyed, or closed for [`CLOSED_RETENTION_NS`], with no
    /// open finding: forgotten as planned.
    pub finished: u64,
    /// Timelines dropped, least recently active first, because the store held `max_sockets`.
    pub evicted: u64,
    /// Records for sockets whose timeline had just been dropped, ignored.
    pub late_records: u64,
}

#[derive(Debug)]
pub(crate) struct Store {
    /// Boxed: a timeline is a few hundred bytes, and on a busy host one is made and dropped per
    /// socket; the map then moves pointers, not timelines.
    timelines: FxHashMap<SockKey, Box<Timeline>>,
    /// Process names by tgid, learned from records the owner itself produced or found running.
    comms: FxHashMap<u32, Comm>,
    /// Where the owners of findings run, found once per process.
    placements: FxHashMap<u32, Placement>,
    sockets_seen: u64,
    latest_ns: u64,
    counts: Counts,
    /// Sockets whose story ended since the last sweep (destroyed, closed for good, or taken by
    /// an untraced process), and those an open finding kept: the candidates for dropping, so a
    /// sweep looks at them only, not at every timeline.
    ended: VecDeque<(u64, SockKey)>,
    /// When the timelines were last looked through for sockets closed longer than
    /// [`CLOSED_RETENTION_NS`]; a queue of every close would hold a minute of closes (tens of
    /// MiB under churn) for the few sockets the kernel keeps that long.
    closed_scanned_ns: u64,
    /// Sockets whose timeline was dropped, for at least [`RETIRED_GRACE_NS`].
    retired: Retired,
    /// Sockets whose story ended without a timeline, for at least [`FINISHED_GRACE_NS`].
    finished: Retired,
    /// Events of the read of the ring buffer under way not yet in the store (see
    /// [`Self::stage`]), kept between reads for its allocation.
    staged: Vec<Event>,
    /// The stories of one batch's sockets that need no timeline (see [`Self::insert_staged`]),
    /// kept between batches for its allocation, in the order their ends came, with an index by
    /// socket: stories side by side in that order are what the batch's next events touch, where
    /// a map holding them would scatter each over its whole table, a cache miss per event.
    stories: Vec<(SockKey, Story)>,
    story_index: FxHashMap<SockKey, u32>,
    /// Exits not yet applied to the timelines: one pass over them per evaluation, not per exit,
    /// as on a busy host every process's exit is a record.
    exits: FxHashMap<u32, u64>,
    /// Timelines dropped, until [`Self::take_swept`]; `None`: nobody wants them.
    swept: Option<Vec<(SockKey, Box<Timeline>)>>,
    max_sockets: usize,
    dropped: Dropped,
    /// When records were last found lost: the lost counter grew by then (kernel time).
    records_lost_ns: Option<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self::with_capacity_limit(DEFAULT_MAX_SOCKETS)
    }
}

impl Store {
    /// A store that keeps at most `max_sockets` timelines (at least one).
    pub(crate) fn with_capacity_limit(max_sockets: usize) -> Self {
        Self {
            timelines: FxHashMap::default(),
            comms: FxHashMap::default(),
            placements: FxHashMap::default(),
            sockets_seen: 0,
            latest_ns: 0,
            counts: Counts::default(),
            ended: VecDeque::new(),
            closed_scanned_ns: 0,
            retired: Retired::new(RETIRED_GRACE_NS),
            finished: Retired::new(FINISHED_GRACE_NS),
            staged: Vec::new(),
            stories: Vec::new(),
            story_index: FxHashMap::default(),
            exits: FxHashMap::default(),
            swept: None,
            max_sockets: max_sockets.max(1),
            dropped: Dropped::default(),
            records_lost_ns: None,
        }
    }

    /// Hands the timelines it drops to [`Self::take_swept`] instead, for an output that writes
    /// each socket once its story is over.
    pub(crate) fn keeping_swept(self) -> Self {
        Self {
            swept: Some(Vec::new()),
            ..self
        }
    }

    /// The timelines swept since the last call, oldest sweep first.
    pub(crate) fn take_swept(&mut self) -> Vec<(SockKey, Box<Timeline>)> {
        self.swept.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The owners of the timelines swept and not taken yet (see [`Self::take_swept`]).
    pub(crate) fn swept_owners(&self) -> Vec<u32> {
        (self.swept.iter().flatten())
            .filter_map(|(_, timeline)| Some(timeline.owner()?.tgid))
            .collect()
    }

    /// The owners of the timelines in memory.
    pub(crate) fn owners(&self) -> Vec<u32> {
        (self.timelines.values())
            .filter_map(|timeline| Some(timeline.owner()?.tgid))
            .collect()
    }

    /// Timelines in memory.
    pub(crate) fn tracked(&self) -> usize {
        self.timelines.len()
    }

    /// Takes one event of a read of the ring buffer, for [`Self::insert_staged`] (see
    /// [`Self::staged_enough`]). Notes on the way the sockets whose story ends among the staged
    /// events, so they are gone through once more only, not twice.
    #[inline(always)]
    pub(crate) fn stage(&mut self, event: Event) {
        // Nothing is recorded of a socket after its end, so an end is never of a socket
        // already retired: no need to look through the many retired ones here.
        if self.swept.is_none()
            && ends_story(&event.kind)
            && !self.timelines.contains_key(&event.sock)
        {
            let stories = &mut self.stories;
            self.story_index.entry(event.sock).or_insert_with(|| {
                stories.push((event.sock, Story::default()));
                (stories.len() - 1) as u32
            });
        }
        self.staged.push(event);
    }

    /// Enough events are staged to insert them: at the end of a record, never between its two
    /// events (the second, a close's state change, comes after the end of the story).
    pub(crate) fn staged_enough(&self) -> bool {
        self.staged.len() >= STAGE_LIMIT
    }

    /// Takes the events staged by [`Self::stage`]. A socket whose whole story lies among them
    /// (no timeline yet, and its end among these events) is only counted: its leak conditions,
    /// if any, ended before any evaluation could see them, as they would have with a timeline. On a busy host that is nearly every socket, and a
    /// timeline made and dropped for each would be most of leaktrace's work.
    pub(crate) fn insert_staged(&mut self) {
        let mut staged = std::mem::take(&mut self.staged);
        if self.swept.is_some() {
            // Whoever asked for dropped timelines gets every socket's.
            staged.drain(..).for_each(|event| self.insert(event));
            self.staged = staged;
            return;
        }
        let mut stories = std::mem::take(&mut self.stories);
        let mut index = std::mem::take(&mut self.story_index);
        for event in &staged {
            let Some(&at) = index.get(&event.sock) else {
                self.insert(*event);
                continue;
            };
            let story = &mut stories[at as usize].1;
            self.latest_ns = self.latest_ns.max(event.ts_ns);
            self.counts.observe(&mut story.tally, event, story.remote);
            story.learn(event);
        }
        // Ended: a record's later events (the state change a close made) come after its end.
        self.sockets_seen += stories.len() as u64;
        self.dropped.finished += stories.len() as u64;
        for (key, _) in &stories {
            self.finished.insert(*key, self.latest_ns);
        }
        stories.clear();
        index.clear();
        staged.clear();
        self.stories = stories;
        self.story_index = index;
        self.staged = staged;
    }

    /// [`Self::stage`] each of `events`, then [`Self::insert_staged`].
    #[cfg(test)]
    pub(crate) fn insert_batch(&mut self, events: &[Event]) {
        for event in events {
            self.stage(*event);
        }
        self.insert_staged();
    }

    pub(crate) fn insert(&mut self, event: Event) {
        self.latest_ns = self.latest_ns.max(event.ts_ns);
        let known = self.timelines.contains_key(&event.sock);
        // A read or an arrival is recorded only of a socket recorded before: one that starts a
        // timeline came after its socket's end, from a CPU that looked it up just before.
        let stray = matches!(event.kind, EventKind::Recv { .. } | EventKind::Arrival);
        if !known
            && (stray || self.retired.contains(&event.sock) || self.finished.contains(&event.sock))
        {
            self.dropped.late_records += 1;
            return;
        }
        if ends_story(&event.kind) {
            self.ended.push_back((event.ts_ns, event.sock));
        }
        if !known {
            self.sockets_seen += 1;
            for opening in event.opening() {
                self.record(opening);
            }
        }
        self.record(event);
    }

    fn record(&mut self, event: Event) {
        let timeline = self.timelines.entry(event.sock).or_insert_with(|| {
            Box::new(Timeline {
                entries: Vec::with_capacity(TYPICAL_ENTRIES),
                confirmed_ns: event.ts_ns,
                ..Timeline::default()
            })
        });
        let task = event.task;
        let held = timeline.held();
        let remote = timeline.remote();
        self.counts.observe(&mut timeline.tally, &event, remote);
        timeline.insert(event);
        self.counts.move_held(held, timeline.held());
        if !task.comm.is_empty() && timeline.owner().is_some_and(|o| o.tgid == task.tgid) {
            // A thread's comm can differ from its process's; the main thread's is the one
            // `ps` shows, so it wins over another thread's.
            let is_main_thread = task.tid == task.tgid;
            match self.comms.get_mut(&task.tgid) {
                Some(comm) if is_main_thread => *comm = task.comm,
                Some(_) => {}
                None => {
                    self.comms.insert(task.tgid, task.comm);
                }
            }
        }
    }

    /// Process `tgid` exited at `ts_ns`: the sockets it owned have no owner left to blame. Takes
    /// effect at the next [`Self::apply_exits`].
    pub(crate) fn owner_exited(&mut self, tgid: u32, ts_ns: u64) {
        self.exits.entry(tgid).or_insert(ts_ns);
    }

    /// Marks the sockets of the processes that exited since the last call as owner-less.
    pub(crate) fn apply_exits(&mut self) {
        if self.exits.is_empty() {
            return;
        }
        for timeline in self.timelines.values_mut() {
            let Some(&ts_ns) = timeline.owner().and_then(|o| self.exits.get(&o.tgid)) else {
                continue;
            };
            let held = timeline.held();
            timeline.owner_exited_ns.get_or_insert(ts_ns);
            self.counts.move_held(held, None);
        }
        // Findings keep the names they were reported with; a name kept past its process's exit
        // would only grow memory on a host that starts processes all day.
        for tgid in self.exits.keys() {
            self.comms.remove(tgid);
            self.placements.remove(tgid);
        }
        self.exits.clear();
    }

    /// The inodes of sockets whose owner let go of them while other fds may still hold them
    /// (fork, dup, SCM_RIGHTS), not looked for in the last second.
    pub(crate) fn orphans_to_look_for(&self, now_ns: u64) -> BTreeSet<u64> {
        const RESCAN_NS: u64 = 1_000_000_000;
        self.timelines
            .values()
            .filter(|t| {
                t.holders_scanned_ns
                    .is_none_or(|at| now_ns.saturating_sub(at) >= RESCAN_NS)
            })
            .filter_map(|t| t.orphan_inode())
            .collect()
    }

    /// The holders of the orphans `wanted` were looked for at `now_ns`: each one held goes to
    /// whoever holds it now, the one to blame for a leak.
    pub(crate) fn found_holders(
        &mut self,
        wanted: &BTreeSet<u64>,
        found: &BTreeMap<u64, Vec<Holder>>,
        now_ns: u64,
    ) {
        for (key, timeline) in &mut self.timelines {
            let Some(ino) = timeline.orphan_inode().filter(|ino| wanted.contains(ino)) else {
                continue;
            };
            timeline.holders_scanned_ns = Some(now_ns);
            let Some(holder) = found.get(&ino).and_then(|h| h.first()) else {
                continue;
            };
            let held = timeline.held();
            timeline.hand_over(*key, holder, now_ns);
            self.counts.move_held(held, timeline.held());
        }
    }

    /// `holder` holds the socket `key` now, as found at `now_ns` rather than recorded.
    pub(crate) fn hand_over(&mut self, key: SockKey, holder: &Holder, now_ns: u64) {
        let Some(timeline) = self.timelines.get_mut(&key) else {
            return;
        };
        let held = timeline.held();
        timeline.hand_over(key, holder, now_ns);
        self.counts.move_held(held, timeline.held());
    }

    /// Nobody holds the socket `key` at `now_ns`: it was closed, its close among lost records.
    pub(crate) fn found_closed(&mut self, key: SockKey, now_ns: u64) {
        let Some(timeline) = self.timelines.get_mut(&key) else {
            return;
        };
        let held = timeline.held();
        timeline.closed_ns.get_or_insert(now_ns);
        timeline.close_unrecorded = true;
        self.counts.move_held(held, timeline.held());
    }

    /// The owner of `key` holds it by `fd`, as /proc showed at `now_ns`: the kernel side names a
    /// socket's file, not its fd.
    pub(crate) fn found_fd(&mut self, key: SockKey, fd: i32, now_ns: u64) {
        if let Some(timeline) = self.timelines.get_mut(&key) {
            if let Some(known) = timeline.owner.as_mut() {
                known.value.fd = Some(fd);
                timeline.confirmed_ns = timeline.confirmed_ns.max(now_ns);
            }
        }
    }

    /// /proc showed at `now_ns` that the owner of `key` still holds it: whatever records were
    /// lost before, none of them was its close.
    pub(crate) fn found_held(&mut self, key: SockKey, now_ns: u64) {
        if let Some(timeline) = self.timelines.get_mut(&key) {
            timeline.confirmed_ns = timeline.confirmed_ns.max(now_ns);
        }
    }

    /// The kernel's count of lost records had grown by `now_ns`: every timeline begun or last
    /// confirmed before may lack records.
    pub(crate) fn records_lost(&mut self, now_ns: u64) {
        self.records_lost_ns = Some(now_ns);
    }

    /// Whether records of `timeline`'s socket may have been lost since it was last known whole:
    /// a close, an exit or a hand-over among them would leave a leak condition standing that
    /// has ended, so a finding on it waits for /proc to confirm the owner still holds it.
    pub(crate) fn may_be_incomplete(&self, timeline: &Timeline) -> bool {
        self.records_lost_ns
            .is_some_and(|lost_ns| timeline.confirmed_ns < lost_ns)
    }

    /// How many sockets `pid` holds in CLOSE_WAIT that it connected to `remote`: one is what a
    /// client pool leaves of a keep-alive connection the server timed out, until its next use;
    /// more, and growing, is sockets piling up.
    pub(crate) fn close_waits_to(&self, pid: u32, remote: SocketAddr) -> u32 {
        (self.timelines.values())
            .filter(|t| {
                t.live()
                    && t.state() == Some(tcp_state::CLOSE_WAIT)
                    && t.accepted() == Some(false)
                    && t.remote() == Some(remote)
                    && t.owner().is_some_and(|o| o.tgid == pid)
            })
            .count() as u32
    }

    pub(crate) fn sockets_seen(&self) -> u64 {
        self.sockets_seen
    }

    pub(crate) fn counts(&self) -> &Counts {
        &self.counts
    }

    pub(crate) fn get(&self, key: &SockKey) -> Option<&Timeline> {
        self.timelines.get(key).map(|t| &**t)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&SockKey, &Timeline)> {
        self.timelines.iter().map(|(key, t)| (key, &**t))
    }

    /// The owner's process name, from its own records if any, else as last found running.
    pub(crate) fn comm(&self, tgid: u32) -> Option<String> {
        self.comms.get(&tgid).map(ToString::to_string)
    }

    /// The name of `tgid`, found running rather than in its records: kept, as a finding is
    /// reported long after the records that named the process.
    pub(crate) fn found_comm(&mut self, tgid: u32, comm: &str) {
        self.comms.insert(tgid, Comm::new(comm));
    }

    /// Where the owner runs (cgroup, container or unit, network namespace), once found.
    pub(crate) fn placement(&self, tgid: u32) -> Option<&Placement> {
        self.placements.get(&tgid)
    }

    /// Where `tgid` runs: kept, as a process's findings all share it.
    pub(crate) fn found_placement(&mut self, tgid: u32, placement: Placement) {
        self.placements.insert(tgid, placement);
    }

    /// The sockets whose traffic and timers are wanted now: those that may sit idle while the
    /// other socket of their pair is half-closed (see [`Self::wants_activity`]).
    pub(crate) fn wanting_activity(
        &self,
        now_ns: u64,
    ) -> impl Iterator<Item = (&SockKey, &Timeline)> {
        self.iter()
            .filter(move |(_, t)| Self::wants_activity(t, now_ns))
    }

    /// Looked at only once its partner has been half-closed for [`ACTIVITY_AFTER_HALF_CLOSE_NS`]:
    /// a proxy under load passes the end-of-stream on and closes within it, and a look can cost a
    /// scan of /proc. The wait loses nothing, as the kernel tells when traffic last moved.
    fn wants_activity(timeline: &Timeline, now_ns: u64) -> bool {
        timeline.partner.is_some_and(|p| {
            now_ns.saturating_sub(p.half_closed_ns) >= ACTIVITY_AFTER_HALF_CLOSE_NS
        }) && !timeline.partner_let_go
            && timeline.live()
            && timeline.may_idle()
    }

    /// Marks the sockets whose half-closed partner the owner has since closed or shut down
    /// (or that is gone from memory): its end-of-stream was handled after all.
    fn note_partners_let_go(&mut self) {
        let let_go: Vec<SockKey> = (self.timelines.iter())
            .filter(|(_, t)| !t.partner_let_go)
            .filter_map(|(key, t)| {
                let partner = t.partner?;
                let held = (self.timelines.get(&partner.sock))
                    .is_some_and(|p| p.end_of_stream_unanswered());
                (!held).then_some(*key)
            })
            .collect();
        for key in let_go {
            if let Some(timeline) = self.timelines.get_mut(&key) {
                timeline.partner_let_go = true;
            }
        }
    }

    /// For each socket whose peer half-closed, the socket of the same owner opened closest to it
    /// in the other direction within [`PAIR_WINDOW_NS`], if that one has no partner yet. Looked
    /// for until the window has passed, as the proxy may open the other socket only after the
    /// half-close (the client sent its request and its FIN at once).
    pub(crate) fn pair_half_closed(&mut self, now_ns: u64) {
        self.note_partners_let_go();
        // Only a half-closed socket its owner still holds: one it closed (or shut down for
        // good) had its end-of-stream handled, as a proxy's pool does with a finished client.
        let half_closed: Vec<HalfClosed> = (self.timelines.iter())
            .filter(|(_, t)| !t.paired && t.end_of_stream_unanswered())
            .filter_map(|(key, t)| {
                let half_closed_ns = t.close_wait_since.filter(|_| t.close_wait_entered)?;
                let owner = t.owner()?;
                let opened = t.opened?;
                let held_since = t.held_since()?;
                let partner = Partner {
                    sock: *key,
                    fd: owner.fd,
                    local: t.local(),
                    remote: t.remote(),
                    accepted: opened.accepted,
                    half_closed_ns,
                };
                Some(HalfClosed {
                    owner: owner.tgid,
                    opened,
                    held_since,
                    partner,
                })
            })
            .collect();
        if half_closed.is_empty() {
            return;
        }
        // Per owner and direction, the open sockets without a partner by opening time, built once
        // per call: looking through every timeline for each half-closed socket would cost a
        // server under churn (all of whose clients half-close) the square of its connections.
        let owners: HashSet<u32> = half_closed.iter().map(|h| h.owner).collect();
        let mut unpaired: HashMap<(u32, bool), Vec<Unpaired>> = HashMap::new();
        for (key, t) in &self.timelines {
            let (Some(owner), Some(opened), Some((held_ns, _))) =
                (t.owner(), t.opened, t.held_since())
            else {
                continue;
            };
            if t.partner.is_none() && t.live() && owners.contains(&owner.tgid) {
                unpaired
                    .entry((owner.tgid, opened.accepted))
                    .or_default()
                    .push((held_ns, *key));
            }
        }
        for list in unpaired.values_mut() {
            list.sort_unstable();
        }
        for HalfClosed {
            owner,
            opened,
            held_since,
            partner,
        } in half_closed
        {
            let mate = unpaired
                .get_mut(&(owner, !opened.accepted))
                .and_then(|list| take_mate(list, held_since, opened.accepted));
            if let Some(mate) = mate.and_then(|m| self.timelines.get_mut(&m)) {
                mate.partner = Some(partner);
            }
            let window_passed = now_ns.saturating_sub(opened.ts_ns) > PAIR_WINDOW_NS;
            if let Some(timeline) = self.timelines.get_mut(&partner.sock) {
                timeline.paired = mate.is_some() || window_passed;
            }
        }
    }

    /// What the kernel's socket table said of the traffic of `key`.
    pub(crate) fn found_activity(&mut self, key: SockKey, activity: Activity) {
        if let Some(timeline) = self.timelines.get_mut(&key) {
            timeline.activity = Some(activity);
        }
    }

    pub(crate) fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Drops the timelines nothing needs any more, unless `keep` (the detectors' open findings)
    /// still does: destroyed sockets', owner-closed sockets' after [`CLOSED_RETENTION_NS`], and
    /// past `max_sockets`, the least recently active.
    pub(crate) fn sweep(&mut self, keep: impl Fn(&SockKey) -> bool) {
        let now = self.latest_ns;
        self.retired.expire(now);
        let mut kept = Vec::new();
        while let Some((_, key)) = self.ended.pop_front() {
            if keep(&key) {
                kept.push((now, key));
            } else if self.retire(key) {
                self.dropped.finished += 1;
            }
        }
        self.ended.extend(kept);
        if now.saturating_sub(self.closed_scanned_ns) >= CLOSED_SCAN_EVERY_NS {
            self.closed_scanned_ns = now;
            let expired: Vec<SockKey> = self
                .timelines
                .iter()
                .filter(|(key, t)| {
                    t.closed_ns
                        .is_some_and(|at| now.saturating_sub(at) >= CLOSED_RETENTION_NS)
                        && !keep(key)
                })
                .map(|(key, _)| *key)
                .collect();
            for key in expired {
                if self.retire(key) {
                    self.dropped.finished += 1;
                }
            }
        }
        if self.timelines.len() > self.max_sockets {
            self.evict(&keep);
        }
    }

    /// Drops the least recently active timelines that `keep` does not need, down to 90% of the
    /// cap.
    fn evict(&mut self, keep: &impl Fn(&SockKey) -> bool) {
        let target = self.max_sockets - self.max_sockets / EVICT_BATCH_DIVISOR;
        let mut candidates: Vec<(u64, SockKey)> = self
            .timelines
            .iter()
            .filter(|(key, _)| !keep(key))
            .map(|(key, timeline)| (timeline.last_ns, *key))
            .collect();
        let excess = self
            .timelines
            .len()
            .saturating_sub(target)
            .min(candidates.len());
        if excess == 0 {
            return;
        }
        candidates.select_nth_unstable(excess - 1);
        for &(_, key) in &candidates[..excess] {
            if self.retire(key) {
                self.dropped.evicted += 1;
            }
        }
    }

    /// Forgets `key`'s timeline; its late records are ignored for [`RETIRED_GRACE_NS`].
    fn retire(&mut self, key: SockKey) -> bool {
        let Some(timeline) = self.timelines.remove(&key) else {
            return false;
        };
        self.counts.move_held(timeline.held(), None);
        self.retired.insert(key, self.latest_ns);
        if let Some(swept) = &mut self.swept {
            swept.push((key, timeline));
        }
        true
    }
}

/// Sockets leaktrace is done with, whose late records are ignored. Two generations, each as old
/// as `grace_ns` at most, the older dropped whole: under churn a socket retires every few
/// microseconds, and forgetting them one by one would cost as much as remembering them.
#[derive(Debug)]
struct Retired {
    current: FxHashSet<SockKey>,
    previous: FxHashSet<SockKey>,
    /// When `current` began.
    since_ns: u64,
    grace_ns: u64,
}

impl Retired {
    fn new(grace_ns: u64) -> Self {
        Self {
            current: FxHashSet::default(),
            previous: FxHashSet::default(),
            since_ns: 0,
            grace_ns,
        }
    }

    fn insert(&mut self, key: SockKey, now_ns: u64) {
        self.expire(now_ns);
        self.current.insert(key);
    }

    fn contains(&self, key: &SockKey) -> bool {
        self.current.contains(key) || self.previous.contains(key)
    }

    /// A socket stays at least `grace_ns`: in `current` until it is that old, then in `previous`
    /// for as long again.
    fn expire(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.since_ns) < self.grace_ns {
            return;
        }
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
        self.since_ns = now_ns;
    }
}

/// What is kept of a socket that never gets a timeline: what the counts need. Its story ended
/// (closed, destroyed or taken by an untraced process) within one read, so it can be no
/// leak, nor the half-closed side of an `idle_half_closed` pair, whose half-closed side is
/// still held.
#[derive(Debug, Default)]
struct Story {
    tally: stats::Tally,
    remote: Option<SocketAddr>,
}

impl Story {
    fn learn(&mut self, event: &Event) {
        // Written once: a 32-byte copy per event, read back at the next one, is a store the
        // CPU cannot forward, and most of what a socket without a timeline costs.
        if self.remote.is_none() {
            self.remote = event.remote;
        }
    }
}

/// A socket whose peer half-closed, looking for the other socket of its proxied pair.
#[derive(Debug)]
struct HalfClosed {
    owner: u32,
    opened: Opened,
    held_since: (u64, bool),
    partner: Partner,
}

/// A socket that may be the other of a pair: since when its owner holds it (see
/// [`Timeline::held_since`]), and its key.
type Unpaired = (u64, SockKey);

/// Whether nothing more will be recorded of the socket after this event (for leaktrace).
fn ends_story(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Destroy | EventKind::Close { .. } | EventKind::Accept { traced: false }
    )
}

/// Removes and returns the other socket of the pair of a half-closed socket held since
/// `held_since` (accepted or not), from `by_time` (the owner's unpaired sockets of the other
/// direction, sorted), within [`PAIR_WINDOW_NS`]. A proxy connects upstream for a client after
/// taking it: where the half-closed socket's time is exact, the pair is the first connect from
/// its accept on (or, seen from the connect, the last client taken up to it), whatever other
/// clients the proxy serves meanwhile. Otherwise, or where nothing lies that way (a proxy that
/// connects first), the socket held since the closest time, which a busy proxy can get wrong.
fn take_mate(
    by_time: &mut Vec<Unpaired>,
    (ts_ns, exact): (u64, bool),
    accepted: bool,
) -> Option<SockKey> {
    let after = by_time.partition_point(|&(held_ns, _)| held_ns < ts_ns);
    let before = after.checked_sub(1);
    let exact_pick = match (exact, accepted) {
        (true, true) => Some(after).filter(|&i| i < by_time.len()),
        // A client's birth is no later than its accept either.
        (true, false) => before,
        (false, _) => None,
    };
    let index = match exact_pick {
        Some(i) => Some(i).filter(|&i| by_time[i].0.abs_diff(ts_ns) <= PAIR_WINDOW_NS),
        None => [before, Some(after)]
            .into_iter()
            .flatten()
            .filter_map(|i| Some((by_time.get(i)?.0.abs_diff(ts_ns), i)))
            .filter(|&(apart, _)| apart <= PAIR_WINDOW_NS)
            .min()
            .map(|(_, i)| i),
    }?;
    Some(by_time.remove(index).1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::decoder::{Owner, Task};

    pub(crate) const OWNER: u32 = 4242;
    pub(crate) const PEER: u32 = 5151;

    pub(crate) fn key(addr: u64, born_ns: u64) -> SockKey {
        SockKey { addr, born_ns }
    }

    /// An event on `sock` run by the owner process, with 127.0.0.1:8080 <- 127.0.0.1:50412.
    pub(crate) fn event(sock: SockKey, ts_ns: u64, kind: EventKind) -> Event {
        Event {
            ts_ns,
            sock,
            task: Task {
                tgid: OWNER,
                tid: OWNER,
                comm: Comm::new("mailer"),
            },
            owner: Some(Owner {
                tgid: OWNER,
                fd: Some(7),
            }),
            in_owner_context: true,
            established_at_birth: false,
            taken_ns: None,
            local: Some("127.0.0.1:8080".parse().unwrap()),
            remote: Some("127.0.0.1:50412".parse().unwrap()),
            receive: None,
            ino: None,
            kind,
        }
    }

    /// The same event fired in softirq while the peer process was running.
    pub(crate) fn from_peer(mut event: Event) -> Event {
        event.task = Task {
            tgid: PEER,
            tid: PEER,
            comm: Comm::new("curl"),
        };
        event.in_owner_context = false;
        event
    }

    pub(crate) fn with_receive(
        mut event: Event,
        rcv_nxt: u32,
        copied_seq: u32,
        fin: bool,
    ) -> Event {
        event.receive = Some(ReceiveState {
            rcv_nxt,
            copied_seq,
            fin_received: fin,
            queue_len: 0,
        });
        event
    }

    pub(crate) fn state(old: u8, new: u8) -> EventKind {
        EventKind::State { old, new }
    }

    pub(crate) const DESTROY: EventKind = EventKind::Destroy;
    pub(crate) const RELEASE: EventKind = EventKind::Close { time_wait: false };
    pub(crate) const ACCEPT: EventKind = EventKind::Accept { traced: true };

    #[test]
    fn address_reuse_makes_two_timelines() {
        let mut store = Store::default();
        let first = key(0x1000, 10);
        let second = key(0x1000, 500);
        store.insert(event(
            first,
            100,
            state(tcp_state::SYN_RECV, tcp_state::ESTABLISHED),
        ));
        store.insert(event(
            first,
            200,
            state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
        ));
        store.insert(event(first, 300, DESTROY));
        store.insert(event(
            second,
            600,
            state(tcp_state::SYN_RECV, tcp_state::ESTABLISHED),
        ));

        assert_eq!(store.sockets_seen(), 2);
        let old = store.get(&first).unwrap();
        let new = store.get(&second).unwrap();
        // Each with its opening, rebuilt from its birth.
        assert_eq!(old.entries().len(), 4);
        assert!(old.destroyed());
        assert_eq!(old.close_wait_since(), Some(200));
        assert_eq!(new.entries().len(), 2);
        assert!(!new.destroyed());
        assert_eq!(new.state(), Some(tcp_state::ESTABLISHED));
        assert_eq!(new.close_wait_since(), None);
    }

    #[test]
    fn out_of_order_cpus_sort_by_time() {
        let mut store = Store::default();
        let sock = key(0x2000, 1);
        // CPU 1's later transitions reach userspace before CPU 0's earlier one.
        store.insert(event(
            sock,
            300,
            state(tcp_state::CLOSE_WAIT, tcp_state::LAST_ACK),
        ));
        store.insert(with_receive(event(sock, 250, RELEASE), 11, 11, true));
        store.insert(from_peer(with_receive(
            event(
                sock,
                100,
                state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
            ),
            11,
            10,
            true,
        )));

        let timeline = store.get(&sock).unwrap();
        let times: Vec<u64> = timeline.entries().iter().map(|e| e.ts_ns).collect();
        assert_eq!(times, [100, 250, 300]);
        assert_eq!(timeline.state(), Some(tcp_state::LAST_ACK));
        assert_eq!(timeline.close_wait_since(), Some(100));
        let receive = timeline.receive().unwrap();
        assert_eq!(receive.ts_ns, 250);
        assert!(!receive.value.eof_unread());
        assert!(timeline.closed());
    }

    #[test]
    fn equal_times_keep_arrival_order() {
        let mut store = Store::default();
        let sock = key(1, 1);
        store.insert(event(sock, 5, ACCEPT));
        store.insert(event(sock, 5, EventKind::Arrival));
        let kinds: Vec<_> = store
            .get(&sock)
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [ACCEPT, EventKind::Arrival]);
    }

    #[test]
    fn owner_from_the_kernel_and_from_accept() {
        let mut store = Store::default();
        let sock = key(1, 1);
        let mut first = event(sock, 10, state(tcp_state::SYN_RECV, tcp_state::ESTABLISHED));
        first.owner = Some(Owner {
            tgid: PEER,
            fd: None,
        });
        store.insert(first);
        assert_eq!(store.get(&sock).unwrap().owner().unwrap().tgid, PEER);

        // Another process took it from the listener.
        let mut accept = event(sock, 20, ACCEPT);
        accept.owner = Some(Owner {
            tgid: OWNER,
            fd: None,
        });
        accept.task.tid = OWNER + 1;
        accept.task.comm = Comm::new("worker");
        store.insert(accept);
        assert_eq!(
            store.get(&sock).unwrap().owner(),
            Some(OwnerInfo {
                tgid: OWNER,
                fd: None
            })
        );
        assert_eq!(store.comm(OWNER).as_deref(), Some("worker"));

        // A socket found at start names its fd; a later record that knows the owner but not the
        // fd keeps it, and the main thread's comm replaces the worker thread's.
        let mut present = event(
            sock,
            30,
            EventKind::Present {
                fd: 9,
                state: tcp_state::ESTABLISHED,
                send_shutdown: false,
            },
        );
        present.owner = Some(Owner {
            tgid: OWNER,
            fd: Some(9),
        });
        store.insert(present);
        let mut arrival = event(sock, 40, EventKind::Arrival);
        arrival.owner = Some(Owner {
            tgid: OWNER,
            fd: None,
        });
        store.insert(arrival);
        assert_eq!(store.get(&sock).unwrap().owner().unwrap().fd, Some(9));
        assert_eq!(store.comm(OWNER).as_deref(), Some("mailer"));

        // Records run by another process never name the owner.
        let other = key(2, 2);
        let mut state_change = from_peer(event(other, 30, state(1, 8)));
        state_change.owner = None;
        store.insert(state_change);
        assert_eq!(store.get(&other).unwrap().owner(), None);
        assert!(!store.comms.contains_key(&PEER));
    }

    #[test]
    fn first_write_shutdown() {
        let mut store = Store::default();
        let sock = key(1, 1);
        let shutdown = |how| EventKind::Shutdown { how };
        store.insert(event(sock, 10, shutdown(shutdown_how::SHUT_RD)));
        assert_eq!(store.get(&sock).unwrap().write_shutdown(), None);
        store.insert(with_receive(
            event(sock, 40, shutdown(shutdown_how::SHUT_WR)),
            5,
            5,
            false,
        ));
        store.insert(with_receive(
            event(sock, 30, shutdown(shutdown_how::SHUT_RDWR)),
            3,
            3,
            false,
        ));
        let first = store.get(&sock).unwrap().write_shutdown().unwrap();
        assert_eq!(first.ts_ns, 30);
        assert_eq!(first.receive.unwrap().rcv_nxt, 3);
    }

    /// A socket's timeline as (time, what) pairs.
    fn steps(store: &Store, sock: SockKey) -> Vec<(u64, EventKind)> {
        let timeline = store.get(&sock).unwrap();
        timeline
            .entries()
            .iter()
            .map(|e| (e.ts_ns, e.kind))
            .collect()
    }

    #[test]
    fn the_opening_the_kernel_left_out_is_rebuilt_once() {
        let mut store = Store::default();
        let connected = key(1, 5);
        store.insert(event(
            connected,
            10,
            state(tcp_state::SYN_SENT, tcp_state::ESTABLISHED),
        ));
        store.insert(event(
            connected,
            20,
            state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
        ));
        assert_eq!(
            steps(&store, connected),
            [
                (5, EventKind::Connect),
                (5, state(tcp_state::CLOSE, tcp_state::SYN_SENT)),
                (10, state(tcp_state::SYN_SENT, tcp_state::ESTABLISHED)),
                (20, state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT)),
            ]
        );
        assert_eq!(
            store.get(&connected).unwrap().opened,
            Some(Opened {
                ts_ns: 5,
                accepted: false
            })
        );
        let accepted = key(2, 7);
        store.insert(event(
            accepted,
            10,
            state(tcp_state::SYN_RECV, tcp_state::ESTABLISHED),
        ));
        let timeline = store.get(&accepted).unwrap();
        assert_eq!(timeline.entries().len(), 2);
        assert_eq!(
            timeline.opened,
            Some(Opened {
                ts_ns: 7,
                accepted: true
            })
        );
        assert_eq!(store.sockets_seen(), 2);
    }

    #[test]
    fn a_final_close_or_an_untraced_acceptor_ends_the_story() {
        let mut store = Store::default();
        let closed = key(1, 1);
        let taken = key(2, 2);
        store.insert(event(closed, 10, ACCEPT));
        store.insert(event(closed, 20, RELEASE));
        store.insert(event(
            taken,
            10,
            state(tcp_state::SYN_RECV, tcp_state::ESTABLISHED),
        ));
        store.insert(event(taken, 20, EventKind::Accept { traced: false }));
        store.sweep(|_| false);
        assert_eq!(store.tracked(), 0);
        assert_eq!(store.dropped().finished, 2);
        assert_eq!(store.counts().held().count(), 0);
    }

    #[test]
    fn busy_sockets_stay_bounded() {
        let mut store = Store::default();
        let sock = key(1, 1);
        store.insert(event(sock, 0, ACCEPT));
        for ts in 1..(MAX_ENTRIES as u64 + 50) {
            store.insert(with_receive(
                event(sock, ts, EventKind::Arrival),
                ts as u32,
                0,
                false,
            ));
        }
        store.insert(event(sock, 5_000, RELEASE));
        let timeline = store.get(&sock).unwrap();
        assert_eq!(timeline.entries().len(), MAX_ENTRIES + 1);
        assert_eq!(timeline.elided(), 50);
        assert_eq!(
            timeline.receive().unwrap().value.rcv_nxt,
            MAX_ENTRIES as u32 + 49
        );
        assert!(timeline.closed());
    }

    #[test]
    fn a_socket_reconnected_in_a_loop_stays_bounded() {
        use tcp_state::{CLOSE, ESTABLISHED, SYN_SENT};
        let mut store = Store::default();
        let sock = key(1, 1);
        let mut ts = 0;
        for _ in 0..MAX_ENTRIES {
            for (old, new) in [
                (CLOSE, SYN_SENT),
                (SYN_SENT, ESTABLISHED),
                (ESTABLISHED, CLOSE),
            ] {
                ts += 1;
                store.insert(event(sock, ts, state(old, new)));
            }
        }
        store.insert(event(sock, ts + 1, RELEASE));
        let timeline = store.get(&sock).unwrap();
        assert_eq!(timeline.entries().len(), MAX_ENTRIES + 1);
        assert_eq!(timeline.elided(), 2 * MAX_ENTRIES as u64);
        assert!(timeline.closed(), "the close is kept past the cap");
        assert_eq!(timeline.state(), Some(CLOSE), "and the state learned");
    }

    #[test]
    fn sweep_drops_destroyed_at_once_ignores_stragglers_and_respects_keep() {
        let mut store = Store::default();
        let dead = key(1, 1);
        let kept = key(2, 2);
        let alive = key(3, 3);
        store.insert(event(dead, 100, ACCEPT));
        store.insert(event(dead, 150, DESTROY));
        store.insert(event(kept, 100, DESTROY));
        store.insert(event(alive, 200, ACCEPT));
        store.sweep(|k| *k == kept);
        assert!(store.get(&dead).is_none());
        assert!(store.get(&kept).is_some());
        assert!(store.get(&alive).is_some());

        // A straggler from another CPU does not bring the dead socket back...
        store.insert(event(dead, 140, EventKind::Arrival));
        assert!(store.get(&dead).is_none());
        assert_eq!(store.dropped().late_records, 1);
        // ...until the grace period is over (twice over at most): the address may belong to a
        // new socket by then.
        store.insert(event(alive, 200 + RETIRED_GRACE_NS, EventKind::Arrival));
        store.sweep(|_| false);
        assert!(store.get(&kept).is_none(), "dropped once no longer kept");
        store.insert(event(dead, 300 + RETIRED_GRACE_NS, ACCEPT));
        assert!(store.get(&dead).is_none(), "still within the grace period");
        store.insert(event(alive, 200 + 2 * RETIRED_GRACE_NS, EventKind::Arrival));
        store.sweep(|_| false);
        store.insert(event(dead, 300 + 2 * RETIRED_GRACE_NS, ACCEPT));
        assert!(store.get(&dead).is_some());
        // A read or an arrival starts no timeline: it can only be a straggler.
        store.insert(event(
            key(8, 8),
            400 + 2 * RETIRED_GRACE_NS,
            EventKind::Arrival,
        ));
        assert!(store.get(&key(8, 8)).is_none());
        assert_eq!(store.sockets_seen(), 4);
        assert_eq!(
            store.dropped(),
            Dropped {
                finished: 2,
                evicted: 0,
                late_records: 3
            }
        );
    }

    #[test]
    fn a_story_wholly_within_one_read_makes_no_timeline() {
        let mut store = Store::default();
        let (churned, lasting) = (key(1, 1), key(2, 2));
        let mut opened = event(
            churned,
            10,
            state(tcp_state::SYN_SENT, tcp_state::ESTABLISHED),
        );
        opened.remote = Some("10.0.0.5:5432".parse().unwrap());
        store.insert_batch(&[
            opened,
            event(
                lasting,
                15,
                state(tcp_state::SYN_RECV, tcp_state::ESTABLISHED),
            ),
            event(churned, 20, EventKind::Close { time_wait: true }),
            event(
                churned,
                20,
                state(tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1),
            ),
        ]);
        assert!(store.get(&churned).is_none());
        assert!(store.get(&lasting).is_some());
        assert_eq!(store.sockets_seen(), 2);
        assert_eq!(store.dropped().finished, 1);
        let remotes: Vec<_> = store.counts().remotes().collect();
        assert!(
            remotes.contains(&(
                Remote::Service("10.0.0.5:5432".parse().unwrap()),
                stats::RemoteCounts {
                    connections: 1,
                    time_wait: 1
                }
            )),
            "{remotes:?}"
        );
        // A straggler after its end is ignored, as for a dropped timeline.
        store.insert_batch(&[event(churned, 40, EventKind::Arrival)]);
        assert!(store.get(&churned).is_none());

        // A story that began in an earlier read ends in its timeline.
        store.insert_batch(&[event(lasting, 50, DESTROY)]);
        assert!(store.get(&lasting).unwrap().destroyed());
    }

    #[test]
    fn an_accepted_connection_known_by_its_close_alone() {
        // Its handshake ended at its birth, unrecorded; its one record is the owner's close.
        let mut store = Store::default();
        let (churned, held) = (key(1, 5), key(2, 6));
        let at_birth = |sock, ts, kind| {
            let mut e = event(sock, ts, kind);
            e.established_at_birth = true;
            e.remote = Some("10.0.0.2:50412".parse().unwrap());
            e
        };
        store.insert_batch(&[
            at_birth(churned, 20, EventKind::Close { time_wait: true }),
            at_birth(
                churned,
                20,
                state(tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1),
            ),
            at_birth(
                held,
                30,
                state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT),
            ),
        ]);
        assert!(store.get(&churned).is_none());
        let remotes: Vec<_> = store.counts().remotes().collect();
        assert_eq!(
            remotes,
            [(
                Remote::Client("10.0.0.2".parse().unwrap()),
                stats::RemoteCounts {
                    connections: 2,
                    time_wait: 1
                }
            )]
        );
        // A state change another CPU recorded as the close made the kernel side forget the
        // socket, read after the close: no second connection, no timeline.
        store.insert_batch(&[at_birth(
            churned,
            21,
            state(tcp_state::FIN_WAIT1, tcp_state::FIN_WAIT2),
        )]);
        assert!(store.get(&churned).is_none());
        assert_eq!(store.sockets_seen(), 2);
        assert_eq!(store.dropped().late_records, 1);
        assert_eq!(
            store.counts().remotes().collect::<Vec<_>>(),
            remotes,
            "counted again"
        );
        // The timeline of the one still held opens as the kernel opened it, at its birth.
        assert_eq!(
            steps(&store, held),
            [
                (6, state(tcp_state::LISTEN, tcp_state::SYN_RECV)),
                (6, state(tcp_state::SYN_RECV, tcp_state::ESTABLISHED)),
                (30, state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT)),
            ]
        );
        assert_eq!(
            store.get(&held).unwrap().opened,
            Some(Opened {
                ts_ns: 6,
                accepted: true
            })
        );
    }

    #[test]
    fn closed_sockets_stay_for_the_retention_window() {
        // Found closed in /proc rather than recorded: no record ends its story.
        fn closed_in_proc(store: &mut Store, sock: SockKey, at: u64) {
            store.insert(event(sock, at, ACCEPT));
            store.timelines.get_mut(&sock).unwrap().closed_ns = Some(at);
        }
        let mut store = Store::default();
        let sock = key(1, 1);
        closed_in_proc(&mut store, sock, 100);
        store.sweep(|_| false);
        assert!(store.get(&sock).is_some());
        store.insert(event(key(2, 2), 100 + CLOSED_RETENTION_NS, ACCEPT));
        store.sweep(|sock| *sock == key(2, 2));
        assert!(store.get(&sock).is_none());
        assert_eq!(store.dropped().finished, 1);
        // A kept socket stays past the window, until nothing needs it.
        let kept = key(3, 3);
        closed_in_proc(&mut store, kept, 200 + CLOSED_RETENTION_NS);
        let later = 200 + 2 * CLOSED_RETENTION_NS;
        store.insert(event(key(2, 2), later, EventKind::Arrival));
        store.sweep(|sock| *sock == kept);
        assert!(store.get(&kept).is_some());
        store.insert(event(
            key(2, 2),
            later + CLOSED_SCAN_EVERY_NS,
            EventKind::Arrival,
        ));
        store.sweep(|_| false);
        assert!(store.get(&kept).is_none());
    }

    #[test]
    fn a_recorded_close_ends_the_story_at_once() {
        let mut store = Store::default();
        let (sock, kept) = (key(1, 1), key(2, 2));
        for key in [sock, kept] {
            store.insert(event(key, 10, ACCEPT));
            store.insert(event(key, 20, RELEASE));
        }
        store.sweep(|k| *k == kept);
        assert!(store.get(&sock).is_none());
        assert!(store.get(&kept).unwrap().closed());
    }

    #[test]
    fn past_the_cap_the_least_recently_active_go_first() {
        let mut store = Store::with_capacity_limit(10);
        let leak = key(100, 100);
        store.insert(event(leak, 1, ACCEPT));
        for n in 0..10 {
            store.insert(event(key(n, n), 10 + n, ACCEPT));
        }
        assert_eq!(store.tracked(), 11);
        store.sweep(|k| *k == leak);
        // Down to 90% of the cap, the oldest first, but never what the detectors still need.
        assert_eq!(store.tracked(), 9);
        assert!(store.get(&leak).is_some());
        assert!(store.get(&key(0, 0)).is_none());
        assert!(store.get(&key(1, 1)).is_none());
        assert!(store.get(&key(2, 2)).is_some());
        assert_eq!(store.dropped().evicted, 2);
        assert!(
            store
                .counts()
                .held()
                .all(|(_, states)| states.iter().map(|(_, n)| n).sum::<u64>() <= 9),
            "evicted sockets leave the held counts"
        );
    }

    #[test]
    fn without_an_accept_time_the_closest_within_the_window_pairs_once() {
        let mut unpaired = vec![
            (1_000, key(1, 1)),
            (5_000, key(2, 2)),
            (PAIR_WINDOW_NS * 3, key(3, 3)),
        ];
        let client_born = (4_000, false);
        assert_eq!(take_mate(&mut unpaired, client_born, true), Some(key(2, 2)));
        assert_eq!(take_mate(&mut unpaired, client_born, true), Some(key(1, 1)));
        assert_eq!(
            take_mate(&mut unpaired, client_born, true),
            None,
            "out of the window"
        );
        assert_eq!(unpaired, [(PAIR_WINDOW_NS * 3, key(3, 3))]);
    }

    #[test]
    fn an_accepted_client_pairs_with_the_first_connect_after_its_accept() {
        // Upstream 1 was connected for a client taken just before ours, upstream 2 for ours.
        let mut upstreams = vec![(3_900, key(1, 1)), (4_300, key(2, 2))];
        assert_eq!(
            take_mate(&mut upstreams, (4_000, true), true),
            Some(key(2, 2))
        );
        // Seen from the upstream: the client taken last before its connect.
        let mut clients = vec![(3_800, key(3, 3)), (4_000, key(4, 4)), (4_350, key(5, 5))];
        assert_eq!(
            take_mate(&mut clients, (4_300, true), false),
            Some(key(4, 4))
        );
        // Its birth, with no accept time, is before the connect; the closer one is after it.
        let mut clients = vec![(4_200, key(6, 6)), (4_350, key(7, 7))];
        assert_eq!(
            take_mate(&mut clients, (4_300, true), false),
            Some(key(6, 6))
        );
    }

    #[test]
    fn a_client_queued_behind_another_pairs_with_the_upstream_connected_after_its_accept() {
        // Born first, taken second: the proxy served the client behind it in the queue first.
        let (ours, theirs) = (key(1, 100), key(2, 150));
        let (our_upstream, their_upstream) = (key(3, 310), key(4, 210));
        let accepted = |sock: SockKey, taken_ns| {
            let mut e = event(sock, taken_ns, ACCEPT);
            e.established_at_birth = true;
            e.taken_ns = Some(taken_ns);
            e
        };
        let connected = |sock: SockKey| {
            let established = state(tcp_state::SYN_SENT, tcp_state::ESTABLISHED);
            let mut e = from_peer(event(sock, sock.born_ns + 1, established));
            e.remote = Some("127.0.0.1:9000".parse().unwrap());
            e
        };
        let mut store = Store::default();
        for e in [
            accepted(theirs, 200),
            connected(their_upstream),
            accepted(ours, 300),
            connected(our_upstream),
        ] {
            store.insert(e);
        }
        let fin = state(tcp_state::ESTABLISHED, tcp_state::CLOSE_WAIT);
        store.insert(from_peer(event(ours, 500, fin)));
        store.pair_half_closed(600);
        let partner = |sock| store.get(&sock).unwrap().partner().map(|p| p.sock);
        assert_eq!(partner(our_upstream), Some(ours));
        assert_eq!(
            partner(their_upstream),
            None,
            "by birth alone it was the closer one"
        );
    }

    #[test]
    fn exits_apply_at_the_next_evaluation() {
        let mut store = Store::default();
        let sock = key(1, 1);
        store.insert(event(sock, 10, ACCEPT));
        store.owner_exited(OWNER, 20);
        assert!(!store.get(&sock).unwrap().owner_exited());
        store.apply_exits();
        assert!(store.get(&sock).unwrap().owner_exited());
    }

    #[test]
    fn dropped_timelines_go_to_whoever_asked() {
        let mut store = Store::default();
        store.insert(event(key(9, 9), 50, DESTROY));
        store.sweep(|_| false);
        assert!(store.take_swept().is_empty(), "nobody asked for them");

        let mut store = Store::default().keeping_swept();
        let dead = key(1, 1);
        store.insert(event(dead, 100, ACCEPT));
        store.insert(event(dead, 200, DESTROY));
        store.sweep(|_| false);
        let swept = store.take_swept();
        let [(swept_key, timeline)] = &swept[..] else {
            panic!("expected one swept timeline: {swept:?}");
        };
        assert_eq!(*swept_key, dead);
        assert_eq!(timeline.entries().len(), 2);
        assert!(timeline.destroyed());
        assert!(store.take_swept().is_empty(), "handed over once");
    }
}
