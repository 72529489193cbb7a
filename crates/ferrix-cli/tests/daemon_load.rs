//! A Ferrix daemon under load and under attack: fifty real Nix 2.8 clients at once, querying
//! and building overlapping graphs (each output built once, the daemon's memory flat), and
//! arbitrary bytes on its socket (never a crash or a wedge).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::time::Duration;

use common::daemon::{ok, Daemon};
use common::Nix;
use proptest::prelude::*;

/// The daemon's resident memory, in KiB.
fn rss_kib(d: &Daemon) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `n` derivations in layers: each of layer `k` depends on two of layer `k - 1`; every
/// builder notes its name in `log` when it runs. The `.drv` paths, instantiated by real Nix
/// through the daemon, by name.
fn graph(d: &Daemon, nix: &Nix, round: usize, log: &std::path::Path) -> Vec<String> {
    let mut expr = String::from("let\n");
    let width = 6;
    for layer in 0..3 {
        for i in 0..width {
            let name = format!("r{round}-l{layer}-n{i}");
            let deps = if layer == 0 {
                String::new()
            } else {
                format!(
                    "d1 = r{round}-l{}-n{}; d2 = r{round}-l{}-n{};",
                    layer - 1,
                    i,
                    layer - 1,
                    (i + 1) % width
                )
            };
            expr.push_str(&format!(
                r#"  {name} = derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh";
                      {deps} args = [ "-c" "echo {name} >> {}; /bin/sleep 0.1; echo {name} > $out" ]; }};
"#,
                log.display()
            ));
        }
    }
    expr.push_str("in [\n");
    for i in 0..width {
        expr.push_str(&format!("  r{round}-l2-n{i}\n"));
    }
    expr.push_str("]\n");
    let file = d.root.path().join(format!("tmp/graph{round}.nix"));
    fs::write(&file, expr).unwrap();
    ok(
        d.nix(nix, "nix-instantiate").arg(&file).output().unwrap(),
        "instantiating the graph",
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Fifty clients: those with an even number build two of the graph's tops (overlapping with
/// their neighbours'), the others query.
fn round(d: &Daemon, nix: &Nix, tops: &[String], known: &str) {
    let clients: Vec<(usize, Child)> = (0..50)
        .map(|i| {
            let mut c = d.nix(nix, "nix-store");
            if i % 2 == 0 {
                let a = &tops[i % tops.len()];
                let b = &tops[(i / 2 + 1) % tops.len()];
                c.args(["-r", a, b]);
            } else {
                c.args(["-q", "--references", known]);
            }
            let child = c
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (i, child)
        })
        .collect();
    for (i, c) in clients {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "client {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn fifty_clients_building_overlapping_graphs_build_each_output_once_in_flat_memory() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("max-jobs = 4\n");
    let known = d.add(&nix, "known", "known\n", "adding");
    let mut rss = Vec::new();
    for r in 0..6 {
        let log = d.root.path().join(format!("tmp/log{r}"));
        let tops = graph(&d, &nix, r, &log);
        round(&d, &nix, &tops, &known);
        // Every derivation of the graph ran exactly once, whoever asked for it.
        let mut runs: BTreeMap<String, usize> = BTreeMap::new();
        for name in fs::read_to_string(&log).unwrap().lines() {
            *runs.entry(name.to_owned()).or_default() += 1;
        }
        assert_eq!(runs.len(), 18, "round {r}: {runs:?}");
        assert!(runs.values().all(|&n| n == 1), "round {r}: {runs:?}");
        rss.push(rss_kib(&d));
    }
    eprintln!("the daemon's resident memory after each round (KiB): {rss:?}");
    // After the first round has warmed it up, the daemon does not grow with more rounds.
    let (first, most) = (rss[0], rss.iter().copied().max().unwrap_or(0));
    assert!(
        most <= first + first / 4 + 4096,
        "the daemon grew from {first} KiB to {most} KiB: {rss:?}"
    );
}

/// Arbitrary bytes, with and without a greeting first, on one daemon (stopped by its pid when
/// the test ends).
#[test]
fn arbitrary_bytes_on_the_socket_neither_crash_nor_wedge_the_daemon() {
    use proptest::test_runner::{Config, TestRunner};
    let d = Daemon::start("");
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(chunks, speak)| {
            let mut s = UnixStream::connect(d.socket()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            if speak {
                // A proper greeting first, so the junk reaches the operations.
                s.write_all(&0x6e69_7863u64.to_le_bytes()).unwrap();
                let mut greeting = [0u8; 16];
                s.read_exact(&mut greeting).unwrap();
                let mut v = 0x122u64.to_le_bytes().to_vec();
                v.extend([0u8; 16]);
                s.write_all(&v).unwrap();
            }
            for c in &chunks {
                if s.write_all(c).is_err() {
                    break;
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            // The daemon answers or closes; it does not hang on a half-sent request.
            let mut rest = Vec::new();
            let r = s.read_to_end(&mut rest);
            prop_assert!(
                !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "the daemon wedged"
            );
            // And it serves the next client.
            let mut next = UnixStream::connect(d.socket()).unwrap();
            next.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            next.write_all(&0x6e69_7863u64.to_le_bytes()).unwrap();
            let mut magic = [0u8; 8];
            next.read_exact(&mut magic).unwrap();
            prop_assert_eq!(u64::from_le_bytes(magic), 0x6478_696f);
            Ok(())
        })
        .unwrap();
}
