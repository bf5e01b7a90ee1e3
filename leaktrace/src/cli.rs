//! Command line: `leaktrace [--pid PID]...` traces; `leaktrace demo` shows what it finds.
use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{builder::RangedU64ValueParser, Args, CommandFactory as _, Parser, Subcommand};

use crate::hooks::HookFamily;
use crate::settings;
use crate::timeline::DEFAULT_MAX_SOCKETS;

const AFTER_HELP: &str = "\
Leak classes (each reported once it has lasted --leak-after; idle_half_closed, --idle-after):
  close_wait      the peer closed (its FIN put the socket in CLOSE_WAIT) and the owner never
                  closed or shut down its side. For a connection the process made, the finding
                  says how many it holds in CLOSE_WAIT to that server (close_waits_to_remote):
                  the only one reads as likely a pooled keep-alive connection the server timed
                  out (requests.Session, a keep-alive agent), dropped at its next use; more,
                  and growing, are sockets piling up
  shut_wr_unread  the owner called shutdown(SHUT_WR or SHUT_RDWR), the peer then sent data or
                  its FIN, and the owner never consumed it while keeping the fd open
  fd_after_close  the connection is over (FINs both ways, a reset, a refused connect) and the
                  owner still holds the fd
  idle_half_closed
                  of a proxied pair (one socket accepted, one connected, within 2s), one's peer
                  half-closed and the owner still holds it, neither closed nor shut down, while
                  the other stays ESTABLISHED or FIN_WAIT2 with no data either way and no timer
                  (keepalive, retransmission): the end-of-stream was never passed on
                  (incident 2). A proxy or pool that closed its half-closed client and keeps
                  the upstream connection idle handled it: that is not reported

Examples:
  sudo leaktrace demo                       leaky servers in-process: see both classes
  sudo leaktrace --pid 4242                 trace one process until Ctrl-C (or until it exits)
  sudo leaktrace --pid 4242 --json --duration 1m --leak-after 2s
  sudo leaktrace --unit nginx               every process of a systemd service, now and later
  sudo leaktrace --cgroup system.slice/docker-3f4c2a9b8e7d.scope
                                            every process of a container (any cgroup v2 path)
  sudo leaktrace run --fail-on-leak -- ./run-tests.sh
                                            trace a command and its children (CI use); the
                                            command runs as you, not root (--as-root)
  sudo leaktrace --pid 4242 --metrics 9464  Prometheus metrics at http://127.0.0.1:9464/metrics
  sudo leaktrace --pid 4242 --trace-out trace.json
                                            per-socket timelines to open in Perfetto

Stopping:
  Ctrl-C (SIGINT), SIGTERM and SIGHUP print the final report and exit 0 (8 when an export
  was dropped meanwhile, see Exit status). run passes SIGTERM and SIGHUP on to the command
  (Ctrl-C reaches it from the terminal), traces until it exits, then reports and exits with
  its status. While leaktrace starts (loading BTF, attaching, reading the sockets already
  open: seconds on a busy host), they stop it with one line and no report, exit 128 + the
  signal's number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP); run then never starts
  the command.

