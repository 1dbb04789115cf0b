//! Project tasks: set-up of a fresh machine, build, run, test (unit and root integration).
//!
//! `cargo xtask bench` measures what netmon costs and catches (see bench.rs); `cargo xtask vm`
//! runs the kernel checks in VMs of other kernels (see vm.rs).
//!
//! `cargo xtask setup` installs what the eBPF build needs and is a no-op in well under a second
//! when everything is there; `run` and `test` call it first.

mod bench;
mod nonroot;
mod package;
mod soak;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Toolchain for the eBPF crate: must match `EBPF_TOOLCHAIN` in netmon/build.rs.
const EBPF_TOOLCHAIN: &str = "1.95.0";
/// bpf-linker must be built against the same LLVM major as that rustc (22).
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const APT_BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Tools the integration tests and benches compare against or use for fixtures.
const APT_TEST_TOOLS: &[(&str, &str)] = &[
    ("ss", "iproute2"),
    ("ip", "iproute2"),
    ("netstat", "net-tools"),
    ("nft", "nftables"),
    ("setpriv", "util-linux"),
    // The package check: units, man pages, socket activation as systemd does it.
    ("systemd-analyze", "systemd"),
    ("systemd-socket-activate", "systemd"),
    ("man", "man-db"),
    ("addgroup", "adduser"),
    ("nsenter", "util-linux"),
    // `netmon top` is tested in a real terminal: tmux runs it, sends keys, captures the screen.
    ("tmux", "tmux"),
    // A real Prometheus scrapes the agent in the metrics test; promtool lints the exposition.
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
];

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (idempotent).
    Setup,
    /// Set up, build, and run netmon as root: `cargo xtask run -- watch`.
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every check and test: fmt, clippy, unit tests (as root, then as `nobody`
    /// without bpf-linker), the root integration
    /// tests that load the real eBPF program (they fail, never skip, when they cannot run),
    /// then, without a filter, the kernel matrix of `cargo xtask vm`.
    Test {
        #[arg(long)]
        release: bool,
        /// Only integration tests whose name contains this.
        filter: Option<String>,
    },
    /// Feed the filter parser and evaluator N random inputs (default 1,000,000): no panic,
    /// and the in-kernel part never drops what the full filter accepts.
    Fuzz {
        #[arg(default_value_t = 1_000_000)]
        iterations: u64,
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
    },
    /// Set up, build the .deb (target/debian/): release build, man pages, completions, units.
    /// With --check, also install it into a throwaway root, inspect it and remove it (root).
    Package {
        #[arg(long)]
        check: bool,
    },
    /// Set up, build netmon in release, and measure it as root: storm rate with and without
    /// netmon, transitions captured, snapshot times against ss and netstat, agent memory and
    /// CPU. Prints one table and writes it to target/bench/report.md.
    Bench(bench::BenchArgs),
    /// Set up, then boot Debian kernels (default: 6.1 6.12) under QEMU and run the root kernel
    /// checks inside each; one line per kernel.
    Vm(vm::VmArgs),
    /// Run `netmon agent` and `netmon watch` for N minutes under a mixed load (churn,
    /// long-lived connections, snapshot clients, a misbehaving client) and print their RSS,
    /// fds, losses and snapshot latency over time (root; loads the machine; not in CI).
    Soak(soak::SoakArgs),
    /// (soak internal) Connect+close at a fixed rate, run inside the soak's namespace.
    #[command(hide = true)]
    SoakChurn {
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        secs: f64,
    },
    /// (bench internal) The connect+close storm, run inside the bench's namespace.
    #[command(hide = true)]
    BenchStorm {
        #[arg(long)]
        threads: usize,
        #[arg(long)]
        secs: f64,
        #[arg(long)]
        max: u64,
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long)]
        v6: bool,
        #[arg(long, default_value_t = 0.0)]
        linger: f64,
        /// Connections a second in all; 0: as fast as it goes.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// (bench internal) Holds connections open until stdin closes.
    #[command(hide = true)]
    BenchHold {
        #[arg(long)]
        conns: u32,
        #[arg(long)]
        id: u8,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup(),
        Task::Run { release, args } => {
            setup()?;
            let bin = build(release)?;
            run_netmon(&bin, &args)
        }
        Task::Test { release, filter } => {
            setup()?;
            test(release, filter.as_deref())
        }
        Task::Bench(args) => {
            setup()?;
            let bin = build(true)?;
            bench::bench(&args, &bin, &target_dir())
        }
        Task::Vm(args) => {
            setup()?;
            if !is_root() {
                bail!(
                    "the VMs are set up with apt and run root tests: run `sudo -E cargo xtask vm`"
                );
            }
            vm::vm(&args, &target_dir())
        }
        Task::BenchStorm {
            threads,
            secs,
            max,
            port,
            v6,
            linger,
            rate,
        } => bench::storm(threads, secs, max, port, v6, linger, rate),
        Task::Soak(args) => {
            setup()?;
            let bin = build(true)?;
            soak::soak(&args, &bin, &target_dir())
        }
        Task::SoakChurn { rate, secs } => soak::churn(rate, secs),
        Task::BenchHold { conns, id } => bench::hold(conns, id),
        Task::Package { check } => {
            setup()?;
            let deb = package::package(&workspace_root(), &target_dir())?;
            println!("{}", deb.display());
            if check {
                package::check(&deb)?;
            }
            Ok(())
        }
        Task::Fuzz { iterations, seed } => {
            setup()?;
            let status = Command::new("cargo")
                .args(["test", "--release", "--package", "netmon", "--lib"])
                .args([
                    "filter::fuzz::tests::fuzz_from_env",
                    "--",
                    "--ignored",
                    "--nocapture",
                ])
                .env("NETMON_FUZZ_ITERATIONS", iterations.to_string())
                .env("NETMON_FUZZ_SEED", seed.to_string())
                .current_dir(workspace_root())
                .status()
                .context("running the fuzz test")?;
            if !status.success() {
                bail!("fuzzing failed ({status})");
            }
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .into()
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn setup() -> Result<()> {
    let start = Instant::now();
    ensure_ebpf_toolchain()?;
    ensure_bpf_linker()?;
    ensure_cargo_deb()?;
    ensure_test_tools()?;
    eprintln!(
        "xtask: set-up complete in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The pinned eBPF toolchain with rust-src (for `-Z build-std=core`) and clippy (for the eBPF
/// crate's lints in `cargo xtask test`).
fn ensure_ebpf_toolchain() -> Result<()> {
    let sysroot = capture(
        "rustup",
        &["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"],
    );
    let sysroot = match sysroot {
        Ok(s) => PathBuf::from(s.trim()),
        Err(_) => {
            // Pinned, never `rustup update`: a newer rustc brings LLVM 23, which the
            // LLVM-22 bpf-linker cannot read ("Invalid record").
            sh(
                "rustup",
                &[
                    "toolchain",
                    "install",
                    EBPF_TOOLCHAIN,
                    "--profile",
                    "minimal",
                ],
            )?;
            PathBuf::from(
                capture(
                    "rustup",
                    &["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"],
                )?
                .trim(),
            )
        }
    };
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        sh(
            "rustup",
            &[
                "component",
                "add",
                "rust-src",
                "--toolchain",
                EBPF_TOOLCHAIN,
            ],
        )?;
    }
    if !sysroot.join("bin/cargo-clippy").exists() {
        sh(
            "rustup",
            &["component", "add", "clippy", "--toolchain", EBPF_TOOLCHAIN],
        )?;
    }
    Ok(())
}

/// Clippy on the eBPF crate, for the bpf target it is built for (the workspace run excludes
/// it: built for the host it fails). A target dir of its own, without debug info (~160 MB).
fn clippy_ebpf() -> Result<()> {
    let toolchain = format!("+{EBPF_TOOLCHAIN}");
    let status = Command::new("cargo")
        .args([
            &toolchain,
            "clippy",
            "--package",
            "netmon-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        // `-Z build-std` on a stable toolchain, as netmon/build.rs builds the program.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", target_dir().join("ebpf-clippy"))
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_INCREMENTAL", "0")
        .current_dir(workspace_root())
        .status()
        .context("running cargo clippy on netmon-ebpf")?;
    if !status.success() {
        bail!("clippy on netmon-ebpf (bpfel-unknown-none) failed ({status})");
    }
    Ok(())
}

fn ensure_bpf_linker() -> Result<()> {
    let installed = capture("bpf-linker", &["--version"]).unwrap_or_default();
    if installed.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    apt_install(APT_BUILD_PACKAGES)?;
    let status = Command::new("cargo")
        .args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        // Without it, llvm-sys finds the distribution's default LLVM (14) and fails to link.
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed ({status})");
    }
    Ok(())
}

fn ensure_cargo_deb() -> Result<()> {
    let installed = capture("cargo", &["deb", "--version"]).unwrap_or_default();
    if installed.contains(package::CARGO_DEB_VERSION) {
        return Ok(());
    }
    sh(
        "cargo",
        &[
            "install",
            "--locked",
            "cargo-deb",
            "--version",
            package::CARGO_DEB_VERSION,
        ],
    )
}

fn ensure_test_tools() -> Result<()> {
    let missing: Vec<&str> = APT_TEST_TOOLS
        .iter()
        .filter(|(tool, _)| capture("which", &[tool]).is_err())
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        apt_install(&missing)
    }
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !capture("dpkg-query", &["-W", "-f=${Status}", p])
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "these packages are missing: {}; run as root or install them",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    sh("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    sh("apt-get", &args)
}

fn build(release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "--package", "netmon"];
    if release {
        args.push("--release");
    }
    sh("cargo", &args)?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join("netmon"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn run_netmon(bin: &Path, args: &[String]) -> Result<()> {
    let mut cmd = if is_root() {
        Command::new(bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg(bin);
        c
    };
    let status = cmd.args(args).status().context("running netmon")?;
    std::process::exit(status.code().unwrap_or(1));
}

fn test(release: bool, filter: Option<&str>) -> Result<()> {
    if !is_root() {
        bail!(
            "the integration tests load eBPF programs into the kernel: run `sudo -E cargo xtask test`"
        );
    }
    let profile: &[&str] = if release { &["--release"] } else { &[] };
    sh("cargo", &["fmt", "--all", "--", "--check"])?;
    let mut clippy = vec![
        "clippy",
        "--workspace",
        "--exclude",
        "netmon-ebpf",
        "--all-targets",
    ];
    clippy.extend(profile);
    clippy.extend(["--", "-D", "warnings"]);
    sh("cargo", &clippy)?;
    clippy_ebpf()?;
    let bin = build(release)?;
    // Unit tests first: no kernel, no root needed.
    let mut unit = vec![
        "test",
        "--package",
        "netmon",
        "--package",
        "netmon-common",
        "--package",
        "xtask",
    ];
    unit.extend(profile);
    sh("cargo", &unit)?;
    // Again as a newcomer runs them: not root, no bpf-linker.
    nonroot::unit_tests_as_nobody(&workspace_root(), &target_dir())?;
    // Integration tests one at a time: each loads its own program, and the counters they
    // check are per program.
    let mut integ = vec!["test", "--package", "netmon-tests"];
    integ.extend(profile);
    integ.extend(["--", "--test-threads=1"]);
    // The .deb, as a test named like the others, so `cargo xtask test package` runs it alone.
    const PACKAGE_TEST: &str = "package_installs_checks_and_removes_cleanly";
    let package_matches = filter.is_none_or(|f| PACKAGE_TEST.contains(f));
    let mut run_integ = true;
    if let Some(f) = filter {
        // A typo must not pass as "0 tests, ok".
        let mut list = integ.clone();
        list.extend(["--list", "--format", "terse", f]);
        let listed = Command::new("cargo")
            .args(&list)
            .env("NETMON_BIN", &bin)
            .current_dir(workspace_root())
            .output()
            .context("listing the integration tests")?;
        if !listed.status.success() {
            bail!(
                "listing the integration tests failed: {}",
                String::from_utf8_lossy(&listed.stderr)
            );
        }
        let matched = count_listed(&String::from_utf8_lossy(&listed.stdout));
        if matched == 0 && !package_matches {
            bail!(
                "no integration test name contains {f:?}; list them with `cargo test -p netmon-tests -- --list`"
            );
        }
        eprintln!("xtask: {matched} integration tests match {f:?}");
        run_integ = matched > 0;
        integ.push(f);
    }
    if run_integ {
        let status = Command::new("cargo")
            .args(&integ)
            .env("NETMON_BIN", &bin)
            .status()
            .context("running cargo test")?;
        if !status.success() {
            bail!("integration tests failed ({status})");
        }
    }
    if package_matches {
        let deb = package::package(&workspace_root(), &target_dir())?;
        let score = package::check(&deb).context(PACKAGE_TEST)?;
        eprintln!("xtask: {PACKAGE_TEST}: ok ({})", score.trim());
    }
    if filter.is_some() {
        eprintln!("xtask: a filter was given: the kernel matrix (cargo xtask vm) is not run");
        return Ok(());
    }
    // Other kernels, after this one passed: the same checks in a VM of each.
    vm::vm(
        &vm::VmArgs {
            kernels: Vec::new(),
            release,
            timeout: vm::DEFAULT_TIMEOUT_SECS,
        },
        &target_dir(),
    )
}

/// Tests in the output of `cargo test -- --list --format terse` (`name: test` lines, one
/// block per test binary).
fn count_listed(list: &str) -> usize {
    list.lines().filter(|l| l.ends_with(": test")).count()
}

fn sh(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn capture(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every Rust file of the workspace opens with a `//!` line saying what it owns.
    #[test]
    fn every_module_opens_with_a_doc_line() {
        fn walk(dir: &Path, missing: &mut Vec<String>, seen: &mut usize) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, missing, seen);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    *seen += 1;
                    let text = std::fs::read_to_string(&path).unwrap();
                    let first = text.lines().next().unwrap_or_default();
                    if !first.starts_with("//! ") || first.len() < 20 {
                        missing.push(format!("{}: {first:?}", path.display()));
                    }
                }
            }
        }
        let root = workspace_root();
        let (mut missing, mut seen) = (Vec::new(), 0);
        for dir in [
            "netmon/src",
            "netmon/build.rs",
            "netmon-common/src",
            "netmon-ebpf/src",
            "xtask/src",
            "tests/src",
            "tests/tests",
        ] {
            let path = root.join(dir);
            if path.is_file() {
                seen += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                if !text.starts_with("//! ") {
                    missing.push(dir.to_owned());
                }
            } else {
                walk(&path, &mut missing, &mut seen);
            }
        }
        assert!(
            seen > 50,
            "only {seen} files found under {}",
            root.display()
        );
        assert!(missing.is_empty(), "no `//!` line first: {missing:#?}");
    }

    #[test]
    fn counts_listed_tests_across_binaries() {
        let list = "cli::watch_exits_0: test\nsnapshot::agent_answers: test\n\
                    tests::bench: benchmark\n";
        assert_eq!(count_listed(list), 2);
        assert_eq!(count_listed(""), 0);
    }
}
