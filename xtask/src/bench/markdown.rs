//! BENCHMARKS.md: the bench's figures, then the soak's section. Each mode rewrites its own part
//! and keeps the other's, as they run at different times (the soak takes half an hour).
use std::{fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    churn::TRANSITIONS_PER_CONNECTION, median, mib, soak::Soak, Figures, Machine, Phase, Tracing,
    Workload, TARGET_TRANSITIONS_PER_SECOND,
};

const FILE: &str = "BENCHMARKS.md";
const SOAK_HEADING: &str = "## Soak";
const SOAK_COMMAND: &str = "sudo -E cargo xtask bench --soak 30m";

pub fn write_bench(root: &Path, text: &str) -> Result<()> {
    let (_, soak) = split(root)?;
    let soak = soak.unwrap_or_else(|| {
        format!("{SOAK_HEADING}\n\nNot run yet: `{SOAK_COMMAND}` writes this section.\n")
    });
    write(root, &format!("{text}\n{soak}"))
}

pub fn write_soak(root: &Path, text: &str) -> Result<()> {
    let (bench, _) = split(root)?;
    let bench = bench.unwrap_or_else(|| {
        "# Benchmarks\n\nNot run yet: `sudo -E cargo xtask bench` writes this part.\n".to_owned()
    });
    write(root, &format!("{bench}\n\n{text}"))
}

/// The file's bench part and soak part, each if present.
fn split(root: &Path) -> Result<(Option<String>, Option<String>)> {
    let Ok(text) = fs::read_to_string(root.join(FILE)) else {
        return Ok((None, None));
    };
    Ok(match text.find(&format!("\n{SOAK_HEADING}\n")) {
        Some(at) => (
            Some(text[..at].trim_end().to_owned()).filter(|b| !b.is_empty()),
            Some(text[at + 1..].to_owned()),
        ),
        None => (Some(text.trim_end().to_owned()), None),
    })
}

fn write(root: &Path, text: &str) -> Result<()> {
    let path = root.join(FILE);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: bench: wrote {}", path.display());
    Ok(())
}

