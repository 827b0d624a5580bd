//! CPU twins of the convolutions: forward against a direct-loop reference written here, every backward
//! against finite differences, the fused reduce conv against the composition of the separate convs, and
//! determinism of the weight-gradient reductions across thread counts.

mod common;

use common::gradcheck::{dot, gradcheck, mask};
use common::{assert_bits_eq, assert_close, uniform};
use inception_cuda::cpu;
use inception_cuda::shape::{ConvShape, ReduceConvShape};

/// Direct 'same' convolution, no bias: `[n, c_out, h, w]`. Independent of the crate's im2col path.
fn conv_reference(x: &[f32], w: &[f32], s: &ConvShape) -> Vec<f32> {
    let (h, wd, k, p) = (s.h as isize, s.w as isize, s.k as isize, (s.k / 2) as isize);
    let mut y = vec![0.0f32; s.n * s.c_out * s.h * s.w];
    for n in 0..s.n {
        for co in 0..s.c_out {
            for yy in 0..h {
                for xx in 0..wd {
                    let mut acc = 0.0f64;
                    for ci in 0..s.c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (sy, sx) = (yy + ky - p, xx + kx - p);
                                if sy >= 0 && sy < h && sx >= 0 && sx < wd {
                                    let xv = x[((n * s.c_in + ci) * s.h + sy as usize) * s.w
                                        + sx as usize];
                                    let wv = w[((co * s.c_in + ci) * s.k + ky as usize) * s.k
                                        + kx as usize];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                    }
                    y[((n * s.c_out + co) * s.h + yy as usize) * s.w + xx as usize] = acc as f32;
                }
            }
        }
    }
    y
}

/// The channel slice `[c_offset, c_offset + c_out)` of a `[n, c_total, h, w]` buffer, as `[n, c_out, h, w]`.
fn slice_of(y: &[f32], s: &ConvShape) -> Vec<f32> {
    let hw = s.h * s.w;
    (0..s.n)
        .flat_map(|n| {
            y[(n * s.c_total + s.c_offset) * hw..(n * s.c_total + s.c_offset + s.c_out) * hw]
                .to_vec()
        })
        .collect()
}

fn shapes() -> Vec<ConvShape> {
    let mut v = Vec::new();
    for (n, hw) in [(1, 5), (3, 7)] {
        for k in [1, 3, 5] {
            v.push(ConvShape::new(n, 3, 4, hw, hw, k).into_slice(9, 2));
        }
    }
    v.push(ConvShape::new(2, 2, 3, 4, 6, 3)); // non-square, no slice
    v
}

#[test]
fn conv_fwd_matches_direct_reference_and_writes_only_its_slice() {
    for s in shapes() {
        let x = uniform(1, s.n * s.c_in * s.h * s.w);
        let w = uniform(2, s.c_out * s.c_in * s.k * s.k);
        let b = uniform(3, s.c_out);
        let mut y = vec![f32::from_bits(0x7fc0_beef); s.n * s.c_total * s.h * s.w];
        cpu::conv_fwd(&mut y, &x, &w, &b, &s, false).unwrap();
        let hw = s.h * s.w;
        let want: Vec<f32> = conv_reference(&x, &w, &s)
            .chunks(hw)
            .enumerate()
            .flat_map(|(i, row)| row.iter().map(|v| v + b[i % s.c_out]).collect::<Vec<_>>())
            .collect();
        assert_close(
            &format!("conv_fwd {s:?}"),
            &slice_of(&y, &s),
            &want,
            1e-5,
            1e-5,
        );
        for n in 0..s.n {
            for c in (0..s.c_total).filter(|c| !(s.c_offset..s.c_offset + s.c_out).contains(c)) {
                let plane = &y[(n * s.c_total + c) * hw..(n * s.c_total + c + 1) * hw];
                assert!(
                    plane.iter().all(|v| v.to_bits() == 0x7fc0_beef),
                    "{s:?}: channel {c} outside the slice was written"
                );
            }
        }
        // The ReLU epilogue is exactly relu of the plain output.
        let mut y_relu = y.clone();
        cpu::conv_fwd(&mut y_relu, &x, &w, &b, &s, true).unwrap();
        let relu: Vec<f32> = slice_of(&y, &s)
            .iter()
            .map(|&v| if v > 0.0 { v } else { 0.0 })
            .collect();
        assert_bits_eq("conv_fwd relu epilogue", &slice_of(&y_relu, &s), &relu);
    }
}

