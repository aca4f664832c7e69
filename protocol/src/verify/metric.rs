//! The spot-check image metric: a windowed SSIM over 8-bit RGB(A) pixels,
//! in integer arithmetic.
//!
//! # What this module owns
//!
//! [`similarity_milli`]: SSIM (Wang et al. 2004, constants `K1 = 0.01`,
//! `K2 = 0.03`, `L = 255`) over 8 × 8 windows at a stride of 4 pixels, per
//! colour channel (alpha is ignored); the mean over windows per channel, and
//! the **minimum** over R, G and B, × 1000, clamped to `0..=1000`. The
//! minimum makes a colour-shifted or grey result fail even when its
//! luminance matches. Every sum and product is an integer (`i128` where it
//! must), so the same pixels give the same similarity on every machine; the
//! decision (`>= min_similarity_milli`) replays exactly.
//!
//! **Decision: our own SSIM rather than a crate.** `image-compare` pulls in
//! `image` and `rayon`, `dssim-core` in `rgb`, `imgref` and float
//! arithmetic; both are heavier than the 150 lines here and neither is
//! integer-exact. Decoding images (PNG, EXR) is the node's job: it hands
//! plain pixel buffers to this module. An image whose side is under 8
//! pixels is one window.
//!
//! # What it must not do
//!
//! No decoding, no I/O, no floats.

use crate::task::Rect;

/// Window side, pixels.
pub const WINDOW: u32 = 8;
/// Distance between windows, pixels.
pub const STRIDE: u32 = 4;
/// Largest image side accepted (the largest frame a job may have).
pub const MAX_SIDE: u32 = 16384;

/// Why two images cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricError {
    /// Only 3 (RGB) and 4 (RGBA) channels are supported.
    #[error("{0} channels; expected 3 (RGB) or 4 (RGBA)")]
    Channels(u8),
    /// The buffer does not hold `width × height × channels` bytes.
    #[error("pixel buffer of {found} bytes; {width}x{height}x{channels} needs {expected}")]
    Buffer {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Channels.
        channels: u8,
        /// Bytes needed.
        expected: u64,
        /// Bytes found.
        found: usize,
    },
    /// An empty image, or one larger than [`MAX_SIDE`].
    #[error("image of {width}x{height}; expected 1x1..={MAX_SIDE}x{MAX_SIDE}")]
    Size {
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// The two images differ in size.
    #[error("images of {a_w}x{a_h} and {b_w}x{b_h} differ in size")]
    SizeMismatch {
        /// First width.
        a_w: u32,
        /// First height.
        a_h: u32,
        /// Second width.
        b_w: u32,
        /// Second height.
        b_h: u32,
    },
    /// A crop does not lie inside the image.
    #[error("crop {rect:?} does not lie inside a {width}x{height} image")]
    CropOutside {
        /// The crop.
        rect: Rect,
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
    },
}

/// A borrowed image: rows top to bottom, pixels left to right, 8 bits per
/// channel, 3 (RGB) or 4 (RGBA) channels interleaved.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    width: u32,
    height: u32,
    channels: u8,
    pixels: &'a [u8],
}

impl<'a> Image<'a> {
    /// Checks the buffer against the size and channel count.
    pub fn new(
        width: u32,
        height: u32,
        channels: u8,
        pixels: &'a [u8],
    ) -> Result<Self, MetricError> {
        if channels != 3 && channels != 4 {
            return Err(MetricError::Channels(channels));
        }
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(MetricError::Size { width, height });
        }
        let expected = u64::from(width) * u64::from(height) * u64::from(channels);
        if pixels.len() as u64 != expected {
            return Err(MetricError::Buffer {
                width,
                height,
                channels,
                expected,
                found: pixels.len(),
            });
        }
        Ok(Image {
            width,
            height,
            channels,
            pixels,
        })
    }

    /// Width, pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height, pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Channels (3 or 4).
    pub fn channels(&self) -> u8 {
        self.channels
    }

    /// The pixels of `rect` (image coordinates) as a new RGB(A) buffer with
    /// the same channel count.
    pub fn crop(&self, rect: Rect) -> Result<Vec<u8>, MetricError> {
        if !rect.fits(self.width, self.height) {
            return Err(MetricError::CropOutside {
                rect,
                width: self.width,
                height: self.height,
            });
        }
        let c = usize::from(self.channels);
        let row = self.width as usize * c;
        let mut out = Vec::with_capacity(rect.area() as usize * c);
        for y in rect.y..rect.y + rect.h {
            let start = y as usize * row + rect.x as usize * c;
            if let Some(line) = self.pixels.get(start..start + rect.w as usize * c) {
                out.extend_from_slice(line);
            }
        }
        Ok(out)
    }

    fn at(&self, x: u32, y: u32, channel: usize) -> i64 {
        let i =
            (y as usize * self.width as usize + x as usize) * usize::from(self.channels) + channel;
        i64::from(self.pixels.get(i).copied().unwrap_or(0))
    }
}

