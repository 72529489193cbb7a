//! Property tests for the pure formats.
//!
//! Two kinds of property: every printer/parser pair round trips on generated values, and every
//! parser is total on hostile input (no panic; NAR and `.drv` errors point inside the input).
//! Hostile inputs are both plain random bytes/strings and structure-aware mutations of valid
//! inputs, so that the parsers are driven past their first few checks.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;

use ferrix_format::content_address::ContentAddress;
use ferrix_format::derivation::DrvParseErrorKind;
use ferrix_format::nar::{self, NarEntry, NarErrorKind, NarVisitor};
use ferrix_format::narinfo::{CacheInfo, NarInfo};
use ferrix_format::signature::{PublicKey, SecretKey, Signature};
use ferrix_format::store_path::{validate_name, StorePathError, MAX_NAME_LEN};
use ferrix_format::{
    nixbase32, Derivation, DerivationOutput, Encoding, FileIngestionMethod, Hash, HashAlgo,
    StoreDir, StorePath,
};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// `cases` cases, and no `proptest-regressions/` files written next to the sources.
fn cfg(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig::with_cases(cases);
    c.failure_persistence = None;
    c
}

// ---------------------------------------------------------------------------------------------
// Shared strategies
// ---------------------------------------------------------------------------------------------

const NIX32_CHARS: &str = "0123456789abcdfghijklmnpqrsvwxyz";
const ENCODINGS: [Encoding; 4] = [
    Encoding::Base16,
    Encoding::Nix32,
    Encoding::Base64,
    Encoding::Sri,
];

fn algo() -> impl Strategy<Value = HashAlgo> {
    select(HashAlgo::ALL.to_vec())
}

fn method() -> impl Strategy<Value = FileIngestionMethod> {
    select(vec![
        FileIngestionMethod::Flat,
        FileIngestionMethod::Recursive,
    ])
}

fn hash_of(algo: HashAlgo) -> impl Strategy<Value = Hash> {
    vec(any::<u8>(), algo.size()).prop_map(move |d| Hash::from_bytes(algo, &d).unwrap())
}

fn hash() -> impl Strategy<Value = Hash> {
    algo().prop_flat_map(hash_of)
}

/// A store path name current Nix accepts.
fn name_of(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[0-9a-zA-Z+._?=-]{{1,{max}}}"))
        .unwrap()
        .prop_filter("'.' or '..' first component", |n| {
            let first = n.split('-').next().unwrap_or("");
            first != "." && first != ".."
        })
}

fn hash_part() -> impl Strategy<Value = String> {
    "[0-9a-df-np-sv-z]{32}"
}

fn store_path_named(name: impl Strategy<Value = String>) -> impl Strategy<Value = StorePath> {
    (hash_part(), name).prop_map(|(h, n)| StorePath::from_base_name(&format!("{h}-{n}")).unwrap())
}

fn short_store_path() -> impl Strategy<Value = StorePath> {
    store_path_named(name_of(24))
}

fn store_dir() -> impl Strategy<Value = StoreDir> {
    prop_oneof![
        Just(StoreDir::default()),
        "(/[a-zA-Z0-9_+][a-zA-Z0-9._+-]{0,7}){1,4}/?".prop_map(|d| StoreDir::new(&d).unwrap()),
    ]
}

/// Strings that look like hashes: a maybe-valid prefix and digits of exactly the lengths the
/// parser switches on, drawn from the various alphabets plus a few non-ASCII characters.
fn hashish() -> impl Strategy<Value = String> {
    let prefix = select(vec![
        "",
        "",
        "md5:",
        "sha1:",
        "sha256:",
        "sha512:",
        "md5-",
        "sha1-",
        "sha256-",
        "sha512-",
        "sha256:sha256:",
        "sha256-:",
        "blake3:",
        "-",
        ":",
        "SHA256:",
    ]);
    let lens = select(vec![
        0usize, 1, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 40, 43, 44, 45, 51, 52, 53, 64, 87, 88,
        102, 103, 104, 128,
    ]);
    let digits = (lens, 0usize..5).prop_flat_map(|(len, pool)| {
        let chars: Vec<char> = match pool {
            0 => "0123456789abcdefABCDEF".chars().collect(),
            1 => NIX32_CHARS.chars().collect(),
            2 => "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
                .chars()
                .collect(),
            3 => "0z=-:é€😀\u{0}".chars().collect(),
            _ => "0123456789abcdefz=é".chars().collect(),
        };
        vec(select(chars), len).prop_map(String::from_iter)
    });
    prop_oneof![
        3 => (prefix, digits).prop_map(|(p, d)| format!("{p}{d}")),
        1 => any::<String>(),
        1 => "[a-z0-9:=+/-]{0,140}",
    ]
}

