//! The evaluator: expressions to values, lazily; thunks forced in place; operators with
//! Nix's semantics. Function calls are in `apply`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use crate::error::{ErrorKind, EvalError};
use crate::store::EvalStore;
use crate::symbol::Sym;
use crate::syntax::{AttrsDef, BinOp, Expr, Key, Lowerer, Part, Span, Var};
use crate::value::{Attrs, Closure, Context, Entry, Env, NixString, Thunk, ThunkState, Value};

type Result<T> = std::result::Result<T, EvalError>;

/// A command's argument for the function an expression is (`--arg`, `--argstr`).
#[derive(Debug, Clone)]
pub enum AutoArg {
    /// `--arg NAME EXPR`: a Nix expression, evaluated when used.
    Expr(String),
    /// `--argstr NAME VALUE`: a string.
    Str(String),
}

/// How a value becomes a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coerce {
    /// `"${v}"`: strings, paths (copied to the store), sets with `outPath` or `__toString`.
    Interp,
    /// `toString v`: also numbers, Booleans, null and lists; paths stay paths.
    ToString,
    /// A derivation's attributes: as `toString`, with paths copied to the store.
    Derivation,
    /// As `"${v}"`, but a path stays the path it is (`baseNameOf`, paths appended to).
    Plain,
}

/// What an evaluation may use; the caller (the CLI) assembles it.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// Calls and forcings nested deeper than this fail with Nix's stack overflow error
    /// (`max-call-depth`).
    pub max_call_depth: usize,
    /// `$HOME`, for `~/` paths.
    pub home: Option<String>,
    /// The search path for `<name>` (`NIX_PATH`, `-I`): an optional prefix and a directory.
    pub search_path: Vec<(Option<String>, PathBuf)>,
    /// `builtins.currentSystem`.
    pub system: String,
    /// `builtins.storeDir`: the store's directory.
    pub store_dir: String,
    /// What `builtins.getEnv` sees (the caller passes the environment, or none).
    pub env: HashMap<String, String>,
    /// Where relative paths in `--arg` expressions point.
    pub cwd: String,
    /// Where scratch copies go (`filterSource`).
    pub tmp_dir: PathBuf,
    /// The `git` program `fetchGit` runs.
    pub git: PathBuf,
    /// `abort-on-warn`: `builtins.warn` ends the evaluation with an error, to show where
    /// the warning came from.
    pub abort_on_warn: bool,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            max_call_depth: 10_000,
            home: None,
            search_path: Vec::new(),
            system: "x86_64-linux".into(),
            store_dir: "/nix/store".into(),
            env: HashMap::new(),
            cwd: "/".into(),
            tmp_dir: PathBuf::from("/tmp"),
            git: PathBuf::from("git"),
            abort_on_warn: false,
        }
    }
}

/// A source text errors can point into.
#[derive(Debug)]
pub struct Source {
    /// How it is named in messages: a file's path, or `«string»`.
    pub name: String,
    pub text: Rc<str>,
}

