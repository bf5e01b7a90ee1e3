//! What the kernel side hands the session, and what the session tells it: the records' ring
//! buffer, the counts of records lost and of what the programs could not do, and the map of
//! traced processes. The one place that knows these maps by name.
use anyhow::{anyhow, Context as _};
use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    Ebpf,
};
use leaktrace_common::ProbeFailure;
use tokio::io::unix::AsyncFd;

use super::{Attached, LoadError};

/// Records and counters, taken out of the loaded object once hooks are attached.
pub(crate) struct Channel {
    /// Registered with the async runtime, which wakes the session when records wait.
    records: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    probe_failures: PerCpuArray<MapData, u64>,
}

impl Channel {
    /// Takes the maps out of `ebpf`; called from within the async runtime.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        let records = RingBuf::try_from(take(ebpf, "RECORDS")?).map_err(other)?;
        // SAFETY: the ring buffer owns its map fd; the AsyncFd owns the ring buffer, so the fd
        // stays open and unchanged for the AsyncFd's whole life.
        let records = unsafe { AsyncFd::register(records) }
            .map_err(|e| LoadError::Other(anyhow!("polling the ring buffer: {e}")))?;
        Ok(Self {
            records,
            lost: PerCpuArray::try_from(take(ebpf, "LOST")?).map_err(other)?,
            probe_failures: PerCpuArray::try_from(take(ebpf, "PROBE_FAILURES")?).map_err(other)?,
        })
    }

    /// The ring buffer, to read what waits in it.
    pub(crate) fn records(&mut self) -> &mut RingBuf<MapData> {
        self.records.get_mut()
    }

    /// Resolves when records wait; the caller clears the readiness before reading.
    pub(crate) async fn readable(
        &mut self,
    ) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
        self.records.readable_mut().await
    }

    /// Records lost to a full ring buffer so far, over every CPU.
    pub(crate) fn lost(&self) -> anyhow::Result<u64> {
        let per_cpu = self
            .lost
            .get(&0, 0)
            .context("reading the lost-events counter")?;
        Ok(per_cpu.iter().sum())
    }

    /// What the programs could not do so far, by `ProbeFailure`, over every CPU.
    pub(crate) fn probe_failures(&self) -> anyhow::Result<[u64; ProbeFailure::COUNT as usize]> {
        let mut counts = [0; ProbeFailure::COUNT as usize];
        for (index, count) in counts.iter_mut().enumerate() {
            *count = self
                .probe_failures
                .get(&(index as u32), 0)
                .context("reading the probe failure counters")?
                .iter()
                .sum();
        }
        Ok(counts)
    }
}

/// The kernel's map of traced processes (`--pid`, their children, `run`'s command).
pub(crate) struct Targets<'a>(HashMap<&'a mut MapData, u32, u8>);

/// What [`Targets::add`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tracing {
    /// Traced from now on.
    Started,
    /// Already traced: the kernel's fork hook added it, its parent being traced.
    Already,
    /// The map is full (`--max-processes`).
    NoRoom,
}

impl Targets<'_> {
    pub(crate) fn add(&mut self, pid: u32) -> anyhow::Result<Tracing> {
        if self.0.get(&pid, 0).is_ok() {
            return Ok(Tracing::Already);
        }
        match self.0.insert(pid, 1, 0) {
            Ok(()) => Ok(Tracing::Started),
            Err(MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(libc::E2BIG) =>
            {
                Ok(Tracing::NoRoom)
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("tracing pid {pid}"))),
        }
    }

    /// Traces `pid`; a full map is an error here, as the caller named it.
    pub(crate) fn insert(&mut self, pid: u32) -> anyhow::Result<()> {
        self.0
            .insert(pid, 1, 0)
            .with_context(|| format!("tracing pid {pid}"))
    }

    pub(crate) fn remove(&mut self, pid: u32) -> anyhow::Result<()> {
        self.0
            .remove(&pid)
            .with_context(|| format!("untracing pid {pid}"))
    }
}

impl Attached {
    pub(crate) fn targets(&mut self) -> Result<Targets<'_>, LoadError> {
        let map = self
            .ebpf
            .map_mut("TARGETS")
            .ok_or_else(|| LoadError::Other(anyhow!("TARGETS map missing")))?;
        Ok(Targets(HashMap::try_from(map).map_err(other)?))
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name)
        .ok_or_else(|| LoadError::Other(anyhow!("{name} map missing")))
}

fn other(e: MapError) -> LoadError {
    LoadError::Other(e.into())
}
