//! `.narinfo` files and `nix-cache-info`, the text records of a binary cache.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use thiserror::Error;

use crate::content_address::ContentAddress;
use crate::hash::Hash;
use crate::signature::{fingerprint, PublicKey, SecretKey, Signature};
use crate::store_path::{StoreDir, StorePath};

/// What is wrong with a narinfo, and on which line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoError {
    #[error("line {line}: expected 'Key: value'")]
    Syntax { line: usize },
    #[error("line {line}: field '{key}': {msg}")]
    Field {
        line: usize,
        key: String,
        msg: String,
    },
    #[error("line {line}: field '{key}' appears twice")]
    Duplicate { line: usize, key: String },
    #[error("required field '{0}' is missing")]
    Missing(&'static str),
    #[error("the last line does not end with a newline")]
    NoFinalNewline,
    #[error("'NarSize' must not be 0")]
    ZeroNarSize,
}

/// The metadata of one path in a binary cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    pub url: String,
    pub compression: String,
    pub file_hash: Option<Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Hash,
    pub nar_size: u64,
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<StorePath>,
    pub system: Option<String>,
    pub sigs: Vec<Signature>,
    pub ca: Option<ContentAddress>,
}

impl NarInfo {
    /// Parse a narinfo whose paths lie in `store_dir`.
    pub fn parse(store_dir: &StoreDir, text: &str) -> Result<Self, NarInfoError> {
        if !text.is_empty() && !text.ends_with('\n') {
            return Err(NarInfoError::NoFinalNewline);
        }
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        let mut deriver = None;
        let mut system = None;
        let mut sigs = Vec::new();
        let mut ca = None;
        for (i, l) in text.lines().enumerate() {
            let line = i + 1;
            let (key, value) = l.split_once(": ").ok_or(NarInfoError::Syntax { line })?;
            let bad = |msg: String| NarInfoError::Field {
                line,
                key: key.to_owned(),
                msg,
            };
            fn set<T>(
                slot: &mut Option<T>,
                v: T,
                line: usize,
                key: &str,
            ) -> Result<(), NarInfoError> {
                if slot.replace(v).is_some() {
                    return Err(NarInfoError::Duplicate {
                        line,
                        key: key.to_owned(),
                    });
                }
                Ok(())
            }
            let base = |v: &str| StorePath::from_base_name(v).map_err(|e| bad(e.to_string()));
            match key {
                "StorePath" => {
                    let p = store_dir
                        .parse_path(value)
                        .map_err(|e| bad(e.to_string()))?;
                    set(&mut store_path, p, line, key)?
                }
                "URL" => set(&mut url, value.to_owned(), line, key)?,
                "Compression" => set(&mut compression, value.to_owned(), line, key)?,
                "FileHash" => {
                    let h = Hash::parse(value, None).map_err(|e| bad(e.to_string()))?;
                    set(&mut file_hash, h, line, key)?
                }
                "FileSize" => {
                    let n = value.parse::<u64>().map_err(|e| bad(e.to_string()))?;
                    set(&mut file_size, n, line, key)?
                }
                "NarHash" => {
                    let h = Hash::parse(value, None).map_err(|e| bad(e.to_string()))?;
                    set(&mut nar_hash, h, line, key)?
                }
                "NarSize" => {
                    let n = value.parse::<u64>().map_err(|e| bad(e.to_string()))?;
                    set(&mut nar_size, n, line, key)?
                }
                "References" => {
                    let refs = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(base)
                        .collect::<Result<BTreeSet<_>, _>>()?;
                    set(&mut references, refs, line, key)?
                }
                "Deriver" if value == "unknown-deriver" => {}
                "Deriver" => set(&mut deriver, base(value)?, line, key)?,
                "System" => set(&mut system, value.to_owned(), line, key)?,
                "Sig" => sigs.push(
                    value
                        .parse()
                        .map_err(|e: crate::signature::KeyError| bad(e.to_string()))?,
                ),
                "CA" => {
                    let c = value
                        .parse::<ContentAddress>()
                        .map_err(|e| bad(e.to_string()))?;
                    set(&mut ca, c, line, key)?
                }
                // Unknown fields are for newer writers; Nix ignores them too.
                _ => {}
            }
        }
        let nar_size = nar_size.ok_or(NarInfoError::Missing("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize);
        }
        Ok(NarInfo {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            // What Nix assumes for caches that predate the field.
            compression: compression.unwrap_or_else(|| "bzip2".to_owned()),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size,
            references: references.unwrap_or_default(),
            deriver,
            system,
            sigs,
            ca,
        })
    }

    /// The text Nix writes, fields in its order.
    pub fn to_text(&self, store_dir: &StoreDir) -> String {
        let mut s = String::with_capacity(512);
        let _ = writeln!(s, "StorePath: {}", store_dir.display(&self.store_path));
        let _ = writeln!(s, "URL: {}", self.url);
        let _ = writeln!(s, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {h}");
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", self.nar_hash);
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let refs: Vec<String> = self.references.iter().map(|r| r.to_string()).collect();
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {d}");
        }
        if let Some(sys) = &self.system {
            let _ = writeln!(s, "System: {sys}");
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        s
    }

    /// The string signatures of this path cover.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        fingerprint(
            store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Add a signature by `key` (replacing an older one by the same key name).
    pub fn sign(&mut self, store_dir: &StoreDir, key: &SecretKey) {
        let sig = key.sign(self.fingerprint(store_dir).as_bytes());
        self.sigs.retain(|s| s.key_name() != key.name());
        self.sigs.push(sig);
    }

    /// How many signatures verify against any of `keys`.
    pub fn valid_signatures(&self, store_dir: &StoreDir, keys: &[PublicKey]) -> usize {
        let fp = self.fingerprint(store_dir);
        self.sigs
            .iter()
            .filter(|sig| keys.iter().any(|k| k.verify(fp.as_bytes(), sig)))
            .count()
    }
}

/// `nix-cache-info`: what a binary cache says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub store_dir: Option<String>,
    pub want_mass_query: Option<bool>,
    pub priority: Option<u64>,
}

impl CacheInfo {
    /// Lenient like Nix: unknown keys and lines without `:` are ignored, values trimmed; a
    /// malformed number or flag is an error naming its line.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let mut info = CacheInfo {
            store_dir: None,
            want_mass_query: None,
            priority: None,
        };
        for (i, l) in text.lines().enumerate() {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            let bad = |msg: &str| NarInfoError::Field {
                line: i + 1,
                key: k.to_owned(),
                msg: msg.to_owned(),
            };
            match k.trim() {
                "StoreDir" => info.store_dir = Some(v.to_owned()),
                "WantMassQuery" => {
                    info.want_mass_query = Some(match v {
                        "1" => true,
                        "0" => false,
                        _ => return Err(bad("expected 0 or 1")),
                    })
                }
                "Priority" => {
                    info.priority = Some(v.parse().map_err(|_| bad("expected a number"))?)
                }
                _ => {}
            }
        }
        Ok(info)
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.store_dir {
            let _ = writeln!(s, "StoreDir: {d}");
        }
        if let Some(w) = self.want_mass_query {
            let _ = writeln!(s, "WantMassQuery: {}", u8::from(w));
        }
        if let Some(p) = self.priority {
            let _ = writeln!(s, "Priority: {p}");
        }
        s
    }
}
