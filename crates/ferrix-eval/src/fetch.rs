//! Fetchers for local sources and other builtins that reach outside the language:
//! `fetchurl` and `fetchTarball` of `file://` URLs and paths (no network), `fromTOML`,
//! `storePath`, and the string-context builtins.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::error::{ErrorKind, EvalError};
use crate::eval::{Coerce, Evaluator};
use crate::symbol::Sym;
use crate::syntax::Span;
use crate::value::{Attrs, Context, ContextElem, NixString, Value};

type Result<T> = std::result::Result<T, EvalError>;

fn other(msg: String, span: Span) -> EvalError {
    EvalError::new(ErrorKind::Other(msg)).at(span)
}

fn store_string(ev: &mut Evaluator, p: &ferrix_format::StorePath, span: Span) -> Result<Value> {
    let store = ev.store().map_err(|e| e.at(span))?;
    let full: Rc<str> = store.store_dir().display(p).into();
    Ok(Value::String(Rc::new(NixString {
        s: compact_str::CompactString::from(&*full),
        context: Context::from([ContextElem::Plain(full)]),
    })))
}

/// The URL (or `{ url; name ? …; }`) a fetcher is given, and the name of what it makes.
fn url_and_name(
    ev: &mut Evaluator,
    v: &Value,
    default_name: Option<&str>,
    span: Span,
) -> Result<(String, String)> {
    let (url, name) = match ev.force(v)? {
        Value::Attrs(a) => {
            let url = a.get(Sym::intern("url")).cloned().ok_or_else(|| {
                EvalError::new(ErrorKind::MissingAttr { name: "url".into() }).at(span)
            })?;
            let url = ev.coerce_to_string(&url, Coerce::Plain, span)?.s.clone();
            let name = match a.get(Sym::intern("name")) {
                Some(n) => {
                    let n = n.clone();
                    Some(ev.expect_string(&n, span)?.s.clone())
                }
                None => None,
            };
            (url, name)
        }
        v => (
            ev.coerce_to_string(&v, Coerce::Plain, span)?.s.clone(),
            None,
        ),
    };
    let name = name.unwrap_or_else(|| {
        default_name
            .map_or_else(
                || {
                    url.trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .unwrap_or("")
                        .to_owned()
                },
                str::to_owned,
            )
            .into()
    });
    Ok((url.to_string(), name.to_string()))
}

/// The local file a URL names: `file://` or an absolute path; anything else would need the
/// network, which evaluation does not use.
fn local(url: &str, span: Span) -> Result<PathBuf> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    if !path.starts_with('/') {
        return Err(other(
            format!("fetching '{url}' is not supported: only file:// URLs and absolute paths are read during evaluation"),
            span,
        ));
    }
    Ok(PathBuf::from(path))
}

pub(crate) fn fetchurl(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let (url, name) = url_and_name(ev, &a[0], None, span)?;
    let file = local(&url, span)?;
    let store = ev.store().map_err(|e| e.at(span))?;
    let p = store
        .add_fetched_file(&file, &name)
        .map_err(|e| EvalError::store(e).at(span))?;
    store_string(ev, &p, span)
}

pub(crate) fn fetch_tarball(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let (url, name) = url_and_name(ev, &a[0], Some("source"), span)?;
    let file = local(&url, span)?;
    let scratch = crate::derivation::ScratchDir::new(&ev.settings.tmp_dir)
        .map_err(|e| other(format!("making a scratch directory: {e}"), span))?;
    let into = scratch.path().join("unpacked");
    unpack(&file, &into).map_err(|e| other(format!("unpacking '{url}': {e}"), span))?;
    // A tarball of one top-level directory gives that directory, as in Nix.
    let entries: Vec<PathBuf> = std::fs::read_dir(&into)
        .and_then(|d| d.map(|e| e.map(|e| e.path())).collect())
        .map_err(|e| other(format!("reading what '{url}' unpacked to: {e}"), span))?;
    let root = match entries.as_slice() {
        [only] if only.is_dir() => only.clone(),
        _ => into.clone(),
    };
    let store = ev.store().map_err(|e| e.at(span))?;
    let p = store
        .add_fetched(&root, &name)
        .map_err(|e| EvalError::store(e).at(span))?;
    store_string(ev, &p, span)
}

