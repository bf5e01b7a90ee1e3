//! Leak detectors over the timelines store. Each leak class is one file with a `check` function;
//! this module turns their verdicts into findings reported once, after the grace period, and
//! resolutions reported once when the condition stops holding.

pub(crate) mod close_wait;
pub(crate) mod fd_after_close;
pub(crate) mod idle_half_closed;
pub(crate) mod shut_wr_unread;
#[cfg(test)]
mod test_support;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use leaktrace_common::tcp_state;

use crate::decoder::SockKey;
use crate::finding::{Finding, LeakKind, Outcome, Resolution, Resolved};
use crate::format::{duration, how_resolved};
use crate::summary::{FinalReport, History, IngestCounts, PidStats, Progress, RemoteStats, Stats};
use crate::timeline::{Partner, Remote, Store, Timeline};

/// What a detector says about one socket right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// The leak condition has held since then.
    Holds { since: Since },
    /// It does not hold; `how` says what ended it, should a finding be open.
    Clear { how: Resolution },
}

/// When a leak condition began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Since {
    /// Kernel time of the first event at which it held.
    ns: u64,
    /// It already held when tracing started: it began earlier, how much earlier is unknown, so
    /// it is reported at once, its age marked "at least".
    present_at_start: bool,
}

/// What every class's file provides. It sees only sockets some process still holds: the ends
/// every class shares are [`ended`]'s.
type Check = fn(&Timeline) -> Verdict;

/// Which wait a condition must last before it is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// `--leak-after`.
    LeakAfter,
    /// `--idle-after`.
    IdleAfter,
}

/// A leak class: everything about it, each in its own file as its `CLASS`.
pub(crate) struct LeakClass {
    /// Its name in the text report, the JSON and the metrics.
    kind: LeakKind,
    wait: Wait,
    check: Check,
    /// What a finding's line says after its endpoints: the state, and how long and why it is
    /// a leak.
    explain: fn(&Finding) -> String,
    /// The ends of its own its check gives (`Resolution::Class`), beside those every class shares.
    resolutions: &'static [Resolution],
}

impl LeakClass {
    /// Its check's verdict. An end of its own must be one its entry lists: every detector test
    /// checks that of every verdict it makes.
    fn verdict(&self, timeline: &Timeline) -> Verdict {
        let verdict = (self.check)(timeline);
        if let Verdict::Clear {
            how: how @ Resolution::Class(_),
        } = verdict
        {
            debug_assert!(
                self.resolutions.contains(&how),
                "{} ended by \"{}\", which its CLASS does not list",
                self.kind.name(),
                how_resolved(how)
            );
        }
        verdict
    }
}

/// Every leak class, in the order the detectors run, which orders `LeakKind` too (the progress
/// line lists open findings by class in it). Adding one: its file, with its `KIND`, its own
/// ends, its `CLASS` and its tests; its `mod` above; and its line here. The classes know nothing
/// of each other here: where two could describe one socket, the more general one's condition
/// excludes the more specific one's (see `fd_after_close`).
const CLASSES: &[LeakClass] = &[
    close_wait::CLASS,
    shut_wr_unread::CLASS,
    fd_after_close::CLASS,
    idle_half_closed::CLASS,
];

impl LeakKind {
    /// Its place in `CLASSES`; every kind has one (see `every_kind_has_its_class`).
    fn rank(self) -> usize {
        CLASSES
            .iter()
            .position(|class| class.kind == self)
            .expect("a kind of no class in CLASSES")
    }

    fn class(self) -> &'static LeakClass {
        &CLASSES[self.rank()]
    }

    /// The words after a finding's endpoints in its line.
    pub fn explain(self, finding: &Finding) -> String {
        (self.class().explain)(finding)
    }
}

