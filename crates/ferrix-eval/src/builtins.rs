//! The global scope and the built-in functions (`builtins.*`) that need nothing outside the
//! evaluator: types, lists, sets, strings, arithmetic, errors, `tryEval` and forcing.

use std::rc::Rc;

use crate::error::{ErrorKind, EvalError};
use crate::eval::{type_error, Coerce, EvalSettings, Evaluator};
use crate::symbol::Sym;
use crate::syntax::{BinOp, Span};
use crate::value::{Attrs, List, NixString, PrimOp, PrimOpFn, Thunk, ThunkState, Value};

type Result<T> = std::result::Result<T, EvalError>;

macro_rules! primops {
    ($( $name:literal / $arity:literal => $f:expr ),* $(,)?) => {
        &[ $( ($name, $arity, $f as PrimOpFn) ),* ]
    };
}

/// Every built-in function: name, arity, implementation.
const PRIMOPS: &[(&str, usize, PrimOpFn)] = primops![
    "abort" / 1 => abort,
    "appendContext" / 2 => crate::fetch::append_context,
    "addErrorContext" / 2 => add_error_context,
    "add" / 2 => |ev, a, s| arith(ev, BinOp::Add, a, s),
    "addDrvOutputDependencies" / 1 => crate::fetch::add_drv_output_dependencies,
    "all" / 2 => |ev, a, s| any_all(ev, a, s, false),
    "any" / 2 => |ev, a, s| any_all(ev, a, s, true),
    "attrNames" / 1 => attr_names,
    "attrValues" / 1 => attr_values,
    "bitAnd" / 2 => |ev, a, s| bits(ev, a, s, |x, y| x & y),
    "bitOr" / 2 => |ev, a, s| bits(ev, a, s, |x, y| x | y),
    "bitXor" / 2 => |ev, a, s| bits(ev, a, s, |x, y| x ^ y),
    // No debugger: the value itself.
    "break" / 1 => |ev, a, _| ev.force(&a[0]),
    "ceil" / 1 => ceil,
    "compareVersions" / 2 => compare_versions,
    "convertHash" / 1 => convert_hash,
    "catAttrs" / 2 => cat_attrs,
    "concatLists" / 1 => concat_lists,
    "concatMap" / 2 => concat_map,
    "concatStringsSep" / 2 => concat_strings_sep,
    "derivationStrict" / 1 => crate::derivation::derivation_strict,
    "deepSeq" / 2 => |ev, a, _| { ev.deep_force(&a[0])?; Ok(a[1].clone()) },
    "div" / 2 => |ev, a, s| arith(ev, BinOp::Div, a, s),
    "elem" / 2 => elem,
    "elemAt" / 2 => elem_at,
    "fetchGit" / 1 => crate::git::fetch_git,
    "fetchTarball" / 1 => crate::fetch::fetch_tarball,
    "fetchurl" / 1 => crate::fetch::fetchurl,
    "filter" / 2 => filter,
    "filterSource" / 2 => crate::derivation::filter_source,
    "findFile" / 2 => crate::derivation::find_file,
    "floor" / 1 => floor,
    "fromJSON" / 1 => crate::json::from_json,
    "fromTOML" / 1 => crate::fetch::from_toml,
    "foldl'" / 3 => foldl,
    "functionArgs" / 1 => function_args,
    "genList" / 2 => gen_list,
    "genericClosure" / 1 => generic_closure,
    "getEnv" / 1 => get_env,
    "groupBy" / 2 => group_by,
    "hashFile" / 2 => crate::derivation::hash_file,
    "hashString" / 2 => hash_string,
    "getAttr" / 2 => get_attr,
    "getContext" / 1 => crate::fetch::get_context,
    "hasAttr" / 2 => has_attr,
    "hasContext" / 1 => crate::derivation::has_context,
    "head" / 1 => head,
    "import" / 1 => crate::derivation::import,
    "intersectAttrs" / 2 => intersect_attrs,
    "isAttrs" / 1 => |ev, a, _| is(ev, &a[0], |v| matches!(v, Value::Attrs(_))),
    "isBool" / 1 => |ev, a, _| is(ev, &a[0], |v| matches!(v, Value::Bool(_))),
    "isFloat" / 1 => |ev, a, _| is(ev, &a[0], |v| matches!(v, Value::Float(_))),
    "isFunction" / 1 => |ev, a, _| is(ev, &a[0], |v| matches!(v, Value::Lambda(_) | Value::PrimOp(_) | Value::PrimOpApp(_))),
    "isInt" / 1 => |ev, a, _| is(ev, &a[0], |v| matches!(v, Value::Int(_))),
    "isList" / 1 => |ev, a, _| is(ev, &a[0], |v| matches!(v, Value::List(_))),
    "isNull" / 1 => |ev, a, _| is(ev, &a[0], |v| matches!(v, Value::Null)),
    "isPath" / 1 => |ev, a, _| is(ev, &a[0], |v| matches!(v, Value::Path(_))),
    "isString" / 1 => |ev, a, _| is(ev, &a[0], |v| matches!(v, Value::String(_))),
    "length" / 1 => |ev, a, s| Ok(Value::Int(ev.expect_list(&a[0], s)?.len() as i64)),
    "lessThan" / 2 => |ev, a, s| Ok(Value::Bool(ev.compare(&a[0], &a[1], s)? == std::cmp::Ordering::Less)),
    "listToAttrs" / 1 => list_to_attrs,
    "map" / 2 => map,
    "mapAttrs" / 2 => map_attrs,
    "match" / 2 => crate::regex::match_,
    "parseDrvName" / 1 => parse_drv_name,
    "partition" / 2 => partition,
    "path" / 1 => crate::derivation::path,
    "pathExists" / 1 => crate::derivation::path_exists,
    "placeholder" / 1 => crate::derivation::placeholder,
    "readDir" / 1 => crate::derivation::read_dir,
    "readFile" / 1 => crate::derivation::read_file,
    "readFileType" / 1 => crate::derivation::read_file_type,
    "mul" / 2 => |ev, a, s| arith(ev, BinOp::Mul, a, s),
    "removeAttrs" / 2 => remove_attrs,
    "replaceStrings" / 3 => replace_strings,
    "sort" / 2 => sort,
    "split" / 2 => crate::regex::split,
    "splitVersion" / 1 => split_version,
    "scopedImport" / 2 => crate::derivation::scoped_import,
    "seq" / 2 => |ev, a, _| { ev.force(&a[0])?; Ok(a[1].clone()) },
    "storePath" / 1 => crate::fetch::store_path,
    "stringLength" / 1 => |ev, a, s| Ok(Value::Int(ev.coerce_to_string(&a[0], Coerce::Interp, s)?.s.len() as i64)),
    "sub" / 2 => |ev, a, s| arith(ev, BinOp::Sub, a, s),
    "substring" / 3 => substring,
    "tail" / 1 => tail,
    "toFile" / 2 => crate::derivation::to_file,
    "toJSON" / 1 => crate::json::to_json,
    "toPath" / 1 => to_path,
    "toXML" / 1 => crate::xml::to_xml,
    "throw" / 1 => throw,
    "toString" / 1 => |ev, a, s| Ok(Value::String(ev.coerce_to_string(&a[0], Coerce::ToString, s)?)),
    "trace" / 2 => trace,
    // `trace-verbose` is off: only the value.
    "traceVerbose" / 2 => |_, a, _| Ok(a[1].clone()),
    "tryEval" / 1 => try_eval,
    "warn" / 2 => warn,
    "unsafeGetAttrPos" / 2 => unsafe_get_attr_pos,
    "unsafeDiscardOutputDependency" / 1 => crate::fetch::discard_output_dependency,
    "unsafeDiscardStringContext" / 1 => crate::derivation::discard_context,
    "zipAttrsWith" / 2 => zip_attrs_with,
    "typeOf" / 1 => |ev, a, _| Ok(Value::string(ev.force(&a[0])?.type_of())),
];

