//! The evaluator through its API: laziness, scopes, recursion limits, errors with places,
//! and that no input makes it panic.

use ferrix_eval::{ErrorKind, EvalSettings, Evaluator};
use proptest::prelude::*;

fn eval_with(settings: EvalSettings, text: &str) -> Result<String, ErrorKind> {
    ferrix_eval::on_big_stack(move || {
        let mut ev = Evaluator::new(settings, None);
        let v = ev
            .eval_source("«test»", text, "/base")
            .map_err(|e| e.into_kind())?;
        ferrix_eval::print(&mut ev, &v, true).map_err(|e| e.into_kind())
    })
}

fn eval(text: &str) -> Result<String, ErrorKind> {
    eval_with(EvalSettings::default(), text)
}

#[test]
fn what_is_never_used_is_never_evaluated() {
    assert_eq!(
        eval("let a = throw \"no\"; b = abort \"no\"; in 1").unwrap(),
        "1"
    );
    assert_eq!(eval("(x: 2) (throw \"no\")").unwrap(), "2");
    assert_eq!(
        eval("builtins.length (builtins.map (x: throw \"no\") [ 1 2 ])").unwrap(),
        "2"
    );
    assert_eq!(eval("{ a = throw \"no\"; b = 1; }.b").unwrap(), "1");
    assert_eq!(
        eval("builtins.attrNames { a = throw \"no\"; }").unwrap(),
        "[ \"a\" ]"
    );
}

#[test]
fn arguments_computed_at_once_are_the_values_the_thunks_would_give() {
    // Integer arithmetic on known integers is done when the call is made, not later: the
    // results must be the ones forcing would give, and anything that could fail stays lazy.
    assert_eq!(
        eval("let f = n: if n == 0 then 0 else f (n - 1); in f 5000").unwrap(),
        "0"
    );
    assert_eq!(
        eval("let m = 9223372036854775807; in (x: x) (m + 1)").unwrap(),
        "-9223372036854775808"
    );
    assert_eq!(eval("let n = 3; in (x: x) (n * n == 9)").unwrap(), "true");
    assert_eq!(eval("let n = 3; in (x: 1) (n + \"a\")").unwrap(), "1");
    assert_eq!(eval("let n = 3; in (x: 1) (n / 0)").unwrap(), "1");
    assert_eq!(eval("let n = 1.5; in (x: x) (n + 1)").unwrap(), "2.5");
    // A function of two arguments called by a builtin: the same as two calls.
    assert_eq!(
        eval("builtins.foldl' (a: b: a * 10 + b) 0 [ 1 2 3 ]").unwrap(),
        "123"
    );
    assert_eq!(
        eval("builtins.sort (a: b: a > b) [ 2 3 1 ]").unwrap(),
        "[ 3 2 1 ]"
    );
    assert_eq!(
        eval("builtins.foldl' (a: b: a) 0 [ (throw \"no\") ]").unwrap(),
        "0"
    );
}

#[test]
fn type_errors_show_the_value_briefly_and_force_nothing() {
    let msg = |e: &str| eval(e).unwrap_err().to_string();
    assert_eq!(msg("(1).a"), "expected a set but found an integer: 1");
    assert_eq!(
        msg("builtins.length { a = 1; b = throw \"never forced\"; }"),
        "expected a list but found a set: { a = 1; b = «thunk»; }"
    );
    assert_eq!(
        msg("let f = { a }: a; in f (builtins.genList (i: i) 10)"),
        "expected a set but found a list: [ «thunk» «thunk» «thunk» «thunk» «thunk» «thunk» «thunk» «thunk» «2 more» ]"
    );
    let long = msg(&format!("builtins.length \"{}\"", "x".repeat(100)));
    assert!(
        long.ends_with(&format!("\"{}\"«…»", "x".repeat(60))),
        "{long}"
    );
}

#[test]
fn static_scopes_win_over_with() {
    assert_eq!(eval("let x = 1; in with { x = 2; }; x").unwrap(), "1");
    assert_eq!(eval("with { x = 2; }; let y = x; in y").unwrap(), "2");
    assert_eq!(eval("with { x = 1; }; with { x = 2; }; x").unwrap(), "2");
    // A name no scope binds is an error before anything runs, as in Nix.
    assert!(matches!(
        eval("if true then 1 else nope"),
        Err(ErrorKind::UndefinedVariable(n)) if n == "nope"
    ));
    // Under a `with`, it is looked up when needed.
    assert!(matches!(
        eval("with { }; nope"),
        Err(ErrorKind::UndefinedVariable(n)) if n == "nope"
    ));
}

#[test]
fn recursion_is_caught_not_crashed() {
    assert!(matches!(
        eval("let x = x; in x"),
        Err(ErrorKind::InfiniteRecursion)
    ));
    assert!(matches!(
        eval("let f = n: f (n + 1); in f 0"),
        Err(ErrorKind::StackOverflow)
    ));
    // Deep but finite recursion within the limit works.
    assert_eq!(
        eval("let sum = n: if n == 0 then 0 else n + sum (n - 1); in sum 2000").unwrap(),
        "2001000"
    );
    let shallow = EvalSettings {
        max_call_depth: 100,
        ..EvalSettings::default()
    };
    assert!(matches!(
        eval_with(
            shallow,
            "let sum = n: if n == 0 then 0 else n + sum (n - 1); in sum 2000"
        ),
        Err(ErrorKind::StackOverflow)
    ));
}

#[test]
fn a_thunk_that_failed_can_be_forced_again() {
    // `tryEval` leaves the failing value as it was; forcing it again fails the same way.
    assert_eq!(
        eval(
            "let x = throw \"t\"; in [ (builtins.tryEval x).success (builtins.tryEval x).success ]"
        )
        .unwrap(),
        "[ false false ]"
    );
}