// ---------------------------------------------------------------------------------------------
// nix32
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cfg(512))]

    /// encode → decode is the identity, and the text has the documented length and alphabet.
    #[test]
    fn nix32_round_trip(bytes in vec(any::<u8>(), 1..=64)) {
        let text = nixbase32::encode(&bytes);
        prop_assert_eq!(text.len(), nixbase32::encoded_len(bytes.len()));
        prop_assert!(nixbase32::is_nix32(text.as_bytes()));
        prop_assert_eq!(nixbase32::decode(text.as_bytes(), bytes.len()), Ok(bytes));
    }

    /// Arbitrary bytes (of any length, or of exactly the right length) never panic the decoder.
    #[test]
    fn nix32_decode_total(
        text in vec(any::<u8>(), 0..120),
        n in 0usize..80,
        exact in (0usize..=64).prop_flat_map(|n| {
            (Just(n), vec(any::<u8>(), nixbase32::encoded_len(n)))
        }),
    ) {
        let _ = nixbase32::decode(&text, n);
        let _ = nixbase32::is_nix32(&text);
        let (n, text) = exact;
        if let Ok(v) = nixbase32::decode(&text, n) {
            prop_assert_eq!(v.len(), n);
        }
    }

    /// Text in the alphabet and of the right length decodes exactly when it is canonical:
    /// what decodes re-encodes to the same text, and only overflow of the top bits is refused.
    #[test]
    fn nix32_decode_canonical(
        (n, text) in (1usize..=64).prop_flat_map(|n| {
            let alphabet: Vec<u8> = NIX32_CHARS.bytes().collect();
            (Just(n), vec(select(alphabet), nixbase32::encoded_len(n)))
        }),
    ) {
        match nixbase32::decode(&text, n) {
            Ok(v) => prop_assert_eq!(nixbase32::encode(&v).into_bytes(), text),
            Err(e) => prop_assert_eq!(e, nixbase32::Nix32Error::Overflow { bytes: n }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hash
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cfg(256))]

    /// For every algorithm and every encoding, the typed text parses back to the same hash
    /// (with or without the algorithm given), bare digits parse with the algorithm given, and
    /// a different expected algorithm is refused.
    #[test]
    fn hash_text_round_trip(digest in vec(any::<u8>(), 64)) {
        for algo in HashAlgo::ALL {
            let h = Hash::from_bytes(algo, &digest[..algo.size()]).unwrap();
            prop_assert_eq!(h.algo(), algo);
            prop_assert_eq!(h.digest(), &digest[..algo.size()]);
            prop_assert!(Hash::from_bytes(algo, &digest[..algo.size() - 1]).is_none());
            for enc in ENCODINGS {
                let typed = h.encode_typed(enc);
                prop_assert_eq!(Hash::parse(&typed, None), Ok(h), "{}", typed);
                prop_assert_eq!(Hash::parse(&typed, Some(algo)), Ok(h), "{}", typed);
                for other in HashAlgo::ALL.into_iter().filter(|&o| o != algo) {
                    prop_assert!(Hash::parse(&typed, Some(other)).is_err(), "{}", typed);
                }
                if enc != Encoding::Sri {
                    let bare = h.encode(enc);
                    prop_assert_eq!(Hash::parse(&bare, Some(algo)), Ok(h), "{}", bare);
                    prop_assert_eq!(Hash::decode_digits(algo, &bare), Ok(h), "{}", bare);
                    prop_assert!(Hash::parse(&bare, None).is_err(), "{}", bare);
                }
            }
            prop_assert_eq!(Hash::parse(&h.to_string(), None), Ok(h));
            let upper = h.to_base16().to_uppercase();
            prop_assert_eq!(Hash::parse(&upper, Some(algo)), Ok(h));
        }
    }

    /// `Hash::of` agrees with the streaming hasher fed in arbitrary pieces.
    #[test]
    fn hash_streaming_matches_one_shot(
        algo in algo(),
        data in vec(any::<u8>(), 0..3000),
        cuts in vec(any::<Index>(), 0..6),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut h = ferrix_format::hash::Hasher::new(algo);
        let mut at = 0;
        for c in cuts {
            h.update(&data[at..c]);
            at = c;
        }
        h.update(&data[at..]);
        prop_assert_eq!(h.finish(), Hash::of(algo, &data));
    }

    /// Parsing any text, with or without an expected algorithm, never panics; what parses
    /// has the expected algorithm and survives a print/parse cycle.
    #[test]
    fn hash_parse_total(text in hashish(), expected in option::of(algo())) {
        for want in [None, expected] {
            if let Ok(h) = Hash::parse(&text, want) {
                if let Some(a) = want {
                    prop_assert_eq!(h.algo(), a);
                }
                prop_assert_eq!(Hash::parse(&h.to_sri(), None), Ok(h));
            }
        }
        for a in HashAlgo::ALL {
            let _ = Hash::decode_digits(a, &text);
        }
        let _ = text.parse::<HashAlgo>();
    }
}

// ---------------------------------------------------------------------------------------------
// StorePath / StoreDir
// ---------------------------------------------------------------------------------------------

/// Strings near the shape of store paths and base names.
fn storeish() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => ("[0-9a-z]{28,36}", "-?", any::<String>()).prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        2 => (hash_part(), "[-/ ]?", "[0-9a-zA-Z+._?=/ é-]{0,215}")
            .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        1 => (select(vec!["/nix/store/", "/nix/store", "/nix/store//", "/", ""]), hash_part(),
              "(-[0-9a-z.]{0,4}){0,2}(/[a-z]{0,3})?")
            .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

