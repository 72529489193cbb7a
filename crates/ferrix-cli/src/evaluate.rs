//! Evaluating Nix expressions for the commands: the evaluator's settings from the
//! environment and flags, the store it writes to, the run on a deep stack, and errors
//! rendered with their source.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ferrix_eval::{AutoArg, Coerce, EvalSettings, EvalStore, Evaluator, Span, Value};

/// `--arg NAME EXPR` and `--argstr NAME VALUE`, in order.
pub type Args = Vec<(String, AutoArg)>;

use crate::settings::Settings;

/// Where the expression comes from.
#[derive(Debug, Clone)]
pub enum Input {
    /// `-E`/`--expr`: relative paths are relative to the current directory.
    Expr(String),
    /// A file (a directory means its `default.nix`).
    File(PathBuf),
    /// `-`: standard input, relative paths relative to the current directory.
    Stdin,
}

#[derive(Debug, Clone, Copy)]
enum InputKind {
    Expr,
    File,
}

/// What is done with the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Printed as `nix-instantiate --eval` prints it; `strict` forces everything first.
    Nix { strict: bool },
    /// A string as it is (`nix eval --raw`).
    Raw,
    /// As JSON (`--json`).
    Json,
    /// Not evaluated: the parse printed back (`--parse`).
    Parse,
    /// As XML (`--xml`); `location` adds where attributes and functions are defined.
    Xml { strict: bool, location: bool },
    /// The `.drv` paths of the derivations it holds, one per line (`nix-instantiate`).
    DrvPaths,
}

/// The evaluator's settings: `$HOME`, `-I` entries then `NIX_PATH`, the system, the store.
pub fn eval_settings(include: &[String], settings: &Settings) -> EvalSettings {
    let mut search_path = Vec::new();
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
        store_dir: settings.store_dir.as_str().to_owned(),
        env: std::env::vars().collect(),
        cwd: std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".into()),
        tmp_dir: std::env::temp_dir(),
        // Its type was checked when the settings were read.
        abort_on_warn: settings.conf.bool("abort-on-warn", false).unwrap_or(false),
        ..EvalSettings::default()
    }
}

/// What a command asks to evaluate, and how.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub input: &'a Input,
    /// `--arg`s and `--argstr`s for the function the expression is.
    pub args: &'a [(String, AutoArg)],
    /// `-A`: the attribute to select.
    pub attr_path: Option<&'a str>,
    /// Call a function from a file even without arguments (with its defaults).
    pub always_call: bool,
    pub output: Output,
    pub read_only: ReadOnly,
}

/// Whether evaluation writes to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnly {
    /// Derivations, files and sources are written.
    No,
    /// Paths are only computed (`nix-instantiate --eval`), unless the expression reads a
    /// derivation's output that is not built: then it is evaluated again, writing, so that
    /// the output can be built (where Nix gives up).
    Preferred,
    /// Nothing is written, whatever the expression needs (`--readonly-mode`).
    Always,
}

/// Evaluate the request's input, selecting its attribute path, and render the value as its
/// output says: the text, or the error rendered with its source.
pub fn evaluate(
    req: Request<'_>,
    eval_settings: EvalSettings,
    settings: &Settings,
) -> Result<String> {
    let (input, read_only) = (req.input, req.read_only);
    let (name, text, base) = source(input)?;
    if req.output == Output::Parse {
        let eval_settings = eval_settings.clone();
        return ferrix_eval::on_big_stack(move || {
            let mut ev = Evaluator::new(eval_settings, None);
            let base = base.to_string_lossy().into_owned();
            ev.parse_source(&name, &text, &base)
                .map_err(|e| anyhow::anyhow!(ferrix_eval::render_error(&ev, &e)))
        });
    }
    match evaluate_once(
        req,
        &name,
        &text,
        base.clone(),
        eval_settings.clone(),
        settings,
        read_only != ReadOnly::No,
    ) {
        Err(Failure::NeedsWriting) if read_only == ReadOnly::Preferred => {
            evaluate_once(req, &name, &text, base, eval_settings, settings, false)
        }
        r => r,
    }
    .map_err(|f| match f {
        Failure::NeedsWriting | Failure::Rendered(_) => anyhow::anyhow!(f.to_string()),
        Failure::Other(e) => e,
    })
}

/// The text of `input`, how messages name it, and the directory its relative paths are
/// relative to.
fn source(input: &Input) -> Result<(String, String, PathBuf)> {
    Ok(match input {
        Input::Expr(e) => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            ("«string»".to_owned(), e.clone(), cwd)
        }
        Input::Stdin => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            let text =
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?;
            ("«stdin»".to_owned(), text, cwd)
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
    })
}

/// Why an evaluation failed.
#[derive(Debug)]
enum Failure {
    /// An output must be built, and nothing was written (rendered in [`Display`]).
    NeedsWriting,
    /// The evaluation's error, rendered with its source.
    Rendered(String),
    /// Setting it up failed.
    Other(anyhow::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NeedsWriting => {
                f.write_str("building during evaluation needs a store it may write to")
            }
            Failure::Rendered(s) => f.write_str(s),
            Failure::Other(e) => write!(f, "{e:#}"),
        }
    }
}

