//! `nix-build`: instantiate, then build what was instantiated through the Engine, link the
//! results (`result`, or `-o`) and print the output paths.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{ArgIter, Common};
use crate::settings::Settings;
use crate::shell::Shell;

const HELP: &str = "Usage: nix-build [-A ATTR] [-o LINK | --no-out-link] [-I PATH] [-j N] [-k] [-K] (-E EXPR | FILE...)

Evaluate the expression in each FILE (default.nix in a directory, ./default.nix without one)
or given with -E, build the derivations it holds, link the results and print their paths.";

pub fn run(args: &[OsString], shell: &mut Shell) -> Result<ExitCode> {
    let mut it = ArgIter::new("nix-build", args.to_vec());
    let mut shared = super::EvalFlags::default();
    let mut out_link = Some(PathBuf::from("result"));
    let mut flags: Vec<String> = Vec::new();
    while let Some(a) = it.next() {
        let flag = a.to_str().unwrap_or("");
        match it.common(flag, HELP, shell)? {
            Common::Exit(code) => return Ok(code),
            Common::Consumed => continue,
            Common::Other => {}
        }
        match flag {
            "-o" | "--out-link" => out_link = Some(PathBuf::from(it.value(flag)?)),
            "--no-out-link" => out_link = None,
            "-j" | "--max-jobs" | "--cores" | "--max-silent-time" | "--timeout" => {
                flags.push(flag.to_owned());
                flags.push(it.value(flag)?);
            }
            "-k" | "--keep-going" | "-K" | "--keep-failed" | "--fallback" | "--offline" | "-L"
            | "--print-build-logs" | "--check" | "--repair" => flags.push(flag.to_owned()),
            _ if shared.take(&a, &mut it)? => {}
            f => return Err(it.unknown(f)),
        }
    }
    if shared.read_only == Some(true) {
        anyhow::bail!("nix-build cannot build in read-only mode (--readonly-mode): nothing may be written to the store");
    }
    let settings = Settings::load(None, &shared.options, shell)?;
    let mut installables = Vec::new();
    for input in &shared.inputs() {
        installables.extend(crate::cmd::build::instantiate(
            input,
            &shared.auto_args,
            &shared.include,
            &shared.attrs,
            &settings,
        )?);
    }
    let args = crate::cmd::build::Args::for_nix_build(installables, out_link, &flags)?;
    crate::cmd::build::run(args, &settings, shell)
}
