//! The classic commands (`nix-hash`, `nix-store`), with Nix's own argument conventions.

pub mod nix_build;
pub mod nix_collect_garbage;
pub mod nix_copy_closure;
pub mod nix_hash;
pub mod nix_instantiate;
pub mod nix_store;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::shell::Shell;

/// Whether `arg` is a flag rather than an operand: `-x…` or `--x…` with a letter (as Nix
/// tells them apart, so that `-E '-(-3)'` is an expression).
pub fn is_flag(arg: &str) -> bool {
    let rest = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'));
    rest.is_some_and(|r| r.starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// What a flag every classic command shares did.
#[derive(Debug)]
pub enum Common {
    /// `--help` or `--version`: the command is done.
    Exit(ExitCode),
    /// An accepted-and-ignored flag (with its value) was consumed.
    Consumed,
    /// Not a shared flag; the command handles it.
    Other,
}

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

    /// A build flag ([`crate::build::build_flag`]) as the setting it stands for, with its
    /// value taken from the arguments when it has one; `None` for any other flag.
    pub fn build_option(&mut self, flag: &str) -> Result<Option<crate::settings::CliSetting>> {
        let Some((name, takes_value)) = crate::build::build_flag(flag) else {
            return Ok(None);
        };
        let v = if takes_value {
            self.value(flag)?
        } else {
            "true".into()
        };
        Ok(Some(crate::settings::CliSetting::flag(flag, name, v)))
    }

    /// `--help`, `--version`, and the flags Nix scripts pass that Ferrix ignores.
    pub fn common(&mut self, flag: &str, help: &str, shell: &mut Shell) -> Result<Common> {
        match flag {
            "--help" => shell.println(help)?,
            "--version" => shell.println(format!(
                "{} (Ferrix) {}",
                self.cmd,
                env!("CARGO_PKG_VERSION")
            ))?,
            "--extra-experimental-features" | "--experimental-features" => {
                self.value(flag)?;
                return Ok(Common::Consumed);
            }
            _ => return Ok(Common::Other),
        }
        Ok(Common::Exit(ExitCode::SUCCESS))
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

/// The flags `nix-instantiate` and `nix-build` share: where the expression comes from, the
/// search path, attributes to select, arguments for a function, settings.
#[derive(Debug, Default)]
pub struct EvalFlags {
    pub from_expr: bool,
    pub include: Vec<String>,
    pub attrs: Vec<String>,
    pub auto_args: crate::evaluate::Args,
    pub options: Vec<crate::settings::CliSetting>,
    pub operands: Vec<OsString>,
    /// `--readonly-mode` (true) or `--read-write-mode` (false), if given.
    pub read_only: Option<bool>,
}

impl EvalFlags {
    /// Take `arg` (and the values it needs from `it`) if it is one of these flags or an
    /// operand; `false` for a flag of the command's own.
    pub fn take(&mut self, arg: &OsString, it: &mut ArgIter) -> Result<bool> {
        let flag = arg.to_str().unwrap_or("");
        match flag {
            "-E" | "--expr" => self.from_expr = true,
            "-I" => self.include.push(it.value(flag)?),
            // What was being evaluated is always shown with an error.
            "--show-trace" => {}
            "-A" | "--attr" => self.attrs.push(it.value(flag)?),
            "--arg" => {
                let name = it.value(flag)?;
                let e = ferrix_eval::AutoArg::Expr(it.value(flag)?);
                self.auto_args.push((name, e));
            }
            "--argstr" => {
                let name = it.value(flag)?;
                let s = ferrix_eval::AutoArg::Str(it.value(flag)?);
                self.auto_args.push((name, s));
            }
            "--option" => {
                let name = it.value(flag)?;
                let v = it.value(flag)?;
                self.options
                    .push(crate::settings::CliSetting::option(name, v));
            }
            "--readonly-mode" => self.read_only = Some(true),
            "--read-write-mode" => self.read_only = Some(false),
            // Build options, as every Nix command takes them (they govern the builds an
            // evaluation may need: import from derivation).
            f if crate::build::build_flag(f).is_some() => {
                self.options.extend(it.build_option(f)?);
            }
            "--" => self.operands.extend(it.by_ref()),
            f if is_flag(f) => return Ok(false),
            _ => self.operands.push(arg.clone()),
        }
        Ok(true)
    }

    /// The expressions to evaluate: each `-E` operand, each file, or `./default.nix`.
    pub fn inputs(&self) -> Vec<crate::evaluate::Input> {
        use crate::evaluate::Input;
        if self.from_expr {
            self.operands
                .iter()
                .map(|o| Input::Expr(o.to_string_lossy().into_owned()))
                .collect()
        } else if self.operands.is_empty() {
            vec![Input::File(std::path::PathBuf::from("."))]
        } else {
            self.operands
                .iter()
                .map(|o| match o.to_str() {
                    Some("-") => Input::Stdin,
                    _ => Input::File(std::path::PathBuf::from(o)),
                })
                .collect()
        }
    }
}
