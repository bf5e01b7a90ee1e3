//! Which hook costs what: the kernel's own accounting of each eBPF program's runs
//! (`BPF_ENABLE_STATS`), read for leaktrace's programs around a stretch of churn. The accounting
//! itself costs every program run (tens of nanoseconds here), so this runs apart from the phases
//! whose throughput is compared, and leaktrace's programs are set beside the floor's (the same
//! hooks returning at once), which pay the same accounting.
use std::{collections::BTreeMap, fs, time::Duration};

use anyhow::{Context as _, Result};

/// One program's runs over the stretch.
#[derive(Clone, Debug)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub time: Duration,
}

/// Turns the kernel's run-time accounting on for as long as it is held.
pub struct Accounting(
    #[expect(dead_code, reason = "held for its effect: the fd keeps stats on")]
    std::os::fd::OwnedFd,
);

impl Accounting {
    pub fn enable() -> Result<Accounting> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map(Accounting)
            .context("enabling the kernel's eBPF run-time accounting (BPF_ENABLE_STATS)")
    }
}

/// The accumulated runs and run time of each program `pid` holds, by program id.
pub fn snapshot(pid: u32) -> Result<BTreeMap<u32, ProgramCost>> {
    let ids = program_ids(pid)?;
    let mut costs = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing the kernel's eBPF programs")?;
        if ids.contains(&info.id()) {
            costs.insert(
                info.id(),
                ProgramCost {
                    name: info.name_as_str().unwrap_or("?").to_owned(),
                    runs: info.run_count(),
                    time: info.run_time(),
                },
            );
        }
    }
    Ok(costs)
}

/// What ran between two snapshots, programs that did not run left out.
pub fn between(
    before: &BTreeMap<u32, ProgramCost>,
    after: &BTreeMap<u32, ProgramCost>,
) -> Vec<ProgramCost> {
    after
        .iter()
        .filter_map(|(id, cost)| {
            let earlier = before.get(id)?;
            let runs = cost.runs.saturating_sub(earlier.runs);
            (runs > 0).then(|| ProgramCost {
                name: cost.name.clone(),
                runs,
                time: cost.time.saturating_sub(earlier.time),
            })
        })
        .collect()
}

/// The ids of the eBPF programs whose fds `pid` holds (`prog_id:` in /proc/PID/fdinfo).
fn program_ids(pid: u32) -> Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        ids.extend(
            text.lines()
                .find_map(|line| line.strip_prefix("prog_id:")?.trim().parse::<u32>().ok()),
        );
    }
    Ok(ids)
}
