//! What a daemon's client is shown of its builds and fetches: activities and their log
//! lines, as Nix's daemon sends them.

use std::collections::BTreeMap;

use ferrix_format::StorePath;
use ferrix_protocol::worker::StderrMsg;
use ferrix_store::LocalStore;

use crate::machine::Progress;

/// The build activities a session's client is shown, as Nix's daemon shows them: one per
/// build, its log lines as its results, so a client shows the status line or the log lines
/// it shows for a local build.
#[derive(Default)]
pub(super) struct Activities {
    pub(super) open: BTreeMap<StorePath, u64>,
}

/// Activity ids unique in this process, as Nix makes them: the pid above, a count below.
fn next_activity() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    (u64::from(std::process::id()) << 32) + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Activities {
    /// What the client is sent for `p`, if anything.
    pub(super) fn message(&mut self, store: &LocalStore, p: Progress) -> Option<StderrMsg> {
        use ferrix_protocol::worker::stderr::{activity, result_type, verbosity};
        use ferrix_protocol::worker::Field;
        Some(match p {
            Progress::Started(drv, machine) => {
                let id = next_activity();
                let printed = store.print(&drv);
                let text = match &machine {
                    Some(m) => format!("building '{printed}' on '{m}'"),
                    None => format!("building '{printed}'"),
                };
                self.open.insert(drv, id);
                StderrMsg::StartActivity {
                    id,
                    level: verbosity::INFO,
                    kind: activity::BUILD,
                    text,
                    fields: vec![
                        Field::Str(printed),
                        Field::Str(machine.unwrap_or_default()),
                        Field::Int(1),
                        Field::Int(1),
                    ],
                    parent: 0,
                }
            }
            Progress::Line(drv, line) => match self.open.get(&drv) {
                Some(&id) => StderrMsg::Result {
                    id,
                    kind: result_type::BUILD_LOG_LINE,
                    fields: vec![Field::Str(line)],
                },
                None => StderrMsg::Next(format!("{line}\n")),
            },
            Progress::Fetching(path, from) => {
                let id = next_activity();
                let printed = store.print(&path);
                self.open.insert(path, id);
                StderrMsg::StartActivity {
                    id,
                    level: verbosity::INFO,
                    kind: activity::SUBSTITUTE,
                    text: format!("copying path '{printed}' from '{from}'"),
                    fields: vec![Field::Str(printed), Field::Str(from)],
                    parent: 0,
                }
            }
            Progress::Ended(drv) => StderrMsg::StopActivity(self.open.remove(&drv)?),
            Progress::Warning(w) => StderrMsg::Next(format!("warning: {w}\n")),
        })
    }
}
