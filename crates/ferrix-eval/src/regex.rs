//! `builtins.match` and `builtins.split`: POSIX extended regular expressions, run with the
//! `regex` crate, whose syntax covers what Nix code writes (classes such as `[[:alpha:]]`
//! included), with the match semantics of the C++ library Nix uses:
//! - `match` needs the whole string to match; of the ways it can, the captures are those of
//!   the first a backtracking search finds (alternatives in order, repetitions greedy),
//!   which is what the `regex` crate reports;
//! - `split` takes, at the leftmost place anything matches, the *longest* match (POSIX),
//!   where the `regex` crate would take the first alternative that matches: `a|ab` on
//!   `"ab"` is `"ab"`. A lazy DFA finds that end; the captures are then the first
//!   backtracking path that ends there. (A `$` inside the pattern could then also match
//!   where that match ends, before the end of the string: a case the C++ library, which
//!   checks `$` against the string's end, does not have.)

use std::collections::HashMap;
use std::rc::Rc;

use crate::error::{ErrorKind, EvalError};
use crate::eval::Evaluator;
use crate::syntax::Span;
use crate::value::{NixString, Value};

type Result<T> = std::result::Result<T, EvalError>;

/// How a pattern is used.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Use {
    /// Matching the whole string.
    Whole,
    /// Searching.
    Search,
    /// Searching for a match that ends where the string does.
    AtEnd,
}

/// Compiled expressions, by pattern and use; and for `split`, lazy DFAs that find where
/// the longest match from a place ends.
#[derive(Default)]
pub(crate) struct Cache {
    regexes: HashMap<(String, Use), Rc<regex::Regex>>,
    longest: HashMap<String, Rc<Longest>>,
}

fn invalid(pattern: &str, e: impl std::fmt::Display, span: Span) -> EvalError {
    EvalError::new(ErrorKind::Other(format!(
        "invalid regular expression '{pattern}': {e}"
    )))
    .at(span)
}

impl Cache {
    fn get(&mut self, pattern: &str, how: Use, span: Span) -> Result<Rc<regex::Regex>> {
        if let Some(r) = self.regexes.get(&(pattern.to_owned(), how)) {
            return Ok(r.clone());
        }
        let source = match how {
            Use::Whole => format!("^(?:{pattern})$"),
            Use::Search => pattern.to_owned(),
            Use::AtEnd => format!("(?:{pattern})$"),
        };
        // `.` matches any character, line ends included, as in Nix.
        let r = regex::RegexBuilder::new(&source)
            .dot_matches_new_line(true)
            .build()
            .map_err(|e| invalid(pattern, e, span))?;
        let r = Rc::new(r);
        self.regexes.insert((pattern.to_owned(), how), r.clone());
        Ok(r)
    }

    fn longest(&mut self, pattern: &str, span: Span) -> Result<Rc<Longest>> {
        if let Some(l) = self.longest.get(pattern) {
            return Ok(l.clone());
        }
        use regex_automata::hybrid::dfa::DFA;
        let dfa = DFA::builder()
            .configure(DFA::config().match_kind(regex_automata::MatchKind::All))
            .syntax(regex_automata::util::syntax::Config::new().dot_matches_new_line(true))
            .build(pattern)
            .map_err(|e| invalid(pattern, e, span))?;
        let cache = std::cell::RefCell::new(dfa.create_cache());
        let l = Rc::new(Longest { dfa, cache });
        self.longest.insert(pattern.to_owned(), l.clone());
        Ok(l)
    }
}

/// A lazy DFA that reports every match (so a forward search ends at the longest), and its
/// cache.
struct Longest {
    dfa: regex_automata::hybrid::dfa::DFA,
    cache: std::cell::RefCell<regex_automata::hybrid::dfa::Cache>,
}

impl Longest {
    /// Where the longest match starting at `start` ends; `None` if the DFA gave up (a
    /// pattern too large for its cache), and then the first match found is taken.
    fn end(&self, hay: &str, start: usize) -> Option<usize> {
        let input = regex_automata::Input::new(hay)
            .range(start..)
            .anchored(regex_automata::Anchored::Yes);
        let mut cache = self.cache.borrow_mut();
        match self.dfa.try_search_fwd(&mut cache, &input) {
            Ok(m) => m.map(|m| m.offset()),
            Err(_) => None,
        }
    }
}

fn groups(c: &regex::Captures<'_>, context: &crate::value::Context) -> Value {
    Value::List(
        c.iter()
            .skip(1)
            .map(|g| match g {
                Some(m) => Value::String(Rc::new(NixString {
                    s: m.as_str().into(),
                    context: context.clone(),
                })),
                None => Value::Null,
            })
            .collect(),
    )
}

pub(crate) fn match_(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let pattern = ev.expect_string(&a[0], span)?;
    let s = ev.expect_string(&a[1], span)?;
    let re = ev.regexes.get(&pattern.s, Use::Whole, span)?;
    Ok(match re.captures(&s.s) {
        Some(c) => groups(&c, &s.context),
        None => Value::Null,
    })
}

pub(crate) fn split(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let pattern = ev.expect_string(&a[0], span)?;
    let s = ev.expect_string(&a[1], span)?;
    let re = ev.regexes.get(&pattern.s, Use::Search, span)?;
    let longest = ev.regexes.longest(&pattern.s, span)?;
    let piece = |t: &str| {
        Value::String(Rc::new(NixString {
            s: t.into(),
            context: s.context.clone(),
        }))
    };
    // Matches are found as C++'s regex iterator finds them (what Nix uses): after an
    // empty match, the next one must be non-empty there or start further on; after a
    // non-empty one, an empty match right at its end counts.
    let mut out = Vec::new();
    let (mut last, mut pos, mut prev_empty) = (0, 0, false);
    while pos <= s.s.len() {
        let Some(mut c) = re.captures_at(&s.s, pos) else {
            break;
        };
        let m = c.get(0).expect("group 0 is the match");
        // POSIX's longest match where this one starts, with the captures of the first
        // path that ends there.
        if let Some(end) = longest.end(&s.s, m.start()).filter(|e| *e > m.end()) {
            // Compiled only for patterns where a longer match turns up.
            let at_end = ev.regexes.get(&pattern.s, Use::AtEnd, span)?;
            if let Some(l) = at_end.captures_at(&s.s[..end], m.start()) {
                c = l;
            }
        }
        let m = c.get(0).expect("group 0 is the match");
        if prev_empty && m.start() == pos && m.is_empty() {
            match s.s[pos..].chars().next() {
                Some(ch) => pos += ch.len_utf8(),
                None => break,
            }
            prev_empty = false;
            continue;
        }
        out.push(piece(&s.s[last..m.start()]));
        out.push(groups(&c, &s.context));
        last = m.end();
        pos = m.end();
        prev_empty = m.is_empty();
    }
    out.push(piece(&s.s[last..]));
    Ok(Value::List(out.into()))
}
