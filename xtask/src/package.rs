//! `cargo xtask package`: the .deb (release build with the eBPF program, man pages, completions,
//! systemd units), and its check: install into a throwaway root, inspect, remove.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// cargo-deb, installed by `cargo xtask setup`.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// The check run inside a private mount namespace: see the script's own comments.
const CHECK_SCRIPT: &str = include_str!("package_check.sh");

/// Builds netmon in release (failing rather than embedding a stub program), writes the man
/// pages and completions where netmon/Cargo.toml's `[package.metadata.deb]` expects them, and
/// runs `cargo deb --no-build`. Returns the .deb.
pub fn package(root: &Path, target: &Path) -> Result<PathBuf> {
    let status = Command::new("cargo")
        .args(["build", "--release", "--package", "netmon"])
        .env("NETMON_REQUIRE_EBPF", "1")
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("release build failed ({status})");
    }
    let bin = target.join("release/netmon");
    let version = output(Command::new(&bin).arg("--version"))?;
    if version.contains("without") {
        bail!(
            "{} was built without its eBPF program: {version}",
            bin.display()
        );
    }
    // Where netmon/Cargo.toml's assets point, whatever CARGO_TARGET_DIR is.
    let out = root.join("target/package");
    std::fs::remove_dir_all(&out).ok();
    let man = out.join("man");
    output(Command::new(&bin).arg("man").arg(&man))?;
    for page in [
        "man1/netmon.1",
        "man1/netmon-watch.1",
        "man1/netmon-snapshot.1",
        "man1/netmon-top.1",
        "man1/netmon-features.1",
    ]
    .iter()
    .chain(&["man8/netmon-agent.8"])
    {
        // -n: no name or time stamp in the header, so the package is reproducible.
        output(Command::new("gzip").args(["-9nf"]).arg(man.join(page)))?;
    }
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in [
        ("bash", "netmon.bash"),
        ("zsh", "_netmon"),
        ("fish", "netmon.fish"),
    ] {
        let script = output(Command::new(&bin).args(["completions", shell]))?;
        std::fs::write(completions.join(file), script)?;
    }
    let deb = output(
        Command::new("cargo")
            .args(["deb", "--package", "netmon", "--no-build", "--no-strip"])
            .current_dir(root),
    )?;
    let deb = PathBuf::from(deb.lines().last().unwrap_or_default().trim());
    if !deb.is_file() {
        bail!("cargo deb did not report a package file (got {deb:?})");
    }
    Ok(deb)
}

/// Installs `deb` into a throwaway copy of this machine's root (an overlay in a private mount
/// namespace: nothing reaches the real system), checks what it installed, removes and purges
/// it, and checks that it is gone. Returns the `systemd-analyze security` line for the agent.
pub fn check(deb: &Path) -> Result<String> {
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            CHECK_SCRIPT,
            "check",
        ])
        .arg(deb)
        .output()
        .context("running unshare")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("the package check failed ({})", out.status);
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("security: "))
        .map(str::to_owned)
        .context("the check printed no security score")
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
