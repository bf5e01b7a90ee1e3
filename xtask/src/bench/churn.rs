//! The load: short TCP connections on loopback, as a busy service makes them. Each worker
//! thread has its own listener and, per connection, connects, accepts, writes a few bytes, reads
//! them on the other end and closes both ends (the client first, so its side goes through
//! TIME_WAIT, as a client's does). One thread drives both ends: nothing but the kernel's TCP
//! work and whatever tracing adds to it sits between two connections.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// The small write of each connection.
const PAYLOAD: &[u8] = b"ping";

/// Transitions `inet_sock_set_state` reports per connection: the client goes CLOSE, SYN_SENT,
/// ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE (its TIME_WAIT is a separate timewait socket), the
/// server's socket LISTEN (as a request), SYN_RECV, ESTABLISHED, CLOSE_WAIT, LAST_ACK, CLOSE.
pub const TRANSITIONS_PER_CONNECTION: u64 = 10;

/// How far behind its pace a worker may fall and still make up for it.
const CATCH_UP: Duration = Duration::from_millis(50);

/// When the workers stop.
pub enum Until<'a> {
    Elapsed(Duration),
    /// This many connections in all.
    Connections(u64),
    /// The flag is set (the soak's end).
    Stopped(&'a AtomicBool),
}

pub struct Load<'a> {
    pub workers: usize,
    pub until: Until<'a>,
    /// At most this many connections per second in all; `None`: as fast as the machine goes.
    pub pace: Option<f64>,
}

/// What a churn run did.
#[derive(Clone, Copy)]
pub struct Churned {
    pub connections: u64,
    pub elapsed: Duration,
}

impl Churned {
    pub fn per_second(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64()
    }
}

pub fn run(load: &Load) -> Result<Churned> {
    let listeners: Vec<TcpListener> = (0..load.workers)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<_, _>>()
        .context("binding the churn listeners")?;
    let done = AtomicU64::new(0);
    let started = Instant::now();
    thread::scope(|s| {
        let workers: Vec<_> = listeners
            .iter()
            .map(|listener| s.spawn(|| worker(load, listener, &done, started)))
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("churn worker panicked"))
    })?;
    Ok(Churned {
        connections: done.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

fn worker(load: &Load, listener: &TcpListener, done: &AtomicU64, started: Instant) -> Result<()> {
    let addr = listener.local_addr()?;
    // Each worker keeps its share of the pace on its own clock.
    let interval = load
        .pace
        .map(|pace| Duration::from_secs_f64(load.workers as f64 / pace));
    let mut next = started;
    let mut buf = [0; PAYLOAD.len()];
    loop {
        let stop = match load.until {
            Until::Elapsed(limit) => started.elapsed() >= limit,
            // Workers may overshoot by one connection each: the count says how many were made.
            Until::Connections(total) => done.load(Ordering::Relaxed) >= total,
            Until::Stopped(flag) => flag.load(Ordering::Relaxed),
        };
        if stop {
            return Ok(());
        }
        if let Some(interval) = interval {
            // A worker held up (the cores are shared) makes up at most CATCH_UP of its lag: a
            // paced load must not turn into bursts at the machine's full speed.
            next = (next + interval).max(Instant::now() - CATCH_UP);
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let mut client = TcpStream::connect(addr).context("connect")?;
        let (mut server, _) = listener.accept().context("accept")?;
        client.write_all(PAYLOAD).context("write")?;
        server.read_exact(&mut buf).context("read")?;
        drop(client);
        drop(server);
        done.fetch_add(1, Ordering::Relaxed);
    }
}
