//! TCP service names (/etc/services) to ports and back.

use std::collections::HashMap;

/// TCP service names and aliases to ports, as `getservbyname(name, "tcp")` resolves them for ss.
#[derive(Clone, Debug, Default)]
pub struct Services {
    by_name: HashMap<String, u16>,
    /// Port to its first name, as getservbyport(port, "tcp") gives ss without `-n`.
    by_port: HashMap<u16, String>,
}

impl Services {
    /// Parses services(5) text (`name port/proto [alias...] [# comment]`), keeping tcp entries;
    /// the first entry for a name wins, as with getservbyname.
    pub fn from_text(text: &str) -> Self {
        let mut ports = HashMap::new();
        let mut by_port = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((port, "tcp")) = port_proto.split_once('/') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            by_port.entry(port).or_insert_with(|| name.to_owned());
            for alias in std::iter::once(name).chain(fields) {
                ports.entry(alias.to_owned()).or_insert(port);
            }
        }
        Self {
            by_name: ports,
            by_port,
        }
    }

    /// The service name of a TCP port, if /etc/services has one.
    pub fn name(&self, port: u16) -> Option<&str> {
        self.by_port.get(&port).map(String::as_str)
    }

    /// Reads /etc/services.
    pub fn system() -> std::io::Result<Self> {
        std::fs::read_to_string("/etc/services").map(|text| Self::from_text(&text))
    }

    pub(super) fn port(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }
}