/// One evaluation's state: the global scope, the sources read, the call depth.
pub struct Evaluator {
    pub(crate) globals: Rc<Env>,
    global_names: Vec<Sym>,
    depth: usize,
    pub settings: EvalSettings,
    pub sources: Vec<Source>,
    pub(crate) store: Option<Arc<dyn EvalStore + Send + Sync>>,
    /// Paths copied to the store so far, and where they went.
    pub(crate) copied: HashMap<String, ferrix_format::StorePath>,
    /// Files imported so far, and their values.
    pub(crate) imported: HashMap<PathBuf, Value>,
    /// What fetchers gave so far, by what they were asked.
    pub(crate) fetched: HashMap<String, Value>,
    /// Regular expressions compiled so far.
    pub(crate) regexes: crate::regex::Cache,
    /// What builds the outputs an expression reads, if anything may be built.
    pub(crate) realiser: Option<Box<dyn crate::store::Realise>>,
    /// Frames of finished calls that nothing kept, emptied, for the next calls.
    pub(crate) spare_frames: Vec<Rc<Env>>,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl Evaluator {
    /// An evaluator; without a store, what needs one (derivations, paths in strings,
    /// `toFile`) fails with an error saying so.
    pub fn new(settings: EvalSettings, store: Option<Arc<dyn EvalStore + Send + Sync>>) -> Self {
        let (names, values) = crate::builtins::globals(&settings);
        let mut ev = Self {
            globals: Env::new(values, None),
            global_names: names,
            depth: 0,
            spare_frames: Vec::new(),
            settings,
            sources: Vec::new(),
            store,
            copied: HashMap::new(),
            imported: HashMap::new(),
            fetched: HashMap::new(),
            regexes: Default::default(),
            realiser: None,
        };
        crate::derivation::define_derivation(&mut ev);
        ev
    }

    /// Let evaluation build what it reads (import from derivation) through `r`.
    pub fn set_realiser(&mut self, r: Box<dyn crate::store::Realise>) {
        self.realiser = Some(r);
    }

    /// Let go of the store and the realiser (what needs them fails from here on): a caller
    /// that keeps the evaluator's values to the end of the process still closes the store
    /// properly (its temporary roots, its database).
    pub fn release_store(&mut self) {
        self.store = None;
        self.realiser = None;
    }

    /// The global frame and its names, for code the evaluator itself adds.
    pub(crate) fn global_scope(&self) -> (Rc<Env>, Vec<Sym>) {
        (self.globals.clone(), self.global_names.clone())
    }

    /// Lower `text` as source `name` in the global scope.
    pub(crate) fn lower(&mut self, name: &str, text: &str, base_dir: &str) -> Result<Expr> {
        self.lower_with(name, text, base_dir, None)
    }

    /// Lower `text`, with a frame of `names` inside the globals if given.
    fn lower_with(
        &mut self,
        name: &str,
        text: &str,
        base_dir: &str,
        frame: Option<&[Sym]>,
    ) -> Result<Expr> {
        // A carriage return, alone or before a newline, ends a line, as in Nix's lexer
        // (which also reads it so in strings and comments).
        let text = if text.contains('\r') {
            std::borrow::Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
        } else {
            std::borrow::Cow::Borrowed(text)
        };
        let text = &*text;
        let id = self.sources.len() as u32;
        self.sources.push(Source {
            name: name.to_owned(),
            text: text.into(),
        });
        let home = self.settings.home.clone();
        let mut l = Lowerer::new(id, base_dir, home.as_deref(), &self.global_names);
        if let Some(names) = frame {
            l = l.with_frame(names);
        }
        l.lower_source(text)
    }

    /// Parse `text` (named `name` in messages; relative paths in it are relative to
    /// `base_dir`) and evaluate it to weak head normal form.
    pub fn eval_source(&mut self, name: &str, text: &str, base_dir: &str) -> Result<Value> {
        let expr = self.lower(name, text, base_dir)?;
        let globals = self.globals.clone();
        self.eval(&expr, &globals)
    }

    /// Evaluate `text` where `scope`'s names are bound (before the globals, which they
    /// shadow): the REPL's variables.
    pub fn eval_in_scope(
        &mut self,
        name: &str,
        text: &str,
        base_dir: &str,
        scope: &[(String, Value)],
    ) -> Result<Value> {
        let (expr, frame) = self.lower_in_scope(name, text, base_dir, scope)?;
        self.eval(&expr, &frame)
    }

    /// `text` in `scope`, not evaluated yet (a REPL binding).
    pub fn lazy_in_scope(
        &mut self,
        name: &str,
        text: &str,
        base_dir: &str,
        scope: &[(String, Value)],
    ) -> Result<Value> {
        let (expr, frame) = self.lower_in_scope(name, text, base_dir, scope)?;
        Ok(Thunk::suspended(Rc::new(expr), frame))
    }

    fn lower_in_scope(
        &mut self,
        name: &str,
        text: &str,
        base_dir: &str,
        scope: &[(String, Value)],
    ) -> Result<(Expr, Rc<Env>)> {
        let names: Vec<Sym> = scope.iter().map(|(n, _)| Sym::intern(n)).collect();
        let expr = self.lower_with(name, text, base_dir, Some(&names))?;
        let values: crate::value::Slots = scope.iter().map(|(_, v)| v.clone()).collect();
        Ok((expr, Env::new(values, Some(self.globals.clone()))))
    }

    /// Parse `text` and print it back as Nix's `--parse` does.
    pub fn parse_source(&mut self, name: &str, text: &str, base_dir: &str) -> Result<String> {
        let e = self.lower(name, text, base_dir)?;
        Ok(crate::show::show(self, &e))
    }

    /// Parse and lower `text` without evaluating it: its syntax and scope errors.
    pub fn check_source(&mut self, name: &str, text: &str, base_dir: &str) -> Result<()> {
        self.lower(name, text, base_dir).map(|_| ())
    }

    /// The value of `v`, forced to weak head normal form.
    #[inline]
    pub fn force(&mut self, v: &Value) -> Result<Value> {
        match v {
            Value::Thunk(t) => self.force_thunk(t),
            v => Ok(v.clone()),
        }
    }

    /// [`Self::force`] without a copy of a value that is not a thunk: `v` itself, or the
    /// thunk's value, kept in `slot`.
    #[inline]
    pub(crate) fn forced<'a>(&mut self, v: &'a Value, slot: &'a mut Value) -> Result<&'a Value> {
        match v {
            Value::Thunk(t) => {
                *slot = self.force_thunk(t)?;
                Ok(slot)
            }
            v => Ok(v),
        }
    }

    /// Element `i` of `l`, forced; the list keeps the value in place of the thunk.
    pub(crate) fn force_elem(&mut self, l: &crate::value::List, i: usize) -> Result<Value> {
        if let Some((f, arg)) = l.begin_computing(i) {
            // Computed at once, without the thunk a read would make.
            let r = self.apply_ref(&f, arg.clone(), Span::default());
            l.end_computing(i, r.as_ref().ok(), f, arg);
            return r;
        }
        match l.get(i) {
            Some(Value::Thunk(t)) => {
                let v = self.force_thunk(&t)?;
                l.set_forced(i, &v);
                Ok(v)
            }
            Some(v) => Ok(v),
            None => Ok(Value::Null),
        }
    }

    pub(crate) fn force_thunk(&mut self, t: &Rc<Thunk>) -> Result<Value> {
        // The state is moved out while the thunk is forced (so its expression and frame are
        // not cloned), and put back if forcing fails; meanwhile the thunk is a blackhole.
        let (result, state) = match t.take() {
            ThunkState::Blackhole => return Err(EvalError::new(ErrorKind::InfiniteRecursion)),
            ThunkState::Done(v) => {
                let out = v.clone();
                t.set(ThunkState::Done(v));
                return Ok(out);
            }
            ThunkState::Suspended(e, env) => {
                let r = self
                    .enter()
                    .and_then(|()| {
                        let r = self.eval(&e, &env);
                        self.depth -= 1;
                        r
                    })
                    .map_err(|err| match (&err.kind, err.span) {
                        // Where the thunk's expression is, for recursion errors.
                        (ErrorKind::InfiniteRecursion, None) => match expr_span(&e) {
                            Some(s) => err.at(s),
                            None => err,
                        },
                        _ => err,
                    });
                (r, ThunkState::Suspended(e, env))
            }
            ThunkState::Apply(f, a) => {
                let r = self.apply_ref(&f, a.clone(), Span::default());
                (r, ThunkState::Apply(f, a))
            }
        };
        match result {
            Ok(v) => {
                t.set(ThunkState::Done(v.clone()));
                // The argument of an application is often a number (a list index).
                match state {
                    ThunkState::Apply(f, a) => {
                        drop(f);
                        a.discard();
                    }
                    state => drop(state),
                }
                Ok(v)
            }
            Err(e) => {
                // As in Nix, a thunk that failed may be forced again (after `tryEval`).
                t.set(state);
                Err(e)
            }
        }
    }

    /// One level deeper in calls and forcing; past `max-call-depth`, Nix's stack overflow.
    pub(crate) fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > self.settings.max_call_depth {
            self.depth -= 1;
            return Err(EvalError::new(ErrorKind::StackOverflow));
        }
        Ok(())
    }

