//! Values printed as `nix-instantiate --eval` prints them: strings quoted and escaped,
//! floats with six significant digits, sets sorted by name, what is not evaluated yet as
//! `<CODE>`, and a set or list met again as `«repeated»`.

use std::collections::HashSet;
use std::fmt::Write;

use crate::eval::Evaluator;
use crate::value::Value;
use crate::EvalError;

/// `v` printed; with `strict`, everything in it is forced first.
pub fn print(ev: &mut Evaluator, v: &Value, strict: bool) -> Result<String, EvalError> {
    let v = if strict {
        ev.deep_force(v)?
    } else {
        ev.force(v)?
    };
    let mut out = String::new();
    let mut seen = HashSet::new();
    write_value(&mut out, &v, &mut seen);
    Ok(out)
}

/// `v` as the REPL shows it: forced, with its elements or attributes forced and shown one
/// level deep (deeper sets and lists as `{ ... }` and `[ ... ]`).
pub fn print_shallow(ev: &mut Evaluator, v: &Value) -> Result<String, EvalError> {
    let v = ev.force(v)?;
    let mut out = String::new();
    let child = |ev: &mut Evaluator, out: &mut String, x: &Value| -> Result<(), EvalError> {
        match ev.force(x)? {
            Value::Attrs(_) => out.push_str("{ ... }"),
            Value::List(_) => out.push_str("[ ... ]"),
            x => write_atom(out, &x),
        }
        Ok(())
    };
    match &v {
        Value::Attrs(a) => {
            out.push('{');
            for (name, x) in a.sorted_by_name() {
                out.push(' ');
                write_attr_name(&mut out, &name);
                out.push_str(" = ");
                let x = x.clone();
                child(ev, &mut out, &x)?;
                out.push(';');
            }
            out.push_str(" }");
        }
        Value::List(items) => {
            out.push('[');
            for x in items.iter() {
                out.push(' ');
                child(ev, &mut out, &x)?;
            }
            out.push_str(" ]");
        }
        v => write_atom(&mut out, v),
    }
    Ok(out)
}

/// A value that is not a set or a list, as the REPL shows it.
fn write_atom(out: &mut String, v: &Value) {
    match v {
        Value::Lambda(_) => out.push_str("«lambda»"),
        Value::PrimOp(_) => out.push_str("«primop»"),
        Value::PrimOpApp(_) => out.push_str("«primop-app»"),
        v => write_value(out, v, &mut HashSet::new()),
    }
}

/// `v` as an error message shows it, briefly and without forcing anything: atoms as
/// printed (long strings cut), a list's or set's first few elements one level deep,
/// what is not evaluated yet as `«thunk»`.
pub fn brief(v: &Value) -> String {
    let mut out = String::new();
    brief_into(&mut out, v, 1);
    out
}

/// How many elements of a list or set, and characters of a string, [`brief`] shows.
const BRIEF_ITEMS: usize = 8;
const BRIEF_CHARS: usize = 60;

fn brief_into(out: &mut String, v: &Value, depth: usize) {
    match v {
        Value::Thunk(t) => match t.value() {
            Some(v) => brief_into(out, &v, depth),
            None => out.push_str("«thunk»"),
        },
        Value::String(s) if s.s.chars().count() > BRIEF_CHARS => {
            let cut: String = s.s.chars().take(BRIEF_CHARS).collect();
            write_atom(out, &Value::string(cut));
            out.push_str("«…»");
        }
        Value::List(_) if depth == 0 => out.push_str("[ … ]"),
        Value::Attrs(_) if depth == 0 => out.push_str("{ … }"),
        Value::List(l) => {
            out.push('[');
            for x in l.iter().take(BRIEF_ITEMS) {
                out.push(' ');
                brief_into(out, &x, depth - 1);
            }
            if l.len() > BRIEF_ITEMS {
                let _ = write!(out, " «{} more»", l.len() - BRIEF_ITEMS);
            }
            out.push_str(" ]");
        }
        Value::Attrs(a) => {
            out.push('{');
            let all = a.sorted_by_name();
            for (name, x) in all.iter().take(BRIEF_ITEMS) {
                out.push(' ');
                write_attr_name(out, name);
                out.push_str(" = ");
                brief_into(out, x, depth - 1);
                out.push(';');
            }
            if all.len() > BRIEF_ITEMS {
                let _ = write!(out, " «{} more»", all.len() - BRIEF_ITEMS);
            }
            out.push_str(" }");
        }
        v => write_atom(out, v),
    }
}