impl Ord for LeakKind {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for LeakKind {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Every leak class, in the order the detectors run.
pub(crate) fn kinds() -> impl Iterator<Item = LeakKind> {
    CLASSES.iter().map(|class| class.kind)
}

/// How long a condition has held, in the words of a finding's line. Of one that already held
/// when tracing started only that is known: the time since the start, its lower bound, would
/// read as its age ("for at least 0.0s" when found at start).
fn held_for(f: &Finding) -> String {
    if f.age_at_least {
        "since before tracing started".to_owned()
    } else {
        format!("for {}", duration(f.age))
    }
}

/// What ends a socket's leaks whatever their class: the owner's exit releases every fd, and a
/// socket closed or destroyed is held by nobody.
fn ended(timeline: &Timeline) -> Option<Resolution> {
    if timeline.owner_exited() {
        Some(Resolution::OwnerExited)
    } else if timeline.close_unrecorded() {
        Some(Resolution::ClosedUnrecorded)
    } else if timeline.closed() {
        Some(Resolution::Closed)
    } else if timeline.destroyed() {
        Some(Resolution::Destroyed)
    } else {
        None
    }
}

enum Tracked {
    /// Reported; kept so the resolution names the same pid/fd/addresses as the finding.
    Reported { since: Since, finding: Box<Finding> },
    /// Held long enough but no process is known to own the socket.
    Unattributed,
}

pub(crate) struct Detectors {
    leak_after_ns: u64,
    /// `idle_half_closed`'s own wait: how long a socket stays silent after its partner's
    /// half-close before it counts as leaked.
    idle_after_ns: u64,
    tracked: HashMap<(SockKey, LeakKind), Tracked>,
    resolved: u64,
    unattributed: u64,
    /// The first evaluation, right as tracing starts: what leak rates are measured from.
    started_ns: Option<u64>,
    /// Per pid: findings whose condition began while tracing, and the process's name, which the
    /// store forgets when the process exits.
    new_leaks: HashMap<u32, (u64, String)>,
    reported: u64,
    history: History,
}

/// Identifies one possible finding: a socket and a leak class.
type Id = (SockKey, LeakKind);

/// The detectors' verdicts on the store, before the host says what the findings they mature
/// will name (see [`Detectors::check`]).
#[derive(Debug)]
pub(crate) struct Verdicts {
    /// Held long enough, with a known owner: to report, once made current. Oldest first.
    matured: Vec<(Since, Id)>,
    /// Held long enough, no owner known, not counted yet.
    unattributed: Vec<Id>,
    /// Of `matured`, those counted as unattributed before, their owner known now.
    attributed: Vec<Id>,
    resolved: Vec<(Id, Resolution)>,
}

impl Verdicts {
    /// The sockets whose fds the findings will name: the kernel side names each socket's file,
    /// not its fd, so the host says which fd holds it, or that another process does, or nobody
    /// (closed among lost records). So for the half-closed partner an `idle_half_closed`
    /// finding names, which the owner still holds.
    pub(crate) fn sockets(&self, store: &Store) -> Vec<SockKey> {
        let partners = self.matured.iter().filter_map(|(_, (key, kind))| {
            (*kind == idle_half_closed::KIND).then(|| store.get(key)?.partner())?
        });
        (self.matured.iter().map(|(_, (key, _))| *key))
            .chain(partners.map(|p| p.sock))
            .collect()
    }

    /// Leaves the findings on `sockets` for a later tick: records of theirs may have been lost,
    /// and /proc could not confirm yet that their owners still hold them.
    pub(crate) fn hold_back(&mut self, sockets: &[SockKey]) {
        if sockets.is_empty() {
            return;
        }
        let waits = |(key, _): &Id| sockets.contains(key);
        self.matured.retain(|(_, id)| !waits(id));
        self.attributed.retain(|id| !waits(id));
    }

    /// The sockets of the findings to report now that their fds are known: those still held.
    pub(crate) fn to_report(&self, store: &Store) -> Vec<SockKey> {
        (self.matured.iter())
            .map(|(_, (key, _))| *key)
            .filter(|key| store.get(key).is_some_and(|t| ended(t).is_none()))
            .collect()
    }
}

impl Detectors {
    pub(crate) fn new(leak_after: Duration, idle_after: Duration) -> Self {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self {
            leak_after_ns: ns(leak_after),
            idle_after_ns: ns(idle_after),
            tracked: HashMap::new(),
            resolved: 0,
            unattributed: 0,
            started_ns: None,
            new_leaks: HashMap::new(),
            reported: 0,
            history: History::default(),
        }
    }

