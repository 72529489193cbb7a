//! The greeting and what follows it, on both sides.
//!
//! 1. The client sends [`WORKER_MAGIC_1`] and its version; the server answers
//!    [`WORKER_MAGIC_2`] and its version; both use the smaller. From 1.38 on, the client then
//!    sends its feature names, the server answers with its own, and both use the common ones
//!    ([`client_handshake`], [`server_handshake`]).
//! 2. The client sends an obsolete CPU affinity flag (≥ 1.14) and an obsolete reserve-space flag
//!    (≥ 1.11); the server sends its Nix version (≥ 1.33) and whether it trusts the client
//!    (≥ 1.35) ([`client_post_handshake`], [`server_post_handshake`]).
//! 3. The server sends its start-up log messages, then [`StderrMsg::Last`] (or [`StderrMsg::Error`]
//!    when it refuses the client) ([`server_startup`], [`client_startup`]).

use std::collections::BTreeSet;
use std::io::{Read, Write};

use super::stderr::{process_stderr, write_stderr, ErrorInfo, StderrMsg};
use super::{
    FEATURES_SINCE, MINIMUM_CLIENT_VERSION, MINIMUM_DAEMON_VERSION, WORKER_MAGIC_1, WORKER_MAGIC_2,
};
use crate::wire::{
    read_string, read_string_set, read_u64, write_str, write_strings, write_u64, Limits, WireError,
};
use crate::Version;

/// What both sides use after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: Version,
    /// The features both sides named (empty below 1.38).
    pub features: BTreeSet<String>,
}

