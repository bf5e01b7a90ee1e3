//! One trace session: attach the hooks, then move records from the ring buffer through the
//! decoder, the timeline store and the detectors to a reporter until told to stop.
use std::{collections::BTreeSet, future::Future, io, os::fd::RawFd, path::Path, time::Duration};

use anyhow::{anyhow, Context as _};
use aya::maps::{MapData, RingBuf};
use leaktrace_common::{ProbeFailure, Record};
use tokio::time::{interval, interval_at, sleep_until, Instant, MissedTickBehavior};

use crate::{
    cgroup::{self, Cgroup},
    decoder::{self, Event, EventKind, SockKey},
    error::Failure,
    format::{probe_failure_meaning, ring_size_hint},
    hooks::{self, Attached, Channel, LoadError, LoadOptions},
    host::{holders, ProcHost},
    output::{
        pipe, Batch, Export, JsonReporter, Metrics, Output, Outputs, StartInfo, TextReporter, Tick,
        TraceOut, Track,
    },
    settings::{Common, Leaks},
    stderr,
    stop::{self, StopSignals},
    summary::{FinalReport, IngestCounts},
    tick::Evaluator,
    timeline::{Store, Timeline},
    tree,
};

/// How often the detectors look at the timelines: a leak is reported at most this long after
/// it matured. Each look is a wake-up: every 100 ms, the wake-ups alone kept an idle session at
/// 0.19% of a core, against 0.07% every 250 ms.
const EVALUATE_EVERY: Duration = Duration::from_millis(250);

/// How often the session looks for a reader that went away: soon enough for a pipeline to end,
/// at no cost worth measuring.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// After records were lost, the owners of every tracked socket are looked up in /proc at most
/// this often: a scan per tracked socket is what a host overflowing the ring buffer can least
/// afford every second. Findings that mature meanwhile are looked up on their own first.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// Which processes to trace.
pub enum Scope {
    /// Every process.
    All,
    /// These processes (and, with `follow_children`, the processes they start).
    Pids(Vec<u32>),
    /// Processes the caller adds with [`Session::trace`] once the hooks are live (`run`).
    Added,
    /// The processes of a cgroup and the cgroups below it, now and later (`--cgroup`, `--unit`).
    Cgroup(Cgroup),
}

/// How many pids a line lists before it only counts the rest.
const PIDS_LISTED: usize = 10;

impl Scope {
    /// `descendants`: those of the `--pid` processes already running, traced with
    /// `follow_children`.
    fn describe(&self, follow_children: bool, descendants: &[u32]) -> String {
        match self {
            Scope::All => "all processes".to_owned(),
            Scope::Pids(pids) => {
                let whose = if pids.len() == 1 { "its" } else { "their" };
                let children = match (follow_children, descendants) {
                    (false, _) => String::new(),
                    (true, []) => format!(
                        " and {whose} descendants (none running now: those started from now on)"
                    ),
                    (true, running) => format!(
                        " and {whose} descendants ({} running now: {}; and those started from \
                         now on)",
                        running.len(),
                        list_pids(running)
                    ),
                };
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("pid {}{children}", pids.join(", "))
            }
            Scope::Added => "the command and the processes it starts".to_owned(),
            Scope::Cgroup(cgroup) => format!(
                "cgroup {} and the cgroups below it, with the processes that join them",
                cgroup.path
            ),
        }
    }
}

/// `pids`, comma-separated, the first [`PIDS_LISTED`] of them: a server's hundreds of workers
/// would bury the start line.
fn list_pids(pids: &[u32]) -> String {
    let listed: Vec<String> = pids.iter().take(PIDS_LISTED).map(u32::to_string).collect();
    match pids.len().checked_sub(PIDS_LISTED) {
        Some(more) if more > 0 => format!("{} and {more} more", listed.join(", ")),
        _ => listed.join(", "),
    }
}

