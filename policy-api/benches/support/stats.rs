//! Percentiles and formatting shared by the benchmarks.

use std::time::Duration;

/// The `p` quantile (0..=1) of sorted samples.
// Each benchmark compiles this file on its own; not every one takes percentiles.
#[allow(dead_code)]
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
