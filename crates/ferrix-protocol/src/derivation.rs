//! The `BasicDerivation` both protocols send (serve `BuildDerivation`, worker
//! `BuildDerivation`): a derivation without its input derivations.
//!
//! On the wire: u64 number of outputs, then per output in name order: name, path (`""` when
//! not known), hash algorithm (`r:sha256`, `sha256`, … or `""`), hash (base16, `""`, or
//! `impure`); then the input sources (a store path set), platform, builder, arguments (a string
//! list), u64 number of environment variables, then name/value pairs.
//!
//! It is carried as a [`Derivation`] whose `input_drvs` is empty: [`write_basic_derivation`]
//! leaves `input_drvs` out, [`read_basic_derivation`] gives an empty one. The three strings of
//! an output mean what they mean in a `.drv` file.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use ferrix_format::derivation::OutputFieldsError;
use ferrix_format::{Derivation, DerivationOutput, StoreDir};

use crate::wire::{
    parse_store_path, read_count, read_store_path_set, read_string, read_strings,
    write_store_paths, write_str, write_strings, write_u64, Limits, WireError,
};

/// The path, hash algorithm and hash strings of an output, as Nix writes them.
pub fn output_to_wire(store_dir: &StoreDir, out: &DerivationOutput) -> (String, String, String) {
    out.to_fields(store_dir)
}

/// An output from its three strings, by the rules of `.drv` files.
pub fn output_from_wire(
    store_dir: &StoreDir,
    path: String,
    algo: &str,
    hash: &str,
) -> Result<DerivationOutput, WireError> {
    const WHAT: &str = "output of a derivation";
    let parse_path =
        |p: &str| parse_store_path(store_dir, p.to_owned(), "output path of a derivation");
    DerivationOutput::from_fields(&path, algo, hash, parse_path).map_err(|e| match e {
        OutputFieldsError::Path(e) => e,
        OutputFieldsError::HashWithoutAlgo => WireError::unexpected(
            WHAT,
            format_args!("a hash '{hash}' without a hash algorithm"),
        ),
        OutputFieldsError::PathWithoutHash => {
            WireError::unexpected(WHAT, format_args!("a path '{path}' but no fixed hash"))
        }
        OutputFieldsError::HashWithoutPath => {
            WireError::unexpected(WHAT, format_args!("a fixed hash '{hash}' but no path"))
        }
        OutputFieldsError::Algo => {
            WireError::unexpected("hash algorithm of a derivation output", algo)
        }
        OutputFieldsError::Hash(source) => WireError::BadHash {
            what: "fixed hash of a derivation output",
            text: hash.to_owned(),
            source,
        },
    })
}

/// Write `drv` as a `BasicDerivation` (its `input_drvs` are not sent).
pub fn write_basic_derivation<W: Write + ?Sized>(
    w: &mut W,
    store_dir: &StoreDir,
    drv: &Derivation,
) -> io::Result<()> {
    write_u64(w, drv.outputs.len() as u64)?;
    for (name, out) in &drv.outputs {
        let (path, algo, hash) = output_to_wire(store_dir, out);
        write_str(w, name)?;
        write_str(w, &path)?;
        write_str(w, &algo)?;
        write_str(w, &hash)?;
    }
    write_store_paths(w, store_dir, &drv.input_srcs)?;
    write_str(w, &drv.platform)?;
    write_str(w, &drv.builder)?;
    write_strings(w, drv.args.iter().map(String::as_str))?;
    write_u64(w, drv.env.len() as u64)?;
    for (k, v) in &drv.env {
        write_str(w, k)?;
        write_str(w, v)?;
    }
    Ok(())
}

