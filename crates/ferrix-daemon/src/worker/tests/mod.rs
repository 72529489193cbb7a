//! Worker sessions with scripted client bytes and an in-memory store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Cursor, Read, Write};

use ferrix_format::content_address::FileIngestionMethod;
use ferrix_format::hash::{Hash, HashAlgo};
use ferrix_format::wire::push_bytes;
use ferrix_format::{ContentAddress, Derivation, DerivationOutput, StoreDir, StorePath};
use ferrix_protocol::wire::{
    read_bool, read_opt_store_path, read_store_path, read_store_path_set, read_string,
    read_string_set, read_u64, write_str, write_u64,
};
use ferrix_protocol::worker::payload::{write_framed, MultiplePathsWriter};
use ferrix_protocol::worker::reply::{
    read_missing, read_ok, read_output_map, read_path_info_reply,
};
use ferrix_protocol::worker::stderr::{activity, result_type, verbosity};
use ferrix_protocol::worker::{
    client_handshake, client_post_handshake, client_startup, process_stderr, read_build_result,
    read_keyed_build_results, read_request, read_stderr, write_request, BuildMode, BuildResult,
    BuildStatus, BuiltOutput, CaMethod, ClientOptions, DerivedPath, ErrorInfo, Field, GcAction,
    HandshakeInfo, KeyedBuildResult, Missing, OutputsSpec, PathInfo, StderrMsg, UnkeyedPathInfo,
    WorkerRequest, FULL, WORKER_MAGIC_1, WORKER_MAGIC_2,
};
use ferrix_protocol::{Limits, Version, WireError};
use proptest::prelude::*;
use thiserror::Error;

use super::*;

mod fake;
mod faults;
mod operations;
mod payloads;
mod script;
mod store_wide;
mod trust;

use fake::*;
use script::*;

const L: Limits = Limits::DEFAULT;

fn v(minor: u8) -> Version {
    Version::new(1, minor)
}

/// The client versions every behaviour is checked at.
const MINORS: [u8; 8] = [18, 21, 23, 26, 33, 34, 35, 38];

fn dir() -> StoreDir {
    StoreDir::default()
}

fn sp(name: &str, n: u8) -> StorePath {
    StorePath::from_digest(&[n; 20], name).unwrap()
}

fn nar_of_text(text: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for t in ["nix-archive-1", "(", "type", "regular", "contents"] {
        push_bytes(&mut v, t.as_bytes());
    }
    push_bytes(&mut v, text.as_bytes());
    push_bytes(&mut v, b")");
    v
}

fn info_of(path: &StorePath, nar: &[u8], refs: &[&StorePath]) -> PathInfo {
    let mut info = UnkeyedPathInfo::new(Hash::sha256(nar), nar.len() as u64);
    info.references = refs.iter().map(|p| (*p).clone()).collect();
    info.registration_time = 1000;
    PathInfo {
        path: path.clone(),
        info,
    }
}
