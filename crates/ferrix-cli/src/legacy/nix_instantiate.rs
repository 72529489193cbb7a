//! `nix-instantiate`: evaluate Nix expressions, writing the derivations they hold to the
//! store and printing their paths, or (`--eval`) printing their values.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;

use super::{ArgIter, Common};
use crate::evaluate::{eval_settings, evaluate, Output, ReadOnly, Request};
use crate::settings::Settings;
use crate::shell::Shell;

const HELP: &str = "Usage: nix-instantiate [--parse | --eval [--strict] [--json | --xml [--no-location]]] [--add-root PATH] [-A ATTR] [-I PATH]
                       [--arg NAME EXPR] [--argstr NAME STRING] [--readonly-mode | --read-write-mode]
                       (-E EXPR | FILE...)

Evaluate the expression in each FILE (default.nix in a directory, ./default.nix without one)
or given with -E. Without --eval, write the derivations it holds to the store and print
their paths (or, with --add-root, the garbage collector roots made for them); with --eval,
print its value, computing store paths without writing anything (unless --read-write-mode).";

pub fn run(args: &[OsString], shell: &mut Shell) -> Result<ExitCode> {
    let mut it = ArgIter::new("nix-instantiate", args.to_vec());
    let (mut eval, mut strict, mut json) = (false, false, false);
    let mut add_root: Option<String> = None;
    let (mut xml, mut location, mut parse) = (false, true, false);
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
            "--xml" => xml = true,
            "--parse" => parse = true,
            "--no-location" => location = false,
            "--add-root" => add_root = Some(it.value(flag)?),
            // Roots are always indirect now, as in Nix.
            "--indirect" => {}
            _ if shared.take(&a, &mut it)? => {}
            f => return Err(it.unknown(f)),
        }
    }
    let settings = Settings::load(None, &shared.options, shell)?;
    let inputs = shared.inputs();
    let output = if parse {
        Output::Parse
    } else if eval && json {
        Output::Json
    } else if eval && xml {
        Output::Xml { strict, location }
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
    // As in Nix, evaluation alone computes store paths without writing them.
    let read_only = match shared.read_only {
        Some(true) => ReadOnly::Always,
        Some(false) => ReadOnly::No,
        None if eval => ReadOnly::Preferred,
        None => ReadOnly::No,
    };
    let mut roots = 0;
    for input in &inputs {
        for attr in &paths {
            let text = evaluate(
                Request {
                    input,
                    args: &shared.auto_args,
                    attr_path: *attr,
                    always_call: false,
                    output,
                    read_only,
                },
                eval_settings(&shared.include, &settings),
                &settings,
            )?;
            let text = match &add_root {
                Some(root) if !eval && !parse && read_only == ReadOnly::No => {
                    let mut rooted = Roots::open(&settings)?;
                    let mut links = Vec::new();
                    for line in text.lines() {
                        roots += 1;
                        links.push(add_root_for(&mut rooted, line, root, roots)?);
                    }
                    links.join("\n")
                }
                _ => text,
            };
            if !text.is_empty() {
                shell.println(text)?;
            }
        }
    }
    if !eval && !parse && add_root.is_none() {
        shell.warn("you did not specify '--add-root'; the result might be removed by the garbage collector");
    }
    Ok(ExitCode::SUCCESS)
}

/// The `n`th root of a run at `root` (`root`, `root-2`, …) for the derivation `line` names
/// (`path` or `path!output`): the link's path (with the output), as Nix prints it instead
/// of the derivation's.
pub(crate) fn add_root_for(roots: &mut Roots, line: &str, root: &str, n: usize) -> Result<String> {
    let (drv, output) = match line.split_once('!') {
        Some((d, o)) => (d, format!("!{o}")),
        None => (line, String::new()),
    };
    let sd = roots.store_dir();
    let p = sd
        .parse_path(drv)
        .map_err(|e| anyhow::anyhow!("'{drv}': {e}"))?;
    let mut link = std::path::absolute(root)
        .map_err(|e| anyhow::anyhow!("'{root}': {e}"))?
        .into_os_string();
    if n > 1 {
        link.push(format!("-{n}"));
    }
    let link = std::path::PathBuf::from(link);
    match roots {
        Roots::Local(store) => {
            ferrix_store::gc::add_perm_root(store, &p, &link)?;
        }
        Roots::Daemon(d, sd) => {
            crate::stores::daemon_root(d, sd, &p, &link)?;
        }
    }
    Ok(format!("{}{output}", link.display()))
}

/// Where `--add-root` records its roots: the store itself, or its daemon.
pub(crate) enum Roots {
    Local(ferrix_store::LocalStore),
    Daemon(
        ferrix_store::worker_client::WorkerClient,
        ferrix_format::StoreDir,
    ),
}

impl Roots {
    pub(crate) fn open(settings: &Settings) -> Result<Self> {
        Ok(match settings.daemon() {
            Some((url, _)) => Roots::Daemon(
                crate::stores::connect_daemon(url, settings)?,
                settings.store_dir.clone(),
            ),
            None => Roots::Local(settings.open_store()?),
        })
    }

    fn store_dir(&self) -> ferrix_format::StoreDir {
        match self {
            Roots::Local(s) => s.store_dir().clone(),
            Roots::Daemon(_, sd) => sd.clone(),
        }
    }
}