    /// The end of what [`Self::enter`] began.
    pub(crate) fn leave(&mut self) {
        self.depth -= 1;
    }

    /// A value for `e` in `env` without evaluating it: a thunk, unless it is already a
    /// value (a literal, a function, a variable's own value).
    pub(crate) fn thunk(&self, e: &Rc<Expr>, env: &Rc<Env>) -> Value {
        match &**e {
            Expr::Var(Var::Static { depth, slot }, _) => {
                env.up(*depth).slots.borrow()[*slot as usize].clone()
            }
            _ => self.lazy(e, env),
        }
    }

    /// A function's argument: as [`Self::thunk`], but integer arithmetic on known integers
    /// is done at once (see [`known_ints`]). Only arguments: a list's elements and a set's
    /// attributes stay thunks, as printing without `--strict` shows them (`<CODE>`).
    fn argument(&self, e: &Rc<Expr>, env: &Rc<Env>) -> Value {
        match &**e {
            Expr::BinOp(op, l, r, _) => match known_ints(*op, l, r, env) {
                Some(v) => v,
                None => self.lazy(e, env),
            },
            _ => self.thunk(e, env),
        }
    }

    /// Like [`Self::thunk`], but never reading a variable: for frames still being filled.
    pub(crate) fn lazy(&self, e: &Rc<Expr>, env: &Rc<Env>) -> Value {
        match &**e {
            Expr::Null => Value::Null,
            Expr::Bool(b) => Value::Bool(*b),
            Expr::Int(i) => Value::Int(*i),
            Expr::Float(f) => Value::Float(*f),
            Expr::Path(p) => Value::Path(p.clone()),
            Expr::Str(s) => Value::String(s.clone()),
            Expr::Lambda(def) => Value::Lambda(Rc::new(Closure {
                def: def.clone(),
                env: env.clone(),
            })),
            _ => Thunk::suspended(e.clone(), env.clone()),
        }
    }