    /// Runs every detector over every socket. `now_ns` is CLOCK_MONOTONIC, the records' clock.
    pub(crate) fn check(&self, store: &Store, now_ns: u64) -> Verdicts {
        let mut verdicts = Verdicts {
            matured: Vec::new(),
            unattributed: Vec::new(),
            attributed: Vec::new(),
            resolved: Vec::new(),
        };
        for (key, timeline) in store.iter() {
            for class in CLASSES {
                let id = (*key, class.kind);
                let verdict = match ended(timeline) {
                    Some(how) => Verdict::Clear { how },
                    None => class.verdict(timeline),
                };
                match (verdict, self.tracked.get(&id)) {
                    (Verdict::Holds { .. }, Some(Tracked::Reported { .. })) => {}
                    (Verdict::Holds { since }, tracked)
                        if since.present_at_start
                            || now_ns.saturating_sub(since.ns) >= self.wait(class) =>
                    {
                        // Reported ones matched above: tracked here means counted as
                        // unattributed.
                        let counted = tracked.is_some();
                        if timeline.owner().is_some() {
                            if counted {
                                verdicts.attributed.push(id);
                            }
                            verdicts.matured.push((since, id));
                        } else if !counted {
                            verdicts.unattributed.push(id);
                        }
                    }
                    (Verdict::Holds { .. }, _) => {}
                    (Verdict::Clear { how }, Some(_)) => verdicts.resolved.push((id, how)),
                    (Verdict::Clear { .. }, None) => {}
                }
            }
        }
        verdicts.matured.sort_unstable();
        verdicts
    }

    /// Turns `verdicts` into outcomes over the store as the host made it current since (see
    /// [`Verdicts::sockets`]): findings reported once, and resolutions.
    pub(crate) fn evaluate(
        &mut self,
        verdicts: Verdicts,
        store: &Store,
        now_ns: u64,
    ) -> Vec<Outcome> {
        self.started_ns.get_or_insert(now_ns);
        let Verdicts {
            matured,
            unattributed,
            attributed,
            mut resolved,
        } = verdicts;
        for id in unattributed {
            self.unattributed += 1;
            self.tracked.insert(id, Tracked::Unattributed);
        }
        self.unattributed -= attributed.len() as u64;
        let mut outcomes = Vec::new();
        resolved.sort_unstable_by_key(|(id, _)| *id);
        for (id, how) in resolved {
            if let Some(Tracked::Reported { finding, .. }) = self.tracked.remove(&id) {
                self.resolved += 1;
                outcomes.push(Outcome::Resolved(Resolved {
                    kind: finding.kind,
                    sock: finding.sock,
                    pid: finding.pid,
                    fd: finding.fd,
                    local: finding.local,
                    remote: finding.remote,
                    accepted: finding.accepted,
                    how,
                }));
            }
        }
        for (since, (key, kind)) in matured {
            if store.get(&key).is_none_or(|t| ended(t).is_some()) {
                continue;
            }
            if let Some(finding) = finding(store, key, kind, since, now_ns) {
                if !since.present_at_start {
                    let (n, comm) = self.new_leaks.entry(finding.pid).or_default();
                    *n += 1;
                    comm.clone_from(&finding.comm);
                }
                self.reported += 1;
                outcomes.push(Outcome::Leak(Box::new(finding.clone())));
                self.tracked.insert(
                    (key, kind),
                    Tracked::Reported {
                        since,
                        finding: Box::new(finding),
                    },
                );
            }
        }

        let open = self.open_by_kind().values().sum();
        self.history.record(self.elapsed_ns(now_ns), open);
        outcomes
    }

    /// Whether the store must keep the timeline of `key`: a finding on it is open, or counted
    /// as unattributed.
    pub(crate) fn keeps(&self, key: &SockKey) -> bool {
        CLASSES
            .iter()
            .any(|class| self.tracked.contains_key(&(*key, class.kind)))
    }

    /// Findings reported and not resolved, by class.
    fn open_by_kind(&self) -> BTreeMap<LeakKind, u64> {
        let mut open = BTreeMap::new();
        for ((_, kind), tracked) in &self.tracked {
            if let Tracked::Reported { .. } = tracked {
                *open.entry(*kind).or_default() += 1;
            }
        }
        open
    }

    fn elapsed_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.started_ns.unwrap_or(now_ns))
    }

    /// Where the session stands, for the periodic summaries.
    pub(crate) fn progress(&self, store: &Store, now_ns: u64, ingest: IngestCounts) -> Progress {
        Progress {
            elapsed: Duration::from_nanos(self.elapsed_ns(now_ns)),
            open: self.open_by_kind(),
            leaks_reported: self.reported,
            leaks_resolved: self.resolved,
            sockets_tracked: store.tracked(),
            sockets_seen: store.sockets_seen(),
            ingest,
            dropped: store.dropped(),
        }
    }

