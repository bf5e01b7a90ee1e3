//! Per-socket timelines: every decoded event lands here, ordered by kernel time, together with the
//! facts the detectors ask about (state, owner, shutdown, close, receive side), and the counts
//! per process and per remote endpoint that outlive the timelines.

mod stats;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use leaktrace_common::{shutdown_how, tcp_state};

use crate::activity::{KernelTimer, Sample, Sampler, Wanted};
use crate::decoder::{Event, EventKind, ReceiveState, SockKey};
use crate::holders;
pub use stats::{Counts, Remote};

/// Entries one timeline keeps. Only reads and arrivals on a shut-down socket can repeat without
/// bound (a peer streaming into a half-closed connection); past this many entries those are
/// counted instead of stored, so one busy socket cannot grow memory without limit.
const MAX_ENTRIES: usize = 1000;

/// How long a dropped timeline's socket is remembered, in kernel time of later records: records
/// from other CPUs can still arrive slightly out of order, and one arriving after the timeline was
/// dropped must not start a bogus new timeline for a dead socket.
const RETIRED_GRACE_NS: u64 = 2_000_000_000;

/// How long a timeline stays after its owner closed the socket without the kernel destroying it
/// yet. Every leak class ends with the owner's close, so the rest of the socket's life (FIN_WAIT2
/// waits up to a minute by default, LAST_ACK retransmits) only adds detail no finding will show.
const CLOSED_RETENTION_NS: u64 = 60_000_000_000;

/// How often, in kernel time, the timelines are looked through for ones closed long enough.
const CLOSED_SCAN_EVERY_NS: u64 = 5_000_000_000;

/// Timelines kept by default, whatever the churn: at a few hundred bytes to a few KiB each, tens
/// of MiB. Past it, the least recently active sockets without an open finding are dropped.
pub const DEFAULT_MAX_SOCKETS: usize = 100_000;

/// Past the cap, this share of the cap is dropped at once, so that one scan for the least
/// recently active pays for many new sockets.
const EVICT_BATCH_DIVISOR: usize = 10;

/// How close in time a proxy opens the two sockets of one proxied pair: it accepts the client and
/// connects upstream for it (or the other way round) within this much, including the time to read
/// what tells it where to connect. Sockets opened further apart are not a pair: a pooled upstream
/// connection, opened for an earlier client, never pairs with a later one.
const PAIR_WINDOW_NS: u64 = 2_000_000_000;

/// How often the kernel's socket table is read for traffic and timers, at most.
const ACTIVITY_EVERY_NS: u64 = 1_000_000_000;

/// A value together with the kernel time it was observed at, so out-of-order arrivals cannot
/// overwrite newer facts with older ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamped<T> {
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
    found_at_start: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerInfo {
    pub tgid: u32,
    pub fd: Option<i32>,
}

/// The first successful `shutdown(SHUT_WR | SHUT_RDWR)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteShutdown {
    /// When it happened, or for one that predates the trace, when tracing found it.
    pub ts_ns: u64,
    /// The receive side at that moment, when the record carried it.
    pub receive: Option<ReceiveState>,
    /// It happened before tracing started: what the peer sent since is unknown.
    pub before_trace: bool,
}

#[derive(Debug, Default)]
pub struct Timeline {
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
    /// [`Store::recheck_owners`]), not recorded.
    close_unrecorded: bool,
    destroyed_ns: Option<u64>,
    receive: Option<Stamped<ReceiveState>>,
    /// When the owning process exited: every finding on the socket ends there, unless another
    /// process still holds it (see [`Store::reattribute`]).
    owner_exited_ns: Option<u64>,
    /// When the owner closed its fd while other fds still held the socket.
    owner_released_ns: Option<u64>,
    /// The owner was found by looking for who holds the socket, not from a record: later
    /// records, which carry the kernel's first idea of the owner, must not undo it.
    reattributed: bool,
    /// Latest known inode of the socket's file.
    ino: Option<u64>,
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
    /// This socket's peer half-closed, and its pair's other socket was looked for (found or
    /// not): nothing more to look for.
    paired: bool,
    /// Traffic and timers, as last sampled while the socket had a half-closed partner.
    activity: Option<Activity>,
    /// The accept or connect that made the socket, if tracing saw it: a socket found at start
    /// has no opening time to pair it by.
    opened: Option<Opened>,
}

/// The other socket of a proxied pair (accepted and connected by one process about together),
/// whose peer half-closed: its FIN arrived, moving it to CLOSE_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partner {
    pub sock: SockKey,
    pub fd: Option<i32>,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// Kernel time its peer's FIN arrived.
    pub half_closed_ns: u64,
}

