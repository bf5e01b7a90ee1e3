//! What the records cannot say, asked of the running system before the detectors look: exits
//! applied, sockets handed over to whoever holds them now, closes and exits among lost records,
//! the fds by which owners hold the sockets a finding is about to name, their names and where
//! they run, and the traffic of connections that may sit idle. Everything here goes through the
//! [`Host`] and lands in the store, so that the detectors read the store alone.
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use crate::decoder::SockKey;
use crate::host::{FdHeld, Host, Sample, Unreadable, Wanted};
use crate::stderr;
use crate::timeline::{Activity, Store};

/// How often the kernel's socket table is read for traffic and timers, at most.
const ACTIVITY_EVERY_NS: u64 = 1_000_000_000;

/// The enrichment step's memory between ticks.
#[derive(Debug, Default)]
pub(crate) struct Enricher {
    /// When the kernel's socket table was last read for traffic and timers.
    activity_sampled_ns: Option<u64>,
    /// Reading it failed once already, and said so.
    activity_failed: bool,
}

impl Enricher {
    /// Before the detectors look: exits take effect, sockets an exited owner passed on go to
    /// whoever holds them now, and connections paired with a half-closed one get their traffic.
    pub(crate) fn before_detection(&mut self, store: &mut Store, host: &mut dyn Host, now_ns: u64) {
        store.apply_exits();
        reattribute(store, host, now_ns);
        self.watch_idle(store, host, now_ns);
    }

    /// Links each socket whose peer half-closed to the other socket of its proxied pair, then,
    /// at most once a second and only while some such pair's other socket is still open, reads
    /// the kernel's socket table for the traffic and timers of those sockets.
    fn watch_idle(&mut self, store: &mut Store, host: &mut dyn Host, now_ns: u64) {
        store.pair_half_closed(now_ns);
        let due = self
            .activity_sampled_ns
            .is_none_or(|at| now_ns.saturating_sub(at) >= ACTIVITY_EVERY_NS);
        if !due || store.wanting_activity(now_ns).next().is_none() {
            return;
        }
        self.activity_sampled_ns = Some(now_ns);
        let unresolved: Vec<SockKey> = store
            .wanting_activity(now_ns)
            .filter(|(_, t)| t.owner().is_some_and(|o| o.fd.is_none()))
            .map(|(key, _)| *key)
            .collect();
        resolve_fds(store, host, &unresolved, now_ns);
        let wanted: Vec<Wanted> = store
            .wanting_activity(now_ns)
            .filter_map(|(_, t)| {
                let owner = t.owner()?;
                Some(Wanted {
                    pid: owner.tgid,
                    fd: owner.fd?,
                    ino: t.ino()?,
                    local: t.local()?,
                    remote: t.remote()?,
                })
            })
            .collect();
        match host.activity(&wanted) {
            Ok(samples) => record_activity(store, &samples, now_ns),
            Err(e) if !self.activity_failed => {
                self.activity_failed = true;
                stderr::line(format_args!(
                    "leaktrace: warning: cannot read the traffic of connections ({e}); \
                     idle_half_closed cannot be detected"
                ));
            }
            Err(_) => {}
        }
    }
}

/// Sockets whose owner let go of them while other fds still hold them (fork, dup,
/// SCM_RIGHTS) get whoever holds them now as their owner: the one to blame for a leak.
fn reattribute(store: &mut Store, host: &mut dyn Host, now_ns: u64) {
    let wanted = store.orphans_to_look_for(now_ns);
    if wanted.is_empty() {
        return;
    }
    // Looked for again at the next evaluation.
    let Ok(found) = host.holders(&wanted) else {
        return;
    };
    store.found_holders(&wanted, &found, now_ns);
}