    /// How long a condition of `class` must hold before it is reported.
    fn wait(&self, class: &LeakClass) -> u64 {
        match class.wait {
            Wait::LeakAfter => self.leak_after_ns,
            Wait::IdleAfter => self.idle_after_ns,
        }
    }

    /// The sockets of the findings reported and still open, whose fds and owners the final report
    /// names as they are at its end.
    pub(crate) fn reported(&self) -> Vec<SockKey> {
        self.tracked
            .iter()
            .filter(|(_, tracked)| matches!(tracked, Tracked::Reported { .. }))
            .map(|((key, _), _)| *key)
            .collect()
    }

    /// The processes the final report's statistics name: those holding sockets, and those that
    /// leaked while tracing.
    pub(crate) fn processes(&self, store: &Store) -> Vec<u32> {
        (store.counts().held().map(|(pid, _)| pid))
            .chain(self.new_leaks.keys().copied())
            .collect()
    }

    /// The final report: findings still open, with their timelines as of `now_ns`, and counts.
    pub(crate) fn summary(&self, store: &Store, now_ns: u64, ingest: IngestCounts) -> FinalReport {
        let mut open: Vec<Finding> = self
            .tracked
            .iter()
            .filter_map(|(&(key, kind), tracked)| match tracked {
                Tracked::Reported { since, finding } => Some(
                    self::finding(store, key, kind, *since, now_ns)
                        .unwrap_or_else(|| (**finding).clone()),
                ),
                Tracked::Unattributed => None,
            })
            .collect();
        open.sort_unstable_by_key(|f| (f.pid, f.fd, f.kind, f.sock));
        let stats = self.stats(store, &open, now_ns);
        let open_over_time = self
            .history
            .series(self.elapsed_ns(now_ns), open.len() as u64);
        FinalReport {
            open,
            leaks_resolved: self.resolved,
            sockets_seen: store.sockets_seen(),
            unattributed: self.unattributed,
            ingest,
            stats,
            dropped: store.dropped(),
            open_over_time,
            // The outputs say which of them were dropped once they are finished.
            outputs_dropped: Vec::new(),
        }
    }

    /// The store's counts joined with the findings, per process and per remote endpoint.
    fn stats(&self, store: &Store, open: &[Finding], now_ns: u64) -> Stats {
        #[derive(Default)]
        struct PerPid {
            states: Vec<(u8, u64)>,
            leaks_open: u64,
            leaks_new: u64,
        }
        let mut per_pid: BTreeMap<u32, PerPid> = BTreeMap::new();
        for (pid, states) in store.counts().held() {
            per_pid.entry(pid).or_default().states = states;
        }
        for (&pid, (n, _)) in &self.new_leaks {
            per_pid.entry(pid).or_default().leaks_new = *n;
        }
        let mut per_remote: BTreeMap<Remote, RemoteStats> = store
            .counts()
            .remotes()
            .map(|(remote, counts)| {
                let stats = RemoteStats {
                    remote,
                    connections: counts.connections,
                    time_wait: counts.time_wait,
                    leaks_open: 0,
                };
                (remote, stats)
            })
            .collect();
        for finding in open {
            per_pid.entry(finding.pid).or_default().leaks_open += 1;
            let remote = store.get(&finding.sock).and_then(Timeline::remote_key);
            if let Some(stats) = remote.and_then(|remote| per_remote.get_mut(&remote)) {
                stats.leaks_open += 1;
            }
        }

        let mut per_pid: Vec<PidStats> = per_pid
            .into_iter()
            .map(|(pid, p)| PidStats {
                pid,
                comm: store
                    .comm(pid)
                    .or_else(|| self.new_leaks.get(&pid).map(|(_, comm)| comm.clone()))
                    .unwrap_or_else(|| "?".into()),
                states: p.states,
                leaks_open: p.leaks_open,
                leaks_new: p.leaks_new,
            })
            .collect();
        per_pid.sort_by_key(|p| {
            let held: u64 = p.states.iter().map(|(_, n)| n).sum();
            (Reverse(p.leaks_open), Reverse(held))
        });
        let mut per_remote: Vec<RemoteStats> = per_remote.into_values().collect();
        per_remote.sort_by_key(|r| (Reverse(r.leaks_open), Reverse(r.connections)));
        Stats {
            elapsed: Duration::from_nanos(self.elapsed_ns(now_ns)),
            per_pid,
            per_remote,
        }
    }
}

