//! Values: small and cheap to clone (shared parts behind `Rc`), thunks forced in place, and
//! the frames variables live in.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::symbol::Sym;
use crate::syntax::{Expr, LambdaDef, Pos};

/// A value; `Thunk` until forced.
#[derive(Clone, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(Rc<NixString>),
    Path(Rc<String>),
    List(List),
    Attrs(Rc<Attrs>),
    Lambda(Rc<Closure>),
    PrimOp(Rc<PrimOp>),
    /// A builtin given some of its arguments.
    PrimOpApp(Rc<Partial>),
    Thunk(Rc<Thunk>),
}

impl Value {
    /// Drop it, without the drop glue (a call) when it owns nothing, as numbers do: for
    /// the places that overwrite a value for every element or call.
    #[inline]
    pub(crate) fn discard(self) {
        match self {
            Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {
                std::mem::forget(self)
            }
            v => drop(v),
        }
    }
}

/// A list's elements, shared (a thin pointer, so that a value stays two words). An element
/// that is a thunk is replaced by its value once forced through the list
/// ([`crate::eval::Evaluator::force_elem`]), as Nix updates its values in place, so that
/// the thunk can be freed; elements are cells for that, and are read as owned values.
#[derive(Clone, Default)]
pub struct List(Rc<Elems>);

#[derive(Default)]
struct Elems {
    cells: Vec<Cell<Value>>,
    /// For a list whose elements are each a function applied to something (`genList`,
    /// `map`): the elements not made yet.
    gen: Option<Box<Gen>>,
}

/// Elements made when they are first read (as a thunk: a reader may never force it) or
/// forced (computed at once, with no thunk at all), not when the list is. A million
/// elements forced one after another then never take a million thunks at once, nor the
/// fresh memory for them.
struct Gen {
    /// The function; `Null` once every element is made.
    f: Cell<Value>,
    /// Element i's argument: element i of this list (`map`), or i itself (`genList`).
    src: Cell<Option<List>>,
    /// Bit i: element i is not made yet (its cell holds `Null`).
    pending: Box<[Cell<u64>]>,
    /// Bit i: element i is being computed, and nothing has read it meanwhile (its cell
    /// holds `Null`).
    busy: Box<[Cell<u64>]>,
    /// How many elements are still pending.
    left: Cell<usize>,
}

fn bit(set: &[Cell<u64>], i: usize) -> bool {
    set[i / 64].get() & (1 << (i % 64)) != 0
}

fn flip(set: &[Cell<u64>], i: usize) {
    set[i / 64].set(set[i / 64].get() ^ (1 << (i % 64)));
}

impl Gen {
    /// Element i's function and argument; the last pending element lets go of the list's
    /// function and source.
    fn take(&self, i: usize) -> (Value, Value) {
        flip(&self.pending, i);
        let f = peek(&self.f);
        let src = self.src.take();
        let arg = match &src {
            Some(l) => l.settled(i),
            None => Value::Int(i as i64),
        };
        self.left.set(self.left.get() - 1);
        if self.left.get() == 0 {
            self.f.set(Value::Null);
        } else {
            self.src.set(src);
        }
        (f, arg)
    }
}

/// A copy of what a cell holds.
fn peek(c: &Cell<Value>) -> Value {
    let v = c.take();
    let out = v.clone();
    put(c, v);
    out
}

/// Store `v` in a list's cell. What it replaces is mostly a `Null` (what `take` leaves, or
/// an element not made yet): [`Value::discard`] spares it the drop glue.
fn put(c: &Cell<Value>, v: Value) {
    c.replace(v).discard();
}

/// What a cell keeps of a forced element: its value, but a list behind a thunk, for Nix's
/// «repeated» rule (a list is the same when it is the same element).
fn kept(v: &Value) -> Value {
    match v {
        Value::List(_) => Value::Thunk(Thunk::new(ThunkState::Done(v.clone()))),
        v => v.clone(),
    }
}

impl List {
    /// `n` elements, element i being `f` applied to element i of `src` or, without one,
    /// to i; each made when first needed.
    pub(crate) fn generated(f: Value, src: Option<List>, n: usize) -> List {
        if n == 0 {
            return List::default();
        }
        let words = n.div_ceil(64);
        let pending: Box<[Cell<u64>]> = (0..words)
            .map(|w| {
                let bits = (n - w * 64).min(64);
                Cell::new(if bits == 64 {
                    u64::MAX
                } else {
                    (1 << bits) - 1
                })
            })
            .collect();
        List(Rc::new(Elems {
            cells: (0..n).map(|_| Cell::new(Value::Null)).collect(),
            gen: Some(Box::new(Gen {
                f: Cell::new(f),
                src: Cell::new(src),
                pending,
                busy: (0..words).map(|_| Cell::new(0)).collect(),
                left: Cell::new(n),
            })),
        }))
    }