pub struct SessionOptions {
    pub scope: Scope,
    pub follow_children: bool,
    /// Where the report goes: stdout, except under `run`, whose command owns stdout and whose
    /// status comes first: there a report that cannot be written is given up, and tracing goes
    /// on until the command exits.
    pub report_to_stderr: bool,
    pub duration: Option<Duration>,
    /// What every mode takes from the command line: output, hooks, limits.
    pub common: Common,
    pub leaks: Leaks,
}

impl SessionOptions {
    /// A session until stopped, reporting to stdout, following no children.
    pub fn new(scope: Scope, common: Common, leaks: Leaks) -> Self {
        Self {
            scope,
            follow_children: false,
            report_to_stderr: false,
            duration: None,
            common,
            leaks,
        }
    }
}

/// Why the main loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Duration,
    /// SIGINT, SIGTERM or SIGHUP, by number.
    Signal(libc::c_int),
    /// Every traced process exited.
    NothingLeft,
    /// The caller's own condition (e.g. `run`'s command exited).
    Caller,
}

pub struct Session {
    attached: Attached,
    /// Records, and the counts of what was lost and what the programs could not do.
    channel: Channel,
    /// The report, until given up (see `SessionOptions::report_to_stderr`), and the exports.
    outputs: Outputs,
    report_to_stderr: bool,
    store: Store,
    /// Enrichment, detection and sweeping, at each tick.
    evaluator: Evaluator,
    counts: IngestCounts,
    /// Traced processes still alive; the session ends when the last one exits.
    live: BTreeSet<u32>,
    /// Processes were named to trace (`--pid`): the session ends when none is left. Not under
    /// `run`, which ends with its command, once the command's exit is reaped.
    ends_with_processes: bool,
    /// Records were lost since the owners were last looked up in /proc, and when that was.
    loss_unchecked: bool,
    rechecked: Option<Instant>,
    deadline: Option<Instant>,
    interval: Option<Duration>,
    stops: StopSignals,
    /// Where the report goes (stdout or stderr), watched for its reader going away.
    report_fd: RawFd,
}

/// Checks what can be checked before touching the kernel, so bad input gets its own message.
fn preflight(options: &SessionOptions) -> Result<(), Failure> {
    if let Scope::Pids(pids) = &options.scope {
        if pids.len() > options.common.max_processes as usize {
            return Err(Failure::Usage(format!(
                "{} --pid given, more than --max-processes {}: raise it",
                pids.len(),
                options.common.max_processes
            )));
        }
    }
    if !options.report_to_stderr && stop::stdout_closed_at_start() {
        return Err(Failure::Output(anyhow!(
            "stdout is closed, so the report has nowhere to go: redirect it to a file \
             (or to /dev/null to discard it)"
        )));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Failure::NotRoot);
    }
    if let Scope::Pids(pids) = &options.scope {
        if let Some(&pid) = pids
            .iter()
            .find(|pid| **pid == 0 || !Path::new(&format!("/proc/{pid}")).exists())
        {
            return Err(Failure::NoSuchProcess(pid));
        }
        if let Some(&pid) = pids.iter().find(|&&pid| holders::gone(pid)) {
            return Err(Failure::Exited(pid));
        }
    }
    Ok(())
}

/// The processes in `cgroup` now, leaktrace aside, to trace and record the sockets of from the start.
fn cgroup_processes(cgroup: &Cgroup, max_processes: u32) -> Result<Vec<u32>, Failure> {
    let own = std::process::id();
    let pids: Vec<u32> = cgroup::processes(cgroup)
        .into_iter()
        .filter(|&pid| pid != own)
        .collect();
    if pids.len() > max_processes as usize {
        return Err(Failure::Usage(format!(
            "cgroup {} holds {} processes, more than --max-processes {}: raise it",
            cgroup.path,
            pids.len(),
            max_processes
        )));
    }
    Ok(pids)
}

/// Gives up starting when a stop signal came meanwhile (held since main began: `stop::hold`).
fn check_not_interrupted() -> Result<(), Failure> {
    match stop::held() {
        Some(signal) => Err(Failure::Interrupted(signal)),
        None => Ok(()),
    }
}

