//! The classic commands (`nix-hash`, `nix-store`), with Nix's own argument conventions.

pub mod nix_hash;
pub mod nix_store;

use std::ffi::OsString;

use anyhow::{bail, Result};

/// Arguments as Nix's classic commands take them: flags and their values in order.
/// Operands stay `OsString`, so paths need not be UTF-8.
#[derive(Debug)]
pub struct ArgIter {
    args: std::vec::IntoIter<OsString>,
    cmd: &'static str,
}

impl ArgIter {
    pub fn new(cmd: &'static str, args: Vec<OsString>) -> Self {
        Self {
            args: args.into_iter(),
            cmd,
        }
    }

    /// The value after a flag such as `--type`, as text.
    pub fn value(&mut self, flag: &str) -> Result<String> {
        match self.args.next() {
            Some(v) => match v.into_string() {
                Ok(s) => Ok(s),
                Err(v) => bail!(
                    "the value '{}' of '{flag}' is not valid UTF-8",
                    v.to_string_lossy()
                ),
            },
            None => bail!(
                "flag '{flag}' requires an argument\nTry '{} --help' for more information.",
                self.cmd
            ),
        }
    }

    pub fn unknown(&self, flag: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "unrecognised flag '{flag}'\nTry '{} --help' for more information.",
            self.cmd
        )
    }
}

impl Iterator for ArgIter {
    type Item = OsString;
    fn next(&mut self) -> Option<OsString> {
        self.args.next()
    }
}

/// Flags every Nix command accepts and Ferrix ignores (all features are always on).
pub fn is_ignored_flag(flag: &str) -> bool {
    matches!(
        flag,
        "--extra-experimental-features" | "--experimental-features"
    )
}