#[test]
fn conv_backward_passes_match_finite_differences() {
    for s in shapes() {
        let (x, w, b) = (
            uniform(4, s.n * s.c_in * s.h * s.w),
            uniform(5, s.c_out * s.c_in * s.k * s.k),
            uniform(6, s.c_out),
        );
        let r = uniform(7, s.n * s.c_total * s.h * s.w); // the gradient dy, also outside the slice
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut y = vec![0.0; r.len()];
            cpu::conv_fwd(&mut y, x, w, b, &s, false).unwrap();
            (dot(&slice_of(&y, &s), &slice_of(&r, &s)), Vec::new())
        };
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; b.len()];
        cpu::conv_dgrad(&mut dx, &r, None, &w, &s, false).unwrap();
        wgrad_bgrad(&mut dw, &mut db, &r, &x, &s);
        gradcheck(
            &format!("conv_dgrad {s:?}"),
            &x,
            &dx,
            1e-2,
            1e-3,
            1e-3,
            |x| loss(x, &w, &b),
        );
        gradcheck(
            &format!("conv_wgrad {s:?}"),
            &w,
            &dw,
            1e-2,
            1e-3,
            1e-3,
            |w| loss(&x, w, &b),
        );
        gradcheck(
            &format!("conv_wgrad (bias) {s:?}"),
            &b,
            &db,
            1e-2,
            1e-3,
            1e-3,
            |b| loss(&x, &w, b),
        );
        // accumulate adds the same result to what dx held.
        let mut acc = uniform(8, x.len());
        let before = acc.clone();
        cpu::conv_dgrad(&mut acc, &r, None, &w, &s, true).unwrap();
        let want: Vec<f32> = before.iter().zip(&dx).map(|(a, d)| a + d).collect();
        assert_close("conv_dgrad accumulate", &acc, &want, 1e-6, 1e-6);
    }
}

fn reduce_shapes() -> Vec<ReduceConvShape> {
    let mut v = Vec::new();
    for (n, hw) in [(1, 5), (3, 7)] {
        for k in [3, 5] {
            v.push(ReduceConvShape {
                n,
                c_in: 3,
                c_mid: 2,
                c_out: 4,
                h: hw,
                w: hw,
                k,
                c_total: 10,
                c_offset: 5,
                precision: inception_cuda::shape::Precision::Fp32,
            });
        }
    }
    v.push(ReduceConvShape {
        n: 2,
        c_in: 1,
        c_mid: 3,
        c_out: 2,
        h: 4,
        w: 6,
        k: 5,
        c_total: 2,
        c_offset: 0,
        precision: inception_cuda::shape::Precision::Fp32,
    });
    v
}

struct Params {
    x: Vec<f32>,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

fn params(s: &ReduceConvShape, seed: u64) -> Params {
    Params {
        x: uniform(seed, s.n * s.c_in * s.h * s.w),
        w1: uniform(seed + 1, s.c_mid * s.c_in),
        // Positive reduce biases keep most of the reduced map away from the ReLU kink.
        b1: uniform(seed + 2, s.c_mid)
            .iter()
            .map(|v| v.abs() + 0.5)
            .collect(),
        w2: uniform(seed + 3, s.c_out * s.c_mid * s.k * s.k),
        b2: uniform(seed + 4, s.c_out),
    }
}

impl Params {
    /// The parameter block `[w1 | b1 | w2 | b2]` the fused twins take.
    fn block(&self) -> Vec<f32> {
        [&self.w1[..], &self.b1, &self.w2, &self.b2].concat()
    }
}

fn fused_fwd(p: &Params, s: &ReduceConvShape) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![0.0; s.n * s.c_total * s.h * s.w];
    let mut mid = vec![0.0; s.n * s.c_mid * s.h * s.w];
    cpu::reduce_conv_fwd(&mut y, &mut mid, &p.x, &p.block(), s).unwrap();
    (y, mid)
}

