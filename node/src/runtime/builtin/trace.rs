//! The path tracer: vectors, the per-frame camera, the per-pixel random
//! numbers, intersection and shading.
//!
//! # Bit-identical on every x86-64 machine
//!
//! Every floating-point operation here is one IEEE 754 guarantees to round
//! exactly: `+ − × ÷`, `sqrt`, comparisons, and conversions between integers
//! and floats (`as`). Nothing else:
//! * no `mul_add` (FMA rounds once instead of twice), and Rust never fuses
//!   `a * b + c` by itself;
//! * no `sin`/`cos`/`tan`/`powf`/`powi`/`exp` from the platform's libm (their
//!   last bit differs between libms): [`sin_cos_deg`] is a fixed Taylor
//!   polynomial, gamma is 2 (`sqrt`);
//! * no `floor`/`round` either (exact, but a library call): [`floor`] truncates
//!   with `as`.
//!
//! Each pixel's random numbers come from [`pixel_rng`] seeded by (scene,
//! frame, pixel x, pixel y) in *full-frame* coordinates, and the pixel's rays
//! depend only on the full frame's size: a pixel's value does not depend on
//! the region rendered, on the thread that rendered it, or on what other
//! pixels did. So a tile is exactly the same crop of the full frame.
//!
//! # What it must not do
//!
//! No I/O, no threads (the caller splits rows), no clock.

use std::ops::{Add, Mul, Neg, Sub};

use super::scene::{CameraDef, Material, Scene};

/// A 3-vector (point, direction or RGB colour).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct V3 {
    pub(crate) x: f64,
    pub(crate) y: f64,
    pub(crate) z: f64,
}

impl V3 {
    pub(crate) const fn new(x: f64, y: f64, z: f64) -> V3 {
        V3 { x, y, z }
    }
    pub(crate) fn dot(self, o: V3) -> f64 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }
    pub(crate) fn cross(self, o: V3) -> V3 {
        V3::new(
            self.y * o.z - self.z * o.y,
            self.z * o.x - self.x * o.z,
            self.x * o.y - self.y * o.x,
        )
    }
    pub(crate) fn length_squared(self) -> f64 {
        self.dot(self)
    }
    /// The unit vector; the zero vector stays zero.
    pub(crate) fn unit(self) -> V3 {
        let l = self.length_squared().sqrt();
        if l > 0.0 { self * (1.0 / l) } else { self }
    }
    /// Component-wise product (colour filtering).
    pub(crate) fn hadamard(self, o: V3) -> V3 {
        V3::new(self.x * o.x, self.y * o.y, self.z * o.z)
    }
}

impl Add for V3 {
    type Output = V3;
    fn add(self, o: V3) -> V3 {
        V3::new(self.x + o.x, self.y + o.y, self.z + o.z)
    }
}
impl Sub for V3 {
    type Output = V3;
    fn sub(self, o: V3) -> V3 {
        V3::new(self.x - o.x, self.y - o.y, self.z - o.z)
    }
}
impl Mul<f64> for V3 {
    type Output = V3;
    fn mul(self, s: f64) -> V3 {
        V3::new(self.x * s, self.y * s, self.z * s)
    }
}
impl Neg for V3 {
    type Output = V3;
    fn neg(self) -> V3 {
        V3::new(-self.x, -self.y, -self.z)
    }
}

/// `⌊x⌋` for |x| < 2⁶³ with exact operations only (truncation by `as`).
pub(crate) fn floor(x: f64) -> f64 {
    let t = x as i64 as f64;
    if t > x { t - 1.0 } else { t }
}

/// `(sin, cos)` of an angle in degrees, with only `+ − × ÷`: reduce to a
/// quadrant and ±45°, then a Taylor polynomial (error < 1e-13 there).
/// Accuracy is secondary; the point is the same bits everywhere.
pub(crate) fn sin_cos_deg(deg: f64) -> (f64, f64) {
    // into [0, 360)
    let a = deg - 360.0 * floor(deg / 360.0);
    // nearest multiple of 90°: quadrant q, remainder r in [-45°, 45°]
    let q = floor(a / 90.0 + 0.5);
    let r = (a - 90.0 * q) * (std::f64::consts::PI / 180.0);
    let r2 = r * r;
    // Horner form of the Taylor series up to r^15 / r^14.
    // Horner form of the Taylor series up to r^15 / r^14, as
    // k0 − r²(k1 − r²(k2 − …)) so every coefficient is positive.
    let mut s = 1.0 / 1_307_674_368_000.0; // 1/15!
    let mut c = 1.0 / 87_178_291_200.0; // 1/14!
    for k in [
        1.0 / 6_227_020_800.0, // 1/13!
        1.0 / 39_916_800.0,
        1.0 / 362_880.0,
        1.0 / 5040.0,
        1.0 / 120.0,
        1.0 / 6.0,
        1.0,
    ] {
        s = k - r2 * s;
    }
    for k in [
        1.0 / 479_001_600.0, // 1/12!
        1.0 / 3_628_800.0,
        1.0 / 40_320.0,
        1.0 / 720.0,
        1.0 / 24.0,
        1.0 / 2.0,
        1.0,
    ] {
        c = k - r2 * c;
    }
    let (sr, cr) = (r * s, c);
    match q as i64 & 3 {
        0 => (sr, cr),
        1 => (cr, -sr),
        2 => (-sr, -cr),
        _ => (-cr, sr),
    }
}

