//! Ed25519 keys and signatures in Nix's `name:base64` form, and the signed path fingerprint.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use thiserror::Error;

use crate::hash::Hash;
use crate::store_path::{StoreDir, StorePath};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a key or signature text was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("{what} is corrupt: expected '<name>:<base64>'")]
    Shape { what: &'static str },
    #[error("{what} '{name}' is not valid base64")]
    Base64 { what: &'static str, name: String },
    #[error("{what} '{name}' is not valid: {len} bytes instead of {expected}")]
    Size {
        what: &'static str,
        name: String,
        len: usize,
        expected: usize,
    },
    #[error("secret key '{name}' is not valid: its public half does not match its seed")]
    Mismatch { name: String },
    #[error("could not get random bytes for a new key: {0}")]
    Random(String),
}

fn split<'a>(what: &'static str, s: &'a str) -> Result<(&'a str, Vec<u8>), KeyError> {
    let (name, b64) = s.trim().split_once(':').ok_or(KeyError::Shape { what })?;
    if name.is_empty() || b64.is_empty() {
        return Err(KeyError::Shape { what });
    }
    let bytes = B64.decode(b64).map_err(|_| KeyError::Base64 {
        what,
        name: name.to_owned(),
    })?;
    Ok((name, bytes))
}

fn sized<const N: usize>(what: &'static str, name: &str, b: &[u8]) -> Result<[u8; N], KeyError> {
    b.try_into().map_err(|_| KeyError::Size {
        what,
        name: name.to_owned(),
        len: b.len(),
        expected: N,
    })
}

/// A signing key: `name:base64(seed ‖ public key)`.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}:…)", self.name)
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(name, &seed))
    }

    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Self {
        Self {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn to_public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    pub fn sign(&self, data: &[u8]) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(data).to_bytes(),
        }
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            self.name,
            B64.encode(self.key.to_keypair_bytes())
        )
    }
}

impl FromStr for SecretKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        const WHAT: &str = "secret key";
        let (name, bytes) = split(WHAT, s)?;
        let kp: [u8; 64] = sized(WHAT, name, &bytes)?;
        let key =
            ed25519_dalek::SigningKey::from_keypair_bytes(&kp).map_err(|_| KeyError::Mismatch {
                name: name.to_owned(),
            })?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }
}

/// A verifying key: `name:base64(32 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl PublicKey {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `sig` was made by this key over `data` (a different key name never verifies).
    pub fn verify(&self, data: &[u8], sig: &Signature) -> bool {
        sig.key_name == self.name
            && self
                .key
                .verify(data, &ed25519_dalek::Signature::from_bytes(&sig.bytes))
                .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        const WHAT: &str = "public key";
        let (name, bytes) = split(WHAT, s)?;
        let b: [u8; 32] = sized(WHAT, name, &bytes)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&b).map_err(|_| KeyError::Size {
            what: WHAT,
            name: name.to_owned(),
            len: 32,
            expected: 32,
        })?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }
}

/// A detached signature: `keyname:base64(64 bytes)`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    key_name: String,
    bytes: [u8; 64],
}

impl Signature {
    pub fn key_name(&self) -> &str {
        &self.key_name
    }
    pub fn bytes(&self) -> &[u8; 64] {
        &self.bytes
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, B64.encode(self.bytes))
    }
}

impl FromStr for Signature {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        const WHAT: &str = "signature";
        let (name, bytes) = split(WHAT, s)?;
        Ok(Self {
            key_name: name.to_owned(),
            bytes: sized(WHAT, name, &bytes)?,
        })
    }
}

/// `1;<path>;<nar hash as sha256:nix32>;<nar size>;<comma-separated sorted reference paths>`,
/// the string a path signature covers.
pub fn fingerprint<'a>(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &Hash,
    nar_size: u64,
    references: impl IntoIterator<Item = &'a StorePath>,
) -> String {
    let mut refs: Vec<String> = references
        .into_iter()
        .map(|r| store_dir.display(r))
        .collect();
    refs.sort();
    format!(
        "1;{};{nar_hash};{nar_size};{}",
        store_dir.display(path),
        refs.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let sk = SecretKey::from_seed("k-1", &[7u8; 32]);
        let pk = sk.to_public();
        let sig = sk.sign(b"data");
        assert!(pk.verify(b"data", &sig));
        assert!(!pk.verify(b"other", &sig));
        let sk2: SecretKey = sk.to_string().parse().unwrap();
        assert_eq!(sk2.to_public(), pk);
        let pk2: PublicKey = pk.to_string().parse().unwrap();
        assert_eq!(pk2, pk);
        let sig2: Signature = sig.to_string().parse().unwrap();
        assert_eq!(sig2, sig);
        assert!("nocolon".parse::<PublicKey>().is_err());
        assert!(":abc".parse::<PublicKey>().is_err());
        assert!("k:AAAA".parse::<PublicKey>().is_err());
    }
}
