//! `builtins.fetchGit` of local repositories (paths, `file://` URLs): the tree of a
//! revision (as `git archive` gives it), or the tracked files of a dirty working tree, added
//! to the store as `source` with what Nix says about it (`rev`, `revCount`, `narHash`…).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

use crate::error::{ErrorKind, EvalError};
use crate::eval::{Coerce, Evaluator};
use crate::symbol::Sym;
use crate::syntax::Span;
use crate::value::{Attrs, Context, ContextElem, NixString, Value};

type Result<T> = std::result::Result<T, EvalError>;

fn other(msg: String, span: Span) -> EvalError {
    EvalError::new(ErrorKind::Other(msg)).at(span)
}

/// What `fetchGit` was asked for.
struct Request {
    repo: PathBuf,
    rev: Option<String>,
    git_ref: Option<String>,
    name: String,
    /// Submodules' files too, at the commits the tree records (or as checked out, for a
    /// working tree).
    submodules: bool,
}

fn request(ev: &mut Evaluator, v: &Value, span: Span) -> Result<Request> {
    let mut req = Request {
        repo: PathBuf::new(),
        rev: None,
        git_ref: None,
        name: "source".into(),
        submodules: false,
    };
    let url = match ev.force(v)? {
        Value::Attrs(a) => {
            let string = |ev: &mut Evaluator, key: &str| -> Result<Option<String>> {
                match a.get(Sym::intern(key)) {
                    Some(v) => Ok(Some(
                        ev.coerce_to_string(v, Coerce::Plain, span)?.s.to_string(),
                    )),
                    None => Ok(None),
                }
            };
            for (k, _) in a.iter() {
                let k = k.name();
                if !matches!(
                    &*k,
                    "url" | "rev" | "ref" | "name" | "submodules" | "shallow" | "allRefs"
                ) {
                    return Err(other(
                        format!("unsupported argument '{k}' to 'fetchGit'"),
                        span,
                    ));
                }
            }
            if let Some(s) = a.get(Sym::intern("submodules")) {
                req.submodules = ev.expect_bool(s, span)?;
            }
            req.rev = string(ev, "rev")?;
            req.git_ref = string(ev, "ref")?;
            if let Some(n) = string(ev, "name")? {
                req.name = n;
            }
            string(ev, "url")?.ok_or_else(|| {
                EvalError::new(ErrorKind::MissingAttr { name: "url".into() }).at(span)
            })?
        }
        v => ev.coerce_to_string(&v, Coerce::Plain, span)?.s.to_string(),
    };
    let path = url
        .strip_prefix("git+file://")
        .or_else(|| url.strip_prefix("file://"))
        .unwrap_or(&url);
    if !path.starts_with('/') {
        return Err(other(
            format!("fetching Git repository '{url}' is not supported: only local repositories (paths and file:// URLs) are read during evaluation"),
            span,
        ));
    }
    if let Some(rev) = &req.rev {
        if rev.len() != 40 || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(other(
                format!("fetchGit: '{rev}' is not a full commit hash (40 hexadecimal digits)"),
                span,
            ));
        }
    }
    req.repo = PathBuf::from(path);
    Ok(req)
}

/// `git -C repo ARGS`: its standard output, or an error saying what failed.
fn git(ev: &Evaluator, repo: &Path, args: &[&str], span: Span) -> Result<Vec<u8>> {
    let out = Command::new(&ev.settings.git)
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(|e| {
            other(
                format!("fetchGit: running '{}': {e}", ev.settings.git.display()),
                span,
            )
        })?;
    if !out.status.success() {
        return Err(other(
            format!(
                "fetchGit: 'git {}' in '{}' failed: {}",
                args.join(" "),
                repo.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            span,
        ));
    }
    Ok(out.stdout)
}

fn git_line(ev: &Evaluator, repo: &Path, args: &[&str], span: Span) -> Result<String> {
    Ok(String::from_utf8_lossy(&git(ev, repo, args, span)?)
        .trim()
        .to_owned())
}

pub(crate) fn fetch_git(ev: &mut Evaluator, a: &[Value], span: Span) -> Result<Value> {
    let req = request(ev, &a[0], span)?;
    let key = format!(
        "{}\0{:?}\0{:?}\0{}\0{}",
        req.repo.display(),
        req.rev,
        req.git_ref,
        req.name,
        req.submodules
    );
    if let Some(v) = ev.fetched.get(&key) {
        return Ok(v.clone());
    }
    let repo = &req.repo;
    let has_commits = git(
        ev,
        repo,
        &["rev-parse", "--verify", "--quiet", "HEAD"],
        span,
    )
    .is_ok();
    // Without a revision or ref, a working tree with uncommitted changes to tracked files
    // is taken as it is (and said to be dirty), as Nix does.
    let dirty = req.rev.is_none()
        && req.git_ref.is_none()
        && (!has_commits
            || !git(
                ev,
                repo,
                &["status", "--porcelain", "--untracked-files=no"],
                span,
            )?
            .is_empty());
    let scratch = crate::derivation::ScratchDir::new(&ev.settings.tmp_dir)
        .map_err(|e| other(format!("making a scratch directory: {e}"), span))?;
    let tree = scratch.path().join("tree");
    let (rev, rev_count, last_modified) = if dirty {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("warning: Git tree '{}' is dirty", repo.display());
        }
        copy_tracked(ev, repo, &tree, req.submodules, span)?;
        let last = if has_commits {
            git_line(
                ev,
                repo,
                &["log", "-1", "--format=%ct", "--no-show-signature", "HEAD"],
                span,
            )?
            .parse()
            .unwrap_or(0)
        } else {
            0
        };
        ("0".repeat(40), 0, last)
    } else {
        let rev = match &req.rev {
            Some(r) => r.clone(),
            None => {
                let r = req.git_ref.as_deref().unwrap_or("HEAD");
                git_line(
                    ev,
                    repo,
                    &["rev-parse", "--verify", &format!("{r}^{{commit}}")],
                    span,
                )?
            }
        };
        unpack_revision(ev, repo, &rev, &tree, req.submodules, span)?;
        let count = git_line(ev, repo, &["rev-list", "--count", &rev], span)?
            .parse()
            .unwrap_or(0);
        let last = git_line(
            ev,
            repo,
            &["log", "-1", "--format=%ct", "--no-show-signature", &rev],
            span,
        )?
        .parse()
        .unwrap_or(0);
        (rev, count, last)
    };
    let (nar_hash, _) = ferrix_format::nar::hash_path(&tree, ferrix_format::HashAlgo::Sha256)
        .map_err(|e| other(format!("fetchGit: hashing the tree: {e}"), span))?;
    let store = ev.store().map_err(|e| e.at(span))?;
    let p = store
        .add_fetched(&tree, &req.name)
        .map_err(|e| EvalError::store(e).at(span))?;
    let out: Rc<str> = store.store_dir().display(&p).into();
    let str_value = |s: String| Value::string(s);
    let v = Value::attrs(Attrs::from_unsorted(vec![
        (Sym::intern("lastModified"), Value::Int(last_modified)),
        (
            Sym::intern("lastModifiedDate"),
            str_value(utc_timestamp(last_modified)),
        ),
        (Sym::intern("narHash"), str_value(nar_hash.to_sri())),
        (
            Sym::intern("outPath"),
            Value::String(Rc::new(NixString {
                s: compact_str::CompactString::from(&*out),
                context: Context::from([ContextElem::Plain(out)]),
            })),
        ),
        (Sym::intern("shortRev"), str_value(rev[..7].to_owned())),
        (Sym::intern("rev"), str_value(rev)),
        (Sym::intern("revCount"), Value::Int(rev_count)),
        (Sym::intern("submodules"), Value::Bool(req.submodules)),
    ]));
    ev.fetched.insert(key, v.clone());
    Ok(v)
}

