//! Builds the eBPF program (netmon-ebpf) for the bpf target and places it in OUT_DIR.
use std::{env, path::Path};

/// The toolchain the eBPF crate builds with: pinned, because bpf-linker is built against one
/// LLVM (22) and a newer rustc's LLVM 23 bitcode fails to link ("Invalid record").
const EBPF_TOOLCHAIN: &str = "1.95.0";

fn main() -> anyhow::Result<()> {
    // Stable rustc with RUSTC_BOOTSTRAP=1 can run `-Z build-std=core`, which gives the same
    // object as the matching nightly. Only the eBPF build inherits this.
    // SAFETY: the build script is single-threaded here.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    check_prerequisites()?;
    let package = aya_build::Package {
        name: "netmon-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../netmon-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}

/// Turns the two usual set-up gaps into one line that says what to run.
fn check_prerequisites() -> anyhow::Result<()> {
    if env::var_os("AYA_BUILD_SKIP").is_some() {
        return Ok(());
    }
    let home = env::var("RUSTUP_HOME")
        .or_else(|_| env::var("HOME").map(|h| format!("{h}/.rustup")))
        .unwrap_or_default();
    let src = format!(
        "{home}/toolchains/{EBPF_TOOLCHAIN}-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/library"
    );
    if cfg!(target_arch = "x86_64") && !Path::new(&src).exists() {
        anyhow::bail!(
            "the eBPF build needs rust-src for toolchain {EBPF_TOOLCHAIN}: run `cargo xtask setup`"
        );
    }
    if which_bpf_linker().is_none() {
        anyhow::bail!("the eBPF build needs bpf-linker on PATH: run `cargo xtask setup`");
    }
    Ok(())
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file())
}
