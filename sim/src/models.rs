//! The models: network, churn, arrivals, job shapes, workers' speed and
//! behaviour. Each is a small pure function of the scenario and a random
//! stream; `sim/README.md` states their assumptions.

use crate::dist::Dist;
use crate::rng::SimRng;
use crate::scenario::{Arrivals, Scenario};

/// The network model: latency between regions plus jitter, loss, gossip
/// hops, bandwidth-limited transfers.
#[derive(Debug, Clone)]
pub struct NetModel {
    /// One-way base latency, ms, `[from][to]`.
    base: Vec<Vec<f64>>,
    jitter: Dist,
    /// Hops a gossiped message takes to reach a subscriber.
    pub hops: u32,
    hop_ms: f64,
    /// Probability an exchange fails.
    pub rpc_loss: f64,
    /// Probability a gossiped message misses a subscriber.
    pub gossip_loss: f64,
    /// How long a sender waits before an exchange counts as failed, ms.
    pub rpc_timeout_ms: u64,
    /// A provider lookup, ms.
    pub lookup_ms: u64,
}

impl NetModel {
    /// The model of a scenario with `nodes` nodes.
    pub fn new(sc: &Scenario, nodes: usize) -> NetModel {
        let n = sc.regions.len();
        let base = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        sc.net
                            .latency_ms
                            .get(i)
                            .and_then(|r| r.get(j))
                            .copied()
                            .unwrap_or(if i == j { 10.0 } else { 50.0 })
                    })
                    .collect()
            })
            .collect();
        let d = f64::from(sc.net.gossip_degree.max(2));
        let hops = libm::ceil(libm::log((nodes.max(2)) as f64) / libm::log(d)).max(1.0) as u32;
        NetModel {
            base,
            jitter: sc.net.jitter.clone(),
            hops,
            hop_ms: sc.net.gossip_hop_ms,
            rpc_loss: sc.net.rpc_loss,
            gossip_loss: sc.net.gossip_loss,
            rpc_timeout_ms: (sc.net.rpc_timeout_s * 1000.0) as u64,
            lookup_ms: sc.net.lookup_ms as u64,
        }
    }

    /// One-way delay of a message from region `a` to region `b`, ms.
    pub fn latency(&self, a: u16, b: u16, rng: &mut SimRng) -> u64 {
        let base = self
            .base
            .get(a as usize)
            .and_then(|r| r.get(b as usize))
            .copied()
            .unwrap_or(50.0);
        (base + self.jitter.sample(rng)).round() as u64
    }

    /// Delay of a gossiped message from region `a` to a subscriber in `b`:
    /// the direct latency, plus validation and forwarding at each hop.
    pub fn gossip_delay(&self, a: u16, b: u16, rng: &mut SimRng) -> u64 {
        self.latency(a, b, rng) + (f64::from(self.hops.saturating_sub(1)) * self.hop_ms) as u64
    }

    /// Time to move `mb` megabytes at `mbps` megabits per second, ms.
    pub fn transfer_ms(mb: f64, mbps: f64) -> u64 {
        if mbps <= 0.0 {
            return u64::MAX / 4;
        }
        (mb * 8.0 / mbps * 1000.0).round() as u64
    }
}

/// Churn draws for one node.
pub fn session_ms(sc: &Scenario, rng: &mut SimRng) -> Option<u64> {
    if sc.churn.rate <= 0.0 {
        return None;
    }
    let mean_s = 3600.0 / sc.churn.rate;
    let d = with_mean(&sc.churn.session, mean_s);
    Some((d.sample(rng) * 1000.0).round().max(1.0) as u64)
}

/// Time away after a session, if the node comes back.
pub fn offline_ms(sc: &Scenario, rng: &mut SimRng) -> Option<u64> {
    sc.churn
        .offline
        .as_ref()
        .map(|d| (d.sample(rng) * 1000.0).round().max(1.0) as u64)
}

/// Long-run fraction of time a churning node is online.
pub fn availability(sc: &Scenario) -> f64 {
    if sc.churn.rate <= 0.0 {
        return 1.0;
    }
    let on = 3600.0 / sc.churn.rate;
    match &sc.churn.offline {
        Some(off) => on / (on + off.mean()),
        None => 1.0,
    }
}

/// The same shape with another mean (for session lengths set by `churn.rate`).
pub fn with_mean(d: &Dist, mean: f64) -> Dist {
    match d.clone() {
        Dist::Fixed { .. } => Dist::Fixed { value: mean },
        Dist::Uniform { min, max } => {
            let m = (min + max) / 2.0;
            let f = if m > 0.0 { mean / m } else { 1.0 };
            Dist::Uniform {
                min: min * f,
                max: max * f,
            }
        }
        Dist::Exponential { .. } => Dist::Exponential { mean },
        Dist::Lognormal { sigma, .. } => Dist::Lognormal { mean, sigma },
        Dist::Weibull { shape, .. } => Dist::Weibull { mean, shape },
        Dist::Pareto { alpha, .. } => Dist::Pareto {
            min: mean * (alpha - 1.0) / alpha,
            alpha,
        },
    }
}

/// The arrival process: when the next job comes.
#[derive(Debug, Clone)]
pub struct ArrivalModel {
    a: Arrivals,
    /// Mean jobs per millisecond of the background process.
    pub rate_per_ms: f64,
}

