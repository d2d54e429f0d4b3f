//! Batch-means confidence intervals. Successive sessions in a loaded pool are correlated (a busy
//! minute is followed by a busy minute), so the run after warm-up is cut into batches long enough
//! to be nearly independent, and the spread of the batch values — not the raw sample count — sets
//! the interval.

use serde::Serialize;

/// A point estimate with a confidence interval from batch means.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    /// Half-width of the two-sided 95 % interval.
    pub ci95: f64,
    /// Half-width of the two-sided 99.9 % interval.
    pub ci999: f64,
}

impl Estimate {
    /// `value` is the whole-run estimate; `batches` the same statistic per batch (batches with
    /// no observations are left out).
    pub fn from_batches(value: f64, batches: &[f64]) -> Estimate {
        let b: Vec<f64> = batches.iter().copied().filter(|v| v.is_finite()).collect();
        if b.len() < 2 {
            return Estimate {
                value,
                ci95: f64::NAN,
                ci999: f64::NAN,
            };
        }
        let n = b.len() as f64;
        let mean = b.iter().sum::<f64>() / n;
        let var = b.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let se = (var / n).sqrt();
        let df = n - 1.0;
        Estimate {
            value,
            ci95: student_t_quantile(0.975, df) * se,
            ci999: student_t_quantile(0.9995, df) * se,
        }
    }

    /// Whether `x` lies within the 99.9 % interval (a tiny absolute floor covers batches that
    /// are all identical, e.g. all zero).
    pub fn covers(&self, x: f64) -> bool {
        (self.value - x).abs() <= self.ci999.max(1e-9)
    }
}

/// Quantile of the standard normal distribution (Acklam's rational approximation, relative error
/// below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Quantile of Student's t with `df` degrees of freedom: the Cornish-Fisher expansion around the
/// normal quantile (Abramowitz and Stegun 26.7.5), within 0.5 % for df >= 5.
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    let z = normal_quantile(p);
    let (z2, z3) = (z * z, z * z * z);
    let z5 = z3 * z2;
    let z7 = z5 * z2;
    let z9 = z7 * z2;
    z + (z3 + z) / (4.0 * df)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * df.powi(2))
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * df.powi(3))
        + (79.0 * z9 + 776.0 * z7 + 1482.0 * z5 - 1920.0 * z3 - 945.0 * z) / (92160.0 * df.powi(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_tables() {
        assert!((normal_quantile(0.975) - 1.959964).abs() < 1e-5);
        assert!((normal_quantile(0.0005) + 3.290527).abs() < 1e-5);
        // Published t tables.
        for (p, df, t) in [
            (0.975, 19.0, 2.093),
            (0.975, 9.0, 2.262),
            (0.9995, 19.0, 3.883),
            (0.9995, 29.0, 3.659),
            (0.975, 100.0, 1.984),
        ] {
            let got = student_t_quantile(p, df);
            assert!(
                (got - t).abs() / t < 0.005,
                "t({p}, {df}) = {got}, tables say {t}"
            );
        }
    }

    #[test]
    fn batch_interval_shrinks_with_agreement() {
        let tight = Estimate::from_batches(1.0, &[0.99, 1.01, 1.0, 1.0, 0.995, 1.005]);
        let loose = Estimate::from_batches(1.0, &[0.5, 1.5, 1.0, 0.8, 1.2, 1.0]);
        assert!(tight.ci95 < loose.ci95);
        assert!(tight.ci999 > tight.ci95);
        assert!(tight.covers(1.004) && !tight.covers(1.1));
        assert!(Estimate::from_batches(1.0, &[1.0]).ci95.is_nan());
    }
}
