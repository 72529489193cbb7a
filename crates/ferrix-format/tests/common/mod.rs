//! Helpers shared by the vector tests: locating vectors, building file trees they describe.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ferrix_format::Hash;
use serde_json::Value;

pub fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

pub fn jsonl(name: &str) -> Vec<Value> {
    fs::read_to_string(vectors().join(name))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn json(name: &str) -> Value {
    serde_json::from_str(&fs::read_to_string(vectors().join(name)).unwrap()).unwrap()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The "sha256-counter" recipe of the vectors' README.
pub fn recipe(r: &Value) -> Vec<u8> {
    assert_eq!(r["kind"], "sha256-counter");
    let seed = r["seed"].as_str().unwrap();
    let size = r["size"].as_u64().unwrap() as usize;
    let mut out = Vec::with_capacity(size + 32);
    let mut i = 0u64;
    while out.len() < size {
        out.extend_from_slice(Hash::sha256(format!("{seed}:{i}").as_bytes()).digest());
        i += 1;
    }
    out.truncate(size);
    out
}

pub fn contents(node: &Value) -> Vec<u8> {
    if let Some(b) = node.get("contents_b64") {
        base64::engine::general_purpose::STANDARD
            .decode(b.as_str().unwrap())
            .unwrap()
    } else {
        recipe(&node["contents_recipe"])
    }
}

/// Create the file tree a vector describes at `at`.
pub fn build_tree(node: &Value, at: &Path) {
    match node["type"].as_str().unwrap() {
        "regular" => {
            fs::write(at, contents(node)).unwrap();
            let mode = if node["executable"].as_bool().unwrap_or(false) {
                0o755
            } else {
                0o644
            };
            fs::set_permissions(at, fs::Permissions::from_mode(mode)).unwrap();
        }
        "symlink" => {
            std::os::unix::fs::symlink(node["target"].as_str().unwrap(), at).unwrap();
        }
        "directory" => {
            fs::create_dir(at).unwrap();
            for (name, child) in node["entries"].as_object().unwrap() {
                build_tree(child, &at.join(name));
            }
        }
        t => panic!("unknown node type {t}"),
    }
}
