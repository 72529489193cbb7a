//! `nix-instantiate`: evaluate Nix expressions, writing the derivations they hold to the
//! store and printing their paths, or (`--eval`) printing their values.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;

use super::{ArgIter, Common};
use crate::evaluate::{eval_settings, evaluate, Output};
use crate::settings::Settings;
use crate::shell::Shell;

const HELP: &str =
    "Usage: nix-instantiate [--eval [--strict]] [-A ATTR] [-I PATH] (-E EXPR | FILE...)

Evaluate the expression in each FILE (default.nix in a directory, ./default.nix without one)
or given with -E. Without --eval, write the derivations it holds to the store and print
their paths; with --eval, print its value.";

pub fn run(args: &[OsString], shell: &mut Shell) -> Result<ExitCode> {
    let mut it = ArgIter::new("nix-instantiate", args.to_vec());
    let (mut eval, mut strict, mut json) = (false, false, false);
    let mut shared = super::EvalFlags::default();
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
            "--json" => json = true,
            _ if shared.take(&a, &mut it)? => {}
            f => return Err(it.unknown(f)),
        }
    }
    let settings = Settings::load(None, &shared.options, shell)?;
    let inputs = shared.inputs();
    let output = if eval && json {
        Output::Json
    } else if eval {
        Output::Nix { strict }
    } else {
        Output::DrvPaths
    };
    let paths: Vec<Option<&str>> = if shared.attrs.is_empty() {
        vec![None]
    } else {
        shared.attrs.iter().map(|a| Some(a.as_str())).collect()
    };
    for input in &inputs {
        for attr in &paths {
            let text = evaluate(
                input,
                &shared.auto_args,
                *attr,
                false,
                output,
                eval_settings(&shared.include, &settings),
                &settings,
            )?;
            if !text.is_empty() {
                shell.println(text)?;
            }
        }
    }
    if !eval {
        shell.warn("you did not specify '--add-root'; the result might be removed by the garbage collector");
    }
    Ok(ExitCode::SUCCESS)
}