/// What the kernel's socket table said of a connection's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
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
        // Another process closing its own copy of the socket's fd changes nothing here: the
        // owner still holds it. Such copies are often brief and not the application's (a second
        // leaktrace or a debugger duplicating fds with pidfd_getfd to inspect them), so they are
        // left out of the timeline rather than shown as closes.
        if let EventKind::FdClosed { .. } = event.kind {
            if self.owner().is_some_and(|o| o.tgid != event.task.tgid) {
                return;
            }
        }
        let ts = event.ts_ns;
        self.last_ns = self.last_ns.max(ts);
        self.learn_owner(&event);
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
                    found_at_start: false,
                };
                Stamped::update(&mut self.state, ts, seen);
                if new == tcp_state::CLOSE_WAIT {
                    self.close_wait_since = Some(self.close_wait_since.map_or(ts, |t| t.min(ts)));
                    self.close_wait_entered = true;
                }
            }
            EventKind::Present {
                state,
                send_shutdown,
                ..
            } => {
                let seen = SeenState {
                    state,
                    found_at_start: true,
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
                        before_trace: true,
                    });
                }
            }
            EventKind::Shutdown { how, ret: 0, .. }
                if (how == shutdown_how::SHUT_WR || how == shutdown_how::SHUT_RDWR)
                    && self.write_shutdown.is_none_or(|first| ts < first.ts_ns) =>
            {
                self.write_shutdown = Some(WriteShutdown {
                    ts_ns: ts,
                    receive: event.receive,
                    before_trace: false,
                });
            }
            EventKind::Accept { .. } | EventKind::Connect { .. }
                if self.opened.is_none_or(|o| ts < o.ts_ns) =>
            {
                self.opened = Some(Opened {
                    ts_ns: ts,
                    accepted: matches!(event.kind, EventKind::Accept { .. }),
                });
            }
            EventKind::Close { .. } => {
                self.closed_ns = Some(self.closed_ns.map_or(ts, |t| t.min(ts)));
            }
            EventKind::Destroy => self.destroyed_ns = Some(ts),
            EventKind::FdClosed { fd }
                if self
                    .owner()
                    .is_some_and(|o| o.tgid == event.task.tgid && o.fd == Some(fd)) =>
            {
                self.owner_released_ns.get_or_insert(ts);
            }
            EventKind::Recv { ret: Some(ret) } => {
                self.recv_results_known = true;
                if ret == 0 {
                    self.eof_read_ns = Some(self.eof_read_ns.map_or(ts, |t| t.min(ts)));
                }
            }
            _ => {}
        }
        if self.entries.len() >= MAX_ENTRIES
            && matches!(event.kind, EventKind::Recv { .. } | EventKind::Arrival)
        {
            self.elided += 1;
            return;
        }
        // Stable for equal timestamps: records with one time keep their arrival order.
        let at = self.entries.partition_point(|e| e.ts_ns <= ts);
        self.entries.insert(at, event);
    }

    fn learn_owner(&mut self, event: &Event) {
        if let Some(ino) = event.ino {
            self.ino = Some(ino);
        }
        let learned = match event.kind {
            EventKind::Accept { fd }
            | EventKind::Connect { fd, .. }
            | EventKind::Shutdown { fd, .. } => OwnerInfo {
                tgid: event.task.tgid,
                fd: Some(fd),
            },
            _ if self.reattributed => return,
            _ => match event.owner {
                Some(owner) => OwnerInfo {
                    tgid: owner.tgid,
                    fd: owner.fd,
                },
                None => return,
            },
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
    pub fn entries(&self) -> &[Event] {
        &self.entries
    }

    /// Reads and arrivals left out of [`Self::entries`] to bound memory.
    pub fn elided(&self) -> u64 {
        self.elided
    }

    /// The TCP state of the latest state change by kernel time.
    pub fn state(&self) -> Option<u8> {
        self.state.map(|s| s.value.state)
    }

    /// When the socket entered its current state, and whether that state was found when tracing
    /// started (`true`: the time is when it was found; it entered earlier, how much is unknown).
    pub fn state_entered(&self) -> Option<(u64, bool)> {
        self.state.map(|s| (s.ts_ns, s.value.found_at_start))
    }

    /// When the peer's FIN moved the socket into CLOSE_WAIT (or when a socket already there was
    /// first seen).
    pub fn close_wait_since(&self) -> Option<u64> {
        self.close_wait_since
    }

    /// The socket was already in CLOSE_WAIT when tracing started.
    pub fn close_wait_before_trace(&self) -> bool {
        self.close_wait_since.is_some() && !self.close_wait_entered
    }

    pub fn local(&self) -> Option<SocketAddr> {
        self.local.map(|a| a.value)
    }

    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote.map(|a| a.value)
    }

    pub fn owner(&self) -> Option<OwnerInfo> {
        self.owner.map(|o| o.value)
    }

    pub fn write_shutdown(&self) -> Option<WriteShutdown> {
        self.write_shutdown
    }

    /// The owner released the socket (`close(2)` or the kernel's `tcp_close`).
    pub fn closed(&self) -> bool {
        self.closed_ns.is_some()
    }

    /// The socket was found closed in /proc after records were lost, its close not recorded.
    pub fn close_unrecorded(&self) -> bool {
        self.close_unrecorded
    }

    pub fn destroyed(&self) -> bool {
        self.destroyed_ns.is_some()
    }

    pub fn owner_exited(&self) -> bool {
        self.owner_exited_ns.is_some()
    }

    /// The receive side as of the latest record (by kernel time) that carried it.
    pub fn receive(&self) -> Option<Stamped<ReceiveState>> {
        self.receive
    }

    /// Whether, at kernel time `ts_ns` with the receive side `receive`, the peer's FIN had
    /// arrived but the owner had not seen end-of-stream. The kernel's counters alone cannot
    /// tell: a read that takes the last data bytes of a segment carrying the FIN also moves
    /// `copied_seq` past the FIN, yet returns the bytes, not 0, and a runtime that pauses then
    /// never learns of the end (incident 3 as Node.js does it). So where reads report their
    /// result, only a read returning 0 counts as the EOF consumed.
    pub fn eof_unread_at(&self, ts_ns: u64, receive: &ReceiveState) -> bool {
        receive.fin_received
            && self.eof_read_ns.is_none_or(|read| read > ts_ns)
            && (self.recv_results_known || receive.eof_unread())
    }

    /// [`Self::eof_unread_at`] as of the latest receive state.
    pub fn eof_unread(&self) -> bool {
        self.receive
            .is_some_and(|r| self.eof_unread_at(r.ts_ns, &r.value))
    }

    /// Where the per-remote counts put this socket's connection, once its direction is known.
    pub fn remote_key(&self) -> Option<Remote> {
        self.tally.remote()
    }

    pub fn partner(&self) -> Option<Partner> {
        self.partner
    }

    pub fn activity(&self) -> Option<Activity> {
        self.activity
    }

    fn live(&self) -> bool {
        !self.closed() && !self.destroyed() && !self.owner_exited()
    }

    /// The states in which a connection can sit idle with nothing to end it.
    fn may_idle(&self) -> bool {
        matches!(
            self.state(),
            Some(tcp_state::ESTABLISHED | tcp_state::FIN_WAIT2)
        )
    }

    /// The inode to look for holders of, when the recorded owner let go of the socket (closed
    /// its fd while others held it, or exited) and the socket may live on elsewhere.
    fn orphan_inode(&self) -> Option<u64> {
        let let_go = self.owner_released_ns.is_some() || self.owner_exited_ns.is_some();
        (let_go && !self.closed() && !self.destroyed()).then_some(self.ino?)
    }

    /// `holder` holds the socket now, found in /proc rather than recorded.
    fn hand_over(&mut self, holder: &holders::Holder) {
        self.owner = Some(Stamped {
            ts_ns: self.owner.map_or(0, |o| o.ts_ns),
            value: OwnerInfo {
                tgid: holder.pid,
                fd: Some(holder.fd),
            },
        });
        self.reattributed = true;
        self.owner_released_ns = None;
        self.owner_exited_ns = None;
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
pub struct Store {
    timelines: HashMap<SockKey, Timeline>,
    /// Process names by tgid, learned from records the owner itself produced or from /proc.
    comms: HashMap<u32, String>,
    sockets_seen: u64,
    latest_ns: u64,
    counts: Counts,
    /// Sockets destroyed since the last sweep (and those an open finding kept): the candidates
    /// for dropping, so a sweep looks at them only, not at every timeline.
    destroyed: VecDeque<(u64, SockKey)>,
    /// When the timelines were last looked through for sockets closed longer than
    /// [`CLOSED_RETENTION_NS`]; a queue of every close would hold a minute of closes (tens of
    /// MiB under churn) for the few sockets the kernel keeps that long.
    closed_scanned_ns: u64,
    /// Dropped timelines' sockets, with when they were dropped, for [`RETIRED_GRACE_NS`].
    retired: HashMap<SockKey, u64>,
    retired_order: VecDeque<(u64, SockKey)>,
    /// Exits not yet applied to the timelines: one pass over them per evaluation, not per exit,
    /// as on a busy host every process's exit is a record.
    exits: HashMap<u32, u64>,
    /// When the kernel's socket table was last read for traffic and timers.
    activity_sampled_ns: Option<u64>,
    /// Reading it failed once already, and said so.
    activity_failed: bool,
    /// Timelines dropped, until [`Self::take_swept`]; `None`: nobody wants them.
    swept: Option<Vec<(SockKey, Timeline)>>,
    max_sockets: usize,
    dropped: Dropped,
}

impl Default for Store {
    fn default() -> Self {
        Self::with_capacity_limit(DEFAULT_MAX_SOCKETS)
    }
}

impl Store {
    /// A store that keeps at most `max_sockets` timelines (at least one).
    pub fn with_capacity_limit(max_sockets: usize) -> Self {
        Self {
            timelines: HashMap::new(),
            comms: HashMap::new(),
            sockets_seen: 0,
            latest_ns: 0,
            counts: Counts::default(),
            destroyed: VecDeque::new(),
            closed_scanned_ns: 0,
            retired: HashMap::new(),
            retired_order: VecDeque::new(),
            exits: HashMap::new(),
            activity_sampled_ns: None,
            activity_failed: false,
            swept: None,
            max_sockets: max_sockets.max(1),
            dropped: Dropped::default(),
        }
    }

    /// Hands the timelines it drops to [`Self::take_swept`] instead, for an output that writes
    /// each socket once its story is over.
    pub fn keeping_swept(self) -> Self {
        Self {
            swept: Some(Vec::new()),
            ..self
        }
    }

    /// The timelines swept since the last call, oldest sweep first.
    pub fn take_swept(&mut self) -> Vec<(SockKey, Timeline)> {
        self.swept.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Timelines in memory.
    pub fn tracked(&self) -> usize {
        self.timelines.len()
    }

    pub fn insert(&mut self, event: Event) {
        self.latest_ns = self.latest_ns.max(event.ts_ns);
        if self.retired.contains_key(&event.sock) {
            self.dropped.late_records += 1;
            return;
        }
        if event.kind == EventKind::Destroy {
            self.destroyed.push_back((event.ts_ns, event.sock));
        }
        let timeline = self.timelines.entry(event.sock).or_insert_with(|| {
            self.sockets_seen += 1;
            Timeline::default()
        });
        let task = event.task.clone();
        let held = timeline.held();
        let remote = timeline.remote();
        self.counts.observe(&mut timeline.tally, &event, remote);
        timeline.insert(event);
        self.counts.move_held(held, timeline.held());
        if timeline.owner().is_some_and(|o| o.tgid == task.tgid) {
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
    pub fn owner_exited(&mut self, tgid: u32, ts_ns: u64) {
        self.exits.entry(tgid).or_insert(ts_ns);
    }

    /// Marks the sockets of the processes that exited since the last call as owner-less.
    pub fn apply_exits(&mut self) {
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
        }
        self.exits.clear();
    }

    /// Sockets whose owner let go of them while other fds still hold them (fork, dup,
    /// SCM_RIGHTS) get whoever holds them now as their owner: the one to blame for a leak.
    pub fn reattribute(&mut self, now_ns: u64) {
        const RESCAN_NS: u64 = 1_000_000_000;
        let wanted: BTreeSet<u64> = self
            .timelines
            .values()
            .filter(|t| {
                t.holders_scanned_ns
                    .is_none_or(|at| now_ns.saturating_sub(at) >= RESCAN_NS)
            })
            .filter_map(Timeline::orphan_inode)
            .collect();
        if wanted.is_empty() {
            return;
        }
        let found = holders::find(&wanted);
        for timeline in self.timelines.values_mut() {
            let Some(ino) = timeline.orphan_inode().filter(|ino| wanted.contains(ino)) else {
                continue;
            };
            timeline.holders_scanned_ns = Some(now_ns);
            let Some(holder) = found.get(&ino).and_then(|h| h.first()) else {
                continue;
            };
            let held = timeline.held();
            timeline.hand_over(holder);
            self.counts.move_held(held, timeline.held());
        }
    }

    /// After records were lost: every socket's recorded owner is looked up in /proc. A close,
    /// an exit or a hand-over among the lost records would otherwise leave the socket held in
    /// leaktrace's view for good, and a leak reported that has ended.
    pub fn recheck_owners(&mut self, now_ns: u64) {
        let mut exited = BTreeSet::new();
        let mut let_go = Vec::new();
        let mut lookup = holders::FdLookup::default();
        for (key, timeline) in &self.timelines {
            // A released socket's holders are looked for anyway (see `reattribute`).
            let checkable = timeline.live() && timeline.owner_released_ns.is_none();
            let Some(owner) = timeline.owner().filter(|_| checkable) else {
                continue;
            };
            let Some(fd) = owner.fd else {
                continue;
            };
            match lookup.holds(owner.tgid, fd, timeline.ino) {
                holders::FdHeld::Yes => {}
                holders::FdHeld::No => let_go.push(*key),
                holders::FdHeld::ProcessGone => {
                    exited.insert(owner.tgid);
                }
            }
        }
        for tgid in exited {
            self.owner_exited(tgid, now_ns);
        }
        let inodes = let_go
            .iter()
            .filter_map(|key| self.timelines.get(key)?.ino)
            .collect();
        let found = holders::find(&inodes);
        for key in let_go {
            let Some(timeline) = self.timelines.get_mut(&key) else {
                continue;
            };
            let held = timeline.held();
            match timeline.ino.and_then(|ino| found.get(&ino)?.first()) {
                Some(holder) => timeline.hand_over(holder),
                None => {
                    timeline.closed_ns.get_or_insert(now_ns);
                    timeline.close_unrecorded = true;
                }
            }
            self.counts.move_held(held, timeline.held());
        }
    }

    pub fn sockets_seen(&self) -> u64 {
        self.sockets_seen
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    pub fn get(&self, key: &SockKey) -> Option<&Timeline> {
        self.timelines.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SockKey, &Timeline)> {
        self.timelines.iter()
    }

    /// The owner's process name: from its own records if any, else from /proc (cached, as a
    /// finding is reported long after the records that named the process).
    pub fn comm(&mut self, tgid: u32) -> Option<String> {
        if let Some(comm) = self.comms.get(&tgid) {
            return Some(comm.clone());
        }
        let comm = std::fs::read_to_string(format!("/proc/{tgid}/comm")).ok()?;
        let comm = comm.trim_end_matches('\n').to_owned();
        self.comms.insert(tgid, comm.clone());
        Some(comm)
    }

    /// Links each socket whose peer half-closed to the other socket of its proxied pair, then,
    /// at most once a second and only while some such pair's other socket is still open, reads
    /// the kernel's socket table for the traffic and timers of those sockets.
    pub fn watch_idle(&mut self, now_ns: u64, sample: &mut Sampler) {
        self.pair_half_closed(now_ns);
        let due = self
            .activity_sampled_ns
            .is_none_or(|at| now_ns.saturating_sub(at) >= ACTIVITY_EVERY_NS);
        if !due || !self.timelines.values().any(Self::wants_activity) {
            return;
        }
        self.activity_sampled_ns = Some(now_ns);
        let wanted: Vec<Wanted> = self
            .timelines
            .values()
            .filter(|t| Self::wants_activity(t))
            .filter_map(|t| {
                let owner = t.owner()?;
                Some(Wanted {
                    pid: owner.tgid,
                    fd: owner.fd?,
                    ino: t.ino?,
                    local: t.local()?,
                    remote: t.remote()?,
                })
            })
            .collect();
        match sample(&wanted) {
            Ok(samples) => self.record_activity(&samples, now_ns),
            Err(e) if !self.activity_failed => {
                self.activity_failed = true;
                eprintln!(
                    "leaktrace: warning: cannot read the traffic of connections ({e}); \
                     idle_half_closed cannot be detected"
                );
            }
            Err(_) => {}
        }
    }

    fn wants_activity(timeline: &Timeline) -> bool {
        timeline.partner.is_some() && timeline.live() && timeline.may_idle()
    }

    /// For each socket whose peer half-closed, the socket of the same owner opened closest to it
    /// in the other direction within [`PAIR_WINDOW_NS`], if that one has no partner yet. Looked
    /// for until the window has passed, as the proxy may open the other socket only after the
    /// half-close (the client sent its request and its FIN at once).
    fn pair_half_closed(&mut self, now_ns: u64) {
        let half_closed: Vec<(SockKey, u32, Opened, Partner)> = self
            .timelines
            .iter()
            .filter(|(_, t)| !t.paired)
            .filter_map(|(key, t)| {
                let half_closed_ns = t.close_wait_since.filter(|_| t.close_wait_entered)?;
                let owner = t.owner()?;
                let partner = Partner {
                    sock: *key,
                    fd: owner.fd,
                    local: t.local(),
                    remote: t.remote(),
                    half_closed_ns,
                };
                Some((*key, owner.tgid, t.opened?, partner))
            })
            .collect();
        if half_closed.is_empty() {
            return;
        }
        // Per owner and direction, the open sockets without a partner by opening time, built once
        // per call: looking through every timeline for each half-closed socket would cost a
        // server under churn (all of whose clients half-close) the square of its connections.
        let owners: HashSet<u32> = half_closed.iter().map(|&(_, pid, ..)| pid).collect();
        let mut unpaired: HashMap<(u32, bool), Vec<(u64, SockKey)>> = HashMap::new();
        for (key, t) in &self.timelines {
            let (Some(owner), Some(opened)) = (t.owner(), t.opened) else {
                continue;
            };
            if t.partner.is_none() && t.live() && owners.contains(&owner.tgid) {
                unpaired
                    .entry((owner.tgid, opened.accepted))
                    .or_default()
                    .push((opened.ts_ns, *key));
            }
        }
        for list in unpaired.values_mut() {
            list.sort_unstable();
        }
        for (key, pid, opened, partner) in half_closed {
            let mate = unpaired
                .get_mut(&(pid, !opened.accepted))
                .and_then(|list| take_closest(list, opened.ts_ns));
            if let Some(mate) = mate.and_then(|m| self.timelines.get_mut(&m)) {
                mate.partner = Some(partner);
            }
            let window_passed = now_ns.saturating_sub(opened.ts_ns) > PAIR_WINDOW_NS;
            if let Some(timeline) = self.timelines.get_mut(&key) {
                timeline.paired = mate.is_some() || window_passed;
            }
        }
    }

    /// Stores what the kernel said of the sockets that want it, found by inode, or by their
    /// addresses where no record carried the inode.
    fn record_activity(&mut self, samples: &[Sample], now_ns: u64) {
        let by_ino: HashMap<u64, &Sample> = samples
            .iter()
            .filter(|s| s.ino != 0)
            .map(|s| (s.ino, s))
            .collect();
        let by_addresses: HashMap<(SocketAddr, SocketAddr), &Sample> =
            samples.iter().map(|s| ((s.local, s.remote), s)).collect();
        for timeline in self.timelines.values_mut() {
            if !Self::wants_activity(timeline) {
                continue;
            }
            let found = match timeline.ino {
                Some(ino) => by_ino.get(&ino),
                None => timeline
                    .local()
                    .zip(timeline.remote())
                    .and_then(|pair| by_addresses.get(&pair)),
            };
            if let Some(sample) = found {
                let idle_ns = u64::try_from(sample.idle.as_nanos()).unwrap_or(u64::MAX);
                timeline.activity = Some(Activity {
                    sampled_ns: now_ns,
                    last_traffic_ns: now_ns.saturating_sub(idle_ns),
                    timer: sample.timer,
                });
            }
        }
    }

    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Drops the timelines nothing needs any more, unless `keep` (the detectors' open findings)
    /// still does: destroyed sockets', owner-closed sockets' after [`CLOSED_RETENTION_NS`], and
    /// past `max_sockets`, the least recently active.
    pub fn sweep(&mut self, keep: impl Fn(&SockKey) -> bool) {
        let now = self.latest_ns;
        while let Some(&(at, key)) = self.retired_order.front() {
            if now.saturating_sub(at) < RETIRED_GRACE_NS {
                break;
            }
            self.retired_order.pop_front();
            self.retired.remove(&key);
        }
        let mut kept = Vec::new();
        while let Some((_, key)) = self.destroyed.pop_front() {
            if keep(&key) {
                kept.push((now, key));
            } else if self.retire(key) {
                self.dropped.finished += 1;
            }
        }
        self.destroyed.extend(kept);
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
        self.retired_order.push_back((self.latest_ns, key));
        if let Some(swept) = &mut self.swept {
            swept.push((key, timeline));
        }
        true
    }
}

/// Removes and returns the socket of `by_opening` (sorted by opening time) opened closest to
/// `ts_ns`, if within [`PAIR_WINDOW_NS`].
fn take_closest(by_opening: &mut Vec<(u64, SockKey)>, ts_ns: u64) -> Option<SockKey> {
    let after = by_opening.partition_point(|&(opened, _)| opened < ts_ns);
    let index = [after.checked_sub(1), Some(after)]
        .into_iter()
        .flatten()
        .filter_map(|i| Some((by_opening.get(i)?.0.abs_diff(ts_ns), i)))
        .filter(|&(apart, _)| apart <= PAIR_WINDOW_NS)
        .min()?
        .1;
    Some(by_opening.remove(index).1)
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
                comm: "mailer".into(),
            },
            owner: Some(Owner {
                tgid: OWNER,
                fd: Some(7),
            }),
            in_owner_context: true,
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
            comm: "curl".into(),
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
        store.insert(event(first, 300, EventKind::Destroy));
        store.insert(event(
            second,
            600,
            state(tcp_state::SYN_RECV, tcp_state::ESTABLISHED),
        ));

        assert_eq!(store.sockets_seen(), 2);
        let old = store.get(&first).unwrap();
        let new = store.get(&second).unwrap();
        assert_eq!(old.entries().len(), 3);
        assert!(old.destroyed());
        assert_eq!(old.close_wait_since(), Some(200));
        assert_eq!(new.entries().len(), 1);
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
        store.insert(with_receive(
            event(sock, 250, EventKind::Close { fd: Some(7) }),
            11,
            11,
            true,
        ));
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
        store.insert(event(sock, 5, EventKind::Accept { fd: 3 }));
        store.insert(event(sock, 5, EventKind::Arrival));
        let kinds: Vec<_> = store
            .get(&sock)
            .unwrap()
            .entries()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [EventKind::Accept { fd: 3 }, EventKind::Arrival]);
    }

    #[test]
    fn owner_from_accept_and_shutdown() {
        let mut store = Store::default();
        let sock = key(1, 1);
        let mut accept = event(sock, 10, EventKind::Accept { fd: 9 });
        accept.owner = None;
        accept.task.tid = OWNER + 1;
        accept.task.comm = "worker".into();
        store.insert(accept);
        assert_eq!(
            store.get(&sock).unwrap().owner(),
            Some(OwnerInfo {
                tgid: OWNER,
                fd: Some(9)
            })
        );
        assert_eq!(store.comm(OWNER).as_deref(), Some("worker"));

        // A later record that knows the owner but not the fd keeps the fd; the main thread's
        // comm replaces the worker thread's.
        let mut arrival = event(sock, 20, EventKind::Arrival);
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

        let mut shutdown = from_peer(event(
            other,
            40,
            EventKind::Shutdown {
                fd: 4,
                how: shutdown_how::SHUT_WR,
                ret: 0,
            },
        ));
        shutdown.owner = None;
        store.insert(shutdown);
        assert_eq!(
            store.get(&other).unwrap().owner(),
            Some(OwnerInfo {
                tgid: PEER,
                fd: Some(4)
            })
        );
    }

    #[test]
    fn first_successful_write_shutdown() {
        let mut store = Store::default();
        let sock = key(1, 1);
        let shutdown = |how, ret| EventKind::Shutdown { fd: 7, how, ret };
        store.insert(event(sock, 10, shutdown(shutdown_how::SHUT_RD, 0)));
        store.insert(event(sock, 20, shutdown(shutdown_how::SHUT_WR, -107)));
        assert_eq!(store.get(&sock).unwrap().write_shutdown(), None);
        store.insert(with_receive(
            event(sock, 40, shutdown(shutdown_how::SHUT_WR, 0)),
            5,
            5,
            false,
        ));
        store.insert(with_receive(
            event(sock, 30, shutdown(shutdown_how::SHUT_RDWR, 0)),
            3,
            3,
            false,
        ));
        let first = store.get(&sock).unwrap().write_shutdown().unwrap();
        assert_eq!(first.ts_ns, 30);
        assert_eq!(first.receive.unwrap().rcv_nxt, 3);
    }

    #[test]
    fn busy_sockets_stay_bounded() {
        let mut store = Store::default();
        let sock = key(1, 1);
        for ts in 0..(MAX_ENTRIES as u64 + 50) {
            store.insert(with_receive(
                event(sock, ts, EventKind::Arrival),
                ts as u32,
                0,
                false,
            ));
        }
        store.insert(event(sock, 5_000, EventKind::Close { fd: Some(7) }));
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
    fn sweep_drops_destroyed_at_once_ignores_stragglers_and_respects_keep() {
        let mut store = Store::default();
        let dead = key(1, 1);
        let kept = key(2, 2);
        let alive = key(3, 3);
        store.insert(event(dead, 100, EventKind::Accept { fd: 7 }));
        store.insert(event(dead, 150, EventKind::Destroy));
        store.insert(event(kept, 100, EventKind::Destroy));
        store.insert(event(alive, 200, EventKind::Arrival));
        store.sweep(|k| *k == kept);
        assert!(store.get(&dead).is_none());
        assert!(store.get(&kept).is_some());
        assert!(store.get(&alive).is_some());

        // A straggler from another CPU does not bring the dead socket back...
        store.insert(event(dead, 140, EventKind::Arrival));
        assert!(store.get(&dead).is_none());
        assert_eq!(store.dropped().late_records, 1);
        // ...until the grace period is over: the address may belong to a new socket by then.
        store.insert(event(alive, 200 + RETIRED_GRACE_NS, EventKind::Arrival));
        store.sweep(|_| false);
        assert!(store.get(&kept).is_none(), "dropped once no longer kept");
        store.insert(event(dead, 300 + RETIRED_GRACE_NS, EventKind::Arrival));
        assert!(store.get(&dead).is_some());
        assert_eq!(store.sockets_seen(), 4);
        assert_eq!(
            store.dropped(),
            Dropped {
                finished: 2,
                evicted: 0,
                late_records: 1
            }
        );
    }

    #[test]
    fn closed_sockets_stay_for_the_retention_window() {
        let mut store = Store::default();
        let sock = key(1, 1);
        store.insert(event(sock, 100, EventKind::Close { fd: Some(7) }));
        store.insert(event(
            sock,
            200,
            state(tcp_state::FIN_WAIT1, tcp_state::FIN_WAIT2),
        ));
        store.sweep(|_| false);
        assert!(store.get(&sock).is_some());
        store.insert(event(
            key(2, 2),
            100 + CLOSED_RETENTION_NS,
            EventKind::Arrival,
        ));
        store.sweep(|sock| *sock == key(2, 2));
        assert!(store.get(&sock).is_none());
        assert_eq!(store.dropped().finished, 1);
        // A kept socket stays past the window, until nothing needs it.
        let kept = key(3, 3);
        store.insert(event(
            kept,
            200 + CLOSED_RETENTION_NS,
            EventKind::Close { fd: Some(8) },
        ));
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
    fn past_the_cap_the_least_recently_active_go_first() {
        let mut store = Store::with_capacity_limit(10);
        let leak = key(100, 100);
        store.insert(event(leak, 1, EventKind::Accept { fd: 7 }));
        for n in 0..10 {
            store.insert(event(key(n, n), 10 + n, EventKind::Accept { fd: 8 }));
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
                .all(|(_, states)| states.values().sum::<u64>() <= 9),
            "evicted sockets leave the held counts"
        );
    }

    /// After lost records, /proc decides: a socket still held stays as it was, one whose fd
    /// was copied before the (lost) close moves to the copy, one closed for good is closed,
    /// and one whose owner is gone has its owner exited.
    #[test]
    fn lost_records_are_made_up_for_from_proc() {
        use std::net::{TcpListener, TcpStream};
        use std::os::fd::AsRawFd;

        fn owned_by_me(store: &mut Store, sock: SockKey, stream: &TcpStream) {
            let fd = stream.as_raw_fd();
            let mut accept = event(sock, 10, EventKind::Accept { fd });
            accept.task.tgid = std::process::id();
            accept.owner = Some(Owner {
                tgid: std::process::id(),
                fd: Some(fd),
            });
            accept.ino = Some(holders::tests::inode_of(fd));
            store.insert(accept);
        }

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let connect = || TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (held, copied, closed) = (connect(), connect(), connect());
        let mut store = Store::default();
        let (held_key, copied_key, closed_key, gone_key) =
            (key(1, 1), key(2, 2), key(3, 3), key(4, 4));
        owned_by_me(&mut store, held_key, &held);
        owned_by_me(&mut store, copied_key, &copied);
        owned_by_me(&mut store, closed_key, &closed);
        // Beyond any pid_max: a process that is gone.
        let mut gone = event(gone_key, 10, EventKind::Accept { fd: 7 });
        gone.owner = Some(Owner {
            tgid: 1 << 23,
            fd: Some(7),
        });
        store.insert(gone);
        let copy = copied.try_clone().unwrap();
        drop((copied, closed));

        store.recheck_owners(1_000);
        store.apply_exits();
        let timeline = |key| store.get(&key).unwrap();
        assert!(timeline(held_key).live());
        assert!(!timeline(held_key).close_unrecorded());
        assert_eq!(
            timeline(copied_key).owner(),
            Some(OwnerInfo {
                tgid: std::process::id(),
                fd: Some(copy.as_raw_fd()),
            })
        );
        assert!(timeline(copied_key).live());
        assert!(timeline(closed_key).closed() && timeline(closed_key).close_unrecorded());
        assert!(timeline(gone_key).owner_exited());
        assert!(!timeline(gone_key).close_unrecorded());
    }

    #[test]
    fn the_closest_opening_within_the_window_pairs_once() {
        let mut unpaired = vec![
            (1_000, key(1, 1)),
            (5_000, key(2, 2)),
            (PAIR_WINDOW_NS * 3, key(3, 3)),
        ];
        assert_eq!(take_closest(&mut unpaired, 4_000), Some(key(2, 2)));
        assert_eq!(take_closest(&mut unpaired, 4_000), Some(key(1, 1)));
        assert_eq!(
            take_closest(&mut unpaired, 4_000),
            None,
            "out of the window"
        );
        assert_eq!(unpaired, [(PAIR_WINDOW_NS * 3, key(3, 3))]);
    }

    #[test]
    fn another_process_closing_its_copy_is_not_a_close() {
        let mut store = Store::default();
        let sock = key(1, 1);
        store.insert(event(sock, 10, EventKind::Accept { fd: 7 }));
        store.insert(from_peer(event(sock, 20, EventKind::FdClosed { fd: 40 })));
        let timeline = store.get(&sock).unwrap();
        assert_eq!(timeline.entries().len(), 1, "{:?}", timeline.entries());
        assert_eq!(timeline.owner_released_ns, None);
        store.insert(event(sock, 30, EventKind::FdClosed { fd: 7 }));
        let timeline = store.get(&sock).unwrap();
        assert_eq!(timeline.entries().len(), 2, "the owner's own close counts");
        assert_eq!(timeline.owner_released_ns, Some(30));
    }

    #[test]
    fn exits_apply_at_the_next_evaluation() {
        let mut store = Store::default();
        let sock = key(1, 1);
        store.insert(event(sock, 10, EventKind::Accept { fd: 7 }));
        store.owner_exited(OWNER, 20);
        assert!(!store.get(&sock).unwrap().owner_exited());
        store.apply_exits();
        assert!(store.get(&sock).unwrap().owner_exited());
    }

    #[test]
    fn dropped_timelines_go_to_whoever_asked() {
        let mut store = Store::default();
        store.insert(event(key(9, 9), 50, EventKind::Destroy));
        store.sweep(|_| false);
        assert!(store.take_swept().is_empty(), "nobody asked for them");

        let mut store = Store::default().keeping_swept();
        let dead = key(1, 1);
        store.insert(event(dead, 100, EventKind::Accept { fd: 7 }));
        store.insert(event(dead, 200, EventKind::Destroy));
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
