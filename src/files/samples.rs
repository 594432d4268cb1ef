//! Demo sample files, so the files demo works on a fresh machine.
//!
//! # Contract
//! * [`ensure_samples`] creates the directory and whichever of
//!   [`IMAGE_NAME`] and [`BIN_NAME`] is missing; an existing entry of that
//!   name (whatever it holds) is never touched.
//! * The content is deterministic: the same bytes on every machine and run,
//!   so digests and etags can be compared across servers.
//! * Each file is written under a temporary name in the same directory,
//!   fsynced and renamed into place: a reader never sees half a sample.
//! * Blocking file I/O.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::write::ZlibEncoder;
use flate2::{Compression, Crc};

/// The sample image (a 640×400 RGB PNG).
pub const IMAGE_NAME: &str = "channel.png";
/// The sample binary (8 MiB of pseudo-random bytes).
pub const BIN_NAME: &str = "sample-8MiB.bin";
/// Size of [`BIN_NAME`] in bytes.
pub const BIN_BYTES: usize = 8 * 1024 * 1024;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 400;
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
const SEED: u64 = 0x5eed_5106_ce00_0001;

/// Makes the content of one sample file.
type Generator = fn() -> io::Result<Vec<u8>>;

/// Create `dir` and the missing sample files in it. Returns the paths it
/// created (empty when everything was there).
pub fn ensure_samples(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let samples: [(&str, Generator); 2] = [(IMAGE_NAME, sample_png), (BIN_NAME, sample_bin)];
    let mut created = Vec::new();
    for (name, make) in samples {
        let path = dir.join(name);
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        write_atomically(&path, &make()?)?;
        created.push(path);
    }
    Ok(created)
}

/// Write `bytes` to a temporary sibling of `path`, fsync, rename into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "sample".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{:x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

// === the image ===

/// The sample PNG: a hue sweep left to right, darkening downwards, with a
/// grid and a white ring in the middle.
fn sample_png() -> io::Result<Vec<u8>> {
    encode_png(WIDTH, HEIGHT, &sample_pixels())
}

/// Row-major RGB bytes of the sample image.
fn sample_pixels() -> Vec<u8> {
    let (w, h) = (f64::from(WIDTH), f64::from(HEIGHT));
    let mut rgb = Vec::with_capacity((WIDTH * HEIGHT * 3) as usize);
    for y in 0..HEIGHT {
        for x in 0..WIDTH {
            let (fx, fy) = (f64::from(x), f64::from(y));
            let hue = (fx / w * 360.0 + fy * 0.25) % 360.0;
            let value = 1.0 - 0.45 * fy / h;
            let mut pixel = hsv(hue, 0.85, value);
            let r = (fx - w / 2.0).hypot(fy - h / 2.0);
            if (130.0..142.0).contains(&r) {
                pixel = [255, 255, 255];
            } else if x % 40 == 0 || y % 40 == 0 {
                pixel = pixel.map(|c| c / 2);
            }
            rgb.extend_from_slice(&pixel);
        }
    }
    rgb
}

/// HSV (hue in degrees, saturation and value in 0..=1) to RGB bytes.
fn hsv(hue: f64, saturation: f64, value: f64) -> [u8; 3] {
    let c = value * saturation;
    let h = hue / 60.0;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = value - c;
    [r, g, b].map(|v| ((v + m) * 255.0).round().clamp(0.0, 255.0) as u8)
}

/// A PNG of 8-bit RGB pixels (`rgb.len() == width * height * 3`): IHDR, one
/// zlib-compressed IDAT with filter type 0 on every row, IEND.
fn encode_png(width: u32, height: u32, rgb: &[u8]) -> io::Result<Vec<u8>> {
    let row = width as usize * 3;
    if rgb.len() != row * height as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pixel buffer does not match the image size",
        ));
    }
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);

    let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
    for line in rgb.chunks(row) {
        zlib.write_all(&[0])?;
        zlib.write_all(line)?;
    }
    let idat = zlib.finish()?;

    let mut png = PNG_SIGNATURE.to_vec();
    png_chunk(&mut png, b"IHDR", &ihdr)?;
    png_chunk(&mut png, b"IDAT", &idat)?;
    png_chunk(&mut png, b"IEND", &[])?;
    Ok(png)
}