proptest! {
    #![proptest_config(cfg(256))]

    /// A valid `<hash>-<name>` parses, prints back identically, and round trips through a store
    /// directory as a full path; a subpath is refused by `parse_path` and split off by
    /// `parse_path_with_subpath`.
    #[test]
    fn store_path_round_trip(h in hash_part(), name in name_of(MAX_NAME_LEN), sd in store_dir()) {
        prop_assert_eq!(validate_name(&name), Ok(()));
        let base = format!("{h}-{name}");
        let p = StorePath::from_base_name(&base).unwrap();
        prop_assert_eq!(p.hash_part(), h.as_str());
        prop_assert_eq!(p.name(), name.as_str());
        prop_assert_eq!(p.to_string(), base.clone());
        prop_assert_eq!(p.base_name(), base.clone());
        prop_assert_eq!(base.parse::<StorePath>(), Ok(p.clone()));
        prop_assert_eq!(p.is_derivation(), name.ends_with(".drv"));

        let full = sd.display(&p);
        prop_assert_eq!(&full, &format!("{sd}/{base}"));
        prop_assert_eq!(sd.parse_path(&full), Ok(p.clone()));
        let with_bin = format!("{full}/bin");
        let r = sd.parse_path(&with_bin);
        prop_assert!(matches!(r, Err(StorePathError::HasSubpath(_))), "{:?}", r);
        let sub = format!("{full}/bin/x");
        prop_assert_eq!(sd.parse_path_with_subpath(&sub), Ok((p.clone(), "/bin/x")));
        prop_assert_eq!(sd.parse_path_with_subpath(&full), Ok((p.clone(), "")));
        prop_assert_eq!(StoreDir::new(sd.as_str()), Ok(sd.clone()));
        let too_long = format!("{base}{}", "x".repeat(MAX_NAME_LEN + 1 - name.len()));
        prop_assert!(StorePath::from_base_name(&too_long).is_err());
    }

    /// `from_digest` writes the digest as the nix32 hash part.
    #[test]
    fn store_path_from_digest(d in vec(any::<u8>(), 20), name in name_of(64)) {
        let digest: [u8; 20] = d.clone().try_into().unwrap();
        let p = StorePath::from_digest(&digest, &name).unwrap();
        prop_assert_eq!(p.hash_part(), nixbase32::encode(&d));
        prop_assert_eq!(nixbase32::decode(p.hash_part().as_bytes(), 20), Ok(d));
        prop_assert_eq!(p.name(), name.as_str());
    }

    /// No store path or store directory parser panics on any string. What parses is
    /// valid: it prints back to the text it came from.
    #[test]
    fn store_path_parsers_total(s in storeish(), dir in prop_oneof![
        any::<String>(),
        "(/[a-z.]{0,3}){0,4}/{0,2}",
    ]) {
        if let Ok(p) = StorePath::from_base_name(&s) {
            prop_assert_eq!(p.to_string(), s.clone());
        }
        let _ = validate_name(&s);
        let sd = StoreDir::default();
        for full in [s.clone(), format!("/nix/store/{s}")] {
            if let Ok(p) = sd.parse_path(&full) {
                prop_assert_eq!(sd.display(&p), full.clone());
            }
            if let Ok((p, rest)) = sd.parse_path_with_subpath(&full) {
                prop_assert_eq!(format!("{}{rest}", sd.display(&p)), full.clone());
            }
        }
        if let Ok(sd) = StoreDir::new(&dir) {
            prop_assert!(sd.as_str().starts_with('/'));
            prop_assert_eq!(StoreDir::new(sd.as_str()), Ok(sd.clone()));
            for full in [s.clone(), format!("{sd}/{s}")] {
                let _ = sd.parse_path(&full);
                let _ = sd.parse_path_with_subpath(&full);
            }
        }
    }
}

/// 31 ASCII bytes, then a two-byte character across byte 32 (where the hash part ends):
/// every parser that reaches `from_base_name` with untrusted text returns an error.
#[test]
fn store_path_multibyte_char_at_hash_split() {
    let base = format!("{}é-name", "a".repeat(31));
    assert!(StorePath::from_base_name(&base).is_err());
    let sd = StoreDir::default();
    assert!(sd.parse_path(&format!("/nix/store/{base}")).is_err());
    let narinfo = format!(
        "StorePath: /nix/store/{base}\nURL: x\nNarHash: sha256:{}\nNarSize: 1\n",
        "0".repeat(52)
    );
    assert!(NarInfo::parse(&sd, &narinfo).is_err());
    let drv = format!(r#"Derive([("out","/nix/store/{base}","","")],[],[],"s","b",[],[])"#);
    assert!(Derivation::parse_aterm(&sd, drv.as_bytes()).is_err());
}

// ---------------------------------------------------------------------------------------------
// NAR
// ---------------------------------------------------------------------------------------------

/// A file system tree as a NAR describes it.
#[derive(Debug, Clone)]
enum Node {
    File { exec: bool, data: Vec<u8> },
    Link(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Node>),
}

fn entry_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[a-zA-Z0-9._-]{1,12}".prop_map(String::into_bytes),
        1 => vec(any::<u8>().prop_filter("NUL or /", |&b| b != 0 && b != b'/'), 1..12),
    ]
    .prop_filter("'.' or '..'", |n| n != b"." && n != b"..")
}

fn tree(max_file: usize) -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        3 => (any::<bool>(), vec(any::<u8>(), 0..max_file))
            .prop_map(|(exec, data)| Node::File { exec, data }),
        1 => vec(1u8..=255, 1..64).prop_map(Node::Link),
        1 => Just(Node::Dir(BTreeMap::new())),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        btree_map(entry_name(), inner, 0..6).prop_map(Node::Dir)
    })
}

