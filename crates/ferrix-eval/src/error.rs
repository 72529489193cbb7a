//! Evaluation errors: what went wrong, where (a span of a source), and the trace of what was
//! being evaluated around it, innermost first.

use std::fmt;

use crate::syntax::Span;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ErrorKind {
    #[error("syntax error: {0}")]
    Parse(String),
    #[error("undefined variable '{0}'")]
    UndefinedVariable(String),
    #[error("attribute '{0}' already defined")]
    DuplicateAttr(String),
    // Names as current Nix writes them: quoted unless they are identifiers.
    #[error("attribute '{}' missing", crate::print::attr_name(.name))]
    MissingAttr { name: String },
    #[error("{0}")]
    Throw(String),
    #[error("evaluation aborted with the following error message: '{0}'")]
    Abort(String),
    /// The condition's source text.
    #[error("assertion '{0}' failed")]
    Assertion(String),
    /// As current Nix words it, with the value shown briefly (see [`crate::print::brief`]).
    #[error("expected {expected} but found {got}: {value}")]
    Type {
        expected: &'static str,
        got: &'static str,
        value: String,
    },
    #[error("infinite recursion encountered")]
    InfiniteRecursion,
    #[error("aborting to reveal stack trace of warning, as abort-on-warn is set")]
    AbortOnWarn,
    #[error("stack overflow (possible infinite recursion)")]
    StackOverflow,
    #[error("division by zero")]
    DivisionByZero,
    #[error("function '{function}' called without required argument '{}'", crate::print::attr_name(.arg))]
    MissingArgument { function: String, arg: String },
    #[error("function '{function}' called with unexpected argument '{}'", crate::print::attr_name(.arg))]
    UnexpectedArgument { function: String, arg: String },
    #[error("cannot compare {0} with {1}")]
    Incomparable(String, String),
    #[error("cannot coerce {0} to a string")]
    NotCoercible(String),
    #[error("'{path}' needs output '{output}' of '{drv}' built (import from derivation), and nothing is built in read-only mode; pass --read-write-mode, or build it first")]
    ReadOnly {
        path: String,
        output: String,
        drv: String,
    },
    #[error("'{0}' is only computed in read-only mode, not written to the store, so it cannot be read; pass --read-write-mode")]
    ReadOnlyPath(String),
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Store(std::sync::Arc<ferrix_store::StoreError>),
}

/// An error of evaluation, with where it happened and what led there. Boxed: every
/// evaluation step returns `Result<Value, EvalError>`, which stays two words this way
/// (returned in registers) instead of a hundred bytes copied through memory.
#[derive(Debug, Clone)]
pub struct EvalError(Box<ErrorInfo>);

/// What an [`EvalError`] holds.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    pub kind: ErrorKind,
    pub span: Option<Span>,
    /// What was being evaluated, innermost first: where, and what.
    pub trace: Vec<(Option<Span>, String)>,
}

impl std::ops::Deref for EvalError {
    type Target = ErrorInfo;
    fn deref(&self) -> &ErrorInfo {
        &self.0
    }
}

impl std::ops::DerefMut for EvalError {
    fn deref_mut(&mut self) -> &mut ErrorInfo {
        &mut self.0
    }
}

impl EvalError {
    pub fn new(kind: ErrorKind) -> Self {
        Self(Box::new(ErrorInfo {
            kind,
            span: None,
            trace: Vec::new(),
        }))
    }

    pub fn store(e: ferrix_store::StoreError) -> Self {
        Self::new(ErrorKind::Store(std::sync::Arc::new(e)))
    }

    /// Place the error at `span`, unless it already has a place (`Span::default()` is
    /// no place: what the evaluator's callers pass when there is no source to point at).
    pub fn at(mut self, span: Span) -> Self {
        if span != Span::default() {
            self.0.span.get_or_insert(span);
        }
        self
    }

    /// Add what was being evaluated around the error.
    pub fn context(mut self, span: Option<Span>, what: impl Into<String>) -> Self {
        self.0.trace.push((span, what.into()));
        self
    }

    /// What went wrong, without where.
    pub fn into_kind(self) -> ErrorKind {
        self.0.kind
    }

    /// Whether `builtins.tryEval` catches it (`throw` and failed assertions, as in Nix).
    pub fn catchable(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Throw(_) | ErrorKind::Assertion(_))
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for EvalError {}
