//! The real-server workload: Debian's nginx (the test harness's, one worker), answering
//! ApacheBench on loopback with a new connection per request (`ab` without `-k`), the way a
//! busy front end meets clients that do not keep connections alive.
use std::{process::Command, process::Stdio, time::Duration};

use anyhow::{Context as _, Result};
use leaktrace_tests::nginx::Nginx;

/// Concurrent connections `ab` keeps going: enough to keep one worker busy on two cores.
const CONCURRENCY: usize = 20;

/// The Debian packages the workload needs, by the command each provides.
pub const PACKAGES: [(&str, &str); 2] = [("nginx", "nginx-light"), ("ab", "apache2-utils")];

/// Requests per second `ab` reached against `nginx` in `duration`, one new connection per
/// request.
pub fn load(nginx: &Nginx, duration: Duration) -> Result<f64> {
    let out = Command::new("ab")
        .args(["-q", "-r", "-c", &CONCURRENCY.to_string()])
        // -t resets the request count to 50000: the count comes after it.
        .args(["-t", &duration.as_secs().max(1).to_string()])
        .args(["-n", "100000000"])
        .arg(format!("http://127.0.0.1:{}/", nginx.port))
        .stdin(Stdio::null())
        .output()
        .context("running ab")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|line| {
            line.strip_prefix("Requests per second:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| {
            format!(
                "ab printed no rate ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}
