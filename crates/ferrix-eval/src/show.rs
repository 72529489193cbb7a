//! `nix-instantiate --parse`: an expression printed back as the Nix expression its parse
//! means, in the form Nix prints (operators as the builtins they call, everything
//! parenthesised).

use std::fmt::Write;

use crate::eval::Evaluator;
use crate::syntax::{AttrsDef, BinOp, Expr, Key, Param, Part, Span};

/// `e` as Nix's `--parse` prints it. Variable names are read from the source by their span.
pub fn show(ev: &Evaluator, e: &Expr) -> String {
    let mut out = String::new();
    Shower { ev }.expr(&mut out, e);
    out
}

struct Shower<'a> {
    ev: &'a Evaluator,
}

/// A string literal, escaped as Nix escapes it (`$` too, so `${` stays text).
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' | '$' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A name: bare when it reads as an identifier, quoted otherwise.
fn id(out: &mut String, s: &str) {
    let ident = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '\'' | '-'));
    if ident && s != "if" {
        out.push_str(s);
    } else {
        string(out, s);
    }
}

impl Shower<'_> {
    fn text(&self, span: Span) -> &str {
        self.ev
            .sources
            .get(span.source as usize)
            .and_then(|s| s.text.get(span.start as usize..span.end as usize))
            .unwrap_or("")
    }

    fn path(&self, out: &mut String, keys: &[Key]) {
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            match k {
                Key::Static(s) => id(out, &s.name()),
                Key::Dynamic(e) => {
                    out.push_str("\"${");
                    self.expr(out, e);
                    out.push_str("}\"");
                }
            }
        }
    }

    /// The bindings of a set or `let`; `sorted` by name (sets), or in symbol order
    /// (`let`, as Nix 2.8 keeps them).
    fn bindings(&self, out: &mut String, def: &AttrsDef, sorted: bool, set: bool) {
        let mut statics: Vec<_> = def.statics.iter().collect();
        if sorted {
            statics.sort_by_key(|(s, _, _)| s.name());
        }
        for (name, e, span) in statics {
            // `inherit x;`: the value is the variable itself, and the binding is placed
            // (as Nix places it) at the empty point just after `inherit`.
            let inherited = matches!(&**e, Expr::Var(_, vs)
                if span.start == span.end && span.end <= vs.start && self.text(*vs) == &*name.name());
            if inherited {
                out.push_str("inherit ");
                id(out, &name.name());
                out.push_str(if set { " ; " } else { "; " });
            } else {
                id(out, &name.name());
                out.push_str(" = ");
                self.expr(out, e);
                out.push_str("; ");
            }
        }
        for (k, v, _) in &def.dynamics {
            out.push_str("\"${");
            self.expr(out, k);
            out.push_str("}\" = ");
            self.expr(out, v);
            out.push_str("; ");
        }
    }

    fn call(&self, out: &mut String, f: &str, args: &[&Expr]) {
        out.push('(');
        out.push_str(f);
        for a in args {
            out.push(' ');
            self.expr(out, a);
        }
        out.push(')');
    }

    fn expr(&self, out: &mut String, e: &Expr) {
        match e {
            Expr::Null => out.push_str("null"),
            Expr::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Expr::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Expr::Float(f) => out.push_str(&crate::print::format_float(*f)),
            Expr::Str(s) => string(out, &s.s),
            Expr::Path(p) => out.push_str(p),
            Expr::Interp(parts, _) | Expr::PathInterp(parts, _) => {
                let path = matches!(e, Expr::PathInterp(..));
                out.push('(');
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" + ");
                    }
                    match p {
                        Part::Lit(l) if path && i == 0 => out.push_str(l),
                        Part::Lit(l) => string(out, l),
                        Part::Expr(e) => self.expr(out, e),
                    }
                }
                out.push(')');
            }
            Expr::Var(_, span) => out.push_str(self.text(*span)),
            Expr::List(items) => {
                out.push_str("[ ");
                for i in items {
                    out.push('(');
                    self.expr(out, i);
                    out.push_str(") ");
                }
                out.push(']');
            }
            Expr::Attrs(def) => {
                out.push_str("{ ");
                self.bindings(out, def, true, true);
                out.push('}');
            }
            Expr::Rec { def, body: None } => {
                out.push_str("rec { ");
                self.bindings(out, def, true, true);
                out.push('}');
            }
            Expr::Rec { def, body: Some(b) } => {
                out.push_str("(let ");
                self.bindings(out, def, false, false);
                out.push_str("in ");
                self.expr(out, b);
                out.push(')');
            }
            Expr::With(ns, body, _) => {
                out.push_str("(with ");
                self.expr(out, ns);
                out.push_str("; ");
                self.expr(out, body);
                out.push(')');
            }
            Expr::Lambda(def) => {
                out.push('(');
                match &def.param {
                    Param::Ident(n) => id(out, &n.name()),
                    Param::Formals {
                        formals,
                        ellipsis,
                        at,
                        ..
                    } => {
                        out.push_str("{ ");
                        let mut sorted: Vec<_> = formals.iter().collect();
                        sorted.sort_by_key(|(s, _)| *s);
                        for (i, (name, default)) in sorted.iter().enumerate() {
                            if i > 0 {
                                out.push_str(", ");
                            }
                            id(out, &name.name());
                            if let Some(d) = default {
                                out.push_str(" ? ");
                                self.expr(out, d);
                            }
                        }
                        if *ellipsis {
                            if !formals.is_empty() {
                                out.push_str(", ");
                            }
                            out.push_str("...");
                        }
                        out.push_str(" }");
                        if let Some(a) = at {
                            out.push_str(" @ ");
                            id(out, &a.name());
                        }
                    }
                }
                out.push_str(": ");
                self.expr(out, &def.body);
                out.push(')');
            }
            Expr::Apply(..) => {
                // `f a b` is one call of `f` with two arguments to Nix.
                let mut args = Vec::new();
                let mut f = e;
                while let Expr::Apply(g, a, _) = f {
                    args.push(&**a);
                    f = g;
                }
                args.reverse();
                // `<name>`, which is `__findFile __nixPath "name"`.
                if let (Expr::Var(_, span), [_, name]) = (f, args.as_slice()) {
                    if self.text(*span).starts_with('<') {
                        out.push_str("(__findFile __nixPath ");
                        self.expr(out, name);
                        out.push(')');
                        return;
                    }
                }
                out.push('(');
                self.expr(out, f);
                for a in args {
                    out.push(' ');
                    self.expr(out, a);
                }
                out.push(')');
            }
            Expr::If(c, t, f, _) => {
                out.push_str("(if ");
                self.expr(out, c);
                out.push_str(" then ");
                self.expr(out, t);
                out.push_str(" else ");
                self.expr(out, f);
                out.push(')');
            }
            Expr::Assert(c, body, _, _) => {
                out.push_str("assert ");
                self.expr(out, c);
                out.push_str("; ");
                self.expr(out, body);
            }
            Expr::Select(e, path, default, _) => {
                out.push('(');
                self.expr(out, e);
                out.push_str(").");
                self.path(out, path);
                if let Some(d) = default {
                    out.push_str(" or (");
                    self.expr(out, d);
                    out.push(')');
                }
            }
            Expr::HasAttr(e, path) => {
                out.push_str("((");
                self.expr(out, e);
                out.push_str(") ? ");
                self.path(out, path);
                out.push(')');
            }
            Expr::BinOp(op, l, r, _) => {
                let infix = match op {
                    BinOp::Add => "+",
                    BinOp::Concat => "++",
                    BinOp::Update => "//",
                    BinOp::Eq => "==",
                    BinOp::NotEq => "!=",
                    BinOp::And => "&&",
                    BinOp::Or => "||",
                    BinOp::Implies => "->",
                    BinOp::Sub => return self.call(out, "__sub", &[l, r]),
                    BinOp::Mul => return self.call(out, "__mul", &[l, r]),
                    BinOp::Div => return self.call(out, "__div", &[l, r]),
                    BinOp::Less => return self.call(out, "__lessThan", &[l, r]),
                    BinOp::More => return self.call(out, "__lessThan", &[r, l]),
                    BinOp::LessEq => {
                        out.push_str("(! ");
                        self.call(out, "__lessThan", &[r, l]);
                        out.push(')');
                        return;
                    }
                    BinOp::MoreEq => {
                        out.push_str("(! ");
                        self.call(out, "__lessThan", &[l, r]);
                        out.push(')');
                        return;
                    }
                };
                out.push('(');
                self.expr(out, l);
                let _ = write!(out, " {infix} ");
                self.expr(out, r);
                out.push(')');
            }
            Expr::Not(e, _) => {
                out.push_str("(! ");
                self.expr(out, e);
                out.push(')');
            }
            Expr::Neg(e, _) => self.call(out, "__sub", &[&Expr::Int(0), e]),
            Expr::CurPos(_) => out.push_str("__curPos"),
        }
    }
}