/// Stores what the kernel said of the sockets that want it, found by inode, or by their
/// addresses where no record carried the inode.
fn record_activity(store: &mut Store, samples: &[Sample], now_ns: u64) {
    let by_ino: HashMap<u64, &Sample> = samples
        .iter()
        .filter(|s| s.ino != 0)
        .map(|s| (s.ino, s))
        .collect();
    let by_addresses: HashMap<(SocketAddr, SocketAddr), &Sample> =
        samples.iter().map(|s| ((s.local, s.remote), s)).collect();
    let found: Vec<(SockKey, Activity)> = store
        .wanting_activity(now_ns)
        .filter_map(|(key, timeline)| {
            let sample = match timeline.ino() {
                Some(ino) => by_ino.get(&ino),
                None => timeline
                    .local()
                    .zip(timeline.remote())
                    .and_then(|pair| by_addresses.get(&pair)),
            }?;
            let idle_ns = u64::try_from(sample.idle.as_nanos()).unwrap_or(u64::MAX);
            let activity = Activity {
                sampled_ns: now_ns,
                last_traffic_ns: now_ns.saturating_sub(idle_ns),
                timer: sample.timer,
            };
            Some((*key, activity))
        })
        .collect();
    for (key, activity) in found {
        store.found_activity(key, activity);
    }
}

/// Names the owners of `keys` and finds where they run, for findings about to name them.
pub(crate) fn name_owners(store: &mut Store, host: &mut dyn Host, keys: &[SockKey]) {
    let tgids: Vec<u32> = (keys.iter())
        .filter_map(|key| Some(store.get(key)?.owner()?.tgid))
        .collect();
    for tgid in tgids {
        name(store, host, tgid);
        if store.placement(tgid).is_none() {
            let placement = host.placement(tgid);
            store.found_placement(tgid, placement);
        }
    }
}

/// Names the processes `tgids` that no record of their own named, where they still run.
pub(crate) fn names(store: &mut Store, host: &mut dyn Host, tgids: impl IntoIterator<Item = u32>) {
    for tgid in tgids {
        name(store, host, tgid);
    }
}

fn name(store: &mut Store, host: &mut dyn Host, tgid: u32) {
    if store.comm(tgid).is_some() {
        return;
    }
    if let Some(comm) = host.comm(tgid) {
        store.found_comm(tgid, &comm);
    }
}

/// Finds by which fd the owner of each of `keys` holds it now: the kernel side names a
/// socket's file (its inode), not the fd. Where the owner no longer holds it, whoever does
/// becomes the owner; where nobody does, it was closed without a record of it. A socket whose
/// records may be incomplete (see [`Store::may_be_incomplete`]) is looked up even where its fd
/// is known, as its close may be among the records lost. Returns those of them /proc could not
/// confirm held: a finding on them must wait.
pub(crate) fn resolve_fds(
    store: &mut Store,
    host: &mut dyn Host,
    keys: &[SockKey],
    now_ns: u64,
) -> Vec<SockKey> {
    let mut elsewhere = Vec::new();
    let mut found = Vec::new();
    let mut unconfirmed = Vec::new();
    {
        let mut fds = host.fds();
        for key in keys {
            let Some(timeline) = store.get(key) else {
                continue;
            };
            let Some(owner) = timeline.owner().filter(|_| timeline.live()) else {
                continue;
            };
            let incomplete = store.may_be_incomplete(timeline);
            let held = match (owner.fd, timeline.ino()) {
                (Some(_), _) if !incomplete => continue,
                (Some(fd), ino) => match fds.holds(owner.tgid, fd, ino) {
                    FdHeld::Yes => Ok(Some(fd)),
                    FdHeld::No | FdHeld::ProcessGone => Ok(None),
                    FdHeld::Unknown => Err(Unreadable),
                },
                (None, Some(ino)) => fds.fd_of(owner.tgid, ino),
                // Not accepted yet, or no record named its file: /proc cannot show it.
                (None, None) => Err(Unreadable),
            };
            match held {
                Ok(Some(fd)) => found.push((*key, fd)),
                Ok(None) => elsewhere.push(*key),
                // The fd stays unknown until a later look succeeds.
                Err(Unreadable) if incomplete => unconfirmed.push(*key),
                Err(Unreadable) => {}
            }
        }
    }
    for (key, fd) in found {
        store.found_fd(key, fd, now_ns);
    }
    if !hand_over_or_close(store, host, &elsewhere, now_ns) {
        unconfirmed.extend(
            (elsewhere.iter())
                .filter(|key| store.get(key).is_some_and(|t| store.may_be_incomplete(t))),
        );
    }
    unconfirmed
}

