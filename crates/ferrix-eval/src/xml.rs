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
    let mut w = Writer::new(span, true, false);
    w.document(ev, &a[0])?;
    Ok(Value::String(Rc::new(NixString {
        s: w.out.into(),
        context: w.context,
    })))
}

/// `nix-instantiate --eval --xml`: `v` as XML; `strict` forces everything (otherwise what
/// is not computed yet is `<unevaluated />`), `location` adds where attributes and
/// functions are defined, where that is known.
pub fn to_xml_text(ev: &mut Evaluator, v: &Value, strict: bool, location: bool) -> Result<String> {
    let mut w = Writer::new(Span::default(), strict, location);
    w.document(ev, v)?;
    Ok(w.out)
}

struct Writer {
    out: String,
    context: Context,
    /// Derivations written so far (a derivation met again is `<repeated />`).
    drvs: HashSet<String>,
    span: Span,
    strict: bool,
    location: bool,
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
    fn new(span: Span, strict: bool, location: bool) -> Self {
        Writer {
            out: String::new(),
            context: Context::default(),
            drvs: HashSet::new(),
            span,
            strict,
            location,
        }
    }

    fn document(&mut self, ev: &mut Evaluator, v: &Value) -> Result<()> {
        self.out
            .push_str("<?xml version='1.0' encoding='utf-8'?>\n<expr>\n");
        self.value(ev, v, 1)?;
        self.out.push_str("</expr>\n");
        Ok(())
    }

    /// ` column=".." line=".." path=".."` for `span` (names in the order Nix sorts them),
    /// if locations are wanted.
    fn place(&self, ev: &Evaluator, span: Option<Span>) -> (String, String) {
        match span.filter(|_| self.location) {
            Some(span) => {
                let (path, line, column) = ev.place(span);
                (
                    format!(" column=\"{column}\" line=\"{line}\""),
                    format!(" path=\"{}\"", escape(&path)),
                )
            }
            None => (String::new(), String::new()),
        }
    }

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
        let v = match v {
            Value::Thunk(t) if !self.strict => match t.value() {
                Some(v) => v,
                None => {
                    self.empty(depth, "unevaluated", &[]);
                    return Ok(());
                }
            },
            v => ev.force(v)?,
        };
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
                    self.value(ev, &x, depth + 1)?;
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
                let entries: Vec<(compact_str::CompactString, Value, Option<Span>)> = a
                    .sorted_by_name()
                    .into_iter()
                    .map(|(n, v)| {
                        let pos = a.position(Sym::intern(&n));
                        (n, v.clone(), pos)
                    })
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
                    let mut t = String::from("<derivation");
                    for (k, v) in &attrs {
                        t.push_str(&format!(" {k}=\"{}\"", escape(v)));
                    }
                    t.push('>');
                    self.line(depth, &t);
                    // A derivation met again: named, its attributes not written again.
                    if !self.drvs.insert(key) {
                        self.empty(depth + 1, "repeated", &[]);
                        self.line(depth, "</derivation>");
                        return Ok(());
                    }
                    "</derivation>"
                } else {
                    self.line(depth, "<attrs>");
                    "</attrs>"
                };
                for (name, x, pos) in entries {
                    let (before, after) = self.place(ev, pos);
                    self.line(
                        depth + 1,
                        &format!("<attr{before} name=\"{}\"{after}>", escape(&name)),
                    );
                    self.value(ev, &x, depth + 2)?;
                    self.line(depth + 1, "</attr>");
                }
                self.line(depth, close);
            }
            Value::Lambda(c) => {
                let (before, after) = self.place(ev, Some(c.def.span));
                self.line(depth, &format!("<function{before}{after}>"));
                match &c.def.param {
                    Param::Ident(name) => {
                        self.empty(depth + 1, "varpat", &[("name", &name.name())])
                    }
                    Param::Formals {
                        formals,
                        ellipsis,
                        at,
                        ..
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
                        let mut names: Vec<compact_str::CompactString> =
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
