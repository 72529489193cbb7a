//! Hashes as Nix knows them: algorithms, digests, their textual forms, and streaming hashing.

use std::fmt;
use std::io;
use std::str::FromStr;

use base64::Engine as _;
use sha2::Digest as _;
use thiserror::Error;

use crate::nixbase32;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A hash algorithm Nix supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    pub const ALL: [HashAlgo; 4] = [Self::Md5, Self::Sha1, Self::Sha256, Self::Sha512];

    /// Digest size in bytes.
    pub const fn size(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// Nix's name for the algorithm (`md5`, `sha1`, `sha256`, `sha512`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    pub const fn base16_len(self) -> usize {
        self.size() * 2
    }

    pub const fn nix32_len(self) -> usize {
        nixbase32::encoded_len(self.size())
    }

    pub const fn base64_len(self) -> usize {
        (4 * self.size() / 3 + 3) & !3
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        match s {
            "md5" => Ok(Self::Md5),
            "sha1" => Ok(Self::Sha1),
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            _ => Err(HashError::UnknownAlgo(s.to_owned())),
        }
    }
}

/// Textual encodings of a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Base16,
    Nix32,
    Base64,
    /// `<algo>-<base64>`.
    Sri,
}

/// Why a hash text was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    #[error("unknown hash algorithm '{0}'")]
    UnknownAlgo(String),
    #[error("hash '{hash}' does not include a type, nor is the type otherwise known from context")]
    MissingAlgo { hash: String },
    #[error("hash '{hash}' should have type '{expected}'")]
    AlgoMismatch { hash: String, expected: HashAlgo },
    #[error("hash '{hash}' has wrong length for hash type '{algo}'")]
    WrongLength { hash: String, algo: HashAlgo },
    #[error("invalid base-16 hash '{hash}'")]
    BadBase16 { hash: String },
    #[error("invalid base-32 hash '{hash}'")]
    BadNix32 { hash: String },
    #[error("invalid base-64 hash '{hash}'")]
    BadBase64 { hash: String },
    #[error("SRI hash '{hash}' must be base-64")]
    SriNotBase64 { hash: String },
}

/// A digest together with its algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash {
    algo: HashAlgo,
    bytes: [u8; 64],
}

impl Hash {
    /// Wrap a digest; `None` when its length does not fit the algorithm.
    pub fn from_bytes(algo: HashAlgo, digest: &[u8]) -> Option<Self> {
        if digest.len() != algo.size() {
            return None;
        }
        let mut bytes = [0u8; 64];
        bytes[..digest.len()].copy_from_slice(digest);
        Some(Self { algo, bytes })
    }

    /// The all-zero hash (what Nix assumes for an empty `outputHash`).
    pub fn zero(algo: HashAlgo) -> Self {
        Self {
            algo,
            bytes: [0; 64],
        }
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn digest(&self) -> &[u8] {
        &self.bytes[..self.algo.size()]
    }

    /// Hash a byte string in one go.
    pub fn of(algo: HashAlgo, data: &[u8]) -> Self {
        let mut h = Hasher::new(algo);
        h.update(data);
        h.finish()
    }

    pub fn sha256(data: &[u8]) -> Self {
        Self::of(HashAlgo::Sha256, data)
    }

    pub fn to_base16(&self) -> String {
        let mut s = String::with_capacity(self.algo.base16_len());
        for b in self.digest() {
            s.push(char::from(HEX[(b >> 4) as usize]));
            s.push(char::from(HEX[(b & 15) as usize]));
        }
        s
    }

    pub fn to_nix32(&self) -> String {
        nixbase32::encode(self.digest())
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.digest())
    }

    /// `<algo>-<base64>`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, self.to_base64())
    }

    /// The bare digits in `enc` (SRI always carries its prefix).
    pub fn encode(&self, enc: Encoding) -> String {
        match enc {
            Encoding::Base16 => self.to_base16(),
            Encoding::Nix32 => self.to_nix32(),
            Encoding::Base64 => self.to_base64(),
            Encoding::Sri => self.to_sri(),
        }
    }

    /// `<algo>:<digits>` for base16/nix32/base64, `<algo>-<base64>` for SRI.
    pub fn encode_typed(&self, enc: Encoding) -> String {
        match enc {
            Encoding::Sri => self.to_sri(),
            _ => format!("{}:{}", self.algo, self.encode(enc)),
        }
    }

    /// Parse any form Nix accepts: `algo:digits`, `algo-base64` (SRI), or bare digits when
    /// `algo` is known from context. Bare digits are told apart by their length.
    pub fn parse(text: &str, algo: Option<HashAlgo>) -> Result<Self, HashError> {
        let (found, rest, sri) = if let Some((a, rest)) = text.split_once(':') {
            (Some(a.parse::<HashAlgo>()?), rest, false)
        } else if let Some((a, rest)) = text.split_once('-') {
            match a.parse::<HashAlgo>() {
                Ok(a) => (Some(a), rest, true),
                // Not an SRI prefix: treat the whole text as digits.
                Err(_) => (None, text, false),
            }
        } else {
            (None, text, false)
        };
        let algo = match (found, algo) {
            (Some(f), Some(a)) if f != a => {
                return Err(HashError::AlgoMismatch {
                    hash: text.to_owned(),
                    expected: a,
                })
            }
            (Some(f), _) => f,
            (None, Some(a)) => a,
            (None, None) => {
                return Err(HashError::MissingAlgo {
                    hash: text.to_owned(),
                })
            }
        };
        if sri {
            if rest.len() != algo.base64_len() {
                return Err(HashError::SriNotBase64 {
                    hash: text.to_owned(),
                });
            }
            return Self::decode_base64(algo, rest, text);
        }
        Self::decode_digits(algo, rest).map_err(|e| e.with_text(text))
    }

    /// Parse bare digits of a known algorithm, the encoding chosen by length.
    pub fn decode_digits(algo: HashAlgo, rest: &str) -> Result<Self, HashError> {
        let n = rest.len();
        if n == algo.base16_len() {
            let mut out = [0u8; 64];
            let b = rest.as_bytes();
            for i in 0..algo.size() {
                let hi = unhex(b[2 * i]);
                let lo = unhex(b[2 * i + 1]);
                match (hi, lo) {
                    (Some(h), Some(l)) => out[i] = (h << 4) | l,
                    _ => {
                        return Err(HashError::BadBase16 {
                            hash: rest.to_owned(),
                        })
                    }
                }
            }
            Ok(Self { algo, bytes: out })
        } else if n == algo.nix32_len() {
            let d = nixbase32::decode(rest.as_bytes(), algo.size()).map_err(|_| {
                HashError::BadNix32 {
                    hash: rest.to_owned(),
                }
            })?;
            Ok(Self::from_bytes(algo, &d).unwrap_or(Self::zero(algo)))
        } else if n == algo.base64_len() {
            Self::decode_base64(algo, rest, rest)
        } else {
            Err(HashError::WrongLength {
                hash: rest.to_owned(),
                algo,
            })
        }
    }

    fn decode_base64(algo: HashAlgo, digits: &str, whole: &str) -> Result<Self, HashError> {
        let d = B64.decode(digits).map_err(|_| HashError::BadBase64 {
            hash: whole.to_owned(),
        })?;
        Self::from_bytes(algo, &d).ok_or_else(|| HashError::WrongLength {
            hash: whole.to_owned(),
            algo,
        })
    }
}

