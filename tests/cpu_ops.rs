//! CPU twins of pooling, the linear layer, the loss, dropout and Adam: exact values at kinks and ties,
//! finite differences elsewhere, and their error cases.

mod common;

use approx::assert_abs_diff_eq;
use common::gradcheck::{dot, gradcheck};
use common::{assert_bits_eq, assert_close, uniform};
use inception_cuda::cpu;
use inception_cuda::shape::{AdamStep, LinearShape, PoolShape};
use inception_cuda::Error;

/// A plane past the kernels' 32-bit index (or whose cell count overflows) is an error naming the op, even in
/// an empty batch; nothing is allocated for it.
#[test]
fn maxpool_refuses_planes_past_a_32_bit_index() {
    for (h, w) in [(1 << 16, 1 << 15), (1 << 16, 1 << 16), (usize::MAX / 2, 3)] {
        let s = PoolShape { n: 0, c: 1, h, w };
        let e = cpu::maxpool3x3s1_fwd(&mut [], &[], &s).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidShape {
                    op: "maxpool3x3s1_fwd",
                    ..
                }
            ),
            "{e}"
        );
        let e = cpu::maxpool3x3s1_bwd(&mut [], &[], &[], &s, false).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidShape {
                    op: "maxpool3x3s1_bwd",
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn maxpool_ties_go_to_the_first_cell_and_padding_never_wins() {
    // A 3×3 plane of equal negative values: padding (which would be 0 if it counted) never wins, and every
    // window's winner is its first in-bounds cell in row-major order.
    let s = PoolShape {
        n: 1,
        c: 1,
        h: 3,
        w: 3,
    };
    let x = vec![-5.0f32; 9];
    let mut y = vec![0.0; 9];
    cpu::maxpool3x3s1_fwd(&mut y, &x, &s).unwrap();
    assert_eq!(y, vec![-5.0; 9]);
    // Winners: (0,0)→0 (0,1)→0 (0,2)→1 / (1,0)→0 (1,1)→0 (1,2)→1 / (2,0)→3 (2,1)→3 (2,2)→4.
    let dy: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let mut dx = vec![0.0; 9];
    cpu::maxpool3x3s1_bwd(&mut dx, &dy, &x, &s, false).unwrap();
    assert_eq!(
        dx,
        vec![
            1.0 + 2.0 + 4.0 + 5.0,
            3.0 + 6.0,
            0.0,
            7.0 + 8.0,
            9.0,
            0.0,
            0.0,
            0.0,
            0.0
        ]
    );
    // accumulate adds to what dx held.
    let mut acc = vec![1.0; 9];
    cpu::maxpool3x3s1_bwd(&mut acc, &dy, &x, &s, true).unwrap();
    assert_eq!(acc, dx.iter().map(|v| v + 1.0).collect::<Vec<_>>());
}

#[test]
fn maxpool_nan_wins_and_the_last_nan_takes_the_gradient() {
    let s = PoolShape {
        n: 1,
        c: 1,
        h: 1,
        w: 3,
    };
    let x = [1.0, f32::NAN, f32::NAN];
    let mut y = [0.0; 3];
    cpu::maxpool3x3s1_fwd(&mut y, &x, &s).unwrap();
    assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
    let mut dx = [0.0; 3];
    cpu::maxpool3x3s1_bwd(&mut dx, &[1.0, 10.0, 100.0], &x, &s, false).unwrap();
    // Windows: {0,1} → cell 1; {0,1,2} → cell 2 (the later NaN); {1,2} → cell 2.
    assert_eq!(dx, [0.0, 1.0, 110.0]);
}

#[test]
fn maxpool_matches_reference_and_finite_differences() {
    for (n, c, h, w) in [(1, 2, 5, 5), (3, 1, 7, 7), (2, 2, 4, 6)] {
        let s = PoolShape { n, c, h, w };
        let x = uniform(1, n * c * h * w);
        let mut y = vec![0.0; x.len()];
        cpu::maxpool3x3s1_fwd(&mut y, &x, &s).unwrap();
        // Reference: plain max over the in-bounds window.
        for p in 0..n * c {
            for yy in 0..h {
                for xx in 0..w {
                    let mut m = f32::NEG_INFINITY;
                    for wy in yy.saturating_sub(1)..(yy + 2).min(h) {
                        for wx in xx.saturating_sub(1)..(xx + 2).min(w) {
                            m = m.max(x[p * h * w + wy * w + wx]);
                        }
                    }
                    assert_eq!(y[p * h * w + yy * w + xx], m);
                }
            }
        }
        let r = uniform(2, x.len());
        let mut dx = vec![0.0; x.len()];
        cpu::maxpool3x3s1_bwd(&mut dx, &r, &x, &s, false).unwrap();
        // The kink pattern is which cell each window picked (inputs are distinct, so a value names its cell);
        // coordinates whose perturbation changes a winner are skipped.
        let loss = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            cpu::maxpool3x3s1_fwd(&mut y, x, &s).unwrap();
            let winners = y.iter().flat_map(|v| {
                (x.iter().position(|u| u == v).unwrap_or(usize::MAX) as u32).to_le_bytes()
            });
            (dot(&y, &r), winners.collect::<Vec<u8>>())
        };
        gradcheck(
            &format!("maxpool3x3s1_bwd {s:?}"),
            &x,
            &dx,
            1e-3,
            1e-3,
            1e-3,
            loss,
        );
    }
}