/// The tree of commit `rev` of `repo` at `to`; with `submodules`, each submodule's tree at
/// the commit recorded for it, from its checkout in `repo`, and theirs in turn.
fn unpack_revision(
    ev: &Evaluator,
    repo: &Path,
    rev: &str,
    to: &Path,
    submodules: bool,
    span: Span,
) -> Result<()> {
    let archive = git(ev, repo, &["archive", "--format=tar", rev], span)?;
    std::fs::create_dir_all(to)
        .and_then(|()| tar::Archive::new(&archive[..]).unpack(to))
        .map_err(|e| other(format!("fetchGit: unpacking revision {rev}: {e}"), span))?;
    if !submodules {
        return Ok(());
    }
    // Entries of mode 160000 are submodules: `<mode> commit <hash>\t<path>`.
    let listing = git(ev, repo, &["ls-tree", "-r", "-z", rev], span)?;
    for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        let Some((meta, path)) = entry.split_once('\t') else {
            continue;
        };
        let mut fields = meta.split(' ');
        if fields.next() != Some("160000") {
            continue;
        }
        let Some(commit) = fields.nth(1) else {
            continue;
        };
        let sub = repo.join(path);
        if !sub.join(".git").exists() {
            return Err(other(
                format!(
                    "fetchGit: submodule '{path}' of '{}' is not checked out there",
                    repo.display()
                ),
                span,
            ));
        }
        unpack_revision(ev, &sub, commit, &to.join(path), true, span)?;
    }
    Ok(())
}

/// The files Git tracks in the working tree of `repo`, as they are now, copied to `to`
/// (with `submodules`, those of its submodules' working trees too).
fn copy_tracked(
    ev: &Evaluator,
    repo: &Path,
    to: &Path,
    submodules: bool,
    span: Span,
) -> Result<()> {
    let mut args = vec!["ls-files", "-z"];
    if submodules {
        args.push("--recurse-submodules");
    }
    let listing = git(ev, repo, &args, span)?;
    let io = |what: &str, p: &Path, e: std::io::Error| {
        other(format!("fetchGit: {what} '{}': {e}", p.display()), span)
    };
    std::fs::create_dir_all(to).map_err(|e| io("creating", to, e))?;
    for name in listing.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let rel = Path::new(std::str::from_utf8(name).map_err(|_| {
            other(
                format!("fetchGit: a file name in '{}' is not UTF-8", repo.display()),
                span,
            )
        })?);
        let (from, dest) = (repo.join(rel), to.join(rel));
        let meta = match std::fs::symlink_metadata(&from) {
            Ok(m) => m,
            // Deleted in the working tree: not there, as in Nix.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("reading", &from, e)),
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).map_err(|e| io("reading", &from, e))?;
            std::os::unix::fs::symlink(target, &dest).map_err(|e| io("writing", &dest, e))?;
        } else if meta.is_file() {
            std::fs::copy(&from, &dest).map_err(|e| io("copying", &from, e))?;
        }
        // A directory here is a submodule not asked for, which is not copied.
    }
    Ok(())
}

/// `%Y%m%d%H%M%S` of a Unix time, in UTC.
fn utc_timestamp(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(super::utc_timestamp(0), "19700101000000");
        assert_eq!(super::utc_timestamp(1_577_934_245), "20200102030405");
        assert_eq!(super::utc_timestamp(951_782_400), "20000229000000");
        assert_eq!(super::utc_timestamp(1_796_608_597), "20261207015637");
    }
}
