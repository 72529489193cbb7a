//! `builtins.toXML`: a value as the XML Nix writes for it (`<expr>`, `<attrs>`, `<list>`,
//! typed scalar elements, `<derivation>`, function patterns), indented two spaces a level.

use std::collections::HashSet;
use std::rc::Rc;

use crate::error::EvalError;
use crate::eval::{Coerce, Evaluator};
use crate::symbol::Sym;
use crate::syntax::{Param, Span};
use crate::value::{Context, NixString, Value};

type Result<T> = std::result::Result<T, EvalError>;

pub(crate) fn to_xml(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let mut w = Writer {
        out: String::from("<?xml version='1.0' encoding='utf-8'?>\n<expr>\n"),
        context: Context::default(),
        drvs: HashSet::new(),
        span,
    };
    w.value(ev, &a[0], 1)?;
    w.out.push_str("</expr>\n");
    Ok(Value::String(Rc::new(NixString {
        s: w.out,
        context: w.context,
    })))
}

struct Writer {
    out: String,
    context: Context,
    /// Derivations written so far (a derivation met again is `<repeated />`).
    drvs: HashSet<String>,
    span: Span,
}

fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\n' => o.push_str("&#xA;"),
            '\r' => o.push_str("&#xD;"),
            '\t' => o.push_str("&#x9;"),
            c => o.push(c),
        }
    }
    o
}

impl Writer {
    fn line(&mut self, depth: usize, text: &str) {
        for _ in 0..depth {
            self.out.push_str("  ");
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn empty(&mut self, depth: usize, tag: &str, attrs: &[(&str, &str)]) {
        let mut t = format!("<{tag}");
        for (k, v) in attrs {
            t.push_str(&format!(" {k}=\"{}\"", escape(v)));
        }
        t.push_str(" />");
        self.line(depth, &t);
    }

    fn value(&mut self, ev: &mut Evaluator, v: &Value, depth: usize) -> Result<()> {
        let v = ev.force(v)?;
        match &v {
            Value::Null => self.empty(depth, "null", &[]),
            Value::Bool(b) => self.empty(
                depth,
                "bool",
                &[("value", if *b { "true" } else { "false" })],
            ),
            Value::Int(i) => self.empty(depth, "int", &[("value", &i.to_string())]),
            Value::Float(f) => self.empty(
                depth,
                "float",
                &[("value", &crate::print::format_float(*f))],
            ),
            Value::String(s) => {
                self.context.extend(&s.context);
                self.empty(depth, "string", &[("value", &s.s)])
            }
            Value::Path(p) => self.empty(depth, "path", &[("value", p)]),
            Value::List(items) => {
                self.line(depth, "<list>");
                for x in items.iter() {
                    self.value(ev, x, depth + 1)?;
                }
                self.line(depth, "</list>");
            }
            Value::Attrs(a) => {
                let is_drv = match a.get(Sym::intern("type")) {
                    Some(t) => {
                        let t = t.clone();
                        matches!(ev.force(&t)?, Value::String(ref s) if s.s == "derivation")
                    }
                    None => false,
                };
                let entries: Vec<(Rc<str>, Value)> = a
                    .sorted_by_name()
                    .into_iter()
                    .map(|(n, v)| (n, v.clone()))
                    .collect();
                let close = if is_drv {
                    let mut attrs = Vec::new();
                    for key in ["drvPath", "outPath"] {
                        if let Some(p) = a.get(Sym::intern(key)) {
                            let p = p.clone();
                            let s = ev.coerce_to_string(&p, Coerce::Interp, self.span)?;
                            self.context.extend(&s.context);
                            attrs.push((key, s.s.clone()));
                        }
                    }
                    let key = attrs.iter().map(|(_, v)| v.as_str()).collect::<String>();
                    if !self.drvs.insert(key) {
                        self.empty(depth, "repeated", &[]);
                        return Ok(());
                    }
                    let mut t = String::from("<derivation");
                    for (k, v) in &attrs {
                        t.push_str(&format!(" {k}=\"{}\"", escape(v)));
                    }
                    t.push('>');
                    self.line(depth, &t);
                    "</derivation>"
                } else {
                    self.line(depth, "<attrs>");
                    "</attrs>"
                };
                for (name, x) in entries {
                    self.line(depth + 1, &format!("<attr name=\"{}\">", escape(&name)));
                    self.value(ev, &x, depth + 2)?;
                    self.line(depth + 1, "</attr>");
                }
                self.line(depth, close);
            }
            Value::Lambda(c) => {
                self.line(depth, "<function>");
                match &c.def.param {
                    Param::Ident(name) => {
                        self.empty(depth + 1, "varpat", &[("name", &name.name())])
                    }
                    Param::Formals {
                        formals,
                        ellipsis,
                        at,
                    } => {
                        let mut t = String::from("<attrspat");
                        if *ellipsis {
                            t.push_str(" ellipsis=\"1\"");
                        }
                        if let Some(n) = at {
                            t.push_str(&format!(" name=\"{}\"", escape(&n.name())));
                        }
                        t.push('>');
                        self.line(depth + 1, &t);
                        let mut names: Vec<Rc<str>> =
                            formals.iter().map(|(n, _)| n.name()).collect();
                        names.sort();
                        for n in names {
                            self.empty(depth + 2, "attr", &[("name", &n)]);
                        }
                        self.line(depth + 1, "</attrspat>");
                    }
                }
                self.line(depth, "</function>");
            }
            Value::PrimOp(_) | Value::PrimOpApp(_) | Value::Thunk(_) => {
                self.empty(depth, "unevaluated", &[])
            }
        }
        Ok(())
    }
}
