//! Derivations and the store from the language: `derivationStrict` (a `.drv` written
//! through the store, its inputs from the string context of its attributes), `derivation`
//! (the attribute set around it, in Nix itself), `import`, `toFile`, `placeholder`, files
//! and string context.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;

use ferrix_format::content_address::FileIngestionMethod;
use ferrix_format::{Derivation, DerivationOutput, Hash, HashAlgo};

use crate::error::{ErrorKind, EvalError};
use crate::eval::{Coerce, Evaluator};
use crate::symbol::Sym;
use crate::syntax::Span;
use crate::value::{Attrs, Context, ContextElem, NixString, ThunkState, Value};

type Result<T> = std::result::Result<T, EvalError>;

/// `derivation`, in Nix itself. Its attributes sit at the lines and columns of Nix 2.8's own
/// definition (which is read with a newline before it), since `--xml` and error traces
/// show them.
const DERIVATION: &str = r#"
/* Ferrix's `derivation`: the set of a derivation's outputs around `derivationStrict`,
   each output a copy of the common attributes with its own `outPath` and
   `outputName`; the first output's is the result. Attributes are placed where Nix
   2.8's own definition has them, so that `--xml` shows the same places. */

drvAttrs @ { outputs ? [ "out" ], ... }:
let
  strict = builtins.derivationStrict drvAttrs;

  common = drvAttrs // builtins.listToAttrs byOutput // {
      all = builtins.map (o: o.value) byOutput;
      inherit drvAttrs;
    };

  byOutput = builtins.map (outputName: {
      name = outputName;
      value = common // {
        outPath = builtins.getAttr outputName strict;
        drvPath = strict.drvPath;
        type = "derivation";
        inherit outputName;
      };
    }) outputs;
in (builtins.head byOutput).value
"#;

/// Where `derivation` is defined, as Nix 2.8 names it.
const DERIVATION_FILE: &str = "//builtin/derivation.nix";

/// Give the global `derivation` (a thunk the globals hold) its definition.
pub(crate) fn define_derivation(ev: &mut Evaluator) {
    let (globals, names) = ev.global_scope();
    let Some(slot) = names.iter().position(|n| *n == Sym::intern("derivation")) else {
        return;
    };
    let Value::Thunk(t) = globals.slots.borrow()[slot].clone() else {
        return;
    };
    let expr = ev
        .lower(DERIVATION_FILE, DERIVATION, "/")
        .expect("the definition of derivation parses");
    t.set(ThunkState::Suspended(Rc::new(expr), globals));
}

fn other(msg: String, span: Span) -> EvalError {
    EvalError::new(ErrorKind::Other(msg)).at(span)
}

fn with_context(s: String, context: Context) -> Value {
    Value::String(Rc::new(NixString {
        s: s.into(),
        context,
    }))
}

pub(crate) fn derivation_strict(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let attrs = ev.expect_attrs(&a[0], span)?;
    let get = |n: &str| attrs.get(Sym::intern(n)).cloned();
    let name_v = get("name").ok_or_else(|| {
        EvalError::new(ErrorKind::MissingAttr {
            name: "name".into(),
        })
        .at(span)
    })?;
    let name = ev.expect_string(&name_v, span)?.s.clone();
    let in_drv = |e: EvalError| {
        e.context(
            Some(span),
            format!("while evaluating the derivation '{name}'"),
        )
    };
    build(ev, &attrs, &name, span).map_err(in_drv)
}

