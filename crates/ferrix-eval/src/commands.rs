//! What commands ask of a value: a function of a set called with `--arg`s, the attribute
//! `-A` selects, and the derivations `nix-instantiate` finds in it.

use std::rc::Rc;

use crate::error::{ErrorKind, EvalError};
use crate::eval::{AutoArg, Evaluator};
use crate::symbol::Sym;
use crate::syntax::{Param, Span};
use crate::value::{Attrs, Thunk, Value};

type Result<T> = std::result::Result<T, EvalError>;

impl Evaluator {
    /// Whether `v` is a function of a set of arguments (which commands call with
    /// their `--arg`s, as Nix does).
    pub fn takes_formals(&mut self, v: &Value) -> bool {
        matches!(v, Value::Lambda(c) if matches!(c.def.param, Param::Formals { .. }))
    }

    /// Call `v` as commands do when it is a function of a set of arguments: with the
    /// `args` it names (all of them if it takes `...`), its defaults for the others; an
    /// argument with neither is an error. Other values are left as they are.
    pub fn auto_call(&mut self, v: Value, args: &[(String, AutoArg)]) -> Result<Value> {
        let v = self.force(&v)?;
        let Value::Lambda(c) = &v else { return Ok(v) };
        let Param::Formals {
            formals, ellipsis, ..
        } = &c.def.param
        else {
            return Ok(v);
        };
        let mut given = Vec::new();
        for (name, arg) in args {
            let sym = Sym::intern(name);
            if !*ellipsis && !formals.iter().any(|(f, _)| *f == sym) {
                continue;
            }
            let value = match arg {
                AutoArg::Str(s) => Value::string(s.as_str()),
                AutoArg::Expr(e) => {
                    let expr = self.lower("«arg»", e, &self.settings.cwd.clone())?;
                    Thunk::suspended(Rc::new(expr), self.globals.clone())
                }
            };
            given.push((sym, value));
        }
        for (name, default) in formals {
            if default.is_none() && !given.iter().any(|(g, _)| g == name) {
                return Err(EvalError::new(ErrorKind::Other(format!(
                    "cannot evaluate a function that has an argument without a value ('{name}'); pass one with --arg or --argstr"
                ))));
            }
        }
        let arg = Value::attrs(Attrs::from_unsorted(given));
        self.apply(v, arg, Span::default())
    }

    /// `v`'s attribute at `path` (`a.b.0`: a number indexes a list), as `-A` selects.
    pub fn select_path(&mut self, v: &Value, path: &str) -> Result<Value> {
        let mut cur = self.force(v)?;
        for part in parse_attr_path(path)? {
            let part = part.as_str();
            if part.is_empty() {
                return Err(EvalError::new(ErrorKind::Other(format!(
                    "empty attribute name in selection path '{path}'"
                ))));
            }
            let missing = || {
                EvalError::new(ErrorKind::Other(format!(
                    "attribute '{part}' in selection path '{path}' not found"
                )))
            };
            cur = match &cur {
                Value::Attrs(a) => {
                    let x = a.get(Sym::intern(part)).cloned().ok_or_else(missing)?;
                    self.force(&x)?
                }
                Value::List(l) => {
                    let i: usize = part.parse().map_err(|_| missing())?;
                    if i >= l.len() {
                        return Err(missing());
                    }
                    self.force_elem(l, i)?
                }
                other => {
                    return Err(EvalError::new(ErrorKind::Other(format!(
                        "the value at '{part}' in selection path '{path}' is {}, not a set",
                        other.type_name()
                    ))))
                }
            };
        }
        Ok(cur)
    }

    /// The `.drv` paths of the derivations `v` holds, as `nix-instantiate` finds them: `v`
    /// itself, the elements of a list, the attributes of a set (in name order), and deeper
    /// only into sets with `recurseForDerivations = true`. An output other than `out` is
    /// named after a `!`.
    pub fn derivations(&mut self, v: &Value, out: &mut Vec<String>) -> Result<()> {
        self.derivations_in(v, out, true)
    }

    fn derivations_in(&mut self, v: &Value, out: &mut Vec<String>, top: bool) -> Result<()> {
        let v = self.force(v)?;
        match &v {
            Value::Attrs(a) => {
                if self.is_derivation(a)? {
                    let get = |n: &str| a.get(Sym::intern(n)).cloned();
                    let drv = get("drvPath").ok_or_else(|| {
                        EvalError::new(ErrorKind::MissingAttr {
                            name: "drvPath".into(),
                        })
                    })?;
                    let drv = self.expect_string(&drv, Span::default())?.s.clone();
                    let output = match get("outputName") {
                        Some(o) => self.expect_string(&o, Span::default())?.s.clone(),
                        None => "out".into(),
                    };
                    out.push(if output == "out" {
                        drv.to_string()
                    } else {
                        format!("{drv}!{output}")
                    });
                    return Ok(());
                }
                let recurse = match a.get(Sym::intern("recurseForDerivations")) {
                    Some(r) => {
                        let r = r.clone();
                        matches!(self.force(&r)?, Value::Bool(true))
                    }
                    None => false,
                };
                if top || recurse {
                    let entries: Vec<(compact_str::CompactString, Value)> = a
                        .sorted_by_name()
                        .into_iter()
                        .map(|(n, v)| (n, v.clone()))
                        .collect();
                    for (name, x) in entries {
                        self.derivations_in(&x, out, false).map_err(|e| {
                            e.context(None, format!("while evaluating the attribute '{name}'"))
                        })?;
                    }
                }
                Ok(())
            }
            Value::List(items) if top => {
                for x in items.iter() {
                    self.derivations_in(&x, out, false)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn is_derivation(&mut self, a: &Attrs) -> Result<bool> {
        match a.get(Sym::intern("type")) {
            Some(t) => {
                let t = t.clone();
                Ok(matches!(self.force(&t)?, Value::String(ref s) if s.s == "derivation"))
            }
            None => Ok(false),
        }
    }
}

/// The names of an attribute path as `-A` takes it: separated by dots, and a part in double
/// quotes taken as it is (`services."example.com".ssl`), as Nix reads it.
fn parse_attr_path(path: &str) -> Result<Vec<String>> {
    let (mut parts, mut cur) = (Vec::new(), String::new());
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '.' => parts.push(std::mem::take(&mut cur)),
            '"' => loop {
                match chars.next() {
                    Some('"') => break,
                    Some(c) => cur.push(c),
                    None => {
                        return Err(EvalError::new(ErrorKind::Other(format!(
                            "missing closing quote in selection path '{path}'"
                        ))))
                    }
                }
            },
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::parse_attr_path;

    #[test]
    fn attribute_paths_split_on_dots_outside_quotes() {
        let p = |s: &str| parse_attr_path(s).map_err(|e| e.to_string());
        assert_eq!(p("a.b.0"), Ok(vec!["a".into(), "b".into(), "0".into()]));
        assert_eq!(
            p("hosts.\"example.com\".ssl"),
            Ok(vec!["hosts".into(), "example.com".into(), "ssl".into()])
        );
        assert_eq!(p(""), Ok(vec![]));
        assert_eq!(p("a."), Ok(vec!["a".into()]));
        assert_eq!(p("a..b"), Ok(vec!["a".into(), "".into(), "b".into()]));
        assert!(p("a.\"b").unwrap_err().contains("missing closing quote"));
    }
}
