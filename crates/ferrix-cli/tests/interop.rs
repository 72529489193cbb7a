//! Interop with real Nix 2.8, both directions: NARs, hashes, `.drv` files, keys.

mod common;

use std::fs;
use std::path::Path;

use common::*;

#[test]
fn random_trees_dump_and_hash_like_nix() {
    let Some(nix) = Nix::new() else { return };
    let links = Links::new();
    for seed in 0..24u64 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir(&root).unwrap();
        random_tree(&mut Rng::new(seed), &root, 0);

        let theirs = ok(nix.cmd("nix-store").arg("--dump").arg(&root));
        let ours = ok(ferrix().args(["nar", "dump-path"]).arg(&root));
        assert!(theirs == ours, "seed {seed}: NARs differ");
        let ours_legacy = ok(links.cmd("nix-store").arg("--dump").arg(&root));
        assert!(
            theirs == ours_legacy,
            "seed {seed}: nix-store --dump personality differs"
        );

        for algo in ["md5", "sha1", "sha256", "sha512"] {
            let t = ok(nix
                .cmd("nix-hash")
                .args(["--type", algo, "--base32"])
                .arg(&root));
            let o = ok(links
                .cmd("nix-hash")
                .args(["--type", algo, "--base32"])
                .arg(&root));
            assert_eq!(t, o, "seed {seed} {algo}: nix-hash differs");
        }
        let t = ok(nix.cmd("nix").args(["hash", "path"]).arg(&root));
        let o = ok(ferrix().args(["hash", "path"]).arg(&root));
        assert_eq!(t, o, "seed {seed}: nix hash path differs");

        // Nix restores our archive and ours restores Nix's: both dump back to the same bytes.
        let into_nix = dir.path().join("by-nix");
        let out = piped(
            {
                let mut c = nix.cmd("nix-store");
                c.arg("--restore").arg(&into_nix);
                c
            },
            &ours,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let into_ours = dir.path().join("by-ferrix");
        let out = piped(
            {
                let mut c = links.cmd("nix-store");
                c.arg("--restore").arg(&into_ours);
                c
            },
            &theirs,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(ok(nix.cmd("nix-store").arg("--dump").arg(&into_ours)) == theirs);
        assert!(ok(ferrix().args(["nar", "dump-path"]).arg(&into_nix)) == theirs);
    }
}

#[test]
fn flat_hashes_and_conversions_like_nix() {
    let Some(nix) = Nix::new() else { return };
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    fs::write(&f, Rng::new(7).bytes(123_457)).unwrap();
    for algo in ["md5", "sha1", "sha256", "sha512"] {
        // Nix 2.8's nix-hash prints base-16 unless told --base32; it has no --base16 flag.
        for enc in [&[][..], &["--base32"][..]] {
            let t = ok(nix
                .cmd("nix-hash")
                .args(["--flat", "--type", algo])
                .args(enc)
                .arg(&f));
            let o = ok(links
                .cmd("nix-hash")
                .args(["--flat", "--type", algo])
                .args(enc)
                .arg(&f));
            assert_eq!(t, o, "{algo} {enc:?}");
        }
        for enc in ["--base16", "--base32", "--base64", "--sri"] {
            let t = ok(nix
                .cmd("nix")
                .args(["hash", "file", "--type", algo, enc])
                .arg(&f));
            let o = ok(ferrix().args(["hash", "file", "--type", algo, enc]).arg(&f));
            assert_eq!(t, o, "{algo} {enc}");
            let text = String::from_utf8(t).unwrap();
            for to in ["to-base16", "to-base32", "to-base64", "to-sri"] {
                let t = ok(nix
                    .cmd("nix")
                    .args(["hash", to, "--type", algo, text.trim()]));
                let o = ok(ferrix().args(["hash", to, "--type", algo, text.trim()]));
                assert_eq!(t, o, "{algo} {enc} {to}");
            }
        }
        let t = ok(nix
            .cmd("nix-hash")
            .args(["--type", algo, "--truncate", "--base32"])
            .arg(&f));
        let o = ok(links
            .cmd("nix-hash")
            .args(["--type", algo, "--truncate", "--base32"])
            .arg(&f));
        assert_eq!(t, o, "{algo} truncate");
    }
}

/// Copy a vector case's expression files, instantiate them with real Nix into its temporary
/// store, and check every `.drv` it wrote: byte-identical round trip, same JSON, same paths.
#[test]
fn drvs_from_nix_instantiate_round_trip() {
    let Some(nix) = Nix::new() else { return };
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(vectors().join("drv/index.json")).unwrap())
            .unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for case in index.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let src = vectors().join("drv").join(name);
        let dst = work.path().join(name);
        copy_dir(&src, &dst);
        let out = nix
            .cmd("nix-instantiate")
            .arg(dst.join("default.nix"))
            .current_dir(&dst)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked > 0, "no drv cases found");
    // Every .drv now in the store, including dependencies.
    let store = Path::new(&nix.store_dir()).to_owned();
    let mut drvs: Vec<_> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "drv"))
        .collect();
    drvs.sort();
    assert!(drvs.len() >= checked, "only {} drvs", drvs.len());
    let sd = ferrix_format::StoreDir::new(&nix.store_dir()).unwrap();
    for d in &drvs {
        let text = fs::read(d).unwrap();
        let drv = ferrix_format::Derivation::parse_aterm(&sd, &text)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        assert!(
            drv.to_aterm(&sd).as_bytes() == &text[..],
            "{}: round trip",
            d.display()
        );
        let p = sd.parse_path(d.to_str().unwrap()).unwrap();
        assert_eq!(
            drv.drv_path(&sd, ferrix_format::derivation::drv_name(&p))
                .unwrap(),
            p,
            "{}",
            d.display()
        );
        // The same text as `nix show-derivation`, byte for byte.
        let mut ours = ferrix();
        nix.isolate(&mut ours);
        let o = ok(ours.args(["derivation", "show"]).arg(d));
        let t = ok(nix.cmd("nix").arg("show-derivation").arg(d));
        assert_eq!(
            String::from_utf8(o).unwrap(),
            String::from_utf8(t).unwrap(),
            "{}",
            d.display()
        );
    }
    // Recursive: the whole closure of every drv.
    let mut ours = ferrix();
    nix.isolate(&mut ours);
    let o = ok(ours.args(["show-derivation", "-r"]).args(&drvs));
    let t = ok(nix.cmd("nix").args(["show-derivation", "-r"]).args(&drvs));
    assert_eq!(String::from_utf8(o).unwrap(), String::from_utf8(t).unwrap());
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let ty = e.file_type().unwrap();
        let to = dst.join(e.file_name());
        if ty.is_dir() {
            copy_dir(&e.path(), &to);
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

#[test]
fn keys_work_both_ways() {
    let Some(nix) = Nix::new() else { return };
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    // A key made by Nix, converted by us; a key made by us, converted by Nix.
    let (sk1, pk1) = (dir.path().join("sk1"), dir.path().join("pk1"));
    ok(nix
        .cmd("nix-store")
        .args(["--generate-binary-cache-key", "nixkey-1"])
        .arg(&sk1)
        .arg(&pk1));
    let sk1_text = fs::read(&sk1).unwrap();
    let out = piped(
        {
            let mut c = ferrix();
            c.args(["key", "convert-secret-to-public"]);
            c
        },
        &sk1_text,
    );
    assert!(out.status.success());
    assert_eq!(out.stdout, fs::read(&pk1).unwrap());

    let (sk2, pk2) = (dir.path().join("sk2"), dir.path().join("pk2"));
    ok(links
        .cmd("nix-store")
        .args(["--generate-binary-cache-key", "ferrixkey-1"])
        .arg(&sk2)
        .arg(&pk2));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&sk2).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = piped(
        {
            let mut c = nix.cmd("nix");
            c.args(["key", "convert-secret-to-public"]);
            c
        },
        &fs::read(&sk2).unwrap(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, fs::read(&pk2).unwrap());

    let sk3 = ok(ferrix().args(["key", "generate-secret", "--key-name", "gen-1"]));
    let t = piped(
        {
            let mut c = nix.cmd("nix");
            c.args(["key", "convert-secret-to-public"]);
            c
        },
        &sk3,
    );
    let o = piped(
        {
            let mut c = ferrix();
            c.args(["key", "convert-secret-to-public"]);
            c
        },
        &sk3,
    );
    assert!(t.status.success() && o.status.success());
    assert_eq!(t.stdout, o.stdout);
}

#[test]
fn nar_ls_and_cat_like_nix() {
    let Some(nix) = Nix::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    fs::create_dir(&root).unwrap();
    random_tree(&mut Rng::new(99), &root, 0);
    fs::create_dir(root.join("sub")).unwrap();
    fs::write(root.join("sub/file"), b"contents\n").unwrap();
    let nar = dir.path().join("t.nar");
    fs::write(&nar, ok(ferrix().args(["nar", "dump-path"]).arg(&root))).unwrap();
    for args in [
        vec!["-R", "/"],
        vec!["/"],
        vec!["-l", "/"],
        vec!["-lR", "/"],
        vec!["--json", "-R", "/"],
        vec!["--json", "/"],
        vec!["-R", "/sub"],
        vec!["-l", "/sub/file"],
        vec!["-d", "/sub"],
    ] {
        let (flags, path) = args.split_at(args.len() - 1);
        let t = ok(nix
            .cmd("nix")
            .args(["nar", "ls"])
            .args(flags)
            .arg(&nar)
            .args(path));
        let o = ok(ferrix()
            .args(["nar", "ls"])
            .args(flags)
            .arg(&nar)
            .args(path));
        assert_eq!(
            String::from_utf8_lossy(&t),
            String::from_utf8_lossy(&o),
            "{args:?}"
        );
    }
    let t = ok(nix
        .cmd("nix")
        .args(["nar", "cat"])
        .arg(&nar)
        .arg("/sub/file"));
    let o = ok(ferrix().args(["nar", "cat"]).arg(&nar).arg("/sub/file"));
    assert_eq!(t, o);
}