impl Session {
    /// Attaches the hooks, records the sockets the traced processes already hold, and prints the
    /// start of the report. Tracing is live when this returns.
    pub fn start(options: &SessionOptions) -> Result<Session, Failure> {
        preflight(options)?;
        // Before tracing starts: a port in use or an unwritable file is the user's to fix, and
        // must not cost a session's worth of tracing.
        let mut outputs = Outputs::default();
        let mut metrics_addr = None;
        if let Some(addr) = options.common.metrics {
            let metrics = Metrics::serve(addr, options.common.ring_size)
                .map_err(|e| Failure::Output(anyhow!("cannot serve metrics on {addr}: {e}")))?;
            metrics_addr = metrics.local_addr();
            let export = Export {
                flag: "--metrics",
                to: metrics_addr.unwrap_or(addr).to_string(),
                loses: "/metrics stops answering",
            };
            outputs.export(export, metrics);
        }
        if let Some(path) = options.common.trace_out.as_deref() {
            let trace = TraceOut::create(path).map_err(|e| {
                Failure::Output(anyhow!("cannot write the trace to {}: {e}", path.display()))
            })?;
            let export = Export {
                flag: "--trace-out",
                to: path.display().to_string(),
                loses: "the trace file stops here",
            };
            outputs.export(export, trace);
        }
        check_not_interrupted()?;
        let pids = match &options.scope {
            Scope::Pids(pids) => pids.clone(),
            Scope::Cgroup(cgroup) => cgroup_processes(cgroup, options.common.max_processes)?,
            Scope::All | Scope::Added => Vec::new(),
        };
        let mut attached = hooks::load(&LoadOptions {
            family: options.common.hooks,
            filter_targets: !matches!(options.scope, Scope::All),
            follow_children: options.follow_children,
            cgroup: match &options.scope {
                Scope::Cgroup(cgroup) => Some((cgroup.id, cgroup.level)),
                _ => None,
            },
            ring_size: options.common.ring_size,
            max_processes: options.common.max_processes,
            max_kernel_sockets: options.common.max_kernel_sockets,
            floor: options.common.floor,
        })?;
        check_not_interrupted()?;
        if options.follow_children && !attached.serves("fork") {
            return Err(LoadError::HookRefused {
                event: "fork",
                reasons: vec![
                    "following child processes needs tracepoint:task:task_newtask".into(),
                ],
            }
            .into());
        }
        {
            let mut targets = attached.targets()?;
            for &pid in &pids {
                targets.insert(pid)?;
            }
        }
        let descendants = match &options.scope {
            Scope::Pids(named) if options.follow_children => {
                trace_descendants(&mut attached, named, options.common.max_processes)?
            }
            Scope::Pids(named) => {
                for shared in tree::shared_listeners(named) {
                    stderr::line(format_args!("leaktrace: warning: {shared}"));
                }
                Vec::new()
            }
            Scope::All | Scope::Added | Scope::Cgroup(_) => Vec::new(),
        };
        // PresentFound and waited for like the processes named.
        let traced: Vec<u32> = pids.iter().chain(&descendants).copied().collect();
        let mut channel = Channel::take(&mut attached.ebpf)?;
        let mut store = Store::with_capacity_limit(options.common.max_sockets);
        if outputs.wants_timelines() {
            store = store.keeping_swept();
        }
        let mut counts = IngestCounts {
            ring_size: options.common.ring_size,
            ..IngestCounts::default()
        };
        let mut live: BTreeSet<u32> = traced.iter().copied().collect();
        // An empty list records every process's sockets: not what an empty cgroup asks for.
        let nothing_present = matches!(options.scope, Scope::Added)
            || (matches!(options.scope, Scope::Cgroup(_)) && pids.is_empty());
        if attached.can_record_present && !nothing_present {
            // Drained while recording them, a quarter of the ring at a time: one record per socket.
            let batch = options.common.ring_size as usize / Record::SIZE / 4;
            let found = hooks::record_present(&mut attached.ebpf, &traced, batch, &mut || {
                drain(
                    channel.records(),
                    &mut store,
                    &mut live,
                    &mut counts,
                    &mut outputs,
                )
            })?;
            if let Some(why) = &found.first_failure {
                stderr::line(format_args!(
                    "leaktrace: warning: could not inspect the sockets of {} process(es) that predate the trace ({why})",
                    found.failed
                ));
            }
            check_not_interrupted()?;
        }
        release_startup_memory();
        // Before the start line: whoever reads it may stop leaktrace at once, and must get the
        // final report, not a process killed by a signal's default action.
        let stops = StopSignals::install()?;

        let (opened, report_fd) = if options.report_to_stderr {
            (stderr::shared(), libc::STDERR_FILENO)
        } else {
            (pipe::open(io::stdout()), libc::STDOUT_FILENO)
        };
        let (pipe, outlet) =
            opened.map_err(|e| anyhow!("starting the thread that writes the report: {e}"))?;
        let out: Box<dyn io::Write + Send> = Box::new(pipe);
        let reporter: Box<dyn Output> = if options.common.json {
            Box::new(JsonReporter::new(out))
        } else {
            Box::new(TextReporter::new(out, options.common.verbose))
        };
        outputs.set_report(reporter, outlet);
        if options.common.verbose {
            for refused in &attached.refused {
                stderr::line(format_args!("leaktrace: hook not used: {refused}"));
            }
        }
        let start = StartInfo {
            hooks: attached
                .choices
                .iter()
                .map(|c| (c.event.to_owned(), c.hook.clone()))
                .collect(),
            family: (attached.family.family.name(), attached.family.why.clone()),
            refused: attached.refused.clone(),
            limits: attached
                .choices
                .iter()
                .filter_map(|c| Some((c.event.to_owned(), c.misses?.to_owned())))
                .collect(),
            // A cgroup's processes at start are not what the user named.
            pids: match &options.scope {
                Scope::Pids(_) => pids.clone(),
                _ => Vec::new(),
            },
            cgroup: match &options.scope {
                Scope::Cgroup(cgroup) => Some(cgroup.path.clone()),
                _ => None,
            },
            scope: options
                .scope
                .describe(options.follow_children, &descendants),
            descendants: (options.follow_children && !pids.is_empty()).then_some(descendants),
            leak_after: options.leaks.leak_after,
            idle_after: options.leaks.idle_after,
            kernel: kernel_release(),
            metrics: metrics_addr,
        };
        let mut session = Session {
            attached,
            channel,
            outputs,
            report_to_stderr: options.report_to_stderr,
            store,
            evaluator: Evaluator::new(
                options.leaks.leak_after,
                options.leaks.idle_after,
                Box::new(ProcHost::default()),
            ),
            counts,
            // A cgroup's processes come and go (a service restarts): it is traced until stopped.
            ends_with_processes: matches!(options.scope, Scope::Pids(_)),
            live,
            loss_unchecked: false,
            rechecked: None,
            // A duration too long for the clock to count (centuries) never comes: no deadline.
            deadline: options
                .duration
                .and_then(|duration| Instant::now().checked_add(duration)),
            interval: options.common.interval,
            stops,
            report_fd,
        };
        let started = session.outputs.start(&start);
        session.check_output(started)?;
        // One that exited before its exit hook was attached leaves no record of it: the session
        // would wait for it forever.
        let exited = session.forget_exited();
        // A cgroup's processes come and go: only a named pid's exit is news.
        if session.ends_with_processes {
            for pid in exited {
                stderr::line(format_args!(
                    "leaktrace: pid {pid} exited while tracing started"
                ));
            }
        }
        Ok(session)
    }

