//! `cargo xtask dist`: the one file to copy onto a host. leaktrace built for musl is static (the
//! eBPF object is inside it, embedded by leaktrace/build.rs), so it runs on any distribution
//! whose kernel has BTF; `vm-test` boots its kernels with this very file.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::toolchain::{self, MUSL_TARGET};

/// Holds the latest build alone, so that `target/dist/leaktrace-*` names one file (the
/// Containerfile copies it by that pattern).
pub const DIST_DIR: &str = "target/dist";

/// The target triple in the file name, as people search for it rather than as rustc spells it.
const PLATFORM: &str = "x86_64-linux-musl";

/// Builds the static binary, checks that it is static and runs, and puts it with its checksum
/// into [`DIST_DIR`]; returns its path there.
pub fn build(root: &Path) -> Result<PathBuf> {
    toolchain::ensure_musl()?;
    // Optimized: the release profile's LTO is what the benchmarks measured.
    crate::cargo(
        root,
        &[
            "build",
            "--release",
            "--package",
            "leaktrace",
            "--target",
            MUSL_TARGET,
        ],
    )?;
    let built = root
        .join("target")
        .join(MUSL_TARGET)
        .join("release/leaktrace");
    let interpreter = elf_interpreter(&built)?;
    ensure!(
        interpreter.is_none(),
        "{} asks for the loader {} : it is not static",
        built.display(),
        interpreter.unwrap_or_default()
    );
    // Running it proves it starts without a loader here, and names the file after the version
    // the binary itself reports.
    let out = Command::new(&built)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", built.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    let Some(version) = version.trim().strip_prefix("leaktrace ") else {
        bail!(
            "{} --version printed {version:?} ({}), not `leaktrace VERSION`",
            built.display(),
            out.status
        );
    };

    let dir = root.join(DIST_DIR);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let name = format!("leaktrace-{version}-{PLATFORM}");
    let binary = dir.join(&name);
    fs::copy(&built, &binary)
        .with_context(|| format!("copying {} to {}", built.display(), binary.display()))?;
    // Run in the directory, so that the file names the binary alone and `sha256sum -c` works
    // wherever both are copied together.
    let sum = Command::new("sha256sum")
        .arg(&name)
        .current_dir(&dir)
        .output()
        .context("running sha256sum")?;
    ensure!(sum.status.success(), "sha256sum {name} failed");
    fs::write(dir.join(format!("{name}.sha256")), &sum.stdout)?;
    Ok(binary)
}

/// The program interpreter (dynamic loader) an ELF executable names, if any: an executable
/// without one, static or static-pie, runs on a host with no libc at all.
fn elf_interpreter(path: &Path) -> Result<Option<String>> {
    const PT_INTERP: u32 = 3;
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let field = |at: usize, len: usize| -> Result<u64> {
        let bytes = elf
            .get(at..at + len)
            .with_context(|| format!("{} is cut short", path.display()))?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0, |value, &byte| value << 8 | u64::from(byte)))
    };
    // ELF64, little-endian: what a musl build for x86-64 is.
    ensure!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    let table = usize::try_from(field(0x20, 8)?)?;
    let entry_size = usize::try_from(field(0x36, 2)?)?;
    for header in 0..usize::try_from(field(0x38, 2)?)? {
        let at = table + header * entry_size;
        if field(at, 4)? == u64::from(PT_INTERP) {
            let offset = usize::try_from(field(at + 8, 8)?)?;
            let size = usize::try_from(field(at + 32, 8)?)?;
            let name = elf
                .get(offset..offset + size)
                .with_context(|| format!("{}: interpreter out of bounds", path.display()))?;
            let name = String::from_utf8_lossy(name);
            return Ok(Some(name.trim_end_matches('\0').to_owned()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_names_its_loader() -> Result<()> {
        // xtask itself is linked against glibc.
        let own = std::env::current_exe()?;
        let loader = elf_interpreter(&own)?;
        assert!(
            loader.as_deref().is_some_and(|l| l.contains("ld-linux")),
            "{loader:?}"
        );
        Ok(())
    }

    #[test]
    fn not_an_elf_file_is_an_error() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert!(elf_interpreter(&manifest).is_err());
    }
}