fn check_version(ours: Version, minimum: Version, theirs: u64) -> Result<Version, WireError> {
    match Version::from_wire(theirs) {
        Some(v) if v.major == ours.major && v >= minimum => Ok(v.min(ours)),
        _ => Err(WireError::UnsupportedVersion {
            protocol: "worker",
            ours,
            minimum,
            theirs,
        }),
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> WireError {
    move |e| WireError::io(what, e)
}

/// The client's side: magic and version go out (flushed) before anything is read, which
/// every Nix daemon accepts.
pub fn client_handshake<R: Read + ?Sized, W: Write + ?Sized>(
    r: &mut R,
    w: &mut W,
    ours: Version,
    features: &BTreeSet<String>,
    limits: &Limits,
) -> Result<Negotiated, WireError> {
    const WHAT: &str = "the worker greeting";
    write_u64(w, WORKER_MAGIC_1).map_err(io(WHAT))?;
    write_u64(w, ours.to_wire()).map_err(io(WHAT))?;
    w.flush().map_err(io(WHAT))?;
    let magic = read_u64(r, "worker magic number")?;
    if magic != WORKER_MAGIC_2 {
        return Err(WireError::BadMagic {
            what: "worker greeting of the daemon",
            expected: WORKER_MAGIC_2,
            got: magic,
        });
    }
    let theirs = read_u64(r, "worker protocol version of the daemon")?;
    let version = check_version(ours, MINIMUM_DAEMON_VERSION, theirs)?;
    let mut common = BTreeSet::new();
    if version >= FEATURES_SINCE {
        write_strings(w, features.iter().map(String::as_str)).map_err(io(WHAT))?;
        w.flush().map_err(io(WHAT))?;
        let theirs = read_string_set(r, limits, "features of the daemon")?;
        common = theirs.intersection(features).cloned().collect();
    }
    Ok(Negotiated {
        version,
        features: common,
    })
}

/// The server's side: check the magic, answer with ours (flushed), read the client's
/// version (refused below [`MINIMUM_CLIENT_VERSION`]), then exchange features from 1.38 on.
pub fn server_handshake<R: Read + ?Sized, W: Write + ?Sized>(
    r: &mut R,
    w: &mut W,
    ours: Version,
    features: &BTreeSet<String>,
    limits: &Limits,
) -> Result<Negotiated, WireError> {
    const WHAT: &str = "the worker greeting";
    let magic = read_u64(r, "worker magic number")?;
    if magic != WORKER_MAGIC_1 {
        return Err(WireError::BadMagic {
            what: "worker greeting of the client",
            expected: WORKER_MAGIC_1,
            got: magic,
        });
    }
    write_u64(w, WORKER_MAGIC_2).map_err(io(WHAT))?;
    write_u64(w, ours.to_wire()).map_err(io(WHAT))?;
    w.flush().map_err(io(WHAT))?;
    let theirs = read_u64(r, "worker protocol version of the client")?;
    let version = check_version(ours, MINIMUM_CLIENT_VERSION, theirs)?;
    let mut common = BTreeSet::new();
    if version >= FEATURES_SINCE {
        let theirs = read_string_set(r, limits, "features of the client")?;
        write_strings(w, features.iter().map(String::as_str)).map_err(io(WHAT))?;
        w.flush().map_err(io(WHAT))?;
        common = theirs.intersection(features).cloned().collect();
    }
    Ok(Negotiated {
        version,
        features: common,
    })
}

/// What the server tells the client after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeInfo {
    /// [≥ 1.33] The server's Nix version, e.g. `2.8.0`.
    pub nix_version: Option<String>,
    /// [≥ 1.35] Whether the server trusts the client; `None` = not said.
    pub trusted: Option<bool>,
}

/// The client's post-handshake: send the obsolete flags, read the server's [`HandshakeInfo`].
/// (The server then sends its start-up log messages, ended by [`StderrMsg::Last`].)
pub fn client_post_handshake<R: Read + ?Sized, W: Write + ?Sized>(
    r: &mut R,
    w: &mut W,
    version: Version,
    limits: &Limits,
) -> Result<HandshakeInfo, WireError> {
    const WHAT: &str = "the worker post-handshake";
    if version >= Version::new(1, 14) {
        write_u64(w, 0).map_err(io(WHAT))?; // no CPU affinity
    }
    if version >= Version::new(1, 11) {
        write_u64(w, 0).map_err(io(WHAT))?; // no reserveSpace
    }
    w.flush().map_err(io(WHAT))?;
    let mut info = HandshakeInfo::default();
    if version >= Version::new(1, 33) {
        info.nix_version = Some(read_string(r, limits, "Nix version of the daemon")?);
    }
    if version >= Version::new(1, 35) {
        info.trusted = match read_u64(r, "trust flag of the daemon")? {
            0 => None,
            1 => Some(true),
            2 => Some(false),
            n => return Err(WireError::unexpected("trust flag of the daemon", n)),
        };
    }
    Ok(info)
}

/// The server's post-handshake: read the client's obsolete flags, send `info` (a missing
/// Nix version is sent empty). Flushed.
pub fn server_post_handshake<R: Read + ?Sized, W: Write + ?Sized>(
    r: &mut R,
    w: &mut W,
    version: Version,
    info: &HandshakeInfo,
) -> Result<(), WireError> {
    const WHAT: &str = "the worker post-handshake";
    if version >= Version::new(1, 14) && read_u64(r, "CPU affinity flag of the client")? != 0 {
        read_u64(r, "CPU affinity of the client")?;
    }
    if version >= Version::new(1, 11) {
        read_u64(r, "reserveSpace flag of the client")?;
    }
    if version >= Version::new(1, 33) {
        write_str(w, info.nix_version.as_deref().unwrap_or("")).map_err(io(WHAT))?;
    }
    if version >= Version::new(1, 35) {
        let flag = match info.trusted {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        write_u64(w, flag).map_err(io(WHAT))?;
    }
    w.flush().map_err(io(WHAT))
}

/// The server's last step of the start-up: `messages` (log lines, or an error refusing the
/// client) then, unless one of them is an error, [`StderrMsg::Last`]. Flushed.
pub fn server_startup<W: Write + ?Sized>(
    w: &mut W,
    version: Version,
    messages: &[StderrMsg],
) -> Result<(), WireError> {
    const WHAT: &str = "the worker start-up messages";
    let mut refused = false;
    for m in messages {
        write_stderr(w, version, m).map_err(io(WHAT))?;
        refused |= matches!(m, StderrMsg::Error(_));
        if refused {
            break;
        }
    }
    if !refused {
        write_stderr(w, version, &StderrMsg::Last).map_err(io(WHAT))?;
    }
    w.flush().map_err(io(WHAT))
}

/// The client's last step of the start-up: the server's messages up to [`StderrMsg::Last`]
/// (`Ok(Ok(()))`) or an error by which it refuses the client (`Ok(Err(info))`); log messages
/// go to `log`.
pub fn client_startup<R: Read + ?Sized, W: Write + ?Sized>(
    r: &mut R,
    w: &mut W,
    version: Version,
    limits: &Limits,
    log: &mut dyn FnMut(StderrMsg),
) -> Result<Result<(), ErrorInfo>, WireError> {
    process_stderr(r, w, version, limits, None, log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::WORKER_PROTOCOL_VERSION;
    use std::io::Cursor;

    /// Run a server handshake on scripted client bytes; the server's output.
    fn server_with(
        input: &[u8],
        ours: Version,
        feats: &[&str],
    ) -> (Result<Negotiated, WireError>, Vec<u8>) {
        let features = feats.iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        let res = server_handshake(
            &mut Cursor::new(input),
            &mut out,
            ours,
            &features,
            &Limits::DEFAULT,
        );
        (res, out)
    }

    fn u(n: u64) -> [u8; 8] {
        n.to_le_bytes()
    }

    #[test]
    fn server_side() {
        // A Nix 2.8 client (1.34): no features.
        let input = [u(WORKER_MAGIC_1), u(0x122)].concat();
        let (res, out) = server_with(&input, WORKER_PROTOCOL_VERSION, &["x"]);
        assert_eq!(
            res.unwrap(),
            Negotiated {
                version: Version::new(1, 34),
                features: BTreeSet::new()
            }
        );
        assert_eq!(out, [u(WORKER_MAGIC_2), u(0x126)].concat());

        // 1.38 with features: the common ones.
        let mut input = [u(WORKER_MAGIC_1), u(0x126)].concat();
        write_strings(&mut input, ["a", "b"]).unwrap();
        let (res, out) = server_with(&input, WORKER_PROTOCOL_VERSION, &["b", "c"]);
        assert_eq!(res.unwrap().features, BTreeSet::from(["b".to_owned()]));
        let mut expect = [u(WORKER_MAGIC_2), u(0x126)].concat();
        write_strings(&mut expect, ["b", "c"]).unwrap();
        assert_eq!(out, expect);

        // Too old, wrong major, bad magic.
        for v in [0x111u64, 0x226, 0x1_0126] {
            let input = [u(WORKER_MAGIC_1), u(v)].concat();
            let (res, _) = server_with(&input, WORKER_PROTOCOL_VERSION, &[]);
            let e = res.unwrap_err();
            assert!(
                matches!(e, WireError::UnsupportedVersion { theirs, .. } if theirs == v),
                "{e}"
            );
        }
        let (res, out) = server_with(
            &u(crate::serve::SERVE_MAGIC_1),
            WORKER_PROTOCOL_VERSION,
            &[],
        );
        assert!(matches!(res.unwrap_err(), WireError::BadMagic { .. }));
        assert!(out.is_empty());
    }

    #[test]
    fn client_side_against_scripted_daemon() {
        // A Nix 2.8 daemon.
        let input = [u(WORKER_MAGIC_2), u(0x122)].concat();
        let mut out = Vec::new();
        let n = client_handshake(
            &mut Cursor::new(&input),
            &mut out,
            WORKER_PROTOCOL_VERSION,
            &BTreeSet::new(),
            &Limits::DEFAULT,
        )
        .unwrap();
        assert_eq!(n.version, Version::new(1, 34));
        assert_eq!(out, [u(WORKER_MAGIC_1), u(0x126)].concat());

        // Then the post-handshake of 1.34: a Nix version, no trust flag.
        let mut input = Vec::new();
        write_str(&mut input, "2.8.0").unwrap();
        let mut out = Vec::new();
        let info = client_post_handshake(
            &mut Cursor::new(&input),
            &mut out,
            n.version,
            &Limits::DEFAULT,
        )
        .unwrap();
        assert_eq!(
            info,
            HandshakeInfo {
                nix_version: Some("2.8.0".into()),
                trusted: None
            }
        );
        assert_eq!(out, [u(0), u(0)].concat());

        // Daemon too old.
        let input = [u(WORKER_MAGIC_2), u(0x109)].concat();
        let e = client_handshake(
            &mut Cursor::new(&input),
            &mut Vec::new(),
            WORKER_PROTOCOL_VERSION,
            &BTreeSet::new(),
            &Limits::DEFAULT,
        )
        .unwrap_err();
        assert!(matches!(e, WireError::UnsupportedVersion { .. }));
    }

    #[test]
    fn post_handshake_round_trip() {
        for v in [
            Version::new(1, 18),
            Version::new(1, 34),
            Version::new(1, 35),
            Version::new(1, 38),
        ] {
            let info = HandshakeInfo {
                nix_version: Some("ferrix 0.1".into()),
                trusted: Some(false),
            };
            // Client's flags: affinity 1 + a value, reserveSpace.
            let client_bytes = [u(1), u(7), u(0)].concat();
            let mut server_out = Vec::new();
            server_post_handshake(&mut Cursor::new(&client_bytes), &mut server_out, v, &info)
                .unwrap();
            let got = client_post_handshake(
                &mut Cursor::new(&server_out),
                &mut Vec::new(),
                v,
                &Limits::DEFAULT,
            )
            .unwrap();
            let mut expect = HandshakeInfo::default();
            if v >= Version::new(1, 33) {
                expect.nix_version = info.nix_version.clone();
            }
            if v >= Version::new(1, 35) {
                expect.trusted = info.trusted;
            }
            assert_eq!(got, expect, "{v}");
        }
    }
}
