//! Store directories, store paths and how Nix computes them.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::content_address::{ContentAddress, FileIngestionMethod};
use crate::hash::{compress, Hash, HashAlgo};
use crate::nixbase32;

/// Characters in a store path's hash part.
pub const HASH_LEN: usize = 32;
/// The longest name Nix allows after `<hash>-`.
pub const MAX_NAME_LEN: usize = 211;

/// Why a store path or store path name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    #[error("path '{path}' is not in the Nix store '{dir}'")]
    NotInStore { path: String, dir: String },
    #[error("path '{0}' is not a store path: it has a subdirectory part")]
    HasSubpath(String),
    #[error("path '{0}' is too short to be a valid store path")]
    TooShort(String),
    #[error("store path '{0}' has an invalid hash part")]
    BadHash(String),
    #[error("store path '{0}' has an empty name")]
    EmptyName(String),
    #[error("store path '{0}' has a name longer than {MAX_NAME_LEN} characters")]
    NameTooLong(String),
    #[error("store path '{path}' contains illegal character '{ch}'")]
    IllegalChar { path: String, ch: char },
    #[error("store path '{0}' has a name that is '.' or '..' or starts with '.-' or '..-'")]
    DotName(String),
    #[error("store directory '{0}' must be an absolute path without '.', '..' or a trailing '/'")]
    BadStoreDir(String),
}

/// Check a store path name (the part after `<hash>-`) as current Nix does.
/// `base` is what error messages name.
fn check_name(name: &str, base: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName(base.to_owned()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong(base.to_owned()));
    }
    for ch in name.chars() {
        if !(ch.is_ascii_alphanumeric() || "+-._?=".contains(ch)) {
            return Err(StorePathError::IllegalChar {
                path: base.to_owned(),
                ch,
            });
        }
    }
    // Nix 2.8 accepted these; current Nix refuses them since they confuse path handling.
    let first = name.split('-').next().unwrap_or("");
    if first == "." || first == ".." {
        return Err(StorePathError::DotName(base.to_owned()));
    }
    Ok(())
}

/// Check a name without a hash part (e.g. before computing a path).
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    check_name(name, name)
}

/// A store path without its directory: `<32 nix32 chars>-<name>`.
///
/// Ordering is that of the base name text, which is the order Nix sorts paths in.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash: [u8; HASH_LEN],
    name: Box<str>,
}

impl StorePath {
    /// Parse a base name `<hash>-<name>`.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        if base.len() < HASH_LEN + 2 {
            // Nix requires at least one name character, but names that short are
            // reported as empty names below when the dash is there.
            if base.len() == HASH_LEN + 1 && base.as_bytes()[HASH_LEN] == b'-' {
                return Err(StorePathError::EmptyName(base.to_owned()));
            }
            return Err(StorePathError::TooShort(base.to_owned()));
        }
        // Checked before splitting: a multi-byte character may straddle the hash's end.
        if !base.is_char_boundary(HASH_LEN) {
            return Err(StorePathError::BadHash(base.to_owned()));
        }
        let (h, rest) = base.split_at(HASH_LEN);
        if !nixbase32::is_nix32(h.as_bytes()) || !rest.starts_with('-') {
            return Err(StorePathError::BadHash(base.to_owned()));
        }
        let name = &rest[1..];
        check_name(name, base)?;
        let mut hash = [0u8; HASH_LEN];
        hash.copy_from_slice(h.as_bytes());
        Ok(Self {
            hash,
            name: name.into(),
        })
    }

    /// Build from a 20-byte digest and a name.
    pub fn from_digest(digest: &[u8; 20], name: &str) -> Result<Self, StorePathError> {
        let h = nixbase32::encode(digest);
        let base = format!("{h}-{name}");
        check_name(name, &base)?;
        let mut hash = [0u8; HASH_LEN];
        hash.copy_from_slice(h.as_bytes());
        Ok(Self {
            hash,
            name: name.into(),
        })
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        // Only nix32 ASCII is ever stored.
        std::str::from_utf8(&self.hash).unwrap_or("")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        Self::from_base_name(s)
    }
}

/// The logical store directory, e.g. `/nix/store`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreDir(Box<str>);

impl Default for StoreDir {
    fn default() -> Self {
        Self("/nix/store".into())
    }
}

