//! How a cache's NARs are compressed: the name in the narinfo, the file extension, a
//! streaming encoder (several threads for zstd and xz) and decoder (several threads for xz
//! in blocks).

use std::io::{self, Write};

/// A NAR compression a binary cache may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Bzip2,
    Brotli,
}

impl Compression {
    /// From the `compression=` parameter (Nix's names).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "xz" => Self::Xz,
            "zstd" => Self::Zstd,
            "bzip2" => Self::Bzip2,
            "br" => Self::Brotli,
            _ => return None,
        })
    }

    /// The name in the narinfo's `Compression:` field.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Bzip2 => "bzip2",
            Self::Brotli => "br",
        }
    }

    /// What the NAR file's name ends with, as Nix names it.
    pub fn extension(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Xz => ".xz",
            Self::Zstd => ".zst",
            Self::Bzip2 => ".bz2",
            Self::Brotli => ".br",
        }
    }

    /// An encoder writing into `out`; `level` as `compression-level=` gives it (each
    /// method's default when `None`), `threads` for the methods that can use several.
    pub fn encoder<'a, W: Write + Send + 'a>(
        self,
        out: W,
        level: Option<i32>,
        threads: u32,
    ) -> io::Result<Box<dyn Encoder + 'a>> {
        Ok(match self {
            Self::None => Box::new(Plain(out)),
            Self::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, level.unwrap_or(3))?;
                if threads > 1 {
                    e.multithread(threads)?;
                }
                Box::new(Zstd(e))
            }
            Self::Xz => {
                let preset = level.map_or(6, |l| l.clamp(0, 9) as u32);
                let stream = liblzma::stream::MtStreamBuilder::new()
                    .preset(preset)
                    .threads(threads.max(1))
                    .check(liblzma::stream::Check::Crc64)
                    .encoder()
                    .map_err(io::Error::other)?;
                Box::new(Xz(liblzma::write::XzEncoder::new_stream(out, stream)))
            }
            Self::Bzip2 => {
                let l = level.map_or(9, |l| l.clamp(1, 9) as u32);
                Box::new(Bz(bzip2::write::BzEncoder::new(
                    out,
                    bzip2::Compression::new(l),
                )))
            }
            Self::Brotli => {
                let q = level.map_or(6, |l| l.clamp(0, 11) as u32);
                Box::new(Br(Some(brotli::CompressorWriter::new(out, 1 << 16, q, 22))))
            }
        })
    }
}

impl Compression {
    /// A reader of what `input` holds, decompressed as it is read.
    pub fn decoder<'a, R: std::io::BufRead + Send + 'a>(
        self,
        input: R,
    ) -> io::Result<Box<dyn std::io::Read + Send + 'a>> {
        Ok(match self {
            Self::None => Box::new(input),
            Self::Zstd => Box::new(ZstdReader::new(input)?),
            Self::Xz => Box::new(XzReader::new(input)?),
            Self::Bzip2 => Box::new(bzip2::bufread::BzDecoder::new(input)),
            Self::Brotli => Box::new(brotli::Decompressor::new(input, 1 << 16)),
        })
    }
}

/// At most this many threads decode one xz stream.
const XZ_THREADS_MAX: usize = 8;

/// The memory an xz decoder may take to run threads (liblzma runs fewer when it would need
/// more; never fewer than one). Each thread holds a block in and out: 24 MiB out with the
/// blocks multi-threaded encoders write at the default level, so about four threads.
const XZ_THREADING_MEMORY: u64 = 128 << 20;

/// At most this many xz streams are decoded on several threads at once; the others on
/// one each, in a few MiB. Substitutions run side by side, so without a bound a closure of
/// large paths could take [`XZ_THREADING_MEMORY`] for each; and with several at once the
/// cores are busy anyway. The threads matter most where one large path is left.
const XZ_THREADED_MAX: usize = 2;

