//! The output sanity check a worker runs before it signs anything.
//!
//! # What this module owns
//!
//! One question: is this file plausibly the output the task asked for? It
//! must exist as a regular file (not a symlink: a sandboxed command could
//! point its output at a host file and have the worker ship it), be
//! non-empty and at most the size limit. For renders it must also be an
//! image of exactly the requested size:
//!
//! * PNG (any colour type and depth the `png` crate reads): decoded fully;
//!   refused when every pixel has the same value (blank) or every colour
//!   sample is zero (black, whatever the alpha). A full disk, a broken
//!   driver or an old GPU produce such frames silently.
//! * OpenEXR: **Decision:** the header is parsed (magic, version, the first
//!   part's `dataWindow`) and its size checked, but the pixels are not
//!   decoded: EXR has eight compression schemes and a decoder would be the
//!   largest dependency of the node, for a format whose blank frames the
//!   creator's viewer shows at once. PNG is the default and fully checked.
//!
//! # What it must not do
//!
//! It reads only the file it is given, never follows a symlink, and bounds
//! what it allocates by the expected image size (a PNG header may claim any
//! size; it is compared with the expectation before any pixel is decoded).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use rendertrust_protocol::wire::ImageFormat;

/// What the output must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// An image of exactly `width × height` in `format` (render kinds).
    Image {
        /// Container format.
        format: ImageFormat,
        /// Width, pixels.
        width: u32,
        /// Height, pixels.
        height: u32,
    },
    /// Any non-empty file (`process` jobs).
    File,
}

/// Why an output was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// No file at the path.
    #[error("no output file at {0}")]
    Missing(PathBuf),
    /// Something other than a regular file.
    #[error("output {path} is a {found}, expected a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is ("symlink", "directory", …).
        found: &'static str,
    },
    /// Reading failed.
    #[error("reading output {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Zero bytes.
    #[error("output is empty (0 bytes)")]
    Empty,
    /// Larger than allowed.
    #[error("output is {size} bytes; at most {max} allowed")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Not a readable PNG.
    #[error("output is not a valid PNG: {0}")]
    NotPng(String),
    /// Not a readable OpenEXR header.
    #[error("output is not a valid OpenEXR file: {0}")]
    NotExr(String),
    /// An image, but not of the requested size.
    #[error("output image is {found_w}x{found_h}, expected {expected_w}x{expected_h}")]
    WrongSize {
        /// Requested width.
        expected_w: u32,
        /// Requested height.
        expected_h: u32,
        /// Actual width.
        found_w: u32,
        /// Actual height.
        found_h: u32,
    },
    /// Every pixel has the same value.
    #[error("output image is blank: every pixel is {pixel}")]
    Blank {
        /// The one pixel value, hex bytes.
        pixel: String,
    },
    /// Every colour sample is zero.
    #[error("output image is all black")]
    AllBlack,
}

/// A file that passed the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Its size, bytes.
    pub bytes: u64,
}

