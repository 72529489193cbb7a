//! Evaluating Nix expressions for the commands: the evaluator's settings from the
//! environment and flags, the run on a deep stack, and errors rendered with their source.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferrix_eval::{EvalSettings, Evaluator};

/// Where the expression comes from.
#[derive(Debug, Clone)]
pub enum Input {
    /// `-E`/`--expr`: relative paths are relative to the current directory.
    Expr(String),
    /// A file (a directory means its `default.nix`).
    File(PathBuf),
}

/// How the value is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// As `nix-instantiate --eval` prints it; `strict` forces everything first.
    Nix { strict: bool },
    /// A string as it is (`nix eval --raw`).
    Raw,
}

/// The evaluator's settings: `$HOME`, `NIX_PATH` then `-I` entries, the system.
pub fn settings(include: &[String]) -> EvalSettings {
    let mut search_path = Vec::new();
    // `-I` entries come first, then NIX_PATH, as in Nix.
    let nix_path = std::env::var("NIX_PATH").unwrap_or_default();
    for entry in include
        .iter()
        .map(String::as_str)
        .chain(nix_path.split(':').filter(|e| !e.is_empty()))
    {
        match entry.split_once('=') {
            Some((prefix, dir)) => search_path.push((Some(prefix.to_owned()), PathBuf::from(dir))),
            None => search_path.push((None, PathBuf::from(entry))),
        }
    }
    EvalSettings {
        home: std::env::var("HOME").ok(),
        search_path,
        system: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        ..EvalSettings::default()
    }
}

/// Evaluate `input` and print its value as `output` says: the text, or the error rendered
/// with its source.
pub fn evaluate(input: &Input, output: Output, settings: EvalSettings) -> Result<String> {
    let (name, text, base) = match input {
        Input::Expr(e) => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            ("«string»".to_owned(), e.clone(), cwd)
        }
        Input::File(f) => {
            let abs =
                std::path::absolute(f).with_context(|| format!("reading '{}'", f.display()))?;
            let file = if abs.is_dir() {
                abs.join("default.nix")
            } else {
                abs
            };
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading '{}'", file.display()))?;
            let base = file
                .parent()
                .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
            (file.display().to_string(), text, base)
        }
    };
    let base = base.to_string_lossy().into_owned();
    let result = ferrix_eval::on_big_stack(move || {
        let mut ev = Evaluator::new(settings);
        let printed = ev
            .eval_source(&name, &text, &base)
            .and_then(|v| match output {
                Output::Nix { strict } => ferrix_eval::print(&mut ev, &v, strict),
                Output::Raw => {
                    let s = ev.coerce_to_string(&v, false, ferrix_eval::Span::default())?;
                    Ok(s.s.clone())
                }
            });
        printed.map_err(|e| ferrix_eval::render_error(&ev, &e))
    });
    result.map_err(|rendered| anyhow::anyhow!(rendered))
}