/// SplitMix64: tiny, fast, and the same on every machine.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    /// Uniform in [0, 1): 53 random bits times 2⁻⁵³ (exact).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }
    /// Uniform in the unit ball, by rejection (bounded: after 64 misses, the
    /// centre; the chance of that is below 10⁻²⁰).
    fn in_unit_ball(&mut self) -> V3 {
        for _ in 0..64 {
            let p = V3::new(
                2.0 * self.unit() - 1.0,
                2.0 * self.unit() - 1.0,
                2.0 * self.unit() - 1.0,
            );
            if p.length_squared() < 1.0 {
                return p;
            }
        }
        V3::new(0.0, 0.0, 0.0)
    }
}

/// The random numbers of pixel (`x`, `y`) of `frame`, in full-frame coordinates.
pub(crate) fn pixel_rng(scene_seed: u64, frame: u32, x: u32, y: u32) -> Rng {
    let s = mix(scene_seed ^ 0x5245_4e44_4552_5452); // "RENDERTR"
    let s = mix(s ^ u64::from(frame));
    Rng(mix(s ^ ((u64::from(x) << 32) | u64::from(y))))
}

/// The camera placed for one frame of a `width × height` image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Camera {
    origin: V3,
    lower_left: V3,
    horizontal: V3,
    vertical: V3,
    width: f64,
    height: f64,
}

impl Camera {
    /// `None` when the camera looks along its up vector at this frame.
    pub(crate) fn for_frame(
        def: &CameraDef,
        frame: u32,
        width: u32,
        height: u32,
    ) -> Option<Camera> {
        // Orbit about the vertical axis through look_at.
        let (s, c) = sin_cos_deg(def.orbit_deg_per_frame * f64::from(frame));
        let off = def.look_from - def.look_at;
        let off = V3::new(off.x * c - off.z * s, off.y, off.x * s + off.z * c);
        let origin = def.look_at + off;
        let (hs, hc) = sin_cos_deg(def.vfov_deg / 2.0);
        let vh = 2.0 * hs / hc;
        let vw = vh * f64::from(width) / f64::from(height);
        let w = off.unit();
        let u = def.up.cross(w);
        if u.length_squared() < 1e-18 {
            return None;
        }
        let u = u.unit();
        let v = w.cross(u);
        let horizontal = u * vw;
        let vertical = v * vh;
        let lower_left = origin - horizontal * 0.5 - vertical * 0.5 - w;
        Some(Camera {
            origin,
            lower_left,
            horizontal,
            vertical,
            width: f64::from(width),
            height: f64::from(height),
        })
    }

    /// The ray through pixel (`px + jx`, `py + jy`); `py` counts from the top.
    fn ray(&self, px: f64, py: f64) -> (V3, V3) {
        let s = px / self.width;
        let t = 1.0 - py / self.height;
        let dir = self.lower_left + self.horizontal * s + self.vertical * t - self.origin;
        (self.origin, dir.unit())
    }
}

struct Hit {
    p: V3,
    /// Unit normal facing the incoming ray.
    n: V3,
    material: usize,
}

const T_MIN: f64 = 1e-6;

fn hit_scene(scene: &Scene, o: V3, d: V3) -> Option<Hit> {
    let mut best: Option<(f64, V3, usize)> = None;
    let mut t_max = f64::INFINITY;
    for s in &scene.spheres {
        let oc = o - s.center;
        let half_b = oc.dot(d);
        let c = oc.length_squared() - s.radius * s.radius;
        let disc = half_b * half_b - c;
        if disc < 0.0 {
            continue;
        }
        let sq = disc.sqrt();
        let mut t = -half_b - sq;
        if t <= T_MIN {
            t = -half_b + sq;
        }
        if t > T_MIN && t < t_max {
            t_max = t;
            let p = o + d * t;
            best = Some((t, (p - s.center) * (1.0 / s.radius), s.material));
        }
    }
    for pl in &scene.planes {
        let denom = pl.normal.dot(d);
        if denom.abs() < 1e-12 {
            continue;
        }
        let t = (pl.point - o).dot(pl.normal) / denom;
        if t > T_MIN && t < t_max {
            t_max = t;
            best = Some((t, pl.normal, pl.material));
        }
    }
    let (t, n, material) = best?;
    let n = if n.dot(d) > 0.0 { -n } else { n };
    Some(Hit {
        p: o + d * t,
        n,
        material,
    })
}

