//! Builds shared with real Nix 2.8: the same `.drv` files (made by `nix-instantiate`) built by
//! Nix and by Ferrix give the same output paths, NAR hashes and references; each builds on
//! top of what the other built; Nix reads Ferrix's logs and verifies what it registered.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

use common::*;

const EXPR: &str = r#"
let
  sh = "/bin/sh";
  mk = name: attrs: derivation ({ inherit name; system = builtins.currentSystem; builder = sh; } // attrs);
  src = builtins.toFile "src.txt" "some source";
  a = mk "a" { args = [ "-c" "echo a > $out" ]; };
  multi = mk "multi" {
    outputs = [ "out" "lib" "dev" ];
    args = [ "-c" "/bin/mkdir -p $out/bin $lib; echo ${a} > $out/bin/x; echo $out > $lib/back; /bin/ln -s $lib/back $dev" ];
  };
  pass = mk "pass" {
    passAsFile = [ "big" ]; big = "a value passed as a file";
    args = [ "-c" "/bin/cat $bigPath > $out; echo ${src} >> $out" ];
  };
  fixed = mk "fixed" {
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = builtins.hashString "sha256" "fixed contents";
    args = [ "-c" "printf 'fixed contents' > $out" ];
  };
  # Structured attributes: no environment but the files, whose bytes end up in the output.
  structured = mk "structured" {
    __structuredAttrs = true;
    builder = "/bin/bash";
    outputs = [ "out" "doc" ];
    exportReferencesGraph.graph = [ pass ];
    nums = [ 1 2.0 "x" ]; flag = true; nested = { a = "b"; }; deep = [ [ 1 ] ]; quote = "it's";
    outputChecks.doc = { allowedReferences = [ "doc" ]; maxSize = 10000; };
    args = [ "-c" "source .attrs.sh; /bin/mkdir -p ${"$"}{outputs[out]}; /bin/cat .attrs.json .attrs.sh > ${"$"}{outputs[out]}/attrs; echo ${"$"}{outputs[doc]} $flag ${"$"}{nums[1]} ${"$"}{nested[a]} ${"$"}{name-unset} > ${"$"}{outputs[doc]}; env | /bin/grep -c '^nums=' >> ${"$"}{outputs[doc]} || true" ];
  };
  legacy = mk "legacy" { exportReferencesGraph = [ "graph" pass ]; args = [ "-c" "/bin/cat graph > $out" ]; };
  placeholders = mk "placeholders" {
    outputs = [ "out" "bin" ];
    args = [ "-c" "echo ${builtins.placeholder "bin"} > $out; /bin/mkdir ${builtins.placeholder "bin"}" ];
  };
  top = mk "top" { args = [ "-c" "/bin/mkdir $out; echo ${multi.dev} ${pass} ${fixed} > $out/all" ]; };
in { inherit a multi pass fixed top structured legacy placeholders; }
"#;

fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap()
}

fn ours(links: &Links, nix: &Nix, name: &str) -> Command {
    let mut c = links.cmd(name);
    nix.isolate(&mut c);
    c
}

/// Every output's path, NAR hash, size and references, as real Nix reports them.
fn infos(nix: &Nix, drvs: &[String]) -> BTreeMap<String, (String, u64, Vec<String>)> {
    let outs = text(ok(nix
        .cmd("nix-store")
        .arg("-q")
        .arg("--outputs")
        .args(drvs)));
    let json = text(ok(nix
        .cmd("nix")
        .args(["path-info", "--json"])
        .args(outs.lines())));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let refs = p["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect();
            (
                p["path"].as_str().unwrap().to_owned(),
                (
                    p["narHash"].as_str().unwrap().to_owned(),
                    p["narSize"].as_u64().unwrap(),
                    refs,
                ),
            )
        })
        .collect()
}

fn wipe(nix: &Nix) {
    for d in ["store", "state", "log"] {
        let p = nix.root.path().join(d);
        // Store contents are read-only.
        Command::new("/bin/chmod")
            .args(["-R", "u+w"])
            .arg(&p)
            .status()
            .unwrap();
        fs::remove_dir_all(&p).unwrap();
        fs::create_dir_all(&p).unwrap();
    }
}

