//! `nix.conf`: `name = value` lines, `#` comments, `include`/`!include`, later lines winning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Settings read from configuration files, by name.
#[derive(Debug, Clone, Default)]
pub struct NixConf {
    values: BTreeMap<String, String>,
}

impl NixConf {
    /// Read `file` if it exists (a missing file is an empty configuration).
    pub fn load(&mut self, file: &Path) -> Result<()> {
        self.load_inner(file, true, 0)
    }

    fn load_inner(&mut self, file: &Path, optional: bool, depth: u32) -> Result<()> {
        if depth > 16 {
            bail!("'{}': includes nest too deeply", file.display());
        }
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading '{}'", file.display())),
        };
        self.parse(&text, file, depth)
    }

    fn parse(&mut self, text: &str, file: &Path, depth: u32) -> Result<()> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if matches!(words[0], "include" | "!include") {
                if words.len() != 2 {
                    bail!(
                        "{}:{}: syntax error in configuration line '{raw}'",
                        file.display(),
                        i + 1
                    );
                }
                let inc = PathBuf::from(words[1]);
                let inc = if inc.is_absolute() {
                    inc
                } else {
                    file.parent().unwrap_or(Path::new(".")).join(inc)
                };
                self.load_inner(&inc, words[0] == "!include", depth + 1)?;
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                bail!(
                    "{}:{}: syntax error in configuration line '{raw}'",
                    file.display(),
                    i + 1
                );
            };
            let name = name.trim();
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            if let Some(base) = name.strip_prefix("extra-") {
                let e = self.values.entry(base.to_owned()).or_default();
                if !e.is_empty() {
                    e.push(' ');
                }
                e.push_str(&value);
            } else {
                self.values.insert(name.to_owned(), value);
            }
        }
        Ok(())
    }

    /// `--option NAME VALUE` and the like, over what the files said.
    pub fn set(&mut self, name: &str, value: &str) {
        self.values.insert(name.to_owned(), value.to_owned());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A boolean setting (`true`/`false`), or `default`.
    pub fn bool(&self, name: &str, default: bool) -> Result<bool> {
        match self.get(name) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => {
                bail!("configuration setting '{name}' should be 'true' or 'false', not '{v}'")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_nix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("extra.conf"), "keep-outputs = true\n").unwrap();
        let main = dir.path().join("nix.conf");
        std::fs::write(
            &main,
            "# comment\nsandbox = false  # trailing\nsubstituters =\ninclude extra.conf\n!include missing.conf\nextra-substituters = a\nextra-substituters = b\n",
        )
        .unwrap();
        let mut c = NixConf::default();
        c.load(&main).unwrap();
        assert_eq!(c.get("sandbox"), Some("false"));
        assert_eq!(c.get("substituters"), Some("a b"));
        assert!(c.bool("keep-outputs", false).unwrap());
        assert!(c.bool("keep-derivations", true).unwrap());
        std::fs::write(&main, "include missing.conf\n").unwrap();
        assert!(NixConf::default().load(&main).is_err());
        std::fs::write(&main, "what\n").unwrap();
        assert!(NixConf::default().load(&main).is_err());
    }
}
