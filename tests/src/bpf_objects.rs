//! The BPF objects a process holds, and whether the kernel freed them after it exited.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

/// A kind of BPF object, as `/proc/<pid>/fdinfo` names its id and as `bpf(2)` looks it up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BpfKind {
    Prog,
    Map,
    Link,
}

impl BpfKind {
    const ALL: [BpfKind; 3] = [BpfKind::Prog, BpfKind::Map, BpfKind::Link];

    fn fdinfo_key(self) -> &'static str {
        match self {
            BpfKind::Prog => "prog_id:",
            BpfKind::Map => "map_id:",
            BpfKind::Link => "link_id:",
        }
    }

    /// `BPF_{PROG,MAP,LINK}_GET_FD_BY_ID` of uapi/linux/bpf.h.
    fn get_fd_by_id(self) -> libc::c_long {
        match self {
            BpfKind::Prog => 13,
            BpfKind::Map => 14,
            BpfKind::Link => 30,
        }
    }
}

/// `BPF_OBJ_GET` of uapi/linux/bpf.h: opens a pinned object.
const BPF_OBJ_GET: libc::c_long = 7;

/// The BPF objects one process holds: ids the kernel never reuses soon, so unlike names they
/// tell one leaktrace's programs from those of the leaktraces other tests run at the same time.
#[derive(Debug)]
pub struct BpfObjects {
    pid: u32,
    ids: BTreeSet<(BpfKind, u32)>,
}

/// The kernel frees BPF objects after an RCU grace period and from work queues, not at close.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

impl BpfObjects {
    /// The programs, maps and links behind the fds `pid` holds now. A link's fdinfo also names
    /// its program.
    pub fn held_by(pid: u32) -> Result<BpfObjects> {
        let dir = format!("/proc/{pid}/fdinfo");
        let mut ids = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
            // An fd closed since the listing has no fdinfo any more, and held nothing that stays.
            let Ok(info) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            ids.extend(fdinfo_ids(&info));
        }
        let objects = BpfObjects { pid, ids };
        ensure!(
            [BpfKind::Prog, BpfKind::Map]
                .iter()
                .all(|kind| objects.ids.iter().any(|(k, _)| k == kind)),
            "pid {pid} holds no BPF program or no map: {objects:?}"
        );
        Ok(objects)
    }

    /// Waits until the kernel has freed every object, now that their holder has exited.
    pub fn wait_released(&self) -> Result<()> {
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        loop {
            let mut alive = Vec::new();
            for &(kind, id) in &self.ids {
                if bpf_object_exists(kind, id)? {
                    alive.push((kind, id));
                }
            }
            if alive.is_empty() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{RELEASE_TIMEOUT:?} after pid {} exited, the kernel still has its BPF objects {alive:?}",
                self.pid
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails if any of these objects is pinned in the BPF filesystem under `root`, where it
    /// would outlive its process.
    pub fn check_not_pinned(&self, root: &Path) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(root) else {
            // Not mounted, or no such directory: nothing can be pinned there.
            return Ok(());
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                self.check_not_pinned(&path)?;
                continue;
            }
            let Some(fd) = bpf_obj_get(&path)? else {
                continue;
            };
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
            let pinned: BTreeSet<_> = fdinfo_ids(&info).collect();
            ensure!(
                pinned.is_disjoint(&self.ids),
                "{} pins BPF objects {pinned:?} of pid {}",
                path.display(),
                self.pid
            );
        }
        Ok(())
    }
}

fn fdinfo_ids(info: &str) -> impl Iterator<Item = (BpfKind, u32)> + '_ {
    info.lines().filter_map(|line| {
        BpfKind::ALL.into_iter().find_map(|kind| {
            let id = line.strip_prefix(kind.fdinfo_key())?.trim().parse().ok()?;
            Some((kind, id))
        })
    })
}

/// Whether the kernel still has BPF object `id` of `kind`, asked with `bpf(2)` directly: the
/// tests do not link aya.
fn bpf_object_exists(kind: BpfKind, id: u32) -> Result<bool> {
    // The leading fields of `union bpf_attr` for the GET_FD_BY_ID commands.
    #[repr(C)]
    struct GetFdById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let attr = GetFdById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: the kernel reads `size_of::<GetFdById>()` bytes of `attr`, which all exist.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            kind.get_fd_by_id(),
            &raw const attr,
            std::mem::size_of::<GetFdById>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(RawFd::try_from(fd)?) });
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    ensure!(
        e.raw_os_error() == Some(libc::ENOENT),
        "bpf GET_FD_BY_ID for {kind:?} {id}: {e}"
    );
    Ok(false)
}

/// Opens the object pinned at `path`; `None` when `path` is not a BPF object.
fn bpf_obj_get(path: &Path) -> Result<Option<OwnedFd>> {
    // The leading fields of `union bpf_attr` for BPF_OBJ_GET.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: the kernel reads `attr` and the NUL-terminated path it points to, both alive.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const attr,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Ok(None);
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(RawFd::try_from(fd)?) }))
}
