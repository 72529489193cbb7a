//! `nix-instantiate`: evaluate Nix expressions, writing the derivations they hold to the
//! store and printing their paths, or (`--eval`) printing their values.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{ArgIter, Common};
use crate::evaluate::{eval_settings, evaluate, Input, Output};
use crate::settings::{CliSetting, Settings};
use crate::shell::Shell;

const HELP: &str =
    "Usage: nix-instantiate [--eval [--strict]] [-A ATTR] [-I PATH] (-E EXPR | FILE...)

Evaluate the expression in each FILE (default.nix in a directory, ./default.nix without one)
or given with -E. Without --eval, write the derivations it holds to the store and print
their paths; with --eval, print its value.";

pub fn run(args: &[OsString], shell: &mut Shell) -> Result<ExitCode> {
    let mut it = ArgIter::new("nix-instantiate", args.to_vec());
    let (mut eval, mut strict, mut from_expr, mut json) = (false, false, false, false);
    let mut include = Vec::new();
    let mut attrs: Vec<String> = Vec::new();
    let mut auto_args = crate::evaluate::Args::new();
    let mut options = Vec::new();
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
            "--json" => json = true,
            "-E" | "--expr" => from_expr = true,
            "-I" => include.push(it.value(flag)?),
            // What was being evaluated is always shown with an error.
            "--show-trace" => {}
            "-A" | "--attr" => attrs.push(it.value(flag)?),
            "--arg" => {
                let name = it.value(flag)?;
                auto_args.push((name, ferrix_eval::AutoArg::Expr(it.value(flag)?)));
            }
            "--argstr" => {
                let name = it.value(flag)?;
                auto_args.push((name, ferrix_eval::AutoArg::Str(it.value(flag)?)));
            }
            "--option" => {
                let name = it.value(flag)?;
                options.push(CliSetting::option(name, it.value(flag)?));
            }
            "--" => operands.extend(it.by_ref()),
            f if super::is_flag(f) => return Err(it.unknown(f)),
            _ => operands.push(a),
        }
    }
    let settings = Settings::load(None, &options, shell)?;
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
    let output = if eval && json {
        Output::Json
    } else if eval {
        Output::Nix { strict }
    } else {
        Output::DrvPaths
    };
    let paths: Vec<Option<&str>> = if attrs.is_empty() {
        vec![None]
    } else {
        attrs.iter().map(|a| Some(a.as_str())).collect()
    };
    for input in &inputs {
        for attr in &paths {
            let text = evaluate(
                input,
                &auto_args,
                *attr,
                false,
                output,
                eval_settings(&include, &settings),
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