/// After records were lost: every socket's owner is looked up. A close, an exit or a hand-over
/// among the lost records would otherwise leave the socket held in leaktrace's view for good,
/// and a leak reported that has ended. False where the host could not tell for some: what it
/// could not tell is left as it was.
pub(crate) fn recheck_owners(store: &mut Store, host: &mut dyn Host, now_ns: u64) -> bool {
    let mut exited = BTreeSet::new();
    let mut elsewhere = Vec::new();
    let mut complete = true;
    let mut confirmed = Vec::new();
    let mut lookups = Vec::new();
    for (key, timeline) in store.iter() {
        if let Some(owner) = timeline.owner().filter(|_| timeline.live()) {
            lookups.push((*key, owner, timeline.ino()));
        }
    }
    // Asked once per process, not per socket.
    let gone: BTreeSet<u32> = (lookups.iter())
        .filter(|(_, owner, ino)| owner.fd.is_none() && ino.is_some())
        .map(|(_, owner, _)| owner.tgid)
        .collect::<BTreeSet<u32>>()
        .into_iter()
        .filter(|&tgid| host.gone(tgid))
        .collect();
    {
        let mut fds = host.fds();
        for (key, owner, ino) in lookups {
            let held = match (owner.fd, ino) {
                (Some(fd), ino) => fds.holds(owner.tgid, fd, ino),
                (None, Some(_)) if gone.contains(&owner.tgid) => FdHeld::ProcessGone,
                (None, Some(ino)) => match fds.fd_of(owner.tgid, ino) {
                    Ok(Some(_)) => FdHeld::Yes,
                    Ok(None) => FdHeld::No,
                    Err(Unreadable) => FdHeld::Unknown,
                },
                // Not accepted yet, or no record named its file: nothing to look for.
                (None, None) => continue,
            };
            match held {
                FdHeld::Yes => confirmed.push(key),
                FdHeld::No => elsewhere.push(key),
                FdHeld::ProcessGone => {
                    exited.insert(owner.tgid);
                }
                FdHeld::Unknown => complete = false,
            }
        }
    }
    for key in confirmed {
        store.found_held(key, now_ns);
    }
    for tgid in exited {
        store.owner_exited(tgid, now_ns);
    }
    hand_over_or_close(store, host, &elsewhere, now_ns) && complete
}

