//! The live status line shown on a terminal while derivations build: counts, the builds
//! running and the last line one of them printed, redrawn in place under the lines that stay.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferrix_build::{BuildFailure, Built, Reporter};
use ferrix_format::{StoreDir, StorePath};

/// What the status line shows.
#[derive(Debug, Default, Clone)]
pub struct Status {
    /// Builds: how many in all, done, failed.
    pub total: usize,
    pub done: usize,
    pub failed: usize,
    /// Paths fetched from caches: how many in all and done, NAR bytes in all and arrived,
    /// and the recent rate (bytes a second).
    pub fetches: usize,
    pub fetched: usize,
    pub bytes: u64,
    pub arrived: u64,
    pub rate: Option<f64>,
    /// Running builds by start order: (drv, short name).
    pub running: Vec<(StorePath, String)>,
    /// Paths being fetched, by start order: (path, name).
    pub copying: Vec<(StorePath, String)>,
    /// The last line any build printed.
    pub last_line: Option<String>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// The status line for a terminal `width` columns wide (cut to fit, never wrapped).
pub fn render(s: &Status, width: usize) -> String {
    let mut line = format!("[{}/{} built", s.done, s.total);
    if s.fetches > 0 {
        line += &format!(
            ", {}/{} copied ({:.1}/{:.1} MiB",
            s.fetched,
            s.fetches,
            mib(s.arrived),
            mib(s.bytes)
        );
        if let Some(r) = s.rate.filter(|_| !s.copying.is_empty()) {
            line += &format!(", {:.1} MiB/s", r / (1u64 << 20) as f64);
        }
        line += ")";
    }
    if s.failed > 0 {
        line += &format!(", {} failed", s.failed);
    }
    line += &format!(", {} running]", s.running.len() + s.copying.len());
    if !s.copying.is_empty() {
        let names: Vec<&str> = s.copying.iter().map(|(_, n)| n.as_str()).collect();
        line += &format!(" copying {}", names.join(", "));
        if !s.running.is_empty() {
            line += ";";
        }
    }
    if !s.running.is_empty() {
        let names: Vec<&str> = s.running.iter().map(|(_, n)| n.as_str()).collect();
        line += &format!(" building {}", names.join(", "));
        if let Some(l) = &s.last_line {
            line += ": ";
            line += l;
        }
    }
    cut(&line, width)
}

/// At most `width` characters of `s`, control characters dropped.
fn cut(s: &str, width: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(width).collect()
}

/// Shows progress on a terminal: `building '…'...` (and the builders' output with `logs`)
/// as lines that stay, with the status line below them.
pub struct StatusReporter {
    store_dir: StoreDir,
    logs: bool,
    checked: BTreeSet<StorePath>,
    state: Mutex<State>,
}

struct State {
    status: Status,
    names: BTreeMap<StorePath, String>,
    last_draw: Option<Instant>,
    /// (when, bytes arrived by then), over the last [`RATE_WINDOW`]: the rate shown.
    samples: std::collections::VecDeque<(Instant, u64)>,
}

/// What a run will do, for the counts of the status line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub builds: usize,
    pub fetches: usize,
    /// The NAR bytes of the paths fetched.
    pub fetch_bytes: u64,
}

/// The download rate is over this last stretch of time.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// Redraws for log lines come at most this often; everything else redraws at once.
const REDRAW: Duration = Duration::from_millis(100);

impl StatusReporter {
    pub fn new(
        store_dir: StoreDir,
        totals: Totals,
        logs: bool,
        checked: BTreeSet<StorePath>,
    ) -> Self {
        Self {
            store_dir,
            logs,
            checked,
            state: Mutex::new(State {
                status: Status {
                    total: totals.builds,
                    fetches: totals.fetches,
                    bytes: totals.fetch_bytes,
                    ..Status::default()
                },
                names: BTreeMap::new(),
                last_draw: None,
                samples: Default::default(),
            }),
        }
    }

    /// Clear the status line, print `permanent` lines, draw the status line again.
    fn draw(&self, st: &mut State, permanent: &[String]) {
        let width = terminal_width();
        let mut out = String::from("\r\x1b[K");
        for l in permanent {
            out += l;
            out += "\n";
        }
        out += &render(&st.status, width.saturating_sub(1));
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(out.as_bytes());
        let _ = e.flush();
        st.last_draw = Some(Instant::now());
    }

    /// Erase the status line for good (the run is over).
    pub fn clear(&self) {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(b"\r\x1b[K");
        let _ = e.flush();
    }
}

fn terminal_width() -> usize {
    rustix::termios::tcgetwinsize(std::io::stderr())
        .map(|w| w.ws_col as usize)
        .ok()
        .filter(|w| *w > 0)
        .unwrap_or(80)
}

