//! The lowered expressions evaluation runs: owned, with spans, every variable resolved to
//! a frame and slot where the scopes allow it; and the places of attributes.

use std::rc::Rc;

use crate::symbol::Sym;
use crate::value::NixString;

/// Where an expression is: a byte range of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub source: u32,
    pub start: u32,
    pub end: u32,
}

/// A place in the sources as a small number, kept beside each attribute of a set (so that
/// positions survive `//`); 0 is none. Places are numbered once, when a file is lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos(u32);

thread_local! {
    static POSITIONS: std::cell::RefCell<Vec<Span>> = std::cell::RefCell::new(vec![Span::default()]);
}

impl Pos {
    pub const NONE: Pos = Pos(0);

    pub fn new(span: Span) -> Pos {
        POSITIONS.with(|p| {
            let mut p = p.borrow_mut();
            p.push(span);
            Pos((p.len() - 1) as u32)
        })
    }

    pub fn span(self) -> Option<Span> {
        if self == Pos::NONE {
            return None;
        }
        POSITIONS.with(|p| p.borrow().get(self.0 as usize).copied())
    }
}

/// A variable's place, found at lowering.
#[derive(Debug, Clone)]
pub enum Var {
    /// `depth` frames up (0: the innermost), slot `slot`.
    Static { depth: u32, slot: u32 },
    /// Not bound by any enclosing `let`, `rec`, function or the global scope: searched in the
    /// `with` frames at these depths, innermost first.
    Dynamic { name: Sym, withs: Rc<[u32]> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Concat,
    Update,
    Eq,
    NotEq,
    Less,
    LessEq,
    More,
    MoreEq,
    And,
    Or,
    Implies,
}

/// A part of a string or path with interpolations.
#[derive(Debug)]
pub enum Part {
    Lit(Rc<str>),
    Expr(Expr),
}

/// An attribute name in a path (`a.${b}."c"`).
#[derive(Debug)]
pub enum Key {
    Static(Sym),
    Dynamic(Expr),
}

/// A set literal, its static keys sorted by symbol; values are evaluated in the scope of
/// the set (`rec`, `let`) or around it.
#[derive(Debug, Default)]
pub struct AttrsDef {
    pub statics: Vec<(Sym, Rc<Expr>, Span)>,
    /// `${k} = v;` entries, evaluated when the set is: key, value, where.
    pub dynamics: Vec<(Expr, Rc<Expr>, Span)>,
    /// The places of `statics` and then of `dynamics`, numbered once.
    pub positions: Vec<Pos>,
}

impl AttrsDef {
    pub(crate) fn new(
        statics: Vec<(Sym, Rc<Expr>, Span)>,
        dynamics: Vec<(Expr, Rc<Expr>, Span)>,
    ) -> Self {
        let positions = statics
            .iter()
            .map(|(_, _, s)| Pos::new(*s))
            .chain(dynamics.iter().map(|(_, _, s)| Pos::new(*s)))
            .collect();
        AttrsDef {
            statics,
            dynamics,
            positions,
        }
    }
}

/// A function.
#[derive(Debug)]
pub struct LambdaDef {
    /// The name of what it is bound to, when known (for messages).
    pub name: Option<Sym>,
    pub param: Param,
    pub body: Expr,
    pub span: Span,
}

#[derive(Debug)]
pub enum Param {
    /// `x: …`: the argument in slot 0.
    Ident(Sym),
    /// `{ a, b ? d, … } @ x`: slots are the formals in order, then the `@` name, if any.
    Formals {
        formals: Vec<(Sym, Option<Rc<Expr>>)>,
        /// Where each formal is named, as a set literal's positions are kept (for
        /// `unsafeGetAttrPos` of `functionArgs`).
        positions: Rc<AttrsDef>,
        ellipsis: bool,
        /// The `@` name, whose slot follows the formals'.
        at: Option<Sym>,
    },
}

#[derive(Debug)]
pub enum Expr {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string without interpolations: the value itself, shared by every evaluation.
    Str(Rc<NixString>),
    Interp(Vec<Part>, Span),
    Path(Rc<String>),
    PathInterp(Vec<Part>, Span),
    Var(Var, Span),
    List(Vec<Rc<Expr>>),
    Attrs(Rc<AttrsDef>),
    /// `rec { … }` and `let … in`: a frame of the bindings (static keys in symbol order)
    /// that the values see; for `rec`, the result is the set of them.
    Rec {
        def: Rc<AttrsDef>,
        body: Option<Rc<Expr>>,
    },
    With(Rc<Expr>, Rc<Expr>, Span),
    Lambda(Rc<LambdaDef>),
    Apply(Rc<Expr>, Rc<Expr>, Span),
    If(Rc<Expr>, Rc<Expr>, Rc<Expr>, Span),
    /// `assert c; body`, and where `c` is (its text is in the message when it fails).
    Assert(Rc<Expr>, Rc<Expr>, Span, Span),
    Select(Rc<Expr>, Vec<Key>, Option<Rc<Expr>>, Span),
    HasAttr(Rc<Expr>, Vec<Key>),
    BinOp(BinOp, Rc<Expr>, Rc<Expr>, Span),
    Not(Rc<Expr>, Span),
    Neg(Rc<Expr>, Span),
    CurPos(Span),
}

impl Expr {
    pub(crate) fn string(s: &str) -> Expr {
        Expr::Str(Rc::new(NixString {
            s: s.into(),
            context: Default::default(),
        }))
    }
}