fn framed(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// An independent NAR writer from the format's definition, to check `dump_path` against.
fn model_nar(n: &Node) -> Vec<u8> {
    fn node(out: &mut Vec<u8>, n: &Node) {
        framed(out, b"(");
        framed(out, b"type");
        match n {
            Node::File { exec, data } => {
                framed(out, b"regular");
                if *exec {
                    framed(out, b"executable");
                    framed(out, b"");
                }
                framed(out, b"contents");
                framed(out, data);
            }
            Node::Link(target) => {
                framed(out, b"symlink");
                framed(out, b"target");
                framed(out, target);
            }
            Node::Dir(entries) => {
                framed(out, b"directory");
                // BTreeMap<Vec<u8>, _> iterates in byte order, NAR's order.
                for (name, child) in entries {
                    framed(out, b"entry");
                    framed(out, b"(");
                    framed(out, b"name");
                    framed(out, name);
                    framed(out, b"node");
                    node(out, child);
                    framed(out, b")");
                }
            }
        }
        framed(out, b")");
    }
    let mut out = Vec::new();
    framed(&mut out, nar::MAGIC);
    node(&mut out, n);
    out
}

fn write_tree(path: &Path, n: &Node) -> io::Result<()> {
    match n {
        Node::File { exec, data } => {
            fs::write(path, data)?;
            let mode = if *exec { 0o755 } else { 0o644 };
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
        }
        Node::Link(target) => symlink(OsStr::from_bytes(target), path),
        Node::Dir(entries) => {
            fs::create_dir(path)?;
            for (name, child) in entries {
                write_tree(&path.join(OsStr::from_bytes(name)), child)?;
            }
            Ok(())
        }
    }
}

/// The listing matches the model, and every regular file's offset points at its contents.
fn check_listing(e: &NarEntry, n: &Node, nar: &[u8]) -> Result<(), TestCaseError> {
    match (e, n) {
        (
            NarEntry::Regular {
                executable,
                size,
                offset,
            },
            Node::File { exec, data },
        ) => {
            prop_assert_eq!(executable, exec);
            prop_assert_eq!(*size, data.len() as u64);
            let at = *offset as usize;
            prop_assert_eq!(&nar[at..at + data.len()], &data[..]);
        }
        (NarEntry::Symlink { target }, Node::Link(t)) => prop_assert_eq!(target, t),
        (NarEntry::Directory { entries }, Node::Dir(model)) => {
            prop_assert_eq!(
                entries.keys().collect::<Vec<_>>(),
                model.keys().collect::<Vec<_>>()
            );
            for (name, child) in model {
                check_listing(&entries[name], child, nar)?;
            }
        }
        (e, n) => prop_assert!(false, "listing {:?} does not match model {:?}", e, n),
    }
    Ok(())
}

/// A visitor that reads up to `limit` bytes of each file (the parser skips the rest).
struct Reading {
    limit: u64,
}

impl NarVisitor for Reading {
    fn directory(&mut self, _path: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn regular(
        &mut self,
        _path: &[u8],
        _executable: bool,
        size: u64,
        _offset: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let want = size.min(self.limit);
        let got = io::copy(&mut contents.take(want), &mut io::sink())?;
        if got < want {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
    fn symlink(&mut self, _path: &[u8], _target: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

proptest! {
    #![proptest_config(cfg(64))]

    /// A random tree written to disk: `dump_path` gives exactly the NAR of the independent
    /// writer; `list` accepts it with the right size, structure and content offsets;
    /// `restore` + `dump_path` reproduces it byte for byte; `hash_path` equals SHA-256 of the
    /// bytes and their count; `parse` stops at the end of the archive, `parse_exact` refuses
    /// trailing bytes.
    #[test]
    fn nar_round_trip(t in tree(2000)) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        write_tree(&src, &t).unwrap();

        let mut bytes = Vec::new();
        nar::dump_path(&src, &mut bytes).unwrap();
        prop_assert!(bytes == model_nar(&t), "dump_path differs from the model NAR");
        let len = bytes.len() as u64;

        let listing = nar::list(&bytes[..]).unwrap();
        prop_assert_eq!(listing.nar_size, len);
        check_listing(&listing.root, &t, &bytes)?;
        prop_assert!(listing.get(b"").is_some());

        let dst = tmp.path().join("dst");
        prop_assert_eq!(nar::restore(&bytes[..], &dst).unwrap(), len);
        let mut again = Vec::new();
        nar::dump_path(&dst, &mut again).unwrap();
        prop_assert!(again == bytes, "restore + dump_path differs");

        let (h, size) = nar::hash_path(&src, HashAlgo::Sha256).unwrap();
        prop_assert_eq!(h, Hash::of(HashAlgo::Sha256, &bytes));
        prop_assert_eq!(size, len);

        let mut longer = bytes.clone();
        longer.extend_from_slice(b"more");
        for limit in [0, 3, u64::MAX] {
            prop_assert_eq!(nar::parse(&longer[..], &mut Reading { limit }).unwrap(), len);
            prop_assert_eq!(nar::parse_exact(&bytes[..], &mut Reading { limit }).unwrap(), len);
        }
        let e = nar::parse_exact(&longer[..], &mut Reading { limit: 0 }).unwrap_err();
        prop_assert!(matches!(e.kind, NarErrorKind::TrailingData), "{}", e);
        prop_assert_eq!(e.offset, len);
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR a byte with a non-zero value.
    Flip(Index, u8),
    /// Overwrite an aligned 8-byte word (a length, mostly) with an interesting value.
    Word(Index, u64),
    /// Overwrite the size word of one regular file (found after a framed `contents`).
    FileSize(Index, u64),
    Truncate(Index),
    Insert(Index, u8),
    Delete(Index),
    /// Copy one aligned 8..64-byte run over another place (duplicated/misplaced tokens).
    Splice(Index, Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![
        select(vec![
            0u64,
            1,
            7,
            8,
            9,
            16,
            4096,
            4097,
            u64::MAX,
            u64::MAX - 7,
            u64::MAX / 2,
            1 << 32,
            1 << 63,
        ]),
        0u64..5000,
        u64::MAX - 255..=u64::MAX,
        any::<u64>(),
    ];
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        3 => (any::<Index>(), word.clone()).prop_map(|(i, w)| Mutation::Word(i, w)),
        2 => (any::<Index>(), word).prop_map(|(i, w)| Mutation::FileSize(i, w)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<Index>().prop_map(Mutation::Delete),
        1 => (any::<Index>(), any::<Index>(), 1usize..=8)
            .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
    ]
}

fn mutate(v: &mut Vec<u8>, m: &Mutation) {
    if v.is_empty() {
        return;
    }
    let len = v.len();
    match m {
        Mutation::Flip(i, b) => v[i.index(len)] ^= b,
        Mutation::Word(i, w) => {
            if len >= 8 {
                let at = i.index(len / 8) * 8;
                v[at..at + 8].copy_from_slice(&w.to_le_bytes());
            }
        }
        Mutation::FileSize(i, w) => {
            let mut tok = Vec::new();
            framed(&mut tok, b"contents");
            let sizes: Vec<usize> = (0..len.saturating_sub(tok.len() + 7))
                .filter(|&at| v[at..].starts_with(&tok))
                .map(|at| at + tok.len())
                .collect();
            if !sizes.is_empty() {
                let at = sizes[i.index(sizes.len())];
                v[at..at + 8].copy_from_slice(&w.to_le_bytes());
            }
        }
        Mutation::Truncate(i) => v.truncate(i.index(len)),
        Mutation::Insert(i, b) => v.insert(i.index(len + 1), *b),
        Mutation::Delete(i) => {
            v.remove(i.index(len));
        }
        Mutation::Splice(from, to, words) => {
            let n = words * 8;
            if len >= n {
                let a = from.index(len - n + 1) / 8 * 8;
                let b = to.index(len - n + 1) / 8 * 8;
                let run = v[a..a + n].to_vec();
                v[b..b + n].copy_from_slice(&run);
            }
        }
    }
}

/// Random framed tokens after the magic: grammar-shaped noise that gets deep into the parser.
fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        6 => select(vec![
            &b"("[..], b")", b"type", b"regular", b"directory", b"symlink", b"entry", b"name",
            b"node", b"target", b"contents", b"executable", b"", b"a", b"b", b".", b"..", b"a/b",
        ])
        .prop_map(|t| {
            let mut v = Vec::new();
            framed(&mut v, t);
            v
        }),
        1 => vec(any::<u8>(), 0..20).prop_map(|t| {
            let mut v = Vec::new();
            framed(&mut v, &t);
            v
        }),
        1 => select(vec![0u64, 1, 3, 8, 20, u64::MAX, 1 << 40]).prop_map(|n| n.to_le_bytes().to_vec()),
        1 => vec(any::<u8>(), 0..9),
    ];
    vec(token, 0..40).prop_map(|ts| {
        let mut v = Vec::new();
        framed(&mut v, nar::MAGIC);
        v.extend(ts.concat());
        v
    })
}

fn check_nar_parsers(bytes: &[u8]) -> Result<(), TestCaseError> {
    let len = bytes.len() as u64;
    match nar::list(bytes) {
        Ok(l) => prop_assert_eq!(l.nar_size, len),
        Err(e) => prop_assert!(e.offset <= len, "offset {} > len {}: {}", e.offset, len, e),
    }
    for limit in [0, 3, u64::MAX] {
        match nar::parse_exact(bytes, &mut Reading { limit }) {
            Ok(n) => prop_assert_eq!(n, len),
            Err(e) => prop_assert!(e.offset <= len, "offset {} > len {}: {}", e.offset, len, e),
        }
        match nar::parse(bytes, &mut Reading { limit }) {
            Ok(n) => prop_assert!(n <= len),
            Err(e) => prop_assert!(e.offset <= len, "offset {} > len {}: {}", e.offset, len, e),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cfg(512))]

    /// Arbitrary bytes, and framed-token noise behind a valid magic, never panic the NAR
    /// parsers; errors point inside the input.
    #[test]
    fn nar_parsers_total(
        bytes in prop_oneof![vec(any::<u8>(), 0..600), token_soup()],
    ) {
        check_nar_parsers(&bytes)?;
    }

    /// Valid NARs with a few random mutations or a truncation either still parse (with the
    /// right size) or fail with an error inside the input.
    #[test]
    fn nar_mutations_total(t in tree(200), muts in vec(mutation(), 1..4)) {
        let mut bytes = model_nar(&t);
        for m in &muts {
            mutate(&mut bytes, m);
        }
        check_nar_parsers(&bytes)?;
    }
}

proptest! {
    #![proptest_config(cfg(48))]

    /// A mutated NAR that `restore` accepts was canonical, so dumping what it wrote gives
    /// back exactly the same bytes; one it refuses is refused without a panic.
    #[test]
    fn nar_restore_mutated(t in tree(200), muts in vec(mutation(), 1..3)) {
        let mut bytes = model_nar(&t);
        for m in &muts {
            mutate(&mut bytes, m);
        }
        let accepted = nar::list(&bytes[..]).is_ok();
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("r");
        match nar::restore(&bytes[..], &dst) {
            Ok(n) => {
                prop_assert!(accepted);
                prop_assert_eq!(n, bytes.len() as u64);
                let mut again = Vec::new();
                nar::dump_path(&dst, &mut again).unwrap();
                prop_assert!(again == bytes, "restore + dump_path differs from accepted NAR");
            }
            Err(_) => prop_assert!(!accepted),
        }
    }
}

/// A regular file declaring a size near `u64::MAX`, read by a visitor that reads contents
/// (as `restore` does): an error, not an overflow.
#[test]
fn nar_huge_size_read_by_visitor() {
    let mut bytes = model_nar(&Node::File {
        exec: false,
        data: b"hello".to_vec(),
    });
    // The size word precedes 8 bytes of data + padding and the 16-byte framed ")".
    let at = bytes.len() - 16 - 8 - 8;
    bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let r = nar::parse_exact(&bytes[..], &mut Reading { limit: u64::MAX });
    assert!(r.is_err());
    let tmp = tempfile::tempdir().unwrap();
    assert!(nar::restore(&bytes[..], &tmp.path().join("r")).is_err());
}

// ---------------------------------------------------------------------------------------------
// Derivations
// ---------------------------------------------------------------------------------------------

/// Strings with everything the escaper handles, plus arbitrary Unicode.
fn drv_string() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            3 => any::<char>(),
            3 => select(vec![
                '"', '\\', '\n', '\t', '\r', '(', ')', '[', ']', ',', 'é', '€', '😀', '\u{0}',
                '\u{7f}', 'n', 't', 'r',
            ]),
            2 => proptest::char::range('a', 'z'),
        ],
        0..24,
    )
    .prop_map(String::from_iter)
}

/// Fields Nix writes without escaping must not hold `"` or `\`.
fn raw_string() -> impl Strategy<Value = String> {
    drv_string().prop_map(|s| s.replace(['"', '\\'], ""))
}

fn output_name() -> impl Strategy<Value = String> {
    "[a-z][a-zA-Z0-9_+.-]{0,10}"
}

fn drv_output() -> impl Strategy<Value = DerivationOutput> {
    prop_oneof![
        4 => short_store_path().prop_map(DerivationOutput::InputAddressed),
        1 => (method(), hash(), short_store_path())
            .prop_map(|(method, hash, path)| DerivationOutput::CaFixed { method, hash, path }),
        1 => (method(), algo()).prop_map(|(method, algo)| DerivationOutput::CaFloating { method, algo }),
        1 => Just(DerivationOutput::Deferred),
        1 => (method(), algo()).prop_map(|(method, algo)| DerivationOutput::Impure { method, algo }),
    ]
}

fn derivation() -> impl Strategy<Value = Derivation> {
    (
        btree_map(output_name(), drv_output(), 1..4),
        btree_map(
            store_path_named(name_of(20).prop_map(|n| format!("{n}.drv"))),
            btree_set(output_name(), 0..3),
            0..4,
        ),
        btree_set(short_store_path(), 0..4),
        raw_string(),
        drv_string(),
        vec(drv_string(), 0..5),
        btree_map(drv_string(), drv_string(), 0..8),
    )
        .prop_map(
            |(outputs, input_drvs, input_srcs, platform, builder, args, env)| Derivation {
                outputs,
                input_drvs,
                input_srcs,
                platform,
                builder,
                args,
                env,
            },
        )
}

/// Every `.drv` of the golden vectors, with the store directory its paths are in.
fn real_drvs() -> &'static [(StoreDir, Vec<u8>)] {
    static DRVS: OnceLock<Vec<(StoreDir, Vec<u8>)>> = OnceLock::new();
    DRVS.get_or_init(|| {
        let root = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/vectors/drv"
        ));
        let mut files = Vec::new();
        for case in fs::read_dir(root).unwrap() {
            let drvs = case.unwrap().path().join("drvs");
            if !drvs.is_dir() {
                continue;
            }
            for f in fs::read_dir(drvs).unwrap() {
                let p = f.unwrap().path();
                if p.extension() == Some(OsStr::new("drv")) {
                    files.push(p);
                }
            }
        }
        files.sort();
        assert!(!files.is_empty(), "found no .drv files");
        files
            .into_iter()
            .map(|p| {
                let bytes = fs::read(&p).unwrap();
                (guess_store_dir(&bytes), bytes)
            })
            .collect()
    })
}

