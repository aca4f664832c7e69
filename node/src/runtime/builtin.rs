//! Placeholder until the builtin renderer lands: only the benchmark entry
//! point, measuring a fixed deterministic ray-sphere workload on one core.

/// Milli-frames per minute of the fixed benchmark workload.
pub fn benchmark_mfpm() -> u64 {
    let start = std::time::Instant::now();
    let (w, h) = (320u32, 180u32);
    let mut acc = 0u64;
    for y in 0..h {
        for x in 0..w {
            let dx = (f64::from(x) / f64::from(w) - 0.5) * 1.6;
            let dy = (f64::from(y) / f64::from(h) - 0.5) * 0.9;
            let norm = (dx * dx + dy * dy + 1.0).sqrt();
            let (dx, dy, dz) = (dx / norm, dy / norm, 1.0 / norm);
            let b = dz * 3.0 + dx * 0.2 + dy * 0.1;
            let disc = b * b - (9.0 + 0.05 - 1.0);
            if disc > 0.0 {
                acc = acc.wrapping_add((disc.sqrt() * 255.0) as u64);
            }
        }
    }
    std::hint::black_box(acc);
    let secs = start.elapsed().as_secs_f64().max(1e-6);
    (60_000.0 / secs) as u64
}