#[test]
fn integers_wrap_around_as_in_nix_2_8() {
    assert_eq!(
        eval("9223372036854775807 + 1").unwrap(),
        "-9223372036854775808"
    );
    assert_eq!(
        eval("4611686018427387904 * 2").unwrap(),
        "-9223372036854775808"
    );
    // The one division that overflows does not crash (it kills Nix 2.8 with SIGFPE).
    assert_eq!(
        eval("(-9223372036854775807 - 1) / (-1)").unwrap(),
        "-9223372036854775808"
    );
    assert!(matches!(eval("1 / 0"), Err(ErrorKind::DivisionByZero)));
}

#[test]
fn relative_paths_are_relative_to_the_source() {
    assert_eq!(eval("./a/../b").unwrap(), "/base/b");
    assert_eq!(eval("./. + \"/c\"").unwrap(), "/base/c");
    let home = EvalSettings {
        home: Some("/home/u".into()),
        ..EvalSettings::default()
    };
    assert_eq!(eval_with(home, "~/x").unwrap(), "/home/u/x");
}

#[test]
fn search_path_entries_are_found_by_prefix_or_inside() {
    let d = tempfile_dir();
    std::fs::create_dir_all(d.join("pkgs/lib")).unwrap();
    let settings = EvalSettings {
        search_path: vec![(Some("nixpkgs".into()), d.join("pkgs")), (None, d.clone())],
        ..EvalSettings::default()
    };
    let pkgs = d.join("pkgs");
    assert_eq!(
        eval_with(settings.clone(), "<nixpkgs>").unwrap(),
        pkgs.display().to_string()
    );
    assert_eq!(
        eval_with(settings.clone(), "<nixpkgs/lib>").unwrap(),
        pkgs.join("lib").display().to_string()
    );
    assert_eq!(
        eval_with(settings.clone(), "<pkgs>").unwrap(),
        pkgs.display().to_string()
    );
    assert!(
        matches!(eval_with(settings, "<nope>"), Err(ErrorKind::Throw(m)) if m.contains("'nope'"))
    );
    std::fs::remove_dir_all(&d).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ferrix-eval-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any text, however broken, parses to an expression or a syntax error: never a panic.
    #[test]
    fn arbitrary_text_never_panics(text in "[ -~\n]{0,40}") {
        let mut ev = Evaluator::new(EvalSettings::default(), None);
        let _ = ev.check_source("«fuzz»", &text, "/");
    }

    /// Text made of Nix's own pieces, parsed and evaluated (with a small depth limit):
    /// a value or an error, never a panic.
    #[test]
    fn nix_shaped_text_never_panics(parts in proptest::collection::vec(
        prop_oneof![
            Just("let "), Just("in "), Just("rec "), Just("with "), Just("{ "), Just("} "),
            Just("[ "), Just("] "), Just("( "), Just(") "), Just("x "), Just("y "), Just("= "),
            Just("; "), Just(": "), Just("1 "), Just("2.5 "), Just("\"s\" "), Just("+ "),
            Just("// "), Just("++ "), Just("? "), Just(". "), Just("or "), Just("if "),
            Just("then "), Just("else "), Just("builtins.map "), Just("inherit "), Just("@ "),
            Just("... "), Just(", "), Just("== "), Just("! "), Just("- "),
        ],
        0..30,
    )) {
        let text: String = parts.concat();
        let settings = EvalSettings { max_call_depth: 200, ..EvalSettings::default() };
        let _ = eval_with(settings, &text);
    }
}

/// Builtins newer than Nix 2.8, which the tests against it cannot cover.
#[test]
fn builtins_of_current_nix() {
    let empty = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    assert_eq!(
        eval(&format!(
            "map (f: builtins.convertHash {{ hash = \"{empty}\"; toHashFormat = f; }}) [ \"base16\" \"nix32\" \"base32\" \"base64\" \"sri\" ]"
        ))
        .unwrap(),
        "[ \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\" \
         \"0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\" \
         \"0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\" \
         \"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\" \"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\" ]"
    );
    assert_eq!(
        eval("builtins.convertHash { hash = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"; hashAlgo = \"sha256\"; toHashFormat = \"sri\"; }")
            .unwrap(),
        format!("\"{empty}\"")
    );
    assert!(eval("builtins.convertHash { hash = \"x\"; toHashFormat = \"sri\"; }").is_err());
    let d = tempfile_dir();
    std::fs::create_dir_all(d.join("dir")).unwrap();
    std::fs::write(d.join("file"), "x").unwrap();
    std::os::unix::fs::symlink("file", d.join("link")).unwrap();
    let e = format!(
        "map builtins.readFileType [ {0}/dir {0}/file {0}/link ]",
        d.display()
    );
    assert_eq!(
        eval(&e).unwrap(),
        "[ \"directory\" \"regular\" \"symlink\" ]"
    );
    std::fs::remove_dir_all(&d).unwrap();
    assert_eq!(
        eval("builtins.break 1 + builtins.traceVerbose \"not shown\" 2").unwrap(),
        "3"
    );
    let drv = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a.drv";
    assert_eq!(
        eval(&format!(
            "builtins.getContext (builtins.addDrvOutputDependencies (builtins.appendContext \"x\" {{ \"{drv}\" = {{ path = true; }}; }}))"
        ))
        .unwrap(),
        format!("{{ \"{drv}\" = {{ allOutputs = true; }}; }}")
    );
    assert!(eval("builtins.addDrvOutputDependencies \"no context\"").is_err());
}
