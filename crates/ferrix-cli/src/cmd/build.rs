//! `ferrix build`: realise derivations, link the results, print what was built.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use ferrix_format::json::Json;

use crate::settings::Settings;
use crate::shell::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to build: `DRV`, `DRV^OUT[,OUT…]` or `DRV!OUT`; with `--file` or `--expr`,
    /// attribute paths of the expression's value (none: the value itself).
    #[arg(required_unless_present_any = ["file", "expr"])]
    installables: Vec<String>,
    /// Build attributes of the value of this Nix file (a directory means its default.nix).
    #[arg(short = 'f', long, conflicts_with = "expr")]
    file: Option<PathBuf>,
    /// Build attributes of the value of this Nix expression.
    #[arg(long)]
    expr: Option<String>,
    /// Where to put the result link (`result` by default; other outputs get `-<output>`).
    #[arg(short = 'o', long, value_name = "PATH")]
    out_link: Option<PathBuf>,
    /// Do not create result links.
    #[arg(long)]
    no_link: bool,
    /// Print the output paths.
    #[arg(long)]
    print_out_paths: bool,
    /// Print what was built as JSON.
    #[arg(long)]
    json: bool,
    /// Only show what would be built.
    #[arg(long)]
    dry_run: bool,
    /// Build again although the outputs are valid, and report any difference.
    #[arg(long, conflicts_with = "repair")]
    check: bool,
    /// Build again and replace the outputs, which may be damaged.
    #[arg(long)]
    repair: bool,
    /// Show the builders' output.
    #[arg(short = 'L', long)]
    print_build_logs: bool,
    /// Builds to run at once (`max-jobs`), or `auto`.
    #[arg(short = 'j', long, value_name = "N", allow_hyphen_values = true)]
    max_jobs: Option<String>,
    /// Cores each builder may use (`NIX_BUILD_CORES`).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    cores: Option<String>,
    /// Go on with what does not depend on a failed build.
    #[arg(short = 'k', long)]
    keep_going: bool,
    /// Keep the build directory of failed builds.
    #[arg(short = 'K', long)]
    keep_failed: bool,
    /// Kill a builder that prints nothing for this many seconds.
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    max_silent_time: Option<String>,
    /// Kill a builder that runs longer than this many seconds.
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    timeout: Option<String>,
    /// Build what a cache claimed but could not deliver.
    #[arg(long)]
    fallback: bool,
    /// Use no substituters.
    #[arg(long)]
    offline: bool,
    /// Consider everything remembered of caches out of date (the narinfo disk cache is
    /// asked nothing).
    #[arg(long)]
    refresh: bool,
    /// Number further results from 2, as `nix-build` does (`result`, `result-2`), rather
    /// than from 1 as `nix build` does.
    #[arg(skip)]
    nix_build_links: bool,
}

/// The derivation outputs the attributes at `attrs` of `input`'s value hold (its own
/// derivations when there are none), as installables: `DRV^OUT,…`, the outputs of one
/// derivation together.
pub(crate) fn instantiate(
    input: &crate::evaluate::Input,
    auto_args: &crate::evaluate::Args,
    include: &[String],
    attrs: &[String],
    settings: &Settings,
) -> Result<Vec<String>> {
    let selected: Vec<Option<&str>> = if attrs.is_empty() {
        vec![None]
    } else {
        attrs.iter().map(|a| Some(a.as_str())).collect()
    };
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for attr in selected {
        let text = crate::evaluate::evaluate(
            crate::evaluate::Request {
                input,
                args: auto_args,
                attr_path: attr,
                always_call: true,
                output: crate::evaluate::Output::DrvPaths,
                read_only: crate::evaluate::ReadOnly::No,
            },
            crate::evaluate::eval_settings(include, settings),
            settings,
        )?;
        for line in text.lines() {
            let (drv, output) = line.split_once('!').unwrap_or((line, "out"));
            match grouped.iter_mut().find(|(d, _)| d == drv) {
                Some((_, outs)) if !outs.iter().any(|o| o == output) => {
                    outs.push(output.to_owned())
                }
                Some(_) => {}
                None => grouped.push((drv.to_owned(), vec![output.to_owned()])),
            }
        }
    }
    Ok(grouped
        .into_iter()
        .map(|(drv, outs)| format!("{drv}^{}", outs.join(",")))
        .collect())
}

