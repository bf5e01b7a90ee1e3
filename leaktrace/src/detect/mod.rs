//! Leak detectors over the timelines store. Each leak class is one file with a `check` function;
//! this module turns their verdicts into findings reported once, after the grace period, and
//! resolutions reported once when the condition stops holding.

mod close_wait;
mod fd_after_close;
mod idle_half_closed;
mod shut_wr_unread;

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use leaktrace_common::tcp_state;

use crate::decoder::SockKey;
use crate::finding::{Finding, LeakKind, Outcome, Resolution, Resolved};
use crate::format::duration;
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
    before_trace: bool,
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
pub struct LeakClass {
    kind: LeakKind,
    /// What the text report, the JSON and the metrics call it.
    name: &'static str,
    wait: Wait,
    check: Check,
    /// What a finding's line says after its endpoints: the state, and how long and why it is
    /// a leak.
    explain: fn(&Finding) -> String,
}

/// Every leak class, in the order the detectors run, which is `LeakKind`'s. Adding one: its file
/// with its `CLASS`, its `LeakKind` variant, and its line here. The classes know nothing of each
/// other here: where two could describe one socket, the more general one's condition excludes
/// the more specific one's (see `fd_after_close`).
const CLASSES: [LeakClass; 4] = [
    close_wait::CLASS,
    shut_wr_unread::CLASS,
    fd_after_close::CLASS,
    idle_half_closed::CLASS,
];

impl LeakKind {
    fn class(self) -> &'static LeakClass {
        // In `LeakKind`'s order: see `every_kind_has_its_class`.
        &CLASSES[self as usize]
    }

    /// What the text report, the JSON and the metrics call the class.
    pub fn name(self) -> &'static str {
        self.class().name
    }

    /// The words after a finding's endpoints in its line.
    pub fn explain(self, finding: &Finding) -> String {
        (self.class().explain)(finding)
    }
}

