//! `ferrix instantiate`: write the derivations an expression holds to the store and print
//! their paths, as `nix-instantiate` does.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::evaluate::{eval_settings, evaluate, Input, Output, ReadOnly, Request};
use crate::settings::Settings;
use crate::shell::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The expression (`--expr`) or file (`--file`; ./default.nix without either) and the
    /// arguments of the function it is.
    #[command(flatten)]
    source: super::eval::Source,
    /// The attributes of the value to instantiate (`a.b.c`); the value itself without any.
    attrs: Vec<String>,
    /// Make each derivation a garbage collector root at PATH (PATH-2, … after the first),
    /// and print the roots rather than the derivations.
    #[arg(long, value_name = "PATH")]
    add_root: Option<String>,
}

pub fn run(args: Args, settings: &Settings, shell: &mut Shell) -> Result<ExitCode> {
    let input = args
        .source
        .input()
        .unwrap_or_else(|| Input::File(PathBuf::from(".")));
    let auto_args = args.source.auto_args();
    let attrs: Vec<Option<&str>> = if args.attrs.is_empty() {
        vec![None]
    } else {
        args.attrs.iter().map(|a| Some(a.as_str())).collect()
    };
    // `--add-root`: where, and the store the roots are made in (opened once).
    let mut rooted = match &args.add_root {
        Some(root) => Some((root, crate::legacy::nix_instantiate::Roots::open(settings)?)),
        None => None,
    };
    let mut roots = 0;
    for attr in attrs {
        let text = evaluate(
            Request {
                input: &input,
                args: &auto_args,
                attr_path: attr,
                always_call: true,
                output: Output::DrvPaths,
                read_only: ReadOnly::No,
            },
            eval_settings(&args.source.include, settings),
            settings,
        )?;
        for line in text.lines() {
            match &mut rooted {
                Some((root, store)) => {
                    roots += 1;
                    let link =
                        crate::legacy::nix_instantiate::add_root_for(store, line, root, roots)?;
                    shell.println(link)?;
                }
                None => shell.println(line)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
