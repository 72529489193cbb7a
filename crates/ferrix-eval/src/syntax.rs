//! Lowering: rnix's tree turned once into the expressions of [`crate::tree`], every
//! variable resolved to a frame and slot where the scopes allow it (only names that may come
//! from a `with` are looked up at run time), nested attribute paths merged into sets.

use std::collections::HashMap;
use std::rc::Rc;

use rnix::ast::{self, AstToken, HasEntry, InterpolPart};
use rowan::ast::AstNode;

use crate::error::{ErrorKind, EvalError};
use crate::symbol::Sym;
pub use crate::tree::{AttrsDef, BinOp, Expr, Key, LambdaDef, Param, Part, Pos, Span, Var};

/// How a binding gets its value while a set is being lowered.
#[derive(Debug)]
enum Binding {
    Expr(Rc<Expr>),
    /// A nested set made of `a.b = …` paths (or a set literal they merge with): never
    /// recursive itself.
    Nested(Box<Building>),
}

/// A set being lowered: nested paths are merged before it becomes an [`AttrsDef`].
#[derive(Debug, Default)]
struct Building {
    statics: Vec<(Sym, Binding, Span)>,
    dynamics: Vec<(Expr, Binding, Span)>,
}

impl Building {
    fn finish(self) -> AttrsDef {
        let value = |b: Binding| match b {
            Binding::Expr(e) => e,
            Binding::Nested(n) => Rc::new(Expr::Attrs(Rc::new(n.finish()))),
        };
        let mut statics: Vec<(Sym, Rc<Expr>, Span)> = self
            .statics
            .into_iter()
            .map(|(s, b, span)| (s, value(b), span))
            .collect();
        statics.sort_by_key(|(s, _, _)| *s);
        let dynamics: Vec<(Expr, Rc<Expr>, Span)> = self
            .dynamics
            .into_iter()
            .map(|(k, b, span)| (k, value(b), span))
            .collect();
        AttrsDef::new(statics, dynamics)
    }

    fn from_def(d: AttrsDef) -> Building {
        Building {
            statics: d
                .statics
                .into_iter()
                .map(|(s, e, span)| (s, Binding::Expr(e), span))
                .collect(),
            dynamics: d
                .dynamics
                .into_iter()
                .map(|(k, e, span)| (k, Binding::Expr(e), span))
                .collect(),
        }
    }
}

/// What a scope binds, for resolution.
enum Scope {
    Names(HashMap<Sym, u32>),
    With,
}

/// Lowers one source. `globals` are the names of the outermost frame.
pub struct Lowerer<'a> {
    source: u32,
    /// The directory relative paths are relative to.
    base_dir: &'a str,
    home: Option<&'a str>,
    scopes: Vec<Scope>,
}

fn span_of(source: u32, node: &impl AstNode<Language = rnix::NixLanguage>) -> Span {
    let r = node.syntax().text_range();
    Span {
        source,
        start: r.start().into(),
        end: r.end().into(),
    }
}

