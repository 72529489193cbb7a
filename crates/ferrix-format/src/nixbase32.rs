//! Nix's own base-32 encoding ("nix32"): a reversed little-endian bit stream over a 32-letter alphabet.

use thiserror::Error;

/// The 32 digits; `e`, `o`, `t` and `u` are left out.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Reverse lookup, 0xff for bytes outside the alphabet.
const DECODE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Why a nix32 string does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Nix32Error {
    #[error("invalid character {ch:?} at position {pos} of base-32 text")]
    InvalidChar { ch: char, pos: usize },
    #[error("base-32 text of length {got} cannot hold {bytes} bytes (expected length {expected})")]
    WrongLength {
        got: usize,
        expected: usize,
        bytes: usize,
    },
    #[error("base-32 text sets bits beyond the {bytes}-byte value")]
    Overflow { bytes: usize },
}

/// Characters needed for `len` bytes.
pub const fn encoded_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (len * 8 - 1) / 5 + 1
    }
}

/// Encode bytes as nix32; the last character carries the low bits of byte 0.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = Vec::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let lo = bytes[i] as u16 >> j;
        let hi = if i + 1 < bytes.len() {
            (bytes[i + 1] as u16) << (8 - j)
        } else {
            0
        };
        out.push(ALPHABET[((lo | hi) & 0x1f) as usize]);
    }
    // Only ASCII alphabet bytes were pushed.
    String::from_utf8(out).unwrap_or_default()
}

/// Decode nix32 text into exactly `bytes` bytes.
pub fn decode(text: &[u8], bytes: usize) -> Result<Vec<u8>, Nix32Error> {
    let expected = encoded_len(bytes);
    if text.len() != expected {
        return Err(Nix32Error::WrongLength {
            got: text.len(),
            expected,
            bytes,
        });
    }
    let mut out = vec![0u8; bytes];
    for (pos, &c) in text.iter().enumerate() {
        let d = DECODE[c as usize];
        if d == 0xff {
            return Err(Nix32Error::InvalidChar {
                ch: char::from(c),
                pos,
            });
        }
        let n = text.len() - 1 - pos;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= d << j;
        let carry = (d as u16) >> (8 - j);
        if i + 1 < bytes {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return Err(Nix32Error::Overflow { bytes });
        }
    }
    Ok(out)
}

/// Whether every byte is a nix32 digit.
pub fn is_nix32(text: &[u8]) -> bool {
    text.iter().all(|&c| DECODE[c as usize] != 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sha256_of_abc() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let s = encode(&bytes);
        assert_eq!(s, "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s");
        assert_eq!(decode(s.as_bytes(), 32).unwrap(), bytes);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            decode(b"e", 1),
            Err(Nix32Error::WrongLength { .. })
        ));
        assert!(matches!(
            decode(b"0e", 1),
            Err(Nix32Error::InvalidChar { ch: 'e', pos: 1 })
        ));
        // 1 byte = 2 digits = 10 bits: the top 2 bits must be clear.
        assert!(matches!(decode(b"z0", 1), Err(Nix32Error::Overflow { .. })));
    }
}