impl HashError {
    /// Name the whole text the user gave rather than the digits alone.
    fn with_text(self, text: &str) -> Self {
        let t = text.to_owned();
        match self {
            Self::WrongLength { algo, .. } => Self::WrongLength { hash: t, algo },
            Self::BadBase16 { .. } => Self::BadBase16 { hash: t },
            Self::BadNix32 { .. } => Self::BadNix32 { hash: t },
            Self::BadBase64 { .. } => Self::BadBase64 { hash: t },
            other => other,
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_sri())
    }
}

/// Displays as `<algo>:<nix32>`, the form Nix uses in narinfo and path info.
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_nix32())
    }
}

/// XOR-fold a digest into `size` bytes (Nix's `compressHash`).
pub fn compress(digest: &[u8], size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    for (i, b) in digest.iter().enumerate() {
        out[i % size] ^= b;
    }
    out
}

/// A streaming hasher for any [`HashAlgo`]; also an [`io::Write`] sink.
#[derive(Clone)]
pub enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algo())
    }
}

impl Hasher {
    pub fn new(algo: HashAlgo) -> Self {
        match algo {
            HashAlgo::Md5 => Self::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => Self::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => Self::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => Self::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn algo(&self) -> HashAlgo {
        match self {
            Self::Md5(_) => HashAlgo::Md5,
            Self::Sha1(_) => HashAlgo::Sha1,
            Self::Sha256(_) => HashAlgo::Sha256,
            Self::Sha512(_) => HashAlgo::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Md5(h) => h.update(data),
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Hash {
        let algo = self.algo();
        let d: Vec<u8> = match self {
            Self::Md5(h) => h.finalize().to_vec(),
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
            Self::Sha512(h) => h.finalize().to_vec(),
        };
        Hash::from_bytes(algo, &d).unwrap_or(Hash::zero(algo))
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A hasher that also counts bytes: what a NAR hash and NAR size need together.
#[derive(Debug, Clone)]
pub struct HashSink {
    hasher: Hasher,
    len: u64,
}

impl HashSink {
    pub fn new(algo: HashAlgo) -> Self {
        Self {
            hasher: Hasher::new(algo),
            len: 0,
        }
    }
    pub fn finish(self) -> (Hash, u64) {
        (self.hasher.finish(), self.len)
    }
}

impl io::Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hash a file's bytes (a "flat" hash), reading it in large chunks.
pub fn hash_file(path: &std::path::Path, algo: HashAlgo) -> io::Result<Hash> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut h = Hasher::new(algo);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_round_trip() {
        let h = Hash::sha256(b"abc");
        for enc in [
            Encoding::Base16,
            Encoding::Nix32,
            Encoding::Base64,
            Encoding::Sri,
        ] {
            let typed = h.encode_typed(enc);
            assert_eq!(Hash::parse(&typed, None).unwrap(), h, "{typed}");
            if enc != Encoding::Sri {
                let bare = h.encode(enc);
                assert_eq!(Hash::parse(&bare, Some(HashAlgo::Sha256)).unwrap(), h);
            }
        }
    }

    #[test]
    fn errors_name_the_hash() {
        let e = Hash::parse("abcd", Some(HashAlgo::Sha256)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hash 'abcd' has wrong length for hash type 'sha256'"
        );
        assert!(matches!(
            Hash::parse("sha1:abcd", Some(HashAlgo::Sha256)),
            Err(HashError::AlgoMismatch { .. })
        ));
        assert!(matches!(
            Hash::parse("abcd", None),
            Err(HashError::MissingAlgo { .. })
        ));
    }

    #[test]
    fn fold_to_160_bits() {
        let d: Vec<u8> = (0u8..32).collect();
        let c = compress(&d, 20);
        assert_eq!(c[0], 20);
        assert_eq!(c[11], 11 ^ 31);
        assert_eq!(c[12], 12);
    }
}