    /// [`Self::eval`] for the operands most expressions have, a variable or a constant,
    /// without a call of it.
    #[inline(always)]
    fn operand(&mut self, e: &Expr, env: &Rc<Env>) -> Result<Value> {
        match e {
            Expr::Var(Var::Static { depth, slot }, span) => self
                .lookup_static(*depth, *slot, env)
                .map_err(|e| e.at(*span)),
            Expr::Int(i) => Ok(Value::Int(*i)),
            _ => self.eval(e, env),
        }
    }

    pub(crate) fn eval(&mut self, e: &Expr, env: &Rc<Env>) -> Result<Value> {
        match e {
            Expr::Null => Ok(Value::Null),
            Expr::Bool(b) => Ok(Value::Bool(*b)),
            Expr::Int(i) => Ok(Value::Int(*i)),
            Expr::Float(f) => Ok(Value::Float(*f)),
            Expr::Str(s) => Ok(Value::String(s.clone())),
            Expr::Path(p) => Ok(Value::Path(p.clone())),
            Expr::Interp(parts, span) => {
                let mut out = NixString {
                    s: compact_str::CompactString::default(),
                    context: Context::default(),
                };
                for p in parts {
                    match p {
                        Part::Lit(l) => out.s.push_str(l),
                        Part::Expr(e) => {
                            let v = self.eval(e, env)?;
                            let s = self.coerce_to_string(&v, Coerce::Interp, *span)?;
                            out.s.push_str(&s.s);
                            out.context.extend(&s.context);
                        }
                    }
                }
                Ok(Value::String(Rc::new(out)))
            }
            Expr::PathInterp(parts, span) => {
                let mut out = String::new();
                for p in parts {
                    match p {
                        Part::Lit(l) => out.push_str(l),
                        Part::Expr(e) => {
                            let v = self.eval(e, env)?;
                            let s = self.coerce_to_string(&v, Coerce::Plain, *span)?;
                            if !s.context.is_empty() {
                                return Err(EvalError::new(ErrorKind::Other(format!(
                                    "a string that refers to a store path cannot be appended to a path: '{}'",
                                    s.s
                                )))
                                .at(*span));
                            }
                            out.push_str(&s.s);
                        }
                    }
                }
                Ok(Value::Path(crate::syntax::canonicalise(&out).into()))
            }
            Expr::Var(var, span) => self.lookup(var, env).map_err(|e| e.at(*span)),
            Expr::List(items) => Ok(Value::List(
                items.iter().map(|i| self.thunk(i, env)).collect(),
            )),
            Expr::Attrs(def) => self.attrs(def, env),
            Expr::Rec { def, body } => {
                let frame = Env::new(
                    smallvec::smallvec![Value::Null; def.statics.len()],
                    Some(env.clone()),
                );
                {
                    let values: crate::value::Slots = def
                        .statics
                        .iter()
                        .map(|(_, e, _)| self.lazy(e, &frame))
                        .collect();
                    *frame.slots.borrow_mut() = values;
                }
                match body {
                    Some(b) => self.eval(b, &frame),
                    None => {
                        let extra = self.overrides(def, &frame)?;
                        let statics: Vec<Entry> = def
                            .statics
                            .iter()
                            .zip(&def.positions)
                            .zip(frame.slots.borrow().iter())
                            .map(|(((name, _, _), pos), v)| Entry {
                                name: *name,
                                pos: *pos,
                                value: v.clone(),
                            })
                            .collect();
                        let mut base = Attrs::from_entries(statics);
                        if !extra.is_empty() {
                            base = base.update(&Attrs::from_unsorted(extra));
                        }
                        self.with_dynamics(base, def, &frame)
                    }
                }
            }
            Expr::With(ns, body, _) => {
                let frame = Env::new(smallvec::smallvec![self.thunk(ns, env)], Some(env.clone()));
                self.eval(body, &frame)
            }
            Expr::Lambda(def) => Ok(Value::Lambda(Rc::new(Closure {
                def: def.clone(),
                env: env.clone(),
            }))),
            Expr::Apply(f, a, span) => {
                let f = self.operand(f, env)?;
                let a = self.argument(a, env);
                self.apply(f, a, *span)
            }
            Expr::If(c, t, f, span) => {
                // A comparison of integers already known (`if n < 2`) without a call of
                // `eval` for it.
                let known = match &**c {
                    Expr::BinOp(op, l, r, _) => known_ints(*op, l, r, env),
                    _ => None,
                };
                let c = match known {
                    Some(v) => v,
                    None => self.eval(c, env)?,
                };
                // A branch that is a variable or a constant is read without a call.
                if self.expect_bool(&c, *span)? {
                    self.operand(t, env)
                } else {
                    self.operand(f, env)
                }
            }
            Expr::Assert(c, body, span, cond) => {
                let c = self.eval(c, env)?;
                if self.expect_bool(&c, *span)? {
                    self.eval(body, env)
                } else {
                    let text = self
                        .sources
                        .get(cond.source as usize)
                        .and_then(|s| s.text.get(cond.start as usize..cond.end as usize))
                        .unwrap_or("")
                        .to_owned();
                    Err(EvalError::new(ErrorKind::Assertion(text)).at(*span))
                }
            }
            Expr::Select(e, path, default, span) => {
                let mut v = self.operand(e, env)?;
                for key in path {
                    let name = self.key(key, env, *span)?;
                    let attrs = match &v {
                        Value::Attrs(a) => a.clone(),
                        other => {
                            if let Some(d) = default {
                                return self.eval(d, env);
                            }
                            return Err(type_error("a set", other, *span).context(
                                Some(*span),
                                format!("while selecting attribute '{name}'"),
                            ));
                        }
                    };
                    match attrs.get(name) {
                        Some(x) => v = self.force(x)?,
                        None => {
                            if let Some(d) = default {
                                return self.eval(d, env);
                            }
                            return Err(EvalError::new(ErrorKind::MissingAttr {
                                name: name.to_string(),
                            })
                            .at(*span));
                        }
                    }
                }
                Ok(v)
            }
            Expr::HasAttr(e, path) => {
                let mut v = self.eval(e, env)?;
                for (i, key) in path.iter().enumerate() {
                    let name = self.key(key, env, Span::default())?;
                    let Value::Attrs(a) = &v else {
                        return Ok(Value::Bool(false));
                    };
                    match a.get(name) {
                        // The last attribute is only looked for, never forced (it may be
                        // the very value being computed: `fix (x: { a = x ? a; })`).
                        Some(_) if i + 1 == path.len() => return Ok(Value::Bool(true)),
                        Some(x) => {
                            let x = x.clone();
                            v = self.force(&x)?;
                        }
                        None => return Ok(Value::Bool(false)),
                    }
                }
                Ok(Value::Bool(true))
            }
            Expr::BinOp(op, l, r, span) => self.binop(*op, l, r, env, *span),
            Expr::Not(e, span) => {
                let v = self.eval(e, env)?;
                Ok(Value::Bool(!self.expect_bool(&v, *span)?))
            }
            Expr::Neg(e, span) => {
                let v = self.eval(e, env)?;
                self.arith(BinOp::Sub, &Value::Int(0), &v, *span)
            }
            Expr::CurPos(span) => Ok(self.position(*span)),
        }
    }