/// Names of `builtins` also bound in the global scope, as in Nix (the others are bound as
/// `__name`).
const GLOBAL: &[&str] = &[
    "abort",
    "baseNameOf",
    "derivation",
    "derivationStrict",
    "dirOf",
    "fetchGit",
    "fetchTarball",
    "fromTOML",
    "import",
    "isNull",
    "map",
    "placeholder",
    "removeAttrs",
    "scopedImport",
    "throw",
    "toString",
];

/// The global frame: its names (slot order) and values.
pub(crate) fn globals(settings: &EvalSettings) -> (Vec<Sym>, Vec<Value>) {
    let prim = |name: &'static str, arity: usize, run: PrimOpFn| {
        Value::PrimOp(Rc::new(PrimOp { name, arity, run }))
    };
    let mut entries: Vec<(Sym, Value)> = PRIMOPS
        .iter()
        .map(|(n, a, f)| (Sym::intern(n), prim(n, *a, *f)))
        .collect();
    entries.push((
        Sym::intern("baseNameOf"),
        prim("baseNameOf", 1, base_name_of),
    ));
    entries.push((Sym::intern("dirOf"), prim("dirOf", 1, dir_of)));
    entries.push((Sym::intern("true"), Value::Bool(true)));
    entries.push((Sym::intern("false"), Value::Bool(false)));
    entries.push((Sym::intern("null"), Value::Null));
    entries.push((
        Sym::intern("currentSystem"),
        Value::string(&settings.system),
    ));
    // The version whose protocols and formats Ferrix speaks.
    entries.push((Sym::intern("nixVersion"), Value::string("2.8.0")));
    entries.push((Sym::intern("langVersion"), Value::Int(6)));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    entries.push((Sym::intern("currentTime"), Value::Int(now)));
    entries.push((Sym::intern("storeDir"), Value::string(&settings.store_dir)));
    // The search path as given: `{ path; prefix; }` for each entry, what `<name>` looks in.
    let nix_path: crate::value::List = settings
        .search_path
        .iter()
        .map(|(prefix, dir)| {
            Value::attrs(Attrs::from_unsorted(vec![
                (Sym::intern("path"), Value::string(dir.to_string_lossy())),
                (
                    Sym::intern("prefix"),
                    Value::string(prefix.as_deref().unwrap_or("")),
                ),
            ]))
        })
        .collect();
    entries.push((Sym::intern("nixPath"), Value::List(nix_path)));
    // Defined in Nix by the evaluator once it exists (see `derivation::define_derivation`).
    let derivation = Thunk::new(ThunkState::Blackhole);
    entries.push((Sym::intern("derivation"), Value::Thunk(derivation)));
    // `builtins.builtins` is the set itself.
    let this = Thunk::new(ThunkState::Blackhole);
    entries.push((Sym::intern("builtins"), Value::Thunk(this.clone())));
    let set = Value::attrs(Attrs::from_unsorted(entries));
    this.set(ThunkState::Done(set.clone()));

    let Value::Attrs(all) = &set else {
        unreachable!("built above")
    };
    let mut names = vec![
        Sym::intern("builtins"),
        Sym::intern("true"),
        Sym::intern("false"),
        Sym::intern("null"),
    ];
    let mut values = vec![
        set.clone(),
        Value::Bool(true),
        Value::Bool(false),
        Value::Null,
    ];
    for g in GLOBAL {
        let s = Sym::intern(g);
        if let Some(v) = all.get(s) {
            names.push(s);
            values.push(v.clone());
        }
    }
    // The others are global too, as `__name` (`__findFile`, `__nixPath`, `__add`…).
    for (s, v) in all.iter() {
        let name = s.name();
        if !GLOBAL.contains(&&*name) && !matches!(&*name, "builtins" | "true" | "false" | "null") {
            names.push(Sym::intern(&format!("__{name}")));
            values.push(v.clone());
        }
    }
    (names, values)
}