    /// Waits for the report's lines so far to be written, before a line of leaktrace's own.
    pub fn report_written(&self) {
        self.outputs.written();
    }

    /// Traces `pid` from now on (and, with `follow_children`, the processes it starts).
    pub fn trace(&mut self, pid: u32) -> Result<(), Failure> {
        self.attached.targets()?.insert(pid)?;
        self.live.insert(pid);
        Ok(())
    }

    pub fn untrace(&mut self, pid: u32) -> Result<(), Failure> {
        self.attached.targets()?.remove(pid)?;
        self.live.remove(&pid);
        Ok(())
    }

    /// Moves records through the pipeline and reports leaks as they mature, until the duration
    /// elapses, a stop signal arrives, every traced process has exited, or `until` resolves.
    pub async fn run_until(&mut self, until: impl Future<Output = ()>) -> Result<Ended, Failure> {
        let mut tick = interval(EVALUATE_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick of an interval fires at once; a summary is due only after a period,
        // never when that period is too long for the clock to count.
        let mut progress = self
            .interval
            .and_then(|period| Some(interval_at(Instant::now().checked_add(period)?, period)));
        let mut watch = interval(WATCH_EVERY);
        watch.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let deadline = self.deadline;
        let watching_processes = self.ends_with_processes;
        tokio::pin!(until);
        loop {
            tokio::select! {
                readable = self.channel.readable() => {
                    // Cleared before reading: a record arriving meanwhile sets it again.
                    readable.context("polling the ring buffer")?.clear_ready();
                    self.read_ring();
                    if watching_processes && self.live.is_empty() {
                        return Ok(Ended::NothingLeft);
                    }
                }
                _ = tick.tick() => {
                    // The kernel side wakes this loop only once an eighth of the ring buffer
                    // waits (see leaktrace-ebpf's emit): fewer records are read here.
                    self.read_ring();
                    if watching_processes && self.live.is_empty() {
                        return Ok(Ended::NothingLeft);
                    }
                    self.evaluate()?;
                }
                _ = async {
                    match progress.as_mut() {
                        Some(progress) => progress.tick().await,
                        None => std::future::pending().await,
                    }
                } => self.progress()?,
                _ = watch.tick() => self.watch()?,
                _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                    return Ok(Ended::Duration);
                }
                signal = self.stops.recv() => return Ok(Ended::Signal(signal)),
                () = &mut until => return Ok(Ended::Caller),
            }
        }
    }