#[test]
fn nix_and_ferrix_build_the_same_outputs() {
    let Some(nix) = Nix::new() else { return };
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.nix");
    fs::write(&file, EXPR).unwrap();
    let instantiate = || -> Vec<String> {
        text(ok(nix.cmd("nix-instantiate").arg(&file)))
            .lines()
            .map(str::to_owned)
            .collect()
    };

    // Real Nix builds everything first.
    let drvs = instantiate();
    assert_eq!(drvs.len(), 8);
    let nix_outs = text(ok(nix.cmd("nix-store").arg("-r").args(&drvs)));
    let by_nix = infos(&nix, &drvs);

    // Then, on a fresh store at the same place, Ferrix builds the same .drv files.
    wipe(&nix);
    assert_eq!(instantiate(), drvs);
    let our_outs = text(ok(ours(&links, &nix, "nix-store").arg("-r").args(&drvs)));
    assert_eq!(our_outs, nix_outs);
    let by_ferrix = infos(&nix, &drvs);
    assert_eq!(by_ferrix, by_nix);
    // The structured build saw its attributes (and not in its environment).
    let doc = by_ferrix
        .keys()
        .find(|p| p.ends_with("-structured-doc"))
        .unwrap();
    let real = |p: &str| {
        nix.root
            .path()
            .join("store")
            .join(p.rsplit('/').next().unwrap())
    };
    assert_eq!(
        fs::read_to_string(real(doc)).unwrap(),
        format!("{doc} 1 2 b structured\n0\n")
    );
    let attrs = by_ferrix
        .keys()
        .find(|p| p.ends_with("-structured"))
        .unwrap();
    let attrs = fs::read_to_string(real(attrs).join("attrs")).unwrap();
    assert!(
        attrs.contains("\"closureSize\":") && attrs.contains("declare -A outputs=("),
        "{attrs}"
    );
    // Nix finds the store sound and reads our logs.
    let verify = nix
        .cmd("nix-store")
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(verify.status.success());
    assert!(
        !String::from_utf8_lossy(&verify.stderr).contains("error"),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let pass = drvs.iter().find(|d| d.ends_with("-pass.drv")).unwrap();
    let top = drvs.iter().find(|d| d.ends_with("-top.drv")).unwrap();
    ok(nix.cmd("nix-store").arg("-l").arg(pass));

    // Across: Ferrix builds the inputs, Nix builds the top on them, and the other way round.
    wipe(&nix);
    let drvs = instantiate();
    let inputs: Vec<&String> = drvs.iter().filter(|d| *d != top).collect();
    ok(ours(&links, &nix, "nix-store").arg("-r").args(&inputs));
    ok(nix.cmd("nix-store").arg("-r").arg(top));
    assert_eq!(infos(&nix, &drvs), by_nix);
    wipe(&nix);
    let drvs = instantiate();
    ok(nix.cmd("nix-store").arg("-r").args(&inputs));
    ok(ours(&links, &nix, "nix-store").arg("-r").arg(top));
    assert_eq!(infos(&nix, &drvs), by_nix);
}

#[test]
fn failures_and_exit_codes_match_nix() {
    let Some(nix) = Nix::new() else { return };
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.nix");
    fs::write(
        &file,
        r#"
let mk = name: attrs: derivation ({ inherit name; system = builtins.currentSystem; builder = "/bin/sh"; } // attrs);
in {
  fails = mk "fails" { args = [ "-c" "echo oops; exit 3" ]; };
  mismatch = mk "mismatch" {
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = builtins.hashString "sha256" "expected";
    args = [ "-c" "printf 'something else' > $out" ];
  };
  same = mk "same" { args = [ "-c" "echo same $out > $out" ]; };
  varies = mk "varies" { args = [ "-c" "/bin/date +%s%N > $out" ]; };
}
"#,
    )
    .unwrap();
    let drvs: Vec<String> = text(ok(nix.cmd("nix-instantiate").arg(&file)))
        .lines()
        .map(str::to_owned)
        .collect();
    let (checked, failing): (Vec<&String>, Vec<&String>) = drvs
        .iter()
        .partition(|d| d.ends_with("-same.drv") || d.ends_with("-varies.drv"));
    // `--check`, each tool on what the other built: 0 for the same result, 104 for another.
    for d in &checked {
        let varies = d.ends_with("-varies.drv");
        ok(nix.cmd("nix-store").arg("-r").arg(d));
        let mine = ours(&links, &nix, "nix-store")
            .args(["-r", "--check"])
            .arg(d)
            .output()
            .unwrap();
        assert_eq!(
            mine.status.code(),
            Some(if varies { 104 } else { 0 }),
            "{d}"
        );
        let theirs = nix
            .cmd("nix-store")
            .args(["-r", "--check"])
            .arg(d)
            .output()
            .unwrap();
        assert_eq!(mine.status.code(), theirs.status.code(), "{d}");
        if varies {
            let err = String::from_utf8_lossy(&mine.stderr);
            assert!(err.contains("may not be deterministic"), "{err}");
        }
    }
    for d in failing {
        let theirs = nix.cmd("nix-store").arg("-r").arg(d).output().unwrap();
        let mine = ours(&links, &nix, "nix-store")
            .arg("-r")
            .arg(d)
            .output()
            .unwrap();
        assert_eq!(mine.status.code(), theirs.status.code(), "{d}");
        let err = String::from_utf8_lossy(&mine.stderr);
        assert!(err.contains("error: "), "{err}");
    }
}

/// Two builds of overlapping graphs at once, Ferrix with Ferrix and then Ferrix with real
/// Nix: the output locks make every derivation build exactly once (each builder notes its
/// name in a file outside the store), and both runs succeed.
#[test]
fn overlapping_builds_build_each_derivation_once() {
    let Some(nix) = Nix::new() else { return };
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("built.log");
    let file = dir.path().join("t.nix");
    let mut expr = String::from(
        "let mk = name: deps: derivation { inherit name deps; system = builtins.currentSystem; \
         builder = \"/bin/sh\"; log = \"@LOG@\"; \
         args = [ \"-c\" \"echo $name >> $log; /bin/sleep 0.05; echo $deps > $out\" ]; }; in rec {\n",
    )
    .replace("@LOG@", log.to_str().unwrap());
    for layer in 0..3 {
        for j in 0..4 {
            let deps: Vec<String> = if layer == 0 {
                vec![]
            } else {
                (0..4).map(|k| format!("l{}_{k}", layer - 1)).collect()
            };
            expr += &format!(
                "  l{layer}_{j} = mk \"l{layer}-{j}\" [ {} ];\n",
                deps.join(" ")
            );
        }
    }
    expr += "}\n";
    fs::write(&file, expr).unwrap();
    let instantiate = |attrs: &[&str]| -> Vec<String> {
        let mut c = nix.cmd("nix-instantiate");
        c.arg(&file);
        for a in attrs {
            c.args(["-A", a]);
        }
        text(ok(&mut c)).lines().map(str::to_owned).collect()
    };
    let all: Vec<&str> = vec!["l0_0", "l0_1", "l1_2", "l2_0", "l2_1", "l2_2", "l2_3"];
    let top: Vec<&str> = vec!["l2_3", "l1_0", "l0_3"];
    let check_once = |round: &str| {
        let text = fs::read_to_string(&log).unwrap();
        let mut names: Vec<&str> = text.lines().collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(
            n,
            names.len(),
            "{round}: some derivation was built twice: {text}"
        );
        assert_eq!(n, 12, "{round}: {text}");
        fs::remove_file(&log).unwrap();
    };
    for (round, other_is_nix) in [("ferrix and ferrix", false), ("ferrix and nix", true)] {
        wipe(&nix);
        let a = instantiate(&all);
        let b = instantiate(&top);
        let mut first = ours(&links, &nix, "nix-store");
        first.args(["-r", "-j3"]).args(&a);
        let mut second = if other_is_nix {
            nix.cmd("nix-store")
        } else {
            ours(&links, &nix, "nix-store")
        };
        second.args(["-r", "-j3"]).args(&b);
        let c1 = first.stdout(std::process::Stdio::null()).spawn().unwrap();
        let c2 = second.stdout(std::process::Stdio::null()).spawn().unwrap();
        let (r1, r2) = (
            c1.wait_with_output().unwrap(),
            c2.wait_with_output().unwrap(),
        );
        assert!(r1.status.success() && r2.status.success(), "{round}");
        check_once(round);
        let verify = nix
            .cmd("nix-store")
            .args(["--verify", "--check-contents"])
            .output()
            .unwrap();
        assert!(verify.status.success(), "{round}");
    }
}

/// `nix-store --verify --check-contents --repair` builds the deriver of a damaged output
/// again and puts the output right; real Nix then finds the store sound. `--repair-path`
/// does the same for one path.
#[test]
fn verify_repair_rebuilds_damaged_outputs() {
    let Some(nix) = Nix::new() else { return };
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.nix");
    fs::write(
        &file,
        "derivation { name = \"fixme\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [ \"-c\" \"/bin/mkdir $out; echo good > $out/file\" ]; }",
    )
    .unwrap();
    let drv = text(ok(nix.cmd("nix-instantiate").arg(&file)))
        .trim()
        .to_owned();
    let out = text(ok(ours(&links, &nix, "nix-store").args(["-r", &drv])))
        .trim()
        .to_owned();
    let real = nix
        .root
        .path()
        .join("store")
        .join(out.rsplit('/').next().unwrap());
    let damage = || {
        Command::new("/bin/chmod")
            .args(["-R", "u+w"])
            .arg(&real)
            .status()
            .unwrap();
        fs::write(real.join("file"), "bad\n").unwrap();
    };
    damage();
    let verify = |repair: bool| {
        let mut c = ours(&links, &nix, "nix-store");
        c.args(["--verify", "--check-contents"]);
        if repair {
            c.arg("--repair");
        }
        c.output().unwrap()
    };
    let o = verify(false);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("was modified"));
    let o = verify(true);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("repaired"), "{err}");
    assert_eq!(fs::read_to_string(real.join("file")).unwrap(), "good\n");
    let theirs = nix
        .cmd("nix-store")
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(theirs.status.success());
    assert!(!String::from_utf8_lossy(&theirs.stderr).contains("modified"));

    damage();
    ok(ours(&links, &nix, "nix-store").args(["--repair-path", &out]));
    assert_eq!(fs::read_to_string(real.join("file")).unwrap(), "good\n");
    ok(nix.cmd("nix-store").args(["--verify-path", &out]));
}