/// One evaluation of `text`, writing to the store or (`read_only`) only computing paths.
fn evaluate_once(
    req: Request<'_>,
    name: &str,
    text: &str,
    base: PathBuf,
    eval_settings: EvalSettings,
    settings: &Settings,
    read_only: bool,
) -> Result<String, Failure> {
    let Request {
        input,
        args,
        attr_path,
        always_call,
        output,
        read_only: mode,
    } = req;
    let store: Arc<dyn EvalStore + Send + Sync> = match settings.daemon() {
        // Through a daemon, what is written goes to it as it comes.
        Some((url, _)) => {
            let client = crate::stores::connect_daemon(url, settings).map_err(Failure::Other)?;
            Arc::new(ferrix_eval::DaemonStore::new(
                client,
                settings.store_dir.clone(),
                read_only,
            ))
        }
        None => {
            let local = Arc::new(settings.open_eval_store().map_err(Failure::Other)?);
            // Derivations and files are written in batches at the end (or never, read-only).
            Arc::new(if read_only {
                ferrix_eval::DeferredStore::read_only(local)
            } else {
                ferrix_eval::DeferredStore::writing(local)
            })
        }
    };
    let deferred = store.clone();
    let (name, text) = (name.to_owned(), text.to_owned());
    let retry = mode == ReadOnly::Preferred && read_only;
    let for_builds = settings.clone();
    let base = base.to_string_lossy().into_owned();
    let attr_path = attr_path.map(str::to_owned);
    let args = args.to_vec();
    let input_kind = match input {
        Input::Expr(_) | Input::Stdin => InputKind::Expr,
        Input::File(_) => InputKind::File,
    };
    ferrix_eval::on_big_stack(move || {
        let mut ev = Evaluator::new(eval_settings, Some(store));
        ev.set_realiser(Box::new(EngineRealise {
            settings: for_builds,
        }));
        // Every value evaluated is still reachable from these; they are never dropped (see
        // below).
        let mut roots = Vec::new();
        let rendered = ev
            .eval_source(&name, &text, &base)
            .and_then(|v| {
                roots.push(v.clone());
                // `--eval` calls a function only when given arguments, as Nix does; finding
                // derivations and `--file` call it with its defaults too.
                let call = !args.is_empty()
                    || output == Output::DrvPaths
                    || (always_call && matches!(input_kind, InputKind::File));
                if call {
                    ev.auto_call(v, &args)
                } else {
                    Ok(v)
                }
            })
            .and_then(|v| {
                roots.push(v.clone());
                match &attr_path {
                    Some(p) => ev.select_path(&v, p),
                    None => Ok(v),
                }
            })
            .and_then(|v| {
                let text = render(&mut ev, &v, output);
                roots.push(v);
                text
            })
            .and_then(|text| {
                deferred
                    .flush()
                    .map_err(ferrix_eval::EvalError::store)
                    .map(|()| text)
            });
        let out = rendered.map_err(|e| match e.kind {
            ferrix_eval::ErrorKind::ReadOnly { .. } | ferrix_eval::ErrorKind::ReadOnlyPath(_)
                if retry =>
            {
                Failure::NeedsWriting
            }
            _ => Failure::Rendered(ferrix_eval::render_error(&ev, &e)),
        });
        // The values die with the process, which is about to end: freeing them one by one
        // would take a tenth of a big evaluation's time, as Nix, whose collector never runs
        // at exit, does not.
        // The store is closed properly all the same.
        ev.release_store();
        std::mem::forget(roots);
        std::mem::forget(ev);
        out
    })
}

fn render(ev: &mut Evaluator, v: &Value, output: Output) -> Result<String, ferrix_eval::EvalError> {
    match output {
        Output::Nix { strict } => ferrix_eval::print(ev, v, strict),
        Output::Raw => Ok(ev
            .coerce_to_string(v, Coerce::Interp, Span::default())?
            .s
            .to_string()),
        Output::Json => ferrix_eval::to_json_text(ev, v),
        Output::Xml { strict, location } => {
            // Printed with its own final newline.
            let mut text = ferrix_eval::to_xml_text(ev, v, strict, location)?;
            text.pop();
            Ok(text)
        }
        Output::Parse => unreachable!("parsed without evaluating"),
        Output::DrvPaths => {
            let mut out = Vec::new();
            ev.derivations(v, &mut out)?;
            Ok(out.join("\n"))
        }
    }
}

/// Import from derivation: what an expression reads is built by the Engine, as `ferrix
/// build` builds it, progress and errors on stderr.
struct EngineRealise {
    settings: Settings,
}

impl ferrix_eval::Realise for EngineRealise {
    fn realise(&self, outputs: &[(ferrix_format::StorePath, String)]) -> Result<(), String> {
        let mut shell = crate::shell::Shell::stdio();
        let mut run = || -> Result<()> {
            if let Some((url, _)) = self.settings.daemon() {
                // Built by the daemon; its log on standard error.
                let mut d = crate::stores::connect_daemon(url, &self.settings)?;
                let targets: Vec<ferrix_protocol::worker::DerivedPath> = outputs
                    .iter()
                    .map(|(drv, o)| ferrix_protocol::worker::DerivedPath::Built {
                        drv_path: drv.clone(),
                        outputs: ferrix_protocol::worker::OutputsSpec::Names([o.clone()].into()),
                    })
                    .collect();
                d.build_paths(
                    &targets,
                    ferrix_protocol::worker::BuildMode::Normal,
                    crate::stores::log_to_stderr(),
                )?;
                return Ok(());
            }
            let store = Arc::new(self.settings.open_store()?);
            let wanted = outputs
                .iter()
                .map(|(drv, o)| {
                    crate::build::parse_installable(&store, &format!("{}^{o}", store.print(drv)))
                })
                .collect::<Result<Vec<_>>>()?;
            let (plan, outcome) = crate::build::realise(
                &self.settings,
                store.clone(),
                &wanted,
                &[],
                crate::build::RunMode::default(),
                &mut shell,
            )?;
            if let Some(o) = &outcome {
                if !o.success() {
                    crate::build::report_failures(&store, &plan, o, &mut shell);
                    anyhow::bail!("the build failed");
                }
            }
            Ok(())
        };
        let result = run().map_err(|e| crate::render(e.as_ref()));
        let _ = shell.flush();
        result
    }
}
