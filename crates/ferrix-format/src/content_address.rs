//! Content addresses (`text:sha256:…`, `fixed:r:sha256:…`) as the DB, narinfo and protocols print them.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::hash::{Hash, HashAlgo, HashError};

/// How a file system object is hashed for a fixed-output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileIngestionMethod {
    /// The bytes of a single regular file.
    Flat,
    /// The NAR serialisation of the tree.
    Recursive,
}

impl FileIngestionMethod {
    /// `r:` for recursive, empty for flat — as in `.drv` hash algos and fingerprints.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Flat => "",
            Self::Recursive => "r:",
        }
    }
}

/// A content address of a store path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentAddress {
    /// A text path: SHA-256 of the contents.
    Text(Hash),
    Fixed {
        method: FileIngestionMethod,
        hash: Hash,
    },
}

/// Why a content address text was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContentAddressError {
    #[error("content address '{0}' is neither 'text:' nor 'fixed:'")]
    UnknownKind(String),
    #[error("content address '{0}': text paths are always hashed with sha256")]
    TextNotSha256(String),
    #[error("content address '{text}'")]
    Hash {
        text: String,
        #[source]
        source: HashError,
    },
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(h) => write!(f, "text:{h}"),
            Self::Fixed { method, hash } => write!(f, "fixed:{}{hash}", method.prefix()),
        }
    }
}

impl FromStr for ContentAddress {
    type Err = ContentAddressError;
    fn from_str(s: &str) -> Result<Self, ContentAddressError> {
        let hash = |t: &str| {
            Hash::parse(t, None).map_err(|source| ContentAddressError::Hash {
                text: s.to_owned(),
                source,
            })
        };
        if let Some(rest) = s.strip_prefix("text:") {
            let h = hash(rest)?;
            if h.algo() != HashAlgo::Sha256 {
                return Err(ContentAddressError::TextNotSha256(s.to_owned()));
            }
            Ok(Self::Text(h))
        } else if let Some(rest) = s.strip_prefix("fixed:") {
            let (method, rest) = match rest.strip_prefix("r:") {
                Some(r) => (FileIngestionMethod::Recursive, r),
                None => (FileIngestionMethod::Flat, rest),
            };
            Ok(Self::Fixed {
                method,
                hash: hash(rest)?,
            })
        } else {
            Err(ContentAddressError::UnknownKind(s.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in [
            "fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
            "fixed:r:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
            "text:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
        ] {
            assert_eq!(s.parse::<ContentAddress>().unwrap().to_string(), s);
        }
        assert!("nar:sha256:x".parse::<ContentAddress>().is_err());
        assert!("text:md5:3y8bwfr609h3lh9ch0izcqq7fl"
            .parse::<ContentAddress>()
            .is_err());
    }
}