/// A finding for a socket whose condition has held since `since`; `None` if the socket or its
/// owner is unknown.
fn finding(
    store: &Store,
    key: SockKey,
    kind: LeakKind,
    since: Since,
    now_ns: u64,
) -> Option<Finding> {
    let owner = store.get(&key)?.owner()?;
    let comm = store.comm(owner.tgid).unwrap_or_else(|| "?".into());
    let placement = store.placement(owner.tgid).cloned().unwrap_or_default();
    let timeline = store.get(&key)?;
    let latest = timeline.receive().map(|r| r.value);
    // Measured from tracing's start for a shutdown that predates it: not what followed it.
    let shutdown_seen = timeline
        .write_shutdown()
        .is_some_and(|s| !s.present_at_start);
    let bytes_after_shutdown = shut_wr_unread::baseline(timeline)
        .filter(|_| shutdown_seen)
        .zip(latest)
        .map(|((_, at_shutdown), now)| shut_wr_unread::bytes_after_shutdown(&at_shutdown, &now));
    let close_waits_to_remote = (kind == close_wait::KIND && timeline.accepted() == Some(false))
        .then(|| timeline.remote())
        .flatten()
        .map(|remote| store.close_waits_to(owner.tgid, remote));
    Some(Finding {
        kind,
        sock: key,
        pid: owner.tgid,
        comm,
        placement,
        fd: owner.fd,
        local: timeline.local(),
        remote: timeline.remote(),
        accepted: timeline.accepted(),
        // No state seen yet: 0 is no TCP state, which `name` spells UNKNOWN.
        state: tcp_state::name(timeline.state().unwrap_or_default()),
        unread_bytes: latest.map_or(0, |r| r.unread_bytes()),
        eof_unread: timeline.eof_unread(),
        bytes_after_shutdown,
        age: Duration::from_nanos(now_ns.saturating_sub(since.ns)),
        age_at_least: since.present_at_start,
        timeline: timeline.entries().to_vec(),
        elided: timeline.elided(),
        partner: timeline
            .partner()
            .filter(|_| kind == idle_half_closed::KIND)
            .map(|partner| Partner {
                fd: (store.get(&partner.sock))
                    .and_then(|p| p.owner()?.fd)
                    .or(partner.fd),
                ..partner
            }),
        close_waits_to_remote,
    })
}

#[cfg(test)]
mod tests {
    use leaktrace_common::tcp_state::*;

    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::test_support::{
        close, close_wait, detectors, detectors_on, leaks, present, reset, resolutions, the_leak,
        MS, SOCK,
    };
    use super::*;
    use crate::decoder::EventKind;
    use crate::host::fake::FakeHost;
    use crate::timeline::tests::{event, from_peer, key, state, DESTROY, OWNER, RELEASE};

    #[test]
    fn every_kind_has_its_class() {
        // A kind two classes shared would rank as the first of them.
        for (rank, class) in CLASSES.iter().enumerate() {
            assert_eq!(class.kind.rank(), rank, "{} twice", class.kind.name());
        }
        let names: Vec<&str> = super::kinds().map(LeakKind::name).collect();
        assert_eq!(
            names,
            [
                "close_wait",
                "shut_wr_unread",
                "fd_after_close",
                "idle_half_closed"
            ]
        );
        // Kinds sort as the table lists them, not by name.
        let listed: Vec<LeakKind> = super::kinds().collect();
        let mut sorted: Vec<LeakKind> = listed.iter().rev().copied().collect();
        sorted.sort_unstable();
        assert_eq!(sorted, listed);
    }

    #[test]
    fn the_ends_of_a_class_read_apart() {
        // The word alone tells a user what ended one of its findings.
        use Resolution::*;
        let shared = [OwnerExited, ClosedUnrecorded, Closed, Destroyed, Superseded];
        for class in CLASSES {
            let mut words: Vec<&str> = (class.resolutions.iter().chain(&shared))
                .map(|&how| how_resolved(how))
                .collect();
            let listed = words.len();
            words.sort_unstable();
            words.dedup();
            assert_eq!(words.len(), listed, "{}: {words:?}", class.kind.name());
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "close_wait ended by \"reset\", which its CLASS does not list")]
    fn an_end_a_class_does_not_list_is_caught() {
        let unlisted = LeakClass {
            resolutions: &[close_wait::SHUTDOWN],
            ..close_wait::CLASS
        };
        let mut store = Store::default();
        close_wait(&mut store, SOCK, 100 * MS);
        store.insert(from_peer(event(SOCK, 200 * MS, state(CLOSE_WAIT, CLOSE))));
        unlisted.verdict(store.get(&SOCK).unwrap());
    }