Exit status:
  0 success, 1 runtime error, 2 bad usage, 3 not root, 4 no such process (or a zombie),
    cgroup or unit,
  5 kernel BTF missing or unusable, 6 tracefs unavailable, 7 the kernel refused a hook,
  8 an output failed: stdout is closed or cannot take the report, the report's reader closed
    it (e.g. `leaktrace --json | head -1`), or one asked for cannot be opened (--metrics
    address in use, --trace-out file not writable or refused); or an export could not be
    written while tracing (--trace-out on a full disk): it was dropped with a warning,
    tracing went on, and the final report is whole and names it: 8 comes after it, so a
    script that keeps the file knows it is incomplete;
  128 + a stop signal's number when it came during startup (see Stopping);
  run: the command's own status, 10 with --fail-on-leak when a leak was reported,
  11 with --fail-on-leak when none was and the command succeeded, but leaks may have been
    missed (events lost: raise --ring-size; socket_map_full or target_map_full: raise
    --max-kernel-sockets or --max-processes),
  126/127 when the command cannot be executed / is not found, or leaktrace's own status
  above (not for a dropped export: the command's status comes first); its last line on
  stderr says whose status it is and why (`leaktrace: exit status 7 is the command's: ...`;
  with --json, a record of type exit)";

#[derive(Debug, Parser)]
#[command(
    name = "leaktrace",
    version,
    about = "Find the TCP sockets a process leaks, the fd holding each, and how each got there",
    long_about = "Find the TCP sockets a process leaks, the fd holding each, and how each got there.\n\n\
        leaktrace follows every TCP socket of the traced processes through the kernel (state \
        transitions, accept, shutdown, reads after shutdown, close, destruction) with eBPF, prints \
        each leak as soon as it has lasted --leak-after, and prints the leaking sockets' timelines \
        in a final report when it stops (--duration, Ctrl-C, SIGTERM or SIGHUP).",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start small leaky servers in this process (incidents 1 and 3), trace them, and report.
    Demo(DemoArgs),
    /// Run a command and trace it and every process it starts, from their first instruction;
    /// the report goes to stderr, the command keeps stdin/stdout/stderr and its exit status
    /// (even when stderr cannot take the report, which is then given up). Under sudo, the
    /// command runs as the user who ran sudo, not as root (--as-root).
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub leaks: LeakArgs,
    /// Exit with status 10 when any leak was reported, instead of the command's own status;
    /// with 11 when none was and the command succeeded, but leaks may have been missed (events
    /// lost, a kernel map full).
    #[arg(long)]
    pub fail_on_leak: bool,
    /// Run the command as root. Without it, when leaktrace was started through sudo (SUDO_UID
    /// set), the command runs as the user who ran sudo, as it would have without leaktrace:
    /// their uid, gid and groups, with HOME, USER and LOGNAME set to theirs.
    #[arg(long)]
    pub as_root: bool,
    /// The command and its arguments, after `--`.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LeakArgs {
    /// How long a leak condition must last before it is reported (e.g. 500ms, 2s, 1m). Long
    /// enough for a server to answer after a client's half-close, short enough to see leaks
    /// while you watch.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub leak_after: Duration,
    /// How long a connection must stay silent (no data either way, no keepalive or other timer)
    /// after the other socket of its proxied pair half-closed before it counts as leaked
    /// (idle_half_closed), instead of --leak-after. Idle connections alone are normal (pools
    /// keep them); this is how long a proxy may take to pass the end-of-stream on or give up.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub idle_after: Duration,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Trace the sockets owned by this process (repeatable). Without it, every process.
    /// leaktrace stops when every traced process has exited.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Also trace the descendants of each --pid: those already running when tracing starts
    /// (a prefork server's workers: nginx, Apache, gunicorn, php-fpm, PostgreSQL), their
    /// sockets included, and those started later, from their first instruction.
    #[arg(long, requires = "pids")]
    pub follow_children: bool,
    /// Trace every process in this cgroup v2 and the cgroups below it, those there now and
    /// those that come later (a service's restarts, a container's new processes): a directory
    /// of the cgroup v2 hierarchy, or a path below its root as /proc/PID/cgroup shows it
    /// (system.slice/nginx.service). The cgroup a process is in when it takes a socket decides.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pids", "unit"])]
    pub cgroup: Option<String>,
    /// Trace a systemd unit's processes, as --cgroup of the unit's cgroup (nginx stands for
    /// nginx.service).
    #[arg(long, value_name = "NAME", conflicts_with = "pids")]
    pub unit: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub leaks: LeakArgs,
    /// Stop after this long and print the final report (default: until Ctrl-C, SIGTERM or
    /// SIGHUP).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Print JSON Lines (start, leak, resolved, summary records) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Which kernel hooks to use; auto picks the best this kernel allows. The start says which
    /// family serves and why that one (what this kernel refused of the others).
    #[arg(long, value_enum, default_value_t = HookFamily::Auto)]
    pub hooks: HookFamily,
    /// Size of the kernel-to-userspace ring buffer in bytes (a power of two, at least 4096).
    /// Raise it if the summary reports lost events.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20, value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// Also print a one-line summary this often (open leaks by class, sockets tracked, records,
    /// lost events), e.g. 1m, at least 1s: for sessions that run for hours.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Keep at most this many socket timelines in memory. Finished sockets are forgotten on
    /// their own; past the cap, the least recently active ones without an open leak are dropped,
    /// and the summary says how many.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SOCKETS,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_sockets: usize,
    /// Processes traced at once with --pid, --follow-children and `run` (the kernel's map of
    /// them, about 64 bytes of kernel memory each). Past it, a traced process's new children
    /// are not traced, and leaktrace warns.
    #[arg(long, value_name = "N", default_value_t = 32768,
          value_parser = RangedU64ValueParser::<u32>::new().range(1..=1 << 22))]
    pub max_processes: u32,
    /// Sockets of traced processes the kernel side follows at once (about 100 bytes of kernel
    /// memory each). Past it, new sockets are not followed (leaks among them are missed), and
    /// leaktrace warns.
    #[arg(long, value_name = "N", default_value_t = 65536,
          value_parser = RangedU64ValueParser::<u32>::new().range(1..=1 << 24))]
    pub max_kernel_sockets: u32,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (open leaks by kind and process,
    /// TCP state transitions, sockets tracked, lost events, ring buffer fill). A bare port
    /// listens on 127.0.0.1 only; name an address (0.0.0.0:9464, [::]:9464) to let other hosts
    /// scrape it. Port 0 picks a free port, printed at start.
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
    /// Write every socket's timeline to FILE as Chrome trace-event JSON, which Perfetto
    /// (ui.perfetto.dev) opens: a track per socket, a slice per TCP state, an instant per
    /// syscall. Written as sockets go away and at the end, so memory stays bounded. A new FILE
    /// is created 0600; a symbolic link, a file of another user and one with other hard links
    /// are refused (exit status 8), as another user may have put them there (in /tmp). A FILE
    /// that cannot be written later (a full disk) is dropped with a warning, ending with the
    /// last whole socket; tracing and the report go on, and leaktrace exits 8 after the report
    /// (under run, with the command's status).
    #[arg(long, value_name = "FILE")]
    pub trace_out: Option<PathBuf>,
    /// Say at start which hook serves each event (rather than one line for them all), and which
    /// were tried and refused, and why.
    #[arg(long, short)]
    pub verbose: bool,
    /// Attach every hook with programs that return at once: what the attach points cost by
    /// themselves, for `cargo xtask bench`. Finds nothing.
    #[arg(long, hide = true)]
    pub floor: bool,
}