#[test]
fn linear_backward_passes_match_finite_differences() {
    let s = LinearShape::new(3, 7, 5);
    let (x, w, b, r) = (
        uniform(1, 21),
        uniform(2, 35),
        uniform(3, 5),
        uniform(4, 15),
    );
    let loss = |x: &[f32], w: &[f32], b: &[f32]| {
        let mut y = vec![0.0; 15];
        cpu::linear_fwd(&mut y, x, w, b, &s).unwrap();
        (dot(&y, &r), Vec::new())
    };
    // Forward against a direct reference.
    let mut y = vec![0.0; 15];
    cpu::linear_fwd(&mut y, &x, &w, &b, &s).unwrap();
    let want: Vec<f32> = (0..15)
        .map(|i| {
            b[i % 5]
                + (0..7)
                    .map(|k| x[i / 5 * 7 + k] * w[i % 5 * 7 + k])
                    .sum::<f32>()
        })
        .collect();
    assert_close("linear_fwd", &y, &want, 1e-5, 1e-5);
    let (mut dx, mut dw, mut db) = (vec![0.0; 21], vec![0.0; 35], vec![0.0; 5]);
    cpu::linear_dgrad(&mut dx, &r, &w, &s).unwrap();
    cpu::linear_wgrad(&mut dw, &r, &x, &s).unwrap();
    cpu::linear_bgrad(&mut db, &r, &s).unwrap();
    gradcheck("linear_dgrad", &x, &dx, 1e-2, 1e-3, 1e-3, |x| {
        loss(x, &w, &b)
    });
    gradcheck("linear_wgrad", &w, &dw, 1e-2, 1e-3, 1e-3, |w| {
        loss(&x, w, &b)
    });
    gradcheck("linear_bgrad", &b, &db, 1e-2, 1e-3, 1e-3, |b| {
        loss(&x, &w, b)
    });
    let err = cpu::linear_fwd(&mut y, &x, &w[..34], &b, &s).unwrap_err();
    assert_eq!(
        err.to_string(),
        "linear_fwd: buffer w has 34 elements, expected 35"
    );
}