impl Args {
    /// What `nix-build` asks of a build: these derivation outputs (`DRV!OUT`), linked at
    /// `out_link` (unless `None`), their paths printed; `flags` are `ferrix build`'s own.
    pub fn for_nix_build(
        installables: Vec<String>,
        out_link: Option<PathBuf>,
        flags: &[String],
    ) -> Result<Self> {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: Args,
        }
        let mut argv: Vec<String> = vec!["nix-build".into()];
        argv.extend(flags.iter().cloned());
        argv.push("--print-out-paths".into());
        match &out_link {
            Some(l) => {
                argv.push("-o".into());
                argv.push(l.to_string_lossy().into_owned());
            }
            None => argv.push("--no-link".into()),
        }
        argv.push("--".into());
        argv.extend(installables);
        let mut args = <Wrap as clap::Parser>::try_parse_from(argv)?.args;
        args.nix_build_links = true;
        Ok(args)
    }
}

/// Where the result link of output `name` of the `n`th installable goes: `result`, then
/// `result-2`… (`result-1`… for `ferrix build`), `-NAME` for outputs other than `out`.
fn link_name(a: &Args, n: usize, name: &str) -> PathBuf {
    let base = a
        .out_link
        .clone()
        .unwrap_or_else(|| PathBuf::from("result"));
    let mut link = base.into_os_string();
    if n > 0 {
        link.push(format!("-{}", if a.nix_build_links { n + 1 } else { n }));
    }
    if name != "out" {
        link.push(format!("-{name}"));
    }
    PathBuf::from(link)
}

