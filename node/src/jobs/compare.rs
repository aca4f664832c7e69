//! The creator's spot-check comparisons (`docs/trust.md`, "Spot-check").
//!
//! A `Compare` event names two held results of a task: the reference (the
//! primary, or another check for a cross comparison) and a check that
//! rendered a crop. The creator machine (`CreatorJob::compare`) says which
//! pixels to compare; this module fetches and opens both outputs (as for an
//! accepted result, [`super::create::fetch_open`]), decodes them as PNG into
//! RGB8 ([`decode_rgb`]), crops the reference, runs
//! `protocol::verify::metric::similarity_milli`, hands the outcome to
//! `CreatorJob::compared` (which marks an output whose hash differs from the
//! signed one unusable) and sends the `Comparison` to the scheduler that
//! asked.
//!
//! What it must not do: decide anything. Whether the similarity passes, and
//! what follows, is `protocol::verify` / the scheduler's.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use rendertrust_protocol::creator::CompareRequest;
use rendertrust_protocol::identity::NodeId;
use rendertrust_protocol::rpc::{RpcRequest, RpcResponse};
use rendertrust_protocol::task::Rect;
use rendertrust_protocol::verify::CompareResult;
use rendertrust_protocol::verify::metric::{Image, MAX_SIDE, similarity_milli};
use rendertrust_protocol::wire::JobId;

use super::service::{Internal, JobService};

/// A finished comparison, back to the loop.
#[derive(Debug)]
pub(crate) struct CompareDone {
    pub(crate) scheduler: NodeId,
    pub(crate) job: JobId,
    pub(crate) task: u32,
    pub(crate) reference_attempt: u32,
    pub(crate) check_attempt: u32,
    /// Plaintext hashes of the opened outputs (`None`: not fetched or opened).
    pub(crate) reference_hash: Option<[u8; 32]>,
    pub(crate) check_hash: Option<[u8; 32]>,
    pub(crate) found: CompareResult,
}

/// Decodes a PNG file into RGB8 (alpha dropped, grey expanded, 16-bit
/// stripped), refusing images larger than `max_w × max_h`.
pub(crate) fn decode_rgb(
    path: &Path,
    max_w: u32,
    max_h: u32,
) -> Result<(u32, u32, Vec<u8>), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let budget = u64::from(max_w.min(MAX_SIDE))
        .saturating_mul(u64::from(max_h.min(MAX_SIDE)))
        .saturating_mul(8)
        .saturating_add(1 << 20);
    let limits = png::Limits {
        bytes: usize::try_from(budget).unwrap_or(usize::MAX),
    };
    let mut dec = png::Decoder::new_with_limits(BufReader::new(file), limits);
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let bad = |e: png::DecodingError| format!("not a PNG: {e}");
    let (w, h) = {
        let info = dec.read_header_info().map_err(bad)?;
        (info.width, info.height)
    };
    if w == 0 || h == 0 || w > max_w || h > max_h {
        return Err(format!("a {w}x{h} image; expected at most {max_w}x{max_h}"));
    }
    let mut reader = dec.read_info().map_err(bad)?;
    let len = reader
        .output_buffer_size()
        .ok_or_else(|| "image too large".to_owned())?;
    let mut buf = vec![0u8; len];
    let out = reader.next_frame(&mut buf).map_err(bad)?;
    let channels = match out.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("an indexed PNG after expansion".into()),
    };
    let row_len = out.width as usize * channels;
    let mut rgb = Vec::with_capacity(out.width as usize * out.height as usize * 3);
    for row in buf.chunks(out.line_size.max(1)).take(out.height as usize) {
        let row = row
            .get(..row_len)
            .ok_or_else(|| "short image data".to_owned())?;
        for p in row.chunks_exact(channels) {
            match p {
                [g] | [g, _] => rgb.extend_from_slice(&[*g, *g, *g]),
                [r, g, b] | [r, g, b, _] => rgb.extend_from_slice(&[*r, *g, *b]),
                _ => {}
            }
        }
    }
    if rgb.len() != out.width as usize * out.height as usize * 3 {
        return Err("short image data".into());
    }
    Ok((out.width, out.height, rgb))
}