#[test]
fn softmax_xent_values_gradient_and_errors() {
    // Uniform logits: loss ln(C); gradient (1/C - onehot)/m.
    let (mut loss, mut d) = ([0.0f32], vec![0.0f32; 8]);
    cpu::softmax_xent(&mut loss, &mut d, &[3.0; 8], &[1, 3], 4).unwrap();
    assert_abs_diff_eq!(loss[0], 4f32.ln(), epsilon = 1e-6);
    assert_close(
        "dlogits",
        &d,
        &[0.125, -0.375, 0.125, 0.125, 0.125, 0.125, 0.125, -0.375],
        1e-7,
        0.0,
    );
    // Large logits stay finite (max-subtracted).
    cpu::softmax_xent(
        &mut loss,
        &mut d,
        &[1e4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e4],
        &[0, 3],
        4,
    )
    .unwrap();
    assert!(
        loss[0].abs() < 1e-6 && d.iter().all(|v| v.is_finite()),
        "{loss:?} {d:?}"
    );
    // Finite differences of the mean loss.
    let (m, c) = (3, 10);
    let logits: Vec<f32> = uniform(5, m * c).iter().map(|v| 3.0 * v).collect();
    let labels = [7u32, 0, 9];
    let mut g = vec![0.0; m * c];
    cpu::softmax_xent(&mut loss, &mut g, &logits, &labels, c).unwrap();
    gradcheck("softmax_xent", &logits, &g, 1e-2, 1e-4, 1e-2, |l| {
        let (mut loss, mut d) = ([0.0f32], vec![0.0; m * c]);
        cpu::softmax_xent(&mut loss, &mut d, l, &labels, c).unwrap();
        (loss[0] as f64, Vec::new())
    });
    let err = cpu::softmax_xent(&mut loss, &mut g, &logits, &[7, 10, 0], c).unwrap_err();
    assert!(
        matches!(&err, Error::OutOfRange { what, .. } if what == "labels[1]"),
        "{err:?}"
    );
    cpu::softmax_xent(&mut loss, &mut g, &[f32::NAN; 30], &labels, c).unwrap();
    assert!(loss[0].is_nan(), "NaN logits must give a NaN loss");
}

#[test]
fn dropout_masks_are_reproducible_and_scaled() {
    let n = 100_000;
    let x = vec![1.0f32; n];
    let mut y = vec![0.0; n];
    cpu::dropout_fwd(&mut y, &x, 0.5, 42, 7).unwrap();
    let kept = y.iter().filter(|&&v| v != 0.0).count();
    assert!(
        (kept as f64 / n as f64 - 0.5).abs() < 0.01,
        "kept {kept} of {n}"
    );
    assert!(
        y.iter().all(|&v| v == 0.0 || v == 2.0),
        "kept values are scaled by 1/(1-p)"
    );
    // Backward at the same (seed, step) passes exactly the kept positions, with the same scale.
    let mut dx = vec![0.0; n];
    cpu::dropout_bwd(&mut dx, &x, 0.5, 42, 7).unwrap();
    assert_bits_eq("dropout bwd mask", &dx, &y);
    // Another step or seed gives another mask; p = 0 is the identity; p = 1 drops everything.
    let mut other = vec![0.0; n];
    cpu::dropout_fwd(&mut other, &x, 0.5, 42, 8).unwrap();
    let same = y.iter().zip(&other).filter(|(a, b)| a == b).count();
    assert!(
        (same as f64 / n as f64 - 0.5).abs() < 0.01,
        "masks of steps 7 and 8 agree on {same} of {n}"
    );
    cpu::dropout_fwd(&mut other, &x, 0.0, 42, 7).unwrap();
    assert_eq!(other, x);
    cpu::dropout_fwd(&mut other, &x, 1.0, 42, 7).unwrap();
    assert!(other.iter().all(|&v| v == 0.0));
    assert!(cpu::dropout_fwd(&mut other, &x, 1.5, 42, 7).is_err());
    assert!(cpu::dropout_fwd(&mut other, &x, f32::NAN, 42, 7).is_err());
}