/// How many xz decoders hold threads now.
static XZ_THREADED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// liblzma's decoder on up to `threads` threads. A stream cut into blocks whose headers
/// give their sizes (what multi-threaded encoders write: Ferrix's, `xz -T`, Nix's with
/// `parallel-compression`) has its blocks decoded side by side; any other stream is
/// decoded on one thread, as before.
fn xz_decoder(threads: usize) -> io::Result<liblzma::stream::Stream> {
    if threads <= 1 {
        return liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0).map_err(io::Error::other);
    }
    liblzma::stream::MtStreamBuilder::new()
        .threads(threads.min(XZ_THREADS_MAX) as u32)
        .memlimit_threading(XZ_THREADING_MEMORY)
        .memlimit_stop(u64::MAX)
        .decoder()
        .map_err(io::Error::other)
}

/// An xz stream decoded as it is read: on several threads while fewer than
/// [`XZ_THREADED_MAX`] others are. A stream of one block holds its place too, though
/// liblzma decodes it on one thread: which kind a stream is shows only once it is read.
struct XzReader<R> {
    inner: liblzma::bufread::XzDecoder<R>,
    /// Holds one of the [`XZ_THREADED`] places until dropped.
    threaded: bool,
}

impl<R: std::io::BufRead> XzReader<R> {
    fn new(input: R) -> io::Result<Self> {
        use std::sync::atomic::Ordering;
        let cores = crate::store::cores();
        let threaded = cores > 1
            && XZ_THREADED
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < XZ_THREADED_MAX).then_some(n + 1)
                })
                .is_ok();
        let stream = xz_decoder(if threaded { cores } else { 1 });
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                if threaded {
                    XZ_THREADED.fetch_sub(1, Ordering::AcqRel);
                }
                return Err(e);
            }
        };
        Ok(Self {
            inner: liblzma::bufread::XzDecoder::new_stream(input, stream),
            threaded,
        })
    }
}

impl<R: std::io::BufRead> std::io::Read for XzReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<R> Drop for XzReader<R> {
    fn drop(&mut self) {
        if self.threaded {
            XZ_THREADED.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// A compressing writer that must be finished to end its stream.
pub trait Encoder: Write {
    /// End the stream and flush everything to the underlying writer.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

struct Plain<W>(W);
struct Zstd<'a, W: Write>(zstd::stream::write::Encoder<'a, W>);
struct Xz<W: Write>(liblzma::write::XzEncoder<W>);
struct Bz<W: Write>(bzip2::write::BzEncoder<W>);
struct Br<W: Write>(Option<brotli::CompressorWriter<W>>);

impl<W: Write> Write for Plain<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl<W: Write> Encoder for Plain<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Write for Zstd<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl<W: Write> Encoder for Zstd<'_, W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.flush()
    }
}

impl<W: Write> Write for Xz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl<W: Write> Encoder for Xz<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.flush()
    }
}

impl<W: Write> Write for Bz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl<W: Write> Encoder for Bz<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.flush()
    }
}

impl<W: Write> Write for Br<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.as_mut().map_or(Ok(0), |w| w.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.as_mut().map_or(Ok(()), |w| w.flush())
    }
}
impl<W: Write> Encoder for Br<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        match self.0.take() {
            Some(w) => w.into_inner().flush(),
            None => Ok(()),
        }
    }
}

/// Decompression contexts of finished zstd streams, for the next ones: a context holds a
/// window of up to several MiB, which a new one would take as fresh memory (every page
/// zeroed by the kernel on first touch) for each path substituted.
static ZSTD_CONTEXTS: std::sync::Mutex<Vec<zstd::zstd_safe::DCtx<'static>>> =
    std::sync::Mutex::new(Vec::new());

/// At most this many contexts wait in [`ZSTD_CONTEXTS`]...
const ZSTD_CONTEXTS_KEPT: usize = 16;
/// ...each of at most this size: one grown for a frame with a long window (up to 2 GiB)
/// is let go, so that a long-running process does not keep such memory.
const ZSTD_CONTEXT_MAX: usize = 16 << 20;

