//! The ATerm text of `.drv` files: `Derive([outputs],[inputDrvs],[inputSrcs],system,builder,[args],[env])`.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::{Derivation, DerivationOutput, OutputFieldsError};
use crate::store_path::{StoreDir, StorePath};

/// What is wrong with a `.drv` text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DrvParseErrorKind {
    #[error("expected '{0}'")]
    Expected(&'static str),
    #[error("the text ends early")]
    Truncated,
    #[error("a string is not valid UTF-8")]
    NotUtf8,
    #[error("bad path '{0}' in derivation")]
    BadPath(String),
    #[error("{0}")]
    StorePath(#[from] crate::store_path::StorePathError),
    #[error("bad hash algorithm '{0}' of output")]
    BadHashAlgo(String),
    #[error("bad hash of output: {0}")]
    BadHash(#[from] crate::hash::HashError),
    #[error("output '{0}' is listed twice")]
    DuplicateOutput(String),
    #[error("input derivation '{0}' is listed twice")]
    DuplicateInput(String),
    #[error("environment variable '{0}' is set twice")]
    DuplicateEnv(String),
    #[error("output '{0}' has a hash but no path, or a path but no fixed hash, in a way Nix never writes")]
    BadOutput(String),
    #[error("text after the end of the derivation")]
    TrailingData,
}

/// A `.drv` parse error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid derivation at byte {offset}: {kind}")]
pub struct DrvParseError {
    pub offset: usize,
    pub kind: DrvParseErrorKind,
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    store_dir: &'a StoreDir,
}

impl<'a> Parser<'a> {
    fn err(&self, kind: DrvParseErrorKind) -> DrvParseError {
        DrvParseError {
            offset: self.pos,
            kind,
        }
    }

    fn lit(&mut self, l: &'static str) -> Result<(), DrvParseError> {
        if self.s[self.pos..].starts_with(l.as_bytes()) {
            self.pos += l.len();
            Ok(())
        } else if self.pos + l.len() > self.s.len() && l.as_bytes().starts_with(&self.s[self.pos..])
        {
            Err(self.err(DrvParseErrorKind::Truncated))
        } else {
            Err(self.err(DrvParseErrorKind::Expected(l)))
        }
    }

    fn peek(&self, c: u8) -> bool {
        self.s.get(self.pos) == Some(&c)
    }

    /// A quoted string with Nix's escapes: `\n`, `\r`, `\t`, and `\X` for any other X.
    fn string(&mut self) -> Result<String, DrvParseError> {
        let start = self.pos;
        self.lit("\"")?;
        let mut out = Vec::new();
        loop {
            // Copy runs of plain bytes at once.
            let rest = &self.s[self.pos..];
            let run = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .ok_or(DrvParseError {
                    offset: self.s.len(),
                    kind: DrvParseErrorKind::Truncated,
                })?;
            out.extend_from_slice(&rest[..run]);
            self.pos += run;
            if self.s[self.pos] == b'"' {
                self.pos += 1;
                break;
            }
            let Some(&c) = self.s.get(self.pos + 1) else {
                self.pos = self.s.len();
                return Err(self.err(DrvParseErrorKind::Truncated));
            };
            out.push(match c {
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                c => c,
            });
            self.pos += 2;
        }
        String::from_utf8(out).map_err(|_| DrvParseError {
            offset: start,
            kind: DrvParseErrorKind::NotUtf8,
        })
    }

    fn path(&mut self) -> Result<StorePath, DrvParseError> {
        let at = self.pos;
        let s = self.string()?;
        if !s.starts_with('/') {
            return Err(DrvParseError {
                offset: at,
                kind: DrvParseErrorKind::BadPath(s),
            });
        }
        self.store_dir.parse_path(&s).map_err(|e| DrvParseError {
            offset: at,
            kind: e.into(),
        })
    }

    /// `[item,item,...]`
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, DrvParseError>,
    ) -> Result<Vec<T>, DrvParseError> {
        self.lit("[")?;
        let mut v = Vec::new();
        if self.peek(b']') {
            self.pos += 1;
            return Ok(v);
        }
        loop {
            v.push(item(self)?);
            if self.peek(b',') {
                self.pos += 1;
            } else {
                self.lit("]")?;
                return Ok(v);
            }
        }
    }

    fn output(&mut self) -> Result<(usize, String, DerivationOutput), DrvParseError> {
        let at = self.pos;
        self.lit("(")?;
        let name = self.string()?;
        self.lit(",")?;
        let path_at = self.pos;
        let path = self.string()?;
        self.lit(",")?;
        let algo_at = self.pos;
        let algo = self.string()?;
        self.lit(",")?;
        let hash_at = self.pos;
        let hash = self.string()?;
        self.lit(")")?;
        let store_dir = self.store_dir;
        let parse_path = |path: &str| {
            if !path.starts_with('/') {
                return Err(DrvParseError {
                    offset: path_at,
                    kind: DrvParseErrorKind::BadPath(path.to_owned()),
                });
            }
            store_dir.parse_path(path).map_err(|e| DrvParseError {
                offset: path_at,
                kind: e.into(),
            })
        };
        let at_kind = |offset, kind| DrvParseError { offset, kind };
        let out =
            DerivationOutput::from_fields(&path, &algo, &hash, parse_path).map_err(
                |e| match e {
                    OutputFieldsError::Path(e) => e,
                    OutputFieldsError::HashWithoutAlgo => {
                        at_kind(hash_at, DrvParseErrorKind::BadOutput(name.clone()))
                    }
                    OutputFieldsError::PathWithoutHash => {
                        at_kind(path_at, DrvParseErrorKind::BadOutput(name.clone()))
                    }
                    OutputFieldsError::HashWithoutPath => {
                        at_kind(path_at, DrvParseErrorKind::BadPath(String::new()))
                    }
                    OutputFieldsError::Algo => {
                        at_kind(algo_at, DrvParseErrorKind::BadHashAlgo(algo.clone()))
                    }
                    OutputFieldsError::Hash(e) => at_kind(hash_at, e.into()),
                },
            )?;
        Ok((at, name, out))
    }
}

impl Derivation {
    /// Parse the ATerm text of a `.drv` file. Paths must lie in `store_dir`.
    pub fn parse_aterm(store_dir: &StoreDir, text: &[u8]) -> Result<Self, DrvParseError> {
        let mut p = Parser {
            s: text,
            pos: 0,
            store_dir,
        };
        p.lit("Derive(")?;
        let mut outputs = BTreeMap::new();
        for (at, name, out) in p.list(Parser::output)? {
            if outputs.insert(name.clone(), out).is_some() {
                return Err(DrvParseError {
                    offset: at,
                    kind: DrvParseErrorKind::DuplicateOutput(name),
                });
            }
        }
        p.lit(",")?;
        let mut input_drvs = BTreeMap::new();
        let inputs = p.list(|p| {
            let at = p.pos;
            p.lit("(")?;
            let path = p.path()?;
            p.lit(",")?;
            let outs: BTreeSet<String> = p.list(Parser::string)?.into_iter().collect();
            p.lit(")")?;
            Ok((at, path, outs))
        })?;
        for (at, path, outs) in inputs {
            if input_drvs.contains_key(&path) {
                return Err(DrvParseError {
                    offset: at,
                    kind: DrvParseErrorKind::DuplicateInput(path.to_string()),
                });
            }
            input_drvs.insert(path, outs);
        }
        p.lit(",")?;
        let input_srcs = p.list(Parser::path)?.into_iter().collect();
        p.lit(",")?;
        let platform = p.string()?;
        p.lit(",")?;
        let builder = p.string()?;
        p.lit(",")?;
        let args = p.list(Parser::string)?;
        p.lit(",")?;
        let pairs = p.list(|p| {
            let at = p.pos;
            p.lit("(")?;
            let k = p.string()?;
            p.lit(",")?;
            let v = p.string()?;
            p.lit(")")?;
            Ok((at, k, v))
        })?;
        let mut env = BTreeMap::new();
        for (at, k, v) in pairs {
            if env.contains_key(&k) {
                return Err(DrvParseError {
                    offset: at,
                    kind: DrvParseErrorKind::DuplicateEnv(k),
                });
            }
            env.insert(k, v);
        }
        p.lit(")")?;
        if p.pos != text.len() {
            return Err(p.err(DrvParseErrorKind::TrailingData));
        }
        Ok(Derivation {
            outputs,
            input_drvs,
            input_srcs,
            platform,
            builder,
            args,
            env,
        })
    }

    /// The ATerm text, byte for byte as Nix writes it.
    pub fn to_aterm(&self, store_dir: &StoreDir) -> String {
        let inputs: Vec<(String, &BTreeSet<String>)> = self
            .input_drvs
            .iter()
            .map(|(p, o)| (store_dir.display(p), o))
            .collect();
        self.write_aterm(store_dir, &inputs, false)
    }

    /// Serialise with `input_drvs` given as (already sorted) text keys, optionally masking
    /// output paths (what hashing modulo needs).
    pub(crate) fn write_aterm(
        &self,
        store_dir: &StoreDir,
        input_drvs: &[(String, &BTreeSet<String>)],
        mask_outputs: bool,
    ) -> String {
        let mut s = String::with_capacity(1024);
        s.push_str("Derive([");
        for (i, (name, out)) in self.outputs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let (path, algo, hash) = out.to_fields(store_dir);
            let path = if mask_outputs { String::new() } else { path };
            s.push('(');
            raw(&mut s, name);
            s.push(',');
            raw(&mut s, &path);
            s.push(',');
            raw(&mut s, &algo);
            s.push(',');
            raw(&mut s, &hash);
            s.push(')');
        }
        s.push_str("],[");
        for (i, (path, outs)) in input_drvs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('(');
            raw(&mut s, path);
            s.push_str(",[");
            for (j, o) in outs.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                raw(&mut s, o);
            }
            s.push_str("])");
        }
        s.push_str("],[");
        for (i, p) in self.input_srcs.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            raw(&mut s, &store_dir.display(p));
        }
        s.push_str("],");
        raw(&mut s, &self.platform);
        s.push(',');
        escaped(&mut s, &self.builder);
        s.push_str(",[");
        for (i, a) in self.args.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            escaped(&mut s, a);
        }
        s.push_str("],[");
        for (i, (k, v)) in self.env.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('(');
            escaped(&mut s, k);
            s.push(',');
            if mask_outputs && self.outputs.contains_key(k) {
                escaped(&mut s, "");
            } else {
                escaped(&mut s, v);
            }
            s.push(')');
        }
        s.push_str("])");
        s
    }
}

/// Nix writes these fields between quotes without escaping.
fn raw(s: &mut String, v: &str) {
    s.push('"');
    s.push_str(v);
    s.push('"');
}

fn escaped(s: &mut String, v: &str) {
    s.reserve(v.len() + 2);
    s.push('"');
    // The characters escaped are ASCII, so the text between them is copied in runs,
    // not a character at a time (a builder's script or environment can be long).
    let mut run = 0;
    for (i, b) in v.bytes().enumerate() {
        let esc = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            _ => continue,
        };
        s.push_str(&v[run..i]);
        s.push_str(esc);
        run = i + 1;
    }
    s.push_str(&v[run..]);
    s.push('"');
}
