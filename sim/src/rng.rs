//! Seeded random streams, one per component.
//!
//! A run is a function of its seed: every component (the arrival process,
//! each node's churn, each node's runtime noise, each scheduler's
//! placement, …) draws from its own stream, derived from the scenario seed
//! and the component's name and index with BLAKE3. Adding a component or
//! drawing more numbers in one stream never shifts another stream, so a
//! change to one model leaves the others' draws alone.
//!
//! The generator is xoshiro256++ (32 bytes of state, so 100 000 nodes with
//! several streams each stay small); it implements [`rand_core::TryRng`]
//! (infallible), so it feeds the protocol machines (`Scheduler::handle_timeout`).
//! Creator signing keys, which need a `CryptoRng`, are derived from a
//! stream's seed bytes instead.

use std::convert::Infallible;

/// A deterministic 64-bit generator (xoshiro256++).
#[derive(Debug, Clone)]
pub struct SimRng {
    s: [u64; 4],
}

/// 32 seed bytes for component `name` number `index` of a run seeded `seed`.
pub fn seed_bytes(seed: u64, name: &str, index: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("rendertrust-sim 2026-11 stream v1");
    h.update(&seed.to_le_bytes());
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(&index.to_le_bytes());
    *h.finalize().as_bytes()
}

impl SimRng {
    /// The stream of component `name` number `index`.
    pub fn stream(seed: u64, name: &str, index: u64) -> SimRng {
        let b = seed_bytes(seed, name, index);
        let mut s = [0u64; 4];
        for (i, w) in s.iter_mut().enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&b[i * 8..i * 8 + 8]);
            *w = u64::from_le_bytes(word);
        }
        if s == [0; 4] {
            s[0] = 1; // the all-zero state is a fixed point
        }
        SimRng { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform draw in (0, 1] (never 0, so `ln` is finite).
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() <= p
    }

    /// A uniform index in `0..n` (`n` ≥ 1).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// An index drawn by weight (weights ≥ 0, not all 0; else 0).
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return 0;
        }
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x <= *w {
                return i;
            }
            x -= w;
        }
        weights.len().saturating_sub(1)
    }
}

impl rand_core::TryRng for SimRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next_u64() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_independent_and_reproducible() {
        let mut a = SimRng::stream(1, "churn", 7);
        let mut b = SimRng::stream(1, "churn", 7);
        let mut c = SimRng::stream(1, "churn", 8);
        let mut d = SimRng::stream(2, "churn", 7);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], c.next_u64());
        assert_ne!(xs[0], d.next_u64());
    }

    #[test]
    fn draws_are_in_range() {
        let mut r = SimRng::stream(3, "t", 0);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!(u > 0.0 && u <= 1.0);
            assert!(r.below(7) < 7);
        }
        let mut hits = [0u32; 3];
        for _ in 0..30_000 {
            hits[r.weighted(&[1.0, 0.0, 2.0])] += 1;
        }
        assert_eq!(hits[1], 0);
        assert!(hits[2] > hits[0] * 3 / 2, "{hits:?}");
    }
}
