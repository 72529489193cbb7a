//! `ferrix eval`: evaluate a Nix expression and print its value.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::evaluate::{eval_settings, evaluate, Input, Output, Request};
use crate::settings::Settings;
use crate::shell::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The expression to evaluate.
    #[arg(long, conflicts_with = "file")]
    expr: Option<String>,
    /// A file to evaluate (a directory means its default.nix).
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Print a string as it is, without quotes or escapes.
    #[arg(long, conflicts_with = "json")]
    raw: bool,
    /// Print the value as JSON.
    #[arg(long)]
    json: bool,
    /// The attribute of the value to print (`a.b.c`).
    attr: Option<String>,
    /// Pass `NAME` = the value of the Nix expression `EXPR` to the function the expression is.
    #[arg(long, num_args = 2, value_names = ["NAME", "EXPR"])]
    arg: Vec<String>,
    /// Pass `NAME` = the string `VALUE` to the function the expression is.
    #[arg(long, num_args = 2, value_names = ["NAME", "VALUE"])]
    argstr: Vec<String>,
    /// Add a search path entry for `<name>` lookups (`-I name=dir` or `-I dir`).
    #[arg(short = 'I')]
    include: Vec<String>,
}

pub fn run(args: Args, settings: &Settings, shell: &mut Shell) -> Result<ExitCode> {
    let input = match (args.expr, args.file) {
        (Some(e), _) => Input::Expr(e),
        (None, Some(f)) => Input::File(f),
        (None, None) => anyhow::bail!("nothing to evaluate: give --expr EXPR or --file FILE"),
    };
    let output = if args.raw {
        Output::Raw
    } else if args.json {
        Output::Json
    } else {
        Output::Nix { strict: true }
    };
    let mut auto_args = crate::evaluate::Args::new();
    for pair in args.arg.chunks(2) {
        auto_args.push((pair[0].clone(), ferrix_eval::AutoArg::Expr(pair[1].clone())));
    }
    for pair in args.argstr.chunks(2) {
        auto_args.push((pair[0].clone(), ferrix_eval::AutoArg::Str(pair[1].clone())));
    }
    let text = evaluate(
        Request {
            input: &input,
            args: &auto_args,
            attr_path: args.attr.as_deref(),
            always_call: true,
            output,
            read_only: crate::evaluate::ReadOnly::No,
        },
        eval_settings(&args.include, settings),
        settings,
    )?;
    if args.raw {
        shell.print(text)?;
    } else {
        shell.println(text)?;
    }
    Ok(ExitCode::SUCCESS)
}
