//! The agent's config file (`/etc/netmon/agent.toml`, then `agent.d/*.toml`) turned into flags.
//!
//! Each key is a long flag of `netmon agent` without its dashes (`ring-size = 8388608`), so the
//! file can set whatever the flags set and clap checks the values in one place. The flags come
//! before the command line's, and the last occurrence of a flag wins: flags given by hand win.

use std::path::{Path, PathBuf};

/// Where the agent looks when `--config` is not given; a missing file there is not an error.
pub const DEFAULT_CONFIG: &str = "/etc/netmon/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: unknown key `{key}`; the keys are the agent's long flags: {known}")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("{path}: `{key}` {problem}")]
    Value {
        path: PathBuf,
        key: String,
        problem: &'static str,
    },
}

/// A flag the file may set: its long name and whether it takes a value (or is a switch).
#[derive(Clone, Copy, Debug)]
pub struct Flag<'a> {
    pub long: &'a str,
    pub takes_value: bool,
}

/// The files read, in order: `config` (if it exists, or if `required`), then the `*.toml` files
/// of the drop-in directory beside it (`agent.toml` -> `agent.d/`), sorted by name.
pub fn files(config: &Path, required: bool) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    if required || config.exists() {
        files.push(config.to_owned());
    }
    let dir = config.with_extension("d");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut dropins: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
                .collect();
            dropins.sort();
            files.extend(dropins);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ConfigError::Read { path: dir, source }),
    }
    Ok(files)
}

/// Reads `paths` in order and returns their settings as flags (`--ring-size=8388608`).
pub fn load(paths: &[PathBuf], flags: &[Flag]) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        out.extend(to_flags(path, &text, flags)?);
    }
    Ok(out)
}

/// One file's text as flags, by key name (a key appears once in a file, so order is moot).
pub fn to_flags(path: &Path, text: &str, flags: &[Flag]) -> Result<Vec<String>, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(flag) = flags.iter().find(|f| f.long == key) else {
            let known = flags.iter().map(|f| f.long).collect::<Vec<_>>().join(", ");
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key,
                known,
            });
        };
        let problem = |problem| ConfigError::Value {
            path: path.to_owned(),
            key: key.clone(),
            problem,
        };
        match (value, flag.takes_value) {
            (toml::Value::Boolean(true), false) => out.push(format!("--{key}")),
            (toml::Value::Boolean(false), false) => {}
            (_, false) => return Err(problem("is a switch: write true or false")),
            (toml::Value::String(s), true) => out.push(format!("--{key}={s}")),
            (toml::Value::Integer(n), true) => out.push(format!("--{key}={n}")),
            (_, true) => return Err(problem("takes a string or a whole number")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[
        Flag {
            long: "socket",
            takes_value: true,
        },
        Flag {
            long: "ring-size",
            takes_value: true,
        },
        Flag {
            long: "verbose",
            takes_value: false,
        },
    ];

    fn flags(text: &str) -> Result<Vec<String>, ConfigError> {
        to_flags(Path::new("/etc/netmon/agent.toml"), text, FLAGS)
    }

    #[test]
    fn keys_become_long_flags() {
        let text = "# comment\nsocket = \"/run/x.sock\"\nring-size = 65536\nverbose = true\n";
        assert_eq!(
            flags(text).unwrap(),
            ["--ring-size=65536", "--socket=/run/x.sock", "--verbose"]
        );
        assert!(flags("verbose = false").unwrap().is_empty());
        assert!(flags("").unwrap().is_empty());
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let e = flags("ring_size = 1").unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/netmon/agent.toml: unknown key `ring_size`; the keys are the agent's long \
             flags: socket, ring-size, verbose"
        );
        let e = flags("verbose = 1").unwrap_err().to_string();
        assert!(
            e.ends_with("`verbose` is a switch: write true or false"),
            "{e}"
        );
        let e = flags("ring-size = [1]").unwrap_err().to_string();
        assert!(e.ends_with("takes a string or a whole number"), "{e}");
        let e = flags("socket = ").unwrap_err();
        assert_eq!(e.to_string(), "/etc/netmon/agent.toml is not valid TOML");
    }

    #[test]
    fn drop_ins_follow_the_file_in_name_order() {
        let dir = std::env::temp_dir().join(format!("netmon-config-{}", std::process::id()));
        let dropins = dir.join("agent.d");
        std::fs::create_dir_all(&dropins).unwrap();
        let config = dir.join("agent.toml");
        std::fs::write(&config, "ring-size = 4096\n").unwrap();
        std::fs::write(dropins.join("20-b.toml"), "ring-size = 16384\n").unwrap();
        std::fs::write(dropins.join("10-a.toml"), "ring-size = 8192\n").unwrap();
        std::fs::write(dropins.join("README"), "not toml").unwrap();
        let found = files(&config, false).unwrap();
        assert_eq!(
            found,
            [
                config.clone(),
                dropins.join("10-a.toml"),
                dropins.join("20-b.toml")
            ]
        );
        assert_eq!(
            load(&found, FLAGS).unwrap(),
            ["--ring-size=4096", "--ring-size=8192", "--ring-size=16384"]
        );
        std::fs::remove_file(&config).unwrap();
        assert_eq!(
            files(&config, false).unwrap().len(),
            2,
            "no file, drop-ins still read"
        );
        assert!(matches!(
            load(&files(&config, true).unwrap(), FLAGS),
            Err(ConfigError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
