//! Calling functions: lambdas in frames of their own (a frame the call left nothing holding
//! is reused: spare one-argument frames, and those of repeated two-argument calls), builtins
//! and their partial applications, and sets with `__functor`.

use std::rc::Rc;

use crate::error::{ErrorKind, EvalError};
use crate::eval::{type_error, Evaluator};
use crate::symbol::Sym;
use crate::syntax::{Expr, Param, Span};
use crate::value::{Closure, Env, Partial, Value};

type Result<T> = std::result::Result<T, EvalError>;

impl Evaluator {
    /// Apply `f` to `arg`.
    pub fn apply(&mut self, f: Value, arg: Value, span: Span) -> Result<Value> {
        self.apply_ref(&f, arg, span)
    }

    /// [`Self::apply`] of a function the caller keeps.
    pub(crate) fn apply_ref(&mut self, f: &Value, arg: Value, span: Span) -> Result<Value> {
        self.enter().map_err(|e| e.at(span))?;
        let r = self.apply_inner(f, arg, span);
        self.leave();
        r
    }

    /// `f a b`. When `f` is a function of the form `x: y: …`, its body is evaluated with
    /// both arguments at once, without making the function `f a` would return, which
    /// nothing else could see (`foldl'` and `sort` call such functions once per element).
    pub(crate) fn apply2(&mut self, f: &Value, a: Value, b: Value, span: Span) -> Result<Value> {
        self.apply2_with(f, a, b, span, None)
    }

    /// [`Self::apply2`] called again and again with the same function (`foldl'`): the two
    /// frames of a call that left nothing holding them take the next call's arguments,
    /// instead of two new ones being made and freed for every element.
    pub(crate) fn apply2_with(
        &mut self,
        f: &Value,
        a: Value,
        b: Value,
        span: Span,
        frames: Option<&mut Frames2>,
    ) -> Result<Value> {
        let mut slot = Value::Null;
        let f = self.forced(f, &mut slot)?;
        // A builtin of two arguments (`foldl' builtins.add`) runs at once, without the
        // partial application it would make first.
        if let Value::PrimOp(p) = f {
            if p.arity == 2 {
                let v = (p.run)(self, &[a, b], span).map_err(|e| e.at(span))?;
                return self.force(&v);
            }
        }
        if let Value::Lambda(c) = f {
            if let (Param::Ident(_), Expr::Lambda(inner)) = (&c.def.param, &c.def.body) {
                if let Param::Ident(_) = inner.param {
                    self.enter().map_err(|e| e.at(span))?;
                    let frame = match frames {
                        Some(kept) => kept.frame(c, a, b),
                        None => {
                            let outer = Env::new(smallvec::smallvec![a], Some(c.env.clone()));
                            Env::new(smallvec::smallvec![b], Some(outer))
                        }
                    };
                    let r = self
                        .eval(&inner.body, &frame)
                        .map_err(|e| calling(&inner.name, e, span));
                    self.leave();
                    return r;
                }
            }
        }
        let partial = self.apply_ref(f, a, span)?;
        self.apply(partial, b, span)
    }

