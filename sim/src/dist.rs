//! Probability distributions for the models, in portable float maths.
//!
//! Every transcendental function comes from the `libm` crate (pure Rust),
//! not the platform's C library, so the same seed draws the same numbers on
//! every machine. Models may use floats (the simulator is a driver, not a
//! protocol rule); what reaches a protocol machine is rounded to integer
//! milliseconds first.

use serde::{Deserialize, Serialize};

use crate::rng::SimRng;

/// A distribution of non-negative values, written in TOML as an inline
/// table: `{ dist = "exponential", mean = 600 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
pub enum Dist {
    /// Always `value`.
    Fixed {
        /// The value.
        value: f64,
    },
    /// Uniform in `[min, max]`.
    Uniform {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
    /// Exponential (memoryless) with this mean.
    Exponential {
        /// Mean.
        mean: f64,
    },
    /// Log-normal with this mean; `sigma` is the standard deviation of the
    /// underlying normal (0.5: moderately skewed, 1.0: heavy right tail).
    Lognormal {
        /// Mean.
        mean: f64,
        /// Sigma of the log.
        sigma: f64,
    },
    /// Weibull with this mean and shape (< 1: many short, a few very long
    /// sessions, as measured for P2P churn; 1: exponential).
    Weibull {
        /// Mean.
        mean: f64,
        /// Shape `k`.
        shape: f64,
    },
    /// Pareto (heavy tail) with minimum `min` and tail index `alpha` (> 1).
    Pareto {
        /// Scale (smallest value).
        min: f64,
        /// Tail index.
        alpha: f64,
    },
}

impl Dist {
    /// One draw (≥ 0).
    pub fn sample(&self, rng: &mut SimRng) -> f64 {
        let v = match *self {
            Dist::Fixed { value } => value,
            Dist::Uniform { min, max } => min + (max - min) * (1.0 - rng.unit()),
            Dist::Exponential { mean } => -mean * libm::log(rng.unit()),
            Dist::Lognormal { mean, sigma } => {
                let mu = libm::log(mean.max(f64::MIN_POSITIVE)) - sigma * sigma / 2.0;
                libm::exp(mu + sigma * normal(rng))
            }
            Dist::Weibull { mean, shape } => {
                let k = shape.max(0.01);
                let scale = mean / libm::tgamma(1.0 + 1.0 / k);
                scale * libm::pow(-libm::log(rng.unit()), 1.0 / k)
            }
            Dist::Pareto { min, alpha } => min / libm::pow(rng.unit(), 1.0 / alpha.max(0.01)),
        };
        if v.is_finite() { v.max(0.0) } else { 0.0 }
    }

    /// The mean (for sizing arrivals to a target load).
    pub fn mean(&self) -> f64 {
        match *self {
            Dist::Fixed { value } => value,
            Dist::Uniform { min, max } => (min + max) / 2.0,
            Dist::Exponential { mean } | Dist::Lognormal { mean, .. } => mean,
            Dist::Weibull { mean, .. } => mean,
            Dist::Pareto { min, alpha } => {
                if alpha > 1.0 {
                    alpha * min / (alpha - 1.0)
                } else {
                    f64::INFINITY
                }
            }
        }
    }

    /// Why the parameters make no sense, if they do not.
    pub fn check(&self, what: &str) -> Result<(), String> {
        let bad = |m: &str| Err(format!("{what}: {m}"));
        let finite = |x: f64| x.is_finite() && x >= 0.0;
        match *self {
            Dist::Fixed { value } if !finite(value) => bad("value must be a number >= 0"),
            Dist::Uniform { min, max } if !(finite(min) && finite(max) && min <= max) => {
                bad("uniform needs 0 <= min <= max")
            }
            Dist::Exponential { mean } if !(finite(mean) && mean > 0.0) => bad("mean must be > 0"),
            Dist::Lognormal { mean, sigma }
                if !(finite(mean) && mean > 0.0 && finite(sigma) && sigma <= 5.0) =>
            {
                bad("lognormal needs mean > 0 and 0 <= sigma <= 5")
            }
            Dist::Weibull { mean, shape }
                if !(finite(mean) && mean > 0.0 && finite(shape) && shape >= 0.05) =>
            {
                bad("weibull needs mean > 0 and shape >= 0.05")
            }
            Dist::Pareto { min, alpha } if !(finite(min) && min > 0.0 && alpha > 1.0) => {
                bad("pareto needs min > 0 and alpha > 1 (finite mean)")
            }
            _ => Ok(()),
        }
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut SimRng) -> f64 {
    let (u1, u2) = (rng.unit(), rng.unit());
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_of(d: &Dist, n: usize) -> f64 {
        let mut r = SimRng::stream(11, "dist", 0);
        (0..n).map(|_| d.sample(&mut r)).sum::<f64>() / n as f64
    }

    #[test]
    fn sample_means_match_the_stated_means() {
        for d in [
            Dist::Fixed { value: 3.0 },
            Dist::Uniform {
                min: 10.0,
                max: 30.0,
            },
            Dist::Exponential { mean: 50.0 },
            Dist::Lognormal {
                mean: 40.0,
                sigma: 0.5,
            },
            Dist::Weibull {
                mean: 100.0,
                shape: 0.7,
            },
            Dist::Pareto {
                min: 10.0,
                alpha: 3.0,
            },
        ] {
            let m = mean_of(&d, 200_000);
            let want = d.mean();
            assert!(
                (m - want).abs() / want < 0.03,
                "{d:?}: sample mean {m}, want {want}"
            );
            assert!(d.check("d").is_ok());
        }
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(Dist::Exponential { mean: 0.0 }.check("x").is_err());
        assert!(Dist::Uniform { min: 2.0, max: 1.0 }.check("x").is_err());
        assert!(
            Dist::Pareto {
                min: 1.0,
                alpha: 1.0
            }
            .check("x")
            .is_err()
        );
    }
}
