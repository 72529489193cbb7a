//! `ferrix machines`: the configured build machines (`builders`, the machines file), each
//! greeted once to show whether it answers and how fast.

use anyhow::Result;

use crate::settings::Settings;
use crate::shell::Shell;

pub fn run(settings: &Settings, shell: &mut Shell) -> Result<()> {
    let machines = crate::build::machines(settings)?;
    if machines.is_empty() {
        shell.note("no build machines are configured ('builders', or the machines file)");
        return Ok(());
    }
    // Only the store's directory is needed (the paths machines speak of): no store is
    // opened, so this works the same through a daemon.
    for m in &machines {
        let mut systems: Vec<&str> = m.systems.iter().map(String::as_str).collect();
        systems.sort();
        let features: Vec<String> = m.features().into_iter().collect();
        let state = match crate::remote::probe(m, &settings.store_dir) {
            Ok(t) => format!("up ({} ms)", t.as_millis()),
            Err(e) => format!("down: {}", crate::render(e.as_ref())),
        };
        shell.println(format!(
            "{}\n  systems: {}; max jobs: {}; speed factor: {}; features: {}{}\n  {state}",
            m.uri,
            systems.join(", "),
            m.max_jobs,
            m.speed_factor,
            if features.is_empty() {
                "none".to_owned()
            } else {
                features.join(", ")
            },
            if m.mandatory_features.is_empty() {
                String::new()
            } else {
                let mut f: Vec<&str> = m.mandatory_features.iter().map(String::as_str).collect();
                f.sort();
                format!(" (mandatory: {})", f.join(", "))
            },
        ))?;
    }
    Ok(())
}
