//! `builtins.match` and `builtins.split`: POSIX extended regular expressions, run with the
//! `regex` crate. Its syntax covers what Nix code writes (classes such as `[[:alpha:]]`
//! included); where an alternation is ambiguous it picks the first alternative that
//! matches rather than the longest, as POSIX would, so captures of such patterns may differ.

use std::collections::HashMap;
use std::rc::Rc;

use crate::error::{ErrorKind, EvalError};
use crate::eval::Evaluator;
use crate::syntax::Span;
use crate::value::{NixString, Value};

type Result<T> = std::result::Result<T, EvalError>;

/// Compiled expressions, by pattern and whether they must match the whole string.
#[derive(Default)]
pub(crate) struct Cache(HashMap<(String, bool), Rc<regex::Regex>>);

impl Cache {
    fn get(&mut self, pattern: &str, whole: bool, span: Span) -> Result<Rc<regex::Regex>> {
        if let Some(r) = self.0.get(&(pattern.to_owned(), whole)) {
            return Ok(r.clone());
        }
        let source = if whole {
            format!("^(?:{pattern})$")
        } else {
            pattern.to_owned()
        };
        let r = regex::Regex::new(&source).map_err(|e| {
            EvalError::new(ErrorKind::Other(format!(
                "invalid regular expression '{pattern}': {e}"
            )))
            .at(span)
        })?;
        let r = Rc::new(r);
        self.0.insert((pattern.to_owned(), whole), r.clone());
        Ok(r)
    }
}

fn groups(c: &regex::Captures<'_>, context: &crate::value::Context) -> Value {
    Value::List(
        c.iter()
            .skip(1)
            .map(|g| match g {
                Some(m) => Value::String(Rc::new(NixString {
                    s: m.as_str().to_owned(),
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
    let re = ev.regexes.get(&pattern.s, true, span)?;
    Ok(match re.captures(&s.s) {
        Some(c) => groups(&c, &s.context),
        None => Value::Null,
    })
}

pub(crate) fn split(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let pattern = ev.expect_string(&a[0], span)?;
    let s = ev.expect_string(&a[1], span)?;
    let re = ev.regexes.get(&pattern.s, false, span)?;
    let piece = |t: &str| {
        Value::String(Rc::new(NixString {
            s: t.to_owned(),
            context: s.context.clone(),
        }))
    };
    // Matches are found as C++'s regex iterator finds them (what Nix uses): after an
    // empty match, the next one must be non-empty there or start further on; after a
    // non-empty one, an empty match right at its end counts.
    let mut out = Vec::new();
    let (mut last, mut pos, mut prev_empty) = (0, 0, false);
    while pos <= s.s.len() {
        let Some(c) = re.captures_at(&s.s, pos) else {
            break;
        };
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
