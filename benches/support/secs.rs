//! Measurement time shared by the benches: `INCEPTION_BENCH_SECS` seconds when set (the GPU round sets 1:
//! device timings are steady and device minutes are scarce), else the bench's own default.

use std::time::Duration;

/// `INCEPTION_BENCH_SECS` as a duration, or `default`.
pub fn measurement_or(default: Duration) -> Duration {
    std::env::var("INCEPTION_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(default, Duration::from_secs_f64)
}