impl<'a> Lowerer<'a> {
    pub fn new(source: u32, base_dir: &'a str, home: Option<&'a str>, globals: &[Sym]) -> Self {
        let names = globals
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, i as u32))
            .collect();
        Self {
            source,
            base_dir,
            home,
            scopes: vec![Scope::Names(names)],
        }
    }

    /// Names bound in a frame just inside the globals (the REPL's variables), in slot order.
    pub fn with_frame(mut self, names: &[Sym]) -> Self {
        self.scopes.push(Scope::Names(
            names
                .iter()
                .enumerate()
                .map(|(i, s)| (*s, i as u32))
                .collect(),
        ));
        self
    }

    fn span(&self, node: &impl AstNode<Language = rnix::NixLanguage>) -> Span {
        span_of(self.source, node)
    }

    fn err(&self, span: Span, kind: ErrorKind) -> EvalError {
        EvalError::new(kind).at(span)
    }

    /// Parse and lower `text`.
    pub fn lower_source(&mut self, text: &str) -> Result<Expr, EvalError> {
        let parsed = rnix::Root::parse(text);
        if let Some(e) = parsed.errors().first() {
            let (start, end) = match e {
                rnix::ParseError::Unexpected(r)
                | rnix::ParseError::UnexpectedExtra(r)
                | rnix::ParseError::UnexpectedWanted(_, r, _)
                | rnix::ParseError::UnexpectedDoubleBind(r)
                | rnix::ParseError::DuplicatedArgs(r, _) => (r.start().into(), r.end().into()),
                _ => (text.len() as u32, text.len() as u32),
            };
            return Err(self.err(
                Span {
                    source: self.source,
                    start,
                    end,
                },
                ErrorKind::Parse(e.to_string()),
            ));
        }
        let root = parsed.tree();
        let expr = root.expr().ok_or_else(|| {
            self.err(
                Span {
                    source: self.source,
                    start: 0,
                    end: 0,
                },
                ErrorKind::Parse("the source holds no expression".into()),
            )
        })?;
        self.lower(expr)
    }

    fn resolve(&self, name: Sym) -> Option<Var> {
        let mut withs = Vec::new();
        for (depth, scope) in self.scopes.iter().rev().enumerate() {
            match scope {
                Scope::Names(names) => {
                    if let Some(&slot) = names.get(&name) {
                        return Some(Var::Static {
                            depth: depth as u32,
                            slot,
                        });
                    }
                }
                Scope::With => withs.push(depth as u32),
            }
        }
        if withs.is_empty() {
            None
        } else {
            Some(Var::Dynamic {
                name,
                withs: withs.into(),
            })
        }
    }

    fn lower_opt(&mut self, e: Option<ast::Expr>, what: &str, at: Span) -> Result<Expr, EvalError> {
        match e {
            Some(e) => self.lower(e),
            None => Err(self.err(at, ErrorKind::Parse(format!("missing {what}")))),
        }
    }

    fn lower(&mut self, e: ast::Expr) -> Result<Expr, EvalError> {
        let span = self.span(&e);
        Ok(match e {
            ast::Expr::Literal(l) => match l.kind() {
                ast::LiteralKind::Integer(i) => Expr::Int(i.value().map_err(|_| {
                    self.err(
                        span,
                        ErrorKind::Parse(format!("invalid integer '{}'", i.syntax().text())),
                    )
                })?),
                ast::LiteralKind::Float(f) => Expr::Float(f.value().map_err(|_| {
                    self.err(
                        span,
                        ErrorKind::Parse(format!("invalid float '{}'", f.syntax().text())),
                    )
                })?),
                ast::LiteralKind::Uri(u) => Expr::string(u.syntax().text()),
            },
            ast::Expr::Str(s) => self.lower_str(&s, span)?,
            ast::Expr::PathAbs(p) => self.lower_path(p.parts(), span, PathBase::Abs)?,
            ast::Expr::PathRel(p) => self.lower_path(p.parts(), span, PathBase::Rel)?,
            ast::Expr::PathHome(p) => self.lower_path(p.parts(), span, PathBase::Home)?,
            ast::Expr::PathSearch(p) => {
                let text = p.content().map(|c| c.text().to_owned()).unwrap_or_default();
                let name = text.trim_start_matches('<').trim_end_matches('>');
                // `__findFile __nixPath "name"`, as in Nix: both names may be rebound.
                let var = |l: &Self, n: &str| -> Result<Expr, EvalError> {
                    match l.resolve(Sym::intern(n)) {
                        Some(v) => Ok(Expr::Var(v, span)),
                        None => Err(l.err(span, ErrorKind::UndefinedVariable(n.to_owned()))),
                    }
                };
                let find = var(self, "__findFile")?;
                let path = var(self, "__nixPath")?;
                Expr::Apply(
                    Rc::new(Expr::Apply(Rc::new(find), Rc::new(path), span)),
                    Rc::new(Expr::string(name)),
                    span,
                )
            }
            ast::Expr::Ident(i) => {
                let name = ident_text(&i);
                let sym = Sym::intern(&name);
                match self.resolve(sym) {
                    Some(v) => Expr::Var(v, span),
                    None => return Err(self.err(span, ErrorKind::UndefinedVariable(name))),
                }
            }
            ast::Expr::Paren(p) => self.lower_opt(p.expr(), "expression", span)?,
            ast::Expr::Root(r) => self.lower_opt(r.expr(), "expression", span)?,
            ast::Expr::List(l) => Expr::List(
                l.items()
                    .map(|i| self.lower(i).map(Rc::new))
                    .collect::<Result<_, _>>()?,
            ),
            ast::Expr::AttrSet(a) => {
                if a.rec_token().is_some() {
                    self.lower_rec(&a, None, span)?
                } else {
                    let def = self.lower_attrs(&a, false)?;
                    Expr::Attrs(Rc::new(def))
                }
            }
            ast::Expr::LetIn(l) => {
                let body = l.body();
                self.lower_rec(&l, Some(body), span)?
            }
            ast::Expr::LegacyLet(l) => {
                // `let { …; body = …; }`: the `body` attribute of a recursive set.
                let set = self.lower_rec(&l, None, span)?;
                Expr::Select(
                    Rc::new(set),
                    vec![Key::Static(Sym::intern("body"))],
                    None,
                    span,
                )
            }
            ast::Expr::With(w) => {
                let ns = self.lower_opt(w.namespace(), "namespace", span)?;
                self.scopes.push(Scope::With);
                let body = self.lower_opt(w.body(), "body", span);
                self.scopes.pop();
                Expr::With(Rc::new(ns), Rc::new(body?), span)
            }
            ast::Expr::Lambda(l) => Expr::Lambda(Rc::new(self.lower_lambda(&l, None, span)?)),
            ast::Expr::Apply(a) => Expr::Apply(
                Rc::new(self.lower_opt(a.lambda(), "function", span)?),
                Rc::new(self.lower_opt(a.argument(), "argument", span)?),
                span,
            ),
            ast::Expr::IfElse(i) => Expr::If(
                Rc::new(self.lower_opt(i.condition(), "condition", span)?),
                Rc::new(self.lower_opt(i.body(), "then branch", span)?),
                Rc::new(self.lower_opt(i.else_body(), "else branch", span)?),
                span,
            ),
            ast::Expr::Assert(a) => Expr::Assert(
                Rc::new(self.lower_opt(a.condition(), "condition", span)?),
                Rc::new(self.lower_opt(a.body(), "body", span)?),
                span,
                a.condition().map_or(span, |c| span_of(self.source, &c)),
            ),
            ast::Expr::Select(s) => {
                let e = self.lower_opt(s.expr(), "expression", span)?;
                let path = self.lower_attrpath(s.attrpath(), span)?;
                let default = s.default_expr().map(|d| self.lower(d)).transpose()?;
                Expr::Select(Rc::new(e), path, default.map(Rc::new), span)
            }
            ast::Expr::HasAttr(h) => {
                let e = self.lower_opt(h.expr(), "expression", span)?;
                let path = self.lower_attrpath(h.attrpath(), span)?;
                Expr::HasAttr(Rc::new(e), path)
            }
            ast::Expr::UnaryOp(u) => {
                let e = self.lower_opt(u.expr(), "operand", span)?;
                match u.operator() {
                    Some(ast::UnaryOpKind::Invert) => Expr::Not(Rc::new(e), span),
                    Some(ast::UnaryOpKind::Negate) => Expr::Neg(Rc::new(e), span),
                    None => return Err(self.err(span, ErrorKind::Parse("unknown operator".into()))),
                }
            }
            ast::Expr::BinOp(b) => {
                let l = self.lower_opt(b.lhs(), "left operand", span)?;
                let r = self.lower_opt(b.rhs(), "right operand", span)?;
                use ast::BinOpKind as K;
                let op = match b.operator() {
                    Some(K::Add) => BinOp::Add,
                    Some(K::Sub) => BinOp::Sub,
                    Some(K::Mul) => BinOp::Mul,
                    Some(K::Div) => BinOp::Div,
                    Some(K::Concat) => BinOp::Concat,
                    Some(K::Update) => BinOp::Update,
                    Some(K::Equal) => BinOp::Eq,
                    Some(K::NotEqual) => BinOp::NotEq,
                    Some(K::Less) => BinOp::Less,
                    Some(K::LessOrEq) => BinOp::LessEq,
                    Some(K::More) => BinOp::More,
                    Some(K::MoreOrEq) => BinOp::MoreEq,
                    Some(K::And) => BinOp::And,
                    Some(K::Or) => BinOp::Or,
                    Some(K::Implication) => BinOp::Implies,
                    // `x |> f` and `f <| x`: applications.
                    Some(K::PipeRight) => return Ok(Expr::Apply(Rc::new(r), Rc::new(l), span)),
                    Some(K::PipeLeft) => return Ok(Expr::Apply(Rc::new(l), Rc::new(r), span)),
                    None => return Err(self.err(span, ErrorKind::Parse("unknown operator".into()))),
                };
                Expr::BinOp(op, Rc::new(l), Rc::new(r), span)
            }
            ast::Expr::CurPos(_) => Expr::CurPos(span),
            ast::Expr::Error(_) => {
                return Err(self.err(span, ErrorKind::Parse("syntax error".into())))
            }
        })
    }

    fn lower_str(&mut self, s: &ast::Str, span: Span) -> Result<Expr, EvalError> {
        let indented = s.syntax().first_token().is_some_and(|t| t.text() == "''");
        if indented {
            return self.lower_indented(s, span);
        }
        let mut parts = Vec::new();
        for p in s.normalized_parts() {
            match p {
                InterpolPart::Literal(l) => parts.push(Part::Lit(l.into())),
                InterpolPart::Interpolation(i) => {
                    parts.push(Part::Expr(self.lower_opt(i.expr(), "expression", span)?))
                }
            }
        }
        Ok(match parts.as_slice() {
            [] => Expr::string(""),
            [Part::Lit(l)] => Expr::string(l),
            _ => Expr::Interp(parts, span),
        })
    }

    /// An indented string, its indentation stripped as Nix strips it: escapes (`''$`,
    /// `'''`, `''\n`…) end a line's leading whitespace when the least indentation is
    /// measured, and an escaped newline starts a line whose indentation is then removed.
    fn lower_indented(&mut self, s: &ast::Str, span: Span) -> Result<Expr, EvalError> {
        let pieces = indented_pieces(s);
        // The least indentation of lines with something on them.
        let (mut at_start, mut min_indent, mut cur) = (true, usize::MAX, 0usize);
        for p in &pieces {
            match p {
                Piece::Text(t, true) => {
                    for c in t.chars() {
                        if at_start {
                            match c {
                                ' ' => cur += 1,
                                '\n' => cur = 0,
                                _ => {
                                    at_start = false;
                                    min_indent = min_indent.min(cur);
                                }
                            }
                        } else if c == '\n' {
                            at_start = true;
                            cur = 0;
                        }
                    }
                }
                Piece::Text(_, false) | Piece::Interp(_) => {
                    if at_start {
                        at_start = false;
                        min_indent = min_indent.min(cur);
                    }
                }
            }
        }
        let mut parts: Vec<Part> = Vec::new();
        let (mut at_start, mut dropped) = (true, 0usize);
        let n = pieces.len();
        for (i, p) in pieces.into_iter().enumerate() {
            match p {
                Piece::Interp(e) => {
                    at_start = false;
                    dropped = 0;
                    parts.push(Part::Expr(self.lower_opt(e.expr(), "expression", span)?));
                }
                Piece::Text(t, _) => {
                    let mut out = String::with_capacity(t.len());
                    for c in t.chars() {
                        if at_start {
                            match c {
                                ' ' => {
                                    if dropped >= min_indent {
                                        out.push(c);
                                    }
                                    dropped += 1;
                                }
                                '\n' => {
                                    dropped = 0;
                                    out.push(c);
                                }
                                _ => {
                                    at_start = false;
                                    dropped = 0;
                                    out.push(c);
                                }
                            }
                        } else {
                            out.push(c);
                            if c == '\n' {
                                at_start = true;
                            }
                        }
                    }
                    // The last line goes if it is only spaces.
                    if i + 1 == n {
                        if let Some(p) = out.rfind('\n') {
                            if out[p + 1..].bytes().all(|b| b == b' ') {
                                out.truncate(p + 1);
                            }
                        }
                    }
                    match parts.last_mut() {
                        Some(Part::Lit(l)) => *l = format!("{l}{out}").into(),
                        _ => parts.push(Part::Lit(out.into())),
                    }
                }
            }
        }
        Ok(match parts.as_slice() {
            [] => Expr::string(""),
            [Part::Lit(l)] => Expr::string(l),
            _ => Expr::Interp(parts, span),
        })
    }

    fn lower_path(
        &mut self,
        parts: Vec<InterpolPart<ast::PathContent>>,
        span: Span,
        base: PathBase,
    ) -> Result<Expr, EvalError> {
        let mut out = Vec::new();
        for (i, p) in parts.into_iter().enumerate() {
            match p {
                InterpolPart::Literal(l) => {
                    let text = l.text();
                    let text = if i == 0 {
                        match base {
                            PathBase::Abs => text.to_owned(),
                            PathBase::Rel => format!("{}/{}", self.base_dir, text),
                            PathBase::Home => match self.home {
                                Some(h) => format!("{h}{}", &text[1..]),
                                None => {
                                    return Err(self.err(
                                        span,
                                        ErrorKind::Other(
                                            "a path starting with '~/' needs $HOME".into(),
                                        ),
                                    ))
                                }
                            },
                        }
                    } else {
                        text.to_owned()
                    };
                    out.push(Part::Lit(text.into()));
                }
                InterpolPart::Interpolation(e) => {
                    out.push(Part::Expr(self.lower_opt(e.expr(), "expression", span)?))
                }
            }
        }
        Ok(match out.as_slice() {
            [Part::Lit(l)] => Expr::Path(canonicalise(l).into()),
            _ => Expr::PathInterp(out, span),
        })
    }

    fn lower_attrpath(
        &mut self,
        path: Option<ast::Attrpath>,
        span: Span,
    ) -> Result<Vec<Key>, EvalError> {
        let Some(path) = path else {
            return Err(self.err(span, ErrorKind::Parse("missing attribute path".into())));
        };
        path.attrs().map(|a| self.lower_key(a, span)).collect()
    }

    fn lower_key(&mut self, a: ast::Attr, span: Span) -> Result<Key, EvalError> {
        Ok(match a {
            ast::Attr::Ident(i) => Key::Static(Sym::intern(&ident_text(&i))),
            ast::Attr::Str(s) => match self.lower_str(&s, span)? {
                Expr::Str(t) => Key::Static(Sym::intern(&t.s)),
                e => Key::Dynamic(e),
            },
            ast::Attr::Dynamic(d) => {
                match self.lower_opt(d.expr(), "attribute name", span)? {
                    // `${"a"}` is as static as `a`.
                    Expr::Str(t) => Key::Static(Sym::intern(&t.s)),
                    e => Key::Dynamic(e),
                }
            }
        })
    }

    /// The entries of a set or `let`, lowered in the current scopes (for `rec` and `let`,
    /// the caller has pushed the frame of `names`).
    fn lower_entries(
        &mut self,
        node: &impl HasEntry,
        inherit_scope_is_outer: bool,
    ) -> Result<AttrsDef, EvalError> {
        let mut def = Building::default();
        for entry in node.entries() {
            match entry {
                ast::Entry::Inherit(inh) => {
                    let span = self.span(&inh);
                    let from = match inh.from() {
                        Some(f) => Some(self.lower_opt(f.expr(), "expression", span)?),
                        None => None,
                    };
                    let from = from.map(Rc::new);
                    // Where Nix places inherited attributes: just after `inherit` or its
                    // `(from)`, the start of the (empty) list of names in its grammar.
                    let ipos = {
                        let end = match inh.from() {
                            Some(f) => f.syntax().text_range().end(),
                            None => inh
                                .syntax()
                                .first_token()
                                .map_or(inh.syntax().text_range().start(), |t| {
                                    t.text_range().end()
                                }),
                        };
                        Span {
                            source: self.source,
                            start: end.into(),
                            end: end.into(),
                        }
                    };
                    for a in inh.attrs() {
                        let aspan = self.span(&a);
                        let name = match self.lower_key(a, aspan)? {
                            Key::Static(s) => s,
                            Key::Dynamic(_) => {
                                return Err(self.err(
                                    aspan,
                                    ErrorKind::Parse(
                                        "dynamic attributes not allowed in inherit".into(),
                                    ),
                                ))
                            }
                        };
                        let value = match &from {
                            Some(f) => {
                                Expr::Select(f.clone(), vec![Key::Static(name)], None, aspan)
                            }
                            None => {
                                // `inherit x;` takes `x` from around the set or `let`.
                                let var = if inherit_scope_is_outer {
                                    let inner = self.scopes.pop();
                                    let v = self.resolve(name);
                                    if let Some(s) = inner {
                                        self.scopes.push(s);
                                    }
                                    v
                                } else {
                                    self.resolve(name)
                                };
                                let var = var.map(|v| match v {
                                    // One frame further out than where the value is
                                    // evaluated: the set's own frame is skipped.
                                    Var::Static { depth, slot } if inherit_scope_is_outer => {
                                        Var::Static {
                                            depth: depth + 1,
                                            slot,
                                        }
                                    }
                                    Var::Dynamic { name, withs } if inherit_scope_is_outer => {
                                        Var::Dynamic {
                                            name,
                                            withs: withs.iter().map(|d| d + 1).collect(),
                                        }
                                    }
                                    v => v,
                                });
                                match var {
                                    Some(v) => Expr::Var(v, aspan),
                                    None => {
                                        return Err(self.err(
                                            aspan,
                                            ErrorKind::UndefinedVariable(name.to_string()),
                                        ))
                                    }
                                }
                            }
                        };
                        insert(
                            &mut def,
                            vec![Key::Static(name)],
                            Binding::Expr(Rc::new(value)),
                            ipos,
                        )
                        .map_err(|k| self.err(aspan, k))?;
                    }
                }
                ast::Entry::AttrpathValue(kv) => {
                    let span = self.span(&kv);
                    let path = self.lower_attrpath(kv.attrpath(), span)?;
                    let value = self.lower_opt(kv.value(), "value", span)?;
                    let value = match value {
                        // A literal set may be merged with `a.b = …` paths.
                        Expr::Attrs(d) => match Rc::try_unwrap(d) {
                            Ok(d) => Binding::Nested(Box::new(Building::from_def(d))),
                            Err(d) => Binding::Expr(Rc::new(Expr::Attrs(d))),
                        },
                        Expr::Lambda(l) => {
                            // Name the function after the attribute, for messages.
                            Binding::Expr(Rc::new(Expr::Lambda(name_lambda(l, path.last()))))
                        }
                        v => Binding::Expr(Rc::new(v)),
                    };
                    insert(&mut def, path, value, span).map_err(|k| self.err(span, k))?;
                }
            }
        }
        Ok(def.finish())
    }

    fn lower_attrs(&mut self, a: &ast::AttrSet, _rec: bool) -> Result<AttrsDef, EvalError> {
        self.lower_entries(a, false)
    }

    /// `rec { … }` or `let … in body`: the frame of its static names, in symbol order.
    fn lower_rec(
        &mut self,
        node: &impl HasEntry,
        body: Option<Option<ast::Expr>>,
        span: Span,
    ) -> Result<Expr, EvalError> {
        let mut names: Vec<Sym> = Vec::new();
        for entry in node.entries() {
            match entry {
                ast::Entry::Inherit(inh) => {
                    names.extend(
                        inh.attrs()
                            .filter_map(|a| static_key(&a))
                            .map(|n| Sym::intern(&n)),
                    );
                }
                ast::Entry::AttrpathValue(kv) => {
                    let Some(first) = kv.attrpath().and_then(|p| p.attrs().next()) else {
                        continue;
                    };
                    match static_key(&first) {
                        Some(n) => names.push(Sym::intern(&n)),
                        None if body.is_some() => {
                            return Err(self.err(
                                span,
                                ErrorKind::Parse("dynamic attributes not allowed in let".into()),
                            ))
                        }
                        None => {}
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        let frame: HashMap<Sym, u32> = names
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, i as u32))
            .collect();
        self.scopes.push(Scope::Names(frame));
        let lowered = (|| {
            let def = self.lower_entries(node, true)?;
            let body = match body {
                Some(b) => Some(Rc::new(self.lower_opt(b, "body", span)?)),
                None => None,
            };
            Ok((def, body))
        })();
        self.scopes.pop();
        let (def, body) = lowered?;
        debug_assert!(def.statics.iter().zip(&names).all(|((s, _, _), n)| s == n));
        Ok(Expr::Rec {
            def: Rc::new(def),
            body,
        })
    }

    fn lower_lambda(
        &mut self,
        l: &ast::Lambda,
        name: Option<Sym>,
        span: Span,
    ) -> Result<LambdaDef, EvalError> {
        let Some(param) = l.param() else {
            return Err(self.err(span, ErrorKind::Parse("missing parameter".into())));
        };
        let (param, frame) = match param {
            ast::Param::IdentParam(i) => {
                let n = i.ident().map(|i| ident_text(&i)).unwrap_or_default();
                let sym = Sym::intern(&n);
                (Param::Ident(sym), vec![sym])
            }
            ast::Param::Pattern(p) => {
                let mut names: Vec<Sym> = p
                    .pat_entries()
                    .map(|e| Sym::intern(&e.ident().map(|i| ident_text(&i)).unwrap_or_default()))
                    .collect();
                let at = p
                    .pat_bind()
                    .and_then(|b| b.ident())
                    .map(|i| Sym::intern(&ident_text(&i)));
                if let Some(a) = at {
                    names.push(a);
                }
                let mut seen = std::collections::HashSet::new();
                if let Some(dup) = names.iter().find(|n| !seen.insert(**n)) {
                    return Err(self.err(
                        span,
                        ErrorKind::Parse(format!("duplicate formal function argument '{dup}'")),
                    ));
                }
                let frame = names.clone();
                self.scopes.push(Scope::Names(
                    frame
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (*s, i as u32))
                        .collect(),
                ));
                let formals = p
                    .pat_entries()
                    .map(|e| {
                        let n = Sym::intern(&e.ident().map(|i| ident_text(&i)).unwrap_or_default());
                        let d = e
                            .default()
                            .map(|d| self.lower(d).map(Rc::new))
                            .transpose()?;
                        Ok((n, d))
                    })
                    .collect::<Result<Vec<_>, EvalError>>();
                self.scopes.pop();
                let placeholder = Rc::new(Expr::Null);
                let mut statics: Vec<(Sym, Rc<Expr>, Span)> = p
                    .pat_entries()
                    .filter_map(|e| {
                        let i = e.ident()?;
                        let at = span_of(self.source, &i);
                        Some((Sym::intern(&ident_text(&i)), placeholder.clone(), at))
                    })
                    .collect();
                statics.sort_by_key(|(s, _, _)| *s);
                let positions = Rc::new(AttrsDef::new(statics, Vec::new()));
                (
                    Param::Formals {
                        formals: formals?,
                        positions,
                        ellipsis: p.ellipsis_token().is_some(),
                        at,
                    },
                    frame,
                )
            }
        };
        self.scopes.push(Scope::Names(
            frame
                .iter()
                .enumerate()
                .map(|(i, s)| (*s, i as u32))
                .collect(),
        ));
        let body = self.lower_opt(l.body(), "body", span);
        self.scopes.pop();
        Ok(LambdaDef {
            name,
            param,
            body: body?,
            span,
        })
    }
}