/// Sockets their recorded owner no longer holds: to whoever holds them now, else closed.
/// False, and nothing changed, where the host could not tell: a holder may have been missed.
fn hand_over_or_close(
    store: &mut Store,
    host: &mut dyn Host,
    keys: &[SockKey],
    now_ns: u64,
) -> bool {
    let inodes = keys
        .iter()
        .filter_map(|key| store.get(key)?.ino())
        .collect();
    let Ok(found) = host.holders(&inodes) else {
        return false;
    };
    for key in keys {
        let Some(timeline) = store.get(key) else {
            continue;
        };
        match timeline.ino().and_then(|ino| found.get(&ino)?.first()) {
            Some(holder) => store.hand_over(*key, holder, now_ns),
            None => store.found_closed(*key, now_ns),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use leaktrace_common::tcp_state;

    use super::*;
    use crate::decoder::{EventKind, Owner};
    use crate::host::fake::FakeHost;
    use crate::host::holders::tests::inode_of;
    use crate::host::ProcHost;
    use crate::timeline::tests::{event, key, ACCEPT, OWNER};
    use crate::timeline::OwnerInfo;

    /// After lost records, /proc decides: a socket still held stays as it was, one whose fd
    /// was copied before the (lost) close moves to the copy, one closed for good is closed,
    /// and one whose owner is gone has its owner exited.
    #[test]
    fn lost_records_are_made_up_for_from_proc() {
        use std::net::{TcpListener, TcpStream};
        use std::os::fd::AsRawFd;

        /// `fd_known`: found at start, with its fd; else only its file (the inode) is known.
        fn owned_by_me(store: &mut Store, sock: SockKey, stream: &TcpStream, fd_known: bool) {
            let fd = stream.as_raw_fd();
            let mut present = event(
                sock,
                10,
                EventKind::Present {
                    fd,
                    state: tcp_state::ESTABLISHED,
                    send_shutdown: false,
                },
            );
            present.task.tgid = std::process::id();
            present.owner = Some(Owner {
                tgid: std::process::id(),
                fd: fd_known.then_some(fd),
            });
            present.ino = Some(inode_of(fd));
            store.insert(present);
        }

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let connect = || TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (held, copied, closed, by_file) = (connect(), connect(), connect(), connect());
        let mut store = Store::default();
        let (held_key, copied_key, closed_key, gone_key, by_file_key) =
            (key(1, 1), key(2, 2), key(3, 3), key(4, 4), key(5, 5));
        owned_by_me(&mut store, held_key, &held, true);
        owned_by_me(&mut store, copied_key, &copied, true);
        owned_by_me(&mut store, closed_key, &closed, true);
        owned_by_me(&mut store, by_file_key, &by_file, false);
        // Beyond any pid_max: a process that is gone.
        let mut gone = event(gone_key, 10, ACCEPT);
        gone.ino = Some(1);
        gone.owner = Some(Owner {
            tgid: 1 << 23,
            fd: Some(7),
        });
        store.insert(gone);
        let copy = copied.try_clone().unwrap();
        drop((copied, closed));

        let mut host = ProcHost::default();
        recheck_owners(&mut store, &mut host, 1_000);
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
        assert!(timeline(by_file_key).live());

        // The fd of a socket known by its file alone is looked up when a finding needs it.
        resolve_fds(&mut store, &mut host, &[by_file_key], 2_000);
        assert_eq!(
            store.get(&by_file_key).unwrap().owner().unwrap().fd,
            Some(by_file.as_raw_fd())
        );
    }

    /// A process that inherited a socket (a fork's child) holds it after its owner exits: the
    /// child is the one to blame from then on, found once a second at most.
    #[test]
    fn an_exited_owner_s_socket_goes_to_whoever_holds_it() {
        const CHILD: u32 = 4343;
        let sock = key(1, 1);
        let mut store = Store::default();
        let mut accepted = event(sock, 10, ACCEPT);
        accepted.ino = Some(99);
        store.insert(accepted);
        store.owner_exited(OWNER, 20);
        let mut host = FakeHost::default();
        let mut enricher = Enricher::default();
        enricher.before_detection(&mut store, &mut host, 1_000);
        assert!(
            store.get(&sock).unwrap().owner_exited(),
            "nobody holds it yet"
        );

        host.fds.insert(CHILD, [(99, 3)].into());
        enricher.before_detection(&mut store, &mut host, 1_500);
        assert!(
            store.get(&sock).unwrap().owner_exited(),
            "looked for a second ago"
        );
        enricher.before_detection(&mut store, &mut host, 2_000_000_000);
        let timeline = store.get(&sock).unwrap();
        assert!(timeline.live());
        assert_eq!(
            timeline.owner(),
            Some(OwnerInfo {
                tgid: CHILD,
                fd: Some(3),
            })
        );
        assert_eq!(
            timeline.entries().last().map(|e| e.kind),
            Some(EventKind::HandedOver { fd: 3 })
        );
    }
}