impl ArrivalModel {
    /// The model; `capacity` is the mesh's render capacity in reference
    /// seconds per second (used when the scenario gives a load).
    pub fn new(sc: &Scenario, capacity: f64) -> ArrivalModel {
        let per_hour = if sc.arrivals.process == "trace" {
            sc.arrivals.at_s.len() as f64 / (sc.duration_s.max(1) as f64 / 3600.0)
        } else if sc.arrivals.rate_per_hour > 0.0 {
            sc.arrivals.rate_per_hour
        } else {
            let work = sc.jobs.frames.mean().max(1.0) * sc.jobs.seconds_per_frame.mean().max(1e-3);
            sc.arrivals.load * capacity * availability(sc) / work * 3600.0
        };
        ArrivalModel {
            a: sc.arrivals.clone(),
            rate_per_ms: per_hour / 3_600_000.0,
        }
    }

    /// The background rate at `t_ms` into the run.
    fn rate_at(&self, t_ms: f64) -> f64 {
        if self.a.process == "diurnal" {
            let phase = 2.0 * std::f64::consts::PI * t_ms / (self.a.diurnal_period_s * 1000.0);
            self.rate_per_ms * (1.0 + self.a.diurnal_amplitude * libm::sin(phase))
        } else {
            self.rate_per_ms
        }
    }

    /// The next background arrival after `t_ms` (ms into the run), by
    /// thinning for the diurnal process.
    pub fn next_after(&self, t_ms: u64, rng: &mut SimRng) -> Option<u64> {
        if self.a.process == "trace" {
            return None;
        }
        if self.rate_per_ms <= 0.0 {
            return None;
        }
        let max = match self.a.process.as_str() {
            "diurnal" => self.rate_per_ms * (1.0 + self.a.diurnal_amplitude),
            _ => self.rate_per_ms,
        };
        let mut t = t_ms as f64;
        for _ in 0..1_000_000 {
            t += -libm::log(rng.unit()) / max;
            if rng.unit() * max <= self.rate_at(t) {
                return Some(t.ceil() as u64);
            }
        }
        None
    }

    /// The trace's submission times, ms into the run (sorted).
    pub fn trace(&self) -> Vec<u64> {
        if self.a.process != "trace" {
            return Vec::new();
        }
        let mut v: Vec<u64> = self.a.at_s.iter().map(|s| (s * 1000.0) as u64).collect();
        v.sort_unstable();
        v
    }

    /// Period of bursts and their size, if the process has them.
    pub fn bursts(&self) -> Option<(u64, u32)> {
        (self.a.process == "bursts")
            .then_some(((self.a.burst_every_s * 1000.0) as u64, self.a.burst_jobs))
    }
}

/// How a worker behaves (dishonest models for the trust work).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Behaviour {
    /// Does the work, reports truthfully.
    Honest,
    /// Does the work, returns a wrong output (a signed hash of it).
    Wrong,
    /// Spends `lazy_time` of the work, returns a made-up output.
    Lazy,
    /// Runs `slow_factor` times slower than its class advertises.
    Slow,
    /// Accepts, then never reports (its heartbeats are dropped).
    Silent,
}

impl Behaviour {
    /// Name in CSVs.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Honest => "honest",
            Behaviour::Wrong => "wrong",
            Behaviour::Lazy => "lazy",
            Behaviour::Slow => "slow",
            Behaviour::Silent => "silent",
        }
    }

    /// Draws a worker's behaviour.
    pub fn draw(sc: &Scenario, rng: &mut SimRng) -> Behaviour {
        let d = &sc.dishonest;
        if !rng.chance(d.fraction) {
            return Behaviour::Honest;
        }
        match rng.weighted(&[d.wrong, d.lazy, d.slow, d.silent]) {
            0 => Behaviour::Wrong,
            1 => Behaviour::Lazy,
            2 => Behaviour::Slow,
            _ => Behaviour::Silent,
        }
    }

    /// Whether its outputs are wrong.
    pub fn wrong_output(self) -> bool {
        matches!(self, Behaviour::Wrong | Behaviour::Lazy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_rate_sets_the_mean_session() {
        let mut sc = Scenario::default();
        sc.churn.rate = 0.5;
        let mut r = SimRng::stream(1, "t", 0);
        let n = 20_000;
        let mean = (0..n)
            .map(|_| session_ms(&sc, &mut r).unwrap_or(0) as f64)
            .sum::<f64>()
            / f64::from(n);
        assert!((mean / 7_200_000.0 - 1.0).abs() < 0.03, "{mean}");
        sc.churn.rate = 0.0;
        assert_eq!(session_ms(&sc, &mut r), None);
    }

    #[test]
    fn arrivals_follow_the_rate() {
        let mut sc = Scenario::default();
        sc.arrivals.rate_per_hour = 3600.0;
        for process in ["poisson", "diurnal"] {
            sc.arrivals.process = process.into();
            sc.arrivals.diurnal_period_s = 3600.0;
            let m = ArrivalModel::new(&sc, 1.0);
            let mut r = SimRng::stream(2, process, 0);
            let (mut t, mut n) = (0, 0);
            while let Some(next) = m.next_after(t, &mut r) {
                if next > 3_600_000 * 10 {
                    break;
                }
                t = next;
                n += 1;
            }
            assert!((n as f64 / 36_000.0 - 1.0).abs() < 0.03, "{process}: {n}");
        }
    }

    #[test]
    fn gossip_takes_more_hops_in_a_bigger_mesh() {
        let sc = Scenario::default();
        assert!(NetModel::new(&sc, 100_000).hops > NetModel::new(&sc, 100).hops);
        assert_eq!(NetModel::transfer_ms(100.0, 800.0), 1000);
    }
}