    pub fn ptr_eq(a: &List, b: &List) -> bool {
        Rc::ptr_eq(&a.0, &b.0)
    }

    /// Where the elements are: the identity of the list.
    pub fn as_ptr(&self) -> *const () {
        Rc::as_ptr(&self.0) as *const ()
    }

    pub fn len(&self) -> usize {
        self.0.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.cells.is_empty()
    }

    /// The generator of a list with element i not made yet or being computed.
    fn unmade(&self, i: usize) -> Option<&Gen> {
        self.0
            .gen
            .as_deref()
            .filter(|g| bit(&g.pending, i) || bit(&g.busy, i))
    }

    /// [`Self::get`] for a caller that passes the element on and settles it with
    /// [`Self::settle_into`] right after: an element made now takes the allocation of the
    /// thunk the last one left in `spare`.
    pub(crate) fn lend(&self, i: usize, spare: &mut Option<Rc<Thunk>>) -> Value {
        if let Some(g) = self.0.gen.as_deref() {
            if i < self.len() && bit(&g.pending, i) {
                return self.make(g, i, spare.take());
            }
        }
        self.get(i).unwrap_or_default()
    }

    /// [`Self::settle`], keeping in `spare` the thunk the element leaves when nothing else
    /// holds it.
    pub(crate) fn settle_into(&self, i: usize, spare: &mut Option<Rc<Thunk>>) {
        let Some(c) = self.0.cells.get(i) else { return };
        match c.take() {
            Value::Thunk(t) if Rc::strong_count(&t) == 1 && Rc::weak_count(&t) == 0 => {
                match t.take() {
                    ThunkState::Done(v) if !matches!(v, Value::List(_)) => {
                        put(c, v);
                        *spare = Some(t);
                    }
                    state => {
                        t.set(state);
                        put(c, Value::Thunk(t));
                    }
                }
            }
            v => {
                put(c, v);
                self.settle(i);
            }
        }
    }

    /// Element i, made as a thunk if it was not yet. One read while it is being computed
    /// gets a thunk of its own, which gets the value when the computation ends (forcing
    /// it before is infinite recursion).
    fn read(&self, i: usize) -> Value {
        let c = &self.0.cells[i];
        if let Some(g) = self.unmade(i) {
            if bit(&g.pending, i) {
                return self.make(g, i, None);
            }
            flip(&g.busy, i);
            let t = Thunk::new(ThunkState::Blackhole);
            put(c, Value::Thunk(t.clone()));
            return Value::Thunk(t);
        }
        peek(c)
    }

    /// Pending element i made now, as a thunk (in `spare`'s allocation, if there is one).
    fn make(&self, g: &Gen, i: usize, spare: Option<Rc<Thunk>>) -> Value {
        let (f, arg) = g.take(i);
        let t = match spare {
            Some(t) => {
                t.set(ThunkState::Apply(f, arg));
                t
            }
            None => Thunk::new(ThunkState::Apply(f, arg)),
        };
        put(&self.0.cells[i], Value::Thunk(t.clone()));
        Value::Thunk(t)
    }

    /// Element i's function and argument when it is not made yet: it is being computed
    /// until [`Self::end_computing`].
    pub(crate) fn begin_computing(&self, i: usize) -> Option<(Value, Value)> {
        let g = self.0.gen.as_deref()?;
        if !bit(&g.pending, i) {
            return None;
        }
        let fa = g.take(i);
        flip(&g.busy, i);
        Some(fa)
    }

    /// The end of computing element i from `f` and `arg`: its value, or, when it failed,
    /// a thunk that computes it again when forced (as a failed thunk may be).
    pub(crate) fn end_computing(&self, i: usize, result: Option<&Value>, f: Value, arg: Value) {
        let c = &self.0.cells[i];
        let Some(g) = self.0.gen.as_deref() else {
            return;
        };
        if bit(&g.busy, i) {
            flip(&g.busy, i);
            put(
                c,
                match result {
                    Some(v) => kept(v),
                    None => Thunk::apply(f, arg),
                },
            );
            return;
        }
        // Read meanwhile: the reader's thunk gets the outcome.
        let Value::Thunk(t) = peek(c) else { return };
        match result {
            Some(v) => {
                t.set(ThunkState::Done(v.clone()));
                if !matches!(v, Value::List(_)) {
                    put(c, v.clone());
                }
            }
            None => t.set(ThunkState::Apply(f, arg)),
        }
    }

