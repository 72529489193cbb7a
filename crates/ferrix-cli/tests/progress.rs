//! What a build shows on a terminal: a status line redrawn in place (counts, what runs, the
//! last line a builder printed), the `building '…'...` lines above it, and nothing left of
//! it at the end. The terminal is a pseudo-terminal made by util-linux's `script`.

mod common;

use std::fs;
use std::process::Command;

use common::*;

#[test]
fn a_terminal_gets_a_status_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in ["etc", "home", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(
        root.join("etc/nix.conf"),
        "sandbox = false\nsubstituters =\n",
    )
    .unwrap();
    let drv = |name: &str, script: &str, inputs: &str| {
        format!(
            r#"{{"name":"{name}","outputs":{{"out":{{}}}},"inputSrcs":[],"inputDrvs":{{{inputs}}},
               "system":"x86_64-linux","builder":"/bin/sh","args":["-c","{script}"],
               "env":{{"name":"{name}","builder":"/bin/sh","system":"x86_64-linux","out":""}}}}"#
        )
    };
    let first = add_drv(
        root,
        &drv(
            "first",
            "echo compiling the first; /bin/sleep 0.3; echo 1 > $out",
            "",
        ),
    );
    let second = add_drv(
        root,
        &drv(
            "second",
            "echo linking the second; echo 2 > $out",
            &format!(r#""{first}":["out"]"#),
        ),
    );
    let mut c = Command::new("script");
    store_env(&mut c, root);
    let out = c
        .env("TERM", "xterm")
        .args(["-qec"])
        .arg(format!(
            "{} build --no-link {second}; echo exit=$?",
            ferrix_exe().display()
        ))
        .arg("/dev/null")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // Each draw clears the line first; the final state is erased.
    for want in [
        "...\r\n[0/2 built, 1 running] building first",
        "building first: first> compiling the first",
        "\r\x1b[K[1/2 built, 0 running]",
        "building second",
        "[2/2 built, 0 running]",
    ] {
        assert!(text.contains(want), "no {want:?} in {text:?}");
    }
    assert!(
        text.contains(&format!("building '{first}'...\r\n")),
        "{text:?}"
    );
    let end = text.rfind("[2/2 built, 0 running]").unwrap();
    assert!(text[end..].contains("\r\x1b[K"), "{text:?}");
    assert!(text.trim_end().ends_with("exit=0"), "{text:?}");
}