    /// Reads what is left in the ring buffer, gives the detectors a last look, and prints the
    /// final report.
    pub fn finish(mut self) -> Result<FinalReport, Failure> {
        self.read_ring();
        self.note_losses(true)?;
        self.evaluate()?;
        let now = monotonic_ns();
        let mut report = self.evaluator.summary(&mut self.store, now, self.counts);
        // Named first: naming asks the host, and keeps what it finds in the store.
        let mut named: Vec<(SockKey, Option<String>)> = Vec::new();
        if self.outputs.wants_timelines() {
            let owners = self.store.owners();
            self.evaluator.name(&mut self.store, owners);
            named = (self.store.iter())
                .map(|(key, timeline)| (*key, owner_comm(&self.store, timeline)))
                .collect();
        }
        let left: Vec<Track<'_>> = named
            .into_iter()
            .filter_map(|(key, comm)| {
                let timeline = self.store.get(&key)?;
                Some(Track {
                    key,
                    timeline,
                    comm,
                })
            })
            .collect();
        let finished = self.outputs.finish(&mut report, &left, now);
        self.check_output(finished)?;
        Ok(report)
    }

    /// Moves every record waiting in the ring buffer into the timelines.
    fn read_ring(&mut self) {
        drain(
            self.channel.records(),
            &mut self.store,
            &mut self.live,
            &mut self.counts,
            &mut self.outputs,
        );
    }

    fn progress(&mut self) -> Result<(), Failure> {
        let progress = self
            .evaluator
            .progress(&self.store, monotonic_ns(), self.counts);
        let reported = self.outputs.progress(&progress);
        self.check_output(reported)
    }