/// The fused backward's `(dx, dw1, db1, dw2, db2)`, overwriting dx.
fn fused_bwd(p: &Params, s: &ReduceConvShape, dy: &[f32], mid: &[f32]) -> [Vec<f32>; 5] {
    let block = p.block();
    let (mut dx, mut dblock, mut scratch) = (
        vec![0.0; p.x.len()],
        vec![0.0; block.len()],
        vec![0.0; mid.len()],
    );
    cpu::reduce_conv_bwd(
        &mut dx,
        &mut dblock,
        &mut scratch,
        dy,
        None,
        &p.x,
        mid,
        &block,
        s,
        false,
    )
    .unwrap();
    let (w1, b1, w2) = (p.w1.len(), p.b1.len(), p.w2.len());
    let mut rest = dblock;
    let db2 = rest.split_off(w1 + b1 + w2);
    let dw2 = rest.split_off(w1 + b1);
    let db1 = rest.split_off(w1);
    [dx, rest, db1, dw2, db2]
}

/// In both precisions: in TF32 the composed conv twins round their operands (the reduced map where it feeds
/// the k×k, `dpre` where it feeds dw1 and dx) where the fused twin does, so the two still agree.
#[test]
fn fused_reduce_conv_matches_the_composed_convs() {
    use inception_cuda::shape::Precision;
    let shapes = reduce_shapes().into_iter();
    for s in shapes.flat_map(|s| Precision::ALL.map(|p| s.with_precision(p))) {
        let p = params(&s, 10);
        let (y, mid) = fused_fwd(&p, &s);
        // Composition: 1×1 conv + ReLU, then k×k conv + ReLU into the slice.
        let mut mid_ref = vec![0.0; mid.len()];
        cpu::conv_fwd(&mut mid_ref, &p.x, &p.w1, &p.b1, &s.reduce(), true).unwrap();
        let mut y_ref = vec![0.0; y.len()];
        cpu::conv_fwd(&mut y_ref, &mid_ref, &p.w2, &p.b2, &s.conv(), true).unwrap();
        assert_close(&format!("fused mid {s:?}"), &mid, &mid_ref, 1e-5, 1e-5);
        assert_close(
            &format!("fused y {s:?}"),
            &slice_of(&y, &s.conv()),
            &slice_of(&y_ref, &s.conv()),
            1e-5,
            1e-5,
        );

        // Backward from dy = gradient before the module's ReLU, composed the same way.
        let dy = uniform(20, y.len());
        let g = fused_bwd(&p, &s, &dy, &mid);
        let (mut dw2, mut db2, mut dmid) = (
            vec![0.0; p.w2.len()],
            vec![0.0; s.c_out],
            vec![0.0; mid.len()],
        );
        wgrad_bgrad(&mut dw2, &mut db2, &dy, &mid_ref, &s.conv());
        cpu::conv_dgrad(&mut dmid, &dy, None, &p.w2, &s.conv(), false).unwrap();
        let mut dpre = vec![0.0; mid.len()];
        cpu::relu_bwd(&mut dpre, &dmid, &mid_ref).unwrap();
        let (mut dw1, mut db1, mut dx) = (
            vec![0.0; p.w1.len()],
            vec![0.0; s.c_mid],
            vec![0.0; p.x.len()],
        );
        wgrad_bgrad(&mut dw1, &mut db1, &dpre, &p.x, &s.reduce());
        cpu::conv_dgrad(&mut dx, &dpre, None, &p.w1, &s.reduce(), false).unwrap();
        for (what, got, want) in [
            ("dx", &g[0], &dx),
            ("dw1", &g[1], &dw1),
            ("db1", &g[2], &db1),
            ("dw2", &g[3], &dw2),
            ("db2", &g[4], &db2),
        ] {
            assert_close(&format!("fused {what} {s:?}"), got, want, 1e-5, 1e-5);
        }
    }
}