/// Window origins along a side of `len` pixels for windows of `win`:
/// every `STRIDE`, and the last one flush with the end.
fn origins(len: u32, win: u32) -> Vec<u32> {
    let last = len - win;
    let mut v: Vec<u32> = (0..=last).step_by(STRIDE as usize).collect();
    if v.last() != Some(&last) {
        v.push(last);
    }
    v
}

// SSIM constants scaled by 10 000: C1 = (0.01·255)² = 6.5025, C2 = (0.03·255)² = 58.5225.
const SCALE: i128 = 10_000;
const C1: i128 = 65_025;
const C2: i128 = 585_225;

/// SSIM × 1000 of one window from its sums over `n` pixels (may be negative).
fn window_ssim(n: i128, sx: i128, sy: i128, sxx: i128, syy: i128, sxy: i128) -> i128 {
    let n2 = n * n;
    let num1 = 2 * sx * sy * SCALE + C1 * n2;
    let den1 = (sx * sx + sy * sy) * SCALE + C1 * n2;
    let num2 = 2 * (n * sxy - sx * sy) * SCALE + C2 * n2;
    let den2 = (n * sxx - sx * sx + n * syy - sy * sy) * SCALE + C2 * n2;
    // Both denominators are at least C·n² > 0.
    (num1 * num2 * 1000).div_euclid(den1 * den2)
}