impl From<CommonArgs> for settings::Common {
    fn from(args: CommonArgs) -> Self {
        Self {
            json: args.json,
            hooks: args.hooks,
            ring_size: args.ring_size,
            interval: args.interval,
            max_sockets: args.max_sockets,
            max_processes: args.max_processes,
            max_kernel_sockets: args.max_kernel_sockets,
            metrics: args.metrics,
            trace_out: args.trace_out,
            verbose: args.verbose,
            floor: args.floor,
        }
    }
}

impl From<LeakArgs> for settings::Leaks {
    fn from(args: LeakArgs) -> Self {
        Self {
            leak_after: args.leak_after,
            idle_after: args.idle_after,
        }
    }
}

impl From<TraceArgs> for settings::Trace {
    fn from(args: TraceArgs) -> Self {
        Self {
            pids: args.pids,
            follow_children: args.follow_children,
            cgroup: args.cgroup,
            unit: args.unit,
            duration: args.duration,
            common: args.common.into(),
            leaks: args.leaks.into(),
        }
    }
}

impl From<RunArgs> for settings::Run {
    fn from(args: RunArgs) -> Self {
        Self {
            fail_on_leak: args.fail_on_leak,
            as_root: args.as_root,
            command: args.command,
            common: args.common.into(),
            leaks: args.leaks.into(),
        }
    }
}

/// A usage error in one line, as the README promises every error: clap spreads it over
/// paragraphs (the message, with what is missing or possible on lines of their own; tips; the
/// usage; where to read more). The message and the tips stay; the usage gives way to a pointer
/// to the help of the subcommand that `first_arg` names, if any.
pub fn usage_error(error: &clap::Error, first_arg: Option<&OsStr>) -> String {
    let rendered = error.render().to_string();
    let kept: Vec<String> = rendered
        .split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter_map(|paragraph| match paragraph.strip_prefix("error: ") {
            Some(message) => Some(message.to_owned()),
            None => paragraph.starts_with("tip: ").then_some(paragraph),
        })
        .collect();
    let subcommand = first_arg
        .and_then(OsStr::to_str)
        .and_then(|arg| Some(Cli::command().find_subcommand(arg)?.get_name().to_owned()));
    let help = match subcommand {
        Some(name) => format!("leaktrace {name} --help"),
        None => "leaktrace --help".to_owned(),
    };
    format!("leaktrace: error: {} (see {help})", kept.join("; "))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 500ms, 2s, 1m)"))
}

/// The shortest `--interval`. Its line is for following a long session, and what it counts
/// changes only as often as the detectors look (every 250 ms); below a second the same figures
/// would repeat, and at 1ns some 300,000 lines a second would bury the findings.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

