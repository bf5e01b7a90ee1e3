//! What users do today instead of leaktrace: poll `ss -tanp` and look for CLOSE_WAIT. Its cost
//! grows with the sockets on the machine (and `-p` walks every process's fds), so it is timed
//! with 10k and 100k open sockets held by helper processes.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use super::tracer::cpu_time;

/// Timed runs of `ss -tanp` per socket count; the median is reported.
const RUNS: usize = 5;
/// TIME_WAIT sockets (of an earlier run's churn, say) are listed by `ss` too; they last 60s.
const TIME_WAIT_DRAIN: Duration = Duration::from_secs(70);
const TIME_WAIT_FEW: u64 = 1000;
/// A holder's fds besides its connections' (stdio, listener, the std runtime's).
const SPARE_FDS: u64 = 32;
/// What the bench tells a holder to do, as a hidden xtask task.
pub const HOLDER_TASK: &str = "bench-holder";

pub struct SsCost {
    pub sockets: usize,
    /// What `ss` listed (at least `sockets`: the machine has others).
    pub lines: usize,
    pub wall: Duration,
    /// User + system CPU time of one run.
    pub cpu: Duration,
}

/// `ss -V` runs: iproute2 is installed.
pub fn available() -> bool {
    Command::new("ss")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// For each count of `sockets`, in increasing order: opens that many loopback sockets (half of
/// them connections' client ends, half server ends) in helper processes, then times
/// `ss -tanp`. The holders of one count stay for the next, so no TIME_WAIT of ours is listed.
pub fn measure(sockets: &[usize]) -> Result<Vec<SsCost>> {
    let waited = Instant::now();
    if time_wait_sockets()? > TIME_WAIT_FEW {
        eprintln!(
            "xtask: bench: waiting (at most {}s) for the TIME_WAIT sockets of earlier churn to expire",
            TIME_WAIT_DRAIN.as_secs()
        );
    }
    while time_wait_sockets()? > TIME_WAIT_FEW && waited.elapsed() < TIME_WAIT_DRAIN {
        thread::sleep(Duration::from_secs(1));
    }
    // RLIMIT_NOFILE's hard limit caps one process (here 20000, and raising it needs
    // CAP_SYS_RESOURCE): several holders share the sockets.
    let hard = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
    let per_holder = usize::try_from(hard.saturating_sub(SPARE_FDS) / 2)?;
    ensure!(
        per_holder > 0,
        "RLIMIT_NOFILE's hard limit ({hard}) leaves no room for connections"
    );
    let mut holders = Vec::new();
    let mut held = 0;
    let mut costs = Vec::new();
    for &count in sockets {
        eprintln!("xtask: bench: ss -tanp with {count} open sockets");
        let mut added = Vec::new();
        while held < count / 2 {
            let n = (count / 2 - held).min(per_holder);
            added.push(Holder::spawn(n)?);
            held += n;
        }
        for holder in &mut added {
            holder.ready()?;
        }
        holders.extend(added);
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            runs.push(time_ss()?);
        }
        runs.sort_by_key(|run| run.wall);
        let median = runs.swap_remove(RUNS / 2);
        ensure!(
            median.lines >= count,
            "ss -tanp listed {} sockets, fewer than the {count} held open",
            median.lines
        );
        costs.push(SsCost {
            sockets: count,
            ..median
        });
    }
    Ok(costs)
}

/// The `tw` count of /proc/net/sockstat.
fn time_wait_sockets() -> Result<u64> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat")?;
    let count = sockstat
        .lines()
        .find_map(|line| line.strip_prefix("TCP: "))
        .and_then(|tcp| {
            let words: Vec<&str> = tcp.split_whitespace().collect();
            words
                .chunks(2)
                .find(|pair| pair[0] == "tw")
                .and_then(|pair| pair.get(1)?.parse().ok())
        });
    count.context("no TCP tw count in /proc/net/sockstat")
}

fn time_ss() -> Result<SsCost> {
    let started = Instant::now();
    let mut child = Command::new("ss")
        .arg("-tanp")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting ss")?;
    // Parsed as a poller would: every line read.
    let mut text = String::new();
    child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_string(&mut text)?;
    // A child that has exited but is not reaped yet keeps its CPU times in /proc.
    let cpu = loop {
        let stat = procfs::process::Process::new(i32::try_from(child.id())?)?.stat()?;
        if stat.state == 'Z' {
            break cpu_time(child.id())?;
        }
        thread::sleep(Duration::from_millis(1));
    };
    let wall = started.elapsed();
    let status = child.wait()?;
    ensure!(status.success(), "ss -tanp exited with {status}");
    Ok(SsCost {
        sockets: 0,
        // Less its header line.
        lines: text.lines().count().saturating_sub(1),
        wall,
        cpu,
    })
}

/// A helper process holding connections open until its stdin closes.
struct Holder {
    child: Child,
}

impl Holder {
    fn spawn(connections: usize) -> Result<Holder> {
        let child = Command::new(std::env::current_exe()?)
            .args([HOLDER_TASK, &connections.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a socket holder")?;
        Ok(Holder { child })
    }

    fn ready(&mut self) -> Result<()> {
        let mut line = String::new();
        let stdout = self.child.stdout.as_mut().expect("stdout is piped");
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "READY" {
            bail!("a socket holder failed (its error is above)");
        }
        Ok(())
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Closing its stdin ends it, and its connections with it.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The holder's side: `connections` loopback connections to its own listener, both ends held,
/// until stdin closes.
pub fn hold(connections: usize) -> Result<()> {
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .context("raising RLIMIT_NOFILE to its hard limit")?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let mut held = Vec::with_capacity(connections * 2);
    for _ in 0..connections {
        held.push(TcpStream::connect(addr).context("connect")?);
        held.push(listener.accept().context("accept")?.0);
    }
    println!("READY");
    // Blocks until the bench closes our stdin (or exits).
    std::io::stdin().read_to_end(&mut Vec::new())?;
    drop(held);
    Ok(())
}