    /// The value of the variable in slot `slot` of the frame `depth` levels up, forced.
    #[inline(always)]
    fn lookup_static(&mut self, depth: u32, slot: u32, env: &Rc<Env>) -> Result<Value> {
        let frame = env.up(depth);
        let slot = slot as usize;
        let t = match &frame.slots.borrow()[slot] {
            Value::Thunk(t) => t.clone(),
            v => return Ok(v.clone()),
        };
        let v = self.force_thunk(&t)?;
        // The slot now holds the value itself: later reads skip the thunk, and the thunk
        // is freed once nothing else holds it.
        if let Ok(mut slots) = frame.slots.try_borrow_mut() {
            slots[slot] = v.clone();
        }
        Ok(v)
    }

    fn lookup(&mut self, var: &Var, env: &Rc<Env>) -> Result<Value> {
        match var {
            Var::Static { depth, slot } => self.lookup_static(*depth, *slot, env),
            Var::Dynamic { name, withs } => {
                for d in withs.iter() {
                    let ns = env.up(*d).slots.borrow()[0].clone();
                    let ns = self.force(&ns)?;
                    let Value::Attrs(a) = ns else {
                        return Err(type_error("a set", &ns, Span::default()));
                    };
                    if let Some(v) = a.get(*name) {
                        let v = v.clone();
                        return self.force(&v);
                    }
                }
                Err(EvalError::new(ErrorKind::UndefinedVariable(
                    name.to_string(),
                )))
            }
        }
    }

