//! The Nix language: parsing (rnix), lowering with resolved scopes, lazy evaluation,
//! built-in functions, derivations written through [`EvalStore`], and printing.

mod apply;
mod builtins;
mod commands;
mod daemon_store;
mod derivation;
mod error;
mod eval;
mod fetch;
mod git;
mod json;
mod ops;
mod print;
mod regex;
mod show;
mod store;
mod symbol;
mod syntax;
mod tree;
mod value;
mod versions;
mod xml;

pub use daemon_store::DaemonStore;
pub use error::{ErrorKind, EvalError};
pub use eval::{AutoArg, Coerce, EvalSettings, Evaluator, Source};
pub use json::to_json_text;
pub use print::{describe_type, format_float, print, print_shallow};
pub use store::{DeferredStore, EvalStore, Realise};
pub use syntax::Span;
pub use value::Value;
pub use xml::to_xml_text;

/// Run `f` on a thread with a stack deep enough for Nix code (which recurses deeply); the
/// evaluator's own depth limit turns runaway recursion into an error before it is reached.
pub fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("eval".into())
            .stack_size(1 << 30)
            .spawn_scoped(s, f)
            .expect("starting the evaluation thread")
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// An error with the source line it points at underlined, and what was being evaluated.
pub fn render_error(ev: &Evaluator, e: &EvalError) -> String {
    let mut out = e.kind.to_string();
    if let Some(span) = e.span {
        snippet(ev, span, &mut out);
    }
    for (span, what) in &e.trace {
        out.push_str(&format!("\n\n       … {what}"));
        // A place already shown is not shown again.
        if let Some(span) = span.filter(|s| Some(*s) != e.span && *s != Span::default()) {
            snippet(ev, span, &mut out);
        }
    }
    out
}

fn snippet(ev: &Evaluator, span: Span, out: &mut String) {
    let Some(src) = ev.sources.get(span.source as usize) else {
        return;
    };
    let (name, line, col) = ev.line_col(span);
    let text = src.text.lines().nth(line - 1).unwrap_or("");
    let width = if span.end > span.start {
        let rest = &src.text[span.start as usize..(span.end as usize).min(src.text.len())];
        rest.lines().next().map_or(1, |l| l.chars().count().max(1))
    } else {
        1
    };
    let gutter = line.to_string().len();
    out.push_str(&format!(
        "\n\n       at {name}:{line}:{col}:\n\n{:>w$}| {text}\n{:>w$}| {}{}",
        line,
        "",
        " ".repeat(col - 1),
        "^".repeat(width),
        w = gutter + 12
    ));
}