fn parse_interval(text: &str) -> Result<Duration, String> {
    let period = parse_duration(text)?;
    if period < MIN_INTERVAL {
        return Err(format!(
            "must be at least {}",
            humantime::format_duration(MIN_INTERVAL)
        ));
    }
    Ok(period)
}

/// A bare port means loopback: metrics name the processes traced, which is not for every host
/// on the network unless the user says so.
fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    text.parse()
        .map_err(|_| "expected PORT or ADDR:PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464)".into())
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size: u32 = text.parse().map_err(|e| format!("{e}"))?;
    if size < 4096 || !size.is_power_of_two() {
        return Err("must be a power of two of at least 4096".into());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn durations_and_ring_sizes_are_validated() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("5parsecs").is_err());
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("999ms"), Err("must be at least 1s".into()));
        assert!(parse_interval("0").is_err());
        assert!(parse_ring_size("4096").is_ok());
        assert!(parse_ring_size("5000").is_err());
        assert!(parse_ring_size("1024").is_err());
    }

    #[test]
    fn metrics_address_defaults_to_loopback() {
        let addr = |text| parse_metrics_addr(text).map(|a| a.to_string());
        assert_eq!(addr("9464").as_deref(), Ok("127.0.0.1:9464"));
        assert_eq!(addr("0.0.0.0:9464").as_deref(), Ok("0.0.0.0:9464"));
        assert_eq!(addr("[::1]:9464").as_deref(), Ok("[::1]:9464"));
        assert!(addr("localhost").is_err());
        assert!(addr("70000").is_err());
    }

    #[test]
    fn every_way_of_tracing_takes_the_exports() {
        let cli = Cli::try_parse_from(["leaktrace", "--metrics", "9464", "--trace-out", "t.json"])
            .unwrap();
        assert_eq!(
            cli.trace.common.metrics,
            Some(([127, 0, 0, 1], 9464).into())
        );
        assert_eq!(cli.trace.common.trace_out, Some(PathBuf::from("t.json")));
        let cli =
            Cli::try_parse_from(["leaktrace", "run", "--metrics", "9464", "--", "true"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Run(run)) if run.common.metrics.is_some()));
        let cli = Cli::try_parse_from(["leaktrace", "demo", "--trace-out", "demo.json"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Demo(d)) if d.common.trace_out.is_some()));
    }

    #[test]
    fn pids_repeat_and_demo_is_a_subcommand() {
        let cli = Cli::try_parse_from(["leaktrace", "--pid", "1", "--pid", "2", "--json"]).unwrap();
        assert_eq!(cli.trace.pids, [1, 2]);
        assert!(cli.trace.common.json);
        let cli = Cli::try_parse_from(["leaktrace", "demo"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Demo(_))));
        assert!(Cli::try_parse_from(["leaktrace", "--pid", "x"]).is_err());
        assert!(Cli::try_parse_from(["leaktrace", "--follow-children"]).is_err());
    }

    #[test]
    fn usage_errors_fit_on_one_line() {
        let error = |args: &[&str]| {
            let e = Cli::try_parse_from(args).unwrap_err();
            usage_error(&e, args.get(1).map(OsStr::new))
        };
        assert_eq!(
            error(&["leaktrace", "--hooks", "foo"]),
            "leaktrace: error: invalid value 'foo' for '--hooks <HOOKS>' \
             [possible values: auto, tracepoint, fentry, kprobe] (see leaktrace --help)"
        );
        assert_eq!(
            error(&["leaktrace", "run"]),
            "leaktrace: error: the following required arguments were not provided: <CMD>... \
             (see leaktrace run --help)"
        );
        assert_eq!(
            error(&["leaktrace", "run", "--bogus", "--", "true"]),
            "leaktrace: error: unexpected argument '--bogus' found; \
             tip: to pass '--bogus' as a value, use '-- --bogus' (see leaktrace run --help)"
        );
    }

    #[test]
    fn run_takes_the_command_after_its_options() {
        let cli = Cli::try_parse_from([
            "leaktrace",
            "run",
            "--fail-on-leak",
            "--as-root",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        let Some(Command::Run(run)) = cli.command else {
            panic!("not run: {cli:?}");
        };
        assert!(run.fail_on_leak && run.as_root);
        assert_eq!(run.command, ["sh", "-c", "exit 3"]);
        assert!(Cli::try_parse_from(["leaktrace", "run"]).is_err());
    }
}