    /// A `rec` set's `__overrides`: its attributes replace the set's own, in the set and
    /// in the frame the others see (so that they refer to the replacements), and the ones
    /// the set lacks are returned, to be added. An old Nix feature that nixpkgs once used.
    fn overrides(&mut self, def: &AttrsDef, frame: &Rc<Env>) -> Result<Vec<(Sym, Value)>> {
        let key = |(s, _, _): &(Sym, Rc<Expr>, Span)| *s;
        let Ok(at) = def
            .statics
            .binary_search_by_key(&Sym::intern("__overrides"), key)
        else {
            return Ok(Vec::new());
        };
        let v = frame.slots.borrow()[at].clone();
        let given = self.expect_attrs(&v, def.statics[at].2)?;
        let mut extra = Vec::new();
        for (name, v) in given.iter() {
            match def.statics.binary_search_by_key(name, key) {
                Ok(i) => frame.slots.borrow_mut()[i] = v.clone(),
                Err(_) => extra.push((*name, v.clone())),
            }
        }
        Ok(extra)
    }

    fn key(&mut self, key: &Key, env: &Rc<Env>, span: Span) -> Result<Sym> {
        match key {
            Key::Static(s) => Ok(*s),
            Key::Dynamic(e) => {
                let v = self.eval(e, env)?;
                let s = self.expect_string(&v, span)?;
                Ok(Sym::intern(&s.s))
            }
        }
    }

