//! Operators on values, equality and ordering as Nix defines them, coercion to strings
//! (copying paths to the store), and the checked accessors builtins use.

use std::cmp::Ordering;
use std::rc::Rc;
use std::sync::Arc;

use crate::error::{ErrorKind, EvalError};
use crate::eval::{as_float, type_error, Coerce, Evaluator};
use crate::store::EvalStore;
use crate::symbol::Sym;
use crate::syntax::{BinOp, Span};
use crate::value::{Attrs, Context, List, NixString, Value};

type Result<T> = std::result::Result<T, EvalError>;

impl Evaluator {
    pub(crate) fn binop_values(
        &mut self,
        op: BinOp,
        a: &Value,
        b: &Value,
        span: Span,
    ) -> Result<Value> {
        match op {
            BinOp::Eq => Ok(Value::Bool(self.equal(a, b)?)),
            BinOp::NotEq => Ok(Value::Bool(!self.equal(a, b)?)),
            BinOp::Less => Ok(Value::Bool(self.compare(a, b, span)? == Ordering::Less)),
            BinOp::LessEq => Ok(Value::Bool(self.compare(a, b, span)? != Ordering::Greater)),
            BinOp::More => Ok(Value::Bool(self.compare(a, b, span)? == Ordering::Greater)),
            BinOp::MoreEq => Ok(Value::Bool(self.compare(a, b, span)? != Ordering::Less)),
            BinOp::Concat => {
                let x = self.expect_list(a, span)?;
                let y = self.expect_list(b, span)?;
                Ok(Value::List(x.iter().chain(y.iter()).collect()))
            }
            BinOp::Update => {
                let x = self.expect_attrs(a, span)?;
                let y = self.expect_attrs(b, span)?;
                // An empty side gives the other set itself, as in Nix, not a copy of it
                // (`prev // { }` in overlays, `args // { }` in `callPackage`).
                if y.is_empty() {
                    return Ok(Value::Attrs(x));
                }
                if x.is_empty() {
                    return Ok(Value::Attrs(y));
                }
                Ok(Value::attrs(x.update(&y)))
            }
            BinOp::Add => match (a, b) {
                (Value::String(x), _) => {
                    let y = self.coerce_to_string(b, Coerce::Interp, span)?;
                    Ok(joined(x, &y))
                }
                (Value::Path(x), _) => {
                    let y = self.coerce_to_string(b, Coerce::Plain, span)?;
                    if !y.context.is_empty() {
                        return Err(EvalError::new(ErrorKind::Other(format!(
                            "a string that refers to a store path cannot be appended to a path: '{}'",
                            y.s
                        )))
                        .at(span));
                    }
                    Ok(Value::Path(
                        crate::syntax::canonicalise(&format!("{x}{}", y.s)).into(),
                    ))
                }
                (Value::Int(_) | Value::Float(_), _) => self.arith(op, a, b, span),
                // Anything else is joined as strings, as Nix's `+` does: a set with
                // `outPath` (a derivation) or `__toString` (`drv + "/bin"`); others cannot
                // be coerced. Paths after it stay paths, as Nix copies only after a string.
                _ => {
                    let x = self.coerce_to_string(a, Coerce::Plain, span)?;
                    let y = self.coerce_to_string(b, Coerce::Plain, span)?;
                    Ok(joined(&x, &y))
                }
            },
            BinOp::Sub | BinOp::Mul | BinOp::Div => self.arith(op, a, b, span),
            BinOp::And | BinOp::Or | BinOp::Implies => unreachable!("lazy operators"),
        }
    }