fn build(ev: &mut Evaluator, attrs: &Attrs, name: &str, span: Span) -> Result<Value> {
    let store = ev.store().map_err(|e| e.at(span))?;
    let sd = store.store_dir().clone();
    let get = |n: &str| attrs.get(Sym::intern(n)).cloned();
    let ignore_nulls = match get("__ignoreNulls") {
        Some(v) => ev.expect_bool(&v, span)?,
        None => false,
    };
    let structured = match get("__structuredAttrs") {
        Some(v) => ev.expect_bool(&v, span)?,
        None => false,
    };
    // With structured attributes, all of them (but `args`) go to the builder as one JSON
    // object in `__json`, keys in order.
    let mut json = String::from("{");
    let mut drv = Derivation {
        outputs: BTreeMap::new(),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        platform: String::new(),
        builder: String::new(),
        args: Vec::new(),
        env: BTreeMap::new(),
    };
    let mut context = Context::default();
    let mut outputs: Vec<String> = vec!["out".into()];
    let (mut hash, mut hash_algo, mut hash_mode) = (None, None, None);
    for (key, value) in attrs.sorted_by_name() {
        let key: &str = &key;
        if key == "__ignoreNulls" {
            continue;
        }
        let in_attr =
            |e: EvalError| e.context(None, format!("while evaluating the attribute '{key}'"));
        let v = ev.force(value).map_err(in_attr)?;
        if ignore_nulls && matches!(v, Value::Null) {
            continue;
        }
        if key == "args" {
            let list = ev.expect_list(&v, span).map_err(in_attr)?;
            for item in list.iter() {
                let s = ev
                    .coerce_to_string(&item, Coerce::Derivation, span)
                    .map_err(in_attr)?;
                context.extend(&s.context);
                drv.args.push(s.s.to_string());
            }
            continue;
        }
        if structured {
            if key == "__structuredAttrs" {
                continue;
            }
            if json.len() > 1 {
                json.push(',');
            }
            crate::json::string(&mut json, key);
            json.push(':');
            crate::json::write(ev, &v, &mut json, &mut context, span).map_err(in_attr)?;
            if !matches!(
                key,
                "builder"
                    | "system"
                    | "outputHash"
                    | "outputHashAlgo"
                    | "outputHashMode"
                    | "outputs"
            ) {
                continue;
            }
        }
        let s = ev
            .coerce_to_string(&v, Coerce::Derivation, span)
            .map_err(in_attr)?;
        context.extend(&s.context);
        match key {
            "builder" => drv.builder = s.s.to_string(),
            "system" => drv.platform = s.s.to_string(),
            "outputHash" => hash = Some(s.s.clone()),
            "outputHashAlgo" => hash_algo = Some(s.s.clone()),
            "outputHashMode" => hash_mode = Some(s.s.clone()),
            "outputs" => {
                let list = ev.expect_list(&v, span).map_err(in_attr)?;
                outputs.clear();
                for o in list.iter() {
                    let o = ev.expect_string(&o, span)?.s.to_string();
                    if o == "drv" {
                        return Err(other("invalid derivation output name 'drv'".into(), span));
                    }
                    if outputs.contains(&o) {
                        return Err(other(format!("duplicate derivation output '{o}'"), span));
                    }
                    outputs.push(o);
                }
                if outputs.is_empty() {
                    return Err(other(
                        "derivation cannot have an empty set of outputs".into(),
                        span,
                    ));
                }
            }
            _ => {}
        }
        if !structured {
            drv.env.insert(key.to_owned(), s.s.to_string());
        }
    }
    if structured {
        json.push('}');
        drv.env.insert("__json".into(), json);
    }
    for (what, field) in [("builder", &drv.builder), ("system", &drv.platform)] {
        if field.is_empty() && get(what).is_none() {
            return Err(other(format!("required attribute '{what}' missing"), span));
        }
    }
    for c in context.iter() {
        let parse = |p: &str| {
            sd.parse_path(p)
                .map_err(|e| other(format!("'{p}' in a string's context: {e}"), span))
        };
        match c {
            ContextElem::Plain(p) => {
                drv.input_srcs.insert(parse(p)?);
            }
            ContextElem::Output { drv: d, output } => {
                drv.input_drvs
                    .entry(parse(d)?)
                    .or_default()
                    .insert(output.to_string());
            }
            ContextElem::AllOutputs(d) => {
                // A derivation's own path (`drvPath`): as in Nix, its whole closure is
                // input, and every derivation in it with all its outputs.
                let closure = store
                    .closure(&parse(d)?)
                    .map_err(|e| EvalError::store(e).at(span))?;
                for p in closure {
                    if p.name().ends_with(".drv") {
                        let outputs = store
                            .read_derivation(&p)
                            .map_err(|e| EvalError::store(e).at(span))?
                            .outputs
                            .into_keys()
                            .collect();
                        drv.input_drvs.insert(p.clone(), outputs);
                    }
                    drv.input_srcs.insert(p);
                }
            }
        }
    }
    if let Some(h) = hash {
        if outputs != ["out"] {
            return Err(other(
                "multiple outputs are not supported in fixed-output derivations".into(),
                span,
            ));
        }
        let method = match hash_mode.as_deref() {
            None | Some("flat") => FileIngestionMethod::Flat,
            Some("recursive") => FileIngestionMethod::Recursive,
            Some(m) => {
                return Err(other(
                    format!("invalid value '{m}' for 'outputHashMode'"),
                    span,
                ))
            }
        };
        let algo = match hash_algo.as_deref() {
            None | Some("") => None,
            Some(a) => Some(
                a.parse::<HashAlgo>()
                    .map_err(|e| other(format!("invalid 'outputHashAlgo' '{a}': {e}"), span))?,
            ),
        };
        let hash = Hash::parse(&h, algo)
            .map_err(|e| other(format!("invalid 'outputHash' '{h}': {e}"), span))?;
        let path = sd
            .make_fixed_output_path(name, method, &hash, [], false)
            .map_err(|e| other(format!("invalid derivation name '{name}': {e}"), span))?;
        drv.env.insert("out".into(), sd.display(&path));
        drv.outputs.insert(
            "out".into(),
            DerivationOutput::CaFixed { method, hash, path },
        );
    } else {
        for o in &outputs {
            drv.env.insert(o.clone(), String::new());
            drv.outputs.insert(o.clone(), DerivationOutput::Deferred);
        }
    }
    let (drv_path, written) = store
        .add_derivation(drv, name)
        .map_err(|e| EvalError::store(e).at(span))?;
    let dp: Rc<str> = sd.display(&drv_path).into();
    let mut entries = vec![(
        Sym::intern("drvPath"),
        with_context(
            dp.to_string(),
            Context::from([ContextElem::AllOutputs(dp.clone())]),
        ),
    )];
    for (o, out) in &written.outputs {
        let Some(p) = out.path() else {
            return Err(other(format!("output '{o}' has no path"), span));
        };
        entries.push((
            Sym::intern(o),
            with_context(
                sd.display(p),
                Context::from([ContextElem::Output {
                    drv: dp.clone(),
                    output: o.as_str().into(),
                }]),
            ),
        ));
    }
    Ok(Value::attrs(Attrs::from_unsorted(entries)))
}

