//! The `netmon` binary: parses the command line, runs it, and maps errors to exit codes.
// The library uses the dependencies; this thin binary target sees only a few of them.
#![allow(unused_crate_dependencies)]

use std::process::ExitCode;

fn main() -> ExitCode {
    match netmon::cli::parse().and_then(netmon::cli::run) {
        Ok(()) => ExitCode::SUCCESS,
        // `netmon watch | head`: the reader left; that is a normal end.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<netmon::cli::Rendered>() {
                Some(rendered) => eprintln!("{rendered}"),
                None => eprintln!("netmon: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
