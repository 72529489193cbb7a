//! `ferrix repl`: a line-edited loop that evaluates Nix expressions, binds variables
//! (`x = …`), loads files (`:l`), prints strictly (`:p`), names types (`:t`) and builds
//! derivations (`:b`), with history kept between sessions.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use ferrix_eval::{EvalSettings, EvalStore, Evaluator, Value};

use crate::evaluate::eval_settings;
use crate::settings::Settings;
use crate::shell::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files whose attributes are loaded into scope (as `:l` does).
    files: Vec<PathBuf>,
    /// Add a search path entry for `<name>` lookups.
    #[arg(short = 'I')]
    include: Vec<String>,
}

const HELP: &str = "The following commands are available:

  <expr>        Evaluate and print expression
  <x> = <expr>  Bind expression to variable
  :b <expr>     Build a derivation
  :l <path>     Load Nix expression and add it to scope
  :p <expr>     Evaluate and print expression recursively
  :t <expr>     Describe result of evaluation
  :q            Exit the REPL
  :?            Show this help";

pub fn run(args: Args, settings: &Settings, shell: &mut Shell) -> Result<ExitCode> {
    let eval = eval_settings(&args.include, settings);
    // Through a daemon, what the REPL writes (derivations, sources) goes to it as it comes;
    // `:b` builds with this program, which finds the same daemon.
    let (store, daemon): (std::sync::Arc<dyn EvalStore + Send + Sync>, _) = match settings.daemon()
    {
        Some((url, _)) => (
            std::sync::Arc::new(ferrix_eval::DaemonStore::new(
                crate::stores::connect_daemon(url, settings)?,
                settings.store_dir.clone(),
                false,
            )),
            Some(url.to_owned()),
        ),
        None => (std::sync::Arc::new(settings.open_store()?), None),
    };
    let history =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/ferrix/repl-history"));
    let cwd = std::env::current_dir()?.to_string_lossy().into_owned();
    shell.println(format!(
        "Welcome to Ferrix {}. Type :? for help.\n",
        env!("CARGO_PKG_VERSION")
    ))?;
    shell.flush()?;
    let files = args.files.clone();
    ferrix_eval::on_big_stack(move || repl(eval, store, daemon, history, cwd, files))
}