fn arith(ev: &mut Evaluator, op: BinOp, a: &[Value], span: Span) -> Result<Value> {
    let x = ev.force(&a[0])?;
    let y = ev.force(&a[1])?;
    ev.arith(op, &x, &y, span)
}

fn is(ev: &mut Evaluator, v: &Value, f: impl Fn(&Value) -> bool) -> Result<Value> {
    Ok(Value::Bool(f(&ev.force(v)?)))
}

fn abort(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let msg = ev.coerce_to_string(&a[0], Coerce::Interp, span)?;
    Err(EvalError::new(ErrorKind::Abort(msg.s.to_string())))
}

fn throw(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let msg = ev.coerce_to_string(&a[0], Coerce::Interp, span)?;
    Err(EvalError::new(ErrorKind::Throw(msg.s.to_string())))
}

fn trace(ev: &mut Evaluator, a: &[Value], _span: Span) -> Result<Value> {
    let v = ev.force(&a[0])?;
    let shown = match &v {
        Value::String(s) => s.s.clone(),
        v => crate::print::print(ev, v, false)?.into(),
    };
    #[allow(clippy::print_stderr)]
    {
        eprintln!("trace: {shown}");
    }
    Ok(a[1].clone())
}

/// `builtins.warn msg v` (Nix 2.23): `msg`, which must be a string, printed as a warning;
/// then `v`. With `abort-on-warn`, an error instead, which `tryEval` does not catch.
fn warn(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let msg = ev.expect_string(&a[0], span).map_err(|e| {
        e.context(
            None,
            "while evaluating the first argument; the message passed to builtins.warn",
        )
    })?;
    #[allow(clippy::print_stderr)]
    {
        eprintln!("evaluation warning: {}", msg.s);
    }
    if ev.settings.abort_on_warn {
        return Err(EvalError::new(ErrorKind::AbortOnWarn).at(span));
    }
    ev.force(&a[1])
}

fn try_eval(ev: &mut Evaluator, a: &[Value], _span: Span) -> Result<Value> {
    let (success, value) = match ev.force(&a[0]) {
        Ok(v) => (true, v),
        Err(e) if e.catchable() => (false, Value::Bool(false)),
        Err(e) => return Err(e),
    };
    Ok(Value::attrs(Attrs::from_unsorted(vec![
        (Sym::intern("success"), Value::Bool(success)),
        (Sym::intern("value"), value),
    ])))
}

fn head(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let l = ev.expect_list(&a[0], span)?;
    if l.is_empty() {
        return Err(EvalError::new(ErrorKind::Other(
            "'builtins.head' called on an empty list".into(),
        )));
    }
    ev.force_elem(&l, 0)
}

fn tail(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let l = ev.expect_list(&a[0], span)?;
    if l.is_empty() {
        return Err(EvalError::new(ErrorKind::Other(
            "'builtins.tail' called on an empty list".into(),
        )));
    }
    Ok(Value::List(l.tail_from(1)))
}

fn elem_at(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let l = ev.expect_list(&a[0], span)?;
    let i = ev.expect_int(&a[1], span)?;
    usize::try_from(i)
        .ok()
        .filter(|i| *i < l.len())
        .ok_or_else(|| EvalError::new(ErrorKind::Other(format!("list index {i} is out of bounds"))))
        .and_then(|i| ev.force_elem(&l, i))
}

