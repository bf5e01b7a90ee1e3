//! Project tasks: `cargo xtask build | run | test | lint | dist | check-deploy | vm-test | bench`.
//! Each first makes sure the eBPF toolchain is installed (nightly rust-src, LLVM 22, bpf-linker),
//! so a fresh machine needs nothing but rustup and root.
mod bench;
mod deploy;
mod dist;
mod test_summary;
mod toolchain;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test leaktrace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing, then build the eBPF object and every userspace crate.
    Build {
        /// Build with optimizations.
        #[arg(long)]
        release: bool,
    },
    /// Build (release), then run leaktrace as root with the given arguments.
    Run {
        /// Arguments for leaktrace, after `--` (e.g. `-- demo`, `-- --pid 4242`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install what is missing, build, and run the unit tests and the privileged kernel tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the one file to copy onto a host: leaktrace static (musl), its eBPF object inside,
    /// at target/dist/leaktrace-VERSION-x86_64-linux-musl with a .sha256 beside it.
    Dist,
    /// Check the fleet files in deploy/: the DaemonSet against the Kubernetes schemas, the
    /// systemd unit with `systemd-analyze verify`, leaktrace's flags in each, and that the
    /// Grafana dashboard's queries name only metrics a real `--metrics` scrape returns (as root).
    CheckDeploy,
    /// Run the kernel tests on each kernel of the matrix (Debian 5.10, 6.1 and 6.12 under qemu,
    /// and the host), with `--hooks auto` and with each other family the kernel has.
    VmTest {
        /// Kernels to test: `5.10`, `6.1`, `6.12`, `host` (default: all).
        kernels: Vec<String>,
        /// Run only this test file of `tests/tests/` (`processes`, ...); repeat for more.
        #[arg(long = "test", value_name = "FILE")]
        tests: Vec<String>,
    },
    /// Measure leaktrace's cost under loopback connection churn, judge the targets, and write
    /// BENCHMARKS.md (as root; about 15 minutes).
    Bench {
        /// Shorter phases and fewer connections (about 4 minutes), for development.
        #[arg(long, conflicts_with = "soak")]
        quick: bool,
        /// Instead, soak: churn and planted leaks for this long (`30m`; `2m` to try it), then
        /// check RSS stayed flat and every planted leak, and nothing else, was reported.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        soak: Option<std::time::Duration>,
    },
    /// A helper of `bench`: holds this many loopback connections open until stdin closes.
    #[command(name = bench::HOLDER_TASK, hide = true)]
    BenchHolder { connections: usize },
    /// rustfmt check and clippy on the whole workspace (the eBPF crate for its own target).
    Lint,
    /// Only install the toolchain pieces that are missing.
    Toolchain,
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    // A helper the bench starts by the dozen: it needs no toolchain.
    if let Task::BenchHolder { connections } = task {
        return bench::hold(connections);
    }
    let root = workspace_root();
    toolchain::ensure()?;
    match task {
        Task::Toolchain => Ok(()),
        Task::Build { release } => {
            let mut args = vec![
                "build",
                "--workspace",
                "--exclude",
                "leaktrace-ebpf",
                "--all-targets",
            ];
            if release {
                args.push("--release");
            }
            cargo(&root, &args)
        }
        Task::Run { args } => {
            cargo(&root, &["build", "--release", "--package", "leaktrace"])?;
            let binary = root.join("target/release/leaktrace");
            let mut command = as_root(&binary)?;
            let status = command.args(&args).status().context("starting leaktrace")?;
            if !status.success() {
                bail!("leaktrace exited with {status}");
            }
            Ok(())
        }
        Task::Test { args } => {
            toolchain::ensure_test_servers()?;
            cargo(
                &root,
                &[
                    "build",
                    "--workspace",
                    "--exclude",
                    "leaktrace-ebpf",
                    "--all-targets",
                ],
            )?;
            let mut runner = None;
            if !is_root() {
                if has_sudo() {
                    eprintln!(
                        "xtask: the kernel tests load eBPF: running the test binaries with sudo"
                    );
                    runner = Some("sudo -E");
                } else {
                    eprintln!(
                        "xtask: not root and no sudo: the kernel tests will print SKIPPED (with CI=true they fail)"
                    );
                }
            }
            // Every test binary runs even after one fails, so a run shows all that broke.
            let mut test = vec![
                "test",
                "--workspace",
                "--exclude",
                "leaktrace-ebpf",
                "--no-fail-fast",
            ];
            if !args.is_empty() {
                test.push("--");
                test.extend(args.iter().map(String::as_str));
            }
            let binary = root.join("target/debug/leaktrace");
            let (success, totals) = test_summary::run(
                Command::new("cargo")
                    .current_dir(&root)
                    .args(&test)
                    .env("LEAKTRACE_BIN", &binary)
                    .envs(runner.map(|r| ("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", r))),
            )?;
            println!("{}", totals.line("tests"));
            if !success {
                bail!("tests failed");
            }
            Ok(())
        }
        Task::Dist => {
            let binary = dist::build(&root)?;
            eprintln!(
                "xtask: dist: a static build, its checksum beside it ({}.sha256); copy it to a host and run it as root",
                binary.display()
            );
            println!("{}", binary.display());
            Ok(())
        }
        Task::CheckDeploy => deploy::check(&root),
        Task::VmTest { kernels, tests } => vm::run(&root, &kernels, &tests),
        Task::Bench { quick, soak } => bench::run(&root, quick, soak),
        Task::BenchHolder { .. } => unreachable!("handled before the toolchain check"),
        Task::Lint => {
            cargo(&root, &["fmt", "--all", "--check"])?;
            cargo(
                &root,
                &[
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "leaktrace-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
            let status = Command::new("cargo")
                .current_dir(root.join("leaktrace-ebpf"))
                .args([
                    "+nightly",
                    "clippy",
                    "-Z",
                    "build-std=core",
                    "--target",
                    "bpfel-unknown-none",
                    "--release",
                    "--",
                    "-D",
                    "warnings",
                ])
                .status()
                .context("running clippy on leaktrace-ebpf")?;
            if !status.success() {
                bail!("clippy found problems in leaktrace-ebpf");
            }
            Ok(())
        }
    }
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("cargo")
        .current_dir(root)
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn is_root() -> bool {
    // `id -u` keeps xtask free of unsafe FFI for one number.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn has_sudo() -> bool {
    Command::new("sudo").arg("--version").output().is_ok()
}

/// leaktrace needs root; from a normal user, go through sudo.
fn as_root(binary: &Path) -> Result<Command> {
    if is_root() {
        return Ok(Command::new(binary));
    }
    if !has_sudo() {
        bail!("leaktrace needs root and sudo is not installed: run `cargo xtask run` as root");
    }
    let mut command = Command::new("sudo");
    command.arg(binary);
    Ok(command)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