impl fmt::Debug for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreDir({})", self.0)
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StoreDir {
    /// Accept any absolute, normalised directory; a trailing `/` is dropped.
    pub fn new(dir: &str) -> Result<Self, StorePathError> {
        let trimmed = if dir.len() > 1 {
            dir.trim_end_matches('/')
        } else {
            dir
        };
        let ok = trimmed.starts_with('/')
            && trimmed.len() > 1
            && !trimmed
                .split('/')
                .skip(1)
                .any(|c| c.is_empty() || c == "." || c == "..")
            && !trimmed.contains(['\0', ':']);
        if !ok {
            return Err(StorePathError::BadStoreDir(dir.to_owned()));
        }
        Ok(Self(trimmed.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full path of a store path in this directory.
    pub fn display(&self, path: &StorePath) -> String {
        format!("{}/{}", self.0, path)
    }

    /// Parse a full path that must lie directly in this store directory.
    pub fn parse_path(&self, full: &str) -> Result<StorePath, StorePathError> {
        let base = full
            .strip_prefix(&*self.0)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore {
                path: full.to_owned(),
                dir: self.0.to_string(),
            })?;
        if base.contains('/') {
            return Err(StorePathError::HasSubpath(full.to_owned()));
        }
        StorePath::from_base_name(base)
    }

    /// Split a path inside the store into its store path and the rest (`/bin/sh` or empty).
    pub fn parse_path_with_subpath<'a>(
        &self,
        full: &'a str,
    ) -> Result<(StorePath, &'a str), StorePathError> {
        let base = full
            .strip_prefix(&*self.0)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore {
                path: full.to_owned(),
                dir: self.0.to_string(),
            })?;
        let (first, rest) = match base.find('/') {
            Some(i) => (&base[..i], &base[i..]),
            None => (base, ""),
        };
        Ok((StorePath::from_base_name(first)?, rest))
    }

    /// The string whose SHA-256, folded to 160 bits, names the path.
    pub fn fingerprint(&self, kind: &str, inner: &Hash, name: &str) -> String {
        format!(
            "{kind}:{}:{}:{}:{name}",
            inner.algo(),
            inner.to_base16(),
            self.0
        )
    }

    /// Nix's `makeStorePath`: the generic rule all kinds share.
    pub fn make_store_path(
        &self,
        kind: &str,
        inner: &Hash,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        let fp = self.fingerprint(kind, inner, name);
        let folded = compress(Hash::sha256(fp.as_bytes()).digest(), 20);
        let mut d = [0u8; 20];
        d.copy_from_slice(&folded);
        StorePath::from_digest(&d, name)
    }

    fn kind_with_refs<'a>(
        &self,
        mut kind: String,
        refs: impl IntoIterator<Item = &'a StorePath>,
    ) -> String {
        let mut full: Vec<String> = refs.into_iter().map(|r| self.display(r)).collect();
        full.sort();
        for r in full {
            kind.push(':');
            kind.push_str(&r);
        }
        kind
    }

    /// A text path (`builtins.toFile`, `.drv` files): SHA-256 of the contents plus references.
    pub fn make_text_path<'a>(
        &self,
        name: &str,
        content_hash: &Hash,
        refs: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<StorePath, StorePathError> {
        let kind = self.kind_with_refs("text".into(), refs);
        self.make_store_path(&kind, content_hash, name)
    }

    /// A content-addressed path for a fixed hash. Recursive SHA-256 is a "source" path (and may
    /// have references); every other case is the double-hashed `fixed:out:` form.
    pub fn make_fixed_output_path<'a>(
        &self,
        name: &str,
        method: FileIngestionMethod,
        hash: &Hash,
        refs: impl IntoIterator<Item = &'a StorePath>,
        self_ref: bool,
    ) -> Result<StorePath, StorePathError> {
        if method == FileIngestionMethod::Recursive && hash.algo() == HashAlgo::Sha256 {
            let mut kind = self.kind_with_refs("source".into(), refs);
            if self_ref {
                kind.push_str(":self");
            }
            self.make_store_path(&kind, hash, name)
        } else {
            let inner = Hash::sha256(fixed_inner_fingerprint(method, hash).as_bytes());
            self.make_store_path("output:out", &inner, name)
        }
    }

    /// The path for a content address (text or fixed) with references.
    pub fn make_ca_path<'a>(
        &self,
        name: &str,
        ca: &ContentAddress,
        refs: impl IntoIterator<Item = &'a StorePath>,
        self_ref: bool,
    ) -> Result<StorePath, StorePathError> {
        match ca {
            ContentAddress::Text(h) => self.make_text_path(name, h, refs),
            ContentAddress::Fixed { method, hash } => {
                self.make_fixed_output_path(name, *method, hash, refs, self_ref)
            }
        }
    }

    /// The output path of an input-addressed derivation output.
    pub fn make_output_path(
        &self,
        output: &str,
        drv_hash: &Hash,
        drv_name: &str,
    ) -> Result<StorePath, StorePathError> {
        let name = output_path_name(drv_name, output);
        self.make_store_path(&format!("output:{output}"), drv_hash, &name)
    }
}

/// `fixed:out:[r:]<algo>:<hex>:`, the inner fingerprint of fixed-output paths.
pub fn fixed_inner_fingerprint(method: FileIngestionMethod, hash: &Hash) -> String {
    format!(
        "fixed:out:{}{}:{}:",
        method.prefix(),
        hash.algo(),
        hash.to_base16()
    )
}

/// `<drv name>` for `out`, `<drv name>-<output>` otherwise.
pub fn output_path_name(drv_name: &str, output: &str) -> String {
    if output == "out" {
        drv_name.to_owned()
    } else {
        format!("{drv_name}-{output}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_paths() {
        let sd = StoreDir::default();
        let p = sd
            .make_text_path("t.txt", &Hash::sha256(b"abc"), [])
            .unwrap();
        assert_eq!(
            sd.display(&p),
            "/nix/store/0g1savw1cf7pji42hasyx0smc4aw15nw-t.txt"
        );
    }

    #[test]
    fn names() {
        assert!(validate_name("hello-1.0").is_ok());
        assert!(validate_name(".hidden").is_ok());
        for bad in ["", ".", "..", ".-x", "..-y", "a b", "ä"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"n".repeat(211)).is_ok());
        assert!(validate_name(&"n".repeat(212)).is_err());
    }

    #[test]
    fn parse_and_print() {
        let sd = StoreDir::new("/data/nix/store/").unwrap();
        let full = "/data/nix/store/0g1savw1cf7pji42hasyx0smc4aw15nw-t.txt";
        let p = sd.parse_path(full).unwrap();
        assert_eq!(p.name(), "t.txt");
        assert_eq!(sd.display(&p), full);
        assert!(StoreDir::default().parse_path(full).is_err());
        assert!(sd.parse_path(&format!("{full}/x")).is_err());
        let with_sub = format!("{full}/bin/x");
        let (p2, sub) = sd.parse_path_with_subpath(&with_sub).unwrap();
        assert_eq!((p2, sub), (p, "/bin/x"));
        assert!(StoreDir::new("relative").is_err());
        assert!(StoreDir::new("/a/../b").is_err());
    }
}