fn elem(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let l = ev.expect_list(&a[1], span)?;
    for i in 0..l.len() {
        let x = ev.force_elem(&l, i)?;
        if ev.equal(&a[0], &x)? {
            return Ok(Value::Bool(true));
        }
    }
    Ok(Value::Bool(false))
}

fn map(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let l = ev.expect_list(&a[1], span)?;
    let n = l.len();
    Ok(Value::List(List::generated(a[0].clone(), Some(l), n)))
}

/// `f` forced, which must be a function: the first thing the builtins that call a function
/// for each element of a list do (`foldl'`, `filter`, `any`, `all`, `sort`, `partition`,
/// `groupBy`, `concatMap`, `zipAttrsWith`), even for an empty list, as in Nix.
fn function(ev: &mut Evaluator, f: &Value, span: Span) -> Result<Value> {
    let f = ev.force(f)?;
    match &f {
        Value::Lambda(_) | Value::PrimOp(_) | Value::PrimOpApp(_) => Ok(f),
        Value::Attrs(s) if s.get(Sym::intern("__functor")).is_some() => Ok(f),
        other => Err(type_error("a function", other, span)),
    }
}

fn filter(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let f = function(ev, &a[0], span)?;
    let l = ev.expect_list(&a[1], span)?;
    let strict = crate::apply::ForcesArg::of1(&f);
    let mut out = Vec::new();
    for i in 0..l.len() {
        let x = match &strict {
            Some(s) => ev.force_elem(&l, i).map_err(|e| s.inside(e, span))?,
            None => l.get(i).unwrap_or_default(),
        };
        let keep = ev.apply_ref(&f, x, span)?;
        if ev.expect_bool(&keep, span)? {
            out.push(l.settled(i));
        }
    }
    Ok(Value::List(out.into()))
}

fn foldl(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let f = function(ev, &a[0], span)?;
    let l = ev.expect_list(&a[2], span)?;
    let mut acc = a[1].clone();
    let mut frames = crate::apply::Frames2::default();
    let mut spare = None;
    let strict = crate::apply::ForcesArg::of2(&f);
    for i in 0..l.len() {
        if let Some(s) = strict
            .as_ref()
            .filter(|s| !s.after_first || !matches!(acc, Value::Thunk(_)))
        {
            let x = ev.force_elem(&l, i).map_err(|e| s.inside(e, span))?;
            acc = ev.apply2_with(&f, acc, x, span, Some(&mut frames))?;
            continue;
        }
        let x = l.lend(i, &mut spare);
        acc = ev.apply2_with(&f, acc, x, span, Some(&mut frames))?;
        l.settle_into(i, &mut spare);
    }
    ev.force(&acc)
}

fn any_all(ev: &mut Evaluator, a: &[Value], span: Span, any: bool) -> Result<Value> {
    let f = function(ev, &a[0], span)?;
    let l = ev.expect_list(&a[1], span)?;
    let strict = crate::apply::ForcesArg::of1(&f);
    let mut spare = None;
    for i in 0..l.len() {
        let r = match &strict {
            Some(s) => {
                let x = ev.force_elem(&l, i).map_err(|e| s.inside(e, span))?;
                ev.apply_ref(&f, x, span)?
            }
            None => {
                let x = l.lend(i, &mut spare);
                let r = ev.apply_ref(&f, x, span)?;
                l.settle_into(i, &mut spare);
                r
            }
        };
        if ev.expect_bool(&r, span)? == any {
            return Ok(Value::Bool(any));
        }
    }
    Ok(Value::Bool(!any))
}

fn gen_list(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let n = ev.expect_int(&a[1], span)?;
    if n < 0 {
        return Err(EvalError::new(ErrorKind::Other(format!(
            "cannot create list of size {n}"
        ))));
    }
    Ok(Value::List(List::generated(a[0].clone(), None, n as usize)))
}

fn concat_lists(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let ls = ev.expect_list(&a[0], span)?;
    let mut out = Vec::new();
    for i in 0..ls.len() {
        let l = ev.force_elem(&ls, i)?;
        out.extend(ev.expect_list(&l, span)?.iter());
    }
    Ok(Value::List(out.into()))
}

fn concat_map(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let f = function(ev, &a[0], span)?;
    let ls = ev.expect_list(&a[1], span)?;
    let mut out = Vec::new();
    for x in ls.iter() {
        let r = ev.apply_ref(&f, x, span)?;
        out.extend(ev.expect_list(&r, span)?.iter());
    }
    Ok(Value::List(out.into()))
}

fn attr_names(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.expect_attrs(&a[0], span)?;
    Ok(Value::List(
        s.sorted_by_name()
            .into_iter()
            .map(|(n, _)| Value::string(&*n))
            .collect(),
    ))
}

fn attr_values(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.expect_attrs(&a[0], span)?;
    Ok(Value::List(
        s.sorted_by_name()
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect(),
    ))
}

