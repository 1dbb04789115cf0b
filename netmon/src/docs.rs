//! Man pages and shell completions, generated from the clap definitions of [`crate::cli`].

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// netmon(1) and one page per visible subcommand: netmon-watch(1), netmon-snapshot(1),
/// netmon-top(1), and netmon-agent(8), in section 8 because it is a daemon an administrator
/// runs. Each comes with
/// its path under a man directory (`man1/netmon.1`).
pub fn man_pages() -> Vec<(PathBuf, clap_mangen::Man)> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![page(cmd.clone(), "1")];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let section = if sub.get_name() == "agent" { "8" } else { "1" };
        pages.push(page(sub.clone(), section));
    }
    pages
}

fn page(cmd: clap::Command, section: &str) -> (PathBuf, clap_mangen::Man) {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned();
    let man = clap_mangen::Man::new(cmd)
        .title(name.to_uppercase())
        .section(section)
        .manual("netmon");
    let path = PathBuf::from(format!("man{section}")).join(format!("{name}.{section}"));
    (path, man)
}

/// Writes every page under `dir` (`dir/man1/netmon.1`, ..., `dir/man8/netmon-agent.8`) and
/// returns the paths written.
pub fn write_man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (relative, man) in man_pages() {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = io::BufWriter::new(std::fs::File::create(&path)?);
        man.render(&mut file)?;
        file.flush()?;
        written.push(path);
    }
    Ok(written)
}

/// The completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "netmon", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_per_command_the_agent_in_section_8() {
        let names: Vec<String> = man_pages()
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "man1/netmon.1",
                "man1/netmon-watch.1",
                "man1/netmon-snapshot.1",
                "man8/netmon-agent.8",
                "man1/netmon-features.1",
                "man1/netmon-top.1"
            ]
        );
    }

    #[test]
    fn pages_are_roff_with_title_synopsis_and_options() {
        for (path, man) in man_pages() {
            let mut out = Vec::new();
            man.render(&mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            let name = path.file_stem().unwrap().to_str().unwrap().to_uppercase();
            assert!(text.starts_with(".ie \\n(.g .ds Aq"), "{path:?}");
            assert!(text.contains(&format!(".TH {name} ")), "{path:?}: {text}");
            assert!(text.contains(".SH SYNOPSIS"), "{path:?}");
        }
    }

    #[test]
    fn hidden_commands_get_no_page_and_the_agent_page_names_its_files() {
        let pages = man_pages();
        assert!(
            pages
                .iter()
                .all(|(p, _)| !p.to_string_lossy().contains("completions"))
        );
        let (_, agent) = pages
            .iter()
            .find(|(p, _)| p.ends_with("netmon-agent.8"))
            .unwrap();
        let mut out = Vec::new();
        agent.render(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("/etc/netmon/agent.toml"), "{text}");
        assert!(text.contains("LISTEN_FDS"), "{text}");
    }

    #[test]
    fn completions_name_the_subcommands_in_every_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            for word in ["watch", "snapshot", "agent", "top"] {
                assert!(text.contains(word), "{shell:?} completion lacks {word}");
            }
        }
    }
}