    pub fn get(&self, i: usize) -> Option<Value> {
        (i < self.len()).then(|| self.read(i))
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Value> + ExactSizeIterator + '_ {
        (0..self.len()).map(|i| self.read(i))
    }

    pub fn to_vec(&self) -> Vec<Value> {
        self.iter().collect()
    }

    /// The elements from `from` on, as a new list.
    pub fn tail_from(&self, from: usize) -> List {
        (from.min(self.len())..self.len())
            .map(|i| self.read(i))
            .collect()
    }

    /// Element `i`; one that is a thunk already forced is replaced by its value first.
    pub(crate) fn settled(&self, i: usize) -> Value {
        let Some(c) = self.0.cells.get(i) else {
            return Value::Null;
        };
        if self.unmade(i).is_some() {
            return self.read(i);
        }
        // The element is moved out and back (no copy of it is counted and dropped).
        match c.take() {
            Value::Thunk(t) => match t.value() {
                // A list stays behind its thunk (see `kept`).
                Some(v @ Value::List(_)) => {
                    put(c, Value::Thunk(t));
                    v
                }
                Some(v) => {
                    put(c, v.clone());
                    v
                }
                None => {
                    let out = Value::Thunk(t.clone());
                    put(c, Value::Thunk(t));
                    out
                }
            },
            v => {
                let out = v.clone();
                put(c, v);
                out
            }
        }
    }

    /// [`Self::settled`] for a caller that has the element already: nothing is copied.
    pub(crate) fn settle(&self, i: usize) {
        let Some(c) = self.0.cells.get(i) else { return };
        if self.unmade(i).is_some() {
            return;
        }
        let v = match c.take() {
            // The list holds the only reference: the value is moved out of the thunk.
            Value::Thunk(t) if Rc::strong_count(&t) == 1 => match t.take() {
                ThunkState::Done(v) if !matches!(v, Value::List(_)) => v,
                state => {
                    t.set(state);
                    Value::Thunk(t)
                }
            },
            Value::Thunk(t) => match t.value() {
                Some(v) if !matches!(v, Value::List(_)) => v,
                _ => Value::Thunk(t),
            },
            v => v,
        };
        put(c, v);
    }

    pub(crate) fn set_forced(&self, i: usize, v: &Value) {
        if let Some(c) = self.0.cells.get(i) {
            if !matches!(v, Value::List(_)) {
                let old = c.replace(v.clone());
                debug_assert!(matches!(old, Value::Thunk(_)));
            }
        }
    }
}

impl FromIterator<Value> for List {
    fn from_iter<I: IntoIterator<Item = Value>>(iter: I) -> Self {
        List(Rc::new(Elems {
            cells: iter.into_iter().map(Cell::new).collect(),
            gen: None,
        }))
    }
}

impl From<Vec<Value>> for List {
    fn from(v: Vec<Value>) -> Self {
        v.into_iter().collect()
    }
}

impl From<&[Value]> for List {
    fn from(v: &[Value]) -> Self {
        v.iter().cloned().collect()
    }
}

impl std::fmt::Debug for List {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} values]", self.len())
    }
}

/// A builtin and the arguments it has so far.
#[derive(Debug)]
pub struct Partial {
    pub op: Rc<PrimOp>,
    pub args: Vec<Value>,
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.type_name())
    }
}

impl Value {
    /// What Nix's `typeOf` says, for values in normal form.
    pub fn type_of(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Path(_) => "path",
            Value::List(_) => "list",
            Value::Attrs(_) => "set",
            Value::Lambda(_) | Value::PrimOp(_) | Value::PrimOpApp(_) => "lambda",
            Value::Thunk(_) => "thunk",
        }
    }

    /// How messages name the type: "an integer", "a set"…
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a Boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::String(_) => "a string",
            Value::Path(_) => "a path",
            Value::List(_) => "a list",
            Value::Attrs(_) => "a set",
            Value::Lambda(_) => "a function",
            Value::PrimOp(_) => "a built-in function",
            Value::PrimOpApp(_) => "a partially applied built-in function",
            Value::Thunk(_) => "a thunk",
        }
    }

    pub fn string(s: impl Into<compact_str::CompactString>) -> Value {
        Value::String(Rc::new(NixString {
            s: s.into(),
            context: Context::default(),
        }))
    }

    pub fn attrs(a: Attrs) -> Value {
        Value::Attrs(Rc::new(a))
    }
}