fn get_attr(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let name = ev.expect_string(&a[0], span)?;
    let s = ev.expect_attrs(&a[1], span)?;
    s.get(Sym::intern(&name.s)).cloned().ok_or_else(|| {
        EvalError::new(ErrorKind::MissingAttr {
            name: name.s.to_string(),
        })
    })
}

fn has_attr(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let name = ev.expect_string(&a[0], span)?;
    let s = ev.expect_attrs(&a[1], span)?;
    Ok(Value::Bool(s.get(Sym::intern(&name.s)).is_some()))
}

fn remove_attrs(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.expect_attrs(&a[0], span)?;
    let names = ev.expect_list(&a[1], span)?;
    let mut gone = Vec::new();
    for n in names.iter() {
        gone.push(Sym::intern(&ev.expect_string(&n, span)?.s));
    }
    Ok(Value::attrs(s.only(|k| !gone.contains(&k))))
}

fn intersect_attrs(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let x = ev.expect_attrs(&a[0], span)?;
    let y = ev.expect_attrs(&a[1], span)?;
    Ok(Value::attrs(y.only_named_in(&x)))
}

fn cat_attrs(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let name = Sym::intern(&ev.expect_string(&a[0], span)?.s);
    let l = ev.expect_list(&a[1], span)?;
    let mut out = Vec::new();
    for i in 0..l.len() {
        let x = ev.force_elem(&l, i)?;
        if let Some(v) = ev.expect_attrs(&x, span)?.get(name) {
            out.push(v.clone());
        }
    }
    Ok(Value::List(out.into()))
}

fn list_to_attrs(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let l = ev.expect_list(&a[0], span)?;
    let (name_s, value_s) = (Sym::intern("name"), Sym::intern("value"));
    let mut entries: Vec<crate::value::Entry> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for i in 0..l.len() {
        let x = ev.force_elem(&l, i)?;
        let item = ev.expect_attrs(&x, span)?;
        let name = item.get(name_s).cloned().ok_or_else(|| {
            EvalError::new(ErrorKind::MissingAttr {
                name: "name".into(),
            })
        })?;
        let name = Sym::intern(&ev.expect_string(&name, span)?.s);
        // The first of equal names wins, as in Nix.
        if !seen.insert(name) {
            continue;
        }
        // Placed where its `value` was, as in Nix.
        let (value, pos) = item.get_placed(value_s).ok_or_else(|| {
            EvalError::new(ErrorKind::MissingAttr {
                name: "value".into(),
            })
        })?;
        entries.push(crate::value::Entry {
            name,
            pos,
            value: value.clone(),
        });
    }
    entries.sort_by_key(|e| e.name);
    Ok(Value::attrs(Attrs::from_entries(entries)))
}

fn map_attrs(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.expect_attrs(&a[1], span)?;
    Ok(Value::attrs(Attrs::from_sorted(
        s.iter()
            .map(|(k, v)| {
                let partial = Thunk::apply(a[0].clone(), Value::string(&*k.name()));
                (*k, Thunk::apply(partial, v.clone()))
            })
            .collect(),
    )))
}

fn function_args(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    match ev.force(&a[0])? {
        Value::Lambda(c) => match &c.def.param {
            crate::syntax::Param::Ident(_) => Ok(Value::attrs(Attrs::default())),
            crate::syntax::Param::Formals {
                formals, positions, ..
            } => {
                // Formals as given; their places are those of the sorted positions.
                let mut entries: Vec<crate::value::Entry> = formals
                    .iter()
                    .map(|(n, d)| crate::value::Entry {
                        name: *n,
                        pos: positions
                            .statics
                            .binary_search_by_key(n, |(s, _, _)| *s)
                            .map_or(crate::syntax::Pos::NONE, |i| positions.positions[i]),
                        value: Value::Bool(d.is_some()),
                    })
                    .collect();
                entries.sort_by_key(|e| e.name);
                entries.dedup_by_key(|e| e.name);
                Ok(Value::attrs(Attrs::from_entries(entries)))
            }
        },
        Value::PrimOp(_) | Value::PrimOpApp(_) => Ok(Value::attrs(Attrs::default())),
        other => Err(type_error("a function", &other, span)),
    }
}

fn concat_strings_sep(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let sep = ev.expect_string(&a[0], span)?;
    let l = ev.expect_list(&a[1], span)?;
    let mut context = sep.context.clone();
    // Built as a `String`, whose appends cost less, and taken over whole at the end.
    let mut out = String::new();
    for i in 0..l.len() {
        if i > 0 {
            out.push_str(&sep.s);
        }
        let x = ev.force_elem(&l, i)?;
        let s = ev.coerce_to_string(&x, Coerce::Interp, span)?;
        out.push_str(&s.s);
        context.extend(&s.context);
    }
    Ok(Value::String(Rc::new(NixString {
        s: out.into(),
        context,
    })))
}