    #[test]
    fn unknown_owner_is_counted_not_reported() {
        let mut store = Store::default();
        let mut detectors = detectors();
        for ts in [50 * MS, 100 * MS] {
            let mut unowned = from_peer(event(SOCK, ts, state(ESTABLISHED, CLOSE_WAIT)));
            unowned.owner = None;
            store.insert(unowned);
        }
        assert!(detectors.evaluate(&mut store, 2000 * MS).is_empty());
        assert!(detectors.evaluate(&mut store, 3000 * MS).is_empty());
        let report = detectors.summary(&mut store, 3000 * MS, Default::default());
        assert_eq!((report.unattributed, report.open.len()), (1, 0));

        // Once the owner is learned the leak is reported and no longer unattributed.
        store.insert(event(SOCK, 3100 * MS, EventKind::Arrival));
        let outcomes = detectors.evaluate(&mut store, 3200 * MS);
        assert_eq!(leaks(&outcomes)[0].pid, OWNER);
        let report = detectors.summary(&mut store, 3200 * MS, Default::default());
        assert_eq!((report.unattributed, report.open.len()), (0, 1));
    }

    /// A host where the owner runs, holding a socket by `fd` or none (the records' sockets are
    /// fd 7, and name no inode: /proc is asked for the fd).
    fn owner_running(fd: Option<i32>) -> FakeHost {
        FakeHost {
            fds: [(OWNER, fd.map(|fd| (99, fd)).into_iter().collect())].into(),
            ..FakeHost::default()
        }
    }

    /// Issue 11: leak-free churn that overflowed the ring buffer lost closes, and the CLOSE_WAIT
    /// they left behind were reported. A finding on a socket whose records may be incomplete is
    /// made only once /proc shows its owner still holds it.
    #[test]
    fn after_lost_records_a_finding_waits_for_proc_to_confirm_it() {
        // Its close was among the records lost: the owner runs, without the socket.
        let mut store = Store::default();
        close_wait(&mut store, SOCK, 100 * MS);
        store.records_lost(150 * MS);
        let outcomes = detectors_on(owner_running(None)).evaluate(&mut store, 1200 * MS);
        assert!(leaks(&outcomes).is_empty(), "{outcomes:?}");
        assert!(store.get(&SOCK).unwrap().close_unrecorded());

        // Still held: reported.
        let mut store = Store::default();
        close_wait(&mut store, SOCK, 100 * MS);
        store.records_lost(150 * MS);
        let finding = the_leak(
            &mut detectors_on(owner_running(Some(7))),
            &mut store,
            1200 * MS,
        );
        assert_eq!(
            (finding.kind, finding.pid, finding.fd),
            (close_wait::KIND, OWNER, Some(7))
        );

        // Born after the loss: none of its records was lost, and /proc is not asked (where the
        // owner does not even run).
        let mut store = Store::default();
        store.records_lost(40 * MS);
        let born_after = key(0x2000, 45 * MS);
        close_wait(&mut store, born_after, 100 * MS);
        assert_eq!(
            the_leak(&mut detectors(), &mut store, 1200 * MS).sock,
            born_after
        );
    }

    /// /proc confirms what it showed when it was read: records lost later may hold the close.
    #[test]
    fn a_loss_after_proc_confirmed_a_socket_is_checked_anew() {
        let mut store = Store::default();
        close_wait(&mut store, SOCK, 100 * MS);
        store.records_lost(150 * MS);
        assert!(detectors_on(owner_running(Some(7))).recheck_owners(&mut store, 200 * MS));
        assert!(!store.may_be_incomplete(store.get(&SOCK).unwrap()));
        store.records_lost(300 * MS);
        let outcomes = detectors_on(owner_running(None)).evaluate(&mut store, 1200 * MS);
        assert!(leaks(&outcomes).is_empty(), "{outcomes:?}");
    }