/// What a string refers to in the store: what `derivation` turns into its inputs. Most
/// strings refer to nothing: then it is one null pointer, with nothing allocated. The
/// elements are kept sorted and without duplicates, in one small block: nearly every
/// context has a single element, and an ordered set's node (the former representation)
/// took half a kilobyte for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(clippy::box_collection)]
pub struct Context(Option<Box<smallvec::SmallVec<[ContextElem; 1]>>>);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ContextElem {
    /// A store path, as is.
    Plain(Rc<str>),
    /// A derivation and all its outputs (`drvPath`).
    AllOutputs(Rc<str>),
    /// One output of a derivation.
    Output { drv: Rc<str>, output: Rc<str> },
}

impl Context {
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|s| s.is_empty())
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.len())
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl Iterator<Item = &ContextElem> {
        self.0.iter().flat_map(|s| s.iter())
    }

    pub fn insert(&mut self, e: ContextElem) {
        let elems = self.0.get_or_insert_with(Default::default);
        if let Err(at) = elems.binary_search(&e) {
            elems.insert(at, e);
        }
    }

    pub fn extend(&mut self, other: &Context) {
        if self.is_empty() {
            // The common case: a copy, without a search per element.
            self.0.clone_from(&other.0);
            return;
        }
        for e in other.iter() {
            self.insert(e.clone());
        }
    }
}

impl FromIterator<ContextElem> for Context {
    fn from_iter<I: IntoIterator<Item = ContextElem>>(iter: I) -> Self {
        let mut c = Context::default();
        for e in iter {
            c.insert(e);
        }
        c
    }
}

impl<const N: usize> From<[ContextElem; N]> for Context {
    fn from(elems: [ContextElem; N]) -> Self {
        elems.into_iter().collect()
    }
}

/// A string and its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixString {
    /// Inline up to 24 bytes (most names, numbers and short words), so that such a string
    /// is one allocation (its `Rc`), not two.
    pub s: compact_str::CompactString,
    pub context: Context,
}

/// An attribute set: its values by name, sorted by symbol, each with where it was defined
/// (kept through `//`, as Nix keeps it).
#[derive(Debug, Clone, Default)]
pub struct Attrs {
    entries: Box<[Entry]>,
}

/// One attribute. The position fits beside the name where the value's alignment would
/// leave a hole, so keeping it costs nothing.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Sym,
    pub pos: Pos,
    pub value: Value,
}

impl Attrs {
    /// From entries in any order; a later duplicate replaces an earlier one.
    pub fn from_unsorted(mut entries: Vec<(Sym, Value)>) -> Self {
        // Stable: among equal names the last stays last, and wins below.
        entries.sort_by_key(|(s, _)| *s);
        let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
        for (name, value) in entries {
            match out.last_mut() {
                Some(last) if last.name == name => last.value = value,
                _ => out.push(Entry {
                    name,
                    pos: Pos::NONE,
                    value,
                }),
            }
        }
        Self {
            entries: out.into_boxed_slice(),
        }
    }

    /// From entries already sorted by symbol, without duplicates.
    pub fn from_sorted(entries: Vec<(Sym, Value)>) -> Self {
        Self::from_entries(
            entries
                .into_iter()
                .map(|(name, value)| Entry {
                    name,
                    pos: Pos::NONE,
                    value,
                })
                .collect(),
        )
    }