/// Length, type, data, CRC-32 of type and data.
fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "PNG chunk too large"))?;
    let mut crc = Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
    Ok(())
}

// === the binary ===

/// [`BIN_BYTES`] bytes from xorshift64* with a fixed seed.
fn sample_bin() -> io::Result<Vec<u8>> {
    let mut state = SEED;
    let mut out = Vec::with_capacity(BIN_BYTES);
    while out.len() < BIN_BYTES {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(BIN_BYTES);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!(
            "sluice-samples-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ))
    }

    /// Bitwise CRC-32 (IEEE), independent of the encoder's.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn adler32(bytes: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in bytes {
            a = (a + u32::from(byte)) % 65_521;
            b = (b + a) % 65_521;
        }
        (b << 16) | a
    }

    fn be32(bytes: &[u8]) -> u32 {
        u32::from_be_bytes(bytes[..4].try_into().unwrap())
    }

    #[test]
    fn reference_checksums() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
    }

    #[test]
    fn the_png_is_well_formed() {
        let png = sample_png().unwrap();
        assert_eq!(png[..8], PNG_SIGNATURE);
        let mut chunks = Vec::new();
        let mut rest = &png[8..];
        while !rest.is_empty() {
            let len = be32(rest) as usize;
            let kind: [u8; 4] = rest[4..8].try_into().unwrap();
            let data = &rest[8..8 + len];
            let crc = be32(&rest[8 + len..]);
            assert_eq!(crc, crc32(&rest[4..8 + len]), "CRC of {kind:?}");
            chunks.push((kind, data));
            rest = &rest[12 + len..];
        }
        let kinds: Vec<&[u8; 4]> = chunks.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [b"IHDR", b"IDAT", b"IEND"]);

        let ihdr = chunks[0].1;
        assert_eq!((be32(ihdr), be32(&ihdr[4..])), (WIDTH, HEIGHT));
        assert_eq!(ihdr[8..], [8, 2, 0, 0, 0]);

        let idat = chunks[1].1;
        assert_eq!(idat[0] & 0x0f, 8, "deflate");
        assert_eq!((u32::from(idat[0]) * 256 + u32::from(idat[1])) % 31, 0);
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(idat)
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(be32(&idat[idat.len() - 4..]), adler32(&raw));
        let row = WIDTH as usize * 3;
        assert_eq!(raw.len(), (row + 1) * HEIGHT as usize);
        let pixels = sample_pixels();
        for (y, line) in raw.chunks(row + 1).enumerate() {
            assert_eq!(line[0], 0, "filter of row {y}");
            assert_eq!(line[1..], pixels[y * row..(y + 1) * row]);
        }
        let distinct: std::collections::HashSet<&[u8]> = pixels.chunks(3).collect();
        assert!(distinct.len() > 1000, "a colourful picture");
    }

    #[test]
    fn the_bin_is_deterministic() {
        let a = sample_bin().unwrap();
        assert_eq!(a.len(), BIN_BYTES);
        assert_eq!(a, sample_bin().unwrap());
        let zeros = a.iter().filter(|&&b| b == 0).count();
        assert!(zeros < BIN_BYTES / 100, "looks random");
    }

    #[test]
    fn ensure_creates_missing_files_once() {
        let dir = temp_dir().join("files");
        let created = ensure_samples(&dir).unwrap();
        assert_eq!(created, [dir.join(IMAGE_NAME), dir.join(BIN_NAME)]);
        assert_eq!(
            fs::read(dir.join(IMAGE_NAME)).unwrap(),
            sample_png().unwrap()
        );
        assert_eq!(fs::read(dir.join(BIN_NAME)).unwrap(), sample_bin().unwrap());
        assert!(ensure_samples(&dir).unwrap().is_empty(), "idempotent");

        fs::write(dir.join(IMAGE_NAME), b"mine").unwrap();
        fs::remove_file(dir.join(BIN_NAME)).unwrap();
        assert_eq!(ensure_samples(&dir).unwrap(), [dir.join(BIN_NAME)]);
        assert_eq!(
            fs::read(dir.join(IMAGE_NAME)).unwrap(),
            b"mine",
            "never replaced"
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "no temp files left");
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