/// Checks the output at `path` against `expect`; `max_bytes` bounds its size.
pub fn check_output(path: &Path, expect: &Expect, max_bytes: u64) -> Result<Checked, CheckError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckError::Missing(path.to_owned()));
        }
        Err(source) => {
            return Err(CheckError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let ft = meta.file_type();
    if !ft.is_file() {
        let found = if ft.is_symlink() {
            "symlink"
        } else if ft.is_dir() {
            "directory"
        } else {
            "special file"
        };
        return Err(CheckError::NotAFile {
            path: path.to_owned(),
            found,
        });
    }
    let size = meta.len();
    if size == 0 {
        return Err(CheckError::Empty);
    }
    if size > max_bytes {
        return Err(CheckError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    let io = |source| CheckError::Io {
        path: path.to_owned(),
        source,
    };
    match *expect {
        Expect::File => {}
        Expect::Image {
            format: ImageFormat::Png,
            width,
            height,
        } => check_png(BufReader::new(File::open(path).map_err(io)?), width, height)?,
        Expect::Image {
            format: ImageFormat::Exr,
            width,
            height,
        } => {
            let mut head = Vec::new();
            File::open(path)
                .map_err(io)?
                .take(EXR_HEADER_MAX)
                .read_to_end(&mut head)
                .map_err(io)?;
            let (w, h) = exr_size(&head)?;
            size_matches(width, height, w, h)?;
        }
    }
    Ok(Checked { bytes: size })
}

fn size_matches(
    expected_w: u32,
    expected_h: u32,
    found_w: u32,
    found_h: u32,
) -> Result<(), CheckError> {
    if (expected_w, expected_h) == (found_w, found_h) {
        Ok(())
    } else {
        Err(CheckError::WrongSize {
            expected_w,
            expected_h,
            found_w,
            found_h,
        })
    }
}

/// Decodes a PNG of the expected size and refuses blank or black images.
pub fn check_png<R: std::io::BufRead + std::io::Seek>(
    r: R,
    width: u32,
    height: u32,
) -> Result<(), CheckError> {
    let bad = |e: png::DecodingError| CheckError::NotPng(e.to_string());
    // The largest frame we may need: 4 channels × 16 bits, plus slack.
    let budget = (u64::from(width) * u64::from(height))
        .saturating_mul(8)
        .saturating_add(1 << 20);
    let limits = png::Limits {
        bytes: usize::try_from(budget).unwrap_or(usize::MAX),
    };
    let mut dec = png::Decoder::new_with_limits(r, limits);
    dec.set_transformations(png::Transformations::EXPAND);
    let (w, h) = {
        let info = dec.read_header_info().map_err(bad)?;
        (info.width, info.height)
    };
    size_matches(width, height, w, h)?;
    let mut reader = dec.read_info().map_err(bad)?;
    let len = reader
        .output_buffer_size()
        .ok_or_else(|| CheckError::NotPng("image too large for this machine".into()))?;
    let mut buf = vec![0u8; len];
    let out = reader.next_frame(&mut buf).map_err(bad)?;
    let sample_bytes = match out.bit_depth {
        png::BitDepth::Sixteen => 2,
        _ => 1,
    };
    let (colour, alpha) = match out.color_type {
        png::ColorType::Grayscale => (1, 0),
        png::ColorType::GrayscaleAlpha => (1, 1),
        png::ColorType::Rgb | png::ColorType::Indexed => (3, 0),
        png::ColorType::Rgba => (3, 1),
    };
    let px = (colour + alpha) * sample_bytes;
    let colour_bytes = colour * sample_bytes;
    let row_len = out.width as usize * px;
    let mut first: Option<Vec<u8>> = None;
    let (mut all_same, mut all_black) = (true, true);
    for row in buf.chunks(out.line_size.max(1)).take(out.height as usize) {
        let Some(row) = row.get(..row_len) else {
            return Err(CheckError::NotPng("short image data".into()));
        };
        for p in row.chunks_exact(px) {
            if all_black
                && p.get(..colour_bytes)
                    .is_some_and(|c| c.iter().any(|b| *b != 0))
            {
                all_black = false;
            }
            match &first {
                None => first = Some(p.to_vec()),
                Some(f) if all_same && f.as_slice() != p => all_same = false,
                Some(_) => {}
            }
        }
        if !all_same && !all_black {
            return Ok(());
        }
    }
    if all_black {
        return Err(CheckError::AllBlack);
    }
    Err(CheckError::Blank {
        pixel: hex::encode(first.unwrap_or_default()),
    })
}

/// How much of an EXR file the header parser reads at most.
const EXR_HEADER_MAX: u64 = 1 << 20;

/// The size of an OpenEXR image from its (first part's) header `dataWindow`.
pub fn exr_size(head: &[u8]) -> Result<(u32, u32), CheckError> {
    let bad = |m: &str| CheckError::NotExr(m.to_owned());
    if head.get(..4) != Some(&[0x76, 0x2f, 0x31, 0x01][..]) {
        return Err(bad("no OpenEXR magic number (76 2f 31 01)"));
    }
    let version = head
        .get(4)
        .copied()
        .ok_or_else(|| bad("truncated version"))?;
    if version != 2 {
        return Err(bad(&format!("version {version}, expected 2")));
    }
    let mut pos = 8usize;
    let cstr = |pos: &mut usize| -> Result<String, CheckError> {
        let rest = head.get(*pos..).ok_or_else(|| bad("truncated header"))?;
        let end =
            rest.iter().take(256).position(|b| *b == 0).ok_or_else(|| {
                bad("attribute name or type is not NUL-terminated within 256 bytes")
            })?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        *pos += end + 1;
        Ok(s)
    };
    loop {
        let name = cstr(&mut pos)?;
        if name.is_empty() {
            return Err(bad("header has no dataWindow attribute"));
        }
        let ty = cstr(&mut pos)?;
        let size_bytes = head
            .get(pos..pos + 4)
            .ok_or_else(|| bad("truncated attribute size"))?;
        let size = u32::from_le_bytes([size_bytes[0], size_bytes[1], size_bytes[2], size_bytes[3]])
            as usize;
        pos += 4;
        let value = head.get(pos..pos.saturating_add(size)).ok_or_else(|| {
            bad(&format!(
                "attribute {name} ({size} bytes) runs past the header"
            ))
        })?;
        pos += size;
        if name == "dataWindow" {
            if ty != "box2i" || value.len() != 16 {
                return Err(bad(&format!(
                    "dataWindow is {ty} of {} bytes, expected box2i of 16",
                    value.len()
                )));
            }
            let i =
                |k: usize| i32::from_le_bytes([value[k], value[k + 1], value[k + 2], value[k + 3]]);
            let (x0, y0, x1, y1) = (
                i64::from(i(0)),
                i64::from(i(4)),
                i64::from(i(8)),
                i64::from(i(12)),
            );
            let (w, h) = (x1 - x0 + 1, y1 - y0 + 1);
            return match (u32::try_from(w), u32::try_from(h)) {
                (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
                _ => Err(bad(&format!("dataWindow ({x0},{y0})-({x1},{y1}) is empty"))),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn png_bytes(
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(color);
        e.set_depth(depth);
        let mut wr = e.write_header().unwrap();
        wr.write_image_data(data).unwrap();
        wr.finish().unwrap();
        out
    }

    fn rgb(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut d = Vec::new();
        for y in 0..h {
            for x in 0..w {
                d.extend_from_slice(&f(x, y));
            }
        }
        png_bytes(w, h, png::ColorType::Rgb, png::BitDepth::Eight, &d)
    }

    fn check(bytes: &[u8], w: u32, h: u32) -> Result<(), CheckError> {
        check_png(Cursor::new(bytes), w, h)
    }

    #[test]
    fn a_varied_png_of_the_right_size_passes() {
        let img = rgb(16, 9, |x, y| [(x * 10) as u8, (y * 20) as u8, 7]);
        check(&img, 16, 9).unwrap();
        // one differing pixel is enough
        let img = rgb(16, 9, |x, y| {
            if (x, y) == (15, 8) {
                [1, 1, 1]
            } else {
                [9, 9, 9]
            }
        });
        check(&img, 16, 9).unwrap();
    }

    #[test]
    fn wrong_size_is_refused_before_decoding() {
        let img = rgb(16, 9, |x, _| [x as u8, 0, 0]);
        assert!(matches!(
            check(&img, 16, 10),
            Err(CheckError::WrongSize {
                expected_w: 16,
                expected_h: 10,
                found_w: 16,
                found_h: 9
            })
        ));
    }

    #[test]
    fn blank_and_black_are_refused() {
        let grey = rgb(8, 8, |_, _| [128, 128, 128]);
        assert!(
            matches!(check(&grey, 8, 8), Err(CheckError::Blank { pixel }) if pixel == "808080")
        );
        let black = rgb(8, 8, |_, _| [0, 0, 0]);
        assert!(matches!(check(&black, 8, 8), Err(CheckError::AllBlack)));
        // black with varying alpha is still black
        let mut d = Vec::new();
        for i in 0..64u8 {
            d.extend_from_slice(&[0, 0, 0, i]);
        }
        let rgba = png_bytes(8, 8, png::ColorType::Rgba, png::BitDepth::Eight, &d);
        assert!(matches!(check(&rgba, 8, 8), Err(CheckError::AllBlack)));
        // 16-bit grey, one sample differing in its low byte only: not blank
        let mut g = vec![0x12u8; 2 * 4 * 4];
        g[31] = 0x13;
        let g16 = png_bytes(4, 4, png::ColorType::Grayscale, png::BitDepth::Sixteen, &g);
        check(&g16, 4, 4).unwrap();
        let g16 = png_bytes(
            4,
            4,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            &[0x12; 32],
        );
        assert!(matches!(check(&g16, 4, 4), Err(CheckError::Blank { .. })));
    }

    #[test]
    fn garbage_and_truncation_are_refused() {
        assert!(matches!(check(b"hello", 1, 1), Err(CheckError::NotPng(_))));
        let img = rgb(32, 32, |x, y| [x as u8, y as u8, 3]);
        assert!(matches!(
            check(&img[..img.len() - 20], 32, 32),
            Err(CheckError::NotPng(_))
        ));
    }

    #[test]
    fn files_symlinks_and_limits() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out");
        assert!(matches!(
            check_output(&p, &Expect::File, 10),
            Err(CheckError::Missing(_))
        ));
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(
            check_output(&p, &Expect::File, 10),
            Err(CheckError::Empty)
        ));
        std::fs::write(&p, b"0123456789x").unwrap();
        assert!(matches!(
            check_output(&p, &Expect::File, 10),
            Err(CheckError::TooLarge { size: 11, max: 10 })
        ));
        assert_eq!(check_output(&p, &Expect::File, 11).unwrap().bytes, 11);
        let link = d.path().join("link");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        assert!(matches!(
            check_output(&link, &Expect::File, 1 << 20),
            Err(CheckError::NotAFile {
                found: "symlink",
                ..
            })
        ));
        assert!(matches!(
            check_output(d.path(), &Expect::File, 1 << 20),
            Err(CheckError::NotAFile {
                found: "directory",
                ..
            })
        ));
        let img = d.path().join("img.png");
        std::fs::write(&img, rgb(4, 3, |x, y| [x as u8, y as u8, 0])).unwrap();
        let png = |w, h| Expect::Image {
            format: ImageFormat::Png,
            width: w,
            height: h,
        };
        check_output(&img, &png(4, 3), 1 << 20).unwrap();
        assert!(matches!(
            check_output(&img, &png(3, 4), 1 << 20),
            Err(CheckError::WrongSize { .. })
        ));
    }

    fn exr_header(window: (i32, i32, i32, i32)) -> Vec<u8> {
        let mut h = vec![0x76, 0x2f, 0x31, 0x01, 2, 0, 0, 0];
        let mut attr = |name: &str, ty: &str, value: &[u8]| {
            h.extend_from_slice(name.as_bytes());
            h.push(0);
            h.extend_from_slice(ty.as_bytes());
            h.push(0);
            h.extend_from_slice(&(value.len() as u32).to_le_bytes());
            h.extend_from_slice(value);
        };
        attr("compression", "compression", &[0]);
        let mut b = Vec::new();
        for v in [window.0, window.1, window.2, window.3] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        attr("dataWindow", "box2i", &b);
        attr("displayWindow", "box2i", &b);
        h.push(0);
        h
    }

    #[test]
    fn exr_headers() {
        assert_eq!(exr_size(&exr_header((0, 0, 63, 35))).unwrap(), (64, 36));
        assert_eq!(exr_size(&exr_header((10, 20, 19, 24))).unwrap(), (10, 5));
        assert!(matches!(
            exr_size(&exr_header((5, 0, 4, 3))),
            Err(CheckError::NotExr(_))
        ));
        assert!(matches!(
            exr_size(b"\x89PNG\r\n"),
            Err(CheckError::NotExr(_))
        ));
        let h = exr_header((0, 0, 63, 35));
        for cut in [5, 12, 30, h.len() - 60] {
            assert!(
                matches!(exr_size(&h[..cut]), Err(CheckError::NotExr(_))),
                "cut {cut}"
            );
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("o.exr");
        std::fs::write(&p, exr_header((0, 0, 63, 35))).unwrap();
        let exr = |w, h| Expect::Image {
            format: ImageFormat::Exr,
            width: w,
            height: h,
        };
        check_output(&p, &exr(64, 36), 1 << 20).unwrap();
        assert!(matches!(
            check_output(&p, &exr(64, 37), 1 << 20),
            Err(CheckError::WrongSize { .. })
        ));
    }
}