/// What the REPL's `:t` says of a value's type.
pub fn describe_type(v: &Value) -> String {
    match v {
        Value::PrimOp(p) => format!("the built-in function '{}'", p.name),
        Value::PrimOpApp(p) => format!("the partially applied built-in function '{}'", p.op.name),
        v => v.type_name().to_owned(),
    }
}

/// Sets are «repeated» when the same set was printed before; lists when the same value
/// was (the same variable twice, not two expressions that give equal lists), as Nix does.
fn write_value(out: &mut String, v: &Value, seen: &mut HashSet<usize>) {
    write_slot(out, v, seen, None)
}

fn write_slot(out: &mut String, v: &Value, seen: &mut HashSet<usize>, slot: Option<usize>) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => out.push_str(&format_float(*f)),
        Value::String(s) => write_string(out, &s.s),
        Value::Path(p) => out.push_str(p),
        Value::List(items) => {
            if !seen.insert(slot.unwrap_or(items.as_ptr() as usize)) {
                out.push_str("«repeated»");
                return;
            }
            out.push('[');
            for i in items.iter() {
                out.push(' ');
                write_value(out, &i, seen);
            }
            out.push_str(" ]");
        }
        Value::Attrs(a) => {
            if !seen.insert(std::rc::Rc::as_ptr(a) as usize) {
                out.push_str("«repeated»");
                return;
            }
            out.push('{');
            for (name, v) in a.sorted_by_name() {
                out.push(' ');
                write_attr_name(out, &name);
                out.push_str(" = ");
                write_value(out, v, seen);
                out.push(';');
            }
            out.push_str(" }");
        }
        Value::Lambda(_) => out.push_str("<LAMBDA>"),
        Value::PrimOp(_) => out.push_str("<PRIMOP>"),
        Value::PrimOpApp(_) => out.push_str("<PRIMOP-APP>"),
        Value::Thunk(t) => match t.value() {
            Some(v) => write_slot(out, &v, seen, Some(std::rc::Rc::as_ptr(t) as usize)),
            None => out.push_str("<CODE>"),
        },
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An attribute name as current Nix writes it in messages (and as values print it).
pub(crate) fn attr_name(name: &str) -> String {
    let mut out = String::new();
    write_attr_name(&mut out, name);
    out
}

/// An attribute name as Nix prints it: bare when it is an identifier, else quoted.
fn write_attr_name(out: &mut String, name: &str) {
    let ident = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '\'' | '-'));
    const KEYWORDS: &[&str] = &[
        "if", "then", "else", "assert", "with", "let", "in", "rec", "inherit", "or",
    ];
    if ident && !KEYWORDS.contains(&name) {
        out.push_str(name);
    } else {
        write_string(out, name);
    }
}

/// A float as C++'s stream prints it by default (`%g` with six significant digits).
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        return if f.is_sign_negative() { "-nan" } else { "nan" }.into();
    }
    if f.is_infinite() {
        return if f < 0.0 { "-inf" } else { "inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    const P: i32 = 6;
    // The exponent after rounding to P significant digits.
    let sci = format!("{:.*e}", (P - 1) as usize, f);
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    if !(-4..P).contains(&exp) {
        let m = trim_zeros(mantissa);
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else {
        let decimals = (P - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{f:.decimals$}")).to_owned()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::format_float;

    #[test]
    fn floats_print_as_cpp_streams_do() {
        for (f, s) in [
            (0.1, "0.1"),
            (1.0, "1"),
            (1.0 / 3.0, "0.333333"),
            (1e8, "1e+08"),
            (123456789.0, "1.23457e+08"),
            (0.0000012345, "1.2345e-06"),
            (100000.0, "100000"),
            (1000000.0, "1e+06"),
            (-2.5, "-2.5"),
            (0.0001, "0.0001"),
        ] {
            assert_eq!(format_float(f), s, "{f}");
        }
    }
}
