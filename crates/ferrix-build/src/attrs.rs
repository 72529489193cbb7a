//! A derivation's attributes as the build reads them: from its environment, or from its
//! `__json` attribute (structured attributes), with `.attrs.json` and `.attrs.sh` made from it.

use std::collections::BTreeMap;

use ferrix_format::{Derivation, Encoding, Hash};
use serde_json::{Map, Value};

/// The attributes of one derivation.
#[derive(Debug)]
pub enum Attrs<'a> {
    /// Every attribute is an environment variable.
    Env(&'a BTreeMap<String, String>),
    /// `__json`: the builder gets the attributes in files, not in its environment.
    Structured(Map<String, Value>),
}

/// What an output's references and size may be (Nix's `outputChecks`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Checks {
    pub allowed_references: Option<Vec<String>>,
    pub allowed_requisites: Option<Vec<String>>,
    pub disallowed_references: Option<Vec<String>>,
    pub disallowed_requisites: Option<Vec<String>>,
    pub max_size: Option<u64>,
    pub max_closure_size: Option<u64>,
    /// Outside structured attributes a path is not counted among its own requisites.
    pub ignore_self_refs: bool,
}

impl<'a> Attrs<'a> {
    /// Read the attributes; a `__json` that is not a JSON object is an error.
    pub fn of(drv: &'a Derivation) -> Result<Self, String> {
        match drv.env.get("__json") {
            None => Ok(Self::Env(&drv.env)),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => Ok(Self::Structured(map)),
                Ok(_) => Err("its __json attribute is not a JSON object".into()),
                Err(e) => Err(format!("cannot process its __json attribute: {e}")),
            },
        }
    }

    pub fn is_structured(&self) -> bool {
        matches!(self, Self::Structured(_))
    }

    /// A list of strings: whitespace-separated in the environment, a JSON list otherwise.
    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>, String> {
        match self {
            Self::Env(env) => Ok(env
                .get(name)
                .map(|v| v.split_ascii_whitespace().map(str::to_owned).collect())),
            Self::Structured(map) => match map.get(name) {
                None => Ok(None),
                Some(v) => string_list(v)
                    .map(Some)
                    .ok_or_else(|| format!("its attribute '{name}' must be a list of strings")),
            },
        }
    }

    /// A flag: `"1"` in the environment, `true` in JSON.
    pub fn flag(&self, name: &str) -> bool {
        match self {
            Self::Env(env) => env.get(name).is_some_and(|v| v == "1"),
            Self::Structured(map) => map.get(name).is_some_and(|v| v == &Value::Bool(true)),
        }
    }

    /// The checks that apply to `output`: the four reference attributes for every output,
    /// or with structured attributes `outputChecks.<output>`, which may also limit sizes.
    pub fn checks(&self, output: &str) -> Result<Checks, String> {
        match self {
            Self::Env(_) => Ok(Checks {
                allowed_references: self.strings("allowedReferences")?,
                allowed_requisites: self.strings("allowedRequisites")?,
                disallowed_references: self.strings("disallowedReferences")?,
                disallowed_requisites: self.strings("disallowedRequisites")?,
                ignore_self_refs: true,
                ..Checks::default()
            }),
            Self::Structured(map) => {
                let Some(spec) = map.get("outputChecks").and_then(|c| c.get(output)) else {
                    return Ok(Checks::default());
                };
                let list = |name: &str| match spec.get(name) {
                    None => Ok(None),
                    Some(v) => string_list(v).map(Some).ok_or_else(|| {
                        format!("its outputChecks.{output}.{name} must be a list of strings")
                    }),
                };
                let size = |name: &str| match spec.get(name) {
                    None => Ok(None),
                    Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                        format!("its outputChecks.{output}.{name} must be a number of bytes")
                    }),
                };
                Ok(Checks {
                    allowed_references: list("allowedReferences")?,
                    allowed_requisites: list("allowedRequisites")?,
                    disallowed_references: list("disallowedReferences")?,
                    disallowed_requisites: list("disallowedRequisites")?,
                    max_size: size("maxSize")?,
                    max_closure_size: size("maxClosureSize")?,
                    ignore_self_refs: false,
                })
            }
        }
    }
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// The string a derivation uses for the path of its output `name` before that path is
/// known (`builtins.placeholder`): `/` and the nix32 SHA-256 of `nix-output:<name>`.
pub fn hash_placeholder(output: &str) -> String {
    format!(
        "/{}",
        Hash::sha256(format!("nix-output:{output}").as_bytes()).encode(Encoding::Nix32)
    )
}