/// `import path`: a file's value (a directory's `default.nix`), evaluated once.
pub(crate) fn import(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let file = real_path(ev, &a[0], span)?;
    if let Some(v) = ev.imported.get(&file) {
        return Ok(v.clone());
    }
    let text = match corepkg(&file) {
        Some(text) => text.to_owned(),
        None => {
            let file = if file.is_dir() {
                file.join("default.nix")
            } else {
                file.clone()
            };
            std::fs::read_to_string(&file)
                .map_err(|e| other(format!("reading '{}': {e}", file.display()), span))?
        }
    };
    let file = if file.is_dir() {
        file.join("default.nix")
    } else {
        file
    };
    let base = file
        .parent()
        .map_or_else(|| "/".to_owned(), |p| p.to_string_lossy().into_owned());
    let v = ev
        .eval_source(&file.display().to_string(), &text, &base)
        .map_err(|e| e.context(Some(span), format!("while importing '{}'", file.display())))?;
    ev.imported.insert(file, v.clone());
    Ok(v)
}

/// Where `<nix/…>` points when the search path has no `nix/…` of its own, as in Nix.
const COREPKGS: &str = "/__corepkgs__/";

/// The text of a file Nix ships inside itself (`<nix/fetchurl.nix>`).
fn corepkg(file: &std::path::Path) -> Option<&'static str> {
    match file.to_str()?.strip_prefix(COREPKGS)? {
        "fetchurl.nix" => Some(include_str!("corepkgs/fetchurl.nix")),
        _ => None,
    }
}

