//! `nix-build`: instantiate, then build what was instantiated through the Engine, link the
//! results (`result`, or `-o`) and print the output paths.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{ArgIter, Common};
use crate::evaluate::Input;
use crate::settings::{CliSetting, Settings};
use crate::shell::Shell;

const HELP: &str = "Usage: nix-build [-A ATTR] [-o LINK | --no-out-link] [-I PATH] [-j N] [-k] [-K] (-E EXPR | FILE...)

Evaluate the expression in each FILE (default.nix in a directory, ./default.nix without one)
or given with -E, build the derivations it holds, link the results and print their paths.";

pub fn run(args: &[OsString], shell: &mut Shell) -> Result<ExitCode> {
    let mut it = ArgIter::new("nix-build", args.to_vec());
    let mut from_expr = false;
    let mut include = Vec::new();
    let mut attrs: Vec<String> = Vec::new();
    let mut auto_args = crate::evaluate::Args::new();
    let mut options = Vec::new();
    let mut out_link = Some(PathBuf::from("result"));
    let mut flags: Vec<String> = Vec::new();
    let mut operands: Vec<OsString> = Vec::new();
    while let Some(a) = it.next() {
        let flag = a.to_str().unwrap_or("");
        match it.common(flag, HELP, shell)? {
            Common::Exit(code) => return Ok(code),
            Common::Consumed => continue,
            Common::Other => {}
        }
        match flag {
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
            "-o" | "--out-link" => out_link = Some(PathBuf::from(it.value(flag)?)),
            "--no-out-link" => out_link = None,
            "-j" | "--max-jobs" | "--cores" | "--max-silent-time" | "--timeout" => {
                flags.push(flag.to_owned());
                flags.push(it.value(flag)?);
            }
            "-k" | "--keep-going" | "-K" | "--keep-failed" | "--fallback" | "--offline" | "-L"
            | "--print-build-logs" | "--check" | "--repair" => flags.push(flag.to_owned()),
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
    let mut installables = Vec::new();
    for input in &inputs {
        installables.extend(crate::cmd::build::instantiate(
            input, &auto_args, &include, &attrs, &settings,
        )?);
    }
    let args = crate::cmd::build::Args::for_nix_build(installables, out_link, &flags)?;
    crate::cmd::build::run(args, &settings, shell)
}
