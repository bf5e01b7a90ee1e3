//! Services and containers as their users name them: `--cgroup` and `--unit` resolved to a
//! cgroup v2 directory, the processes in it, and the cgroup, container or unit a process belongs
//! to, for its findings.
use std::{
    collections::VecDeque,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
};

/// A cgroup v2 to trace.
#[derive(Clone, Debug)]
pub struct Cgroup {
    /// Its directory in the cgroup2 file system.
    pub dir: PathBuf,
    /// Its path as `/proc/PID/cgroup` spells it (`/system.slice/nginx.service`).
    pub path: String,
    /// The kernel's id for it: the directory's inode number.
    pub id: u64,
    /// How many levels below the root it sits (the root is 0).
    pub level: u32,
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on most distributions,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub(crate) fn root() -> Result<PathBuf, String> {
    let mounts = procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    mounts
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .ok_or_else(|| "no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)".to_owned())
}

/// The cgroup `arg` names: a directory of the cgroup2 file system, or a path relative to its root
/// (`system.slice/nginx.service`, or `/system.slice/nginx.service` as `/proc/PID/cgroup` says).
pub(crate) fn resolve(arg: &str) -> Result<Cgroup, String> {
    let root = root().map_err(|e| format!("cannot trace cgroup {arg}: {e}"))?;
    let given = Path::new(arg);
    let dir = if given.starts_with(&root) {
        given.to_path_buf()
    } else {
        root.join(arg.trim_start_matches('/'))
    };
    let not_found = || {
        format!(
            "no cgroup {arg}: neither a directory of the cgroup v2 hierarchy nor a path below its root {}",
            root.display()
        )
    };
    let dir = dir.canonicalize().map_err(|_| not_found())?;
    let relative = dir.strip_prefix(&root).map_err(|_| not_found())?;
    if !dir.join("cgroup.procs").exists() {
        return Err(not_found());
    }
    let id = fs::metadata(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .ino();
    let level = relative.components().count() as u32;
    Ok(Cgroup {
        path: format!("/{}", relative.display()),
        dir,
        id,
        level,
    })
}

/// The cgroup of systemd unit `name` (`nginx` stands for `nginx.service`): systemd's answer where
/// systemd runs, else the directory of that name in the cgroup tree.
pub(crate) fn unit(name: &str) -> Result<Cgroup, String> {
    let has_type = [".service", ".scope", ".slice", ".socket", ".mount", ".swap"]
        .iter()
        .any(|suffix| name.ends_with(suffix));
    let unit = if has_type {
        name.to_owned()
    } else {
        format!("{name}.service")
    };
    if Path::new("/run/systemd/system").exists() {
        let out = Command::new("systemctl")
            .args(["show", "--property", "ControlGroup", "--value", &unit])
            .output();
        if let Ok(out) = out {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && !path.is_empty() {
                return resolve(&path);
            }
        }
    }
    let root = root().map_err(|e| format!("cannot find unit {unit}: {e}"))?;
    find_dir(&root, &unit)
        .ok_or_else(|| {
            format!(
                "no systemd unit {unit}: systemd knows no running unit of that name, and no cgroup below {} is named so",
                root.display()
            )
        })
        .and_then(|dir| resolve(&dir.to_string_lossy()))
}

/// The first directory named `name` below `root`, nearest first.
fn find_dir(root: &Path, name: &str) -> Option<PathBuf> {
    let mut queue = VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name() == name {
                return Some(entry.path());
            }
            queue.push_back(entry.path());
        }
    }
    None
}

/// The processes in `cgroup` and the cgroups below it now.
pub(crate) fn processes(cgroup: &Cgroup) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut queue = VecDeque::from([cgroup.dir.clone()]);
    while let Some(dir) = queue.pop_front() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|line| line.parse::<u32>().ok()));
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(entry.path());
            }
        }
    }
    pids
}

/// The cgroup v2 path of process `pid` (`/system.slice/nginx.service`), if it still runs.
pub(crate) fn of_process(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// What a cgroup path says of who runs there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// A container's id (docker, containerd and CRI, CRI-O, podman), in full.
    pub container: Option<String>,
    /// The systemd unit, where the cgroup is not a container's.
    pub unit: Option<String>,
}

/// Reads the container or systemd unit out of a cgroup path: runtimes name a container's cgroup
/// after its 64-hex-digit id, systemd names a unit's cgroup after the unit.
pub(crate) fn names(path: &str) -> Names {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for component in components.iter().rev() {
        if let Some(id) = container_id(component) {
            return Names {
                container: Some(id.to_owned()),
                unit: None,
            };
        }
    }
    let unit = components
        .iter()
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(|c| (*c).to_owned());
    Names {
        container: None,
        unit,
    }
}

/// The container id in one path component: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope` (systemd's cgroup driver) or a bare `<id>` (cgroupfs'
/// `/docker/<id>`, `/kubepods/burstable/pod<uid>/<id>`). CRI-O's and podman's monitors
/// (`crio-conmon-<id>.scope`) are not the container.
fn container_id(component: &str) -> Option<&str> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3";

    #[test]
    fn container_runtimes_name_the_container() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods/burstable/pod0b1c/{ID}"),
            format!("/kubepods.slice/kubepods-pod9.slice/crio-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
        ] {
            assert_eq!(
                names(&path),
                Names {
                    container: Some(ID.to_owned()),
                    unit: None
                },
                "{path}"
            );
        }
    }

    #[test]
    fn a_service_names_its_unit() {
        assert_eq!(
            names("/system.slice/nginx.service"),
            Names {
                container: None,
                unit: Some("nginx.service".into())
            }
        );
        assert_eq!(
            names("/user.slice/user-1000.slice/session-3.scope"),
            Names {
                container: None,
                unit: Some("session-3.scope".into())
            }
        );
        assert_eq!(names("/"), Names::default());
        // A conmon monitor is not the container, nor is a short hex name one.
        assert_eq!(
            names(&format!("/machine.slice/crio-conmon-{ID}.scope")).container,
            None
        );
        assert_eq!(names("/docker/abc123").container, None);
    }
}