impl Reporter for StatusReporter {
    fn started(&self, drv: &StorePath) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let name = ferrix_format::derivation::drv_name(drv).to_owned();
        st.names.insert(drv.clone(), name.clone());
        st.status.running.push((drv.clone(), name));
        let what = if self.checked.contains(drv) {
            "checking outputs of"
        } else {
            "building"
        };
        let line = format!("{what} '{}'...", self.store_dir.display(drv));
        self.draw(&mut st, &[line]);
    }

    fn started_on(&self, drv: &StorePath, machine: &str) {
        self.started(drv);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let line = format!(
            "building '{}' on '{machine}'...",
            self.store_dir.display(drv)
        );
        self.draw(&mut st, &[line]);
    }

    fn fetching(&self, path: &StorePath, from: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let name = path.name().to_owned();
        st.names.insert(path.clone(), name.clone());
        st.status.copying.push((path.clone(), name));
        let line = format!(
            "copying path '{}' from '{from}'...",
            self.store_dir.display(path)
        );
        self.draw(&mut st, &[line]);
    }

    fn transferred(&self, _path: &StorePath, bytes: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.status.arrived += bytes;
        let now = Instant::now();
        let arrived = st.status.arrived;
        st.samples.push_back((now, arrived));
        while st
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            st.samples.pop_front();
        }
        if let (Some((t0, b0)), Some((t1, b1))) = (st.samples.front(), st.samples.back()) {
            let secs = t1.duration_since(*t0).as_secs_f64();
            if secs > 0.2 {
                st.status.rate = Some((b1 - b0) as f64 / secs);
            }
        }
        if st.last_draw.is_none_or(|t| t.elapsed() >= REDRAW) {
            self.draw(&mut st, &[]);
        }
    }

    fn warn(&self, msg: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.draw(&mut st, &[format!("warning: {msg}")]);
    }

    fn log_line(&self, drv: &StorePath, line: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let name = st.names.get(drv).cloned().unwrap_or_default();
        let first = st.status.last_line.is_none();
        st.status.last_line = Some(format!("{name}> {line}").trim_end().to_owned());
        if self.logs {
            let keep = format!("{name}> {line}");
            self.draw(&mut st, &[keep]);
        } else if first || st.last_draw.is_none_or(|t| t.elapsed() >= REDRAW) {
            // A chatty builder does not get the terminal redrawn for every line.
            self.draw(&mut st, &[]);
        }
    }

    fn finished(&self, drv: &StorePath, result: Result<Built, &BuildFailure>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let fetch = st.status.copying.iter().any(|(p, _)| p == drv);
        st.status.running.retain(|(d, _)| d != drv);
        st.status.copying.retain(|(d, _)| d != drv);
        match result {
            Ok(_) if fetch => st.status.fetched += 1,
            Ok(_) => st.status.done += 1,
            Err(_) => st.status.failed += 1,
        }
        if st.status.running.is_empty() {
            st.status.last_line = None;
        }
        self.draw(&mut st, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_names_and_the_last_line() {
        let p = |n: &str| StorePath::from_base_name(&format!("{}-{n}", "a".repeat(32))).unwrap();
        let mut s = Status {
            total: 5,
            done: 2,
            ..Status::default()
        };
        assert_eq!(render(&s, 80), "[2/5 built, 0 running]");
        s.running = vec![(p("x.drv"), "x".into()), (p("y.drv"), "y".into())];
        s.failed = 1;
        s.last_line = Some("y> compiling\tmain.c".into());
        assert_eq!(
            render(&s, 80),
            "[2/5 built, 1 failed, 2 running] building x, y: y> compilingmain.c"
        );
        assert_eq!(render(&s, 10), "[2/5 built");
    }

    #[test]
    fn renders_fetches_with_their_bytes_and_rate() {
        let p = |n: &str| StorePath::from_base_name(&format!("{}-{n}", "a".repeat(32))).unwrap();
        let mut s = Status {
            total: 1,
            fetches: 3,
            fetched: 1,
            bytes: 30 << 20,
            arrived: 12 << 20,
            rate: Some((5 << 20) as f64),
            ..Status::default()
        };
        // The rate only while something is fetched.
        assert_eq!(
            render(&s, 120),
            "[0/1 built, 1/3 copied (12.0/30.0 MiB), 0 running]"
        );
        s.copying = vec![(p("zlib-1.3"), "zlib-1.3".into())];
        s.running = vec![(p("app.drv"), "app".into())];
        assert_eq!(
            render(&s, 120),
            "[0/1 built, 1/3 copied (12.0/30.0 MiB, 5.0 MiB/s), 2 running] copying zlib-1.3; building app"
        );
    }
}