    /// A /proc that cannot be read (leaktrace out of fds) confirms nothing and closes nothing:
    /// the finding waits for a look that succeeds. Counted as unattributed before its owner was
    /// known, it stays counted once while it waits, and no longer once reported.
    #[test]
    fn a_finding_waits_while_proc_cannot_be_read() {
        let unreadable = Arc::new(AtomicBool::new(true));
        let mut detectors = detectors_on(FakeHost {
            unreadable: Arc::clone(&unreadable),
            ..owner_running(Some(7))
        });
        let mut store = Store::default();
        let mut unowned = from_peer(event(SOCK, 100 * MS, state(ESTABLISHED, CLOSE_WAIT)));
        unowned.owner = None;
        store.insert(unowned);
        assert!(detectors.evaluate(&mut store, 1200 * MS).is_empty());
        store.insert(event(SOCK, 1300 * MS, EventKind::Arrival));
        store.records_lost(1400 * MS);
        for now in [1500, 1750] {
            let outcomes = detectors.evaluate(&mut store, now * MS);
            assert!(leaks(&outcomes).is_empty(), "{outcomes:?}");
        }
        let timeline = store.get(&SOCK).unwrap();
        assert!(timeline.live() && store.may_be_incomplete(timeline));
        let report = detectors.summary(&mut store, 1750 * MS, Default::default());
        assert_eq!((report.unattributed, report.open.len()), (1, 0));

        unreadable.store(false, Ordering::Relaxed);
        let finding = the_leak(&mut detectors, &mut store, 2000 * MS);
        assert_eq!((finding.pid, finding.fd), (OWNER, Some(7)));
        let report = detectors.summary(&mut store, 2000 * MS, Default::default());
        assert_eq!((report.unattributed, report.open.len()), (0, 1));
    }

    #[test]
    fn address_reuse_gives_independent_results() {
        let mut store = Store::default();
        let mut detectors = detectors();
        let first = key(0x1000, 1);
        let second = key(0x1000, 400 * MS);
        close_wait(&mut store, first, 100 * MS);
        close(&mut store, first, 200 * MS);
        store.insert(event(first, 300 * MS, DESTROY));
        close_wait(&mut store, second, 500 * MS);

        assert!(detectors.evaluate(&mut store, 1499 * MS).is_empty());
        let finding = the_leak(&mut detectors, &mut store, 1600 * MS);
        assert_eq!(finding.sock, second);
        assert_eq!(finding.age, Duration::from_millis(1100));
        assert!(finding.timeline.iter().all(|e| e.sock == second));
    }

    #[test]
    fn summary_refreshes_open_findings() {
        let mut store = Store::default();
        let mut detectors = detectors();
        close_wait(&mut store, SOCK, 100 * MS);
        detectors.evaluate(&mut store, 1100 * MS);
        store.insert(from_peer(event(SOCK, 1500 * MS, EventKind::Arrival)));
        let ingest = IngestCounts {
            records: 5,
            decode_errors: 1,
            lost_events: 2,
            ring_size: 4096,
            probe_failures: [0; leaktrace_common::ProbeFailure::COUNT as usize],
        };
        let report = detectors.summary(&mut store, 5100 * MS, ingest);
        let [finding] = &report.open[..] else {
            panic!("expected one open finding: {report:?}");
        };
        assert_eq!(finding.age, Duration::from_secs(5));
        assert_eq!(finding.timeline.len(), 5);
        assert_eq!(report.ingest, ingest);
        assert_eq!((report.sockets_seen, report.leaks_resolved), (1, 0));
    }

    #[test]
    fn destroyed_timelines_are_swept_once_resolved() {
        let mut store = Store::default();
        let mut detectors = detectors();
        close_wait(&mut store, SOCK, 100 * MS);
        assert_eq!(leaks(&detectors.evaluate(&mut store, 1100 * MS)).len(), 1);
        store.insert(event(SOCK, 1200 * MS, DESTROY));
        // A later record elsewhere moves kernel time past the grace period.
        store.insert(event(key(0x9000, 1), 3000 * MS, EventKind::Arrival));
        let outcomes = detectors.evaluate(&mut store, 3000 * MS);
        assert_eq!(
            resolutions(&outcomes),
            [(close_wait::KIND, Resolution::Destroyed)]
        );
        assert!(store.get(&SOCK).is_none());
    }

