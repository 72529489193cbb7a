//! The one place output goes: stdout for results, stderr for messages (capturable in tests).

use std::io::{self, Write};

/// Where a command writes. Commands never print directly; they go through this.
pub struct Shell {
    out: Box<dyn Write>,
    err: Box<dyn Write>,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shell")
    }
}

impl Shell {
    /// The process's own stdout (buffered; flushed at exit) and stderr.
    pub fn stdio() -> Self {
        Self {
            out: Box::new(io::BufWriter::with_capacity(256 * 1024, io::stdout())),
            err: Box::new(io::stderr()),
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
        let line = format!("{msg}\n");
        let _ = self.err.write_all(line.as_bytes());
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