fn machine_table(out: &mut String, machine: &Machine, hooks: Option<&serde_json::Value>) {
    let (one, five, fifteen) = machine.load;
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| date | {} |", machine.date);
    let _ = writeln!(out, "| CPU | {}, {} cores |", machine.cpu, machine.cores);
    let _ = writeln!(out, "| memory | {:.1} GiB |", machine.memory_gib);
    let _ = writeln!(out, "| kernel | {} |", machine.kernel);
    if let Some(start) = hooks {
        let family = leaktrace_tests::hook_family(start).unwrap_or("mixed");
        let hooks: Vec<String> = leaktrace_tests::FAMILY_EVENTS
            .iter()
            .map(|event| {
                format!(
                    "{event} `{}`",
                    start["hooks"][event].as_str().unwrap_or("?")
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "| hooks leaktrace chose | {family} family: {} |",
            hooks.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "| load average at start | {one:.2} / {five:.2} / {fifteen:.2} (1 / 5 / 15 min) |"
    );
    let _ = writeln!(
        out,
        "\nThe cores are shared with other work (other builds and test runs on this machine), so \
         the figures are noisy: re-run on a quiet machine with the same command for better ones."
    );
}

pub fn bench(machine: &Machine, figures: &Figures) -> String {
    let mut out = String::new();
    let command = if figures.quick {
        "sudo -E cargo xtask bench --quick"
    } else {
        "sudo -E cargo xtask bench"
    };
    let _ = writeln!(
        out,
        "# Benchmarks\n\nWhat leaktrace costs a busy host, measured on loopback by `{command}` \
         (one command, from a fresh clone; about 15 minutes, `--quick` about 4). Written by the \
         bench: do not edit by hand.\n"
    );
    if figures.quick {
        let _ = writeln!(
            out,
            "**A `--quick` run**: shorter phases, one round, {} connections instead of 1M, \
             `ss` at 10k sockets only. Run without `--quick` for the figures of record.\n",
            figures.churned.churned.connections
        );
    }
    let _ = writeln!(out, "## Machine\n");
    let start = figures.target_rate.traced.as_ref().map(|t| &t.start);
    machine_table(&mut out, machine, start);

    let _ = writeln!(out, "\n## Targets\n");
    let _ = writeln!(out, "| target | measured | verdict |\n|---|---|---|");
    let verdicts = figures.verdicts();
    for v in &verdicts {
        let verdict = match &v.missed_by {
            None => "PASS".to_owned(),
            Some(by) => format!("**MISS**: {by}"),
        };
        let _ = writeln!(out, "| {} | {} | {verdict} |", v.target, v.measured);
    }
    let notes: Vec<String> = verdicts
        .iter()
        .filter_map(|v| v.note.as_ref().map(|n| format!("- {}: {n}.", v.target)))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\n{}", notes.join("\n"));
    }

    let phase_len = figures
        .rounds
        .first()
        .map_or(Duration::ZERO, |p| p.churned.elapsed);
    let rounds = figures.rounds.len() / (2 * Tracing::ROTATION.len());
    let _ = writeln!(
        out,
        "\n## The workloads, traced four ways\n\nEach workload runs {}s per phase, {rounds} \
         rounds of its four phases, their order rotated each round: no tracer; the **floor** \
         (`leaktrace --floor`: the same hooks, every program returning at once, so what attaching \
         costs by itself); leaktrace on every process; leaktrace `--pid`. leaktrace runs with \
         `--json` and its defaults (4 MiB ring); its figures cover the load and {}s after it, \
         until SIGINT, and its records include whatever else the machine did meanwhile.",
        phase_len.as_secs(),
        super::TAIL.as_secs()
    );
    for (workload, about) in [
        (
            Workload::Churn,
            format!(
                "{} worker threads, each connecting to its own loopback listener, accepting, \
                 writing 4 bytes, reading them and closing both ends (client first). `--pid` \
                 names an idle process: what the hooks cost a host when nothing they see is \
                 traced.",
                figures.plan_workers
            ),
        ),
        (
            Workload::Nginx,
            "Debian's nginx, one worker, answering `ab -c 20` (ApacheBench, a new connection \
             per request) with 3 bytes on loopback. `--pid` names the nginx worker: the busy \
             server itself is traced."
                .to_owned(),
        ),
    ] {
        let _ = writeln!(out, "\n### {}\n\n{about}\n", workload.name());
        phase_table(
            &mut out,
            figures
                .rounds
                .iter()
                .filter(|p| p.workload == workload)
                .map(|p| (p.tracing.label(workload), p)),
            figures,
        );
        let _ = writeln!(out);
        for tracing in Tracing::ROTATION {
            let rate = figures.median_rate(workload, tracing);
            let ratio = if tracing == Tracing::None {
                String::new()
            } else {
                format!(", {:.3}x untraced", figures.ratio(workload, tracing))
            };
            let _ = writeln!(
                out,
                "- median, {}: {rate:.0} connections/s{ratio}",
                tracing.label(workload)
            );
        }
        let _ = writeln!(
            out,
            "- records reaching userspace per connection (leaktrace, all processes): {:.1}",
            figures.records_per_connection(workload)
        );
    }

    let _ = writeln!(out, "\n## Which hook costs what\n");
    let _ = writeln!(
        out,
        "The kernel's own accounting of each program's runs (`BPF_ENABLE_STATS`) over a stretch \
         of churn, leaktrace on every process, then the floor over another stretch. The \
         accounting costs each run itself (the floor's figures are mostly that), so it runs \
         apart from the phases above. Per connection (both ends traced).\n"
    );
    let _ = writeln!(
        out,
        "| program | runs | leaktrace ns/run | floor ns/run | leaktrace ns/connection | floor ns/connection |\n|---|---|---|---|---|---|"
    );
    let (mut total, mut floor_total) = (0.0, 0.0);
    for hook in &figures.accounted.leaktrace {
        let floor = figures.accounted.floor.iter().find(|f| f.name == hook.name);
        total += hook.ns_per_connection();
        floor_total += floor.map_or(0.0, |f| f.ns_per_connection());
        let _ = writeln!(
            out,
            "| `{}` | {:.2} | {:.0} | {} | {:.0} | {} |",
            hook.name,
            hook.runs_per_connection,
            hook.ns_per_run,
            floor.map_or("-".to_owned(), |f| format!("{:.0}", f.ns_per_run)),
            hook.ns_per_connection(),
            floor.map_or("-".to_owned(), |f| format!("{:.0}", f.ns_per_connection())),
        );
    }
    let _ = writeln!(out, "| all | | | | {total:.0} | {floor_total:.0} |");

    let _ = writeln!(out, "\n## At 100k transitions/s, and saturated\n");
    let _ = writeln!(
        out,
        "leaktrace on all processes, first with the churn paced at 100k TCP state \
         transitions/s ({TRANSITIONS_PER_CONNECTION} per connection, both ends: {:.0} \
         connections/s), reaching {:.0} transitions/s; then with {} workers as fast as they go \
         on {} cores, which leaves leaktrace only its share of the CPU: what it cannot read in \
         time is lost.\n",
        TARGET_TRANSITIONS_PER_SECOND / TRANSITIONS_PER_CONNECTION as f64,
        figures.target_rate.churned.per_second() * TRANSITIONS_PER_CONNECTION as f64,
        figures.saturating_workers,
        machine.cores
    );
    let saturated = format!("{} workers, as fast as they go", figures.saturating_workers);
    phase_table(
        &mut out,
        [
            ("paced at 100k transitions/s", &figures.target_rate),
            (saturated.as_str(), &figures.saturated),
        ]
        .into_iter(),
        figures,
    );

    let _ = writeln!(out, "\n## Memory after churn\n");
    if let Some(traced) = &figures.churned.traced {
        let _ = writeln!(
            out,
            "leaktrace on all processes while {} connections ({} sockets) were churned in {:.0}s \
             ({:.0} connections/s, paced at 100k transitions/s as above): RSS {:.1} MiB at the end, peak (VmHWM) {:.1} MiB; {} records, \
             {} lost.",
            figures.churned.churned.connections,
            figures.churned.churned.connections * 2,
            figures.churned.churned.elapsed.as_secs_f64(),
            figures.churned.churned.per_second(),
            mib(traced.memory.rss_kib),
            mib(traced.memory.peak_kib),
            traced.records,
            traced.lost
        );
    }
    if let Some(idle) = figures
        .phases(Workload::Churn, Tracing::Pid)
        .find_map(|p| p.traced.as_ref())
    {
        let _ = writeln!(
            out,
            "\nFor scale: leaktrace with `--pid` of an idle process, which gets no records, holds \
             {:.1} MiB (peak {:.1} MiB, while it loads the kernel's BTF and attaches).",
            mib(idle.memory.rss_kib),
            mib(idle.memory.peak_kib)
        );
    }

    let _ = writeln!(out, "\n## `ss -tanp`, what users poll today\n");
    match &figures.ss {
        None => {
            let _ = writeln!(
                out,
                "Not measured: `ss` (iproute2) is not installed on this machine."
            );
        }
        Some(costs) => {
            let _ = writeln!(
                out,
                "Loopback connections held open by helper processes (both ends count), then \
                 `ss -tanp` run 5 times with its output read; the median run.\n"
            );
            let _ = writeln!(
                out,
                "| open sockets | lines listed | wall | CPU (user + system) | polling once a second |\n|---|---|---|---|---|"
            );
            for cost in costs {
                let polling = if cost.wall < Duration::from_secs(1) {
                    format!("{:.1}% of a core", cost.cpu.as_secs_f64() * 100.0)
                } else {
                    "impossible: one run takes longer".to_owned()
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} ms | {:.0} ms | {polling} |",
                    cost.sockets,
                    cost.lines,
                    cost.wall.as_secs_f64() * 1000.0,
                    cost.cpu.as_secs_f64() * 1000.0,
                );
            }
            let all_share = median(
                figures
                    .phases(Workload::Churn, Tracing::All)
                    .filter_map(|p| p.traced.as_ref().map(|t| t.core_share()))
                    .collect(),
            );
            let _ = writeln!(
                out,
                "\nFor comparison, leaktrace following the churn above (every connection of the \
                 machine, none missed between polls) used {:.1}% of a core (median). A poll sees \
                 only the sockets present at that instant: a CLOSE_WAIT is caught, but not who \
                 caused it or how.",
                all_share * 100.0
            );
        }
    }
    out
}

fn phase_table<'a>(
    out: &mut String,
    phases: impl Iterator<Item = (&'a str, &'a Phase)>,
    figures: &Figures,
) {
    let mut phases = phases.peekable();
    let workload = phases.peek().map_or(Workload::Churn, |(_, p)| p.workload);
    let baseline = figures.median_rate(workload, Tracing::None);
    let _ = writeln!(
        out,
        "| phase | connections/s | vs untraced median | records/s | lost | leaktrace CPU | share of a core | RSS / peak |\n|---|---|---|---|---|---|---|---|"
    );
    for (label, phase) in phases {
        let rate = phase.churned.per_second();
        let traced = match &phase.traced {
            None => "| - | - | - | - | - |".to_owned(),
            Some(t) => format!(
                "| {:.0} | {} | {:.2}s | {:.1}% | {:.1} / {:.1} MiB |",
                t.records_per_second(),
                t.lost,
                t.cpu.as_secs_f64(),
                t.core_share() * 100.0,
                mib(t.memory.rss_kib),
                mib(t.memory.peak_kib)
            ),
        };
        let ratio = if phase.paced {
            "paced".to_owned()
        } else {
            format!("{:.3}x", rate / baseline)
        };
        let _ = writeln!(out, "| {label} | {rate:.0} | {ratio} {traced}");
    }
}

