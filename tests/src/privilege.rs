//! Skipping and privilege: a privileged test that cannot run here says why, and fails where it
//! must run.

use std::io::{self, Write};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// In CI, or when asked, a privileged test that cannot run is a failure rather than a skip:
/// otherwise a broken setup would pass by testing nothing.
fn privileged_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("LEAKTRACE_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1")
}

/// Says why a privileged test cannot run here, or fails it where it must run (CI).
pub fn skip(test: &str, reason: &str) {
    if privileged_required() {
        panic!("{test} must run here (CI=true or LEAKTRACE_REQUIRE_PRIVILEGED=1): {reason}");
    }
    // Straight to the stderr handle: libtest captures eprintln! of passing tests, and a skip
    // that nobody sees looks like a pass. One write, so parallel tests don't interleave lines.
    let _ = io::stderr().write_all(format!("SKIPPED {test}: {reason}\n").as_bytes());
}
