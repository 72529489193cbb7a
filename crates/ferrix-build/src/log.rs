//! Build logs where Nix keeps them: `<log dir>/drvs/<first 2 chars>/<rest of the drv name>`,
//! bzip2-compressed (`.bz2`) unless `compress-build-log` is off; and writing one from the
//! builder's output as it comes.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferrix_format::StorePath;

use crate::executor::Reporter;

/// Where build logs are kept, and whether (`keep-build-log`, `compress-build-log`).
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub dir: PathBuf,
    pub compress: bool,
    /// `keep-build-log`: without it, builds write no log file.
    pub keep: bool,
}

impl LogSettings {
    /// The log writer of `drv`'s build: its file made (and the directory it is in), or
    /// one that keeps nothing.
    pub(crate) fn writer(&self, drv: &StorePath) -> Result<LogWriter, (&'static str, io::Error)> {
        if !self.keep {
            return Ok(LogWriter {
                file: None,
                compress: false,
                out: None,
            });
        }
        LogWriter::create(&log_path(&self.dir, drv, self.compress), self.compress)
    }
}

/// Where the log of `drv` goes.
pub fn log_path(log_dir: &Path, drv: &StorePath, compressed: bool) -> PathBuf {
    let base = drv.to_string();
    let (a, b) = base.split_at(2);
    let mut p = log_dir.join("drvs").join(a).join(b);
    if compressed {
        p.as_mut_os_string().push(".bz2");
    }
    p
}