/// A zstd stream (one frame or several, one after the other) decompressed as it is read,
/// with a context that goes back to [`ZSTD_CONTEXTS`] at the end.
struct ZstdReader<R> {
    input: R,
    ctx: Option<zstd::zstd_safe::DCtx<'static>>,
    /// Inside a frame: the input must not end here.
    in_frame: bool,
}

impl<R: std::io::BufRead> ZstdReader<R> {
    fn new(input: R) -> io::Result<Self> {
        let kept = ZSTD_CONTEXTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let ctx = match kept {
            Some(c) => c,
            None => zstd::zstd_safe::DCtx::try_create()
                .ok_or_else(|| io::Error::other("zstd: no memory for a decompression context"))?,
        };
        Ok(Self {
            input,
            ctx: Some(ctx),
            in_frame: false,
        })
    }
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("zstd: {}", zstd::zstd_safe::get_error_name(code)),
    )
}

impl<R: std::io::BufRead> std::io::Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let Some(ctx) = self.ctx.as_mut() else {
            return Ok(0);
        };
        loop {
            let input = self.input.fill_buf()?;
            if input.is_empty() && !self.in_frame {
                return Ok(0);
            }
            let mut src = zstd::zstd_safe::InBuffer::around(input);
            let mut dst = zstd::zstd_safe::OutBuffer::around(&mut *buf);
            let left = ctx
                .decompress_stream(&mut dst, &mut src)
                .map_err(zstd_error)?;
            let (used, made) = (src.pos(), dst.pos());
            let ended = input.is_empty();
            self.input.consume(used);
            // 0: a frame is complete and everything of it is out.
            self.in_frame = left != 0;
            if made > 0 {
                return Ok(made);
            }
            if ended {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "zstd: the compressed stream ends inside a frame",
                ));
            }
        }
    }
}

