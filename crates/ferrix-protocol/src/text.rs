//! Text from a peer made fit for a terminal: its colours and other escape sequences removed.

use std::borrow::Cow;

/// `s` without ANSI escape sequences (CSI such as colours, OSC such as hyperlinks, and
/// the short ones such as charset changes), as Nix filters a remote's messages before
/// showing them.
pub fn plain(s: &str) -> Cow<'_, str> {
    if !s.contains('\x1b') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters and intermediates, then one final byte in '@'..='~'.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ST (ESC \).
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' {
                        if chars.peek() == Some(&'\\') {
                            chars.next();
                        }
                        break;
                    }
                }
            }
            // Others: intermediates (' '..='/'), then one final character.
            Some(c) if (' '..='/').contains(&c) => {
                for c in chars.by_ref() {
                    if !(' '..='/').contains(&c) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_and_links_go_text_stays() {
        assert_eq!(plain("no escapes"), "no escapes");
        assert!(matches!(plain("no escapes"), Cow::Borrowed(_)));
        assert_eq!(
            plain("cannot add path '\x1b[35;1m/nix/store/x\x1b[0m' because"),
            "cannot add path '/nix/store/x' because"
        );
        assert_eq!(
            plain("\x1b]8;;http://x\x07link\x1b]8;;\x1b\\ end"),
            "link end"
        );
        assert_eq!(plain("a\x1b(Bb"), "ab");
        // Cut short: nothing is left of the escape, and no panic.
        assert_eq!(plain("tail \x1b["), "tail ");
        assert_eq!(plain("\x1b"), "");
    }
}
