//! The one place output goes: stdout for results, stderr for messages (capturable in tests).

use std::io::{self, Write};

/// Where a command writes. Commands never print directly; they go through this.
pub struct Shell {
    out: Box<dyn Write>,
    err: Box<dyn Write>,
    /// Whether messages may keep their colours (stderr is a terminal that shows them);
    /// otherwise escape sequences are taken out, as Nix does (messages Nix code builds,
    /// such as the module system's, carry them).
    colours: bool,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shell")
    }
}

impl Shell {
    /// The process's own stdout (buffered; flushed at exit) and stderr.
    pub fn stdio() -> Self {
        let colours = io::IsTerminal::is_terminal(&io::stderr())
            && std::env::var("TERM").is_ok_and(|t| t != "dumb")
            && std::env::var_os("NO_COLOR").is_none();
        Self {
            out: Box::new(io::BufWriter::with_capacity(256 * 1024, io::stdout())),
            err: Box::new(io::stderr()),
            colours,
        }
    }

    /// Raw access to stdout, for binary data such as a NAR.
    pub fn out(&mut self) -> &mut dyn Write {
        &mut *self.out
    }

    /// A line of result text on stdout.
    pub fn println(&mut self, line: impl std::fmt::Display) -> io::Result<()> {
        writeln!(self.out, "{line}")
    }

    /// Result text on stdout without a newline (as Nix prints keys).
    pub fn print(&mut self, text: impl std::fmt::Display) -> io::Result<()> {
        write!(self.out, "{text}")
    }

    /// `error: …` on stderr.
    pub fn error(&mut self, msg: impl std::fmt::Display) {
        self.note(format_args!("error: {msg}"));
    }

    /// `warning: …` on stderr.
    pub fn warn(&mut self, msg: impl std::fmt::Display) {
        self.note(format_args!("warning: {msg}"));
    }

    /// A notice on stderr, written with one call (stderr is unbuffered; a collection prints
    /// one line per deleted path).
    pub fn note(&mut self, msg: impl std::fmt::Display) {
        let _ = self.out.flush();
        let line = filter_escapes(&format!("{msg}"), self.colours) + "\n";
        let _ = self.err.write_all(line.as_bytes());
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A message as Nix writes it to stderr: escape sequences taken out (colours kept when
/// `colours`), carriage returns dropped, and tabs turned into spaces up to the next multiple
/// of eight bytes written.
pub fn filter_escapes(s: &str, colours: bool) -> String {
    let b = s.as_bytes();
    let (mut out, mut i, mut col) = (Vec::with_capacity(b.len()), 0, 0usize);
    while i < b.len() {
        match b[i] {
            0x1b => {
                let start = i;
                i += 1;
                let mut last = 0;
                if b.get(i) == Some(&b'[') {
                    i += 1;
                    while b.get(i).is_some_and(|c| (0x30..=0x3f).contains(c)) {
                        i += 1;
                    }
                    while b.get(i).is_some_and(|c| (0x20..=0x2f).contains(c)) {
                        i += 1;
                    }
                    if let Some(&c) = b.get(i).filter(|c| (0x40..=0x7e).contains(*c)) {
                        last = c;
                        i += 1;
                    }
                } else if b.get(i).is_some_and(|c| (0x40..=0x5f).contains(c)) {
                    i += 1;
                }
                if colours && last == b'm' {
                    out.extend_from_slice(&b[start..i]);
                }
            }
            b'\t' => {
                i += 1;
                out.push(b' ');
                col += 1;
                while col % 8 != 0 {
                    out.push(b' ');
                    col += 1;
                }
            }
            b'\r' => i += 1,
            c => {
                out.push(c);
                col += 1;
                i += 1;
            }
        }
    }
    // Only whole escape sequences and ASCII were removed or added.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::filter_escapes;

    #[test]
    fn escapes_go_unless_colours_are_shown() {
        let s = "type \x1b[1;35m\"configuration\"\x1b[0m into \x1b[1mfoo\x1b[0m.\x1b]x";
        assert_eq!(
            filter_escapes(s, false),
            "type \"configuration\" into foo.x"
        );
        assert_eq!(
            filter_escapes(s, true),
            "type \x1b[1;35m\"configuration\"\x1b[0m into \x1b[1mfoo\x1b[0m.x"
        );
        assert_eq!(filter_escapes("a\tb\r\n", false), "a       b\n");
        assert_eq!(filter_escapes("é\x1b[", false), "é");
    }
}