/// Compares the check's crop with the reference's pixels under it.
/// `reference`/`check`: opened output files (`None`: unusable).
pub(crate) fn compare_files(
    reference: Option<&Path>,
    check: Option<&Path>,
    reference_pixels: Rect,
    crop: Rect,
) -> CompareResult {
    let Some(reference) = reference else {
        return CompareResult::ReferenceUnusable;
    };
    let Some(check) = check else {
        return CompareResult::CheckUnusable;
    };
    let max_ref_w = reference_pixels.x.saturating_add(reference_pixels.w);
    let max_ref_h = reference_pixels.y.saturating_add(reference_pixels.h);
    // The reference is the whole region (or another crop): at most MAX_SIDE.
    let Ok((rw, rh, rpx)) = decode_rgb(reference, MAX_SIDE, MAX_SIDE) else {
        return CompareResult::ReferenceUnusable;
    };
    if rw < max_ref_w || rh < max_ref_h {
        return CompareResult::ReferenceUnusable;
    }
    let Ok((cw, ch, cpx)) = decode_rgb(check, crop.w, crop.h) else {
        return CompareResult::CheckUnusable;
    };
    if (cw, ch) != (crop.w, crop.h) {
        return CompareResult::CheckUnusable;
    }
    let reference_crop = match Image::new(rw, rh, 3, &rpx).and_then(|i| i.crop(reference_pixels)) {
        Ok(c) => c,
        Err(_) => return CompareResult::ReferenceUnusable,
    };
    let a = Image::new(crop.w, crop.h, 3, &reference_crop);
    let b = Image::new(cw, ch, 3, &cpx);
    match (a, b) {
        (Ok(a), Ok(b)) => match similarity_milli(&a, &b) {
            Ok(s) => CompareResult::Similarity(s),
            Err(_) => CompareResult::CheckUnusable,
        },
        (Err(_), _) => CompareResult::ReferenceUnusable,
        (_, Err(_)) => CompareResult::CheckUnusable,
    }
}

impl JobService {
    /// Starts a comparison asked by `scheduler` (a `Compare` event).
    pub(crate) fn start_compare(
        &mut self,
        scheduler: NodeId,
        job: JobId,
        task: u32,
        cross: bool,
        request: CompareRequest,
    ) {
        let ctx = self.fetch_ctx();
        let reference_attempt = request.reference.result.attempt;
        let check_attempt = request.check.result.attempt;
        tracing::info!(job = %hex::encode(job.0), task, reference_attempt, check_attempt, cross, "spot-check comparison");
        tokio::spawn(async move {
            let internal = ctx.internal.clone();
            let reference = super::create::fetch_open(&ctx, &request.reference, ".ref").await;
            let check = super::create::fetch_open(&ctx, &request.check, ".check").await;
            let path = |r: &Result<([u8; 32], PathBuf, u64), (String, bool)>| {
                r.as_ref().ok().map(|(_, p, _)| p.clone())
            };
            let (rp, cp) = (path(&reference), path(&check));
            if let Err((e, _)) = &reference {
                tracing::warn!(task, attempt = reference_attempt, error = %e, "comparison: reference unusable");
            }
            if let Err((e, _)) = &check {
                tracing::warn!(task, attempt = check_attempt, error = %e, "comparison: check unusable");
            }
            let (crop, pixels) = (request.crop, request.reference_pixels);
            let (rp2, cp2) = (rp.clone(), cp.clone());
            let found = tokio::task::spawn_blocking(move || {
                compare_files(rp2.as_deref(), cp2.as_deref(), pixels, crop)
            })
            .await
            .unwrap_or(CompareResult::ReferenceUnusable);
            for p in [rp, cp].into_iter().flatten() {
                let _ = std::fs::remove_file(p);
            }
            let done = CompareDone {
                scheduler,
                job,
                task,
                reference_attempt,
                check_attempt,
                reference_hash: reference.ok().map(|(h, _, _)| h),
                check_hash: check.ok().map(|(h, _, _)| h),
                found,
            };
            let _ = internal.send(Internal::Compared(Box::new(done))).await;
        });
    }

