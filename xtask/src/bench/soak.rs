//! `cargo xtask bench --soak DURATION`: leaktrace on all processes for the whole duration,
//! under continuous churn, with a leak planted at intervals. It passes when leaktrace's RSS
//! stays flat, every planted leak is reported with its pid and fd, and the churn yields no
//! finding.
use std::{
    io::Write as _,
    net::{Ipv4Addr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use leaktrace_tests::Fixture;
use serde_json::Value;

use super::{
    churn::{self, Churned, Load, Until},
    tracer::Tracer,
};

/// A steady load rather than the machine's maximum: the soak is about time, not rate, and
/// leaves the shared cores to others for its half hour.
const PACE: f64 = 1000.0;
const WORKERS: usize = 2;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// At most this long between planted leaks.
const PLANT_EVERY: Duration = Duration::from_secs(60);
/// The last leak is planted at least this long before the end: leaktrace's default
/// `--leak-after` (5s) and some slack to report it.
const LAST_PLANT_MARGIN: Duration = Duration::from_secs(15);
/// RSS counts as flat if the last third of the samples after warm-up averages at most this
/// much above the first third (or 5%, when that is more): page-sized allocator noise, not a
/// growth with the connections churned.
const FLAT_TOLERANCE_KIB: f64 = 1024.0;
const FLAT_TOLERANCE_SHARE: f64 = 0.05;

pub struct Soak {
    pub duration: Duration,
    pub churned: Churned,
    pub pace: f64,
    pub plant_every: Duration,
    /// leaktrace's start record, for its hooks.
    pub start: Value,
    /// leaktrace's RSS in KiB, every [`SAMPLE_EVERY`] from its start.
    pub samples: Vec<(Duration, u64)>,
    pub warmup: Duration,
    pub first_third_kib: f64,
    pub last_third_kib: f64,
    pub slope_kib_per_min: f64,
    pub fixture_pid: u32,
    /// The fd of each planted leak.
    pub planted: Vec<i64>,
    /// Planted leaks leaktrace did not report.
    pub missing: Vec<i64>,
    /// Findings about the bench's own processes that are not planted leaks.
    pub unexpected: Vec<Value>,
    /// Findings about other processes on the machine, which the bench does not judge.
    pub others: usize,
    pub records: u64,
    pub lost: u64,
}

impl Soak {
    pub fn flat(&self) -> bool {
        let tolerance = FLAT_TOLERANCE_KIB.max(self.first_third_kib * FLAT_TOLERANCE_SHARE);
        self.last_third_kib - self.first_third_kib <= tolerance
    }

    pub fn passed(&self) -> bool {
        self.flat() && self.missing.is_empty() && self.unexpected.is_empty() && self.lost == 0
    }
}

pub fn run(binary: &Path, fixture: &Path, duration: Duration) -> Result<Soak> {
    let plant_every = PLANT_EVERY.min(duration / 5);
    let last_plant = duration.saturating_sub(LAST_PLANT_MARGIN);
    let plants = (1..)
        .map(|k| plant_every * k)
        .take_while(|at| *at <= last_plant)
        .count();
    eprintln!(
        "xtask: bench: soak for {}: churn at {PACE} connections/s, a leak planted every {}s ({plants} in all)",
        humantime::format_duration(duration),
        plant_every.as_secs()
    );
    let tracer = Tracer::start(binary, &[])?;
    let fixture_path = fixture
        .to_str()
        .context("the fixture's path is not UTF-8")?;
    let mut server = Fixture::server(
        fixture_path,
        &["close-wait-server", "--conns", &plants.max(1).to_string()],
    )?;
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut planted = Vec::new();
    let churned = thread::scope(|s| {
        let churn = s.spawn(|| {
            churn::run(&Load {
                workers: WORKERS,
                until: Until::Stopped(&stop),
                pace: Some(PACE),
            })
        });
        let watched = (|| -> Result<()> {
            let mut next_sample = Duration::ZERO;
            let mut next_plant = plant_every;
            while started.elapsed() < duration {
                if started.elapsed() >= next_sample {
                    samples.push((started.elapsed(), tracer.memory()?.rss_kib));
                    next_sample += SAMPLE_EVERY;
                }
                if planted.len() < plants && started.elapsed() >= next_plant {
                    planted.push(plant(&mut server, planted.len())?);
                    eprintln!(
                        "xtask: bench: soak {}s: planted leak {}/{plants}, RSS {} KiB",
                        started.elapsed().as_secs(),
                        planted.len(),
                        samples.last().map_or(0, |s| s.1)
                    );
                    next_plant += plant_every;
                }
                thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let churned = churn.join().expect("churn panicked");
        watched.and(churned)
    })?;
    let finished = tracer.stop()?;
    let fixture_pid = u64::from(server.pid());
    let own_pid = u64::from(std::process::id());
    let is_planted = |leak: &Value| {
        leak["kind"] == "close_wait"
            && leak["pid"] == fixture_pid
            && planted.iter().any(|fd| leak["fd"] == *fd)
    };
    let missing = planted
        .iter()
        .copied()
        .filter(|fd| {
            !finished
                .leaks
                .iter()
                .any(|leak| is_planted(leak) && leak["fd"] == *fd)
        })
        .collect();
    let (ours, others): (Vec<&Value>, Vec<&Value>) = finished
        .leaks
        .iter()
        .partition(|leak| leak["pid"] == fixture_pid || leak["pid"] == own_pid);
    let unexpected = ours
        .into_iter()
        .filter(|leak| !is_planted(leak))
        .cloned()
        .collect();
    let warmup = duration / 6;
    let (first_third_kib, last_third_kib, slope_kib_per_min) = trend(&samples, warmup);
    Ok(Soak {
        duration,
        churned,
        pace: PACE,
        plant_every,
        start: finished.start.clone(),
        samples,
        warmup,
        first_third_kib,
        last_third_kib,
        slope_kib_per_min,
        fixture_pid: server.pid(),
        planted,
        missing,
        unexpected,
        others: others.len(),
        records: finished.count("records"),
        lost: finished.count("lost_events"),
    })
}

/// A client that sends a line and closes; the fixture reads to end-of-stream and never closes
/// its side: CLOSE_WAIT, held by the fixture's fd, which this returns.
fn plant(server: &mut Fixture, before: usize) -> Result<i64> {
    let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, server.port()))
        .context("connecting to the leaky server")?;
    client.write_all(b"QUIT\r\n")?;
    drop(client);
    let accepted = server.accepted(before + 1)?;
    Ok(accepted[before].fd)
}

/// The RSS samples after warm-up: the first third's and the last third's averages (KiB), and
/// the least-squares slope (KiB per minute).
fn trend(samples: &[(Duration, u64)], warmup: Duration) -> (f64, f64, f64) {
    let settled: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= warmup)
        .map(|&(t, kib)| (t.as_secs_f64() / 60.0, kib as f64))
        .collect();
    let third = (settled.len() / 3).max(1);
    let average = |part: &[(f64, f64)]| part.iter().map(|s| s.1).sum::<f64>() / part.len() as f64;
    if settled.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let first = average(&settled[..third.min(settled.len())]);
    let last = average(&settled[settled.len().saturating_sub(third)..]);
    let n = settled.len() as f64;
    let mean_t = settled.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_kib = settled.iter().map(|s| s.1).sum::<f64>() / n;
    let covariance: f64 = settled
        .iter()
        .map(|(t, kib)| (t - mean_t) * (kib - mean_kib))
        .sum();
    let variance: f64 = settled.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    let slope = if variance > 0.0 {
        covariance / variance
    } else {
        0.0
    };
    (first, last, slope)
}