    /// A set literal's static attributes in `env`, in symbol order, with their places.
    fn static_entries<'a>(
        &'a self,
        def: &'a AttrsDef,
        env: &'a Rc<Env>,
    ) -> impl Iterator<Item = Entry> + 'a {
        def.statics
            .iter()
            .zip(&def.positions)
            .map(|((name, e, _), pos)| Entry {
                name: *name,
                pos: *pos,
                value: self.thunk(e, env),
            })
    }

    /// A set literal evaluated in `env`.
    fn attrs(&mut self, def: &Rc<AttrsDef>, env: &Rc<Env>) -> Result<Value> {
        let base = Attrs::from_entries(self.static_entries(def, env).collect());
        self.with_dynamics(base, def, env)
    }

    fn with_dynamics(&mut self, base: Attrs, def: &AttrsDef, env: &Rc<Env>) -> Result<Value> {
        if def.dynamics.is_empty() {
            return Ok(Value::attrs(base));
        }
        let mut extra: Vec<Entry> = Vec::new();
        let places = &def.positions[def.statics.len().min(def.positions.len())..];
        for (i, (k, e, span)) in def.dynamics.iter().enumerate() {
            let kv = self.eval(k, env)?;
            // `${null} = …` leaves the attribute out, as in Nix.
            if matches!(kv, Value::Null) {
                continue;
            }
            let name = Sym::intern(&self.expect_string(&kv, *span)?.s);
            if base.get(name).is_some() || extra.iter().any(|x| x.name == name) {
                return Err(EvalError::new(ErrorKind::DuplicateAttr(name.to_string())).at(*span));
            }
            extra.push(Entry {
                name,
                pos: places.get(i).copied().unwrap_or_default(),
                value: self.thunk(e, env),
            });
        }
        extra.sort_by_key(|x| x.name);
        Ok(Value::attrs(base.update(&Attrs::from_entries(extra))))
    }

    fn binop(&mut self, op: BinOp, l: &Expr, r: &Expr, env: &Rc<Env>, span: Span) -> Result<Value> {
        match op {
            BinOp::And | BinOp::Or | BinOp::Implies => {
                let a = self.eval(l, env)?;
                let a = self.expect_bool(&a, span)?;
                let short = match op {
                    BinOp::And => (!a).then_some(false),
                    BinOp::Or => a.then_some(true),
                    _ => (!a).then_some(true),
                };
                if let Some(v) = short {
                    return Ok(Value::Bool(v));
                }
                let b = self.eval(r, env)?;
                Ok(Value::Bool(self.expect_bool(&b, span)?))
            }
            // `e // { … }`: the literal's attributes go straight into the result; the
            // set it would make alone could never be seen.
            BinOp::Update => match r {
                Expr::Attrs(def) if def.dynamics.is_empty() => {
                    let a = self.operand(l, env)?;
                    let x = self.expect_attrs(&a, span)?;
                    if def.statics.is_empty() {
                        return Ok(Value::Attrs(x));
                    }
                    let right = self.static_entries(def, env);
                    Ok(Value::attrs(x.update_with(right, def.statics.len())))
                }
                _ => {
                    let a = self.eval(l, env)?;
                    let b = self.eval(r, env)?;
                    self.binop_values(op, &a, &b, span)
                }
            },
            _ => {
                let a = self.operand(l, env)?;
                let b = self.operand(r, env)?;
                // Integers first: most arithmetic and comparisons are on them. (Matched by
                // value, so that two integers need no drop.)
                match (a, b) {
                    (Value::Int(x), Value::Int(y)) => match op {
                        BinOp::Add => Ok(Value::Int(x.wrapping_add(y))),
                        BinOp::Sub => Ok(Value::Int(x.wrapping_sub(y))),
                        BinOp::Mul => Ok(Value::Int(x.wrapping_mul(y))),
                        BinOp::Less => Ok(Value::Bool(x < y)),
                        BinOp::LessEq => Ok(Value::Bool(x <= y)),
                        BinOp::More => Ok(Value::Bool(x > y)),
                        BinOp::MoreEq => Ok(Value::Bool(x >= y)),
                        BinOp::Eq => Ok(Value::Bool(x == y)),
                        BinOp::NotEq => Ok(Value::Bool(x != y)),
                        _ => self.binop_values(op, &Value::Int(x), &Value::Int(y), span),
                    },
                    (a, b) => self.binop_values(op, &a, &b, span),
                }
            }
        }
    }

    /// Force `v` and everything in it (`--strict`, `deepSeq`).
    pub fn deep_force(&mut self, v: &Value) -> Result<Value> {
        let v = self.force(v)?;
        let mut seen = std::collections::HashSet::new();
        self.deep_force_inner(&v, &mut seen)?;
        Ok(v)
    }

    fn deep_force_inner(
        &mut self,
        v: &Value,
        seen: &mut std::collections::HashSet<usize>,
    ) -> Result<()> {
        match v {
            Value::List(items) => {
                if !seen.insert(items.as_ptr() as usize) {
                    return Ok(());
                }
                for i in 0..items.len() {
                    let i = self.force_elem(items, i)?;
                    self.deep_force_inner(&i, seen)?;
                }
            }
            Value::Attrs(a) => {
                if !seen.insert(Rc::as_ptr(a) as usize) {
                    return Ok(());
                }
                for (name, x) in a.iter() {
                    let x = self.force(x).map_err(|e| {
                        e.context(None, format!("while evaluating the attribute '{name}'"))
                    })?;
                    self.deep_force_inner(&x, seen)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `{ file; line; column; }` of `span`. An expression given on the command line is
    /// named by its own text, as Nix 2.8 names it in positions.
    pub(crate) fn position(&self, span: Span) -> Value {
        let (file, line, column) = self.place(span);
        Value::attrs(Attrs::from_unsorted(vec![
            (Sym::intern("file"), Value::string(file)),
            (Sym::intern("line"), Value::Int(line as i64)),
            (Sym::intern("column"), Value::Int(column as i64)),
        ]))
    }

    /// Where `span` starts as Nix 2.8 gives it in values (positions, XML): an expression
    /// from the command line is named by its own text.
    pub(crate) fn place(&self, span: Span) -> (String, usize, usize) {
        let (mut file, line, column) = self.line_col(span);
        if let Some(src) = self.sources.get(span.source as usize) {
            if src.name == "«string»" {
                file = src.text.to_string();
            }
        }
        (file, line, column)
    }

    /// The source name, line and column (from 1) where `span` starts.
    pub fn line_col(&self, span: Span) -> (String, usize, usize) {
        let Some(src) = self.sources.get(span.source as usize) else {
            return ("«unknown»".into(), 0, 0);
        };
        let before = &src.text[..(span.start as usize).min(src.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (src.name.clone(), line, column)
    }
}

/// `l op r` computed at once, when both sides are integers already known and the operation
/// cannot fail (integers wrap, and comparisons of integers always succeed): the thunk it
/// would otherwise be could only ever give this value, so making and later forcing it is
/// wasted. `f (n - 1)`, `[ (i + 1) ]` and `if n < 2` are everywhere in Nix code.
fn known_ints(op: BinOp, l: &Expr, r: &Expr, env: &Rc<Env>) -> Option<Value> {
    // Inlined into both uses: it runs for most calls' arguments and conditions.
    #[inline(always)]
    fn int(e: &Expr, env: &Rc<Env>) -> Option<i64> {
        match e {
            Expr::Int(i) => Some(*i),
            Expr::Var(Var::Static { depth, slot }, _) => {
                match &env.up(*depth).slots.borrow()[*slot as usize] {
                    Value::Int(i) => Some(*i),
                    Value::Thunk(t) => match t.value() {
                        Some(Value::Int(i)) => Some(i),
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        }
    }
    let wants_ints = matches!(
        op,
        BinOp::Add
            | BinOp::Sub
            | BinOp::Mul
            | BinOp::Less
            | BinOp::LessEq
            | BinOp::More
            | BinOp::MoreEq
            | BinOp::Eq
            | BinOp::NotEq
    );
    if !wants_ints {
        return None;
    }
    let (x, y) = (int(l, env)?, int(r, env)?);
    Some(match op {
        BinOp::Add => Value::Int(x.wrapping_add(y)),
        BinOp::Sub => Value::Int(x.wrapping_sub(y)),
        BinOp::Mul => Value::Int(x.wrapping_mul(y)),
        BinOp::Less => Value::Bool(x < y),
        BinOp::LessEq => Value::Bool(x <= y),
        BinOp::More => Value::Bool(x > y),
        BinOp::MoreEq => Value::Bool(x >= y),
        BinOp::Eq => Value::Bool(x == y),
        _ => Value::Bool(x != y),
    })
}

pub(crate) fn as_float(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        _ => f64::NAN,
    }
}

pub(crate) fn type_error(expected: &'static str, got: &Value, span: Span) -> EvalError {
    let e = EvalError::new(ErrorKind::Type {
        expected,
        got: got.type_name(),
        value: crate::print::brief(got),
    });
    // A with-scope's namespace has no place of its own: the error takes the variable's.
    if span == Span::default() {
        e
    } else {
        e.at(span)
    }
}

fn expr_span(e: &Expr) -> Option<Span> {
    match e {
        Expr::Var(_, s)
        | Expr::Interp(_, s)
        | Expr::PathInterp(_, s)
        | Expr::With(_, _, s)
        | Expr::Apply(_, _, s)
        | Expr::If(_, _, _, s)
        | Expr::Assert(_, _, s, _)
        | Expr::Select(_, _, _, s)
        | Expr::BinOp(_, _, _, s)
        | Expr::Not(_, s)
        | Expr::Neg(_, s)
        | Expr::CurPos(s) => Some(*s),
        Expr::Lambda(d) => Some(d.span),
        _ => None,
    }
}