    /// A comparison finished: record it and answer the scheduler.
    pub(crate) fn on_compared(&mut self, done: CompareDone) {
        let Some(entry) = self.jobs.get_mut(&done.job) else {
            return;
        };
        let comparison = match entry.machine.compared(
            done.task,
            done.reference_attempt,
            done.check_attempt,
            done.reference_hash,
            done.check_hash,
            done.found,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(job = %hex::encode(done.job.0), task = done.task, error = %e, "comparison not recorded");
                return;
            }
        };
        self.dirty_jobs.insert(done.job);
        tracing::info!(job = %hex::encode(done.job.0), task = done.task, reference = done.reference_attempt, check = done.check_attempt, result = ?comparison.result, "comparison made");
        let on_answer: super::outbox::OnAnswer = Box::new(move |answer| match answer {
            Ok(RpcResponse::Ok) => {}
            other => tracing::warn!(answer = ?other, "the scheduler did not take a comparison"),
        });
        self.outbox.send(
            &self.rpc,
            done.scheduler,
            RpcRequest::Compared { comparison },
            Some(on_answer),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
        let f = std::fs::File::create(path).unwrap();
        let mut e = png::Encoder::new(std::io::BufWriter::new(f), w, h);
        e.set_color(color);
        e.set_depth(png::BitDepth::Eight);
        let mut wr = e.write_header().unwrap();
        wr.write_image_data(data).unwrap();
        wr.finish().unwrap();
    }

    fn pattern(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut v = Vec::new();
        for y in 0..h {
            for x in 0..w {
                v.extend_from_slice(&f(x, y));
            }
        }
        v
    }

    #[test]
    fn a_true_crop_matches_and_a_corrupted_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = |x: u32, y: u32| [(x * 3) as u8, (y * 5) as u8, ((x ^ y) * 7) as u8];
        let full = pattern(96, 64, f);
        let reference = dir.path().join("ref.png");
        write_png(&reference, 96, 64, png::ColorType::Rgb, &full);
        let crop = Rect {
            x: 40,
            y: 16,
            w: 40,
            h: 32,
        };
        // The region is the whole frame here: reference pixels = crop.
        let good = pattern(40, 32, |x, y| f(x + 40, y + 16));
        let check = dir.path().join("check.png");
        write_png(&check, 40, 32, png::ColorType::Rgb, &good);
        assert_eq!(
            compare_files(Some(&reference), Some(&check), crop, crop),
            CompareResult::Similarity(1000)
        );
        // The same pixels as RGBA decode to the same RGB.
        let rgba: Vec<u8> = good
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        write_png(&check, 40, 32, png::ColorType::Rgba, &rgba);
        assert_eq!(
            compare_files(Some(&reference), Some(&check), crop, crop),
            CompareResult::Similarity(1000)
        );
        // Inverted pixels: far below any threshold.
        let bad: Vec<u8> = good.iter().map(|b| 255 - b).collect();
        write_png(&check, 40, 32, png::ColorType::Rgb, &bad);
        match compare_files(Some(&reference), Some(&check), crop, crop) {
            CompareResult::Similarity(s) => assert!(s < 500, "{s}"),
            other => panic!("{other:?}"),
        }
        // Wrong size, not a PNG, missing.
        write_png(&check, 40, 31, png::ColorType::Rgb, &good[..40 * 31 * 3]);
        assert_eq!(
            compare_files(Some(&reference), Some(&check), crop, crop),
            CompareResult::CheckUnusable
        );
        std::fs::write(&check, b"not a png").unwrap();
        assert_eq!(
            compare_files(Some(&reference), Some(&check), crop, crop),
            CompareResult::CheckUnusable
        );
        assert_eq!(
            compare_files(None, Some(&check), crop, crop),
            CompareResult::ReferenceUnusable
        );
        assert_eq!(
            compare_files(Some(&reference), None, crop, crop),
            CompareResult::CheckUnusable
        );
        // A reference smaller than the pixels to compare is unusable.
        let outside = Rect { x: 70, ..crop };
        write_png(&check, 40, 32, png::ColorType::Rgb, &good);
        assert_eq!(
            compare_files(Some(&reference), Some(&check), outside, crop),
            CompareResult::ReferenceUnusable
        );
    }

    #[test]
    fn grey_pngs_expand_to_rgb() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        write_png(&p, 2, 1, png::ColorType::Grayscale, &[10, 200]);
        let (w, h, px) = decode_rgb(&p, 2, 1).unwrap();
        assert_eq!((w, h), (2, 1));
        assert_eq!(px, vec![10, 10, 10, 200, 200, 200]);
        assert!(decode_rgb(&p, 1, 1).unwrap_err().contains("at most 1x1"));
    }
}
