//! Build machines as Nix describes them (`builders`, `/etc/nix/machines`): one per line,
//! columns URI, systems, ssh identity, max jobs, speed factor, supported features,
//! mandatory features, base64 host key; `-` or a missing column leaves the default.

use std::collections::BTreeSet;
use std::path::PathBuf;

use thiserror::Error;

/// One build machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The store URI: `ssh://[user@]host[?params]`, `ssh-ng://…`.
    pub uri: String,
    /// Platforms it builds for.
    pub systems: BTreeSet<String>,
    /// `-i` for ssh.
    pub ssh_key: Option<PathBuf>,
    pub max_jobs: usize,
    /// How much faster than a machine of factor 1 (at least 1).
    pub speed_factor: u32,
    pub supported_features: BTreeSet<String>,
    /// Features a derivation must ask for to be built here.
    pub mandatory_features: BTreeSet<String>,
    /// The host's public key (decoded from base64: a known_hosts line's key part).
    pub host_key: Option<String>,
}

/// A line of a machines specification that could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MachineError {
    #[error("bad machine specification '{line}': column #{column} ('{value}') is not {what}")]
    BadColumn {
        line: String,
        column: usize,
        value: String,
        what: &'static str,
    },
    #[error("bad machine specification '{line}': it has {columns} columns, at most 8 are allowed")]
    TooManyColumns { line: String, columns: usize },
    #[error("machines file '{file}' includes itself (through '{via}')")]
    IncludeLoop { file: String, via: String },
}

impl Machine {
    /// Whether it can build a derivation for `system` requiring `features` (Nix's rule:
    /// the system is one of its own, or `builtin`; every required feature is supported or
    /// mandatory; every mandatory feature is required).
    pub fn fits(&self, system: &str, features: &BTreeSet<String>) -> bool {
        (system == "builtin" || self.systems.contains(system))
            && features
                .iter()
                .all(|f| self.supported_features.contains(f) || self.mandatory_features.contains(f))
            && self.mandatory_features.iter().all(|f| features.contains(f))
    }

    /// All features, supported and mandatory (what the machine's own `system-features` are).
    pub fn features(&self) -> BTreeSet<String> {
        self.supported_features
            .union(&self.mandatory_features)
            .cloned()
            .collect()
    }

