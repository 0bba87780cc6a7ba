//! Samples of one scenario (one value per repetition and metric) and what is reported from them.
//!
//! Ratios are taken per repetition, between phases that ran minutes apart at most and on the same
//! loopback and disk, and their median is reported: on a shared machine the load changes from one
//! repetition to the next, and a paired ratio cancels much of that.

use std::collections::BTreeMap;

pub const GIB: f64 = (1u64 << 30) as f64;

#[derive(Default, Debug)]
pub struct Samples {
    values: BTreeMap<&'static str, Vec<f64>>,
}

impl Samples {
    pub fn add(&mut self, metric: &'static str, value: f64) {
        self.values.entry(metric).or_default().push(value);
    }

    pub fn get(&self, metric: &str) -> &[f64] {
        self.values.get(metric).map_or(&[], |v| v.as_slice())
    }

    pub fn median(&self, metric: &str) -> f64 {
        median(self.get(metric))
    }

    /// Median over repetitions of `a[i] / b[i]`.
    pub fn paired_ratio(&self, a: &str, b: &str) -> f64 {
        let ratios: Vec<f64> = self
            .get(a)
            .iter()
            .zip(self.get(b))
            .map(|(x, y)| x / y)
            .collect();
        median(&ratios)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .values
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_string(),
                    serde_json::Value::from(v.iter().map(|x| round(*x)).collect::<Vec<_>>()),
                )
            })
            .collect();
        serde_json::Value::Object(map)
    }
}

/// Median of the finite values; NaN when there is none.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Four significant digits are plenty for noisy measurements, and keep the BENCH line readable.
pub fn round(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let digits = 4 - 1 - x.abs().log10().floor() as i32;
    let f = 10f64.powi(digits.max(0));
    (x * f).round() / f
}

pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_ignores_nan_and_averages_the_middle_pair() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn paired_ratios_are_taken_per_repetition() {
        let mut s = Samples::default();
        for (a, b) in [(1.0, 2.0), (3.0, 3.0), (2.0, 8.0)] {
            s.add("a", a);
            s.add("b", b);
        }
        assert_eq!(s.paired_ratio("a", "b"), 0.5);
    }

    #[test]
    fn rounding_keeps_four_significant_digits() {
        assert_eq!(round(1.234567), 1.235);
        assert_eq!(round(123456.7), 123457.0);
        assert_eq!(round(0.00123456), 0.001235);
    }
}
