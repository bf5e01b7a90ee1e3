//! Builds the eBPF object (leaktrace-ebpf, nightly, bpfel target) so that `cargo build` alone
//! yields a complete binary. `cargo xtask` installs the toolchain this needs beforehand.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../leaktrace-common/src");
    let skipped =
        env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "leaktrace-ebpf",
            root_dir: "../leaktrace-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )?;
    if skipped {
        // Lets the userspace crate compile (for clippy or unit tests) without the eBPF toolchain;
        // the loader reports an empty object as a build problem at run time.
        let object = PathBuf::from(env::var("OUT_DIR")?).join("leaktrace");
        if !object.exists() {
            fs::write(object, [])?;
        }
    }
    Ok(())
}
