//! The records of a `nix-store --export` stream, for the in-memory stores of the tests: a
//! NAR, the magic, the path, its references, its deriver and a signature flag.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use ferrix_format::nar::NarError;
use ferrix_format::{StoreDir, StorePath};
use ferrix_protocol::wire::{
    read_opt_store_path, read_store_path, read_store_path_set, read_string, read_u64,
    write_opt_store_path, write_store_path, write_store_paths, write_u64,
};
use ferrix_protocol::{Limits, WireError};

const EXPORT_MAGIC: u64 = 0x4558_494e;

/// One path of an export stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExportRecord {
    pub(crate) path: StorePath,
    pub(crate) references: BTreeSet<StorePath>,
    pub(crate) deriver: Option<StorePath>,
    pub(crate) nar: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("bad NAR")]
    Nar(#[from] NarError),
    #[error("bad export record")]
    Wire(#[from] WireError),
}

/// Write `r` (what follows its `1` in the stream).
pub(crate) fn write_record(
    out: &mut dyn Write,
    dir: &StoreDir,
    r: &ExportRecord,
) -> io::Result<()> {
    out.write_all(&r.nar)?;
    write_u64(out, EXPORT_MAGIC)?;
    write_store_path(out, dir, &r.path)?;
    write_store_paths(out, dir, &r.references)?;
    write_opt_store_path(out, dir, r.deriver.as_ref())?;
    write_u64(out, 0)
}

/// Read a record (after its `1`), and nothing after it.
pub(crate) fn read_record(
    input: &mut dyn Read,
    dir: &StoreDir,
) -> Result<ExportRecord, RecordError> {
    let l = Limits::DEFAULT;
    let mut tee = Tee {
        inner: input,
        copy: Vec::new(),
    };
    ferrix_format::nar::parse(&mut tee, &mut ferrix_format::nar::Discard)?;
    let nar = tee.copy;
    let magic = read_u64(input, "export magic")?;
    if magic != EXPORT_MAGIC {
        return Err(WireError::unexpected("export magic", magic).into());
    }
    let path = read_store_path(input, dir, &l, "exported path")?;
    let references = read_store_path_set(input, dir, &l, "references")?;
    let deriver = read_opt_store_path(input, dir, &l, "deriver")?;
    if read_u64(input, "signature flag")? == 1 {
        read_string(input, &l, "signature")?;
    }
    Ok(ExportRecord {
        path,
        references,
        deriver,
        nar,
    })
}

/// Copies what it reads.
pub(crate) struct Tee<'a> {
    pub(crate) inner: &'a mut dyn Read,
    pub(crate) copy: Vec<u8>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}