pub fn soak(machine: &Machine, soak: &Soak) -> String {
    let mut out = String::new();
    let verdict = |ok: bool| if ok { "PASS" } else { "**FAIL**" };
    let _ = writeln!(
        out,
        "{SOAK_HEADING}\n\n`{SOAK_COMMAND}` is the soak of record (the issue's 30 minutes); \
         this run: `--soak {}`. leaktrace on all processes with `--json` and its defaults \
         (`--leak-after 5s`), churn at {:.0} connections/s, and a planted `close_wait` leak \
         (a fixture server that reads a client's request to end-of-stream and never closes) \
         every {}s.\n",
        humantime::format_duration(soak.duration),
        soak.pace,
        soak.plant_every.as_secs()
    );
    machine_table(&mut out, machine, Some(&soak.start));
    let _ = writeln!(out, "\n| check | result | verdict |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| RSS flat | {:.1} MiB (first third after {}s warm-up) -> {:.1} MiB (last third); slope {:+.1} KiB/min | {} |",
        soak.first_third_kib / 1024.0,
        soak.warmup.as_secs(),
        soak.last_third_kib / 1024.0,
        soak.slope_kib_per_min,
        verdict(soak.flat())
    );
    let _ = writeln!(
        out,
        "| planted leaks reported (pid {}, right fd) | {} of {} | {} |",
        soak.fixture_pid,
        soak.planted.len() - soak.missing.len(),
        soak.planted.len(),
        verdict(soak.missing.is_empty())
    );
    let _ = writeln!(
        out,
        "| other findings about the bench's processes | {} | {} |",
        soak.unexpected.len(),
        verdict(soak.unexpected.is_empty())
    );
    let _ = writeln!(
        out,
        "| lost events | {} of {} records | {} |",
        soak.lost,
        soak.records,
        verdict(soak.lost == 0)
    );
    let _ = writeln!(
        out,
        "\n{} connections churned in {:.0}s. Findings about other processes on the machine \
         (not judged): {}.",
        soak.churned.connections,
        soak.churned.elapsed.as_secs_f64(),
        soak.others
    );
    if soak.lost > 0 {
        let _ = writeln!(
            out,
            "\nEvents were lost (the ring buffer was full: a burst, or leaktrace starved of CPU \
             by the machine's other work). A socket whose close or destruction record was lost \
             looks held to leaktrace, so findings below may come from the loss."
        );
    }
    if !soak.missing.is_empty() {
        let _ = writeln!(out, "\nPlanted fds not reported: {:?}.", soak.missing);
    }
    for leak in &soak.unexpected {
        let _ = writeln!(out, "\nUnexpected finding: `{leak}`");
    }
    // About ten points across the run, enough to see a trend.
    let step = (soak.samples.len() / 10).max(1);
    let series: Vec<String> = soak
        .samples
        .iter()
        .step_by(step)
        .map(|(t, kib)| format!("{}s {:.1}", t.as_secs(), mib(*kib)))
        .collect();
    let _ = writeln!(out, "\nRSS (MiB) over the run: {}.", series.join(", "));
    out
}