    /// From entries with their positions, already sorted by symbol, without duplicates.
    pub fn from_entries(entries: Vec<Entry>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].name < w[1].name));
        Self {
            entries: entries.into_boxed_slice(),
        }
    }

    /// Where attribute `name` was defined, if known.
    pub fn position(&self, name: Sym) -> Option<crate::syntax::Span> {
        self.entry(name)?.pos.span()
    }

    fn entry(&self, name: Sym) -> Option<&Entry> {
        self.entries
            .binary_search_by_key(&name, |e| e.name)
            .ok()
            .map(|i| &self.entries[i])
    }

    pub fn get(&self, name: Sym) -> Option<&Value> {
        self.entry(name).map(|e| &e.value)
    }

    /// An attribute's value and where it was defined.
    pub fn get_placed(&self, name: Sym) -> Option<(&Value, Pos)> {
        self.entry(name).map(|e| (&e.value, e.pos))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in symbol order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Sym, &Value)> + ExactSizeIterator {
        self.entries.iter().map(|e| (&e.name, &e.value))
    }

    /// Entries in name order, as Nix lists and prints them.
    pub fn sorted_by_name(&self) -> Vec<(compact_str::CompactString, &Value)> {
        let mut v: Vec<(compact_str::CompactString, &Value)> = self
            .entries
            .iter()
            .map(|e| (e.name.name(), &e.value))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The attributes whose names `keep` keeps, with their places.
    pub fn only(&self, keep: impl Fn(Sym) -> bool) -> Attrs {
        Attrs {
            entries: self
                .entries
                .iter()
                .filter(|e| keep(e.name))
                .cloned()
                .collect(),
        }
    }

    /// The attributes of `self` whose names `names` has, with their places
    /// (`intersectAttrs names self`). The smaller set is walked and each name looked up in
    /// the other: `callPackage` intersects a function's few arguments with a whole package
    /// set, and walking the package set every time would make evaluation quadratic.
    pub fn only_named_in(&self, names: &Attrs) -> Attrs {
        if names.len() < self.len() {
            Attrs {
                entries: names
                    .entries
                    .iter()
                    .filter_map(|n| self.entry(n.name).cloned())
                    .collect(),
            }
        } else {
            self.only(|k| names.entry(k).is_some())
        }
    }

    /// `self // other`: a merge of two sorted runs.
    pub fn update(&self, other: &Attrs) -> Attrs {
        self.update_with(other.entries.iter().cloned(), other.len())
    }

    /// `self // {…}` with the right side's `n` entries given in name order, without
    /// duplicates (a set literal's, never made into a set of its own).
    pub fn update_with(&self, right: impl Iterator<Item = Entry>, n: usize) -> Attrs {
        let a = &self.entries;
        let mut out = Vec::with_capacity(a.len() + n);
        let mut i = 0;
        for e in right {
            while i < a.len() && a[i].name < e.name {
                out.push(a[i].clone());
                i += 1;
            }
            if i < a.len() && a[i].name == e.name {
                i += 1;
            }
            out.push(e);
        }
        out.extend_from_slice(&a[i..]);
        Attrs {
            entries: out.into_boxed_slice(),
        }
    }
}

/// A frame of variables: a function's argument(s), a `let`'s or `rec` set's bindings, a
/// `with`'s set (one slot), or the globals.
#[derive(Debug)]
pub struct Env {
    pub slots: RefCell<Slots>,
    pub parent: Option<Rc<Env>>,
}

/// A frame's values: most frames (a function's argument, a `with`) hold one or two, kept
/// in the frame itself rather than in an allocation of their own.
pub type Slots = smallvec::SmallVec<[Value; 2]>;

impl Env {
    pub fn new(slots: impl Into<Slots>, parent: Option<Rc<Env>>) -> Rc<Env> {
        Rc::new(Env {
            slots: RefCell::new(slots.into()),
            parent,
        })
    }

    /// The frame `depth` levels up.
    pub fn up(self: &Rc<Env>, depth: u32) -> &Rc<Env> {
        let mut e = self;
        for _ in 0..depth {
            e = e.parent.as_ref().expect("scopes resolved at lowering");
        }
        e
    }
}

/// A function and the frame it was made in.
#[derive(Debug)]
pub struct Closure {
    pub def: Rc<LambdaDef>,
    pub env: Rc<Env>,
}

/// A value not computed yet, being computed, or computed. A `Cell` rather than a
/// `RefCell`: the state is only ever moved out and back, so no borrow flag is needed, and
/// a thunk stays at 32 bytes.
pub struct Thunk(Cell<ThunkState>);

#[derive(Debug)]
pub enum ThunkState {
    Suspended(Rc<Expr>, Rc<Env>),
    /// The result of applying a function, when asked for.
    Apply(Value, Value),
    /// Being forced: forcing it again is infinite recursion.
    Blackhole,
    Done(Value),
}

impl Thunk {
    pub fn new(state: ThunkState) -> Rc<Thunk> {
        Rc::new(Thunk(Cell::new(state)))
    }

    pub fn suspended(expr: Rc<Expr>, env: Rc<Env>) -> Value {
        Value::Thunk(Thunk::new(ThunkState::Suspended(expr, env)))
    }

    pub fn apply(f: Value, arg: Value) -> Value {
        Value::Thunk(Thunk::new(ThunkState::Apply(f, arg)))
    }