    fn evaluate(&mut self) -> Result<(), Failure> {
        self.note_losses(false)?;
        let now = monotonic_ns();
        let outcomes = self.evaluator.evaluate(&mut self.store, now);
        let owners = self.store.swept_owners();
        self.evaluator.name(&mut self.store, owners);
        // Taken by the session, not by the outputs: they never change the store.
        let swept = self.store.take_swept();
        let swept: Vec<Track<'_>> = swept
            .iter()
            .map(|(key, timeline)| Track {
                key: *key,
                timeline,
                comm: owner_comm(&self.store, timeline),
            })
            .collect();
        let ticked = self.outputs.tick(&Tick {
            outcomes: &outcomes,
            swept: &swept,
            ingest: &self.counts,
            sockets_tracked: self.store.tracked(),
            now_ns: now,
        });
        self.check_output(ticked)
    }

    /// What the report's failure to be written means: the end of the session or only of the
    /// report (see [`Self::give_up_report`]). An export's is not seen here: it is dropped, and
    /// the session goes on (see [`Outputs`]).
    fn check_output(&mut self, sent: io::Result<()>) -> Result<(), Failure> {
        match sent {
            Ok(()) => Ok(()),
            Err(e) => self.give_up_report(Failure::writing(e)),
        }
    }

    /// Notices that nobody reads the report any more.
    fn watch(&mut self) -> Result<(), Failure> {
        if self.outputs.has_report() && stop::reader_gone(self.report_fd) {
            return self.give_up_report(Failure::OutputClosed);
        }
        Ok(())
    }

    /// A report that cannot be written ends the session with `failure`, except on stderr under
    /// `run`, where the command's status comes first: tracing goes on without the report.
    fn give_up_report(&mut self, failure: Failure) -> Result<(), Failure> {
        if !self.report_to_stderr {
            return Err(failure);
        }
        self.outputs.give_up_report();
        Ok(())
    }

    /// Warns the first time records are lost, while the burst that overflowed the ring buffer
    /// can still be matched to what the user sees, rather than only in the summary; and makes up
    /// for what was lost from /proc before the detectors look, at most every `RECHECK_EVERY`
    /// unless `now`. Between re-checks, the detectors' maturing findings are checked in /proc
    /// before they are made (see [`Evaluator::evaluate`]).
    fn note_losses(&mut self, now: bool) -> Result<(), Failure> {
        let lost = self.channel.lost()?;
        let failures = self.channel.probe_failures()?;
        for failure in ProbeFailure::ALL {
            let (before, now) = (
                self.counts.probe_failures[failure as usize],
                failures[failure as usize],
            );
            if before == 0 && now > 0 {
                stderr::line(format_args!(
                    "leaktrace: warning: {} {now}: {}",
                    failure.name(),
                    probe_failure_meaning(failure)
                ));
            }
        }
        self.counts.probe_failures = failures;
        if lost > 0 && self.counts.lost_events == 0 {
            stderr::line(format_args!(
                "leaktrace: warning: {lost} events lost so far (ring buffer full): {}",
                ring_size_hint(self.counts.ring_size)
            ));
        }
        if lost > self.counts.lost_events {
            // After the counter was read: every record lost so far was lost before this time.
            self.store.records_lost(monotonic_ns());
            self.loss_unchecked = true;
        }
        self.counts.lost_events = lost;
        let due = now
            || self
                .rechecked
                .is_none_or(|at| at.elapsed() >= RECHECK_EVERY);
        if self.loss_unchecked && due {
            self.recheck_after_loss();
        }
        Ok(())
    }

    /// A lost close, exit or hand-over would leave a socket held in leaktrace's view for good:
    /// what the kernel says now, in /proc, replaces what the lost records would have said.
    fn recheck_after_loss(&mut self) {
        // What did arrive goes first: a close in the ring is a close recorded.
        self.read_ring();
        self.forget_exited();
        // What /proc could not tell now is asked again at the next re-check.
        self.loss_unchecked = !self
            .evaluator
            .recheck_owners(&mut self.store, monotonic_ns());
        self.rechecked = Some(Instant::now());
    }

