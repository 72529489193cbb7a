//! Version strings as Nix compares them (`compareVersions`, `splitVersion`,
//! `parseDrvName`): components are runs of digits or of other characters, `.` and `-`
//! separate them, numbers compare as numbers, and `pre` comes before anything.

use std::cmp::Ordering;

/// The next component of `s` from `*at` on, after any separators; empty at the end.
fn next_component<'a>(s: &'a str, at: &mut usize) -> &'a str {
    let b = s.as_bytes();
    while *at < b.len() && matches!(b[*at], b'.' | b'-') {
        *at += 1;
    }
    let start = *at;
    if *at < b.len() && b[*at].is_ascii_digit() {
        while *at < b.len() && b[*at].is_ascii_digit() {
            *at += 1;
        }
    } else {
        while *at < b.len() && !b[*at].is_ascii_digit() && !matches!(b[*at], b'.' | b'-') {
            *at += 1;
        }
    }
    &s[start..*at]
}

fn number(c: &str) -> Option<u128> {
    if c.is_empty() {
        return None;
    }
    c.parse().ok()
}

/// Whether component `a` comes before `b`.
fn component_less(a: &str, b: &str) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x < y,
        _ if a.is_empty() && number(b).is_some() => true,
        _ if a == "pre" && b != "pre" => true,
        _ if b == "pre" => false,
        // `2.3a` comes before `2.3.1`.
        (_, Some(_)) => true,
        (Some(_), _) => false,
        _ => a < b,
    }
}

pub fn compare(a: &str, b: &str) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let x = next_component(a, &mut i);
        let y = next_component(b, &mut j);
        if component_less(x, y) {
            return Ordering::Less;
        }
        if component_less(y, x) {
            return Ordering::Greater;
        }
    }
    Ordering::Equal
}

pub fn split(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let c = next_component(v, &mut at);
        if c.is_empty() {
            return out;
        }
        out.push(c);
    }
}

/// A derivation name's package name and version: the version starts after the first `-`
/// that is followed by something other than a letter.
pub fn parse_drv_name(s: &str) -> (&str, &str) {
    let b = s.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'-' && b.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return (&s[..i], &s[i + 1..]);
        }
    }
    (s, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_in_nix() {
        use Ordering::*;
        for (a, b, o) in [
            ("1.0", "2.3", Less),
            ("2.1", "2.3", Less),
            ("2.3", "2.3", Equal),
            ("2.5", "2.3", Greater),
            ("3.1", "2.3", Greater),
            ("2.3.1", "2.3", Greater),
            ("2.3.1", "2.3a", Greater),
            ("2.3pre1", "2.3", Less),
            ("2.3pre3", "2.3pre12", Less),
            ("2.3a", "2.3c", Less),
            ("2.3pre1", "2.3c", Less),
            ("2.3pre1", "2.3q", Less),
        ] {
            assert_eq!(compare(a, b), o, "{a} {b}");
        }
        assert_eq!(split("1.2-pre3a"), ["1", "2", "pre", "3", "a"]);
        assert_eq!(parse_drv_name("nix-0.12pre12876"), ("nix", "0.12pre12876"));
        assert_eq!(parse_drv_name("a-b-c-1.0"), ("a-b-c", "1.0"));
        assert_eq!(parse_drv_name("hello"), ("hello", ""));
    }
}