/// `findFile searchPath name`: `name` (`nixpkgs/lib`) looked up in a list of
/// `{ path; prefix ? ""; }`, the first that has it; what `<name>` calls.
pub(crate) fn find_file(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let entries = ev.expect_list(&a[0], span)?;
    let name = ev.expect_string(&a[1], span)?.s.clone();
    for e in entries.iter() {
        let e = ev.expect_attrs(&e, span)?;
        let prefix = match e.get(Sym::intern("prefix")) {
            Some(p) => ev.expect_string(p, span)?.s.clone(),
            None => compact_str::CompactString::default(),
        };
        let Some(dir) = e.get(Sym::intern("path")) else {
            return Err(EvalError::new(ErrorKind::MissingAttr {
                name: "path".into(),
            })
            .at(span));
        };
        let dir = ev.coerce_to_string(dir, Coerce::Plain, span)?;
        realise_context(ev, &dir.context, &dir.s, span)?;
        let rest = if prefix.is_empty() {
            format!("/{name}")
        } else {
            match name.strip_prefix(prefix.as_str()) {
                Some(r) if r.is_empty() || r.starts_with('/') => r.to_owned(),
                _ => continue,
            }
        };
        let dir = if dir.s.starts_with('/') {
            dir.s.to_string()
        } else {
            format!("{}/{}", ev.settings.cwd, dir.s)
        };
        let candidate = crate::syntax::canonicalise(&format!("{dir}{rest}"));
        if std::path::Path::new(&candidate).exists() {
            return Ok(Value::Path(candidate.into()));
        }
    }
    if let Some(rest) = name.strip_prefix("nix/") {
        return Ok(Value::Path(format!("{COREPKGS}{rest}").into()));
    }
    // Thrown: `tryEval` catches it, as in Nix.
    Err(EvalError::new(ErrorKind::Throw(format!(
        "file '{name}' was not found in the Nix search path (add it using $NIX_PATH or -I)"
    )))
    .at(span))
}

/// `hashFile algo path`: the hash of a file's contents, in base 16.
pub(crate) fn hash_file(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let algo = ev.expect_string(&a[0], span)?;
    let algo: ferrix_format::HashAlgo = algo
        .s
        .parse()
        .map_err(|_| other(format!("unknown hash algorithm '{}'", algo.s), span))?;
    let p = real_path(ev, &a[1], span)?;
    let bytes =
        std::fs::read(&p).map_err(|e| other(format!("reading '{}': {e}", p.display()), span))?;
    Ok(Value::string(
        ferrix_format::Hash::of(algo, &bytes).to_base16(),
    ))
}

/// `scopedImport scope path`: a file evaluated (again at each call) with `scope`'s names
/// bound around it, before the globals, which they shadow.
pub(crate) fn scoped_import(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let scope = ev.expect_attrs(&a[0], span)?;
    let file = real_path(ev, &a[1], span)?;
    let file = if file.is_dir() {
        file.join("default.nix")
    } else {
        file
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| other(format!("reading '{}': {e}", file.display()), span))?;
    let base = file
        .parent()
        .map_or_else(|| "/".to_owned(), |p| p.to_string_lossy().into_owned());
    let bindings: Vec<(String, Value)> = scope
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    ev.eval_in_scope(&file.display().to_string(), &text, &base, &bindings)
        .map_err(|e| e.context(Some(span), format!("while importing '{}'", file.display())))
}

