//! A small JSON writer that prints exactly as Nix's does (escapes, 2-space pretty layout).

use std::fmt::Write as _;

/// Append `s` as a JSON string the way Nix escapes it: `"`, `\`, `\n`, `\r`, `\t` get short
/// escapes, other control characters `\u00xx`; everything else is written as is.
pub fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON value to print; objects keep the order they are given in.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Nix's pretty form: two spaces per level, `"key": value`, empty containers as `{}`/`[]`.
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, Some(0));
        out
    }

    /// The compact form, without any whitespace.
    pub fn compact(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, None);
        out
    }

    fn write(&self, out: &mut String, indent: Option<usize>) {
        let newline = |out: &mut String, level: usize| {
            if indent.is_some() {
                out.push('\n');
                for _ in 0..level {
                    out.push_str("  ");
                }
            }
        };
        let level = indent.unwrap_or(0);
        let inner = indent.map(|l| l + 1);
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Json::String(s) => push_string(out, s),
            Json::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, level + 1);
                    v.write(out, inner);
                }
                if !items.is_empty() {
                    newline(out, level);
                }
                out.push(']');
            }
            Json::Object(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, level + 1);
                    push_string(out, k);
                    out.push(':');
                    if indent.is_some() {
                        out.push(' ');
                    }
                    v.write(out, inner);
                }
                if !fields.is_empty() {
                    newline(out, level);
                }
                out.push('}');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_nix() {
        let mut s = String::new();
        push_string(&mut s, "a\u{8}b\u{c}c\u{1}\u{7f}\"é\t\n\r/");
        assert_eq!(s, "\"a\\u0008b\\u000cc\\u0001\u{7f}\\\"é\\t\\n\\r/\"");
    }

    #[test]
    fn layout() {
        let j = Json::Object(vec![
            ("a".into(), Json::Array(vec![])),
            ("b".into(), Json::Object(vec![])),
            (
                "c".into(),
                Json::Array(vec![Json::String("x".into()), Json::Int(2)]),
            ),
        ]);
        assert_eq!(
            j.pretty(),
            "{\n  \"a\": [],\n  \"b\": {},\n  \"c\": [\n    \"x\",\n    2\n  ]\n}"
        );
        assert_eq!(j.compact(), "{\"a\":[],\"b\":{},\"c\":[\"x\",2]}");
    }
}
