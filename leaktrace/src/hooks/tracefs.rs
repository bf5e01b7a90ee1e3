//! Classic tracepoints: tracefs must be mounted, and their record layouts differ between kernels,
//! so field offsets come from each event's `format` file.
use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use leaktrace_common::{TracepointOffsets, OFFSET_UNKNOWN};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

pub(super) struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted yet (aya looks
    /// for tracepoints there too).
    pub(super) fn open() -> Result<Self> {
        for root in [TRACEFS, DEBUGFS_TRACING] {
            if Path::new(root).join("events").is_dir() {
                return Ok(Self { root: root.into() });
            }
        }
        mount_tracefs()?;
        Ok(Self {
            root: TRACEFS.into(),
        })
    }

    pub(super) fn has_event(&self, category: &str, name: &str) -> bool {
        self.format_path(category, name).is_file()
    }

    fn format_path(&self, category: &str, name: &str) -> PathBuf {
        self.root
            .join("events")
            .join(category)
            .join(name)
            .join("format")
    }

    /// Offset of `field` in the record of `category:name`.
    pub(super) fn field_offset(&self, category: &str, name: &str, field: &str) -> Result<u32> {
        let path = self.format_path(category, name);
        let format =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        parse_field_offset(&format, field)
            .ok_or_else(|| anyhow!("tracepoint {category}:{name} has no field {field}"))
    }

    /// Offsets of the fields the programs read, for the events this kernel has (missing ones
    /// stay 0: their programs are not attached).
    pub(super) fn offsets(&self) -> Result<TracepointOffsets> {
        let optional = |category: &str, name: &str, field: &str| -> Result<u32> {
            if self.has_event(category, name) {
                self.field_offset(category, name, field)
            } else {
                Ok(0)
            }
        };
        Ok(TracepointOffsets {
            set_state_skaddr: optional("sock", "inet_sock_set_state", "skaddr")?,
            set_state_oldstate: optional("sock", "inet_sock_set_state", "oldstate")?,
            set_state_newstate: optional("sock", "inet_sock_set_state", "newstate")?,
            destroy_skaddr: self.field_offset("tcp", "tcp_destroy_sock", "skaddr")?,
            recv_length_sk: optional("sock", "sock_recv_length", "sk")?,
            recv_length_ret: optional("sock", "sock_recv_length", "ret")?,
            rcv_space_adjust_skaddr: optional("tcp", "tcp_rcv_space_adjust", "skaddr")?,
            data_ready_sk: optional("sock", "sk_data_ready", "skaddr")?,
            syscall_arg0: optional("syscalls", "sys_enter_getsockname", "fd")?,
            newtask_pid: optional("task", "task_newtask", "pid")?,
            newtask_clone_flags: optional("task", "task_newtask", "clone_flags")?,
            // Added in 6.x; before it the group leader's exit stands in for the process's.
            process_exit_group_dead: self
                .field_offset("sched", "sched_process_exit", "group_dead")
                .unwrap_or(OFFSET_UNKNOWN),
        })
    }
}

fn mount_tracefs() -> Result<()> {
    let target = CString::new(TRACEFS)?;
    let fstype = CString::new("tracefs")?;
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Finds `offset:N;` on the line declaring `field` (`field:<type> <field>[<n>];`).
fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        let name = declaration.rsplit(' ').next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::parse_field_offset;

    const FORMAT: &str = "name: inet_sock_set_state
ID: 1526
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
";

    #[test]
    fn finds_offsets_of_scalars_pointers_and_arrays() {
        assert_eq!(parse_field_offset(FORMAT, "skaddr"), Some(8));
        assert_eq!(parse_field_offset(FORMAT, "oldstate"), Some(16));
        assert_eq!(parse_field_offset(FORMAT, "saddr_v6"), Some(40));
        assert_eq!(parse_field_offset(FORMAT, "saddr"), None);
        assert_eq!(parse_field_offset(FORMAT, "common"), None);
    }
}
