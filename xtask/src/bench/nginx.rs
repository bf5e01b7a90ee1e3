//! The real-server workload: Debian's nginx, one worker, answering ApacheBench on loopback with
//! a new connection per request (`ab` without `-k`), the way a busy front end meets clients that
//! do not keep connections alive. Both install from Debian when missing.
use std::{
    fs,
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// Concurrent connections `ab` keeps going: enough to keep one worker busy on two cores.
const CONCURRENCY: usize = 20;
/// How long nginx may take to listen.
const START_LIMIT: Duration = Duration::from_secs(10);

/// The Debian packages the workload needs, by the command each provides.
const PACKAGES: [(&str, &str); 2] = [("nginx", "nginx-light"), ("ab", "apache2-utils")];

/// Installs nginx and ab from Debian where missing.
pub fn install() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(command, _)| !found(command))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: bench: installing {} from Debian", missing.join(" "));
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed ({status})", missing.join(" "));
    }
    Ok(())
}

fn found(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An nginx master and its one worker, serving a 3-byte answer on a loopback port.
pub struct Nginx {
    master: Child,
    dir: PathBuf,
    pub port: u16,
    pub worker: u32,
}

impl Nginx {
    pub fn start() -> Result<Nginx> {
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("leaktrace-bench-nginx-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let config = dir.join("nginx.conf");
        fs::write(
            &config,
            format!(
                "daemon off;\nmaster_process on;\nworker_processes 1;\npid {pid};\n\
                 error_log {log} warn;\nevents {{ worker_connections 4096; }}\n\
                 http {{ access_log off; server {{ listen 127.0.0.1:{port}; \
                 location / {{ return 200 \"ok\\n\"; }} }} }}\n",
                pid = dir.join("nginx.pid").display(),
                log = dir.join("error.log").display(),
            ),
        )?;
        let master = Command::new("nginx")
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Nginx {
            master,
            dir,
            port,
            worker: 0,
        };
        let started = Instant::now();
        loop {
            if let Some(worker) = nginx.worker()? {
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    nginx.worker = worker;
                    return Ok(nginx);
                }
            }
            if started.elapsed() > START_LIMIT {
                bail!(
                    "nginx did not listen on 127.0.0.1:{port} within {START_LIMIT:?}; see {}",
                    nginx.dir.join("error.log").display()
                );
            }
            if let Some(status) = nginx.master.try_wait()? {
                bail!("nginx exited at start ({status})");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The master's one child.
    fn worker(&self) -> Result<Option<u32>> {
        let master = i32::try_from(self.master.id())?;
        Ok(procfs::process::all_processes()?
            .filter_map(|p| p.ok()?.stat().ok())
            .find(|stat| stat.ppid == master)
            .map(|stat| stat.pid as u32))
    }

    /// Requests per second `ab` reached in `duration`, one new connection per request.
    pub fn load(&self, duration: Duration) -> Result<f64> {
        let out = Command::new("ab")
            .args(["-q", "-r", "-c", &CONCURRENCY.to_string()])
            // -t resets the request count to 50000: the count comes after it.
            .args(["-t", &duration.as_secs().max(1).to_string()])
            .args(["-n", "100000000"])
            .arg(format!("http://127.0.0.1:{}/", self.port))
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
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL to the master leaves the worker behind: ask it to quit, then make sure.
        let _ = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .args(["-s", "quit"])
            .stderr(Stdio::null())
            .status();
        let _ = self.master.wait();
        if self.worker != 0 {
            if let Some(pid) = rustix::process::Pid::from_raw(self.worker as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}