    /// An outbound connection of `pid` from local port `port` to the database at 10.0.0.5:5432,
    /// made at `at`.
    fn pool_connection(store: &mut Store, sock: SockKey, pid: u32, port: u16, at: u64) {
        let mut connect = event(sock, at, state(CLOSE, SYN_SENT));
        let mut established = from_peer(event(sock, at + MS, state(SYN_SENT, ESTABLISHED)));
        for e in [&mut connect, &mut established] {
            e.local = Some(SocketAddr::from(([127, 0, 0, 1], port)));
            e.remote = Some("10.0.0.5:5432".parse().unwrap());
            e.owner = Some(crate::decoder::Owner {
                tgid: pid,
                fd: None,
            });
        }
        connect.task.tgid = pid;
        store.insert(connect);
        store.insert(established);
    }

    /// Closes a connection first, as a pool retiring it does: it leaves a TIME_WAIT behind.
    fn close_actively(store: &mut Store, sock: SockKey, at: u64) {
        store.insert(event(sock, at, RELEASE));
        store.insert(event(sock, at, state(ESTABLISHED, FIN_WAIT1)));
        store.insert(from_peer(event(sock, at + MS, state(FIN_WAIT1, FIN_WAIT2))));
        store.insert(from_peer(event(sock, at + MS, state(FIN_WAIT2, CLOSE))));
        store.insert(from_peer(event(sock, at + MS, DESTROY)));
    }

    #[test]
    fn summary_counts_per_process_and_per_remote() {
        // Incident 4 in small: a service with a CLOSE_WAIT socket stuck from before the trace
        // and one reset while tracing, its connection pool churning to a database, and a
        // busier process that leaks nothing.
        let mut store = Store::default();
        let mut detectors = detectors();
        detectors.evaluate(&mut store, 0);
        let listener = key(0x10, 1);
        let mut listening = present(10 * MS, LISTEN, false, 0, false);
        (listening.sock, listening.remote) = (listener, None);
        store.insert(listening);
        let stuck = key(0x20, 1);
        let mut found = present(20 * MS, CLOSE_WAIT, false, 1001, true);
        found.sock = stuck;
        store.insert(found);
        reset(&mut store, SOCK, 1000 * MS);
        for i in 0..4 {
            let sock = key(0x100 + i, 1);
            pool_connection(&mut store, sock, OWNER, 40000 + i as u16, 3000 * MS);
            if i < 3 {
                close_actively(&mut store, sock, 4000 * MS);
            }
        }
        for i in 0..5 {
            pool_connection(
                &mut store,
                key(0x200 + i, 1),
                77,
                41000 + i as u16,
                3000 * MS,
            );
        }
        // Far enough on for the pool's destroyed timelines to be swept.
        store.insert(event(key(0x100, 9), 59_000 * MS, EventKind::Arrival));
        detectors.evaluate(&mut store, 30_000 * MS);
        assert!(store.get(&key(0x100, 1)).is_none(), "not swept");

        let report = detectors.summary(&mut store, 60_000 * MS, Default::default());
        let stats = report.stats;
        assert_eq!(stats.elapsed, Duration::from_secs(60));
        let rows: Vec<_> = stats
            .per_pid
            .iter()
            .map(|p| (p.pid, p.states.clone(), p.leaks_open, p.leaks_new))
            .collect();
        assert_eq!(
            rows,
            [
                (
                    OWNER,
                    vec![(ESTABLISHED, 1), (CLOSE, 1), (CLOSE_WAIT, 1), (LISTEN, 1)],
                    2,
                    1
                ),
                (77, vec![(ESTABLISHED, 5)], 0, 0),
            ]
        );
        assert_eq!(stats.per_pid[0].comm, "mailer");
        // The leak found at start is not one the process made at this rate.
        assert_eq!(stats.per_minute(stats.per_pid[0].leaks_new), 1.0);
        let rows: Vec<_> = stats
            .per_remote
            .iter()
            .map(|r| {
                (
                    r.remote.to_string(),
                    r.remote.direction(),
                    r.connections,
                    r.time_wait,
                    r.leaks_open,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("127.0.0.1".to_owned(), Some("in"), 2, 0, 2),
                ("10.0.0.5:5432".to_owned(), Some("out"), 9, 3, 0),
            ]
        );
    }
}