/// Adam against an f64 transcription of PyTorch's update, over three steps.
#[test]
fn adam_matches_pytorch_formulation() {
    let n = 1000;
    let mut p = uniform(1, n);
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (mut p64, mut m64, mut v64): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        p.iter().map(|&x| x as f64).collect(),
        vec![0.0; n],
        vec![0.0; n],
    );
    for t in 1..=3u64 {
        let g = uniform(10 + t, n);
        let step = AdamStep::new(1e-3, t);
        cpu::adam_step(&mut p, &mut m, &mut v, &g, &step).unwrap();
        let (bc1, bc2) = (1.0 - 0.9f64.powi(t as i32), 1.0 - 0.999f64.powi(t as i32));
        for i in 0..n {
            let gi = g[i] as f64;
            m64[i] = 0.9 * m64[i] + 0.1 * gi;
            v64[i] = 0.999 * v64[i] + 0.001 * gi * gi;
            p64[i] -= 1e-3 / bc1 * m64[i] / (v64[i].sqrt() / bc2.sqrt() + 1e-8);
        }
    }
    let p64: Vec<f32> = p64.iter().map(|&x| x as f32).collect();
    assert_close("adam p after 3 steps", &p, &p64, 1e-6, 1e-5);
    let err =
        cpu::adam_step(&mut p, &mut m, &mut v, &[0.0; 3], &AdamStep::new(1e-3, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeMismatch {
                op: "adam_step",
                what: "g",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(cpu::adam_step(
        &mut p,
        &mut m,
        &mut v,
        &vec![0.0; n],
        &AdamStep::new(1e-3, 0)
    )
    .is_err());
}

/// fc1-like widths take the split paths (k_in split in the forward, column blocks in dgrad): same results as
/// a direct f64 reference, and the same bits with 1 and 3 threads.
#[test]
fn linear_split_paths_match_reference_and_are_thread_independent() {
    let s = LinearShape::new(3, 10_000, 5);
    let (x, w, b, dy) = (
        uniform(1, 30_000),
        uniform(2, 50_000),
        uniform(3, 5),
        uniform(4, 15),
    );
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (mut y, mut dx) = (vec![0.0; 15], vec![0.0; 30_000]);
            cpu::linear_fwd(&mut y, &x, &w, &b, &s).unwrap();
            cpu::linear_dgrad(&mut dx, &dy, &w, &s).unwrap();
            (y, dx)
        })
    };
    let (one, three) = (run(1), run(3));
    assert_bits_eq("linear_fwd 1 vs 3 threads", &one.0, &three.0);
    assert_bits_eq("linear_dgrad 1 vs 3 threads", &one.1, &three.1);
    let y_ref: Vec<f32> = (0..15)
        .map(|i| {
            (b[i % 5] as f64
                + (0..10_000)
                    .map(|k| x[i / 5 * 10_000 + k] as f64 * w[i % 5 * 10_000 + k] as f64)
                    .sum::<f64>()) as f32
        })
        .collect();
    assert_close("linear_fwd split-K", &one.0, &y_ref, 1e-4, 1e-4);
    let dx_ref: Vec<f32> = (0..30_000)
        .map(|i| {
            (0..5)
                .map(|j| dy[i / 10_000 * 5 + j] as f64 * w[j * 10_000 + i % 10_000] as f64)
                .sum::<f64>() as f32
        })
        .collect();
    assert_close("linear_dgrad blocks", &one.1, &dx_ref, 1e-5, 1e-5);
}

/// The CPU twin's one-pass backward + Adam (column strips) equals its dgrad then wgrad + Adam bit for bit, in
/// both precisions.
#[test]
fn cpu_linear_bwd_adam_is_dgrad_then_wgrad_adam() {
    use inception_cuda::shape::LinearShape;
    let mut shapes = common::kernels::bwd_adam_shapes();
    shapes.push(LinearShape::new(3, 2100, 11)); // three strips, the last one partial
    common::kernels::assert_bwd_adam("cpu", &inception_cuda::cpu::CpuBackend, &shapes);
}
