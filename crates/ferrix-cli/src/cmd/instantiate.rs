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
    /// The expression to instantiate.
    #[arg(long, conflicts_with = "file")]
    expr: Option<String>,
    /// A file to instantiate (a directory means its default.nix; the default is ./default.nix).
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// The attributes of the value to instantiate (`a.b.c`); the value itself without any.
    attrs: Vec<String>,
    /// Pass `NAME` = the value of the Nix expression `EXPR` to the function the expression is.
    #[arg(long, num_args = 2, value_names = ["NAME", "EXPR"])]
    arg: Vec<String>,
    /// Pass `NAME` = the string `VALUE` to the function the expression is.
    #[arg(long, num_args = 2, value_names = ["NAME", "VALUE"])]
    argstr: Vec<String>,
    /// Add a search path entry for `<name>` lookups (`-I name=dir` or `-I dir`).
    #[arg(short = 'I')]
    include: Vec<String>,
    /// Make each derivation a garbage collector root at PATH (PATH-2, … after the first),
    /// and print the roots rather than the derivations.
    #[arg(long, value_name = "PATH")]
    add_root: Option<String>,
}

pub fn run(args: Args, settings: &Settings, shell: &mut Shell) -> Result<ExitCode> {
    let input = match (args.expr, args.file) {
        (Some(e), _) => Input::Expr(e),
        (None, Some(f)) => Input::File(f),
        (None, None) => Input::File(PathBuf::from(".")),
    };
    let mut auto_args = crate::evaluate::Args::new();
    for pair in args.arg.chunks(2) {
        auto_args.push((pair[0].clone(), ferrix_eval::AutoArg::Expr(pair[1].clone())));
    }
    for pair in args.argstr.chunks(2) {
        auto_args.push((pair[0].clone(), ferrix_eval::AutoArg::Str(pair[1].clone())));
    }
    let attrs: Vec<Option<&str>> = if args.attrs.is_empty() {
        vec![None]
    } else {
        args.attrs.iter().map(|a| Some(a.as_str())).collect()
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
            eval_settings(&args.include, settings),
            settings,
        )?;
        for line in text.lines() {
            match &args.add_root {
                Some(root) => {
                    roots += 1;
                    let store = settings.open_store()?;
                    let link =
                        crate::legacy::nix_instantiate::add_root_for(&store, line, root, roots)?;
                    shell.println(link)?;
                }
                None => shell.println(line)?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
