//! Debian's nginx (`nginx-light`) as a subject for the kernel tests and the bench: a real
//! prefork server, started from a config written to its own temporary prefix, on loopback ports.
//! `cargo xtask test` installs it where it is missing, and `vm-test` copies it into the guests.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{fs, thread};

use anyhow::{bail, ensure, Context, Result};

/// Where Debian installs it, and where `vm-test` puts it in a guest, whose PATH is busybox's.
const DEBIAN_PATH: &str = "/usr/sbin/nginx";
/// How long nginx may take to listen: loading under emulation (a TCG guest) takes a second.
const START_LIMIT: Duration = Duration::from_secs(20);
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// The nginx executable: the one on PATH, else Debian's. `None`: not installed.
pub fn executable() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nginx"))
            .collect::<Vec<_>>()
    });
    on_path
        .chain([PathBuf::from(DEBIAN_PATH)])
        .find(|candidate| candidate.is_file())
}

/// What the server does with a request.
pub enum Site {
    /// Answers `ok` itself.
    Answer,
    /// A reverse proxy that passes each request to a backend (a second server block of the same
    /// nginx) over HTTP/1.1 connections it keeps in an upstream `keepalive` pool: the pool
    /// holds a connection, silent, between requests and after their clients are gone.
    ProxyWithPool,
}

/// An nginx master and its workers, which it forked before anyone traces it. Stopped (master
/// and workers) when dropped.
pub struct Nginx {
    master: Child,
    dir: PathBuf,
    /// The port clients connect to.
    pub port: u16,
    /// The backend's port, for [`Site::ProxyWithPool`].
    pub backend_port: Option<u16>,
    pub workers: Vec<u32>,
}

impl Nginx {
    pub fn start(site: Site, workers: usize) -> Result<Nginx> {
        let nginx = executable().context("nginx is not installed (Debian: nginx-light)")?;
        let port = free_port()?;
        let dir =
            std::env::temp_dir().join(format!("leaktrace-nginx-{}-{port}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let backend_port = match site {
            Site::Answer => None,
            Site::ProxyWithPool => Some(free_port()?),
        };
        let servers = match backend_port {
            None => format!("server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }}"),
            Some(backend) => format!(
                "upstream backend {{ server 127.0.0.1:{backend}; keepalive 8; }}\n\
                 server {{ listen 127.0.0.1:{backend}; location / {{ return 200 \"backend\\n\"; }} }}\n\
                 server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend; \
                 proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
            ),
        };
        let config = dir.join("nginx.conf");
        fs::write(
            &config,
            format!(
                "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {pid};\n\
                 error_log {log} warn;\nevents {{ worker_connections 4096; }}\n\
                 http {{ access_log off;\n{servers}\n}}\n",
                pid = dir.join("nginx.pid").display(),
                log = dir.join("error.log").display(),
            ),
        )?;
        let master = Command::new(&nginx)
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", nginx.display()))?;
        let mut server = Nginx {
            master,
            dir,
            port,
            backend_port,
            workers: Vec::new(),
        };
        let started = Instant::now();
        loop {
            server.workers = children(server.master.id())?;
            if server.workers.len() == workers
                && TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
            {
                return Ok(server);
            }
            if let Some(status) = server.master.try_wait()? {
                bail!("nginx exited at start ({status}): {}", server.error_log());
            }
            if started.elapsed() > START_LIMIT {
                bail!(
                    "nginx did not listen on 127.0.0.1:{port} with {workers} workers within \
                     {START_LIMIT:?}: {}",
                    server.error_log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn master(&self) -> u32 {
        self.master.id()
    }

    /// One request on a new connection, which the client ends: HTTP/1.0, so nginx answers and
    /// closes first, as it does for ApacheBench; HTTP/1.1 keep-alive, so the client's close
    /// comes first, as a browser's does when it leaves. Returns the answer's body.
    pub fn request(&self, keep_alive: bool) -> Result<String> {
        self.exchange(keep_alive).map(|(_, body)| body)
    }

    /// One HTTP/1.1 keep-alive request, answered, on a connection left open: the worker that
    /// answered holds it, ESTABLISHED, until the client closes it or nginx times it out (75s).
    pub fn request_kept_open(&self) -> Result<TcpStream> {
        self.exchange(true).map(|(stream, _)| stream)
    }

    /// [`Self::request`], with the connection.
    fn exchange(&self, keep_alive: bool) -> Result<(TcpStream, String)> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        stream.set_read_timeout(Some(REQUEST_LIMIT))?;
        let request: &[u8] = if keep_alive {
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
        } else {
            b"GET / HTTP/1.0\r\n\r\n"
        };
        stream.write_all(request)?;
        let mut answer = Vec::new();
        let mut chunk = [0; 1024];
        loop {
            let n = stream.read(&mut chunk)?;
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                ensure!(n > 0, "nginx closed before answering: {text:?}");
                continue;
            };
            ensure!(head.starts_with("HTTP/1.1 200"), "nginx answered {text:?}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .context("no Content-Length")?
                .parse()?;
            if body.len() >= length {
                let body = body.to_owned();
                return Ok((stream, body));
            }
            ensure!(n > 0, "nginx closed mid-answer: {text:?}");
        }
    }

    /// `n` requests (see [`Self::request`], HTTP/1.0), `concurrency` at a time.
    pub fn requests(&self, n: usize, concurrency: usize) -> Result<()> {
        thread::scope(|scope| {
            let runs: Vec<_> = (0..concurrency)
                .map(|i| {
                    let share = n / concurrency + usize::from(i < n % concurrency);
                    scope.spawn(move || (0..share).try_for_each(|_| self.request(false).map(drop)))
                })
                .collect();
            runs.into_iter()
                .try_for_each(|run| run.join().unwrap_or_else(|_| bail!("a client panicked")))
        })
    }

    fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log"))
            .map(|log| format!("error.log:\n{log}"))
            .unwrap_or_else(|e| format!("no error.log ({e})"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers and waits for them; SIGKILL would leave them.
        if let Ok(master) = libc::pid_t::try_from(self.master.id()) {
            // SAFETY: kill takes two integers; the master is our unreaped child.
            unsafe { libc::kill(master, libc::SIGTERM) };
        }
        let _ = self.master.wait();
        for worker in &self.workers {
            if let Ok(worker) = libc::pid_t::try_from(*worker) {
                // SAFETY: as above. A worker the master reaped is gone; the pid is not reused
                // this soon on a test machine.
                unsafe { libc::kill(worker, libc::SIGKILL) };
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

/// The processes whose parent is `parent`, from /proc.
fn children(parent: u32) -> Result<Vec<u32>> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process may exit between the listing and the read.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The name in parentheses may hold spaces and parentheses: the fields follow the last.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    Ok(children)
}