fn substring(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let start = ev.expect_int(&a[0], span)?;
    let len = ev.expect_int(&a[1], span)?;
    let s = ev.coerce_to_string(&a[2], Coerce::Interp, span)?;
    if start < 0 {
        return Err(EvalError::new(ErrorKind::Other(
            "negative start position in 'substring'".into(),
        )));
    }
    let bytes = s.s.as_bytes();
    let from = (start as usize).min(bytes.len());
    let to = if len < 0 {
        bytes.len()
    } else {
        from.saturating_add(len as usize).min(bytes.len())
    };
    Ok(Value::String(Rc::new(NixString {
        s: String::from_utf8_lossy(&bytes[from..to]).into(),
        context: s.context.clone(),
    })))
}

fn replace_strings(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let from = ev.expect_list(&a[0], span)?;
    let to = ev.expect_list(&a[1], span)?;
    if from.len() != to.len() {
        return Err(EvalError::new(ErrorKind::Other(
            "'from' and 'to' arguments passed to builtins.replaceStrings have different lengths"
                .into(),
        )));
    }
    let mut pats = Vec::new();
    for f in from.iter() {
        pats.push(ev.expect_string(&f, span)?);
    }
    let s = ev.expect_string(&a[2], span)?;
    let mut out = NixString {
        s: compact_str::CompactString::default(),
        context: s.context.clone(),
    };
    let mut i = 0;
    let text = s.s.as_str();
    // Replacements are forced only when used, as in Nix.
    let mut reps: Vec<Option<Rc<NixString>>> = vec![None; to.len()];
    while i <= text.len() {
        let mut matched = false;
        for (k, p) in pats.iter().enumerate() {
            if text[i..].starts_with(p.s.as_str()) {
                if reps[k].is_none() {
                    reps[k] = Some(ev.expect_string(&to.get(k).unwrap_or_default(), span)?);
                }
                let r = reps[k].as_ref().expect("just set");
                out.s.push_str(&r.s);
                out.context.extend(&r.context);
                if p.s.is_empty() {
                    if let Some(c) = text[i..].chars().next() {
                        out.s.push(c);
                        i += c.len_utf8();
                    } else {
                        i += 1;
                    }
                } else {
                    i += p.s.len();
                }
                matched = true;
                break;
            }
        }
        if !matched {
            match text[i..].chars().next() {
                Some(c) => {
                    out.s.push(c);
                    i += c.len_utf8();
                }
                None => break,
            }
        }
    }
    Ok(Value::String(Rc::new(out)))
}

fn base_name_of(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.coerce_to_string(&a[0], Coerce::Plain, span)?;
    let t = s.s.trim_end_matches('/');
    let base = t.rsplit('/').next().unwrap_or("");
    Ok(Value::String(Rc::new(NixString {
        s: base.into(),
        context: s.context.clone(),
    })))
}

fn dir_of(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let v = ev.force(&a[0])?;
    let dir = |p: &str| -> String {
        match p.rfind('/') {
            Some(0) => "/".into(),
            Some(i) => p[..i].into(),
            None => ".".into(),
        }
    };
    match &v {
        Value::Path(p) => Ok(Value::Path(dir(p).into())),
        _ => {
            let s = ev.coerce_to_string(&v, Coerce::Plain, span)?;
            Ok(Value::String(Rc::new(NixString {
                s: dir(&s.s).into(),
                context: s.context.clone(),
            })))
        }
    }
}

/// A stable merge sort by a comparison that may fail (a user's `lessThan`): never a panic on
/// a comparison that is not a total order, as Rust's own sort may give.
fn merge_sort(
    ev: &mut Evaluator,
    items: Vec<Value>,
    less: &mut dyn FnMut(&mut Evaluator, &Value, &Value) -> Result<bool>,
) -> Result<Vec<Value>> {
    if items.len() <= 1 {
        return Ok(items);
    }
    let mut right = items;
    let left: Vec<Value> = right.drain(..right.len() / 2).collect();
    let left = merge_sort(ev, left, less)?;
    let right = merge_sort(ev, right, less)?;
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut i, mut j) = (0, 0);
    while i < left.len() && j < right.len() {
        // Equal elements keep their order: the right one goes first only if less.
        if less(ev, &right[j], &left[i])? {
            out.push(right[j].clone());
            j += 1;
        } else {
            out.push(left[i].clone());
            i += 1;
        }
    }
    out.extend_from_slice(&left[i..]);
    out.extend_from_slice(&right[j..]);
    Ok(out)
}

pub(crate) fn sort(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let f = function(ev, &a[0], span)?;
    let l = ev.expect_list(&a[1], span)?;
    // Every element is forced first, in order, as Nix does before it compares any.
    let elems = (0..l.len())
        .map(|i| ev.force_elem(&l, i))
        .collect::<Result<Vec<_>>>()?;
    let mut less = |ev: &mut Evaluator, x: &Value, y: &Value| -> Result<bool> {
        let r = ev.apply2(&f, x.clone(), y.clone(), span)?;
        ev.expect_bool(&r, span)
    };
    Ok(Value::List(merge_sort(ev, elems, &mut less)?.into()))
}

