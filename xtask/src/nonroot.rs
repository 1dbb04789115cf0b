//! The unit tests as a newcomer runs them: `cargo test` as an unprivileged user, without
//! bpf-linker (so with the stub eBPF object), on the same tree.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// Where the tree, the toolchain and the target dir appear to the unprivileged user: a mount
/// point in a private mount namespace, so parents it may not traverse (`/root` is 0700) do not
/// matter, and engineers running this at once do not see each other's mounts. The path is
/// fixed so that cargo's fingerprints (absolute paths) keep the second run warm.
const MOUNT_POINT: &str = "/tmp/netmon-nonroot-check";

/// Runs the workspace's default `cargo test` as user `nobody` with only the toolchain's own
/// directory and /usr/bin, /bin on PATH (no ~/.cargo/bin, so no bpf-linker), offline, with a
/// target dir of its own under `target/nonroot` (~12 s warm; the first run builds every
/// dependency once more, without debug info to keep it small).
pub fn unit_tests_as_nobody(workspace: &Path, target: &Path) -> Result<()> {
    let started = Instant::now();
    let cargo = PathBuf::from(
        std::env::var_os("CARGO").context("CARGO is not set: run this through `cargo xtask`")?,
    );
    let toolchain = cargo
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("no toolchain directory above {}", cargo.display()))?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let base = target.join("nonroot");
    for (dir, nobody) in [
        ("home", true),
        ("cargo", true),
        ("target", true),
        ("src", false),
        ("toolchain", false),
        ("cargo/registry", false),
    ] {
        let path = base.join(dir);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        if nobody {
            super::sh("chown", &["nobody:nogroup", &path.to_string_lossy()])?;
        }
    }
    std::fs::create_dir_all(MOUNT_POINT).with_context(|| format!("creating {MOUNT_POINT}"))?;
    // Read-only binds of the tree, the toolchain and the registry; the rest is nobody's own.
    const SCRIPT: &str = r#"set -e
b=$1 ws=$2 tc=$3 reg=$4 m=$5
mount --bind "$b" "$m"
ro() { mount --bind "$1" "$2" && mount -o remount,bind,ro "$2"; }
ro "$ws" "$m/src"
ro "$tc" "$m/toolchain"
ro "$reg" "$m/cargo/registry"
cd "$m/src"
exec setpriv --reuid nobody --regid nogroup --clear-groups --inh-caps=-all \
  env -i HOME="$m/home" PATH="$m/toolchain/bin:/usr/bin:/bin" CARGO_HOME="$m/cargo" \
  CARGO_TARGET_DIR="$m/target" CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=0 \
  sh -c 'if [ "$(id -u)" = 0 ]; then echo "still root" >&2; exit 1; fi
    if command -v bpf-linker >/dev/null; then echo "bpf-linker is on PATH" >&2; exit 1; fi
    exec cargo test --offline --locked'
"#;
    let status = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .arg(&base)
        .arg(workspace)
        .arg(toolchain)
        .arg(cargo_home.join("registry"))
        .arg(MOUNT_POINT)
        .status()
        .context("running unshare (util-linux)")?;
    if !status.success() {
        bail!(
            "`cargo test` as nobody without bpf-linker failed ({status}): every unit test must \
             build and pass without root and without the eBPF toolchain"
        );
    }
    eprintln!(
        "xtask: unit tests as nobody without bpf-linker: ok ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
