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
            Self::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
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
}
