//! `nix-instantiate`: evaluate Nix expressions (`--eval`); instantiating derivations comes
//! with `derivation`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use super::{ArgIter, Common};
use crate::evaluate::{evaluate, settings, Input, Output};
use crate::shell::Shell;

const HELP: &str = "Usage: nix-instantiate --eval [--strict] [-I PATH] (-E EXPR | FILE)

Evaluate the expression in FILE (default.nix in a directory, ./default.nix without one)
or given with -E, and print its value.";

pub fn run(args: &[OsString], shell: &mut Shell) -> Result<ExitCode> {
    let mut it = ArgIter::new("nix-instantiate", args.to_vec());
    let (mut eval, mut strict, mut from_expr) = (false, false, false);
    let mut include = Vec::new();
    let mut operands: Vec<OsString> = Vec::new();
    while let Some(a) = it.next() {
        let flag = a.to_str().unwrap_or("");
        match it.common(flag, HELP, shell)? {
            Common::Exit(code) => return Ok(code),
            Common::Consumed => continue,
            Common::Other => {}
        }
        match flag {
            "--eval" | "--eval-only" => eval = true,
            "--strict" => strict = true,
            "-E" | "--expr" => from_expr = true,
            "-I" => include.push(it.value(flag)?),
            "--" => operands.extend(it.by_ref()),
            f if f.starts_with('-') && f.len() > 1 => return Err(it.unknown(f)),
            _ => operands.push(a),
        }
    }
    if !eval {
        bail!("instantiating derivations is not available yet: only 'nix-instantiate --eval' is");
    }
    let inputs: Vec<Input> = if from_expr {
        operands
            .iter()
            .map(|o| Input::Expr(o.to_string_lossy().into_owned()))
            .collect()
    } else if operands.is_empty() {
        vec![Input::File(PathBuf::from("."))]
    } else {
        operands
            .iter()
            .map(|o| Input::File(PathBuf::from(o)))
            .collect()
    };
    for input in &inputs {
        let text = evaluate(input, Output::Nix { strict }, settings(&include))?;
        shell.println(text)?;
    }
    Ok(ExitCode::SUCCESS)
}