/// Replace every `from` with its `to`, as Nix's `rewriteStrings` does (in the map's order).
pub fn rewrite(s: &str, rewrites: &[(String, String)]) -> String {
    let mut s = s.to_owned();
    for (from, to) in rewrites {
        if s.contains(from.as_str()) {
            s = s.replace(from.as_str(), to);
        }
    }
    s
}

/// The shell form of structured attributes, for bash builders to `source`: each attribute
/// that bash can hold (a string, number, Boolean or null, or a flat list or object of those)
/// becomes a `declare`; the rest are left to `.attrs.json`.
pub fn attrs_sh(json: &Map<String, Value>) -> String {
    let mut out = String::new();
    for (key, value) in json {
        if !is_sh_name(key) {
            continue;
        }
        if let Some(s) = simple(value) {
            out += &format!("declare {key}={s}\n");
        } else if let Value::Array(items) = value {
            if let Some(parts) = items.iter().map(simple).collect::<Option<Vec<_>>>() {
                let body: String = parts.iter().map(|p| format!("{p} ")).collect();
                out += &format!("declare -a {key}=({body})\n");
            }
        } else if let Value::Object(items) = value {
            if let Some(parts) = items
                .iter()
                .map(|(k, v)| simple(v).map(|v| format!("[{}]={v} ", shell_escape(k))))
                .collect::<Option<Vec<_>>>()
            {
                out += &format!("declare -A {key}=({})\n", parts.concat());
            }
        }
    }
    out
}

fn is_sh_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn simple(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(shell_escape(s)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i.to_string())
            } else if let Some(u) = n.as_u64() {
                Some(u.to_string())
            } else {
                // Whole numbers written as floats count as integers; others are skipped.
                let f = n.as_f64()?;
                (f.fract() == 0.0 && f.abs() < 9.0e15).then(|| format!("{}", f as i64))
            }
        }
        Value::Null => Some("''".into()),
        Value::Bool(b) => Some(if *b { "1".into() } else { String::new() }),
        _ => None,
    }
}

fn shell_escape(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_is_nixs() {
        // `builtins.placeholder "out"` in Nix 2.8.
        assert_eq!(
            hash_placeholder("out"),
            "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"
        );
    }

    #[test]
    fn shell_form() {
        let json: Map<String, Value> = serde_json::from_str(
            r#"{"a":"it's","n":3,"f":2.0,"g":2.5,"t":true,"u":false,"z":null,
                "l":["x",1],"o":{"k":"v"},"deep":[[1]],"bad-name":"x","_ok":"y"}"#,
        )
        .unwrap();
        assert_eq!(
            attrs_sh(&json),
            "declare _ok='y'\ndeclare a='it'\\''s'\ndeclare f=2\ndeclare -a l=('x' 1 )\n\
             declare n=3\ndeclare -A o=(['k']='v' )\ndeclare t=1\ndeclare u=\ndeclare z=''\n"
        );
    }

    #[test]
    fn checks_from_env_and_json() {
        let mut drv = Derivation {
            outputs: Default::default(),
            input_drvs: Default::default(),
            input_srcs: Default::default(),
            platform: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: vec![],
            env: BTreeMap::new(),
        };
        drv.env
            .insert("allowedReferences".into(), "out  /nix/store/x".into());
        let a = Attrs::of(&drv).unwrap();
        let c = a.checks("out").unwrap();
        assert_eq!(
            c.allowed_references,
            Some(vec!["out".into(), "/nix/store/x".into()])
        );
        assert!(c.ignore_self_refs);

        drv.env.insert(
            "__json".into(),
            r#"{"outputChecks":{"out":{"maxSize":10,"disallowedRequisites":["dev"]}}}"#.into(),
        );
        let a = Attrs::of(&drv).unwrap();
        assert!(a.is_structured());
        let c = a.checks("out").unwrap();
        assert_eq!(c.max_size, Some(10));
        assert_eq!(c.disallowed_requisites, Some(vec!["dev".into()]));
        assert_eq!(c.allowed_references, None);
        assert_eq!(a.checks("dev").unwrap(), Checks::default());

        drv.env.insert("__json".into(), "[1]".into());
        assert!(Attrs::of(&drv).is_err());
        drv.env.insert(
            "__json".into(),
            r#"{"outputChecks":{"out":{"maxSize":"big"}}}"#.into(),
        );
        assert!(Attrs::of(&drv).unwrap().checks("out").is_err());
    }
}
