//! Seeded random streams for the simulator: one xoshiro256++ stream per component, derived from
//! the scenario seed and the component's name, plus the few distributions the workloads need.
//!
//! Written out here rather than taken from `rand`/`rand_distr` because a plan must give the same
//! report for the same seed forever: those crates do not promise value stability of their
//! generators and samplers across releases, and a lockfile bump would silently change results.

use pbxlab_balancer::hash::{fnv1a, splitmix64};
use pbxlab_scenario::HoldDist;

/// xoshiro256++ (Blackman and Vigna): fast, 256 bits of state, good enough for simulation.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// The stream of one component: the same (seed, name) always gives the same numbers, and
    /// adding a component never shifts another's.
    pub fn stream(seed: u64, component: &str) -> Rng {
        let name = fnv1a(component.as_bytes());
        let mut state = seed ^ name.rotate_left(17);
        let s = [
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
            splitmix64(&mut state),
        ];
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = (self.s[0].wrapping_add(self.s[3]))
            .rotate_left(23)
            .wrapping_add(self.s[0]);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: safe to take the logarithm of.
    fn uniform_open0(&mut self) -> f64 {
        1.0 - self.uniform()
    }

    /// Uniform integer in [0, n); n must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift; the bias is below 2^-64 * n, irrelevant here.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * self.uniform_open0().ln()
    }

    pub fn standard_normal(&mut self) -> f64 {
        // Box-Muller; one value per call keeps the stream's use simple to reason about.
        let u1 = self.uniform_open0();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Poisson-distributed count; inversion for small means, a rounded normal beyond.
    pub fn poisson(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        if mean < 30.0 {
            let limit = (-mean).exp();
            let mut product = self.uniform_open0();
            let mut k = 0;
            while product > limit {
                product *= self.uniform_open0();
                k += 1;
            }
            return k;
        }
        (mean + mean.sqrt() * self.standard_normal())
            .round()
            .max(0.0) as u64
    }

    /// A holding time in seconds.
    pub fn hold(&mut self, dist: &HoldDist) -> f64 {
        match *dist {
            HoldDist::Exponential { mean_s } => self.exp(mean_s),
            HoldDist::LogNormal { mean_s, sigma } => {
                // Choose mu so the distribution's mean is mean_s.
                let mu = mean_s.ln() - sigma * sigma / 2.0;
                (mu + sigma * self.standard_normal()).exp()
            }
            HoldDist::Fixed { s } => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::stream(7, "calls");
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::stream(7, "calls");
                move |_| r.next_u64()
            })
            .collect();
        let c = Rng::stream(7, "ivr").next_u64();
        let d = Rng::stream(8, "calls").next_u64();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
        assert_ne!(a[0], d);
    }

    #[test]
    fn samplers_have_the_right_means() {
        let mut r = Rng::stream(1, "test");
        let n = 200_000;
        let mean = |f: &mut dyn FnMut() -> f64| (0..n).map(|_| f()).sum::<f64>() / n as f64;
        let e = mean(&mut || r.exp(180.0));
        assert!((e - 180.0).abs() < 2.0, "exp mean {e}");
        let mut r = Rng::stream(2, "test");
        let l = mean(&mut || {
            r.hold(&HoldDist::LogNormal {
                mean_s: 60.0,
                sigma: 0.8,
            })
        });
        assert!((l - 60.0).abs() < 1.0, "lognormal mean {l}");
        let mut r = Rng::stream(3, "test");
        let p = mean(&mut || r.poisson(7.0) as f64);
        assert!((p - 7.0).abs() < 0.05, "poisson mean {p}");
        let mut r = Rng::stream(4, "test");
        let u = mean(&mut || r.below(10) as f64);
        assert!((u - 4.5).abs() < 0.05, "below mean {u}");
    }
}
