//! Installs what building the eBPF side needs and the machine lacks, saying what it installs.
//! When everything is present this is a few file checks: well under a second.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// The nightly that builds aya-ebpf 0.2.1 here; newer ones cannot be fetched on our machines.
const NIGHTLY: &str = "nightly";
const LLVM_CONFIG: &str = "/usr/lib/llvm-22/bin/llvm-config";
const LLVM_PACKAGE: &str = "llvm-22-dev";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Static binaries: the one `dist` ships, and the test binaries of the guests' initramfs.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// What `vm-test` boots and packs guests with, by the Debian package that brings it.
const VM_PACKAGES: [(&str, &str); 3] = [
    ("qemu-system-x86", "qemu (boots the test kernels)"),
    ("busybox-static", "busybox (the guests' shell and mount)"),
    ("cpio", "cpio (packs the initramfs)"),
];

pub fn ensure() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()
}

/// What `dist` needs on top of [`ensure`]: the musl target, for static binaries.
pub fn ensure_musl() -> Result<()> {
    let sysroot = output("rustc", &["--print", "sysroot"])?;
    let musl = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(MUSL_TARGET);
    if musl.is_dir() {
        return Ok(());
    }
    install(
        "the musl target (static binaries: the dist build, the test VMs)",
        "rustup",
        &["target", "add", MUSL_TARGET],
        &[],
    )
}

/// What `vm-test` needs on top of [`ensure`]; only that task pays for it.
pub fn ensure_vm() -> Result<()> {
    ensure_musl()?;
    let missing: Vec<(&str, &str)> = VM_PACKAGES
        .into_iter()
        .filter(|(package, _)| !is_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(package, _)| *package).collect();
    let what: Vec<&str> = missing.iter().map(|(_, what)| *what).collect();
    apt_install(&what.join(", "), &names)
}

/// The real servers the kernel tests trace, by the command each provides and its Debian package.
const TEST_SERVERS: [(&str, &str); 1] = [("nginx", "nginx-light")];

/// What `test` and `vm-test` need on top of [`ensure`]: the tests trace real servers too.
pub fn ensure_test_servers() -> Result<()> {
    ensure_commands("the servers the kernel tests trace", &TEST_SERVERS)
}

/// Installs from Debian the packages of `commands` (command, package) whose command is missing.
pub fn ensure_commands(what: &str, commands: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = commands
        .iter()
        .filter(|(command, _)| !has_command(command))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(what, &missing)
}

/// On PATH, or where Debian puts root's commands (not on a user's PATH).
fn has_command(command: &str) -> bool {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(command).is_file())
}

fn is_installed(package: &str) -> bool {
    output("dpkg-query", &["--show", "--showformat=${Status}", package])
        .is_ok_and(|status| status == "install ok installed")
}

/// A fresh machine may have no package index at all.
pub fn apt_update() -> Result<()> {
    install("the package index", "apt-get", &["update", "-q"], &[])
}

/// `apt-get install`, after refreshing the package index.
fn apt_install(what: &str, packages: &[&str]) -> Result<()> {
    apt_update()?;
    install(
        what,
        "apt-get",
        &[
            &["install", "-y", "-q", "--no-install-recommends"],
            packages,
        ]
        .concat(),
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )
}

fn ensure_rust_src() -> Result<()> {
    let sysroot = output("rustup", &["run", NIGHTLY, "rustc", "--print", "sysroot"]);
    let present = sysroot.as_deref().is_ok_and(|sysroot| {
        Path::new(sysroot.trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
    });
    if present {
        return Ok(());
    }
    if sysroot.is_err() {
        install(
            "the nightly Rust toolchain",
            "rustup",
            &["toolchain", "install", NIGHTLY, "--profile", "minimal"],
            &[],
        )?;
    }
    install(
        "rust-src for the nightly toolchain (eBPF builds core from source)",
        "rustup",
        &["component", "add", "rust-src", "--toolchain", NIGHTLY],
        &[],
    )
}

fn ensure_bpf_linker() -> Result<()> {
    let installed = output("bpf-linker", &["--version"])
        .is_ok_and(|version| version.contains(BPF_LINKER_VERSION));
    if installed {
        return Ok(());
    }
    if !Path::new(LLVM_CONFIG).exists() {
        apt_install("LLVM 22 (bpf-linker links against it)", &[LLVM_PACKAGE])?;
    }
    // bpf-linker's build finds LLVM through the llvm-config first on PATH.
    let llvm_bin = Path::new(LLVM_CONFIG).parent().unwrap_or(Path::new("/"));
    let path = env::join_paths(
        std::iter::once(PathBuf::from(llvm_bin))
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    let path = path.to_string_lossy().into_owned();
    install(
        "bpf-linker (links the eBPF object)",
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ],
        &[("PATH", &path)],
    )
}

fn install(what: &str, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    eprintln!("xtask: installing {what}: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("installing {what} failed ({program} exited with {status})");
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        bail!("{program} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The DaemonSet's validator, pinned: PyPI's kubernetes-validate ships Kubernetes' schemas of
/// every release inside the package, so it validates offline (kubeconform fetches its schemas,
/// and its binary, from GitHub, which our machines cannot reach).
const MANIFEST_VALIDATOR: &str = "kubernetes-validate";
const MANIFEST_VALIDATOR_VERSION: &str = "1.37.0";
/// Its Python environment, beside the downloaded kernels (ignored by git).
const MANIFEST_VALIDATOR_ENV: &str = ".cache/deploy-venv";

/// What `check-deploy` needs on top of [`ensure`]: kubernetes-validate, and PyYAML with it.
/// Returns the environment's `bin` folder.
pub fn ensure_manifest_validator(root: &Path) -> Result<PathBuf> {
    let env = root.join(MANIFEST_VALIDATOR_ENV);
    let bin = env.join("bin");
    let installed = output(
        &bin.join(MANIFEST_VALIDATOR).to_string_lossy(),
        &["--version"],
    )
    .is_ok_and(|version| version.trim() == MANIFEST_VALIDATOR_VERSION);
    if installed {
        return Ok(bin);
    }
    let env_path = env.to_string_lossy();
    install(
        "a Python environment for the manifest validator",
        "python3",
        &["-m", "venv", "--clear", &env_path],
        &[],
    )?;
    install(
        "kubernetes-validate (checks the DaemonSet against Kubernetes' schemas, offline)",
        &bin.join("pip").to_string_lossy(),
        &[
            "install",
            "--quiet",
            &format!("{MANIFEST_VALIDATOR}=={MANIFEST_VALIDATOR_VERSION}"),
        ],
        &[],
    )?;
    Ok(bin)
}
