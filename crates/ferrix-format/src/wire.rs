//! Nix's framing primitives: little-endian u64s and length-prefixed, zero-padded byte strings.

use std::io::{self, Write};

/// Zero bytes that pad a string of `len` bytes to a multiple of 8.
pub const fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

pub fn write_u64<W: Write + ?Sized>(w: &mut W, n: u64) -> io::Result<()> {
    w.write_all(&n.to_le_bytes())
}

/// Length, bytes, padding.
pub fn write_bytes<W: Write + ?Sized>(w: &mut W, s: &[u8]) -> io::Result<()> {
    write_u64(w, s.len() as u64)?;
    w.write_all(s)?;
    w.write_all(&[0u8; 8][..padding(s.len() as u64)])
}

/// Append a framed string to a buffer (infallible).
pub fn push_bytes(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s);
    buf.extend_from_slice(&[0u8; 8][..padding(s.len() as u64)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let mut v = Vec::new();
        write_bytes(&mut v, b"abc").unwrap();
        assert_eq!(v, b"\x03\0\0\0\0\0\0\0abc\0\0\0\0\0");
        let mut w = Vec::new();
        push_bytes(&mut w, b"abc");
        assert_eq!(v, w);
        assert_eq!(padding(0), 0);
        assert_eq!(padding(8), 0);
        assert_eq!(padding(9), 7);
    }
}