fn sky(scene: &Scene, d: V3) -> V3 {
    let t = 0.5 * (d.y + 1.0);
    scene.sky_horizon * (1.0 - t) + scene.sky_zenith * t
}

/// Radiance along one ray.
fn radiance(scene: &Scene, mut o: V3, mut d: V3, rng: &mut Rng) -> V3 {
    let mut throughput = V3::new(1.0, 1.0, 1.0);
    let black = V3::new(0.0, 0.0, 0.0);
    for _ in 0..scene.max_bounces {
        let Some(h) = hit_scene(scene, o, d) else {
            return throughput.hadamard(sky(scene, d));
        };
        let Some(mat) = scene.materials.get(h.material) else {
            return black;
        };
        match *mat {
            Material::Emissive { emit } => return throughput.hadamard(emit),
            Material::Diffuse { color, checker } => {
                let albedo = match checker {
                    Some((c2, size)) => {
                        let k = floor(h.p.x / size) + floor(h.p.z / size);
                        if (k as i64) & 1 == 0 { color } else { c2 }
                    }
                    None => color,
                };
                let b = rng.in_unit_ball();
                let mut nd = h.n + b.unit();
                if nd.length_squared() < 1e-12 {
                    nd = h.n;
                }
                throughput = throughput.hadamard(albedo);
                o = h.p;
                d = nd.unit();
            }
            Material::Metal { color, fuzz } => {
                let r = d - h.n * (2.0 * d.dot(h.n));
                let nd = (r + rng.in_unit_ball() * fuzz).unit();
                if nd.dot(h.n) <= 0.0 {
                    return black;
                }
                throughput = throughput.hadamard(color);
                o = h.p;
                d = nd;
            }
        }
    }
    black
}

/// Linear radiance in [0, 1] → 8-bit with gamma 2.
fn to_u8(v: f64) -> u8 {
    let v = if v > 1.0 {
        1.0
    } else if v > 0.0 {
        v
    } else {
        0.0 // also NaN
    };
    (v.sqrt() * 255.0 + 0.5) as u8
}

/// Renders row `y` (full-frame coordinates), columns `x0..x0 + out.len() / 3`,
/// into `out` as RGB8.
pub(crate) fn render_row(scene: &Scene, cam: &Camera, frame: u32, y: u32, x0: u32, out: &mut [u8]) {
    let inv = 1.0 / f64::from(scene.samples);
    for (i, px) in out.chunks_exact_mut(3).enumerate() {
        let x = x0 + i as u32;
        let mut rng = pixel_rng(scene.seed, frame, x, y);
        let mut acc = V3::new(0.0, 0.0, 0.0);
        for _ in 0..scene.samples {
            let jx = rng.unit();
            let jy = rng.unit();
            let (o, d) = cam.ray(f64::from(x) + jx, f64::from(y) + jy);
            acc = acc + radiance(scene, o, d, &mut rng);
        }
        let c = acc * inv;
        px[0] = to_u8(c.x);
        px[1] = to_u8(c.y);
        px[2] = to_u8(c.z);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_matches_std() {
        for x in [
            -2.5,
            -2.0,
            -1e-9,
            0.0,
            1e-9,
            0.999,
            1.0,
            7.5,
            -7.5,
            1e12 + 0.5,
        ] {
            assert_eq!(floor(x), x.floor(), "{x}");
        }
    }

    #[test]
    fn sin_cos_is_accurate_enough() {
        let mut deg = -1000.0;
        while deg < 1000.0 {
            let (s, c) = sin_cos_deg(deg);
            let r = deg.to_radians();
            assert!((s - r.sin()).abs() < 1e-12, "sin {deg}: {s} vs {}", r.sin());
            assert!((c - r.cos()).abs() < 1e-12, "cos {deg}: {c} vs {}", r.cos());
            deg += 7.3;
        }
        assert_eq!(sin_cos_deg(0.0), (0.0, 1.0));
    }

    /// Golden values: these bits must never change on any machine, or
    /// exact-hash verification between workers breaks. (If the algorithm
    /// changes on purpose, the runtime version changes with it.)
    #[test]
    fn sin_cos_and_rng_bits_are_fixed() {
        let (s, c) = sin_cos_deg(33.0);
        assert_eq!(
            (s.to_bits(), c.to_bits()),
            (0x3fe16daed770771d, 0x3fead663a8ae2fdc),
            "{s} {c}"
        );
        let mut r = pixel_rng(1, 2, 3, 4);
        assert_eq!(r.unit().to_bits(), 0x3fe7bb0452237c1f);
    }

    #[test]
    fn unit_ball_samples_are_inside() {
        let mut r = pixel_rng(9, 9, 9, 9);
        for _ in 0..1000 {
            assert!(r.in_unit_ball().length_squared() < 1.0);
        }
    }
}
