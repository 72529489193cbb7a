//! How a cache's NARs are compressed: the name in the narinfo, the file extension and a
//! streaming encoder (several threads for zstd and xz).

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
            Self::Xz => Box::new(liblzma::bufread::XzDecoder::new(input)),
            Self::Bzip2 => Box::new(bzip2::bufread::BzDecoder::new(input)),
            Self::Brotli => Box::new(brotli::Decompressor::new(input, 1 << 16)),
        })
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