/// The directory of the first absolute path in a `.drv` (an output path).
fn guess_store_dir(drv: &[u8]) -> StoreDir {
    let text = String::from_utf8_lossy(drv);
    text.find("\"/")
        .and_then(|i| {
            let rest = &text[i + 1..];
            let path = &rest[..rest.find('"')?];
            StoreDir::new(path.rsplit_once('/')?.0).ok()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
enum DrvMutation {
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
    /// Copy a short run elsewhere (duplicated entries, misplaced separators).
    Copy(Index, Index, usize),
}

fn drv_mutation() -> impl Strategy<Value = DrvMutation> {
    let byte = prop_oneof![select(b"\"\\()[],nrt0/-:\n\xc3\xff".to_vec()), any::<u8>(),];
    prop_oneof![
        3 => (any::<Index>(), byte.clone()).prop_map(|(i, b)| DrvMutation::Set(i, b)),
        2 => (any::<Index>(), byte).prop_map(|(i, b)| DrvMutation::Insert(i, b)),
        2 => any::<Index>().prop_map(DrvMutation::Delete),
        1 => any::<Index>().prop_map(DrvMutation::Truncate),
        2 => (any::<Index>(), any::<Index>(), 1usize..80)
            .prop_map(|(a, b, n)| DrvMutation::Copy(a, b, n)),
    ]
}

fn mutate_drv(v: &mut Vec<u8>, m: &DrvMutation) {
    let len = v.len();
    if len == 0 {
        return;
    }
    match m {
        DrvMutation::Set(i, b) => v[i.index(len)] = *b,
        DrvMutation::Insert(i, b) => v.insert(i.index(len + 1), *b),
        DrvMutation::Delete(i) => {
            v.remove(i.index(len));
        }
        DrvMutation::Truncate(i) => v.truncate(i.index(len)),
        DrvMutation::Copy(from, to, n) => {
            let n = (*n).min(len);
            let a = from.index(len - n + 1);
            let run = v[a..a + n].to_vec();
            let b = to.index(len + 1);
            v.splice(b..b, run);
        }
    }
}

/// Parse hostile text: no panic, the error offset inside the text; what parses and has no
/// `"` or `\` in the fields Nix prints raw survives a print/parse cycle.
fn check_drv_parser(sd: &StoreDir, text: &[u8]) -> Result<(), TestCaseError> {
    match Derivation::parse_aterm(sd, text) {
        Ok(d) => {
            let raw_ok = |s: &str| !s.contains(['"', '\\']);
            let printable = raw_ok(&d.platform)
                && d.outputs.keys().all(|k| raw_ok(k))
                && d.input_drvs.values().flatten().all(|o| raw_ok(o));
            if printable {
                let again = Derivation::parse_aterm(sd, d.to_aterm(sd).as_bytes());
                prop_assert_eq!(again, Ok(d));
            }
        }
        Err(e) => prop_assert!(
            e.offset <= text.len(),
            "offset {} > {}: {}",
            e.offset,
            text.len(),
            e
        ),
    }
    // The same bytes as JSON: never a panic; what parses prints and reads back the same.
    if let Ok(p) = Derivation::from_json(sd, &String::from_utf8_lossy(text)) {
        let again = Derivation::from_json(sd, &p.drv.to_json(sd).compact()).map(|x| x.drv);
        prop_assert_eq!(again.ok(), Some(p.drv));
    }
    Ok(())
}

/// Grammar-shaped noise: `Derive(` and a soup of the format's tokens.
fn drv_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        4 => select(vec![
            "[", "]", "(", ")", ",", "\"", "\\", "\"\"", "\"out\"", "\"sha256\"", "\"r:sha256\"",
            "\"impure\"", "\"x86_64-linux\"", "\"/nix/store/0g1savw1cf7pji42hasyx0smc4aw15nw-t\"",
            "\"/nix/store/0g1savw1cf7pji42hasyx0smc4aw15nw-t.drv\"",
            "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"",
            "\"/nix/store/x\"", "\"/tmp/x\"",
        ])
        .prop_map(String::from),
        1 => drv_string().prop_map(|s| format!("\"{s}\"")),
        1 => drv_string(),
    ];
    vec(token, 0..60).prop_map(|ts| format!("Derive({}", ts.concat()).into_bytes())
}

proptest! {
    #![proptest_config(cfg(256))]

    /// Generated derivations (all output kinds, hostile env/args/builder text, paths in a
    /// random store directory) round trip through the ATerm text, which is also stable.
    #[test]
    fn drv_round_trip(d in derivation(), sd in store_dir()) {
        let text = d.to_aterm(&sd);
        let back = Derivation::parse_aterm(&sd, text.as_bytes());
        prop_assert_eq!(back, Ok(d.clone()));
        if sd != StoreDir::default() && !d.outputs.values().all(|o| o.path().is_none()) {
            let other = Derivation::parse_aterm(&StoreDir::default(), text.as_bytes());
            prop_assert!(other.is_err(), "paths of {} accepted in /nix/store", sd);
        }
        // Every proper prefix is refused, as truncated or otherwise, at an offset inside it.
        let cut = text.len() / 2;
        let e = Derivation::parse_aterm(&sd, &text.as_bytes()[..cut]).unwrap_err();
        prop_assert!(e.offset <= cut);
    }

    /// Arbitrary bytes and token soup never panic the parser.
    #[test]
    fn drv_parse_total(bytes in prop_oneof![vec(any::<u8>(), 0..300), drv_soup()]) {
        check_drv_parser(&StoreDir::default(), &bytes)?;
    }

    /// Real `.drv` files from the vectors with a few mutations never panic the parser.
    #[test]
    fn drv_mutations_total(which in any::<Index>(), muts in vec(drv_mutation(), 1..4)) {
        let drvs = real_drvs();
        let (sd, orig) = &drvs[which.index(drvs.len())];
        let mut text = orig.clone();
        for m in &muts {
            mutate_drv(&mut text, m);
        }
        check_drv_parser(sd, &text)?;
    }

    /// The JSON form of real `.drv` files with a few bytes changed: the JSON reader never
    /// panics, and what it accepts prints and reads back the same.
    #[test]
    fn drv_json_mutations_total(which in any::<Index>(), edits in vec((any::<Index>(), any::<u8>()), 0..4)) {
        let drvs = real_drvs();
        let (sd, orig) = &drvs[which.index(drvs.len())];
        let d = Derivation::parse_aterm(sd, orig).unwrap();
        let mut text = d.to_json(sd).compact().into_bytes();
        for (at, byte) in &edits {
            let k = at.index(text.len());
            text[k] = *byte;
        }
        check_drv_parser(sd, &text)?;
    }
}

/// Baseline for the mutation property: every vector parses and prints back byte for byte.
#[test]
fn real_drvs_parse_and_print_back() {
    for (sd, text) in real_drvs() {
        let d = Derivation::parse_aterm(sd, text).unwrap();
        assert_eq!(d.to_aterm(sd).as_bytes(), &text[..]);
        assert!(matches!(
            Derivation::parse_aterm(sd, &text[..text.len() - 1]),
            Err(e) if e.kind == DrvParseErrorKind::Truncated || matches!(e.kind, DrvParseErrorKind::Expected(_))
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// narinfo, nix-cache-info, keys and signatures, content addresses
// ---------------------------------------------------------------------------------------------

fn key_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9.-]{1,16}"
}

fn signature() -> impl Strategy<Value = Signature> {
    (key_name(), vec(any::<u8>(), 32), vec(any::<u8>(), 0..32)).prop_map(|(name, seed, data)| {
        SecretKey::from_seed(&name, &seed.try_into().unwrap()).sign(&data)
    })
}

fn content_address() -> impl Strategy<Value = ContentAddress> {
    prop_oneof![
        hash_of(HashAlgo::Sha256).prop_map(ContentAddress::Text),
        (method(), hash()).prop_map(|(method, hash)| ContentAddress::Fixed { method, hash }),
    ]
}

fn narinfo() -> impl Strategy<Value = NarInfo> {
    (
        store_path_named(name_of(MAX_NAME_LEN)),
        "[a-zA-Z0-9/._:+-]{0,60}",
        "[a-z0-9]{0,8}",
        option::of(hash()),
        option::of(any::<u64>()),
        hash(),
        1..=u64::MAX,
        btree_set(short_store_path(), 0..5),
        option::of(store_path_named(
            name_of(20).prop_map(|n| format!("{n}.drv")),
        )),
        option::of("[a-z0-9_-]{0,16}"),
        vec(signature(), 0..3),
        option::of(content_address()),
    )
        .prop_map(
            |(
                store_path,
                url,
                compression,
                file_hash,
                file_size,
                nar_hash,
                nar_size,
                references,
                deriver,
                system,
                sigs,
                ca,
            )| NarInfo {
                store_path,
                url,
                compression,
                file_hash,
                file_size,
                nar_hash,
                nar_size,
                references,
                deriver,
                system,
                sigs,
                ca,
            },
        )
}

/// Narinfo-shaped text: lines of known keys with plausible or hostile values.
fn narinfo_text() -> impl Strategy<Value = String> {
    let key = select(vec![
        "StorePath",
        "URL",
        "Compression",
        "FileHash",
        "FileSize",
        "NarHash",
        "NarSize",
        "References",
        "Deriver",
        "System",
        "Sig",
        "CA",
        "Other",
        "",
    ]);
    let value = prop_oneof![
        hashish(),
        storeish(),
        (
            select(vec!["fixed:", "fixed:r:", "text:", "nar:"]),
            hashish()
        )
            .prop_map(|(a, b)| format!("{a}{b}")),
        (key_name(), hashish()).prop_map(|(a, b)| format!("{a}:{b}")),
        "[0-9]{0,21}",
        any::<String>(),
    ];
    let line = (key, select(vec![": ", ":", ":  ", " : "]), value)
        .prop_map(|(k, s, v)| format!("{k}{s}{v}"));
    (vec(line, 0..14), any::<bool>()).prop_map(|(ls, nl)| {
        let mut t = ls.join("\n");
        if nl {
            t.push('\n');
        }
        t
    })
}

/// `name:base64` where the name and decoded size are near what keys and signatures need.
fn keyish() -> impl Strategy<Value = String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    prop_oneof![
        any::<String>(),
        hashish(),
        (
            prop_oneof![
                key_name(),
                Just(String::new()),
                Just(" k ".to_owned()),
                "[a-z:]{0,6}"
            ],
            prop_oneof![
                select(vec![0usize, 31, 32, 33, 63, 64, 65]).prop_flat_map(|n| vec(any::<u8>(), n)),
                // A valid secret key whose public half is swapped for another's.
                (vec(any::<u8>(), 32), vec(any::<u8>(), 32)).prop_map(|(seed, other)| {
                    let sk = SecretKey::from_seed("x", &seed.try_into().unwrap());
                    let pk = SecretKey::from_seed("x", &other.try_into().unwrap()).to_public();
                    let mut kp = b64_decode(&sk.to_string()[2..]);
                    kp.truncate(32);
                    kp.extend(b64_decode(&pk.to_string()[2..]));
                    kp
                }),
            ],
            select(vec!["", "=", " ", "\n"]),
        )
            .prop_map(move |(name, bytes, tail)| format!("{name}:{}{tail}", b64.encode(bytes))),
    ]
}

fn b64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

proptest! {
    #![proptest_config(cfg(256))]

    /// A narinfo of generated fields prints and parses back to itself; a signature made over
    /// it survives the text and verifies against the key, and not after a field changes.
    #[test]
    fn narinfo_round_trip(
        ni in narinfo(),
        sd in store_dir(),
        seed in vec(any::<u8>(), 32),
        name in key_name(),
    ) {
        let text = ni.to_text(&sd);
        prop_assert_eq!(NarInfo::parse(&sd, &text), Ok(ni.clone()));

        let key = SecretKey::from_seed(&format!("{name}-signer"), &seed.try_into().unwrap());
        let mut signed = ni.clone();
        signed.sign(&sd, &key);
        let back = NarInfo::parse(&sd, &signed.to_text(&sd)).unwrap();
        prop_assert_eq!(back.valid_signatures(&sd, &[key.to_public()]), 1);
        let mut changed = back;
        changed.nar_size ^= 1;
        prop_assert_eq!(changed.valid_signatures(&sd, &[key.to_public()]), 0);
    }

    /// A nix-cache-info of generated fields prints and parses back to itself.
    #[test]
    fn cache_info_round_trip(
        store_dir in option::of("/[a-z/]{0,20}"),
        want_mass_query in option::of(any::<bool>()),
        priority in option::of(any::<u64>()),
    ) {
        let ci = CacheInfo { store_dir, want_mass_query, priority };
        prop_assert_eq!(CacheInfo::parse(&ci.to_text()), Ok(ci));
    }

    /// Narinfo and nix-cache-info parsers never panic; a narinfo that parses prints to a
    /// text that parses back to the same value.
    #[test]
    fn narinfo_parse_total(text in prop_oneof![1 => any::<String>(), 4 => narinfo_text()]) {
        let sd = StoreDir::default();
        if let Ok(ni) = NarInfo::parse(&sd, &text) {
            prop_assert_eq!(NarInfo::parse(&sd, &ni.to_text(&sd)), Ok(ni));
        }
        let _ = CacheInfo::parse(&text);
    }

    /// Key and signature parsers never panic; what parses prints back as the trimmed text.
    #[test]
    fn keys_and_signatures_total(text in keyish()) {
        if let Ok(k) = text.parse::<SecretKey>() {
            prop_assert_eq!(k.to_string(), text.trim());
        }
        if let Ok(k) = text.parse::<PublicKey>() {
            prop_assert_eq!(k.to_string(), text.trim());
        }
        if let Ok(s) = text.parse::<Signature>() {
            prop_assert_eq!(s.to_string(), text.trim());
        }
    }

    /// Generated keys and signatures round trip through their text, and verify.
    #[test]
    fn keys_round_trip(name in key_name(), seed in vec(any::<u8>(), 32), data in vec(any::<u8>(), 0..64)) {
        let sk = SecretKey::from_seed(&name, &seed.try_into().unwrap());
        let pk = sk.to_public();
        let sig = sk.sign(&data);
        prop_assert_eq!(sk.to_string().parse::<SecretKey>().unwrap().to_public(), pk.clone());
        prop_assert_eq!(pk.to_string().parse::<PublicKey>(), Ok(pk.clone()));
        prop_assert_eq!(sig.to_string().parse::<Signature>(), Ok(sig.clone()));
        prop_assert!(pk.verify(&data, &sig));
        let mut other = data.clone();
        other.push(0);
        prop_assert!(!pk.verify(&other, &sig));
    }

    /// Content addresses: never panic on hostile text; generated ones round trip, and what
    /// parses prints to a text that parses back to the same value.
    #[test]
    fn content_address_total(
        text in prop_oneof![
            any::<String>(),
            (select(vec!["fixed:", "fixed:r:", "text:", "fixed:r:r:", "nar:", ""]), hashish())
                .prop_map(|(a, b)| format!("{a}{b}")),
        ],
        ca in content_address(),
    ) {
        if let Ok(c) = text.parse::<ContentAddress>() {
            prop_assert_eq!(c.to_string().parse::<ContentAddress>(), Ok(c));
        }
        prop_assert_eq!(ca.to_string().parse::<ContentAddress>(), Ok(ca));
    }
}