    /// Its state, leaving it a blackhole until [`Self::set`] puts one back.
    pub fn take(&self) -> ThunkState {
        self.0.replace(ThunkState::Blackhole)
    }

    /// Put a state back. What it replaces is almost always the blackhole [`Self::take`]
    /// left, which owns nothing: only anything else goes through the drop glue, a call
    /// that the forcing of every thunk would otherwise make.
    pub fn set(&self, state: ThunkState) {
        let old = self.0.replace(state);
        match old {
            ThunkState::Blackhole => std::mem::forget(old),
            old => drop(old),
        }
    }

    /// Its value, if it has been computed.
    pub fn value(&self) -> Option<Value> {
        let state = self.take();
        let v = match &state {
            ThunkState::Done(v) => Some(v.clone()),
            _ => None,
        };
        self.set(state);
        v
    }
}

impl std::fmt::Debug for Thunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.value() {
            Some(v) => write!(f, "Thunk({v:?})"),
            None => f.write_str("Thunk(..)"),
        }
    }
}

pub type PrimOpFn = fn(
    &mut crate::eval::Evaluator,
    &[Value],
    crate::syntax::Span,
) -> Result<Value, crate::EvalError>;

/// A built-in function of `arity` arguments.
pub struct PrimOp {
    pub name: &'static str,
    pub arity: usize,
    pub run: PrimOpFn,
}

impl std::fmt::Debug for PrimOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "builtins.{}", self.name)
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn values_are_small() {
        assert!(
            std::mem::size_of::<super::Value>() <= 16,
            "{}",
            std::mem::size_of::<super::Value>()
        );
        assert!(std::mem::size_of::<super::Thunk>() <= 32);
        // A string with its context: a string and one pointer.
        assert!(std::mem::size_of::<super::NixString>() <= 32);
        // A set is its entries (two words); each entry's place fills the hole beside its
        // name, so an entry is no larger than a name and a value.
        assert!(std::mem::size_of::<super::Attrs>() <= 16);
        assert!(std::mem::size_of::<super::Entry>() <= 24);
        // Every step of evaluation returns this: it must fit in two registers.
        assert!(
            std::mem::size_of::<Result<super::Value, crate::EvalError>>() <= 16,
            "{}",
            std::mem::size_of::<Result<super::Value, crate::EvalError>>()
        );
    }
}

#[cfg(test)]
mod discard {
    use super::*;

    #[test]
    fn a_discarded_value_lets_go_of_what_it_holds() {
        let s = Rc::new(NixString {
            s: "x".into(),
            context: Context::default(),
        });
        let v = Value::String(s.clone());
        assert_eq!(Rc::strong_count(&s), 2);
        v.discard();
        assert_eq!(Rc::strong_count(&s), 1);
        // And a list's cell, overwritten, lets go of what it held.
        let c = Cell::new(Value::String(s.clone()));
        put(&c, Value::Int(1));
        assert_eq!(Rc::strong_count(&s), 1);
        assert!(matches!(c.take(), Value::Int(1)));
    }
}

#[cfg(test)]
mod intersect {
    use super::*;
    use crate::symbol::Sym;

    fn set(names: &[(&str, i64)]) -> Attrs {
        Attrs::from_unsorted(
            names
                .iter()
                .map(|(n, v)| (Sym::intern(n), Value::Int(*v)))
                .collect(),
        )
    }

    fn ints(a: &Attrs) -> Vec<(Sym, i64)> {
        a.iter()
            .map(|(k, v)| match v {
                Value::Int(i) => (*k, *i),
                _ => panic!("not an integer"),
            })
            .collect()
    }

    #[test]
    fn either_side_may_be_the_smaller_one() {
        let many = set(&[("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]);
        let few = set(&[("e", 50), ("b", 20), ("z", 0)]);
        // `intersectAttrs few many` walks `few`; `intersectAttrs many few` walks `few` too.
        let mut want = vec![(Sym::intern("b"), 2), (Sym::intern("e"), 5)];
        want.sort();
        assert_eq!(ints(&many.only_named_in(&few)), want);
        let mut want = vec![(Sym::intern("b"), 20), (Sym::intern("e"), 50)];
        want.sort();
        assert_eq!(ints(&few.only_named_in(&many)), want);
        assert!(many.only_named_in(&Attrs::default()).is_empty());
        assert!(Attrs::default().only_named_in(&many).is_empty());
    }
}