/// Read a `BasicDerivation`; `input_drvs` is empty. An output or variable named twice is
/// refused (Nix never sends one).
pub fn read_basic_derivation<R: Read + ?Sized>(
    r: &mut R,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<Derivation, WireError> {
    let n = read_count(r, limits, "number of derivation outputs")?;
    let mut outputs = BTreeMap::new();
    for _ in 0..n {
        let name = read_string(r, limits, "output name of a derivation")?;
        let path = read_string(r, limits, "output path of a derivation")?;
        let algo = read_string(r, limits, "hash algorithm of a derivation output")?;
        let hash = read_string(r, limits, "fixed hash of a derivation output")?;
        if outputs.contains_key(&name) {
            return Err(WireError::unexpected(
                "output name of a derivation (sent twice)",
                name,
            ));
        }
        let out = output_from_wire(store_dir, path, &algo, &hash)?;
        outputs.insert(name, out);
    }
    let input_srcs = read_store_path_set(r, store_dir, limits, "input sources of a derivation")?;
    let platform = read_string(r, limits, "platform of a derivation")?;
    let builder = read_string(r, limits, "builder of a derivation")?;
    let args = read_strings(r, limits, "arguments of a derivation")?;
    let n = read_count(r, limits, "number of environment variables of a derivation")?;
    let mut env = BTreeMap::new();
    for _ in 0..n {
        let k = read_string(r, limits, "environment variable name of a derivation")?;
        let v = read_string(r, limits, "environment variable value of a derivation")?;
        if env.contains_key(&k) {
            return Err(WireError::unexpected(
                "environment variable of a derivation (sent twice)",
                k,
            ));
        }
        env.insert(k, v);
    }
    Ok(Derivation {
        outputs,
        input_drvs: BTreeMap::new(),
        input_srcs,
        platform,
        builder,
        args,
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrix_format::content_address::FileIngestionMethod;
    use ferrix_format::hash::{Hash, HashAlgo};
    use std::collections::BTreeSet;

    fn dir() -> StoreDir {
        StoreDir::default()
    }

    fn sp(s: &str) -> ferrix_format::StorePath {
        dir().parse_path(s).unwrap()
    }

    fn sample() -> Derivation {
        let h = Hash::sha256(b"x");
        Derivation {
            outputs: [
                (
                    "out".to_owned(),
                    DerivationOutput::InputAddressed(sp(
                        "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo",
                    )),
                ),
                (
                    "fixed".to_owned(),
                    DerivationOutput::CaFixed {
                        method: FileIngestionMethod::Recursive,
                        hash: h,
                        path: sp("/nix/store/n5wkd9frr45pa74if5gpz9j7mifg27fh-foo"),
                    },
                ),
                (
                    "float".to_owned(),
                    DerivationOutput::CaFloating {
                        method: FileIngestionMethod::Flat,
                        algo: HashAlgo::Sha512,
                    },
                ),
                ("deferred".to_owned(), DerivationOutput::Deferred),
                (
                    "impure".to_owned(),
                    DerivationOutput::Impure {
                        method: FileIngestionMethod::Recursive,
                        algo: HashAlgo::Sha256,
                    },
                ),
            ]
            .into(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::from([sp("/nix/store/n5wkd9frr45pa74if5gpz9j7mifg27fh-src")]),
            platform: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hi > $out".into()],
            env: [("out".to_owned(), "x".to_owned()), ("a".into(), "".into())].into(),
        }
    }

    #[test]
    fn round_trip() {
        let d = sample();
        let mut v = Vec::new();
        write_basic_derivation(&mut v, &dir(), &d).unwrap();
        let back = read_basic_derivation(&mut &v[..], &dir(), &Limits::DEFAULT).unwrap();
        assert_eq!(back, d);
        // Truncation anywhere is an error, never a panic.
        for cut in 0..v.len() {
            assert!(read_basic_derivation(&mut &v[..cut], &dir(), &Limits::DEFAULT).is_err());
        }
    }

    #[test]
    fn exact_bytes_of_one_output() {
        let d = Derivation {
            outputs: [(
                "out".to_owned(),
                DerivationOutput::CaFixed {
                    method: FileIngestionMethod::Flat,
                    hash: Hash::sha256(b""),
                    path: sp("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"),
                },
            )]
            .into(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::new(),
            platform: "p".into(),
            builder: "b".into(),
            args: vec![],
            env: BTreeMap::new(),
        };
        let mut v = Vec::new();
        write_basic_derivation(&mut v, &dir(), &d).unwrap();
        let mut e = Vec::new();
        let s = |e: &mut Vec<u8>, x: &str| ferrix_format::wire::push_bytes(e, x.as_bytes());
        e.extend_from_slice(&1u64.to_le_bytes());
        s(&mut e, "out");
        s(&mut e, "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo");
        s(&mut e, "sha256");
        s(
            &mut e,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        e.extend_from_slice(&0u64.to_le_bytes());
        s(&mut e, "p");
        s(&mut e, "b");
        e.extend_from_slice(&0u64.to_le_bytes());
        e.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(v, e);
    }

    #[test]
    fn bad_outputs() {
        let d = dir();
        let p = "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo".to_owned();
        assert!(output_from_wire(&d, String::new(), "", "abc").is_err());
        assert!(output_from_wire(&d, String::new(), "r:sha1024", "").is_err());
        assert!(output_from_wire(&d, p.clone(), "sha256", "").is_err());
        assert!(output_from_wire(&d, String::new(), "sha256", &"0".repeat(64)).is_err());
        assert!(output_from_wire(&d, p.clone(), "sha256", "zz").is_err());
        assert!(output_from_wire(&d, "/tmp/x".into(), "", "").is_err());
        assert_eq!(
            output_from_wire(&d, String::new(), "", "").unwrap(),
            DerivationOutput::Deferred
        );
    }

    #[test]
    fn duplicates_refused() {
        let mut v = Vec::new();
        write_u64(&mut v, 2).unwrap();
        for _ in 0..2 {
            for s in ["out", "", "", ""] {
                write_str(&mut v, s).unwrap();
            }
        }
        let e = read_basic_derivation(&mut &v[..], &dir(), &Limits::DEFAULT).unwrap_err();
        assert!(matches!(e, WireError::UnexpectedValue { .. }), "{e}");
    }
}