pub(crate) fn partition(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let f = function(ev, &a[0], span)?;
    let l = ev.expect_list(&a[1], span)?;
    let (mut right, mut wrong) = (Vec::new(), Vec::new());
    for i in 0..l.len() {
        // Each element is forced before the call, as Nix does.
        let x = ev.force_elem(&l, i)?;
        let r = ev.apply_ref(&f, x.clone(), span)?;
        if ev.expect_bool(&r, span)? {
            right.push(x.clone());
        } else {
            wrong.push(x.clone());
        }
    }
    Ok(Value::attrs(Attrs::from_unsorted(vec![
        (Sym::intern("right"), Value::List(right.into())),
        (Sym::intern("wrong"), Value::List(wrong.into())),
    ])))
}

pub(crate) fn group_by(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let f = function(ev, &a[0], span)?;
    let l = ev.expect_list(&a[1], span)?;
    let mut groups: Vec<(Sym, Vec<Value>)> = Vec::new();
    let mut index: std::collections::HashMap<Sym, usize> = std::collections::HashMap::new();
    for x in l.iter() {
        let k = ev.apply_ref(&f, x.clone(), span)?;
        let k = Sym::intern(&ev.expect_string(&k, span)?.s);
        match index.get(&k) {
            Some(&i) => groups[i].1.push(x.clone()),
            None => {
                index.insert(k, groups.len());
                groups.push((k, vec![x.clone()]));
            }
        }
    }
    Ok(Value::attrs(Attrs::from_unsorted(
        groups
            .into_iter()
            .map(|(k, g)| (k, Value::List(g.into())))
            .collect(),
    )))
}

pub(crate) fn zip_attrs_with(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    function(ev, &a[0], span)?;
    let sets = ev.expect_list(&a[1], span)?;
    let mut by_name: Vec<(Sym, Vec<Value>)> = Vec::new();
    let mut index: std::collections::HashMap<Sym, usize> = std::collections::HashMap::new();
    for s in sets.iter() {
        let s = ev.expect_attrs(&s, span)?;
        for (k, v) in s.iter() {
            match index.get(k) {
                Some(&i) => by_name[i].1.push(v.clone()),
                None => {
                    index.insert(*k, by_name.len());
                    by_name.push((*k, vec![v.clone()]));
                }
            }
        }
    }
    Ok(Value::attrs(Attrs::from_unsorted(
        by_name
            .into_iter()
            .map(|(k, vs)| {
                let partial = Thunk::apply(a[0].clone(), Value::string(&*k.name()));
                (k, Thunk::apply(partial, Value::List(vs.into())))
            })
            .collect(),
    )))
}

pub(crate) fn generic_closure(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let args = ev.expect_attrs(&a[0], span)?;
    let get = |n: &str| {
        args.get(Sym::intern(n))
            .cloned()
            .ok_or_else(|| EvalError::new(ErrorKind::MissingAttr { name: n.into() }).at(span))
    };
    let start = get("startSet")?;
    let op = get("operator")?;
    let mut todo: std::collections::VecDeque<Value> =
        ev.expect_list(&start, span)?.iter().collect();
    let mut keys: Vec<Value> = Vec::new();
    let mut simple_keys: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut out = Vec::new();
    let key = Sym::intern("key");
    while let Some(item) = todo.pop_front() {
        let attrs = ev.expect_attrs(&item, span)?;
        let k = attrs.get(key).cloned().ok_or_else(|| {
            EvalError::new(ErrorKind::MissingAttr { name: "key".into() }).at(span)
        })?;
        let k = ev.force(&k)?;
        // Numbers, strings and paths are remembered by value; other keys are compared.
        let simple = match &k {
            Value::Int(i) => Some(format!("i{i}")),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                Some(format!("i{}", *f as i64))
            }
            Value::String(s) => Some(format!("s{}", s.s)),
            Value::Path(p) => Some(format!("p{p}")),
            _ => None,
        };
        let seen = match &simple {
            Some(s) => !simple_keys.insert(s.clone()),
            None => {
                let mut found = false;
                for old in &keys {
                    if ev.equal(old, &k)? {
                        found = true;
                        break;
                    }
                }
                found
            }
        };
        if seen {
            continue;
        }
        if simple.is_none() {
            keys.push(k);
        }
        out.push(item.clone());
        let next = ev.apply(op.clone(), item, span)?;
        todo.extend(ev.expect_list(&next, span)?.iter());
    }
    Ok(Value::List(out.into()))
}

pub(crate) fn hash_string(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let algo = ev.expect_string(&a[0], span)?;
    let algo: ferrix_format::HashAlgo = algo.s.parse().map_err(|_| {
        EvalError::new(ErrorKind::Other(format!(
            "unknown hash algorithm '{}'",
            algo.s
        )))
        .at(span)
    })?;
    let s = ev.coerce_to_string(&a[1], crate::eval::Coerce::Interp, span)?;
    Ok(Value::string(
        ferrix_format::Hash::of(algo, s.s.as_bytes()).to_base16(),
    ))
}