/// What one line asks for.
enum Line<'a> {
    Empty,
    Quit,
    Help,
    Bind(&'a str, &'a str),
    Print(&'a str),
    Type(&'a str),
    Load(&'a str),
    Build(&'a str),
    Eval(&'a str),
    Unknown(&'a str),
}

fn parse_line(line: &str) -> Line<'_> {
    let line = line.trim();
    if line.is_empty() {
        return Line::Empty;
    }
    if let Some(rest) = line.strip_prefix(':') {
        let (cmd, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let arg = arg.trim();
        return match cmd {
            "q" | "quit" => Line::Quit,
            "?" | "help" => Line::Help,
            "p" | "print" => Line::Print(arg),
            "t" => Line::Type(arg),
            "l" | "load" => Line::Load(arg),
            "b" => Line::Build(arg),
            _ => Line::Unknown(cmd),
        };
    }
    // `name = expr`, but not `a == b`.
    if let Some((name, expr)) = line.split_once('=') {
        let name = name.trim();
        let ident = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '\'' | '-'));
        if ident && !expr.starts_with('=') {
            return Line::Bind(name, expr.trim());
        }
    }
    Line::Eval(line)
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn repl(
    settings: EvalSettings,
    store: std::sync::Arc<dyn EvalStore + Send + Sync>,
    daemon: Option<String>,
    history: Option<PathBuf>,
    cwd: String,
    files: Vec<PathBuf>,
) -> Result<ExitCode> {
    let mut ev = Evaluator::new(settings, Some(store.clone()));
    // The variables, sorted by name, newest binding of a name kept.
    let mut scope: Vec<(String, Value)> = Vec::new();
    let bind = |scope: &mut Vec<(String, Value)>, name: String, v: Value| match scope
        .binary_search_by(|(n, _)| n.as_str().cmp(&name))
    {
        Ok(i) => scope[i].1 = v,
        Err(i) => scope.insert(i, (name, v)),
    };
    let mut editor = rustyline::DefaultEditor::new()?;
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let load = |ev: &mut Evaluator, scope: &mut Vec<(String, Value)>, path: &str| {
        let text = format!("import {path}");
        let v = ev.eval_in_scope("«repl»", &text, &cwd, scope)?;
        // A file that is a function of a set is called with its defaults, as Nix does.
        let v = ev.auto_call(v, &[])?;
        let Value::Attrs(a) = ev.force(&v)? else {
            return Ok(0);
        };
        let entries: Vec<(String, Value)> = a
            .sorted_by_name()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        let n = entries.len();
        for (name, v) in entries {
            bind(scope, name, v);
        }
        Ok::<usize, ferrix_eval::EvalError>(n)
    };
    for f in &files {
        let path = std::path::absolute(f)?;
        match load(&mut ev, &mut scope, &path.display().to_string()) {
            Ok(n) => println!("Added {n} variables."),
            Err(e) => eprintln!("error: {}", ferrix_eval::render_error(&ev, &e)),
        }
    }
    loop {
        let line = match editor.readline("ferrix-repl> ") {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let _ = editor.add_history_entry(line.as_str());
        let result: Result<Option<String>, ferrix_eval::EvalError> = match parse_line(&line) {
            Line::Empty => Ok(None),
            Line::Quit => break,
            Line::Help => Ok(Some(HELP.to_owned())),
            Line::Unknown(c) => Ok(Some(format!("unknown command ':{c}'; :? lists them"))),
            Line::Bind(name, expr) => ev.lazy_in_scope("«repl»", expr, &cwd, &scope).map(|v| {
                bind(&mut scope, name.to_owned(), v);
                None
            }),
            Line::Eval(e) => ev
                .eval_in_scope("«repl»", e, &cwd, &scope)
                .and_then(|v| ferrix_eval::print_shallow(&mut ev, &v))
                .map(Some),
            Line::Print(e) => ev
                .eval_in_scope("«repl»", e, &cwd, &scope)
                .and_then(|v| ferrix_eval::print(&mut ev, &v, true))
                .map(Some),
            Line::Type(e) => ev
                .eval_in_scope("«repl»", e, &cwd, &scope)
                .and_then(|v| ev.force(&v))
                .map(|v| Some(ferrix_eval::describe_type(&v))),
            Line::Load(p) => {
                load(&mut ev, &mut scope, p).map(|n| Some(format!("Added {n} variables.")))
            }
            Line::Build(e) => ev
                .eval_in_scope("«repl»", e, &cwd, &scope)
                .and_then(|v| {
                    let mut drvs = Vec::new();
                    ev.derivations(&v, &mut drvs)?;
                    Ok(drvs)
                })
                .map(|drvs| Some(build(&*store, daemon.as_deref(), &drvs))),
        };
        match result {
            Ok(Some(text)) => println!("{text}\n"),
            Ok(None) => {}
            Err(e) => eprintln!("error: {}\n", ferrix_eval::render_error(&ev, &e)),
        }
    }
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(h);
    }
    Ok(ExitCode::SUCCESS)
}

/// `:b`: build with this program's `build` (through `daemon`, if the REPL's store is one),
/// and say where the outputs are.
fn build(store: &dyn EvalStore, daemon: Option<&str>, drvs: &[String]) -> String {
    let Some(drv) = drvs.first() else {
        return "error: the value is not a derivation".into();
    };
    let drv = drv.split('!').next().unwrap_or(drv);
    let outputs = match store
        .store_dir()
        .parse_path(drv)
        .map_err(|e| e.to_string())
        .and_then(|p| store.read_derivation(&p).map_err(|e| e.to_string()))
    {
        Ok(d) => d.outputs,
        Err(e) => return format!("error: reading '{drv}': {e}"),
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ferrix"));
    let mut cmd = std::process::Command::new(exe);
    if let Some(url) = daemon {
        cmd.args(["--store", url]);
    }
    let status = cmd
        .args(["build", "--no-link", &format!("{drv}^*")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(_) => return format!("error: building '{drv}' failed"),
        Err(e) => return format!("error: running the build: {e}"),
    }
    let mut text = String::from("This derivation produced the following outputs:");
    for (name, out) in &outputs {
        if let Some(p) = out.path() {
            text.push_str(&format!("\n  {name} -> {}", store.store_dir().display(p)));
        }
    }
    text
}