    fn apply_inner(&mut self, f: &Value, arg: Value, span: Span) -> Result<Value> {
        let mut slot = Value::Null;
        let f = self.forced(f, &mut slot)?;
        match f {
            Value::Lambda(c) => self
                .call(c, arg, span)
                .map_err(|e| calling(&c.def.name, e, span)),
            Value::PrimOp(p) if p.arity == 1 => {
                let v = (p.run)(self, &[arg], span).map_err(|e| e.at(span))?;
                self.force(&v)
            }
            Value::PrimOp(op) => Ok(Value::PrimOpApp(Rc::new(Partial {
                op: op.clone(),
                args: vec![arg],
            }))),
            Value::PrimOpApp(partial) => {
                let mut args = partial.args.clone();
                args.push(arg);
                let op = partial.op.clone();
                if args.len() == op.arity {
                    let v = (op.run)(self, &args, span).map_err(|e| e.at(span))?;
                    self.force(&v)
                } else {
                    Ok(Value::PrimOpApp(Rc::new(Partial { op, args })))
                }
            }
            Value::Attrs(a) if a.get(Sym::intern("__functor")).is_some() => {
                let functor = a
                    .get(Sym::intern("__functor"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let partial = self.apply(functor, Value::Attrs(a.clone()), span)?;
                self.apply(partial, arg, span)
            }
            other => Err(type_error("a function", other, span)),
        }
    }

    fn call(&mut self, c: &Closure, arg: Value, span: Span) -> Result<Value> {
        let frame = match &c.def.param {
            Param::Ident(_) => {
                let frame = self.frame1(arg, &c.env);
                let r = self.eval(&c.def.body, &frame);
                self.spare(frame);
                return r;
            }
            Param::Formals {
                formals,
                ellipsis,
                at,
                ..
            } => {
                let given = self.force(&arg)?;
                let Value::Attrs(given) = given else {
                    return Err(type_error("a set", &given, span));
                };
                let n = formals.len() + usize::from(at.is_some());
                let frame = Env::new(smallvec::smallvec![Value::Null; n], Some(c.env.clone()));
                let fname = || {
                    c.def
                        .name
                        .map_or_else(|| "anonymous lambda".to_owned(), |n| n.to_string())
                };
                let mut slots = crate::value::Slots::with_capacity(n);
                for (name, default) in formals {
                    match (given.get(*name), default) {
                        (Some(v), _) => slots.push(v.clone()),
                        (None, Some(d)) => slots.push(self.lazy(d, &frame)),
                        (None, None) => {
                            return Err(EvalError::new(ErrorKind::MissingArgument {
                                function: fname(),
                                arg: name.to_string(),
                            })
                            .at(span))
                        }
                    }
                }
                if !ellipsis {
                    if let Some((extra, _)) = given
                        .iter()
                        .find(|(k, _)| !formals.iter().any(|(f, _)| f == *k))
                    {
                        return Err(EvalError::new(ErrorKind::UnexpectedArgument {
                            function: fname(),
                            arg: extra.to_string(),
                        })
                        .at(span));
                    }
                }
                if at.is_some() {
                    slots.push(Value::Attrs(given));
                }
                *frame.slots.borrow_mut() = slots;
                frame
            }
        };
        self.eval(&c.def.body, &frame)
    }
}

/// How many emptied frames are kept for reuse.
const SPARE_FRAMES: usize = 64;

impl Evaluator {
    /// A frame of one slot holding `arg`, below `parent`: a spare one if there is one.
    fn frame1(&mut self, arg: Value, parent: &Rc<Env>) -> Rc<Env> {
        if let Some(mut frame) = self.spare_frames.pop() {
            if let Some(e) = Rc::get_mut(&mut frame) {
                e.parent = Some(parent.clone());
                e.slots.get_mut().push(arg);
                return frame;
            }
        }
        Env::new(smallvec::smallvec![arg], Some(parent.clone()))
    }

    /// Keep `frame` for another call if nothing else holds it (no thunk, function or
    /// `with` made in the call outlived it): emptied, it costs one allocation less next
    /// time.
    fn spare(&mut self, mut frame: Rc<Env>) {
        if self.spare_frames.len() < SPARE_FRAMES {
            if let Some(e) = Rc::get_mut(&mut frame) {
                e.parent = None;
                let slots = e.slots.get_mut();
                slots.clear();
                if !slots.spilled() {
                    self.spare_frames.push(frame);
                }
            }
        }
    }
}

/// The frames of the last call of a `x: y: …` function made by [`Evaluator::apply2_with`]:
/// the inner one (`y`'s), whose parent is the outer one (`x`'s), and the function they were
/// made for.
#[derive(Default)]
pub(crate) struct Frames2 {
    kept: Option<(Rc<Closure>, Rc<Env>)>,
}

impl Frames2 {
    /// A frame for a call of `c` with `a` and `b`: the last one, if it was made for `c`
    /// and nothing took hold of either of its frames during that call (no thunk, function
    /// or `with` made in the body outlived it); otherwise new ones, kept for the next call.
    fn frame(&mut self, c: &Rc<Closure>, a: Value, b: Value) -> Rc<Env> {
        if let Some((made_for, inner)) = &self.kept {
            let free = |e: &Rc<Env>| Rc::strong_count(e) == 1 && Rc::weak_count(e) == 0;
            if Rc::ptr_eq(made_for, c) && free(inner) {
                if let Some(outer) = inner.parent.as_ref().filter(|o| free(o)) {
                    std::mem::replace(&mut outer.slots.borrow_mut()[0], a).discard();
                    std::mem::replace(&mut inner.slots.borrow_mut()[0], b).discard();
                    return inner.clone();
                }
            }
        }
        let outer = Env::new(smallvec::smallvec![a], Some(c.env.clone()));
        let inner = Env::new(smallvec::smallvec![b], Some(outer));
        self.kept = Some((c.clone(), inner.clone()));
        inner
    }
}

/// A function that forces its (last) argument before it does anything else that could be
/// seen (forcing another value, failing, tracing): `foldl'`, `filter`, `any` and `all` may
/// then force each element before the call, computing it at once, instead of making a
/// thunk that the body forces first thing.
pub(crate) struct ForcesArg {
    /// Only when the first argument is already a value (`acc: x: acc + x` reads `acc`
    /// first, which must do nothing).
    pub after_first: bool,
    /// The function's name, for the context an error in the argument gets inside the call.
    name: Option<Sym>,
}

impl ForcesArg {
    /// Whether `f` is `x: body`, its body forcing `x` first.
    pub(crate) fn of1(f: &Value) -> Option<ForcesArg> {
        let Value::Lambda(c) = f else { return None };
        let Param::Ident(_) = c.def.param else {
            return None;
        };
        (first_forced(&c.def.body) == First::Y).then_some(ForcesArg {
            after_first: false,
            name: c.def.name,
        })
    }

    /// Whether `f` is `x: y: body`, its body forcing `y` first (perhaps after reading `x`).
    pub(crate) fn of2(f: &Value) -> Option<ForcesArg> {
        let Value::Lambda(c) = f else { return None };
        let (Param::Ident(_), Expr::Lambda(inner)) = (&c.def.param, &c.def.body) else {
            return None;
        };
        let Param::Ident(_) = inner.param else {
            return None;
        };
        let after_first = match first_forced(&inner.body) {
            First::Y => false,
            First::YAfterX => true,
            _ => return None,
        };
        Some(ForcesArg {
            after_first,
            name: inner.name,
        })
    }

    /// An error forcing the argument before the call, as it would have been inside it.
    pub(crate) fn inside(&self, e: EvalError, span: Span) -> EvalError {
        calling(&self.name, e, span)
    }
}

/// What evaluating an expression of the body of `x: y: …` (or of `y: …`) forces first, as
/// the evaluator evaluates it (operands left to right; a condition, a selected set or a
/// negated value before anything else). Frames: `y` is slot 0 of the innermost, `x` slot 0
/// of the next.
#[derive(PartialEq)]
enum First {
    /// `y`, before anything else.
    Y,
    /// `y`, after only reading `x`.
    YAfterX,
    /// Nothing at all: a constant.
    Nothing,
    /// Only `x` is read.
    X,
    /// Something else, or not known.
    Other,
}

fn first_forced(e: &Expr) -> First {
    use crate::syntax::{BinOp, Var};
    let first_of = |sub: &Expr| match first_forced(sub) {
        First::Y => First::Y,
        First::YAfterX => First::YAfterX,
        _ => First::Other,
    };
    match e {
        Expr::Var(Var::Static { depth: 0, slot: 0 }, _) => First::Y,
        Expr::Var(Var::Static { depth: 1, slot: 0 }, _) => First::X,
        Expr::Null | Expr::Bool(_) | Expr::Int(_) | Expr::Float(_) | Expr::Str(_) => First::Nothing,
        Expr::Select(e, ..) | Expr::HasAttr(e, _) | Expr::Not(e, _) | Expr::Neg(e, _) => {
            first_of(e)
        }
        Expr::If(c, ..) | Expr::Assert(c, ..) => first_of(c),
        Expr::BinOp(BinOp::And | BinOp::Or | BinOp::Implies, l, _, _) => first_of(l),
        Expr::BinOp(_, l, r, _) => match (first_forced(l), first_forced(r)) {
            (First::Y, _) => First::Y,
            (First::YAfterX, _) => First::YAfterX,
            (First::Nothing, First::Y) => First::Y,
            (First::Nothing | First::X, First::Y | First::YAfterX) => First::YAfterX,
            _ => First::Other,
        },
        _ => First::Other,
    }
}

/// An error from a function's body, with the call it happened in.
fn calling(name: &Option<Sym>, e: EvalError, span: Span) -> EvalError {
    let name = name.map_or_else(|| "anonymous function".to_owned(), |n| format!("'{n}'"));
    e.context(Some(span), format!("while calling {name}"))
}
