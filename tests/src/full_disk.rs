//! A disk that fills up under a file leaktrace writes (`--trace-out`): a tiny tmpfs of its own,
//! mounted for one test and unmounted when its handle drops, however the test ends.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::leaktrace::Leaktrace;
use crate::privilege::{is_root, skip};
use crate::report::Report;

/// The tmpfs's size: 16 pages.
const SIZE: &str = "size=64k";

/// The page by which tmpfs hands out room to a file.
const PAGE: usize = 4096;

/// A tmpfs of [`SIZE`] on a directory of its own.
pub struct FullDisk {
    dir: PathBuf,
}

impl FullDisk {
    /// Mounts the tmpfs for `test`. `None` means the test was skipped: mounting takes root.
    pub fn mount(test: &str) -> Result<Option<FullDisk>> {
        if !is_root() {
            skip(test, "mounting a tmpfs to fill up takes root");
            return Ok(None);
        }
        let dir = std::env::temp_dir().join(format!("{test}-{}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let target = CString::new(dir.as_os_str().as_bytes())?;
        let options = CString::new(SIZE)?;
        // SAFETY: NUL-terminated strings alive for the call; no flags.
        let mounted = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if mounted != 0 {
            let e = std::io::Error::last_os_error();
            let _ = fs::remove_dir(&dir);
            bail!("mount -t tmpfs -o {SIZE} tmpfs {}: {e}", dir.display());
        }
        Ok(Some(FullDisk { dir }))
    }

    /// A file `name` of one page, and the rest of the disk filled: a writer that truncates
    /// `name` (as `--trace-out` does) gets that page back, and past it its writes fail with
    /// ENOSPC, as on a full disk.
    pub fn fill_but(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        fs::write(&path, [b' '; PAGE])?;
        let mut filler = File::create(self.dir.join("filler"))?;
        loop {
            match filler.write(&[0; PAGE]) {
                Ok(0) => bail!("the filler wrote nothing"),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::StorageFull => return Ok(path),
                Err(e) => return Err(e).context("filling the tmpfs"),
            }
        }
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated string alive for the call. Detached: a process of a
            // failed test that still holds a file there does not keep the mount.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

impl Leaktrace {
    /// Stops the run with SIGTERM and returns its status with its whole report, whatever the
    /// status: a session whose export was dropped reports in full, then exits 8.
    pub fn stop_with_any_status(self, timeout: Duration) -> Result<(ExitStatus, Report)> {
        self.signal(libc::SIGTERM)?;
        let run = self.exited(timeout)?;
        Ok((run.status, Report::parse(&run.stdout, run.stderr)?))
    }
}