#[test]
fn fused_reduce_conv_backward_matches_finite_differences() {
    for s in reduce_shapes() {
        let p = params(&s, 30);
        let (y, mid) = fused_fwd(&p, &s);
        let r = uniform(40, y.len());
        // Only the slice counts: R outside it must not leak into any gradient.
        let loss = |q: &Params| {
            let (y, mid) = fused_fwd(q, &s);
            let ys = slice_of(&y, &s.conv());
            let mut kinks = mask(&ys);
            kinks.extend(mask(&mid));
            (dot(&ys, &slice_of(&r, &s.conv())), kinks)
        };
        // dy before the module's ReLU = R where y > 0.
        let mut dy = vec![0.0; y.len()];
        cpu::relu_bwd(&mut dy, &r, &y).unwrap();
        let g = fused_bwd(&p, &s, &dy, &mid);
        let with = |f: &dyn Fn(&mut Params)| {
            let mut q = Params {
                x: p.x.clone(),
                w1: p.w1.clone(),
                b1: p.b1.clone(),
                w2: p.w2.clone(),
                b2: p.b2.clone(),
            };
            f(&mut q);
            loss(&q)
        };
        let h = 1e-3;
        gradcheck(
            &format!("fused dx {s:?}"),
            &p.x,
            &g[0],
            h,
            2e-3,
            2e-3,
            |v| with(&|q| q.x = v.to_vec()),
        );
        gradcheck(
            &format!("fused dw1 {s:?}"),
            &p.w1,
            &g[1],
            h,
            2e-3,
            2e-3,
            |v| with(&|q| q.w1 = v.to_vec()),
        );
        gradcheck(
            &format!("fused db1 {s:?}"),
            &p.b1,
            &g[2],
            h,
            2e-3,
            2e-3,
            |v| with(&|q| q.b1 = v.to_vec()),
        );
        gradcheck(
            &format!("fused dw2 {s:?}"),
            &p.w2,
            &g[3],
            h,
            2e-3,
            2e-3,
            |v| with(&|q| q.w2 = v.to_vec()),
        );
        gradcheck(
            &format!("fused db2 {s:?}"),
            &p.b2,
            &g[4],
            h,
            2e-3,
            2e-3,
            |v| with(&|q| q.b2 = v.to_vec()),
        );
    }
}

/// Weight-gradient reductions sum per-image partials in image order: 1 and 3 threads give the same bits.
#[test]
fn weight_gradients_do_not_depend_on_the_thread_count() {
    let s = ConvShape::new(5, 4, 6, 7, 7, 3);
    let x = uniform(50, s.n * s.c_in * 49);
    let dy = uniform(51, s.n * s.c_out * 49);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (mut dw, mut db) = (vec![0.0; s.c_out * s.c_in * 9], vec![0.0; s.c_out]);
            wgrad_bgrad(&mut dw, &mut db, &dy, &x, &s);
            (dw, db)
        })
    };
    let (one, three) = (run(1), run(3));
    assert_bits_eq("conv_wgrad 1 vs 3 threads", &one.0, &three.0);
    assert_bits_eq("conv_wgrad (bias) 1 vs 3 threads", &one.1, &three.1);
}

#[test]
fn conv_twins_reject_bad_shapes_and_buffers() {
    let s = ConvShape::new(1, 2, 3, 4, 4, 3);
    let (x, w, b) = (vec![0.0; 32], vec![0.0; 54], vec![0.0; 3]);
    let mut y = vec![0.0; 48];
    let err = cpu::conv_fwd(&mut y, &x[..31], &w, &b, &s, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "conv_fwd: buffer x has 31 elements, expected 32"
    );
    let err = cpu::conv_fwd(&mut y, &x, &w, &b, &ConvShape { k: 2, ..s }, false).unwrap_err();
    assert!(err.to_string().contains("kernel size 2"), "{err}");
    let err = cpu::conv_fwd(&mut y, &x, &w, &b, &s.into_slice(4, 2), false).unwrap_err();
    assert!(
        err.to_string()
            .contains("channel slice 2..5 does not fit in 4"),
        "{err}"
    );
    let r = ReduceConvShape {
        n: 1,
        c_in: 2,
        c_mid: 2,
        c_out: 3,
        h: 4,
        w: 4,
        k: 1,
        c_total: 3,
        c_offset: 0,
        precision: inception_cuda::shape::Precision::Fp32,
    };
    let mut mid = vec![0.0; 32];
    let block = [&[0.0; 4][..], &[0.0; 2], &[0.0; 6], &b].concat();
    let err = cpu::reduce_conv_fwd(&mut y, &mut mid, &x, &block, &r).unwrap_err();
    assert!(
        err.to_string().contains("fused reduce conv kernel size 1"),
        "{err}"
    );
}

/// `conv_wgrad`'s `[dw | db]` into `dw` and `db`.
fn wgrad_bgrad(dw: &mut [f32], db: &mut [f32], dy: &[f32], x: &[f32], s: &ConvShape) {
    let mut dwdb = vec![0.0; dw.len() + db.len()];
    cpu::conv_wgrad(&mut dwdb, dy, None, x, s).unwrap();
    dw.copy_from_slice(&dwdb[..dw.len()]);
    db.copy_from_slice(&dwdb[dw.len()..]);
}
