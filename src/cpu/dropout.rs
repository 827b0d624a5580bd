//! CPU twin of dropout: inverted dropout whose mask is a counter-based hash of (seed, step, element index),
//! the same integer function in Rust and CUDA, so CPU and GPU masks are identical bit for bit.

use rayon::prelude::*;

use super::CHUNK;
use crate::backend::check_same_len;
use crate::{Error, Result};

/// Chris Wellons' `lowbias32` integer finaliser.
const fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The dropout hash of element `index` at training step `step` under `seed`: 32 well-mixed bits.
pub const fn dropout_hash(seed: u64, step: u64, index: u64) -> u32 {
    let mut h = mix32(seed as u32 ^ 0x9e37_79b9);
    h = mix32(h ^ (seed >> 32) as u32);
    h = mix32(h ^ step as u32);
    h = mix32(h ^ (step >> 32) as u32);
    h = mix32(h ^ index as u32);
    mix32(h ^ (index >> 32) as u32)
}

/// The integer threshold of drop probability `p`: element `i` is kept iff `dropout_hash(..) >> 8 >= threshold`
/// (24 random bits, so `p` is honoured to 2⁻²⁴), and its kept value is scaled by `1 / (1 - p)`.
pub fn dropout_threshold(p: f32) -> Result<(u32, f32)> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::OutOfRange {
            op: "dropout",
            what: "p".into(),
            value: p.to_string(),
            allowed: "0 <= p <= 1",
        });
    }
    let threshold = (f64::from(p) * f64::from(1u32 << 24)).round() as u32;
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    Ok((threshold, scale))
}

/// `y[i] = x[i] / (1 - p)` where element `i` is kept at `(seed, step)`, else 0. Shapes: `y, x: [n]`.
pub fn dropout_fwd(y: &mut [f32], x: &[f32], p: f32, seed: u64, step: u64) -> Result<()> {
    check_same_len("dropout_fwd", y.len(), &[("x", x.len())])?;
    apply(y, x, p, seed, step)
}

/// `dx = dy` masked and scaled exactly as the forward at the same `(seed, step)`. Shapes: `dx, dy: [n]`.
pub fn dropout_bwd(dx: &mut [f32], dy: &[f32], p: f32, seed: u64, step: u64) -> Result<()> {
    check_same_len("dropout_bwd", dx.len(), &[("dy", dy.len())])?;
    apply(dx, dy, p, seed, step)
}

/// The step a device step counter `counter [1]` (the steps taken) is running: `counter[0] + 1`.
pub(crate) fn step_of(op: &'static str, counter: &[u32]) -> Result<u64> {
    match counter {
        [c] => Ok(u64::from(*c) + 1),
        _ => Err(Error::BufferLength {
            op,
            what: "step counter",
            expected: 1,
            len: counter.len(),
        }),
    }
}

/// [`dropout_fwd`] at the step of the device step counter `counter [1]`: `counter[0] + 1`.
pub fn dropout_fwd_at(y: &mut [f32], x: &[f32], p: f32, seed: u64, counter: &[u32]) -> Result<()> {
    dropout_fwd(y, x, p, seed, step_of("dropout_fwd", counter)?)
}

/// [`dropout_bwd`] at the step of the device step counter `counter [1]`: `counter[0] + 1`.
pub fn dropout_bwd_at(
    dx: &mut [f32],
    dy: &[f32],
    p: f32,
    seed: u64,
    counter: &[u32],
) -> Result<()> {
    dropout_bwd(dx, dy, p, seed, step_of("dropout_bwd", counter)?)
}

fn apply(out: &mut [f32], inp: &[f32], p: f32, seed: u64, step: u64) -> Result<()> {
    let (threshold, scale) = dropout_threshold(p)?;
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (out, inp))| {
            for (j, (o, &v)) in out.iter_mut().zip(inp).enumerate() {
                let index = (c * CHUNK + j) as u64;
                *o = if dropout_hash(seed, step, index) >> 8 >= threshold {
                    v * scale
                } else {
                    0.0
                };
            }
        });
    Ok(())
}
