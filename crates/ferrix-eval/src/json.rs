//! `builtins.toJSON` and `builtins.fromJSON`: sets as objects with sorted keys, derivations
//! and other sets with `outPath` as that path, paths copied to the store; the string keeps
//! the context of what it names.

use std::rc::Rc;

use crate::error::{ErrorKind, EvalError};
use crate::eval::{Coerce, Evaluator};
use crate::print::format_float;
use crate::symbol::Sym;
use crate::syntax::Span;
use crate::value::{Attrs, Context, NixString, Value};

type Result<T> = std::result::Result<T, EvalError>;

/// `v` as JSON text, forcing what it needs (`nix-instantiate --eval --json`).
pub fn to_json_text(ev: &mut Evaluator, v: &Value) -> Result<String> {
    let mut out = String::new();
    write(ev, v, &mut out, &mut Context::default(), Span::default())?;
    Ok(out)
}

pub(crate) fn to_json(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let mut out = String::new();
    let mut context = Context::default();
    write(ev, &a[0], &mut out, &mut context, span)?;
    Ok(Value::String(Rc::new(NixString {
        s: out.into(),
        context,
    })))
}

/// `v` as JSON at the end of `out`, the context of its strings added to `ctx`.
pub(crate) fn write(
    ev: &mut Evaluator,
    v: &Value,
    out: &mut String,
    ctx: &mut Context,
    span: Span,
) -> Result<()> {
    let v = ev.force(v)?;
    match &v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&format_float(*f)),
        Value::String(s) => {
            ctx.extend(&s.context);
            string(out, &s.s);
        }
        Value::Path(_) => {
            let s = ev.coerce_to_string(&v, Coerce::Interp, span)?;
            ctx.extend(&s.context);
            string(out, &s.s);
        }
        Value::List(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(ev, &x, out, ctx, span)?;
            }
            out.push(']');
        }
        Value::Attrs(a) => {
            if a.get(Sym::intern("__toString")).is_some() {
                let s = ev.coerce_to_string(&v, Coerce::Interp, span)?;
                ctx.extend(&s.context);
                string(out, &s.s);
                return Ok(());
            }
            if let Some(p) = a.get(Sym::intern("outPath")) {
                let p = p.clone();
                return write(ev, &p, out, ctx, span);
            }
            out.push('{');
            let entries: Vec<(compact_str::CompactString, Value)> = a
                .sorted_by_name()
                .into_iter()
                .map(|(n, v)| (n, v.clone()))
                .collect();
            for (i, (name, x)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(out, name);
                out.push(':');
                write(ev, x, out, ctx, span)
                    .map_err(|e| e.context(None, format!("while evaluating attribute '{name}'")))?;
            }
            out.push('}');
        }
        other => {
            return Err(EvalError::new(ErrorKind::Other(format!(
                "cannot convert {} to JSON",
                other.type_name()
            )))
            .at(span))
        }
    }
    Ok(())
}

pub(crate) fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

pub(crate) fn from_json(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let s = ev.expect_string(&a[0], span)?;
    let parsed: serde_json::Value = serde_json::from_str(&s.s).map_err(|e| {
        EvalError::new(ErrorKind::Other(format!(
            "while decoding a JSON string: {e}"
        )))
        .at(span)
    })?;
    Ok(convert(parsed))
}

fn convert(j: serde_json::Value) -> Value {
    match j {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::string(s),
        serde_json::Value::Array(items) => Value::List(items.into_iter().map(convert).collect()),
        serde_json::Value::Object(map) => Value::attrs(Attrs::from_unsorted(
            map.into_iter()
                .map(|(k, v)| (Sym::intern(&k), convert(v)))
                .collect(),
        )),
    }
}