    /// Traced processes that are gone although no exit record said so: their owners exited
    /// now, as far as the timelines know. Returns them.
    fn forget_exited(&mut self) -> Vec<u32> {
        let now = monotonic_ns();
        let exited: Vec<u32> = self
            .live
            .iter()
            .copied()
            .filter(|&pid| self.evaluator.gone(pid))
            .collect();
        for &pid in &exited {
            self.live.remove(&pid);
            self.store.owner_exited(pid, now);
        }
        exited
    }
}

/// Traces the descendants of `pids` already running (see [`tree::trace_descendants`]) and
/// returns them; past `--max-processes`, says how many are left out.
fn trace_descendants(
    attached: &mut Attached,
    pids: &[u32],
    max_processes: u32,
) -> Result<Vec<u32>, Failure> {
    let mut targets = attached.targets()?;
    let found = tree::trace_descendants(pids, &mut |pid| targets.add(pid))?;
    if found.untraced > 0 {
        stderr::line(format_args!(
            "leaktrace: warning: {} running descendant process(es) of the traced ones not \
             traced, the kernel's map of traced processes being full (--max-processes \
             {max_processes}): leaks in them are missed; raise --max-processes",
            found.untraced
        ));
    }
    Ok(found.added)
}

/// The name of `timeline`'s owner, for the outputs that write timelines: the store's, from the
/// records or else from /proc.
fn owner_comm(store: &Store, timeline: &Timeline) -> Option<String> {
    store.comm(timeline.owner()?.tgid)
}

fn drain(
    ring: &mut RingBuf<MapData>,
    store: &mut Store,
    live: &mut BTreeSet<u32>,
    counts: &mut IngestCounts,
    outputs: &mut Outputs,
) {
    let mut batch = Batch::default();
    while let Some(item) = ring.next() {
        counts.records += 1;
        batch.records += 1;
        batch.bytes += item.len();
        let decoded = match decoder::decode(&item) {
            Ok(decoded) => decoded,
            Err(e) => {
                if counts.decode_errors == 0 {
                    // Once is enough: a layout mismatch would repeat for every record.
                    stderr::line(format_args!(
                        "leaktrace: warning: undecodable record ({e}); counting the rest in the summary"
                    ));
                }
                counts.decode_errors += 1;
                continue;
            }
        };
        // Not an iterator over both: a chain of 176-byte events moves each one twice more.
        ingest(decoded.first, store, live, &mut batch);
        if let Some(second) = decoded.second() {
            ingest(second, store, live, &mut batch);
        }
        if store.staged_enough() {
            store.insert_staged();
        }
    }
    store.insert_staged();
    outputs.batch(&batch);
}

/// Routes one event: process lifetimes to the traced set, socket events to the store; and
/// counts it in its batch for the outputs.
#[inline(always)]
fn ingest(event: Event, store: &mut Store, live: &mut BTreeSet<u32>, batch: &mut Batch) {
    batch.count(&event);
    match event.kind {
        EventKind::Fork { child } => {
            live.insert(child);
        }
        EventKind::Exit => {
            live.remove(&event.task.tgid);
            store.owner_exited(event.task.tgid, event.ts_ns);
        }
        _ => store.stage(event),
    }
}

/// Hands the memory that parsing the kernel's BTF took back to the system: glibc keeps freed
/// heap for reuse, and a session that runs for hours would hold those tens of MiB for nothing.
fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns` and so of every record.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_line_says_which_descendants_are_traced() {
        let one = Scope::Pids(vec![100]);
        assert_eq!(one.describe(false, &[]), "pid 100");
        assert_eq!(
            one.describe(true, &[101, 102]),
            "pid 100 and its descendants (2 running now: 101, 102; and those started from now on)"
        );
        assert_eq!(
            Scope::Pids(vec![100, 200]).describe(true, &[]),
            "pid 100, 200 and their descendants (none running now: those started from now on)"
        );
        let many: Vec<u32> = (1..=12).collect();
        assert!(one
            .describe(true, &many)
            .contains("(12 running now: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 2 more; and"));
    }
}
