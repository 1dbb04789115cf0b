//! Builds the eBPF program (netmon-ebpf) for the bpf target and places it in OUT_DIR, or an
//! empty stub when the eBPF toolchain is absent, so the userspace code and its unit tests
//! build anywhere.
use std::{env, fs, path::Path};

// A build-dependency only so that cargo rebuilds netmon when the eBPF crate changes.
use netmon_ebpf as _;

/// The toolchain the eBPF crate builds with: pinned, because bpf-linker is built against one
/// LLVM (22) and a newer rustc's LLVM 23 bitcode fails to link ("Invalid record").
const EBPF_TOOLCHAIN: &str = "1.95.0";

fn main() -> anyhow::Result<()> {
    println!("cargo::rustc-check-cfg=cfg(netmon_ebpf_stub)");
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo::rerun-if-env-changed=NETMON_REQUIRE_EBPF");
    if let Some(missing) = missing_prerequisite() {
        // A release for users must carry the program: `cargo xtask package` asks for it.
        if env::var_os("NETMON_REQUIRE_EBPF").is_some() {
            anyhow::bail!("{missing}");
        }
        return write_stub(&missing);
    }
    // Stable rustc with RUSTC_BOOTSTRAP=1 can run `-Z build-std=core`, which gives the same
    // object as the matching nightly. Only the eBPF build inherits this.
    // SAFETY: the build script is single-threaded here.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let package = aya_build::Package {
        name: "netmon-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../netmon-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}

/// An empty object and the `netmon_ebpf_stub` cfg: everything compiles and the unit tests run
/// (none loads the program); attaching says how to get the real build.
fn write_stub(why: &str) -> anyhow::Result<()> {
    println!("cargo::warning=building netmon without its eBPF program ({why})");
    // Only a stub build looks at PATH, so a bpf-linker installed later is picked up.
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rustc-cfg=netmon_ebpf_stub");
    let out = env::var("OUT_DIR")?;
    fs::write(Path::new(&out).join("netmon"), [])?;
    Ok(())
}

/// Why the eBPF program cannot be built here, if it cannot: each answer says what to run.
fn missing_prerequisite() -> Option<String> {
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        return Some("AYA_BUILD_SKIP is set".into());
    }
    if which_bpf_linker().is_none() {
        return Some("the eBPF build needs bpf-linker on PATH: run `cargo xtask setup`".into());
    }
    let home = env::var("RUSTUP_HOME")
        .or_else(|_| env::var("HOME").map(|h| format!("{h}/.rustup")))
        .unwrap_or_default();
    let src = format!(
        "{home}/toolchains/{EBPF_TOOLCHAIN}-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/library"
    );
    if cfg!(target_arch = "x86_64") && !Path::new(&src).exists() {
        return Some(format!(
            "the eBPF build needs rust-src for toolchain {EBPF_TOOLCHAIN}: run `cargo xtask setup`"
        ));
    }
    None
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file())
}