/// Build `installables` (`.drv` paths, with `^outputs` or `!outputs`) by the daemon at
/// `url`: its log on standard error, the results linked (as roots it records) and printed
/// as a local build does.
fn through_daemon(
    a: &Args,
    settings: &Settings,
    url: &str,
    installables: &[String],
    shell: &mut Shell,
) -> Result<ExitCode> {
    use ferrix_protocol::worker::{BuildMode, DerivedPath, OutputsSpec};
    let sd = settings.store_dir.clone();
    let mut d = crate::stores::connect_daemon(url, settings)?;
    let mut targets = Vec::new();
    for i in installables {
        let (path, outs) = match i.split_once(['!', '^']) {
            Some((p, o)) => (p, Some(o)),
            None => (i.as_str(), None),
        };
        let drv_path = crate::ops::resolve_in(&sd, std::path::Path::new(sd.as_str()), path)?;
        let outputs = match outs {
            None | Some("*") | Some("") => OutputsSpec::All,
            Some(o) => OutputsSpec::Names(o.split(',').map(str::to_owned).collect()),
        };
        targets.push(DerivedPath::Built { drv_path, outputs });
    }
    let missing = d.query_missing(&targets)?;
    let what = if a.dry_run { "would be" } else { "will be" };
    if !missing.will_build.is_empty() {
        let n = missing.will_build.len();
        shell.note(if n == 1 {
            format!("this derivation {what} built:")
        } else {
            format!("these {n} derivations {what} built:")
        });
        for p in &missing.will_build {
            shell.note(format!("  {}", sd.display(p)));
        }
    }
    if a.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let mode = if a.check {
        BuildMode::Check
    } else if a.repair {
        BuildMode::Repair
    } else {
        BuildMode::Normal
    };
    if let Err(e) = d.build_paths(&targets, mode, crate::stores::log_to_stderr()) {
        shell.error(format!("{:#}", anyhow::Error::new(e)));
        return Ok(ExitCode::from(1));
    }
    let mut json = Vec::new();
    for (n, t) in targets.iter().enumerate() {
        let DerivedPath::Built { drv_path, outputs } = t else {
            unreachable!("only derivations are built here")
        };
        let outs: Vec<(String, ferrix_format::StorePath)> = d
            .output_map(drv_path)?
            .into_iter()
            .filter(|(name, _)| match outputs {
                OutputsSpec::All => true,
                OutputsSpec::Names(names) => names.contains(name),
            })
            .filter_map(|(name, p)| p.map(|p| (name, p)))
            .collect();
        for (name, p) in &outs {
            if !a.no_link {
                crate::stores::daemon_root(&mut d, &sd, p, &link_name(a, n, name))?;
            }
            if a.print_out_paths {
                shell.println(sd.display(p))?;
            }
        }
        json.push(Json::Object(vec![
            ("drvPath".to_owned(), Json::String(sd.display(drv_path))),
            (
                "outputs".to_owned(),
                Json::Object(
                    outs.iter()
                        .map(|(k, p)| (k.clone(), Json::String(sd.display(p))))
                        .collect(),
                ),
            ),
        ]));
    }
    if a.json {
        shell.println(Json::Array(json).compact())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: Args, settings: &Settings, shell: &mut Shell) -> Result<ExitCode> {
    let mut settings = settings.clone();
    // Each flag is `--NAME` of the setting it stands for.
    for (name, v) in [
        ("max-jobs", a.max_jobs.clone()),
        ("cores", a.cores.clone()),
        ("max-silent-time", a.max_silent_time.clone()),
        ("timeout", a.timeout.clone()),
        ("keep-going", a.keep_going.then(|| "true".to_owned())),
        ("keep-failed", a.keep_failed.then(|| "true".to_owned())),
        ("fallback", a.fallback.then(|| "true".to_owned())),
        ("substitute", a.offline.then(|| "false".to_owned())),
        (
            "narinfo-cache-positive-ttl",
            a.refresh.then(|| "0".to_owned()),
        ),
        (
            "narinfo-cache-negative-ttl",
            a.refresh.then(|| "0".to_owned()),
        ),
        ("narinfo-cache-meta-ttl", a.refresh.then(|| "0".to_owned())),
        ("tarball-ttl", a.refresh.then(|| "0".to_owned())),
    ] {
        if let Some(v) = v {
            settings.conf.set(name, &v, &format!("--{name}"))?;
        }
    }
    let installables = match (&a.file, &a.expr) {
        (None, None) => a.installables.clone(),
        (file, expr) => {
            let input = match (file, expr) {
                (Some(f), _) => crate::evaluate::Input::File(f.clone()),
                (None, Some(e)) => crate::evaluate::Input::Expr(e.clone()),
                (None, None) => unreachable!("matched above"),
            };
            let found = instantiate(
                &input,
                &crate::evaluate::Args::new(),
                &[],
                &a.installables,
                &settings,
            )?;
            if found.is_empty() {
                anyhow::bail!("the expression holds no derivation to build");
            }
            found
        }
    };
    if let Some((url, _)) = settings.daemon() {
        let url = url.to_owned();
        return through_daemon(&a, &settings, &url, &installables, shell);
    }
    let store = Arc::new(settings.open_store()?);
    let wanted = installables
        .iter()
        .map(|i| crate::build::parse_installable(&store, i))
        .collect::<Result<Vec<_>>>()?;
    let mode = crate::build::RunMode {
        logs: a.print_build_logs,
        dry_run: a.dry_run,
        mode: if a.check {
            ferrix_build::BuildMode::Check
        } else if a.repair {
            ferrix_build::BuildMode::Repair
        } else {
            ferrix_build::BuildMode::Normal
        },
    };
    let (plan, outcome) =
        crate::build::realise(&settings, store.clone(), &wanted, &[], mode, shell)?;
    if a.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(o) = &outcome {
        if !o.success() {
            crate::build::report_failures(&store, &plan, o, shell);
            return Ok(ExitCode::from(o.exit_status() as u8));
        }
    }
    let mut json = Vec::new();
    for (n, w) in wanted.iter().enumerate() {
        let outs = crate::build::wanted_outputs(&store, w)?;
        for (name, p) in &outs {
            if !a.no_link {
                let link = link_name(&a, n, name);
                ferrix_store::gc::add_perm_root(&store, p, &link)?;
            }
            if a.print_out_paths {
                shell.println(store.print(p))?;
            }
        }
        json.push(Json::Object(vec![
            ("drvPath".to_owned(), Json::String(store.print(&w.0))),
            (
                "outputs".to_owned(),
                Json::Object(
                    outs.iter()
                        .map(|(k, p)| (k.clone(), Json::String(store.print(p))))
                        .collect(),
                ),
            ),
        ]));
    }
    if a.json {
        shell.println(Json::Array(json).compact())?;
    }
    Ok(ExitCode::SUCCESS)
}