/// The file a path or a string names; a string that refers to a store path built by a
/// derivation would need that build first.
fn real_path(ev: &mut Evaluator, v: &Value, span: Span) -> Result<PathBuf> {
    let v = ev.force(v)?;
    match &v {
        Value::Path(p) => Ok(PathBuf::from(&**p)),
        _ => {
            let s = ev.coerce_to_string(&v, Coerce::Plain, span)?;
            realise_context(ev, &s.context, &s.s, span)?;
            if !s.s.starts_with('/') {
                return Err(other(
                    format!("string '{}' doesn't represent an absolute path", s.s),
                    span,
                ));
            }
            Ok(PathBuf::from(&s.s))
        }
    }
}

/// Build the derivation outputs `context` names (what `path` needs to exist to be read).
fn realise_context(ev: &mut Evaluator, context: &Context, path: &str, span: Span) -> Result<()> {
    let mut wanted = Vec::new();
    for c in context.iter() {
        let (drv, output) = match c {
            ContextElem::Plain(p) => {
                // A file or source made by this evaluation: written first (it may still be
                // kept to be written in a batch), or, read-only, not there to read.
                let store = ev.store().map_err(|e| e.at(span))?;
                if store.is_read_only() {
                    let sp = store
                        .store_dir()
                        .parse_path(p)
                        .map_err(|e| other(format!("'{p}': {e}"), span))?;
                    if !store
                        .is_valid(&sp)
                        .map_err(|e| EvalError::store(e).at(span))?
                    {
                        return Err(EvalError::new(ErrorKind::ReadOnlyPath(p.to_string())).at(span));
                    }
                } else {
                    store.flush().map_err(|e| EvalError::store(e).at(span))?;
                }
                continue;
            }
            ContextElem::Output { drv, output } => (drv.clone(), output.to_string()),
            ContextElem::AllOutputs(drv) => (drv.clone(), "out".to_owned()),
        };
        let store = ev.store().map_err(|e| e.at(span))?;
        let p = store
            .store_dir()
            .parse_path(&drv)
            .map_err(|e| other(format!("'{drv}': {e}"), span))?;
        wanted.push((p, output));
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let store = ev.store().map_err(|e| e.at(span))?;
    if store.is_read_only() {
        // Nothing is built when paths are only computed; outputs built earlier can be read.
        for (drv, output) in &wanted {
            let built = store
                .read_derivation(drv)
                .ok()
                .and_then(|d| d.outputs.get(output).and_then(|o| o.path().cloned()))
                .map(|o| store.is_valid(&o))
                .transpose()
                .map_err(|e| EvalError::store(e).at(span))?;
            if built != Some(true) {
                return Err(EvalError::new(ErrorKind::ReadOnly {
                    path: path.to_owned(),
                    output: output.clone(),
                    drv: store.store_dir().display(drv).to_string(),
                })
                .at(span));
            }
        }
        return Ok(());
    }
    // What is to be built must be in the store first.
    store.flush().map_err(|e| EvalError::store(e).at(span))?;
    let Some(r) = &ev.realiser else {
        return Err(other(
            format!("'{path}' is a derivation's output, which reading during evaluation (import from derivation) would need built, and nothing may be built here"),
            span,
        ));
    };
    r.realise(&wanted).map_err(|why| {
        other(
            format!("building what '{path}' needs (import from derivation): {why}"),
            span,
        )
    })
}

pub(crate) fn read_file(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let p = real_path(ev, &a[0], span)?;
    let text =
        std::fs::read(&p).map_err(|e| other(format!("reading '{}': {e}", p.display()), span))?;
    Ok(Value::string(String::from_utf8_lossy(&text).into_owned()))
}

pub(crate) fn path_exists(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let p = real_path(ev, &a[0], span)?;
    Ok(Value::Bool(p.symlink_metadata().is_ok()))
}

pub(crate) fn read_dir(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let p = real_path(ev, &a[0], span)?;
    let io = |e: std::io::Error| {
        other(
            format!("reading the directory '{}': {e}", p.display()),
            span,
        )
    };
    let mut entries = Vec::new();
    for e in std::fs::read_dir(&p).map_err(io)? {
        let e = e.map_err(io)?;
        let t = e.file_type().map_err(io)?;
        entries.push((
            Sym::intern(&e.file_name().to_string_lossy()),
            Value::string(file_type_name(t)),
        ));
    }
    Ok(Value::attrs(Attrs::from_unsorted(entries)))
}

/// `readFileType path`: what `path` itself is (a symlink is not followed).
pub(crate) fn read_file_type(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let p = real_path(ev, &a[0], span)?;
    let meta = std::fs::symlink_metadata(&p)
        .map_err(|e| other(format!("reading '{}': {e}", p.display()), span))?;
    Ok(Value::string(file_type_name(meta.file_type())))
}

/// How `readDir` and `readFileType` name a kind of file.
fn file_type_name(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_file() {
        "regular"
    } else {
        "unknown"
    }
}

/// `toFile name text`: a text file in the store, referring to the paths in `text`'s
/// context.
pub(crate) fn to_file(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let name = ev.expect_string(&a[0], span)?.s.clone();
    let text = ev.coerce_to_string(&a[1], Coerce::Interp, span)?;
    let store = ev.store().map_err(|e| e.at(span))?;
    let sd = store.store_dir().clone();
    let mut refs = BTreeSet::new();
    for c in text.context.iter() {
        match c {
            ContextElem::Plain(p) => {
                refs.insert(
                    sd.parse_path(p)
                        .map_err(|e| other(format!("'{p}': {e}"), span))?,
                );
            }
            _ => {
                return Err(other(
                    format!("in 'toFile': the file '{name}' cannot refer to derivation outputs"),
                    span,
                ))
            }
        }
    }
    let p = store
        .add_text(&name, &text.s, &refs)
        .map_err(|e| EvalError::store(e).at(span))?;
    let full: Rc<str> = sd.display(&p).into();
    Ok(with_context(
        full.to_string(),
        Context::from([ContextElem::Plain(full)]),
    ))
}

/// `placeholder output`: what an output's path is replaced by until it is known.
pub(crate) fn placeholder(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let o = ev.expect_string(&a[0], span)?;
    let h = Hash::sha256(format!("nix-output:{}", o.s).as_bytes());
    Ok(Value::string(format!("/{}", h.to_nix32())))
}

pub(crate) fn discard_context(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.expect_string(&a[0], span)?;
    Ok(Value::string(s.s.clone()))
}

pub(crate) fn has_context(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.expect_string(&a[0], span)?;
    Ok(Value::Bool(!s.context.is_empty()))
}

/// `builtins.path { path; name ? …; filter ? …; recursive ? true; sha256 ? …; }`: a tree
/// added to the store under a name of one's choosing, only what `filter` keeps.
pub(crate) fn path(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let args = ev.expect_attrs(&a[0], span)?;
    let get = |n: &str| args.get(Sym::intern(n)).cloned();
    let src = match get("path") {
        Some(p) => real_path(ev, &p, span)?,
        None => {
            return Err(EvalError::new(ErrorKind::MissingAttr {
                name: "path".into(),
            })
            .at(span))
        }
    };
    let name = match get("name") {
        Some(n) => ev.expect_string(&n, span)?.s.clone(),
        None => base_name(&src).into(),
    };
    if let Some(r) = get("recursive") {
        if !ev.expect_bool(&r, span)? {
            return Err(other(
                "builtins.path with 'recursive = false' is not supported yet".into(),
                span,
            ));
        }
    }
    let expected = match get("sha256") {
        Some(h) => {
            let h = ev.expect_string(&h, span)?;
            Some(
                Hash::parse(&h.s, Some(HashAlgo::Sha256))
                    .map_err(|e| other(format!("invalid 'sha256' '{}': {e}", h.s), span))?,
            )
        }
        None => None,
    };
    let filter = match get("filter") {
        Some(f) => Some(ev.force(&f)?),
        None => None,
    };
    let added = add_filtered(ev, &src, &name, filter, span)?;
    if let Some(h) = expected {
        let store = ev.store().map_err(|e| e.at(span))?;
        let want = store
            .store_dir()
            .make_fixed_output_path(&name, FileIngestionMethod::Recursive, &h, [], false)
            .map_err(|e| other(format!("invalid name '{name}': {e}"), span))?;
        let got = store.store_dir().display(&want);
        if got != added.s {
            return Err(other(
                format!(
                    "hash mismatch in '{}': the path was expected to be '{got}', but is '{}'",
                    src.display(),
                    added.s
                ),
                span,
            ));
        }
    }
    Ok(Value::String(added))
}

/// `builtins.filterSource filter path`.
pub(crate) fn filter_source(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let src = real_path(ev, &a[1], span)?;
    let filter = ev.force(&a[0])?;
    let name = base_name(&src);
    Ok(Value::String(add_filtered(
        ev,
        &src,
        &name,
        Some(filter),
        span,
    )?))
}

fn base_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Add `src` to the store as `name`; with a filter, only the entries it keeps (it is asked
/// about each path under `src` and its type; a directory it refuses is not entered), copied
/// first to a scratch directory.
fn add_filtered(
    ev: &mut Evaluator,
    src: &std::path::Path,
    name: &str,
    filter: Option<Value>,
    span: Span,
) -> Result<Rc<NixString>> {
    let store = ev.store().map_err(|e| e.at(span))?;
    let added = match filter {
        None => store.add_source(src, name),
        Some(f) => {
            let scratch = ScratchDir::new(&ev.settings.tmp_dir)
                .map_err(|e| other(format!("making a scratch directory: {e}"), span))?;
            let copy = scratch.0.join("copy");
            copy_kept(ev, &f, src, &copy, span)?;
            store.add_source(&copy, name)
        }
    }
    .map_err(|e| EvalError::store(e).at(span))?;
    let full: Rc<str> = store.store_dir().display(&added).into();
    Ok(Rc::new(NixString {
        s: compact_str::CompactString::from(&*full),
        context: Context::from([ContextElem::Plain(full)]),
    }))
}

fn copy_kept(
    ev: &mut Evaluator,
    filter: &Value,
    from: &std::path::Path,
    to: &std::path::Path,
    span: Span,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, p: &std::path::Path, e: std::io::Error| {
        other(format!("{what} '{}': {e}", p.display()), span)
    };
    let meta = std::fs::symlink_metadata(from).map_err(|e| io("reading", from, e))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from).map_err(|e| io("reading", from, e))?;
        std::os::unix::fs::symlink(target, to).map_err(|e| io("writing", to, e))?;
    } else if meta.is_dir() {
        std::fs::create_dir(to).map_err(|e| io("writing", to, e))?;
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .map_err(|e| io("reading", from, e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| io("reading", from, e))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let t = e.file_type().map_err(|err| io("reading", &p, err))?;
            let kind = if t.is_dir() {
                "directory"
            } else if t.is_symlink() {
                "symlink"
            } else if t.is_file() {
                "regular"
            } else {
                "unknown"
            };
            let partial = ev.apply(
                filter.clone(),
                Value::string(p.to_string_lossy().into_owned()),
                span,
            )?;
            let keep = ev.apply(partial, Value::string(kind), span)?;
            if ev.expect_bool(&keep, span)? {
                copy_kept(ev, filter, &p, &to.join(e.file_name()), span)?;
            }
        }
    } else {
        std::fs::copy(from, to).map_err(|e| io("copying", from, e))?;
        let exec = meta.permissions().mode() & 0o111 != 0;
        let mode = if exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io("writing", to, e))?;
    }
    Ok(())
}

/// A directory removed when dropped.
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub(crate) fn new(under: &std::path::Path) -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = under.join(format!("ferrix-eval-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
