//! What some kernels of the matrix lack that a test needs, learnt as a user would: from
//! leaktrace's own refusal. Where the kernel lacks it, the test checks that refusal (one clear
//! line, the hook-refused status) instead of what it cannot do, and says so on stderr: the
//! kernel's limit, not a setup that cannot trace, so it passes under CI=true too.
use std::io::{self, Write as _};

use anyhow::{ensure, Result};

use crate::{run_leaktrace, Leaktrace};

/// leaktrace's status when the kernel refuses what it needs (`--help`).
const HOOK_REFUSED: i32 = 7;

/// The helper `--cgroup` and `--unit` need in tracing programs, which 5.10 refuses them.
const CGROUP_HELPER: &str = "bpf_get_current_ancestor_cgroup_id";

/// Whether this kernel lets leaktrace trace a cgroup; if not, `test` is told why on stderr.
pub fn traces_cgroups(test: &str) -> Result<bool> {
    let run = run_leaktrace(&["--json", "--cgroup", "/", "--duration", "1s"])?;
    if !run.stderr.contains(CGROUP_HELPER) {
        return Ok(true);
    }
    let why = run.stderr.trim();
    ensure!(
        run.status.code() == Some(HOOK_REFUSED) && why.lines().count() == 1,
        "leaktrace --cgroup on a kernel without {CGROUP_HELPER}: one line and status \
         {HOOK_REFUSED}, got {}:\n{why}",
        run.status
    );
    note(
        test,
        &format!("this kernel cannot trace a cgroup, leaktrace says: {why}"),
    );
    Ok(false)
}

/// Whether `leaktrace` sees accepts as they happen (an accept hook: fexit or kretprobe on
/// `inet_csk_accept`), which pairing the sockets of a proxy busy with other clients needs; if
/// not, `test` is told why on stderr.
pub fn sees_accepts(test: &str, leaktrace: &Leaktrace) -> Result<bool> {
    let start = leaktrace.start_record()?;
    let accept = start["hooks"]["accept"].as_str().unwrap_or_default();
    if accept.contains("inet_csk_accept") {
        return Ok(true);
    }
    note(
        test,
        &format!(
            "leaktrace learns accepts here from {accept:?}, not as they happen, so it pairs a \
             busy proxy's sockets by their openings; the pairing is not checked"
        ),
    );
    Ok(false)
}

/// Says on stderr which check `test` leaves out on this kernel, and why.
pub fn note(test: &str, why: &str) {
    // Straight to the stderr handle, as `skip` does: libtest captures eprintln! of a pass.
    let _ = io::stderr().write_all(format!("NOTE {test}: {why}\n").as_bytes());
}
