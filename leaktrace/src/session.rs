//! One trace session: attach the hooks, then move records from the ring buffer through the
//! decoder, the timeline store and the detectors to a reporter until told to stop.
use std::{io, path::Path, time::Duration};

use anyhow::{anyhow, Context as _};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::{interval, sleep_until, Instant, MissedTickBehavior},
};

use crate::{
    decoder,
    detect::Detectors,
    error::Failure,
    hooks::{self, HookFamily, LoadOptions},
    report::{IngestCounts, JsonReporter, Reporter, StartInfo, TextReporter},
    timeline::Store,
};

/// The object `leaktrace-ebpf` compiles to, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace"));

/// How often the detectors look at the timelines: a leak is reported at most this long after
/// it matured.
const EVALUATE_EVERY: Duration = Duration::from_millis(100);

pub struct SessionOptions {
    /// Empty: every process.
    pub pids: Vec<u32>,
    pub json: bool,
    pub hooks: HookFamily,
    pub ring_size: u32,
    pub leak_after: Duration,
    pub duration: Option<Duration>,
}

/// Checks what can be checked before touching the kernel, so bad input gets its own message.
pub fn preflight(options: &SessionOptions) -> Result<(), Failure> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Failure::NotRoot);
    }
    if let Some(&pid) = options
        .pids
        .iter()
        .find(|pid| **pid == 0 || !Path::new(&format!("/proc/{pid}")).exists())
    {
        return Err(Failure::NoSuchProcess(pid));
    }
    Ok(())
}

/// Runs a session; `on_attached` runs once the hooks are live (the demo starts its servers
/// there, so nothing they do happens before tracing starts).
pub async fn run(options: SessionOptions, on_attached: impl FnOnce()) -> Result<(), Failure> {
    preflight(&options)?;
    let mut attached = hooks::load(&LoadOptions {
        object: EBPF_OBJECT,
        family: options.hooks,
        filter_targets: !options.pids.is_empty(),
        ring_size: options.ring_size,
    })?;
    {
        let mut targets: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(
            attached
                .ebpf
                .map_mut("TARGETS")
                .ok_or_else(|| anyhow!("TARGETS map missing"))?,
        )
        .map_err(anyhow::Error::from)?;
        for &pid in &options.pids {
            targets.insert(pid, 1, 0).map_err(anyhow::Error::from)?;
        }
    }
    if attached
        .choices
        .iter()
        .any(|c| c.event == "present" && !c.hook.starts_with("unavailable"))
    {
        let seeded = hooks::seed_existing(&mut attached.ebpf, &options.pids)?;
        if let Some(why) = &seeded.first_failure {
            eprintln!(
                "leaktrace: warning: could not inspect the sockets of {} process(es) that predate the trace ({why})",
                seeded.failed
            );
        }
    }
    let lost = PerCpuArray::<MapData, u64>::try_from(
        attached
            .ebpf
            .take_map("LOST")
            .ok_or_else(|| anyhow!("LOST map missing"))?,
    )
    .map_err(anyhow::Error::from)?;
    let ring = RingBuf::try_from(
        attached
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("EVENTS map missing"))?,
    )
    .map_err(anyhow::Error::from)?;
    let mut ring = register(ring)?;

    let mut reporter: Box<dyn Reporter> = if options.json {
        Box::new(JsonReporter::new(Box::new(io::stdout())))
    } else {
        Box::new(TextReporter::new(Box::new(io::stdout())))
    };
    for refused in &attached.refused {
        eprintln!("leaktrace: hook not used: {refused}");
    }
    reporter
        .start(&StartInfo {
            hooks: attached
                .choices
                .iter()
                .map(|c| (c.event.to_owned(), c.hook.clone()))
                .collect(),
            pids: options.pids.clone(),
            leak_after: options.leak_after,
            kernel: kernel_release(),
        })
        .context("writing output")?;
    on_attached();

    let mut store = Store::new();
    let mut detectors = Detectors::new(options.leak_after);
    let mut counts = IngestCounts::default();
    let mut tick = interval(EVALUATE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = options.duration.map(|d| Instant::now() + d);
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;

    loop {
        tokio::select! {
            readable = ring.readable_mut() => {
                let mut guard = readable.context("polling the ring buffer")?;
                drain(guard.get_inner_mut(), &mut store, &mut counts);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                for outcome in detectors.evaluate(&mut store, monotonic_ns()) {
                    reporter.outcome(&outcome).context("writing output")?;
                }
            }
            _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => break,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }

    // Records already in the ring belong to this session: read them before the last verdict.
    drain(ring.get_mut(), &mut store, &mut counts);
    let now = monotonic_ns();
    for outcome in detectors.evaluate(&mut store, now) {
        reporter.outcome(&outcome).context("writing output")?;
    }
    counts.lost_events = lost_events(&lost)?;
    let report = detectors.summary(&mut store, now, counts);
    reporter.finish(&report).context("writing output")?;
    Ok(())
}

fn register(ring: RingBuf<MapData>) -> Result<AsyncFd<RingBuf<MapData>>, Failure> {
    // SAFETY: the ring buffer owns its map fd; the AsyncFd owns the ring buffer, so the fd stays
    // open and unchanged for the AsyncFd's whole life.
    unsafe { AsyncFd::register(ring) }
        .map_err(|e| Failure::Runtime(anyhow!("polling the ring buffer: {e}")))
}

fn drain(ring: &mut RingBuf<MapData>, store: &mut Store, counts: &mut IngestCounts) {
    while let Some(item) = ring.next() {
        counts.records += 1;
        match decoder::decode(&item) {
            Ok(event) => store.insert(event),
            Err(e) => {
                if counts.decode_errors == 0 {
                    // Once is enough: a layout mismatch would repeat for every record.
                    eprintln!("leaktrace: warning: undecodable record ({e}); counting the rest in the summary");
                }
                counts.decode_errors += 1;
            }
        }
    }
}

fn lost_events(lost: &PerCpuArray<MapData, u64>) -> Result<u64, Failure> {
    let per_cpu = lost.get(&0, 0).context("reading the lost-events counter")?;
    Ok(per_cpu.iter().sum())
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