/// The similarity of two images of the same size, SSIM × 1000 in
/// `0..=1000` (see the module docs). Identical images score 1000.
pub fn similarity_milli(a: &Image<'_>, b: &Image<'_>) -> Result<u16, MetricError> {
    if a.width != b.width || a.height != b.height {
        return Err(MetricError::SizeMismatch {
            a_w: a.width,
            a_h: a.height,
            b_w: b.width,
            b_h: b.height,
        });
    }
    let win_w = WINDOW.min(a.width);
    let win_h = WINDOW.min(a.height);
    let xs = origins(a.width, win_w);
    let ys = origins(a.height, win_h);
    let n = i128::from(win_w) * i128::from(win_h);
    let windows = (xs.len() * ys.len()) as i128;
    let mut worst = i128::MAX;
    for channel in 0..3 {
        let mut total: i128 = 0;
        for &y0 in &ys {
            for &x0 in &xs {
                let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0i64, 0i64, 0i64, 0i64, 0i64);
                for y in y0..y0 + win_h {
                    for x in x0..x0 + win_w {
                        let p = a.at(x, y, channel);
                        let q = b.at(x, y, channel);
                        sx += p;
                        sy += q;
                        sxx += p * p;
                        syy += q * q;
                        sxy += p * q;
                    }
                }
                total += window_ssim(
                    n,
                    i128::from(sx),
                    i128::from(sy),
                    i128::from(sxx),
                    i128::from(syy),
                    i128::from(sxy),
                );
            }
        }
        worst = worst.min(total.div_euclid(windows));
    }
    Ok(worst.clamp(0, 1000) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(w: u32, h: u32, c: u8, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..w as usize * h as usize * usize::from(c))
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (s >> 56) as u8
            })
            .collect()
    }

    /// A smooth test picture: gradients and a disc, like a simple render.
    fn picture(w: u32, h: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as i64 - w as i64 / 2, y as i64 - h as i64 / 2);
                let disc = dx * dx + dy * dy < (w as i64 / 3).pow(2);
                v.push((x * 255 / w) as u8);
                v.push((y * 255 / h) as u8);
                v.push(if disc { 220 } else { 40 });
            }
        }
        v
    }

    #[test]
    fn identical_images_score_1000() {
        let p = picture(64, 48);
        let a = Image::new(64, 48, 3, &p).unwrap();
        assert_eq!(similarity_milli(&a, &a).unwrap(), 1000);
        let n = noise(5, 3, 4, 1);
        let b = Image::new(5, 3, 4, &n).unwrap();
        assert_eq!(similarity_milli(&b, &b).unwrap(), 1000);
    }

    #[test]
    fn slight_noise_passes_blank_and_wrong_fail() {
        let p = picture(128, 128);
        let a = Image::new(128, 128, 3, &p).unwrap();
        // ±2 levels of noise, as between two honest renders.
        let jitter: Vec<u8> = p
            .iter()
            .zip(noise(128, 128, 3, 9))
            .map(|(v, n)| v.saturating_add(n % 3).saturating_sub(1))
            .collect();
        let j = Image::new(128, 128, 3, &jitter).unwrap();
        let s = similarity_milli(&a, &j).unwrap();
        assert!(s >= 900, "honest jitter scored {s}");
        let blank = vec![0u8; p.len()];
        let b = Image::new(128, 128, 3, &blank).unwrap();
        assert!(similarity_milli(&a, &b).unwrap() < 200);
        let n = noise(128, 128, 3, 3);
        let r = Image::new(128, 128, 3, &n).unwrap();
        assert!(similarity_milli(&a, &r).unwrap() < 100);
        // Another picture (flipped): wrong frame.
        let flipped: Vec<u8> = p.chunks(128 * 3).rev().flatten().copied().collect();
        let f = Image::new(128, 128, 3, &flipped).unwrap();
        assert!(similarity_milli(&a, &f).unwrap() < 500);
        // Swapped colour channels: luminance-like content, wrong colour.
        let swapped: Vec<u8> = p.chunks(3).flat_map(|c| [c[2], c[1], c[0]]).collect();
        let sw = Image::new(128, 128, 3, &swapped).unwrap();
        assert!(similarity_milli(&a, &sw).unwrap() < 500);
    }

    #[test]
    fn alpha_is_ignored_and_bad_buffers_refused() {
        let rgb = picture(16, 16);
        let rgba: Vec<u8> = rgb.chunks(3).flat_map(|c| [c[0], c[1], c[2], 7]).collect();
        let other: Vec<u8> = rgb
            .chunks(3)
            .flat_map(|c| [c[0], c[1], c[2], 200])
            .collect();
        let a = Image::new(16, 16, 4, &rgba).unwrap();
        let b = Image::new(16, 16, 4, &other).unwrap();
        assert_eq!(similarity_milli(&a, &b).unwrap(), 1000);
        assert!(matches!(
            Image::new(16, 16, 2, &rgb),
            Err(MetricError::Channels(2))
        ));
        assert!(matches!(
            Image::new(16, 15, 3, &rgb),
            Err(MetricError::Buffer { .. })
        ));
        assert!(matches!(
            Image::new(0, 15, 3, &[]),
            Err(MetricError::Size { .. })
        ));
        let c = Image::new(16, 16, 3, &rgb).unwrap();
        let small = Image::new(4, 4, 4, &rgba[..64]).unwrap();
        assert!(matches!(
            similarity_milli(&c, &small),
            Err(MetricError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn crops_take_the_right_pixels() {
        let p = picture(20, 10);
        let a = Image::new(20, 10, 3, &p).unwrap();
        let r = Rect {
            x: 3,
            y: 2,
            w: 5,
            h: 4,
        };
        let c = a.crop(r).unwrap();
        assert_eq!(c.len(), 5 * 4 * 3);
        for y in 0..4usize {
            for x in 0..5usize {
                for k in 0..3usize {
                    assert_eq!(c[(y * 5 + x) * 3 + k], p[((y + 2) * 20 + x + 3) * 3 + k]);
                }
            }
        }
        assert!(a.crop(Rect { x: 16, ..r }).is_err());
        assert!(a.crop(Rect { w: 0, ..r }).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Symmetric, in range, 1000 on itself, for any size and content.
        #[test]
        fn similarity_is_symmetric_and_bounded(
            w in 1u32..40, h in 1u32..40, c in 3u8..5, s1 in any::<u64>(), s2 in any::<u64>()
        ) {
            let p = noise(w, h, c, s1);
            let q = noise(w, h, c, s2);
            let a = Image::new(w, h, c, &p).unwrap();
            let b = Image::new(w, h, c, &q).unwrap();
            let ab = similarity_milli(&a, &b).unwrap();
            prop_assert_eq!(ab, similarity_milli(&b, &a).unwrap());
            prop_assert!(ab <= 1000);
            prop_assert_eq!(similarity_milli(&a, &a).unwrap(), 1000);
        }
    }
}