/// `convertHash { hash; hashAlgo ? ; toHashFormat; }`: a hash in another encoding
/// (`base16`, `nix32` or `base32`, `base64`, `sri`).
fn convert_hash(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let args = ev.expect_attrs(&a[0], span)?;
    let get = |ev: &mut Evaluator, name: &str| -> Result<Option<String>> {
        match args.get(Sym::intern(name)) {
            Some(v) => Ok(Some(ev.expect_string(v, span)?.s.to_string())),
            None => Ok(None),
        }
    };
    let missing = |name: &str| {
        EvalError::new(ErrorKind::Other(format!(
            "attribute '{name}' missing in the argument of builtins.convertHash"
        )))
        .at(span)
    };
    let hash = get(ev, "hash")?.ok_or_else(|| missing("hash"))?;
    let to = get(ev, "toHashFormat")?.ok_or_else(|| missing("toHashFormat"))?;
    let algo = match get(ev, "hashAlgo")? {
        Some(a) => Some(a.parse::<ferrix_format::HashAlgo>().map_err(|_| {
            EvalError::new(ErrorKind::Other(format!("unknown hash algorithm '{a}'"))).at(span)
        })?),
        None => None,
    };
    let h = ferrix_format::Hash::parse(&hash, algo)
        .map_err(|e| EvalError::new(ErrorKind::Other(format!("hash '{hash}': {e}"))).at(span))?;
    Ok(Value::string(match to.as_str() {
        "base16" => h.to_base16(),
        "nix32" | "base32" => h.to_nix32(),
        "base64" => h.to_base64(),
        "sri" => h.to_sri(),
        other => {
            return Err(EvalError::new(ErrorKind::Other(format!(
                "unknown hash format '{other}', expected 'base16', 'nix32', 'base32', 'base64' or 'sri'"
            )))
            .at(span))
        }
    }))
}

pub(crate) fn compare_versions(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let x = ev.expect_string(&a[0], span)?;
    let y = ev.expect_string(&a[1], span)?;
    Ok(Value::Int(match crate::versions::compare(&x.s, &y.s) {
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 0,
        std::cmp::Ordering::Greater => 1,
    }))
}

pub(crate) fn split_version(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let v = ev.expect_string(&a[0], span)?;
    Ok(Value::List(
        crate::versions::split(&v.s)
            .into_iter()
            .map(Value::string)
            .collect(),
    ))
}

pub(crate) fn parse_drv_name(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let v = ev.coerce_to_string(&a[0], crate::eval::Coerce::Interp, span)?;
    let (name, version) = crate::versions::parse_drv_name(&v.s);
    Ok(Value::attrs(Attrs::from_unsorted(vec![
        (Sym::intern("name"), Value::string(name)),
        (Sym::intern("version"), Value::string(version)),
    ])))
}

fn number(ev: &mut Evaluator, v: &Value, span: Span) -> Result<f64> {
    match ev.force(v)? {
        Value::Int(i) => Ok(i as f64),
        Value::Float(f) => Ok(f),
        other => Err(type_error("a float", &other, span)),
    }
}

pub(crate) fn floor(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    Ok(Value::Int(number(ev, &a[0], span)?.floor() as i64))
}

pub(crate) fn ceil(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    Ok(Value::Int(number(ev, &a[0], span)?.ceil() as i64))
}

pub(crate) fn bits(
    ev: &mut Evaluator,
    a: &[Value],
    span: Span,
    f: fn(i64, i64) -> i64,
) -> Result<Value> {
    let x = ev.expect_int(&a[0], span)?;
    let y = ev.expect_int(&a[1], span)?;
    Ok(Value::Int(f(x, y)))
}

pub(crate) fn get_env(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let name = ev.expect_string(&a[0], span)?;
    Ok(Value::string(
        ev.settings
            .env
            .get(name.s.as_str())
            .cloned()
            .unwrap_or_default(),
    ))
}

pub(crate) fn add_error_context(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let v = a[1].clone();
    match ev.force(&v) {
        Ok(v) => Ok(v),
        Err(e) => {
            let msg = ev
                .coerce_to_string(&a[0], crate::eval::Coerce::Interp, span)
                .map(|s| s.s.clone())
                .unwrap_or_default();
            Err(e.context(None, msg))
        }
    }
}

pub(crate) fn to_path(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.coerce_to_string(&a[0], crate::eval::Coerce::Plain, span)?;
    if !s.s.starts_with('/') {
        return Err(EvalError::new(ErrorKind::Other(format!(
            "string '{}' doesn't represent an absolute path",
            s.s
        )))
        .at(span));
    }
    Ok(Value::String(Rc::new(NixString {
        s: crate::syntax::canonicalise(&s.s).into(),
        context: s.context.clone(),
    })))
}

/// Where an attribute was defined (`{ file; line; column; }`), or null when unknown (a set
/// not made by a literal).
pub(crate) fn unsafe_get_attr_pos(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let name = ev.expect_string(&a[0], span)?;
    let set = ev.expect_attrs(&a[1], span)?;
    Ok(match set.position(Sym::intern(&name.s)) {
        Some(p) => ev.position(p),
        None => Value::Null,
    })
}
