//! `ferrix eval`: evaluate a Nix expression and print its value.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::evaluate::{eval_settings, evaluate, Input, Output, Request};
use crate::settings::Settings;
use crate::shell::Shell;

/// What to evaluate and with which arguments: the flags `ferrix eval` and `ferrix
/// instantiate` share.
#[derive(Debug, clap::Args)]
pub struct Source {
    /// The expression to evaluate.
    #[arg(long, conflicts_with = "file")]
    expr: Option<String>,
    /// A file to evaluate (a directory means its default.nix).
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Pass `NAME` = the value of the Nix expression `EXPR` to the function the expression is.
    #[arg(long, num_args = 2, value_names = ["NAME", "EXPR"])]
    arg: Vec<String>,
    /// Pass `NAME` = the string `VALUE` to the function the expression is.
    #[arg(long, num_args = 2, value_names = ["NAME", "VALUE"])]
    argstr: Vec<String>,
    /// Add a search path entry for `<name>` lookups (`-I name=dir` or `-I dir`).
    #[arg(short = 'I')]
    pub include: Vec<String>,
}

impl Source {
    /// `--expr` or `--file`; `None` when neither is given.
    pub fn input(&self) -> Option<Input> {
        match (&self.expr, &self.file) {
            (Some(e), _) => Some(Input::Expr(e.clone())),
            (None, Some(f)) => Some(Input::File(f.clone())),
            (None, None) => None,
        }
    }

    /// `--arg`s and `--argstr`s, in order.
    pub fn auto_args(&self) -> crate::evaluate::Args {
        let mut out = crate::evaluate::Args::new();
        for pair in self.arg.chunks(2) {
            out.push((pair[0].clone(), ferrix_eval::AutoArg::Expr(pair[1].clone())));
        }
        for pair in self.argstr.chunks(2) {
            out.push((pair[0].clone(), ferrix_eval::AutoArg::Str(pair[1].clone())));
        }
        out
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: Source,
    /// Print a string as it is, without quotes or escapes.
    #[arg(long, conflicts_with = "json")]
    raw: bool,
    /// Print the value as JSON.
    #[arg(long)]
    json: bool,
    /// The attribute of the value to print (`a.b.c`).
    attr: Option<String>,
}

pub fn run(args: Args, settings: &Settings, shell: &mut Shell) -> Result<ExitCode> {
    let Some(input) = args.source.input() else {
        anyhow::bail!("nothing to evaluate: give --expr EXPR or --file FILE");
    };
    let output = if args.raw {
        Output::Raw
    } else if args.json {
        Output::Json
    } else {
        Output::Nix { strict: true }
    };
    let auto_args = args.source.auto_args();
    let text = evaluate(
        Request {
            input: &input,
            args: &auto_args,
            attr_path: args.attr.as_deref(),
            always_call: true,
            output,
            read_only: crate::evaluate::ReadOnly::No,
        },
        eval_settings(&args.source.include, settings),
        settings,
    )?;
    if args.raw {
        shell.print(text)?;
    } else {
        shell.println(text)?;
    }
    Ok(ExitCode::SUCCESS)
}