    /// Parse one line (already stripped of comments). `local_system` is the default system.
    pub fn parse_line(line: &str, local_system: &str) -> Result<Machine, MachineError> {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() > 8 {
            return Err(MachineError::TooManyColumns {
                line: line.into(),
                columns: cols.len(),
            });
        }
        let col = |i: usize| cols.get(i).copied().filter(|c| *c != "-");
        let set = |i: usize| -> BTreeSet<String> {
            col(i)
                .map(|c| {
                    c.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let bad = |i: usize, what: &'static str| MachineError::BadColumn {
            line: line.into(),
            column: i + 1,
            value: cols.get(i).copied().unwrap_or_default().into(),
            what,
        };
        let uint = |i: usize, default: u64| -> Result<u64, MachineError> {
            match col(i) {
                None => Ok(default),
                Some(c) => c.parse().map_err(|_| bad(i, "an unsigned integer")),
            }
        };
        let uri = cols.first().copied().unwrap_or_default();
        let uri = if uri.contains("://")
            || uri.contains('/')
            || ["auto", "daemon", "local"].contains(&uri.split('?').next().unwrap_or_default())
        {
            uri.to_owned()
        } else {
            format!("ssh://{uri}")
        };
        let mut systems = set(1);
        if systems.is_empty() {
            systems.insert(local_system.to_owned());
        }
        let host_key = match col(7) {
            None => None,
            Some(b64) => {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| bad(7, "valid base64"))?;
                Some(String::from_utf8(bytes).map_err(|_| bad(7, "a base64 encoded host key"))?)
            }
        };
        Ok(Machine {
            uri,
            systems,
            ssh_key: col(2).map(PathBuf::from),
            max_jobs: usize::try_from(uint(3, 1)?).unwrap_or(usize::MAX),
            speed_factor: u32::try_from(uint(4, 1)?)
                .map_err(|_| bad(4, "a speed factor"))?
                .max(1),
            supported_features: set(5),
            mandatory_features: set(6),
            host_key,
        })
    }
}

/// Parse a machines specification: lines separated by newlines or `;`, `#` starting a
/// comment, `@FILE` including a file (`read` gives its text, `None` when it does not exist,
/// which Nix ignores).
pub fn parse_machines(
    spec: &str,
    local_system: &str,
    read: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<Vec<Machine>, MachineError> {
    let mut out = Vec::new();
    let mut stack = Vec::new();
    parse_into(spec, local_system, read, &mut stack, &mut out)?;
    Ok(out)
}

fn parse_into(
    spec: &str,
    local_system: &str,
    read: &mut dyn FnMut(&str) -> Option<String>,
    stack: &mut Vec<String>,
    out: &mut Vec<Machine>,
) -> Result<(), MachineError> {
    for line in spec.split(['\n', ';']) {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if let Some(file) = line.strip_prefix('@') {
            let file = file.trim();
            if stack.iter().any(|f| f == file) {
                return Err(MachineError::IncludeLoop {
                    file: file.into(),
                    via: stack.last().cloned().unwrap_or_default(),
                });
            }
            if let Some(text) = read(file) {
                stack.push(file.to_owned());
                parse_into(&text, local_system, read, stack, out)?;
                stack.pop();
            }
            continue;
        }
        out.push(Machine::parse_line(line, local_system)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn columns_and_defaults() {
        let key = "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUE=";
        let m = parse_machines(
            &format!("nix@a x86_64-linux,i686-linux /k 4 2 kvm,big big {key}\n# c\n\nb - - - 0; ssh-ng://c"),
            "x86_64-linux",
            &mut none,
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].uri, "ssh://nix@a");
        assert_eq!(m[0].systems.len(), 2);
        assert_eq!(m[0].ssh_key, Some(PathBuf::from("/k")));
        assert_eq!((m[0].max_jobs, m[0].speed_factor), (4, 2));
        assert!(m[0].supported_features.contains("kvm"));
        assert_eq!(
            m[0].host_key.as_deref(),
            Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA")
        );
        assert_eq!(m[1].uri, "ssh://b");
        assert_eq!((m[1].max_jobs, m[1].speed_factor), (1, 1));
        assert_eq!(m[1].systems, ["x86_64-linux".to_owned()].into());
        assert_eq!(m[2].uri, "ssh-ng://c");
    }

    #[test]
    fn includes_and_loops() {
        let mut files = |f: &str| match f {
            "/a" => Some("x\n@/b".to_owned()),
            "/b" => Some("y".to_owned()),
            "/loop" => Some("@/loop".to_owned()),
            _ => None,
        };
        let m = parse_machines("@/a ; @/missing", "s", &mut files).unwrap();
        assert_eq!(
            m.iter().map(|m| m.uri.as_str()).collect::<Vec<_>>(),
            ["ssh://x", "ssh://y"]
        );
        assert!(matches!(
            parse_machines("@/loop", "s", &mut files),
            Err(MachineError::IncludeLoop { .. })
        ));
    }

    #[test]
    fn bad_columns_are_named() {
        let e = Machine::parse_line("h x86_64-linux - many", "s").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad machine specification 'h x86_64-linux - many': column #4 ('many') is not an unsigned integer"
        );
        assert!(Machine::parse_line("h - - - - - - !!!", "s").is_err());
        assert!(Machine::parse_line("a b c d e f g h i", "s").is_err());
    }

    #[test]
    fn fitting() {
        let m = Machine::parse_line("h x86_64-linux - 1 1 kvm,big gpu", "s").unwrap();
        let f = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
        assert!(m.fits("x86_64-linux", &f(&["gpu"])));
        assert!(m.fits("x86_64-linux", &f(&["gpu", "kvm"])));
        assert!(!m.fits("x86_64-linux", &f(&[])), "gpu is mandatory");
        assert!(!m.fits("x86_64-linux", &f(&["gpu", "cuda"])));
        assert!(!m.fits("aarch64-linux", &f(&["gpu"])));
        assert!(m.fits("builtin", &f(&["gpu"])));
    }
}
