//! The classic commands (`nix-hash`, `nix-store`), with Nix's own argument conventions.

pub mod nix_hash;
pub mod nix_store;

use std::ffi::OsString;

use anyhow::{bail, Result};

/// Arguments as Nix's classic commands take them: flags and their values in order.
#[derive(Debug)]
pub struct ArgIter {
    args: std::vec::IntoIter<String>,
    cmd: &'static str,
}

impl ArgIter {
    pub fn new(cmd: &'static str, args: &[OsString]) -> Result<Self> {
        let mut v = Vec::with_capacity(args.len());
        for a in args {
            match a.to_str() {
                Some(s) => v.push(s.to_owned()),
                None => bail!(
                    "{cmd}: argument '{}' is not valid UTF-8",
                    a.to_string_lossy()
                ),
            }
        }
        Ok(Self {
            args: v.into_iter(),
            cmd,
        })
    }

    /// The value after a flag such as `--type`.
    pub fn value(&mut self, flag: &str) -> Result<String> {
        match self.args.next() {
            Some(v) => Ok(v),
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
    type Item = String;
    fn next(&mut self) -> Option<String> {
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