/// Unpack a tar archive (plain, gzip, xz, bzip2 or zstd, told by its first bytes).
fn unpack(file: &Path, into: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::open(file)?;
    let mut magic = [0u8; 6];
    let n = f.read(&mut magic)?;
    drop(f);
    let f = std::fs::File::open(file)?;
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(f)),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00] => Box::new(liblzma::read::XzDecoder::new(f)),
        [b'B', b'Z', b'h', ..] => Box::new(bzip2::read::MultiBzDecoder::new(f)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(zstd::stream::read::Decoder::new(f)?),
        _ => Box::new(f),
    };
    std::fs::create_dir_all(into)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.unpack(into)
}

pub(crate) fn from_toml(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.expect_string(&a[0], span)?;
    let table: toml::Table =
        s.s.parse()
            .map_err(|e| other(format!("while parsing TOML: {e}"), span))?;
    convert(toml::Value::Table(table), span)
}

fn convert(v: toml::Value, span: Span) -> Result<Value> {
    Ok(match v {
        toml::Value::String(s) => Value::string(s),
        toml::Value::Integer(i) => Value::Int(i),
        toml::Value::Float(f) => Value::Float(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => {
            return Err(other(
                format!("while parsing TOML: dates and times ('{d}') are not supported"),
                span,
            ))
        }
        toml::Value::Array(items) => Value::List(
            items
                .into_iter()
                .map(|x| convert(x, span))
                .collect::<Result<Vec<_>>>()?
                .into(),
        ),
        toml::Value::Table(t) => Value::attrs(Attrs::from_unsorted(
            t.into_iter()
                .map(|(k, v)| Ok((Sym::intern(&k), convert(v, span)?)))
                .collect::<Result<Vec<_>>>()?,
        )),
    })
}

pub(crate) fn store_path(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.coerce_to_string(&a[0], Coerce::Plain, span)?;
    let store = ev.store().map_err(|e| e.at(span))?;
    let p = store
        .store_dir()
        .parse_path(&s.s)
        .map_err(|e| other(format!("path '{}' is not in the Nix store: {e}", s.s), span))?;
    if !store
        .is_valid(&p)
        .map_err(|e| EvalError::store(e).at(span))?
    {
        return Err(other(format!("path '{}' is not valid", s.s), span));
    }
    store_string(ev, &p, span)
}

/// `getContext s`: what `s` refers to, by path: `{ path = true; }`, `{ allOutputs = true; }`
/// or `{ outputs = [ … ]; }`.
pub(crate) fn get_context(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.expect_string(&a[0], span)?;
    let mut by_path: Vec<(String, bool, bool, Vec<String>)> = Vec::new();
    for c in s.context.iter() {
        let (p, path, all, out) = match c {
            ContextElem::Plain(p) => (p.to_string(), true, false, None),
            ContextElem::AllOutputs(d) => (d.to_string(), false, true, None),
            ContextElem::Output { drv, output } => {
                (drv.to_string(), false, false, Some(output.to_string()))
            }
        };
        let entry = match by_path.iter_mut().find(|(q, ..)| *q == p) {
            Some(e) => e,
            None => {
                by_path.push((p, false, false, Vec::new()));
                by_path.last_mut().expect("just pushed")
            }
        };
        entry.1 |= path;
        entry.2 |= all;
        entry.3.extend(out);
    }
    Ok(Value::attrs(Attrs::from_unsorted(
        by_path
            .into_iter()
            .map(|(p, path, all, outputs)| {
                let mut e = Vec::new();
                if path {
                    e.push((Sym::intern("path"), Value::Bool(true)));
                }
                if all {
                    e.push((Sym::intern("allOutputs"), Value::Bool(true)));
                }
                if !outputs.is_empty() {
                    e.push((
                        Sym::intern("outputs"),
                        Value::List(outputs.into_iter().map(Value::string).collect()),
                    ));
                }
                (Sym::intern(&p), Value::attrs(Attrs::from_unsorted(e)))
            })
            .collect(),
    )))
}

/// `unsafeDiscardOutputDependency s`: a derivation's own path in `s` stops meaning all
/// its outputs (it refers to the `.drv` file alone).
pub(crate) fn discard_output_dependency(
    ev: &mut Evaluator,
    a: &[Value],
    span: Span,
) -> Result<Value> {
    let s = ev.expect_string(&a[0], span)?;
    let context: Context = s
        .context
        .iter()
        .map(|c| match c {
            ContextElem::AllOutputs(d) => ContextElem::Plain(d.clone()),
            c => c.clone(),
        })
        .collect();
    Ok(Value::String(Rc::new(NixString {
        s: s.s.clone(),
        context,
    })))
}

/// `addDrvOutputDependencies s`: the one derivation `s` refers to, as a path, made to
/// refer to all its outputs (what `drvPath` refers to), the reverse of
/// `unsafeDiscardOutputDependency`.
pub(crate) fn add_drv_output_dependencies(
    ev: &mut Evaluator,
    a: &[Value],
    span: Span,
) -> Result<Value> {
    let s = ev.expect_string(&a[0], span)?;
    let elems: Vec<&ContextElem> = s.context.iter().collect();
    let drv = match elems.as_slice() {
        [ContextElem::Plain(p)] if p.ends_with(".drv") => p.clone(),
        [ContextElem::AllOutputs(_)] => return Ok(Value::String(s.clone())),
        [ContextElem::Plain(p)] => {
            return Err(other(
                format!("path '{p}' is not a derivation, so its outputs cannot be depended on"),
                span,
            ))
        }
        [ContextElem::Output { drv, output }] => {
            return Err(other(
                format!("'{drv}^{output}' is an output of a derivation, not the derivation itself"),
                span,
            ))
        }
        _ => {
            return Err(other(
                format!(
                    "context of string '{}' must have exactly one element, but has {}",
                    s.s,
                    elems.len()
                ),
                span,
            ))
        }
    };
    Ok(Value::String(Rc::new(NixString {
        s: s.s.clone(),
        context: Context::from([ContextElem::AllOutputs(drv)]),
    })))
}

/// `appendContext s ctx`: `s` referring also to what `ctx` (as `getContext` gives it)
/// names.
pub(crate) fn append_context(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.expect_string(&a[0], span)?;
    let extra = ev.expect_attrs(&a[1], span)?;
    let mut context = s.context.clone();
    for (path, info) in extra.iter() {
        let path: Rc<str> = path.name().as_str().into();
        let info = ev.expect_attrs(info, span)?;
        let flag = |ev: &mut Evaluator, n: &str| -> Result<bool> {
            match info.get(Sym::intern(n)) {
                Some(v) => {
                    let v = v.clone();
                    ev.expect_bool(&v, span)
                }
                None => Ok(false),
            }
        };
        if flag(ev, "path")? {
            context.insert(ContextElem::Plain(path.clone()));
        }
        if flag(ev, "allOutputs")? {
            context.insert(ContextElem::AllOutputs(path.clone()));
        }
        if let Some(outs) = info.get(Sym::intern("outputs")) {
            let outs = outs.clone();
            for o in ev.expect_list(&outs, span)?.iter() {
                let o = ev.expect_string(&o, span)?;
                context.insert(ContextElem::Output {
                    drv: path.clone(),
                    output: o.s.as_str().into(),
                });
            }
        }
    }
    Ok(Value::String(Rc::new(NixString {
        s: s.s.clone(),
        context,
    })))
}