/// Every leak class, in the order the detectors run.
pub fn kinds() -> impl Iterator<Item = LeakKind> {
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

pub struct Detectors {
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
pub struct Verdicts {
    /// Held long enough, with a known owner: to report, once made current. Oldest first.
    matured: Vec<(Since, Id)>,
    /// Held long enough, no owner known, not counted yet.
    unattributed: Vec<Id>,
    /// Counted as unattributed before, their owner known now.
    attributed: u64,
    resolved: Vec<(Id, Resolution)>,
}

impl Verdicts {
    /// The sockets whose fds the findings will name: the kernel side names each socket's file,
    /// not its fd, so the host says which fd holds it, or that another process does, or nobody
    /// (closed among lost records). So for the half-closed partner an `idle_half_closed`
    /// finding names, which the owner still holds.
    pub fn sockets(&self, store: &Store) -> Vec<SockKey> {
        let partners = self.matured.iter().filter_map(|(_, (key, kind))| {
            (*kind == LeakKind::IdleHalfClosed).then(|| store.get(key)?.partner())?
        });
        (self.matured.iter().map(|(_, (key, _))| *key))
            .chain(partners.map(|p| p.sock))
            .collect()
    }

    /// The sockets of the findings to report now that their fds are known: those still held.
    pub fn to_report(&self, store: &Store) -> Vec<SockKey> {
        (self.matured.iter())
            .map(|(_, (key, _))| *key)
            .filter(|key| store.get(key).is_some_and(|t| ended(t).is_none()))
            .collect()
    }
}

impl Detectors {
    pub fn new(leak_after: Duration, idle_after: Duration) -> Self {
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
    pub fn check(&self, store: &Store, now_ns: u64) -> Verdicts {
        let mut verdicts = Verdicts {
            matured: Vec::new(),
            unattributed: Vec::new(),
            attributed: 0,
            resolved: Vec::new(),
        };
        for (key, timeline) in store.iter() {
            for class in &CLASSES {
                let kind = class.kind;
                let id = (*key, kind);
                let verdict = match ended(timeline) {
                    Some(how) => Verdict::Clear { how },
                    None => (class.check)(timeline),
                };
                match (verdict, self.tracked.get(&id)) {
                    (Verdict::Holds { .. }, Some(Tracked::Reported { .. })) => {}
                    (Verdict::Holds { since }, tracked)
                        if since.before_trace
                            || now_ns.saturating_sub(since.ns) >= self.wait(kind) =>
                    {
                        // Reported ones matched above: tracked here means counted as
                        // unattributed.
                        let counted = tracked.is_some();
                        if timeline.owner().is_some() {
                            if counted {
                                verdicts.attributed += 1;
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
    pub fn evaluate(&mut self, verdicts: Verdicts, store: &Store, now_ns: u64) -> Vec<Outcome> {
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
        self.unattributed -= attributed;
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
                if !since.before_trace {
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
    pub fn keeps(&self, key: &SockKey) -> bool {
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
    pub fn progress(&self, store: &Store, now_ns: u64, ingest: IngestCounts) -> Progress {
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

    /// How long a condition of `kind` must hold before it is reported.
    fn wait(&self, kind: LeakKind) -> u64 {
        match kind.class().wait {
            Wait::LeakAfter => self.leak_after_ns,
            Wait::IdleAfter => self.idle_after_ns,
        }
    }

    /// The sockets of the findings reported and still open, whose fds and owners the final report
    /// names as they are at its end.
    pub fn reported(&self) -> Vec<SockKey> {
        self.tracked
            .iter()
            .filter(|(_, tracked)| matches!(tracked, Tracked::Reported { .. }))
            .map(|((key, _), _)| *key)
            .collect()
    }

    /// The processes the final report's statistics name: those holding sockets, and those that
    /// leaked while tracing.
    pub fn processes(&self, store: &Store) -> Vec<u32> {
        (store.counts().held().map(|(pid, _)| pid))
            .chain(self.new_leaks.keys().copied())
            .collect()
    }

    /// The final report: findings still open, with their timelines as of `now_ns`, and counts.
    pub fn summary(&self, store: &Store, now_ns: u64, ingest: IngestCounts) -> FinalReport {
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
    let shutdown_seen = timeline.write_shutdown().is_some_and(|s| !s.before_trace);
    let bytes_after_shutdown = shut_wr_unread::baseline(timeline)
        .filter(|_| shutdown_seen)
        .zip(latest)
        .map(|((_, at_shutdown), now)| shut_wr_unread::bytes_after_shutdown(&at_shutdown, &now));
    let close_waits_to_remote = (kind == LeakKind::CloseWait && timeline.accepted() == Some(false))
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
        age_at_least: since.before_trace,
        timeline: timeline.entries().to_vec(),
        elided: timeline.elided(),
        partner: timeline
            .partner()
            .filter(|_| kind == LeakKind::IdleHalfClosed)
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
    use leaktrace_common::shutdown_how::{SHUT_RD, SHUT_RDWR, SHUT_WR};
    use leaktrace_common::tcp_state::*;

    use std::net::SocketAddr;

    use super::*;
    use crate::decoder::{Event, EventKind};
    use crate::host::fake::FakeHost;
    use crate::tick::Evaluator;
    use crate::timeline::tests::{
        event, from_peer, key, state, with_receive, ACCEPT, DESTROY, OWNER, RELEASE,
    };

    pub(super) const MS: u64 = 1_000_000;
    const SOCK: SockKey = SockKey {
        addr: 0x1000,
        born_ns: 1,
    };

    /// The detectors (leaks after 1s, idle after 3s) as each tick runs them, on a host where
    /// none of the records' processes runs.
    fn detectors() -> Evaluator {
        Evaluator::new(
            Duration::from_secs(1),
            Duration::from_secs(3),
            Box::new(FakeHost::default()),
        )
    }

    pub(super) fn leaks(outcomes: &[Outcome]) -> Vec<&Finding> {
        outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Leak(f) => Some(&**f),
                Outcome::Resolved(_) => None,
            })
            .collect()
    }

    /// The one leak the detectors report at `now_ns`, and nothing else.
    pub(super) fn the_leak(detectors: &mut Evaluator, store: &mut Store, now_ns: u64) -> Finding {
        let outcomes = detectors.evaluate(store, now_ns);
        let [finding] = leaks(&outcomes)[..] else {
            panic!("expected one leak: {outcomes:?}");
        };
        finding.clone()
    }

    #[test]
    fn every_kind_has_its_class() {
        for (index, class) in CLASSES.iter().enumerate() {
            assert_eq!(class.kind as usize, index, "{} out of order", class.name);
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
    }

    #[test]
    fn a_client_close_wait_says_how_many_it_holds_to_that_server() {
        // A pool's connections to one server, which timed them out; an accepted one apart.
        let mut detectors = detectors();
        let mut store = Store::default();
        let server = "127.0.0.1:8000".parse().unwrap();
        for (n, addr) in [(1, 0x1000), (2, 0x2000)] {
            let sock = key(addr, n);
            let mut connected = event(sock, n * MS, state(SYN_SENT, ESTABLISHED));
            connected.remote = Some(server);
            store.insert(connected);
            let mut fin = from_peer(event(sock, 10 * MS, state(ESTABLISHED, CLOSE_WAIT)));
            fin.remote = Some(server);
            store.insert(fin);
        }
        let accepted = key(0x3000, 3);
        store.insert(from_peer(event(
            accepted,
            3 * MS,
            state(SYN_RECV, ESTABLISHED),
        )));
        store.insert(from_peer(event(
            accepted,
            10 * MS,
            state(ESTABLISHED, CLOSE_WAIT),
        )));
        let outcomes = detectors.evaluate(&mut store, 1100 * MS);
        let counts: Vec<(SockKey, Option<u32>)> = leaks(&outcomes)
            .iter()
            .map(|f| (f.sock, f.close_waits_to_remote))
            .collect();
        assert_eq!(counts.len(), 3, "{outcomes:?}");
        for (sock, count) in counts {
            let expected = if sock == accepted { None } else { Some(2) };
            assert_eq!(count, expected, "{sock:?}");
        }
    }

    fn kinds(outcomes: &[Outcome]) -> Vec<LeakKind> {
        leaks(outcomes).iter().map(|f| f.kind).collect()
    }

    fn resolutions(outcomes: &[Outcome]) -> Vec<(LeakKind, Resolution)> {
        outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Resolved(r) => Some((r.kind, r.how)),
                Outcome::Leak(_) => None,
            })
            .collect()
    }

    /// An accepted connection whose peer closes at `fin_ms`: the socket enters CLOSE_WAIT.
    fn close_wait(store: &mut Store, sock: SockKey, fin_ms: u64) {
        let mut established =
            from_peer(event(sock, fin_ms - 50 * MS, state(SYN_RECV, ESTABLISHED)));
        established.owner = None;
        store.insert(established);
        store.insert(event(sock, fin_ms - 49 * MS, ACCEPT));
        store.insert(from_peer(with_receive(
            event(sock, fin_ms, state(ESTABLISHED, CLOSE_WAIT)),
            101,
            100,
            true,
        )));
    }

    fn close(store: &mut Store, sock: SockKey, at: u64) {
        store.insert(event(sock, at, RELEASE));
        store.insert(event(sock, at, state(CLOSE_WAIT, LAST_ACK)));
    }

    #[test]
    fn close_wait_reported_after_grace_then_resolved_by_close() {
        let mut store = Store::default();
        let mut detectors = detectors();
        close_wait(&mut store, SOCK, 100 * MS);

        assert!(detectors.evaluate(&mut store, 1099 * MS).is_empty());
        let finding = the_leak(&mut detectors, &mut store, 1100 * MS);
        assert_eq!(finding.kind, LeakKind::CloseWait);
        assert_eq!((finding.pid, finding.fd), (OWNER, Some(7)));
        assert_eq!(finding.comm, "mailer");
        assert_eq!(finding.state, "CLOSE_WAIT");
        assert_eq!(finding.age, Duration::from_secs(1));
        assert_eq!((finding.unread_bytes, finding.eof_unread), (0, true));
        assert_eq!(finding.local, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(finding.remote, Some("127.0.0.1:50412".parse().unwrap()));
        // With its opening (LISTEN -> SYN_RECV), rebuilt from the socket's birth.
        assert_eq!(finding.timeline.len(), 4);
        // Reported once only.
        assert!(detectors.evaluate(&mut store, 2000 * MS).is_empty());

        close(&mut store, SOCK, 2100 * MS);
        let outcomes = detectors.evaluate(&mut store, 2200 * MS);
        assert_eq!(
            resolutions(&outcomes),
            [(LeakKind::CloseWait, Resolution::Closed)]
        );
        let Outcome::Resolved(resolved) = &outcomes[0] else {
            unreachable!()
        };
        assert_eq!((resolved.pid, resolved.fd), (OWNER, Some(7)));
        assert!(detectors.evaluate(&mut store, 9000 * MS).is_empty());

        let report = detectors.summary(&mut store, 9000 * MS, Default::default());
        assert!(report.open.is_empty());
        assert_eq!((report.leaks_resolved, report.sockets_seen), (1, 1));
    }

    #[test]
    fn close_wait_closed_within_grace_is_no_leak() {
        let mut store = Store::default();
        let mut detectors = detectors();
        close_wait(&mut store, SOCK, 100 * MS);
        close(&mut store, SOCK, 1099 * MS);
        assert!(detectors.evaluate(&mut store, 1100 * MS).is_empty());
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn close_wait_late_records_from_another_cpu() {
        let mut store = Store::default();
        let mut detectors = detectors();
        // The close and LAST_ACK reach userspace before the CLOSE_WAIT transition that preceded
        // them.
        close(&mut store, SOCK, 500 * MS);
        close_wait(&mut store, SOCK, 100 * MS);
        assert!(detectors.evaluate(&mut store, 5000 * MS).is_empty());
    }

    #[test]
    fn close_wait_resolved_by_shutdown_or_destroy() {
        let mut store = Store::default();
        let mut detectors = detectors();
        let other = key(0x2000, 1);
        close_wait(&mut store, SOCK, 100 * MS);
        close_wait(&mut store, other, 100 * MS);
        assert_eq!(leaks(&detectors.evaluate(&mut store, 1100 * MS)).len(), 2);

        let shutdown = EventKind::Shutdown { how: SHUT_WR };
        store.insert(event(SOCK, 1200 * MS, shutdown));
        store.insert(event(SOCK, 1200 * MS, state(CLOSE_WAIT, LAST_ACK)));
        store.insert(event(other, 1200 * MS, DESTROY));
        let mut outcomes = resolutions(&detectors.evaluate(&mut store, 1300 * MS));
        outcomes.sort_unstable();
        assert_eq!(
            outcomes,
            [
                (LeakKind::CloseWait, Resolution::Destroyed),
                (LeakKind::CloseWait, Resolution::Shutdown)
            ]
        );
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

    /// Accepted at 1 ms, shut down with `how` at 100 ms with nothing unread, FIN_WAIT2 after.
    fn shut_down(store: &mut Store, how: i32) {
        store.insert(event(SOCK, MS, ACCEPT));
        let shutdown = EventKind::Shutdown { how };
        store.insert(with_receive(
            event(SOCK, 100 * MS, shutdown),
            1000,
            1000,
            false,
        ));
        store.insert(event(SOCK, 100 * MS, state(ESTABLISHED, FIN_WAIT1)));
        store.insert(from_peer(event(
            SOCK,
            101 * MS,
            state(FIN_WAIT1, FIN_WAIT2),
        )));
    }

    /// The peer sends `n` bytes at 200 ms, then its FIN at 210 ms, which ends the connection.
    fn peer_sends_and_closes(store: &mut Store, n: u32) {
        let arrival = |ts, rcv_nxt, fin| {
            from_peer(with_receive(
                event(SOCK, ts, EventKind::Arrival),
                rcv_nxt,
                1000,
                fin,
            ))
        };
        store.insert(arrival(200 * MS, 1000 + n, false));
        store.insert(arrival(210 * MS, 1000 + n + 1, true));
        store.insert(from_peer(event(SOCK, 210 * MS, state(FIN_WAIT2, CLOSE))));
    }

    /// A read after the peer's FIN arrived.
    fn recv(store: &mut Store, at: u64, ret: i64, copied_seq: u32, rcv_nxt: u32) {
        store.insert(with_receive(
            event(SOCK, at, EventKind::Recv { ret: Some(ret) }),
            rcv_nxt,
            copied_seq,
            true,
        ));
    }

    #[test]
    fn shut_wr_late_bytes_never_read() {
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 6);

        assert!(detectors.evaluate(&mut store, 1199 * MS).is_empty());
        let finding = the_leak(&mut detectors, &mut store, 1200 * MS);
        assert_eq!(finding.kind, LeakKind::ShutWrUnread);
        assert_eq!(finding.state, "CLOSE");
        assert_eq!((finding.pid, finding.fd), (OWNER, Some(7)));
        assert_eq!(finding.unread_bytes, 6);
        assert!(finding.eof_unread);
        assert_eq!(finding.bytes_after_shutdown, Some(6));
        assert_eq!(finding.age, Duration::from_secs(1));
    }

    #[test]
    fn shut_wr_late_bytes_read_but_not_eof() {
        // Incident 3: the runtime pulled the bytes into its own buffer, never read the EOF.
        // Whether the FIN came in a segment of its own (copied_seq stops before it) or with the
        // bytes (reading them moves copied_seq past it), the read returned 6, never 0: the owner
        // never learned of the end of the stream.
        for copied_after_read in [1006, 1007] {
            let mut store = Store::default();
            let mut detectors = detectors();
            shut_down(&mut store, SHUT_WR);
            peer_sends_and_closes(&mut store, 6);
            recv(&mut store, 220 * MS, 6, copied_after_read, 1007);

            let finding = the_leak(&mut detectors, &mut store, 1200 * MS);
            assert_eq!(
                (
                    finding.unread_bytes,
                    finding.eof_unread,
                    finding.bytes_after_shutdown
                ),
                (0, true, Some(6)),
                "copied_seq {copied_after_read}"
            );

            // Reading the EOF drains it.
            recv(&mut store, 1300 * MS, 0, 1007, 1007);
            let outcomes = detectors.evaluate(&mut store, 1400 * MS);
            assert_eq!(
                resolutions(&outcomes),
                [(LeakKind::ShutWrUnread, Resolution::Drained)]
            );
        }
    }

    #[test]
    fn shut_wr_without_read_results_trusts_the_counters() {
        // Kernels before 6.3 only report data reads, without their result: there the kernel's
        // counters are all there is, and counters past the FIN mean drained.
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 6);
        store.insert(with_receive(
            event(SOCK, 220 * MS, EventKind::Recv { ret: None }),
            1007,
            1007,
            true,
        ));
        // Drained, so no shut_wr_unread; the fd still held after the connection ended is
        // fd_after_close's.
        let outcomes = detectors.evaluate(&mut store, 5000 * MS);
        assert_eq!(kinds(&outcomes), [LeakKind::FdAfterClose]);
    }

    #[test]
    fn close_wait_reports_whether_the_owner_read_the_eof() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(event(SOCK, MS, ACCEPT));
        store.insert(from_peer(with_receive(
            event(SOCK, 10 * MS, state(ESTABLISHED, CLOSE_WAIT)),
            1001,
            1000,
            true,
        )));
        recv(&mut store, 20 * MS, 0, 1001, 1001);
        let finding = the_leak(&mut detectors, &mut store, 1100 * MS);
        assert_eq!(finding.kind, LeakKind::CloseWait);
        assert_eq!((finding.unread_bytes, finding.eof_unread), (0, false));
    }

    /// Found at `at` by the seeding when tracing started, as the kernel side records it.
    fn present(at: u64, state: u8, send_shutdown: bool, rcv_nxt: u32, fin: bool) -> Event {
        let kind = EventKind::Present {
            fd: 7,
            state,
            send_shutdown,
        };
        let mut event = with_receive(event(SOCK, at, kind), rcv_nxt, 1000, fin);
        // leaktrace's own context, not the owner's.
        event.task.tgid = 999;
        event.in_owner_context = false;
        event
    }

    #[test]
    fn close_wait_found_at_start_is_reported_at_once() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(present(100 * MS, CLOSE_WAIT, false, 1001, true));
        let finding = the_leak(&mut detectors, &mut store, 150 * MS);
        assert_eq!(finding.kind, LeakKind::CloseWait);
        assert_eq!((finding.pid, finding.fd), (OWNER, Some(7)));
        assert!(finding.age_at_least);
        assert_eq!(finding.age, Duration::from_millis(50));

        // Its later transitions join the same timeline: the owner finally closes.
        store.insert(event(SOCK, 200 * MS, RELEASE));
        store.insert(event(SOCK, 200 * MS, state(CLOSE_WAIT, LAST_ACK)));
        let outcomes = detectors.evaluate(&mut store, 300 * MS);
        assert_eq!(
            resolutions(&outcomes),
            [(LeakKind::CloseWait, Resolution::Closed)]
        );
    }

    #[test]
    fn close_wait_entered_while_tracing_waits_for_the_grace_period() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(present(100 * MS, ESTABLISHED, false, 1000, false));
        store.insert(from_peer(event(
            SOCK,
            200 * MS,
            state(ESTABLISHED, CLOSE_WAIT),
        )));
        assert!(detectors.evaluate(&mut store, 1199 * MS).is_empty());
        let finding = the_leak(&mut detectors, &mut store, 1200 * MS);
        assert!(!finding.age_at_least);
    }

    #[test]
    fn shut_down_before_tracing_with_unread_data_is_reported_at_once() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(present(100 * MS, CLOSE, true, 1013, true));
        let finding = the_leak(&mut detectors, &mut store, 100 * MS);
        assert_eq!(finding.kind, LeakKind::ShutWrUnread);
        assert_eq!((finding.unread_bytes, finding.eof_unread), (12, true));
        assert!(finding.age_at_least);
    }

    #[test]
    fn shut_down_before_tracing_and_drained_is_no_leak() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(present(100 * MS, FIN_WAIT2, true, 1000, false));
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn shut_wr_baseline_from_before_the_shutdown() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(with_receive(
            event(SOCK, 50 * MS, ACCEPT),
            1000,
            1000,
            false,
        ));
        // This shutdown record carries no receive state.
        let shutdown = EventKind::Shutdown { how: SHUT_WR };
        store.insert(event(SOCK, 100 * MS, shutdown));
        peer_sends_and_closes(&mut store, 6);
        let finding = the_leak(&mut detectors, &mut store, 1200 * MS);
        assert_eq!(finding.bytes_after_shutdown, Some(6));
    }

    #[test]
    fn shut_rdwr_counts_shut_rd_does_not() {
        // Without a write shutdown, the unread bytes of a finished connection whose fd is held
        // are no shut_wr_unread: just the held fd.
        for (how, expected) in [
            (SHUT_RDWR, LeakKind::ShutWrUnread),
            (SHUT_RD, LeakKind::FdAfterClose),
        ] {
            let mut store = Store::default();
            let mut detectors = detectors();
            shut_down(&mut store, how);
            peer_sends_and_closes(&mut store, 6);
            let outcomes = detectors.evaluate(&mut store, 5000 * MS);
            assert_eq!(kinds(&outcomes), [expected], "how {how}");
        }
    }

    #[test]
    fn shut_wr_well_behaved_is_no_leak() {
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 6);
        recv(&mut store, 220 * MS, 6, 1006, 1007);
        recv(&mut store, 230 * MS, 0, 1007, 1007);
        store.insert(event(SOCK, 240 * MS, RELEASE));
        store.insert(event(SOCK, 240 * MS, DESTROY));
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn shut_wr_only_fin_after_shutdown() {
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 0);
        let finding = the_leak(&mut detectors, &mut store, 1300 * MS);
        assert_eq!(
            (
                finding.unread_bytes,
                finding.eof_unread,
                finding.bytes_after_shutdown
            ),
            (0, true, Some(0))
        );
        // Not a close_wait leak: the socket never was in CLOSE_WAIT.
        assert_eq!(finding.kind, LeakKind::ShutWrUnread);
    }

    #[test]
    fn shut_wr_condition_restarts_after_a_drain() {
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        let arrival = |ts, rcv_nxt, fin| {
            from_peer(with_receive(
                event(SOCK, ts, EventKind::Arrival),
                rcv_nxt,
                1000,
                fin,
            ))
        };
        store.insert(arrival(200 * MS, 1006, false));
        store.insert(with_receive(
            event(SOCK, 300 * MS, EventKind::Recv { ret: Some(6) }),
            1006,
            1006,
            false,
        ));
        store.insert(from_peer(with_receive(
            event(SOCK, 400 * MS, EventKind::Arrival),
            1010,
            1006,
            false,
        )));
        assert!(detectors.evaluate(&mut store, 1399 * MS).is_empty());
        let finding = the_leak(&mut detectors, &mut store, 1400 * MS);
        assert_eq!(
            (finding.unread_bytes, finding.bytes_after_shutdown),
            (4, Some(10))
        );
        assert!(!finding.eof_unread);
    }

    #[test]
    fn shut_wr_resolved_by_close_and_destroy() {
        for (end, how) in [
            (RELEASE, Resolution::Closed),
            (DESTROY, Resolution::Destroyed),
        ] {
            let mut store = Store::default();
            let mut detectors = detectors();
            shut_down(&mut store, SHUT_WR);
            peer_sends_and_closes(&mut store, 6);
            assert_eq!(leaks(&detectors.evaluate(&mut store, 2000 * MS)).len(), 1);
            store.insert(event(SOCK, 2100 * MS, end));
            let outcomes = detectors.evaluate(&mut store, 2200 * MS);
            assert_eq!(resolutions(&outcomes), [(LeakKind::ShutWrUnread, how)]);
        }
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
            [(LeakKind::CloseWait, Resolution::Destroyed)]
        );
        assert!(store.get(&SOCK).is_none());
    }

    /// An accepted connection whose peer sent 5 bytes the owner never read, then reset it at
    /// `reset_ms`: the socket is in CLOSE, the owner still holds fd 7.
    fn reset(store: &mut Store, sock: SockKey, reset_ms: u64) {
        let mut established = from_peer(event(
            sock,
            reset_ms - 50 * MS,
            state(SYN_RECV, ESTABLISHED),
        ));
        established.owner = None;
        store.insert(established);
        store.insert(event(sock, reset_ms - 49 * MS, ACCEPT));
        let mut reset = from_peer(with_receive(
            event(sock, reset_ms, state(ESTABLISHED, CLOSE)),
            1005,
            1000,
            false,
        ));
        // The kernel released the local port with the connection.
        reset.local = None;
        store.insert(reset);
    }

    #[test]
    fn fd_after_close_reset_while_held() {
        for (end, how) in [
            (RELEASE, Resolution::Closed),
            (DESTROY, Resolution::Destroyed),
        ] {
            let mut store = Store::default();
            let mut detectors = detectors();
            reset(&mut store, SOCK, 100 * MS);

            assert!(detectors.evaluate(&mut store, 1099 * MS).is_empty());
            let finding = the_leak(&mut detectors, &mut store, 1100 * MS);
            assert_eq!(finding.kind, LeakKind::FdAfterClose);
            assert_eq!((finding.pid, finding.fd), (OWNER, Some(7)));
            assert_eq!(finding.state, "CLOSE");
            assert_eq!(finding.local, Some("127.0.0.1:8080".parse().unwrap()));
            assert_eq!(finding.remote, Some("127.0.0.1:50412".parse().unwrap()));
            assert_eq!((finding.unread_bytes, finding.eof_unread), (5, false));
            assert_eq!(finding.age, Duration::from_secs(1));
            assert!(!finding.age_at_least);
            assert_eq!(
                finding.timeline.last().map(|e| e.kind),
                Some(state(ESTABLISHED, CLOSE))
            );
            assert!(detectors.evaluate(&mut store, 2000 * MS).is_empty());

            store.insert(event(SOCK, 2100 * MS, end));
            let outcomes = detectors.evaluate(&mut store, 2200 * MS);
            assert_eq!(resolutions(&outcomes), [(LeakKind::FdAfterClose, how)]);
        }
    }

    #[test]
    fn fd_after_close_closed_within_grace_is_no_leak() {
        let mut store = Store::default();
        let mut detectors = detectors();
        reset(&mut store, SOCK, 100 * MS);
        store.insert(event(SOCK, 1099 * MS, RELEASE));
        store.insert(event(SOCK, 1099 * MS, DESTROY));
        assert!(detectors.evaluate(&mut store, 1100 * MS).is_empty());
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn fd_after_close_waits_while_shut_wr_unread_holds() {
        // Incident 3's socket is in CLOSE with its fd held too: one socket, one finding, the
        // more specific one. Once the owner reads the end-of-stream but keeps the fd, the held
        // fd is all that is left, and it gets its own grace period from that read.
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 6);
        let outcomes = detectors.evaluate(&mut store, 1200 * MS);
        assert_eq!(kinds(&outcomes), [LeakKind::ShutWrUnread]);
        assert!(detectors.evaluate(&mut store, 5000 * MS).is_empty());

        recv(&mut store, 5100 * MS, 6, 1006, 1007);
        recv(&mut store, 5200 * MS, 0, 1007, 1007);
        let outcomes = detectors.evaluate(&mut store, 5300 * MS);
        assert_eq!(
            resolutions(&outcomes),
            [(LeakKind::ShutWrUnread, Resolution::Drained)]
        );
        assert!(leaks(&outcomes).is_empty());
        assert!(detectors.evaluate(&mut store, 6199 * MS).is_empty());
        let finding = the_leak(&mut detectors, &mut store, 6200 * MS);
        assert_eq!(finding.kind, LeakKind::FdAfterClose);
        assert_eq!(finding.age, Duration::from_secs(1));
        assert_eq!((finding.unread_bytes, finding.eof_unread), (0, false));
    }

    #[test]
    fn fd_after_close_not_between_reading_eof_and_closing() {
        // The connection ended long ago, but the owner only now reads the end-of-stream and
        // closes right after: no instant in between is a leak.
        let mut store = Store::default();
        let mut detectors = detectors();
        shut_down(&mut store, SHUT_WR);
        peer_sends_and_closes(&mut store, 0);
        assert_eq!(
            kinds(&detectors.evaluate(&mut store, 5000 * MS)),
            [LeakKind::ShutWrUnread]
        );
        recv(&mut store, 5100 * MS, 0, 1001, 1001);
        let outcomes = detectors.evaluate(&mut store, 5150 * MS);
        assert!(leaks(&outcomes).is_empty(), "{outcomes:?}");
        store.insert(event(SOCK, 5160 * MS, RELEASE));
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn fd_after_close_found_at_start_is_reported_at_once() {
        // Reset before tracing started (the kernel marks a socket in CLOSE as shut down itself,
        // and no FIN came from the peer), the data it sent still unread; and a connection that
        // ended with FINs both ways, everything read, fd kept.
        for (rcv_nxt, fin, unread) in [(1005, false, 5), (1000, true, 0)] {
            let mut store = Store::default();
            let mut detectors = detectors();
            store.insert(present(100 * MS, CLOSE, true, rcv_nxt, fin));
            let finding = the_leak(&mut detectors, &mut store, 150 * MS);
            assert_eq!(finding.kind, LeakKind::FdAfterClose);
            assert_eq!((finding.pid, finding.fd), (OWNER, Some(7)));
            assert_eq!(finding.state, "CLOSE");
            assert_eq!(finding.unread_bytes, unread);
            assert!(finding.age_at_least);
            assert_eq!(finding.age, Duration::from_millis(50));
        }
    }

    #[test]
    fn sockets_without_a_peer_are_no_leak() {
        // Created and never connected, or a listener shut down: CLOSE, but no connection ended.
        let mut store = Store::default();
        let mut detectors = detectors();
        let mut fresh = present(100 * MS, CLOSE, false, 0, false);
        fresh.remote = None;
        store.insert(fresh);
        let listener = key(0x2000, 1);
        let mut shut = event(listener, 200 * MS, state(LISTEN, CLOSE));
        shut.remote = None;
        store.insert(shut);
        assert!(detectors.evaluate(&mut store, 60_000 * MS).is_empty());
    }

    #[test]
    fn close_wait_reset_by_the_peer_becomes_fd_after_close() {
        let mut store = Store::default();
        let mut detectors = detectors();
        close_wait(&mut store, SOCK, 100 * MS);
        assert_eq!(
            kinds(&detectors.evaluate(&mut store, 1100 * MS)),
            [LeakKind::CloseWait]
        );
        store.insert(from_peer(event(SOCK, 2000 * MS, state(CLOSE_WAIT, CLOSE))));
        let outcomes = detectors.evaluate(&mut store, 2100 * MS);
        assert_eq!(
            resolutions(&outcomes),
            [(LeakKind::CloseWait, Resolution::Reset)]
        );
        assert!(leaks(&outcomes).is_empty());
        assert_eq!(
            kinds(&detectors.evaluate(&mut store, 3000 * MS)),
            [LeakKind::FdAfterClose]
        );
    }

    #[test]
    fn fd_after_close_failed_connect_until_reconnected() {
        let mut store = Store::default();
        let mut detectors = detectors();
        store.insert(event(SOCK, 100 * MS, state(CLOSE, SYN_SENT)));
        // Refused: the peer's reset, processed in softirq.
        store.insert(from_peer(event(SOCK, 101 * MS, state(SYN_SENT, CLOSE))));
        assert_eq!(
            kinds(&detectors.evaluate(&mut store, 1101 * MS)),
            [LeakKind::FdAfterClose]
        );
        store.insert(event(SOCK, 5000 * MS, state(CLOSE, SYN_SENT)));
        let outcomes = detectors.evaluate(&mut store, 5100 * MS);
        assert_eq!(
            resolutions(&outcomes),
            [(LeakKind::FdAfterClose, Resolution::Reconnected)]
        );
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
