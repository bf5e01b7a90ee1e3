//! `cargo xtask bench`: what leaktrace costs a busy host, measured on loopback in one run, with
//! the targets judged and the figures written to BENCHMARKS.md; `--soak` runs the long test
//! instead (RSS stays flat under churn, planted leaks are all reported and nothing else).
//!
//! Two workloads: the churn (a connection's whole life as fast as the kernel goes) and a real
//! server (nginx under ab). Each compares, in rotating rounds: nothing traced, the floor (the
//! same hooks holding programs that return at once: what attaching costs by itself), leaktrace
//! on every process, and leaktrace `--pid` (an unrelated idle process under churn, the nginx
//! worker under ab).
mod churn;
mod markdown;
mod nginx;
mod programs;
mod soak;
mod ss;
mod tracer;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use leaktrace_tests::nginx::{Nginx, Site};
use procfs::Current as _;

use crate::toolchain;

use churn::{Churned, Load, Until};
use tracer::{Memory, Tracer};

pub use ss::{hold, HOLDER_TASK};

/// How much each measurement does; `--quick` trades precision for a run of a few minutes.
struct Plan {
    /// Rounds of each workload's phases, medians reported.
    rounds: usize,
    phase: Duration,
    workers: usize,
    /// Workers of the phase that saturates the machine, to show what happens to leaktrace's
    /// records when it gets too little CPU.
    saturating_workers: usize,
    /// Connections churned before leaktrace's memory is read.
    churned: u64,
    ss_sockets: &'static [usize],
    /// Churn with the kernel's per-program accounting on.
    accounted: Duration,
}

const FULL: Plan = Plan {
    rounds: 5,
    phase: Duration::from_secs(15),
    workers: 4,
    saturating_workers: 8,
    churned: 1_000_000,
    ss_sockets: &[10_000, 100_000],
    accounted: Duration::from_secs(10),
};

const QUICK: Plan = Plan {
    rounds: 1,
    phase: Duration::from_secs(5),
    workers: 4,
    saturating_workers: 8,
    churned: 100_000,
    ss_sockets: &[10_000],
    accounted: Duration::from_secs(3),
};

/// After the load stops, leaktrace gets this long to read what is still in its ring buffer
/// before SIGINT; its CPU time is counted up to then.
const TAIL: Duration = Duration::from_secs(1);

/// The targets: each workload's rate, traced, against its untraced rate.
const TARGETS: [(Workload, Tracing, f64); 4] = [
    (Workload::Nginx, Tracing::Pid, 0.95),
    (Workload::Nginx, Tracing::All, 0.90),
    (Workload::Churn, Tracing::Pid, 0.97),
    (Workload::Churn, Tracing::All, 0.85),
];
/// Where the floor alone is below a target, leaktrace's loss may be at most this many times the
/// floor's.
const FLOOR_LOSS_FACTOR: f64 = 1.5;
const TARGET_TRANSITIONS_PER_SECOND: f64 = 100_000.0;
const MAX_RSS_KIB: u64 = 64 * 1024;
/// leaktrace's own process, as a share of a core per 100k records/s.
const MAX_CORE_SHARE_AT_100K: f64 = 0.02;

pub fn run(root: &Path, quick: bool, soak: Option<Duration>) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "the bench loads eBPF and reads leaktrace's /proc figures: run it as root \
             (sudo -E cargo xtask bench)"
        );
    }
    crate::cargo(root, &["build", "--release", "--package", "leaktrace"])?;
    let binary = root.join("target/release/leaktrace");
    let machine = Machine::read()?;
    if let Some(duration) = soak {
        crate::cargo(
            root,
            &[
                "build",
                "--release",
                "--package",
                "leaktrace-tests",
                "--bin",
                "leaktrace-fixture",
            ],
        )?;
        let fixture = root.join("target/release/leaktrace-fixture");
        let report = soak::run(&binary, &fixture, duration)?;
        let text = markdown::soak(&machine, &report);
        println!("{text}");
        markdown::write_soak(root, &text)?;
        if !report.passed() {
            bail!("the soak failed: see the Soak section above");
        }
        return Ok(());
    }
    toolchain::ensure_commands("the bench's server and load generator", &nginx::PACKAGES)?;
    let plan = if quick { &QUICK } else { &FULL };
    let figures = measure(&binary, plan, quick)?;
    let text = markdown::bench(&machine, &figures);
    println!("{text}");
    markdown::write_bench(root, &text)
}