    pub(crate) fn arith(&mut self, op: BinOp, a: &Value, b: &Value, span: Span) -> Result<Value> {
        match (a, b) {
            (Value::Int(x), Value::Int(y)) => {
                // Integers wrap around, as in Nix 2.8 (whose results the vectors hold).
                Ok(Value::Int(match op {
                    BinOp::Add => x.wrapping_add(*y),
                    BinOp::Sub => x.wrapping_sub(*y),
                    BinOp::Mul => x.wrapping_mul(*y),
                    _ => {
                        if *y == 0 {
                            return Err(EvalError::new(ErrorKind::DivisionByZero).at(span));
                        }
                        x.wrapping_div(*y)
                    }
                }))
            }
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                let x = as_float(a);
                let y = as_float(b);
                Ok(Value::Float(match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    _ => {
                        if y == 0.0 {
                            return Err(EvalError::new(ErrorKind::DivisionByZero).at(span));
                        }
                        x / y
                    }
                }))
            }
            (Value::Int(_) | Value::Float(_), other) | (other, _) => {
                Err(EvalError::new(ErrorKind::Other(format!(
                    "cannot {} {} {} {}",
                    match op {
                        BinOp::Add => "add",
                        BinOp::Sub => "subtract",
                        BinOp::Mul => "multiply",
                        _ => "divide",
                    },
                    other.type_name(),
                    match op {
                        BinOp::Add => "to",
                        BinOp::Sub => "from",
                        _ => "with",
                    },
                    if std::ptr::eq(other, a) {
                        b.type_name()
                    } else {
                        a.type_name()
                    }
                )))
                .at(span))
            }
        }
    }

    /// Nix's `==`: deep, numbers across types, sets that are derivations by `outPath`,
    /// functions never equal (unless they are the very same element of a list or set).
    pub fn equal(&mut self, a: &Value, b: &Value) -> Result<bool> {
        let a = self.force(a)?;
        let b = self.force(b)?;
        Ok(match (&a, &b) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(x), Value::Bool(y)) => x == y,
            (Value::Int(x), Value::Int(y)) => x == y,
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                as_float(&a) == as_float(&b)
            }
            (Value::String(x), Value::String(y)) => x.s == y.s,
            (Value::Path(x), Value::Path(y)) => x == y,
            (Value::List(x), Value::List(y)) => {
                if List::ptr_eq(x, y) {
                    return Ok(true);
                }
                if x.len() != y.len() {
                    return Ok(false);
                }
                for (p, q) in x.iter().zip(y.iter()) {
                    if !self.equal_elems(&p, &q)? {
                        return Ok(false);
                    }
                }
                true
            }
            (Value::Attrs(x), Value::Attrs(y)) => {
                if Rc::ptr_eq(x, y) {
                    return Ok(true);
                }
                let is_drv = |s: &mut Self, a: &Attrs| -> Result<bool> {
                    match a.get(Sym::intern("type")) {
                        Some(t) => {
                            let t = t.clone();
                            Ok(matches!(s.force(&t)?, Value::String(ref s) if s.s == "derivation"))
                        }
                        None => Ok(false),
                    }
                };
                if is_drv(self, x)? && is_drv(self, y)? {
                    let out = Sym::intern("outPath");
                    if let (Some(p), Some(q)) = (x.get(out), y.get(out)) {
                        let (p, q) = (p.clone(), q.clone());
                        return self.equal(&p, &q);
                    }
                }
                if x.len() != y.len() {
                    return Ok(false);
                }
                for ((k1, v1), (k2, v2)) in x.iter().zip(y.iter()) {
                    if k1 != k2 || !self.equal_elems(v1, v2)? {
                        return Ok(false);
                    }
                }
                true
            }
            _ => false,
        })
    }

    fn equal_elems(&mut self, a: &Value, b: &Value) -> Result<bool> {
        match (a, b) {
            (Value::Thunk(x), Value::Thunk(y)) if Rc::ptr_eq(x, y) => Ok(true),
            (Value::Lambda(x), Value::Lambda(y)) if Rc::ptr_eq(x, y) => Ok(true),
            _ => self.equal(a, b),
        }
    }

    /// Nix's `<`: numbers, strings, paths, and lists element by element.
    pub fn compare(&mut self, a: &Value, b: &Value, span: Span) -> Result<Ordering> {
        let a = self.force(a)?;
        let b = self.force(b)?;
        match (&a, &b) {
            (Value::Int(x), Value::Int(y)) => Ok(x.cmp(y)),
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => Ok(as_float(&a)
                .partial_cmp(&as_float(&b))
                .unwrap_or(Ordering::Equal)),
            (Value::String(x), Value::String(y)) => Ok(x.s.as_bytes().cmp(y.s.as_bytes())),
            (Value::Path(x), Value::Path(y)) => Ok(x.as_bytes().cmp(y.as_bytes())),
            (Value::List(x), Value::List(y)) => {
                for (p, q) in x.iter().zip(y.iter()) {
                    // Equal elements are skipped; the first that differs decides.
                    if self.equal_elems(&p, &q)? {
                        continue;
                    }
                    return self.compare(&p, &q, span);
                }
                Ok(x.len().cmp(&y.len()))
            }
            _ => Err(EvalError::new(ErrorKind::Incomparable(
                a.type_name().into(),
                b.type_name().into(),
            ))
            .at(span)),
        }
    }

    /// The string a value stands for, as `how` coerces it.
    pub fn coerce_to_string(
        &mut self,
        v: &Value,
        how: Coerce,
        span: Span,
    ) -> Result<Rc<NixString>> {
        let mut slot = Value::Null;
        let v = self.forced(v, &mut slot)?;
        let more = matches!(how, Coerce::ToString | Coerce::Derivation);
        let plain = |s: compact_str::CompactString| {
            Ok(Rc::new(NixString {
                s,
                context: Context::default(),
            }))
        };
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Path(p) => match how {
                Coerce::Interp | Coerce::Derivation => self.copy_to_store(p, span),
                Coerce::ToString | Coerce::Plain => plain(p.as_str().into()),
            },
            Value::Attrs(a) => {
                if let Some(f) = a.get(Sym::intern("__toString")) {
                    let f = f.clone();
                    let r = self.apply(f, v.clone(), span)?;
                    return self.coerce_to_string(&r, how, span);
                }
                if let Some(p) = a.get(Sym::intern("outPath")) {
                    let p = p.clone();
                    return self.coerce_to_string(&p, how, span);
                }
                Err(EvalError::new(ErrorKind::NotCoercible(v.type_name().into())).at(span))
            }
            Value::Int(i) if more => plain(compact_str::ToCompactString::to_compact_string(i)),
            Value::Float(f) if more => plain(compact_str::format_compact!("{f:.6}")),
            Value::Bool(b) if more => plain(if *b { "1".into() } else { Default::default() }),
            Value::Null if more => plain(Default::default()),
            Value::List(items) if more => {
                let mut out = NixString {
                    s: compact_str::CompactString::default(),
                    context: Context::default(),
                };
                for (i, item) in items.iter().enumerate() {
                    let s = self.coerce_to_string(&item, how, span)?;
                    if i > 0 {
                        out.s.push(' ');
                    }
                    out.s.push_str(&s.s);
                    out.context.extend(&s.context);
                }
                Ok(Rc::new(out))
            }
            other => {
                Err(EvalError::new(ErrorKind::NotCoercible(other.type_name().into())).at(span))
            }
        }
    }

    /// A path's tree added to the store (once per path in an evaluation), as the string
    /// of its store path that refers to it.
    fn copy_to_store(&mut self, p: &str, span: Span) -> Result<Rc<NixString>> {
        let at = |e: EvalError| e.at(span);
        let store = self.store().map_err(at)?;
        let sp = match self.copied.get(p) {
            Some(sp) => sp.clone(),
            None => {
                let name = p.rsplit('/').next().unwrap_or("");
                let sp = store
                    .add_source(std::path::Path::new(p), name)
                    .map_err(|e| EvalError::store(e).at(span))?;
                self.copied.insert(p.to_owned(), sp.clone());
                sp
            }
        };
        let full: Rc<str> = store.store_dir().display(&sp).into();
        let context = Context::from([crate::value::ContextElem::Plain(full.clone())]);
        Ok(Rc::new(NixString {
            s: compact_str::CompactString::from(&*full),
            context,
        }))
    }

    /// The store evaluation writes to, or why there is none.
    pub(crate) fn store(&self) -> Result<Arc<dyn EvalStore + Send + Sync>> {
        self.store.clone().ok_or_else(|| {
            EvalError::new(ErrorKind::Other(
                "this needs a store, and the evaluation has none".into(),
            ))
        })
    }

    pub fn expect_bool(&mut self, v: &Value, span: Span) -> Result<bool> {
        if let Value::Bool(b) = v {
            return Ok(*b);
        }
        match self.force(v)? {
            Value::Bool(b) => Ok(b),
            other => Err(type_error("a Boolean", &other, span)),
        }
    }

    pub fn expect_int(&mut self, v: &Value, span: Span) -> Result<i64> {
        match self.force(v)? {
            Value::Int(i) => Ok(i),
            other => Err(type_error("an integer", &other, span)),
        }
    }

    pub fn expect_string(&mut self, v: &Value, span: Span) -> Result<Rc<NixString>> {
        match self.force(v)? {
            Value::String(s) => Ok(s),
            other => Err(type_error("a string", &other, span)),
        }
    }

    pub fn expect_list(&mut self, v: &Value, span: Span) -> Result<crate::value::List> {
        match self.force(v)? {
            Value::List(l) => Ok(l),
            other => Err(type_error("a list", &other, span)),
        }
    }

    pub fn expect_attrs(&mut self, v: &Value, span: Span) -> Result<Rc<Attrs>> {
        match self.force(v)? {
            Value::Attrs(a) => Ok(a),
            other => Err(type_error("a set", &other, span)),
        }
    }
}

/// Two strings one after the other, with the context of both.
fn joined(x: &NixString, y: &NixString) -> Value {
    let mut s = NixString {
        s: compact_str::CompactString::with_capacity(x.s.len() + y.s.len()),
        context: x.context.clone(),
    };
    s.s.push_str(&x.s);
    s.s.push_str(&y.s);
    s.context.extend(&y.context);
    Value::String(Rc::new(s))
}
