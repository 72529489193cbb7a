//! Remote builds with real Nix on the other side, both ways, over `ssh://localhost`, which
//! Nix and Ferrix both run here without ssh: the machine is a chroot store of its own, so
//! every input and output travels over the serve protocol.

mod common;

use std::fs;
use std::path::Path;

use common::{ok, Links, Nix};

const EXPR: &str = r#"
let
  dep = derivation { name = "dep"; system = builtins.currentSystem; builder = "/bin/sh";
    args = ["-c" "echo dep > $out; echo building-dep"]; };
in derivation { name = "top"; system = builtins.currentSystem; builder = "/bin/sh";
  args = ["-c" "echo top > $out; /bin/cat ${dep} >> $out; echo ${dep} >> $out; echo log-from-top"]; }
"#;

/// A machine's chroot store is built in through the sandbox (Nix and Ferrix both turn it on
/// for such a store): it needs the host's shell and libraries.
fn allow_host_tools(nix: &Nix) {
    let paths: Vec<&str> = ["/bin", "/usr", "/lib", "/lib64"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect();
    let conf = nix.root.path().join("etc/nix.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text += &format!("sandbox-paths = {}\n", paths.join(" "));
    fs::write(conf, text).unwrap();
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap()
}

#[test]
fn a_real_nix_master_builds_on_a_ferrix_machine() {
    real_nix_master_on_ferrix("ssh", "nix-store");
}

#[test]
fn a_real_nix_master_builds_on_a_ferrix_machine_over_ssh_ng() {
    real_nix_master_on_ferrix("ssh-ng", "nix-daemon");
}

#[test]
fn a_ferrix_master_builds_on_a_real_nix_machine() {
    ferrix_master_on_real_nix("ssh");
}

#[test]
fn a_ferrix_master_builds_on_a_real_nix_machine_over_ssh_ng() {
    ferrix_master_on_real_nix("ssh-ng");
}

/// Real Nix's `nix-build -j0 --builders SCHEME://localhost?remote-program=<ferrix PROGRAM>`.
fn real_nix_master_on_ferrix(scheme: &str, program: &str) {
    let Some(nix) = Nix::new() else { return };
    allow_host_tools(&nix);
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.nix");
    fs::write(&file, EXPR).unwrap();
    let machine = dir.path().join("machine");
    let uri = format!(
        "{scheme}://localhost?remote-program={}&remote-store={}",
        links.dir.path().join(program).display(),
        machine.display()
    );
    let out = nix
        .cmd("nix-build")
        .args(["-j0", "--no-out-link", "--builders"])
        .arg(format!("{uri} - - 1 1"))
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Both were built there: the master's log shows the machine's build output.
    assert!(
        err.contains("building-dep") && err.contains("log-from-top"),
        "{err}"
    );
    let top = text(out.stdout).trim().to_owned();
    assert!(fs::read_to_string(&top).unwrap().starts_with("top\ndep\n"));
    // The machine has the outputs in its own store, registered.
    let name = Path::new(&top).file_name().unwrap();
    let on_machine = machine.join("nix/store").join(name);
    assert_eq!(
        fs::read_to_string(&on_machine).unwrap(),
        fs::read_to_string(&top).unwrap()
    );
    // And the master's copy is sound.
    ok(nix.cmd("nix-store").arg("--verify-path").arg(&top));
}

/// Ferrix's `nix-store -r -j0 --option builders SCHEME://localhost…` with real Nix there.
fn ferrix_master_on_real_nix(scheme: &str) {
    let Some(nix) = Nix::new() else { return };
    allow_host_tools(&nix);
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.nix");
    fs::write(&file, EXPR).unwrap();
    let drv = text(ok(nix.cmd("nix-instantiate").arg(&file)))
        .trim()
        .to_owned();
    let machine = dir.path().join("machine");
    let uri = format!("{scheme}://localhost?remote-store={}", machine.display());
    let mut c = std::process::Command::new(links.dir.path().join("nix-store"));
    nix.isolate(&mut c);
    // The machine's `nix-store`/`nix-daemon` are real Nix's: the links must not come first.
    c.env("PATH", "/usr/bin:/bin");
    let out = c
        .args(["-r", &drv, "-j0", "--option", "builders"])
        .arg(format!("{uri} - - 1 1"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("on '{uri}'")) && err.contains("log-from-top"),
        "{err}"
    );
    let top = text(out.stdout).trim().to_owned();
    assert!(fs::read_to_string(&top).unwrap().starts_with("top\ndep\n"));
    // Registered here with the right hash, size and references, as real Nix sees it.
    ok(nix.cmd("nix-store").arg("--verify-path").arg(&top));
    let refs = text(ok(nix
        .cmd("nix-store")
        .args(["-q", "--references"])
        .arg(&top)));
    assert!(refs.contains("-dep"), "{refs}");
    // The build log is kept here.
    let log = nix.cmd("nix-store").arg("-l").arg(&drv).output().unwrap();
    let files: Vec<_> = walk(&nix.root.path().join("log"));
    assert!(
        String::from_utf8_lossy(&log.stdout).contains("log-from-top"),
        "{log:?} {files:?}"
    );
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn with_builders_use_substitutes_a_real_nix_machine_fetches_inputs_from_its_cache() {
    machine_substitutes("ssh");
}

#[test]
fn with_builders_use_substitutes_over_ssh_ng_too() {
    machine_substitutes("ssh-ng");
}

/// `builders-use-substitutes`: an input that a signed cache has reaches a real Nix machine
/// from that cache (it carries the cache's signature there), not from the master; without
/// the setting the master sends it.
fn machine_substitutes(scheme: &str) {
    let Some(nix) = Nix::new() else { return };
    allow_host_tools(&nix);
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.txt");
    fs::write(&src, "from-the-cache\n").unwrap();
    let input = text(ok(nix.cmd("nix-store").arg("--add").arg(&src)))
        .trim()
        .to_owned();
    ok(nix
        .cmd("nix-store")
        .arg("--generate-binary-cache-key")
        .arg("test-cache-1")
        .arg(d.join("sk"))
        .arg(d.join("pk")));
    let cache = format!("file://{}", d.join("cache").display());
    ok(nix
        .cmd("nix")
        .args(["copy", "--to"])
        .arg(format!("{cache}?secret-key={}", d.join("sk").display()))
        .arg(&input));
    // One derivation per run: the first one's output is valid here after it.
    let drv_for = |run: &str| -> String {
        let file = d.join(format!("{run}.nix"));
        fs::write(
            &file,
            format!(
                r#"derivation {{ name = "uses-input-{run}"; system = builtins.currentSystem;
  builder = "/bin/sh"; args = ["-c" "/bin/cat ${{builtins.storePath "{input}"}} > $out"]; }}"#
            ),
        )
        .unwrap();
        text(ok(nix.cmd("nix-instantiate").arg(&file)))
            .trim()
            .to_owned()
    };
    let (drv_a, drv_b) = (drv_for("a"), drv_for("b"));
    // The machines are real Nix on this host and read the same nix.conf: the cache is theirs.
    let conf = nix.root.path().join("etc/nix.conf");
    let mut c = fs::read_to_string(&conf).unwrap();
    c += &format!(
        "substituters = {cache}\ntrusted-public-keys = {}\n",
        fs::read_to_string(d.join("pk")).unwrap().trim()
    );
    fs::write(&conf, c).unwrap();

    let sigs_on = |drv: &str, machine: &Path, use_substitutes: bool| -> String {
        let uri = format!("{scheme}://localhost?remote-store={}", machine.display());
        let mut c = std::process::Command::new(links.dir.path().join("nix-store"));
        nix.isolate(&mut c);
        c.env("PATH", "/usr/bin:/bin");
        let out = c
            .args(["-r", drv, "-j0", "--option", "builders"])
            .arg(format!("{uri} - - 1 1"))
            .args(["--option", "builders-use-substitutes"])
            .arg(use_substitutes.to_string())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        let built = text(out.stdout).trim().to_owned();
        assert_eq!(fs::read_to_string(built).unwrap(), "from-the-cache\n");
        text(ok(nix
            .cmd("nix")
            .args(["path-info", "--sigs", "--store"])
            .arg(machine)
            .arg(&input)))
    };
    let sent = sigs_on(&drv_a, &d.join("machine-a"), false);
    assert!(!sent.contains("test-cache-1:"), "{sent}");
    let fetched = sigs_on(&drv_b, &d.join("machine-b"), true);
    assert!(fetched.contains("test-cache-1:"), "{fetched}");
}

/// An input built here (input-addressed, unsigned) goes to a real Nix machine over ssh-ng
/// unchecked, as Nix's own build-remote sends it: the machine trusts its master.
#[test]
fn unsigned_inputs_built_here_reach_a_real_nix_machine_over_ssh_ng() {
    let Some(nix) = Nix::new() else { return };
    allow_host_tools(&nix);
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.nix");
    fs::write(
        &file,
        r#"rec {
  dep = derivation { name = "here"; system = builtins.currentSystem; builder = "/bin/sh";
    args = ["-c" "echo built-here > $out"]; };
  top = derivation { name = "there"; system = builtins.currentSystem; builder = "/bin/sh";
    args = ["-c" "/bin/cat ${dep} > $out"]; };
}"#,
    )
    .unwrap();
    let drv = |attr: &str| {
        text(ok(nix.cmd("nix-instantiate").arg(&file).args(["-A", attr])))
            .trim()
            .to_owned()
    };
    // The input is built here first.
    ok(nix.cmd("nix-store").arg("-r").arg(drv("dep")));
    let machine = dir.path().join("machine");
    let uri = format!("ssh-ng://localhost?remote-store={}", machine.display());
    let mut c = std::process::Command::new(links.dir.path().join("nix-store"));
    nix.isolate(&mut c);
    c.env("PATH", "/usr/bin:/bin");
    let out = c
        .args(["-r", &drv("top"), "-j0", "--option", "builders"])
        .arg(format!("{uri} - - 1 1"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("on '{uri}'")), "{err}");
    let top = text(out.stdout).trim().to_owned();
    assert_eq!(fs::read_to_string(&top).unwrap(), "built-here\n");
}
