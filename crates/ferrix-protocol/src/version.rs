//! Protocol versions: `major << 8 | minor` on the wire, for both protocols.

use std::fmt;

/// A protocol version, ordered by major then minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
}

impl Version {
    pub const fn new(major: u8, minor: u8) -> Self {
        Self { major, minor }
    }

    /// `major << 8 | minor`, as sent.
    pub const fn to_wire(self) -> u64 {
        ((self.major as u64) << 8) | self.minor as u64
    }

    /// The version a peer sent; `None` when it has bits above the 16 a version uses.
    pub const fn from_wire(n: u64) -> Option<Self> {
        if n > 0xffff {
            return None;
        }
        Some(Self {
            major: (n >> 8) as u8,
            minor: (n & 0xff) as u8,
        })
    }

    /// How a raw version from the wire reads in a message: `2.7`, or hex when it is no version.
    pub fn describe_wire(n: u64) -> String {
        match Self::from_wire(n) {
            Some(v) => v.to_string(),
            None => format!("{n:#x}"),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        assert_eq!(Version::new(2, 7).to_wire(), 0x207);
        assert_eq!(Version::from_wire(0x122), Some(Version::new(1, 34)));
        assert_eq!(Version::from_wire(0x1_0000), None);
        assert!(Version::new(2, 8) > Version::new(2, 7));
        assert!(Version::new(3, 0) > Version::new(2, 255));
        assert_eq!(Version::describe_wire(0x208), "2.8");
        assert_eq!(Version::describe_wire(0x12345), "0x12345");
    }
}