enum PathBase {
    Abs,
    Rel,
    Home,
}

/// A piece of an indented string as Nix's lexer cuts it: text (and whether it is plain
/// source text, whose spaces count as indentation, rather than an escape), or an
/// interpolation.
enum Piece {
    Text(String, bool),
    Interp(ast::Interpol),
}

fn indented_pieces(s: &ast::Str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut first = true;
    for part in s.parts() {
        let raw = match part {
            InterpolPart::Interpolation(i) => {
                out.push(Piece::Interp(i));
                first = false;
                continue;
            }
            InterpolPart::Literal(l) => l.syntax().text().to_owned(),
        };
        let mut raw = raw.as_str();
        if first {
            // The lexer takes a first line of only spaces with the opening quotes.
            if let Some(p) = raw.find('\n') {
                if raw[..p].bytes().all(|b| b == b' ') {
                    raw = &raw[p + 1..];
                }
            }
        }
        first = false;
        let mut run = String::new();
        let mut rest = raw;
        while let Some(c) = rest.chars().next() {
            let escape = if let Some(r) = rest.strip_prefix("'''") {
                Some(("''".to_owned(), r))
            } else if let Some(r) = rest.strip_prefix("''$") {
                Some(("$".to_owned(), r))
            } else if let Some(r) = rest.strip_prefix("''\\") {
                r.chars().next().map(|e| {
                    let text = match e {
                        'n' => "\n".to_owned(),
                        'r' => "\r".to_owned(),
                        't' => "\t".to_owned(),
                        e => e.to_string(),
                    };
                    (text, &r[e.len_utf8()..])
                })
            } else {
                None
            };
            match escape {
                Some((text, r)) => {
                    if !run.is_empty() {
                        out.push(Piece::Text(std::mem::take(&mut run), true));
                    }
                    out.push(Piece::Text(text, false));
                    rest = r;
                }
                None => {
                    run.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if !run.is_empty() {
            out.push(Piece::Text(run, true));
        }
    }
    out
}

/// The name an attribute has without evaluating anything, if it has one.
fn static_key(a: &ast::Attr) -> Option<String> {
    let literal = |s: &ast::Str| match s.normalized_parts().as_slice() {
        [] => Some(String::new()),
        [InterpolPart::Literal(l)] => Some(l.clone()),
        _ => None,
    };
    match a {
        ast::Attr::Ident(i) => Some(ident_text(i)),
        ast::Attr::Str(s) => literal(s),
        ast::Attr::Dynamic(d) => match d.expr() {
            Some(ast::Expr::Str(s)) => literal(&s),
            _ => None,
        },
    }
}

fn ident_text(i: &ast::Ident) -> String {
    i.ident_token()
        .map(|t| t.text().to_owned())
        .unwrap_or_default()
}

fn name_lambda(l: Rc<LambdaDef>, key: Option<&Key>) -> Rc<LambdaDef> {
    match (Rc::try_unwrap(l), key) {
        (Ok(mut d), Some(Key::Static(s))) if d.name.is_none() => {
            d.name = Some(*s);
            Rc::new(d)
        }
        (Ok(d), _) => Rc::new(d),
        (Err(l), _) => l,
    }
}

/// Put `value` at `path` in `def`, merging nested sets; a name defined twice is an error.
fn insert(
    def: &mut Building,
    mut path: Vec<Key>,
    value: Binding,
    span: Span,
) -> Result<(), ErrorKind> {
    let first = path.remove(0);
    let value = if path.is_empty() {
        value
    } else {
        let mut inner = Building::default();
        insert(&mut inner, path, value, span)?;
        Binding::Nested(Box::new(inner))
    };
    match first {
        Key::Dynamic(k) => {
            def.dynamics.push((k, value, span));
            Ok(())
        }
        Key::Static(s) => {
            match def.statics.iter_mut().find(|(n, _, _)| *n == s) {
                None => def.statics.push((s, value, span)),
                Some((_, Binding::Nested(existing), _)) => match value {
                    Binding::Nested(new) => merge(existing, *new)?,
                    Binding::Expr(_) => return Err(ErrorKind::DuplicateAttr(s.to_string())),
                },
                Some(_) => return Err(ErrorKind::DuplicateAttr(s.to_string())),
            }
            Ok(())
        }
    }
}

fn merge(into: &mut Building, from: Building) -> Result<(), ErrorKind> {
    for (s, v, span) in from.statics {
        insert(into, vec![Key::Static(s)], v, span)?;
    }
    into.dynamics.extend(from.dynamics);
    Ok(())
}

/// A path made absolute without `.`, `..` or repeated slashes, as Nix does (without
/// looking at the file system).
pub fn canonicalise(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = String::with_capacity(p.len());
    for c in &parts {
        out.push('/');
        out.push_str(c);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}