/// The log of `drv`, decompressed; `None` when there is none.
pub fn read_log(log_dir: &Path, drv: &StorePath) -> std::io::Result<Option<Vec<u8>>> {
    let bz = log_path(log_dir, drv, true);
    match std::fs::File::open(&bz) {
        Ok(f) => {
            let mut out = Vec::new();
            bzip2::read::MultiBzDecoder::new(f).read_to_end(&mut out)?;
            return Ok(Some(out));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::read(log_path(log_dir, drv, false)) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the log reader shares with the waiting task: when the builder last wrote.
pub(crate) struct LogState {
    pub(crate) last_activity: Instant,
    /// Bytes of output read so far.
    pub(crate) read: u64,
}

/// How long the log may be silent after the builder's process group has ended before it is
/// given up: only processes that escaped the group can still be writing.
pub(crate) const LOG_GRACE: Duration = Duration::from_millis(500);

/// How long the reader may stall (behind a slow consumer of the log) while output the
/// builder wrote before it ended is still unread.
pub(crate) const LOG_STALL: Duration = Duration::from_secs(5);

/// How long the log is read at most after the builder's process group has ended.
pub(crate) const LOG_DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// A build log file, bzip2-compressed or not. The compressor (and its large buffers) is made
/// only when the builder writes something: many builders print nothing.
pub(crate) struct LogWriter {
    file: Option<fs::File>,
    compress: bool,
    out: Option<Box<dyn Write + Send>>,
}

/// A bzip2 stream with nothing in it: what a compressed empty log holds.
const EMPTY_BZ2: &[u8] = b"BZh1\x17\x72\x45\x38\x50\x90\x00\x00\x00\x00";

impl LogWriter {
    pub(crate) fn create(path: &Path, compress: bool) -> Result<Self, (&'static str, io::Error)> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| ("creating the log directory", e))?;
        }
        let file = fs::File::create(path).map_err(|e| ("creating the log file", e))?;
        Ok(Self {
            file: Some(file),
            compress,
            out: None,
        })
    }

    pub(crate) fn write(&mut self, data: &[u8]) {
        // The end of the stream comes as an empty read: it must not make the compressor.
        if data.is_empty() {
            return;
        }
        if self.out.is_none() {
            let Some(file) = self.file.take() else { return };
            self.out = Some(if self.compress {
                // Level 1: logs compress well anyway, and it needs the smallest buffers.
                Box::new(bzip2::write::BzEncoder::new(
                    io::BufWriter::new(file),
                    bzip2::Compression::fast(),
                ))
            } else {
                Box::new(io::BufWriter::new(file))
            });
        }
        if let Some(o) = self.out.as_mut() {
            let _ = o.write_all(data);
        }
    }

    /// Remove the log of a build that never started.
    pub(crate) fn discard(mut self, path: &Path) {
        self.out = None;
        self.file = None;
        let _ = fs::remove_file(path);
    }

    /// End the log (dropping it does the same: a build that never started leaves an empty
    /// log, not a broken one).
    pub(crate) fn finish(self) {}
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        match (self.out.take(), self.file.take()) {
            // Dropping the encoder ends the bzip2 stream.
            (Some(mut o), _) => {
                let _ = o.flush();
            }
            (None, Some(mut f)) if self.compress => {
                let _ = f.write_all(EMPTY_BZ2);
            }
            _ => {}
        }
    }
}

/// Copy the builder's output into its log, line by line, noting the time of the last
/// output. Ends when every writer of the pipe is gone.
pub(crate) async fn copy_log(
    rx: tokio::net::unix::pipe::Receiver,
    mut log: LogWriter,
    state: &Mutex<LogState>,
    reporter: &(dyn Reporter + Send + Sync),
    drv: &StorePath,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut r = tokio::io::BufReader::new(rx);
    let mut line = Vec::new();
    loop {
        line.clear();
        // The stop comes first: a writer that never pauses must not keep it from being seen.
        let stopped = tokio::select! {
            biased;
            _ = &mut stop => true,
            read = r.read_until(b'\n', &mut line) => matches!(read, Ok(0) | Err(_)),
        };
        if stopped {
            // What a stopped read had taken in so far still belongs to the log.
            log.write(&line);
            break;
        }
        log.write(&line);
        let text = String::from_utf8_lossy(&line);
        reporter.log_line(drv, text.trim_end_matches('\n'));
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.last_activity = Instant::now();
        st.read += line.len() as u64;
    }
    log.finish();
}

/// Keep `data` as the log of `drv` (a log a client hands over, `nix store copy-log`):
/// written aside, then renamed into place, compressed as `settings` say.
pub fn store_log(settings: &LogSettings, drv: &StorePath, data: &mut dyn Read) -> io::Result<()> {
    let dest = log_path(&settings.dir, drv, settings.compress);
    let dir = dest.parent().unwrap_or(&settings.dir);
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    if settings.compress {
        let mut enc = bzip2::write::BzEncoder::new(&mut tmp, bzip2::Compression::default());
        io::copy(data, &mut enc)?;
        enc.finish()?;
    } else {
        io::copy(data, &mut tmp)?;
    }
    tmp.persist(&dest).map_err(|e| e.error)?;
    // The other form of the log, if any, is older.
    let other = log_path(&settings.dir, drv, !settings.compress);
    match std::fs::remove_file(other) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn unbz2(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        bzip2::read::BzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn an_empty_log_is_the_empty_stream_without_a_compressor() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b.bz2");
        let w0 = LogWriter::create(&d.path().join("never.bz2"), true).unwrap();
        // A build that never started: its log is still a whole (empty) stream.
        drop(w0);
        assert_eq!(fs::read(d.path().join("never.bz2")).unwrap(), EMPTY_BZ2);
        let mut w = LogWriter::create(&p, true).unwrap();
        // What the end of the builder's output looks like to the writer.
        w.write(b"");
        assert!(w.out.is_none(), "an empty write made the compressor");
        w.finish();
        let got = fs::read(&p).unwrap();
        assert_eq!(got, EMPTY_BZ2);
        assert!(unbz2(&got).is_empty());
    }

    #[test]
    fn a_log_with_lines_decompresses_to_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.bz2");
        let mut w = LogWriter::create(&p, true).unwrap();
        w.write(b"one\n");
        w.write(b"");
        w.write(b"two\n");
        w.finish();
        assert_eq!(unbz2(&fs::read(&p).unwrap()), b"one\ntwo\n");
        let p = d.path().join("plain");
        let mut w = LogWriter::create(&p, false).unwrap();
        w.write(b"three\n");
        w.finish();
        assert_eq!(fs::read(&p).unwrap(), b"three\n");
    }
}