/// The machine the figures come from.
pub struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
    memory_gib: f64,
    /// The load average (1, 5, 15 min) when the bench started: others' work shares the cores.
    load: (f32, f32, f32),
    /// When the bench started, UTC.
    date: String,
}

impl Machine {
    fn read() -> Result<Machine> {
        let cpuinfo = procfs::CpuInfo::current()?;
        let load = procfs::LoadAverage::current()?;
        Ok(Machine {
            cpu: cpuinfo.model_name(0).unwrap_or("unknown").to_owned(),
            cores: cpuinfo.num_cores(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")?
                .trim()
                .to_owned(),
            memory_gib: procfs::Meminfo::current()?.mem_total as f64 / f64::from(1 << 30),
            load: (load.one, load.five, load.fifteen),
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// Loopback connections opened and closed as fast as the kernel goes.
    Churn,
    /// nginx under ab.
    Nginx,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Churn => "churn",
            Workload::Nginx => "nginx + ab",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracing {
    None,
    /// The same hooks, holding programs that return at once (`--floor`).
    Floor,
    All,
    /// `--pid` of an idle process under churn (the hooks' cost when nothing they see is
    /// traced), of the busy server under nginx's load.
    Pid,
}

impl Tracing {
    const ROTATION: [Tracing; 4] = [Tracing::None, Tracing::Floor, Tracing::All, Tracing::Pid];

    fn label(self, workload: Workload) -> &'static str {
        match (self, workload) {
            (Tracing::None, _) => "no tracer",
            (Tracing::Floor, _) => "floor: leaktrace's hooks, empty programs",
            (Tracing::All, _) => "leaktrace, all processes",
            (Tracing::Pid, Workload::Churn) => "leaktrace --pid <idle process>",
            (Tracing::Pid, Workload::Nginx) => "leaktrace --pid <nginx worker>",
        }
    }
}

struct Phase {
    workload: Workload,
    tracing: Tracing,
    /// The load was paced: its rate then says nothing of leaktrace's cost.
    paced: bool,
    churned: Churned,
    traced: Option<Traced>,
}

/// leaktrace's side of a traced phase.
struct Traced {
    /// From the load's start until SIGINT: the load and [`TAIL`].
    window: Duration,
    cpu: Duration,
    memory: Memory,
    records: u64,
    lost: u64,
    /// The start record's hooks, as leaktrace chose them.
    start: serde_json::Value,
}

impl Traced {
    fn records_per_second(&self) -> f64 {
        self.records as f64 / self.window.as_secs_f64()
    }

    fn core_share(&self) -> f64 {
        self.cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    /// The share of one core leaktrace would need at 100k records/s, at its measured cost
    /// per record.
    fn core_share_at_100k(&self) -> Option<f64> {
        (self.records > 0).then(|| self.cpu.as_secs_f64() / self.records as f64 * 100_000.0)
    }
}

/// One program's share of a connection, from the kernel's accounting.
pub struct HookCost {
    name: String,
    runs_per_connection: f64,
    ns_per_run: f64,
}

impl HookCost {
    fn per_connection(costs: Vec<programs::ProgramCost>, connections: u64) -> Vec<HookCost> {
        let connections = connections.max(1) as f64;
        costs
            .into_iter()
            .map(|c| HookCost {
                runs_per_connection: c.runs as f64 / connections,
                ns_per_run: c.time.as_nanos() as f64 / c.runs.max(1) as f64,
                name: c.name,
            })
            .collect()
    }

    fn ns_per_connection(&self) -> f64 {
        self.runs_per_connection * self.ns_per_run
    }
}

/// The kernel's accounting of each program over a stretch of churn, leaktrace's and the floor's.
pub struct Accounted {
    leaktrace: Vec<HookCost>,
    floor: Vec<HookCost>,
}

/// Everything the bench measured.
pub struct Figures {
    quick: bool,
    plan_workers: usize,
    rounds: Vec<Phase>,
    /// Paced at the target's 100k transitions/s.
    target_rate: Phase,
    saturated: Phase,
    saturating_workers: usize,
    /// leaktrace's memory once `churned.connections` were made.
    churned: Phase,
    accounted: Accounted,
    /// `None` when `ss` is not installed.
    ss: Option<Vec<ss::SsCost>>,
}

/// A process that does nothing, for `--pid`.
struct Idle(Child);

impl Idle {
    fn spawn() -> Result<Idle> {
        let child = Command::new("sleep")
            .arg("infinity")
            .stdin(Stdio::null())
            .spawn()
            .context("starting sleep")?;
        Ok(Idle(child))
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        // Fails only if it already exited, and wait reaps it either way.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn measure(binary: &Path, plan: &Plan, quick: bool) -> Result<Figures> {
    // First, while the machine holds no TIME_WAIT sockets of ours for ss to list.
    let ss = if ss::available() {
        Some(ss::measure(plan.ss_sockets)?)
    } else {
        eprintln!("xtask: bench: ss is not installed (iproute2): its cost is not measured");
        None
    };
    let idle = Idle::spawn()?;
    let nginx = Nginx::start(Site::Answer, 1)?;
    let bench = Bench {
        binary: binary.to_owned(),
        idle_pid: idle.0.id(),
        nginx,
    };
    let load = |workers| Load {
        workers,
        until: Until::Elapsed(plan.phase),
        pace: None,
    };
    let mut rounds = Vec::new();
    for round in 0..plan.rounds {
        for workload in [Workload::Churn, Workload::Nginx] {
            // Rotated each round, so that a drift in the machine's load does not favour one.
            for i in 0..Tracing::ROTATION.len() {
                let tracing = Tracing::ROTATION[(i + round) % Tracing::ROTATION.len()];
                eprintln!(
                    "xtask: bench: round {}/{}: {}: {}",
                    round + 1,
                    plan.rounds,
                    workload.name(),
                    tracing.label(workload)
                );
                rounds.push(bench.phase(workload, tracing, &load(plan.workers))?);
            }
        }
    }
    let target_pace = TARGET_TRANSITIONS_PER_SECOND / churn::TRANSITIONS_PER_CONNECTION as f64;
    eprintln!("xtask: bench: paced at 100k transitions/s");
    let target_rate = bench.phase(
        Workload::Churn,
        Tracing::All,
        &Load {
            workers: plan.workers,
            until: Until::Elapsed(plan.phase),
            pace: Some(target_pace),
        },
    )?;
    eprintln!(
        "xtask: bench: saturated: {} workers on {} cores",
        plan.saturating_workers,
        thread::available_parallelism().map_or(0, usize::from)
    );
    let saturated = bench.phase(
        Workload::Churn,
        Tracing::All,
        &load(plan.saturating_workers),
    )?;
    eprintln!(
        "xtask: bench: leaktrace's memory after {} connections, paced as above",
        plan.churned
    );
    let churned = bench.phase(
        Workload::Churn,
        Tracing::All,
        &Load {
            workers: plan.workers,
            until: Until::Connections(plan.churned),
            pace: Some(target_pace),
        },
    )?;
    eprintln!("xtask: bench: each program's cost, from the kernel's accounting");
    let accounted = bench.accounted(&Load {
        workers: plan.workers,
        until: Until::Elapsed(plan.accounted),
        pace: None,
    })?;
    Ok(Figures {
        quick,
        plan_workers: plan.workers,
        rounds,
        target_rate,
        saturated,
        saturating_workers: plan.saturating_workers,
        churned,
        accounted,
        ss,
    })
}

struct Bench {
    binary: PathBuf,
    idle_pid: u32,
    nginx: Nginx,
}

impl Bench {
    /// leaktrace's arguments for `tracing` under `workload`; `None`: no tracer.
    fn args(&self, workload: Workload, tracing: Tracing) -> Option<Vec<String>> {
        Some(match tracing {
            Tracing::None => return None,
            Tracing::Floor => vec!["--floor".to_owned()],
            Tracing::All => Vec::new(),
            Tracing::Pid => {
                let pid = match workload {
                    Workload::Churn => self.idle_pid,
                    Workload::Nginx => self.nginx.workers[0],
                };
                vec!["--pid".to_owned(), pid.to_string()]
            }
        })
    }

    /// Runs the workload's load once, for the phase's length.
    fn load(&self, workload: Workload, load: &Load) -> Result<Churned> {
        match workload {
            Workload::Churn => churn::run(load),
            Workload::Nginx => {
                let Until::Elapsed(duration) = load.until else {
                    bail!("the nginx workload runs for a time only");
                };
                let started = Instant::now();
                let rate = nginx::load(&self.nginx, duration)?;
                let elapsed = started.elapsed();
                Ok(Churned {
                    connections: (rate * elapsed.as_secs_f64()) as u64,
                    elapsed,
                })
            }
        }
    }

    fn phase(&self, workload: Workload, tracing: Tracing, load: &Load) -> Result<Phase> {
        let Some(args) = self.args(workload, tracing) else {
            let churned = self.load(workload, load)?;
            eprintln!("xtask: bench:   {:.0} connections/s", churned.per_second());
            return Ok(Phase {
                workload,
                tracing,
                paced: load.pace.is_some(),
                churned,
                traced: None,
            });
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let tracer = Tracer::start(&self.binary, &args)?;
        let cpu_before = tracer.cpu_time()?;
        let started = Instant::now();
        let churned = self.load(workload, load)?;
        thread::sleep(TAIL);
        let window = started.elapsed();
        let cpu = tracer.cpu_time()? - cpu_before;
        let memory = tracer.memory()?;
        let finished = tracer.stop()?;
        let traced = Traced {
            window,
            cpu,
            memory,
            records: finished.count("records"),
            lost: finished.count("lost_events"),
            start: finished.start,
        };
        eprintln!(
            "xtask: bench:   {:.0} connections/s, {:.0} records/s, {} lost, {:.1}% of a core, RSS {} KiB",
            churned.per_second(),
            traced.records_per_second(),
            traced.lost,
            traced.core_share() * 100.0,
            traced.memory.rss_kib
        );
        Ok(Phase {
            workload,
            tracing,
            paced: load.pace.is_some(),
            churned,
            traced: Some(traced),
        })
    }

    /// The kernel's accounting of every program, leaktrace's (all processes) then the floor's,
    /// each over one stretch of churn.
    fn accounted(&self, load: &Load) -> Result<Accounted> {
        let _accounting = programs::Accounting::enable()?;
        let measure = |tracing| -> Result<Vec<HookCost>> {
            let args = self.args(Workload::Churn, tracing).unwrap_or_default();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let tracer = Tracer::start(&self.binary, &args)?;
            let before = programs::snapshot(tracer.pid())?;
            let churned = churn::run(load)?;
            let after = programs::snapshot(tracer.pid())?;
            tracer.stop()?;
            Ok(HookCost::per_connection(
                programs::between(&before, &after),
                churned.connections,
            ))
        };
        Ok(Accounted {
            leaktrace: measure(Tracing::All)?,
            floor: measure(Tracing::Floor)?,
        })
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// A target, judged.
pub struct Verdict {
    target: String,
    measured: String,
    /// `None`: met; else by how much it was missed.
    missed_by: Option<String>,
    note: Option<String>,
}

impl Figures {
    fn phases(&self, workload: Workload, tracing: Tracing) -> impl Iterator<Item = &Phase> {
        self.rounds
            .iter()
            .filter(move |p| p.workload == workload && p.tracing == tracing)
    }

    fn median_rate(&self, workload: Workload, tracing: Tracing) -> f64 {
        median(
            self.phases(workload, tracing)
                .map(|p| p.churned.per_second())
                .collect(),
        )
    }

    fn ratio(&self, workload: Workload, tracing: Tracing) -> f64 {
        self.median_rate(workload, tracing) / self.median_rate(workload, Tracing::None)
    }

    /// Records reaching userspace per connection, leaktrace on all processes.
    fn records_per_connection(&self, workload: Workload) -> f64 {
        median(
            self.phases(workload, Tracing::All)
                .filter_map(|p| {
                    let t = p.traced.as_ref()?;
                    Some(t.records as f64 / p.churned.connections.max(1) as f64)
                })
                .collect(),
        )
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        for (workload, tracing, target) in TARGETS {
            let ratio = self.ratio(workload, tracing);
            let floor = self.ratio(workload, Tracing::Floor);
            // Below a floor that misses the target itself, the loss is judged against the
            // floor's: leaktrace cannot cost less than its attach points.
            let (met, allowance) = if floor < target {
                let allowed = 1.0 - (1.0 - floor) * FLOOR_LOSS_FACTOR;
                (
                    ratio >= allowed,
                    Some(format!(
                        "the floor alone is {floor:.3}x, below the target: at most \
                         {FLOOR_LOSS_FACTOR} times its loss, {allowed:.3}x"
                    )),
                )
            } else {
                (ratio >= target, None)
            };
            verdicts.push(Verdict {
                target: format!(
                    "{}: {} >= {target:.2}x untraced",
                    workload.name(),
                    tracing.label(workload)
                ),
                measured: format!("{ratio:.3}x (medians; floor {floor:.3}x)"),
                missed_by: (!met).then(|| {
                    format!(
                        "{:.1} points short ({:.1}% slower than untraced)",
                        (target - ratio) * 100.0,
                        (1.0 - ratio) * 100.0
                    )
                }),
                note: allowance,
            });
        }
        let paced = self
            .target_rate
            .traced
            .as_ref()
            .expect("the paced phase is traced");
        let transitions =
            self.target_rate.churned.per_second() * churn::TRANSITIONS_PER_CONNECTION as f64;
        verdicts.push(Verdict {
            target: "zero lost events at 100k transitions/s, default ring size".to_owned(),
            measured: format!("{} lost at {transitions:.0} transitions/s", paced.lost),
            missed_by: (paced.lost > 0).then(|| {
                format!(
                    "{} events lost ({:.2}% of the records)",
                    paced.lost,
                    paced.lost as f64 / (paced.records + paced.lost) as f64 * 100.0
                )
            }),
            // The pace is the target's: only a machine too busy to keep it falls short.
            note: (transitions < TARGET_TRANSITIONS_PER_SECOND * 0.95).then(|| {
                format!(
                    "this machine reached {:.0}% of 100k transitions/s: zero loss is shown at that rate only",
                    transitions / TARGET_TRANSITIONS_PER_SECOND * 100.0
                )
            }),
        });
        let memory = self
            .churned
            .traced
            .as_ref()
            .expect("the memory phase is traced")
            .memory;
        let connections = self.churned.churned.connections;
        verdicts.push(Verdict {
            target: "RSS <= 64 MiB after 1M sockets churned".to_owned(),
            measured: format!(
                "{:.1} MiB after {connections} connections (peak {:.1} MiB)",
                mib(memory.rss_kib),
                mib(memory.peak_kib)
            ),
            missed_by: (memory.rss_kib > MAX_RSS_KIB)
                .then(|| format!("{:.1} MiB over", mib(memory.rss_kib) - mib(MAX_RSS_KIB))),
            note: (connections < 1_000_000)
                .then(|| format!("--quick: {connections} connections, not 1M")),
        });
        let share = paced.core_share_at_100k();
        verdicts.push(Verdict {
            target: format!(
                "leaktrace's own process <= {:.0}% of a core per 100k records/s",
                MAX_CORE_SHARE_AT_100K * 100.0
            ),
            measured: share.map_or("no records".to_owned(), |s| {
                format!(
                    "{:.1}% of a core per 100k records/s (measured {:.1}% at {:.0} records/s)",
                    s * 100.0,
                    paced.core_share() * 100.0,
                    paced.records_per_second()
                )
            }),
            missed_by: share.filter(|s| *s > MAX_CORE_SHARE_AT_100K).map(|s| {
                format!(
                    "{:.1} points over ({:.2}x the budget)",
                    (s - MAX_CORE_SHARE_AT_100K) * 100.0,
                    s / MAX_CORE_SHARE_AT_100K
                )
            }),
            note: Some(format!(
                "reading, decoding, timelines, detectors, at the paced rate; {:.1} records per \
                 connection reach it under churn ({:.1} under nginx + ab), both ends of each \
                 connection traced",
                self.records_per_connection(Workload::Churn),
                self.records_per_connection(Workload::Nginx)
            )),
        });
        verdicts
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
