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

pub fn ensure() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()
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
        install("the package index", "apt-get", &["update", "-q"], &[])?;
        install(
            "LLVM 22 (bpf-linker links against it)",
            "apt-get",
            &["install", "-y", "-q", LLVM_PACKAGE],
            &[("DEBIAN_FRONTEND", "noninteractive")],
        )?;
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