impl<R> Drop for ZstdReader<R> {
    fn drop(&mut self) {
        if let Some(mut ctx) = self.ctx.take() {
            // A context stopped mid-frame starts afresh.
            if ctx.sizeof() <= ZSTD_CONTEXT_MAX
                && ctx
                    .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
                    .is_ok()
            {
                let mut kept = ZSTD_CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() < ZSTD_CONTEXTS_KEPT {
                    kept.push(ctx);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match c {
            Compression::None => out = data.to_vec(),
            Compression::Zstd => {
                zstd::stream::read::Decoder::new(data)
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Xz => {
                liblzma::read::XzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Bzip2 => {
                bzip2::read::BzDecoder::new(data)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Brotli => {
                brotli::Decompressor::new(data, 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
        }
        out
    }

    #[test]
    fn every_method_round_trips_with_one_and_several_threads() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for name in ["none", "xz", "zstd", "bzip2", "br"] {
            let c = Compression::parse(name).unwrap();
            assert_eq!(c.name(), name);
            for threads in [1, 3] {
                let mut buf = Vec::new();
                let mut e = c.encoder(&mut buf, None, threads).unwrap();
                e.write_all(&data).unwrap();
                e.finish().unwrap();
                assert_eq!(decode(c, &buf), data, "{name} with {threads} threads");
            }
        }
        assert_eq!(Compression::parse("gzip"), None);
    }

    /// What `decoder` makes of `data`, read in small steps.
    fn through_decoder(c: Compression, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut d = c.decoder(io::BufReader::with_capacity(7, data))?;
        let mut out = Vec::new();
        let mut step = [0u8; 1000];
        loop {
            match d.read(&mut step)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&step[..n]),
            }
        }
    }

    #[test]
    fn zstd_streams_decode_with_contexts_used_again() {
        let a: Vec<u8> = (0..400_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        let b: Vec<u8> = (0..5_000u32).map(|i| (i * 31 % 256) as u8).collect();
        let za = zstd::encode_all(&a[..], 3).unwrap();
        let zb = zstd::encode_all(&b[..], 19).unwrap();
        // A stream dropped in the middle of a frame leaves its context fit for the next.
        {
            let mut d = Compression::Zstd
                .decoder(io::BufReader::new(&za[..]))
                .unwrap();
            let mut some = [0u8; 100];
            d.read_exact(&mut some).unwrap();
        }
        for _ in 0..3 {
            assert_eq!(through_decoder(Compression::Zstd, &za).unwrap(), a);
            assert_eq!(through_decoder(Compression::Zstd, &zb).unwrap(), b);
        }
        // Frames one after another are one stream, as zstd writes and reads them.
        let both = [za.clone(), zb.clone()].concat();
        assert_eq!(
            through_decoder(Compression::Zstd, &both).unwrap(),
            [a.clone(), b].concat()
        );
        assert!(through_decoder(Compression::Zstd, &[]).unwrap().is_empty());
    }

    #[test]
    fn xz_streams_of_many_blocks_decode_on_several_threads() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 & 0x3f)
            .collect();
        // Blocks of 256 KiB, as a multi-threaded encoder cuts them (with their sizes in
        // their headers): the decoder hands them to its threads.
        let stream = liblzma::stream::MtStreamBuilder::new()
            .preset(1)
            .threads(2)
            .block_size(256 << 10)
            .check(liblzma::stream::Check::Crc64)
            .encoder()
            .unwrap();
        let mut blocks = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        blocks.write_all(&data).unwrap();
        let blocks = blocks.finish().unwrap();
        let single = liblzma::encode_all(&data[..], 1).unwrap();
        for (what, z) in [("blocks", &blocks), ("one block", &single)] {
            for threads in [1, 4] {
                let mut d = liblzma::bufread::XzDecoder::new_stream(
                    io::BufReader::with_capacity(4096, &z[..]),
                    xz_decoder(threads).unwrap(),
                );
                let mut out = Vec::new();
                d.read_to_end(&mut out).unwrap();
                assert!(out == data, "{what} on {threads} threads");
            }
            assert!(
                through_decoder(Compression::Xz, z).unwrap() == data,
                "{what}"
            );
        }
        // More streams at once than may have threads: each decodes, on one or several.
        let mut open: Vec<_> = (0..XZ_THREADED_MAX + 2)
            .map(|_| {
                Compression::Xz
                    .decoder(io::BufReader::new(&blocks[..]))
                    .unwrap()
            })
            .collect();
        let mut outs = vec![Vec::new(); open.len()];
        let mut step = vec![0u8; 64 << 10];
        while outs.iter().any(|o| o.len() < data.len()) {
            for (d, out) in open.iter_mut().zip(&mut outs) {
                let n = d.read(&mut step).unwrap();
                out.extend_from_slice(&step[..n]);
            }
        }
        assert!(outs.iter().all(|o| *o == data));
        // A damaged block in the middle or a cut stream is an error, not short output.
        let mut bad = blocks.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        assert!(through_decoder(Compression::Xz, &bad).is_err());
        assert!(through_decoder(Compression::Xz, &blocks[..blocks.len() - 40]).is_err());
    }

    #[test]
    fn a_cut_or_damaged_zstd_stream_is_an_error() {
        let a: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 89).to_le_bytes())
            .collect();
        let za = zstd::encode_all(&a[..], 3).unwrap();
        let cut = through_decoder(Compression::Zstd, &za[..za.len() / 2]).unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof, "{cut}");
        let mut bad = za.clone();
        bad[0] ^= 0xff;
        let e = through_decoder(Compression::Zstd, &bad).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().starts_with("zstd: "), "{e}");
        // And the contexts those left behind still decode.
        assert_eq!(through_decoder(Compression::Zstd, &za).unwrap(), a);
    }
}
