//! Kernel sequences run on any backend (CPU twins, emulation, CUDA), outputs copied to the host, so each
//! backend's results can be compared with the twins'.

use inception_cuda::shape::{AdamStep, ConvShape, PoolShape, Precision, ReduceConvShape};
use inception_cuda::Backend;

/// Max pooling forward, backward and accumulating backward on backend `b`, outputs on the host.
pub fn pool_on<B: Backend>(
    b: &B,
    s: &PoolShape,
    x: &[f32],
    dy: &[f32],
    dx0: &[f32],
) -> [Vec<f32>; 3] {
    let len = x.len();
    let (xb, dyb) = (b.upload(x).unwrap(), b.upload(dy).unwrap());
    let (xv, dyv) = (b.view(&xb, 0..len).unwrap(), b.view(&dyb, 0..len).unwrap());
    let mut y = b.upload(&vec![f32::NAN; len]).unwrap();
    b.maxpool3x3s1_fwd(&mut b.view_mut(&mut y, 0..len).unwrap(), &xv, s)
        .unwrap();
    let mut dx = b.upload(&vec![f32::NAN; len]).unwrap();
    b.maxpool3x3s1_bwd(
        &mut b.view_mut(&mut dx, 0..len).unwrap(),
        &dyv,
        &xv,
        s,
        false,
    )
    .unwrap();
    let mut acc = b.upload(dx0).unwrap();
    b.maxpool3x3s1_bwd(
        &mut b.view_mut(&mut acc, 0..len).unwrap(),
        &dyv,
        &xv,
        s,
        true,
    )
    .unwrap();
    [
        b.to_host(&y).unwrap(),
        b.to_host(&dx).unwrap(),
        b.to_host(&acc).unwrap(),
    ]
}

/// Dropout (three probabilities, forward and backward), three Adam steps (p, m, v) and softmax_xent
/// (loss, dlogits) on backend `b`, outputs on the host in that order.
pub fn train_ops_on<B: Backend>(
    b: &B,
    x: &[f32],
    g: &[f32],
    logits: &[f32],
    labels: &[u32],
) -> Vec<Vec<f32>> {
    let n = x.len();
    let (xb, gb) = (b.upload(x).unwrap(), b.upload(g).unwrap());
    let (xv, gv) = (b.view(&xb, 0..n).unwrap(), b.view(&gb, 0..n).unwrap());
    let mut out = Vec::new();
    for (p, step) in [(0.5f32, 3u64), (0.0, 1), (0.9, 7)] {
        let mut y = b.upload(&vec![f32::NAN; n]).unwrap();
        b.dropout_fwd(&mut b.view_mut(&mut y, 0..n).unwrap(), &xv, p, 42, step)
            .unwrap();
        out.push(b.to_host(&y).unwrap());
        b.dropout_bwd(&mut b.view_mut(&mut y, 0..n).unwrap(), &gv, p, 42, step)
            .unwrap();
        out.push(b.to_host(&y).unwrap());
    }
    let (mut p, mut m, mut v) = (
        b.upload(x).unwrap(),
        b.alloc_zeros(n).unwrap(),
        b.alloc_zeros(n).unwrap(),
    );
    for t in 1..=3 {
        b.adam_step(
            &mut b.view_mut(&mut p, 0..n).unwrap(),
            &mut b.view_mut(&mut m, 0..n).unwrap(),
            &mut b.view_mut(&mut v, 0..n).unwrap(),
            &gv,
            &AdamStep::new(1e-3, t),
        )
        .unwrap();
    }
    out.extend([
        b.to_host(&p).unwrap(),
        b.to_host(&m).unwrap(),
        b.to_host(&v).unwrap(),
    ]);
    let (rows, classes) = (labels.len(), logits.len() / labels.len());
    let lb = b.upload(logits).unwrap();
    let labels = b.upload_labels(labels).unwrap();
    let (mut loss, mut d) = (
        b.alloc_zeros(1).unwrap(),
        b.alloc_zeros(logits.len()).unwrap(),
    );
    b.softmax_xent(
        &mut b.view_mut(&mut loss, 0..1).unwrap(),
        &mut b.view_mut(&mut d, 0..rows * classes).unwrap(),
        &b.view(&lb, 0..rows * classes).unwrap(),
        &labels,
        classes,
    )
    .unwrap();
    out.extend([b.to_host(&loss).unwrap(), b.to_host(&d).unwrap()]);
    out
}

/// Value the outputs start from: channels outside a branch's slice must keep it.
pub const SENTINEL: f32 = 7.0;

/// conv_fwd (with and without ReLU), conv_dgrad (overwriting, accumulating), conv_wgrad (dw, then db) on
/// backend `b`, outputs on the host in that order.
pub fn conv_on<B: Backend>(
    b: &B,
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    dy: &[f32],
    dx0: &[f32],
) -> Vec<Vec<f32>> {
    let up = |v: &[f32]| b.upload(v).unwrap();
    let (xb, wb, bb, dyb) = (up(x), up(w), up(bias), up(dy));
    let (xv, wv, bv, dyv) = (
        b.view(&xb, 0..x.len()).unwrap(),
        b.view(&wb, 0..w.len()).unwrap(),
        b.view(&bb, 0..bias.len()).unwrap(),
        b.view(&dyb, 0..dy.len()).unwrap(),
    );
    let mut out = Vec::new();
    for relu in [true, false] {
        let mut y = up(&vec![SENTINEL; dy.len()]);
        b.conv_fwd(
            &mut b.view_mut(&mut y, 0..dy.len()).unwrap(),
            &xv,
            &wv,
            &bv,
            s,
            relu,
        )
        .unwrap();
        out.push(b.to_host(&y).unwrap());
    }
    for accumulate in [false, true] {
        let mut dx = up(dx0);
        b.conv_dgrad(
            &mut b.view_mut(&mut dx, 0..x.len()).unwrap(),
            &dyv,
            None,
            &wv,
            s,
            accumulate,
        )
        .unwrap();
        out.push(b.to_host(&dx).unwrap());
    }
    let wl = w.len();
    let mut dwdb = up(&vec![SENTINEL; wl + bias.len()]);
    b.conv_wgrad(
        &mut b.view_mut(&mut dwdb, 0..wl + bias.len()).unwrap(),
        &dyv,
        None,
        &xv,
        s,
    )
    .unwrap();
    let dwdb = b.to_host(&dwdb).unwrap();
    out.extend([dwdb[..wl].to_vec(), dwdb[wl..].to_vec()]);
    out
}

/// The fused reduce conv forward (y, mid) and backward (dx accumulated onto `dx0`, dparams) on backend `b`.
pub fn fused_on<B: Backend>(
    b: &B,
    s: &ReduceConvShape,
    x: &[f32],
    params: &[f32],
    dy: &[f32],
    dx0: &[f32],
) -> Vec<Vec<f32>> {
    let mut out = fused_with_scratch_on(b, s, x, params, dy, dx0);
    out.truncate(4);
    out
}

/// [`fused_on`]'s outputs and the backward's scratch (dpre, the reduced map's gradient, where the GPU and
/// emulated backends leave it; the CPU twin does not use it).
fn fused_with_scratch_on<B: Backend>(
    b: &B,
    s: &ReduceConvShape,
    x: &[f32],
    params: &[f32],
    dy: &[f32],
    dx0: &[f32],
) -> Vec<Vec<f32>> {
    let up = |v: &[f32]| b.upload(v).unwrap();
    let mid_len = s.n * s.c_mid * s.h * s.w;
    let (xb, pb, dyb) = (up(x), up(params), up(dy));
    let (xv, pv, dyv) = (
        b.view(&xb, 0..x.len()).unwrap(),
        b.view(&pb, 0..params.len()).unwrap(),
        b.view(&dyb, 0..dy.len()).unwrap(),
    );
    let (mut y, mut mid) = (up(&vec![SENTINEL; dy.len()]), up(&vec![SENTINEL; mid_len]));
    b.reduce_conv_fwd(
        &mut b.view_mut(&mut y, 0..dy.len()).unwrap(),
        &mut b.view_mut(&mut mid, 0..mid_len).unwrap(),
        &xv,
        &pv,
        s,
    )
    .unwrap();
    let (mut dx, mut dp, mut scratch) = (
        up(dx0),
        up(&vec![SENTINEL; params.len()]),
        up(&vec![SENTINEL; mid_len]),
    );
    b.reduce_conv_bwd(
        &mut b.view_mut(&mut dx, 0..x.len()).unwrap(),
        &mut b.view_mut(&mut dp, 0..params.len()).unwrap(),
        &mut b.view_mut(&mut scratch, 0..mid_len).unwrap(),
        &dyv,
        None,
        &xv,
        &b.view(&mid, 0..mid_len).unwrap(),
        &pv,
        s,
        true,
    )
    .unwrap();
    vec![
        b.to_host(&y).unwrap(),
        b.to_host(&mid).unwrap(),
        b.to_host(&dx).unwrap(),
        b.to_host(&dp).unwrap(),
        b.to_host(&scratch).unwrap(),
    ]
}

/// The whole of `buf`.
fn whole<'a, B: Backend>(b: &'a B, buf: &'a B::Buf) -> B::View<'a> {
    b.view(buf, 0..b.len(buf)).unwrap()
}

/// The TF32 fused reduce conv on backend `b` checked stage by stage against the TF32 twins: `b`'s outputs
/// `[y, mid, dx, dparams, dpre]` ([`fused_on`]; dpre, the reduced map's gradient, is left in its scratch), and
/// each stage's twin fed with `b`'s own inputs to that stage: mid from x (the twin's fused forward), y from
/// `b`'s mid (conv_fwd, ReLU, into the slice), dpre from dy and `b`'s mid (conv_dgrad, kept where mid > 0),
/// dx and dparams from `b`'s dpre and mid (conv_dgrad onto dx0, conv_wgrad of both convs).
///
/// Why not the twin's whole chain: mid and dpre are f32 sums, in another order on each side, that are then
/// rounded to TF32 as operands of the next product. A sum within its last-bit difference of a TF32 rounding
/// boundary rounds one TF32 ulp (2⁻¹⁰ relative) apart on the two sides, and that moves every output it feeds
/// by more than summation order (seen under emulation: 2 of 2,695 dpre values, dx off by 6e-3 against a
/// tolerance of 2.4e-3; at module 2's size on a GPU, tens of values a run). Fed the same operands, each
/// stage is within its summation-order tolerance ([`FUSED_TF32_TOL`]).
pub fn fused_tf32_stages<B: Backend>(
    b: &B,
    s: &ReduceConvShape,
    x: &[f32],
    params: &[f32],
    dy: &[f32],
    dx0: &[f32],
) -> [Vec<Vec<f32>>; 2] {
    let got = fused_with_scratch_on(b, s, x, params, dy, dx0);
    let (mid, dpre) = (&got[1], &got[4]);
    let t = inception_cuda::cpu::CpuBackend;
    let up = |v: &[f32]| t.upload(v).unwrap();
    let [w1, b1, w2, b2] = inception_cuda::backend::reduce_conv_param_ranges(s).map(|r| &params[r]);
    let (outer, reduce) = (s.conv(), s.reduce());
    let (xb, midb, dpreb, dyb, w1b, w2b, b2b) =
        (up(x), up(mid), up(dpre), up(dy), up(w1), up(w2), up(b2));
    let mut y = up(&vec![SENTINEL; dy.len()]);
    t.conv_fwd(
        &mut t.view_mut(&mut y, 0..dy.len()).unwrap(),
        &whole(&t, &midb),
        &whole(&t, &w2b),
        &whole(&t, &b2b),
        &outer,
        true,
    )
    .unwrap();
    // conv_dgrad of `grad` by `w` onto a copy of `start`, on the twin.
    type Buf = <inception_cuda::cpu::CpuBackend as Backend>::Buf;
    let dgrad = |start: &[f32], grad: &Buf, w: &Buf, shape: &ConvShape, accumulate: bool| {
        let mut out = up(start);
        t.conv_dgrad(
            &mut t.view_mut(&mut out, 0..start.len()).unwrap(),
            &whole(&t, grad),
            None,
            &whole(&t, w),
            shape,
            accumulate,
        )
        .unwrap();
        t.to_host(&out).unwrap()
    };
    let mut dp = dgrad(&vec![0.0; mid.len()], &dyb, &w2b, &outer, false);
    for (g, &m) in dp.iter_mut().zip(mid) {
        // reduce_conv_dmid's rule: kept where mid > 0 (a NaN mid drops it)
        if m.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            *g = 0.0;
        }
    }
    let dx = dgrad(dx0, &dpreb, &w1b, &reduce, true);
    let mut dparams = Vec::with_capacity(params.len());
    for (shape, grad, input, len) in [
        (&reduce, &dpreb, &xb, w1.len() + b1.len()),
        (&outer, &dyb, &midb, w2.len() + b2.len()),
    ] {
        let mut dwdb = up(&vec![SENTINEL; len]);
        t.conv_wgrad(
            &mut t.view_mut(&mut dwdb, 0..len).unwrap(),
            &whole(&t, grad),
            None,
            &whole(&t, input),
            shape,
        )
        .unwrap();
        dparams.extend(t.to_host(&dwdb).unwrap());
    }
    // The twin's reduced map: its fused forward alone (y, into a scratch buffer, is not compared).
    let (mut y_twin, mut mid_twin) = (
        up(&vec![SENTINEL; dy.len()]),
        up(&vec![SENTINEL; mid.len()]),
    );
    t.reduce_conv_fwd(
        &mut t.view_mut(&mut y_twin, 0..dy.len()).unwrap(),
        &mut t.view_mut(&mut mid_twin, 0..mid.len()).unwrap(),
        &whole(&t, &xb),
        &t.view(&up(params), 0..params.len()).unwrap(),
        s,
    )
    .unwrap();
    let mid_twin = t.to_host(&mid_twin).unwrap();
    let want = vec![t.to_host(&y).unwrap(), mid_twin, dx, dparams, dp];
    [got, want]
}

/// Names and tolerances `(atol, rtol)` of the conv outputs of [`conv_on`] and [`fused_on`] (DESIGN.md: 1e-4 for
/// forward, 1e-3 for weight gradients; the kernels sum in another order than the twins' matrix products).
pub const CONV_TOL: [(&str, f32, f32); 6] = [
    ("fwd relu", 1e-5, 1e-4),
    ("fwd", 1e-5, 1e-4),
    ("dgrad", 1e-5, 1e-4),
    ("dgrad accumulate", 1e-5, 1e-4),
    ("wgrad", 1e-4, 1e-3),
    ("bgrad", 1e-4, 1e-3),
];
/// Tolerances of [`fused_on`]'s outputs: y, mid, dx, dparams.
pub const FUSED_TOL: [(&str, f32, f32); 4] = [
    ("y", 1e-5, 1e-4),
    ("mid", 1e-5, 1e-4),
    ("dx accumulate", 1e-4, 1e-3),
    ("dparams", 1e-4, 1e-3),
];

/// Shapes for the conv tests: odd sizes, batch 1 and 3, every kernel size, a channel slice, and the weight
/// gradient's tile and image-split edges.
pub fn conv_shapes() -> Vec<ConvShape> {
    let mut v = Vec::new();
    for (n, hw) in [(1, 5), (3, 7)] {
        for k in [1, 3, 5] {
            v.push(ConvShape::new(n, 3, 4, hw, hw, k).into_slice(9, 2));
        }
    }
    v.push(ConvShape::new(2, 2, 3, 4, 6, 3));
    // weight gradient tiling: more than 64 output channels and 64 columns (c_in·k·k = 72) in two tiles each;
    // 130 images: 3 per split, 44 splits, the last one short
    v.push(ConvShape::new(2, 8, 70, 4, 4, 3));
    v.push(ConvShape::new(130, 2, 3, 3, 3, 3));
    v
}

/// Shapes for the tensor-core (TF32) conv tests, hitting every tile edge of `conv_*_tf32` (tiles of 32
/// channels × 128 pixels or columns, the reduction in steps of 16): batch 1 and an odd 7 × 11 image with every
/// kernel size and a channel slice (3·k² columns: scalar weight loads; 77 pixels: scalar dy loads in wgrad);
/// 33 output channels (two row tiles, the second with one row) with c_in·k² = 36 and 6 × 6 images (the
/// cp.async paths of the forward's weight rows and wgrad's dy rows); 135 pixels and 200 weight columns (two
/// column tiles each); 35 input channels for dgrad's rows; and 130 images in 44 wgrad splits, the last short.
pub fn conv_tf32_shapes() -> Vec<ConvShape> {
    let mut v: Vec<ConvShape> = [1, 3, 5]
        .map(|k| ConvShape::new(1, 3, 5, 7, 11, k).into_slice(9, 2))
        .into();
    v.push(ConvShape::new(2, 4, 33, 6, 6, 3).into_slice(40, 5));
    v.push(ConvShape::new(3, 8, 6, 5, 9, 5));
    v.push(ConvShape::new(1, 35, 3, 4, 7, 3).into_slice(4, 1));
    v.push(ConvShape::new(130, 2, 3, 3, 3, 3));
    // Channel counts that are multiples of the k step (16): the TF32 convs' one-tap-a-step gathers (the
    // forward's c_in, dgrad's c_out, wgrad's c_in).
    v.push(ConvShape::new(2, 16, 32, 5, 7, 3).into_slice(40, 8));
    v.push(ConvShape::new(1, 32, 16, 6, 5, 5));
    v.push(ConvShape::new(3, 16, 48, 4, 3, 1));
    v.into_iter()
        .map(|s| s.with_precision(inception_cuda::shape::Precision::Tf32))
        .collect()
}

/// Tolerances of [`conv_on`]'s outputs for the TF32 kernels against the TF32 twins. Both multiply the same
/// TF32-rounded operands, whose products are exact in f32 (11 × 11 significant bits), so the two differ only
/// in the order of their f32 sums (the kernels' mma steps of 8 in reduction order, the twins' matrix
/// products): the fp32 bound of [`CONV_TOL`] (relative error of a sum of m products at most about
/// m·2⁻²⁴·Σ|products|, m ≤ 200 here) applies unchanged.
pub const CONV_TF32_TOL: [(&str, f32, f32); 6] = CONV_TOL;

/// Whether `got` lies outside `|got - want| <= atol·max(1, rms(want)) + rtol·|want|` somewhere (the criterion
/// of [`super::assert_close_scaled`]): that two results differ by more than summation order.
pub fn differs_beyond(got: &[f32], want: &[f32], atol: f32, rtol: f32) -> bool {
    let rms = (want.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / want.len().max(1) as f64)
        .sqrt()
        .max(1.0) as f32;
    got.iter()
        .zip(want)
        .any(|(g, w)| (g - w).abs() > atol * rms + rtol * w.abs())
}

/// Reduced maps too large for one block's shared memory (GoogLeNet (3a)'s 96 reduce channels at 28×28):
/// the forward splits them into row tiles with a halo (3 and 2 tiles here). One output channel keeps them
/// cheap to emulate.
pub fn fused_tiled_shapes() -> Vec<ReduceConvShape> {
    let big = |c_mid, k, c_total, c_offset| ReduceConvShape {
        n: 1,
        c_in: 2,
        c_mid,
        c_out: 1,
        h: 28,
        w: 28,
        k,
        c_total,
        c_offset,
        precision: inception_cuda::shape::Precision::Fp32,
    };
    vec![big(96, 3, 2, 1), big(64, 5, 1, 0)]
}

/// Shapes for the fused tests: batch 1 and 3, 5×5 and 7×7 (two row tiles of 4 with their halos), both
/// kernel sizes, a slice; and one with two output-channel groups (c_out 70 > 64, the last channel quad
/// partial), c_mid 5 (a partial quad of reduce channels) and 9 × 9 (three row tiles, a partial pixel octet).
pub fn fused_shapes() -> Vec<ReduceConvShape> {
    let mut v = vec![ReduceConvShape {
        n: 2,
        c_in: 3,
        c_mid: 5,
        c_out: 70,
        h: 9,
        w: 9,
        k: 5,
        c_total: 75,
        c_offset: 3,
        precision: inception_cuda::shape::Precision::Fp32,
    }];
    for (n, hw) in [(1, 5), (3, 7)] {
        for k in [3, 5] {
            v.push(ReduceConvShape {
                n,
                c_in: 3,
                c_mid: 2,
                c_out: 20,
                h: hw,
                w: hw,
                k,
                c_total: 26,
                c_offset: 5,
                precision: inception_cuda::shape::Precision::Fp32,
            });
        }
    }
    v
}

/// Shapes for the tensor-core fused reduce conv (reduce_conv_fwd_tf32, reduce_conv_dmid_tf32 and the
/// TF32 conv kernels of its backward), smaller than [`fused_shapes`] where the tile edges allow (dmid's
/// reduction runs over c_out·k² in steps of 16, slow to emulate): two output-channel groups (66 = 64 + 2) on
/// three row tiles of 9 × 9 with 5 reduce channels; batch 1 with k = 5 on 5 × 5 (one tile, the halo clipped
/// both sides); batch 3 with k = 3 and k = 5 on 7 × 7 (two row tiles); and 11 input channels (two k steps of
/// 8 in the 1×1), 35 reduce channels (two 32-row slabs of the reduced map and of dmid's tiles), 33 output
/// channels (two slabs in the k×k) on an odd 7 × 11 image; then reduce and output channels that are multiples
/// of 16 (the one-tap-a-step gathers; with c_mid a multiple of 8 the forward's k×k runs tap-major), and
/// c_mid 8 with two groups of output channels; then c_in a multiple of 8 (the 1×1's whole slabs). All but two
/// write a channel slice.
pub fn fused_tf32_shapes() -> Vec<ReduceConvShape> {
    let shape = |n, c_in, c_mid, c_out, (h, w), k, c_total, c_offset| ReduceConvShape {
        n,
        c_in,
        c_mid,
        c_out,
        h,
        w,
        k,
        c_total,
        c_offset,
        precision: inception_cuda::shape::Precision::Tf32,
    };
    vec![
        shape(1, 3, 5, 66, (9, 9), 3, 70, 3),
        shape(1, 3, 2, 20, (5, 5), 5, 26, 5),
        shape(3, 3, 2, 6, (7, 7), 3, 8, 1),
        shape(3, 3, 2, 6, (7, 7), 5, 8, 2),
        shape(1, 11, 35, 33, (7, 11), 3, 40, 4),
        // c_out and c_mid multiples of 16: the one-tap-a-step gathers of dpre's conv and both weight gradients
        shape(2, 5, 16, 32, (6, 7), 3, 40, 8),
        shape(1, 4, 16, 16, (5, 9), 5, 16, 0),
        // c_mid 8 and 70 output channels: the tap-major k×k with one k step a tap and a second channel group
        // of 6 (rows past the group's channels)
        shape(1, 3, 8, 70, (5, 6), 5, 75, 2),
        // c_in a multiple of 8 and 16-column rows: the 1×1's whole slabs (no per-load checks), 16 and 32
        // reduce channels (slabs of 16 × 64 and 32 × 32)
        shape(1, 8, 16, 16, (6, 16), 3, 20, 4),
        shape(1, 16, 32, 8, (6, 16), 5, 8, 0),
    ]
}

/// Tolerances of [`fused_tf32_stages`]' outputs `[y, mid, dx, dparams, dpre]`: those of [`FUSED_TOL`] for
/// the reason given at [`CONV_TF32_TOL`] (the same rounded operands, sums in another order), and dpre's as
/// conv_dgrad's.
pub const FUSED_TF32_TOL: [(&str, f32, f32); 5] = [
    FUSED_TOL[0],
    FUSED_TOL[1],
    FUSED_TOL[2],
    FUSED_TOL[3],
    ("dpre", 1e-5, 1e-4),
];

/// One Inception module forward and backward on backend `b`: `[y, dx, dparams]` on the host. The backward
/// runs on the CPU twin's forward results (y and the saved maps, uploaded), not on `b`'s own: where a
/// pre-activation lies within rounding of 0, the two forwards can put it on opposite sides of a ReLU, and
/// the gradient through that one kink differs by its full size, then spreads through the convs (seen on an
/// H100 at module 2's size: one flipped output of 10 M moved 3,085 values of dx). `y` is still `b`'s own.
pub fn module_on<B: Backend>(
    b: &B,
    m: &inception_cuda::nn::InceptionModule,
    (n, h, w): (usize, usize, usize),
    x: &[f32],
    params: &[f32],
    dy: &[f32],
) -> Vec<Vec<f32>> {
    let up = |v: &[f32]| b.upload(v).unwrap();
    let (xb, pb, dyb) = (up(x), up(params), up(dy));
    let xv = b.view(&xb, 0..x.len()).unwrap();
    let mut y = up(&vec![SENTINEL; dy.len()]);
    let mut saved = m.alloc_saved(b, n, h, w).unwrap();
    m.forward(
        b,
        &mut b.view_mut(&mut y, 0..dy.len()).unwrap(),
        &mut saved,
        &xv,
        (&pb, 0),
        (n, h, w),
    )
    .unwrap();
    let y_own = b.to_host(&y).unwrap();
    // The twin's forward, for the backward's inputs.
    let cpu = inception_cuda::cpu::CpuBackend;
    let mut y_cpu = vec![0.0; dy.len()];
    let mut saved_cpu = m.alloc_saved(&cpu, n, h, w).unwrap();
    m.forward(
        &cpu,
        &mut y_cpu.as_mut_slice(),
        &mut saved_cpu,
        &x,
        (&params.to_vec(), 0),
        (n, h, w),
    )
    .unwrap();
    let y = up(&y_cpu);
    let saved = inception_cuda::nn::ModuleSaved {
        mid3: up(&saved_cpu.mid3),
        mid5: up(&saved_cpu.mid5),
        pooled: up(&saved_cpu.pooled),
    };
    let (mut dx, mut dp) = (
        up(&vec![SENTINEL; x.len()]),
        up(&vec![SENTINEL; params.len()]),
    );
    let mut scratch = m.alloc_scratch(b, n, h, w).unwrap();
    let (yv, dyv) = (
        b.view(&y, 0..dy.len()).unwrap(),
        b.view(&dyb, 0..dy.len()).unwrap(),
    );
    let mut dxv = b.view_mut(&mut dx, 0..x.len()).unwrap();
    m.backward(
        b,
        Some(&mut dxv),
        (&mut dp, 0),
        &mut scratch,
        &dyv,
        &yv,
        &xv,
        &saved,
        &pb,
        (n, h, w),
    )
    .unwrap();
    drop(dxv);
    vec![y_own, b.to_host(&dx).unwrap(), b.to_host(&dp).unwrap()]
}

/// Tolerances of [`module_on`]'s outputs: y, dx, dparams.
pub const MODULE_TOL: [(&str, f32, f32); 3] = [
    ("y", 1e-5, 1e-4),
    ("dx", 1e-4, 1e-3),
    ("dparams", 1e-4, 1e-3),
];

/// linear_fwd, linear_dgrad, linear_wgrad, linear_bgrad on backend `b`, outputs on the host. Every tensor is
/// a view that starts `offset` floats into its buffer (an offset of 1 takes the kernels off their 16-byte
/// aligned paths even where the strides are multiples of 4).
pub fn linear_on<B: Backend>(
    b: &B,
    s: &inception_cuda::shape::LinearShape,
    [x, w, bias, dy]: &[Vec<f32>; 4],
    offset: usize,
) -> Vec<Vec<f32>> {
    let up = |v: &[f32]| {
        let mut padded = vec![f32::NAN; offset];
        padded.extend_from_slice(v);
        b.upload(&padded).unwrap()
    };
    let at = |len: usize| offset..offset + len;
    let (xb, wb, bb, dyb) = (up(x), up(w), up(bias), up(dy));
    let (xv, wv, bv, dyv) = (
        b.view(&xb, at(x.len())).unwrap(),
        b.view(&wb, at(w.len())).unwrap(),
        b.view(&bb, at(bias.len())).unwrap(),
        b.view(&dyb, at(dy.len())).unwrap(),
    );
    let (mut y, mut dx) = (up(&vec![SENTINEL; dy.len()]), up(&vec![SENTINEL; x.len()]));
    let (mut dw, mut db) = (
        up(&vec![SENTINEL; w.len()]),
        up(&vec![SENTINEL; bias.len()]),
    );
    b.linear_fwd(
        &mut b.view_mut(&mut y, at(dy.len())).unwrap(),
        &xv,
        &wv,
        &bv,
        s,
    )
    .unwrap();
    b.linear_dgrad(&mut b.view_mut(&mut dx, at(x.len())).unwrap(), &dyv, &wv, s)
        .unwrap();
    b.linear_wgrad(&mut b.view_mut(&mut dw, at(w.len())).unwrap(), &dyv, &xv, s)
        .unwrap();
    b.linear_bgrad(&mut b.view_mut(&mut db, at(bias.len())).unwrap(), &dyv, s)
        .unwrap();
    [y, dx, dw, db]
        .iter()
        .map(|buf| b.to_host(buf).unwrap()[offset..].to_vec())
        .collect()
}

/// Tolerances of [`linear_on`]'s outputs: y (fc1 sums 200,704 products), dx, dw, db.
pub const LINEAR_TOL: [(&str, f32, f32); 4] = [
    ("fwd", 1e-4, 1e-3),
    ("dgrad", 1e-5, 1e-4),
    ("wgrad", 1e-5, 1e-4),
    ("bgrad", 1e-5, 1e-4),
];

/// Inputs of [`linear_on`] for a shape.
pub fn linear_inputs(s: &inception_cuda::shape::LinearShape) -> [Vec<f32>; 4] {
    use super::uniform;
    [
        uniform(41, s.m * s.k_in),
        uniform(42, s.n_out * s.k_in),
        uniform(43, s.n_out),
        uniform(44, s.m * s.n_out),
    ]
}

/// [`linear_on`] on `b` at each view offset of `offsets` against the CPU twin's outputs (offset 0), within
/// [`LINEAR_TOL`]; returns the inputs and the twin's outputs.
pub fn assert_linear_matches_twin<B: Backend>(
    what: &str,
    b: &B,
    s: &inception_cuda::shape::LinearShape,
    offsets: &[usize],
) -> ([Vec<f32>; 4], Vec<Vec<f32>>) {
    let inputs = linear_inputs(s);
    let want = linear_on(&inception_cuda::cpu::CpuBackend, s, &inputs, 0);
    for &offset in offsets {
        let got = linear_on(b, s, &inputs, offset);
        assert_outputs(
            &format!("{what} {s:?} offset {offset}"),
            &LINEAR_TOL,
            &got,
            &want,
        );
    }
    (inputs, want)
}

/// One training step's forward and backward (no Adam) of a net built from `seed` on backend `b`: the loss
/// and every parameter's gradient, in the reference's order.
pub fn step_on<B: Backend>(
    b: impl inception_cuda::BackendHandle<Backend = B>,
    config: inception_cuda::nn::MnistConfig,
    images: &[f32],
    labels: &[u32],
) -> (f32, Vec<(String, Vec<f32>)>) {
    let mut net = inception_cuda::nn::InceptionMnist::new(b, config, 7).unwrap();
    net.forward_backward(images, labels).unwrap();
    let grads = net
        .params()
        .iter()
        .map(|e| (e.name.clone(), net.grad(&e.name).unwrap()))
        .collect();
    (net.loss().unwrap(), grads)
}

/// Asserts every output of a kernel sequence against the twins', each within its `(name, atol, rtol)`, the
/// absolute tolerance scaled by the output's RMS when that exceeds 1 ([`super::assert_close_scaled`]).
pub fn assert_outputs(
    what: &str,
    outputs: &[(&str, f32, f32)],
    got: &[Vec<f32>],
    want: &[Vec<f32>],
) {
    assert_eq!(
        (got.len(), want.len()),
        (outputs.len(), outputs.len()),
        "{what}: output count"
    );
    for ((name, atol, rtol), (g, w)) in outputs.iter().zip(got.iter().zip(want)) {
        super::assert_close_scaled(&format!("{what}: {name}"), g, w, *atol, *rtol);
    }
}

/// `linear_wgrad_adam` on backend `b`, and `linear_wgrad` then `adam_step` on the same backend, from the same
/// weights and moments at Adam step `t`: `[fused, unfused]`, each `[w, m, v]` on the host.
#[allow(clippy::too_many_arguments)]
pub fn wgrad_adam_on<B: Backend>(
    b: &B,
    s: &inception_cuda::shape::LinearShape,
    dy: &[f32],
    x: &[f32],
    [w, m, v]: [&[f32]; 3],
    t: u64,
) -> [[Vec<f32>; 3]; 2] {
    use inception_cuda::shape::AdamStep;
    let step = AdamStep::new(1e-3, t);
    let up = |v: &[f32]| b.upload(v).unwrap();
    let (dyb, xb) = (up(dy), up(x));
    let (dyv, xv) = (
        b.view(&dyb, 0..dy.len()).unwrap(),
        b.view(&xb, 0..x.len()).unwrap(),
    );
    let n = w.len();
    let (mut fw, mut fm, mut fv) = (up(w), up(m), up(v));
    b.linear_wgrad_adam(
        [
            &mut b.view_mut(&mut fw, 0..n).unwrap(),
            &mut b.view_mut(&mut fm, 0..n).unwrap(),
            &mut b.view_mut(&mut fv, 0..n).unwrap(),
        ],
        &dyv,
        &xv,
        s,
        &step,
    )
    .unwrap();
    let (mut uw, mut um, mut uv, mut g) = (up(w), up(m), up(v), up(&vec![SENTINEL; n]));
    b.linear_wgrad(&mut b.view_mut(&mut g, 0..n).unwrap(), &dyv, &xv, s)
        .unwrap();
    b.adam_step(
        &mut b.view_mut(&mut uw, 0..n).unwrap(),
        &mut b.view_mut(&mut um, 0..n).unwrap(),
        &mut b.view_mut(&mut uv, 0..n).unwrap(),
        &b.view(&g, 0..n).unwrap(),
        &step,
    )
    .unwrap();
    let host = |x: &B::Buf| b.to_host(x).unwrap();
    [
        [host(&fw), host(&fm), host(&fv)],
        [host(&uw), host(&um), host(&uv)],
    ]
}

/// Small shapes for [`assert_wgrad_adam`]: an odd one (scalar loads and stores) and one at the float4 edges
/// (a partial column group, a row tile of 6, 66 = 64 + 2 rows of k).
pub const WGRAD_ADAM_SMALL_SHAPES: [inception_cuda::shape::LinearShape; 2] = [
    inception_cuda::shape::LinearShape::new(5, 37, 13),
    inception_cuda::shape::LinearShape::new(66, 260, 70),
];

/// Asserts, for each shape, that `linear_wgrad_adam` on `b` equals `linear_wgrad` then `adam_step` on `b` bit
/// for bit (same GEMM core, same update arithmetic) and its CPU twin within the GEMM tolerance, and that the
/// weights moved where the batch is not empty.
pub fn assert_wgrad_adam<B: Backend>(
    what: &str,
    b: &B,
    shapes: &[inception_cuda::shape::LinearShape],
) {
    for s in shapes {
        let [x, _, _, dy] = linear_inputs(s);
        let [w, m, v] = wgrad_adam_state(s);
        let [fused, unfused] = wgrad_adam_on(b, s, &dy, &x, [&w, &m, &v], 3);
        let [twin, _] = wgrad_adam_on(
            &inception_cuda::cpu::CpuBackend,
            s,
            &dy,
            &x,
            [&w, &m, &v],
            3,
        );
        for (k, name) in ["w", "adam_m", "adam_v"].iter().enumerate() {
            let what = format!("{what} linear_wgrad_adam {s:?} {name}");
            super::assert_bits_eq(&format!("{what} vs unfused"), &fused[k], &unfused[k]);
            // m moves by (1-β1)·g, v by (1-β2)·g²: the gradient's tolerance scaled; w by lr·(a ratio of them).
            super::assert_close_scaled(&what, &fused[k], &twin[k], 1e-6, 1e-4);
        }
        if s.m > 0 {
            assert!(fused[0] != w, "{what} {s:?}: the weights did not move");
        }
    }
}

/// Weights and mid-training Adam moments for [`wgrad_adam_on`] (second moments of the size of a squared
/// gradient, so the update is not the sign-dominated first step).
pub fn wgrad_adam_state(s: &inception_cuda::shape::LinearShape) -> [Vec<f32>; 3] {
    use super::uniform;
    let n = s.n_out * s.k_in;
    let m: Vec<f32> = uniform(46, n).iter().map(|v| v * 0.05).collect();
    let v: Vec<f32> = uniform(47, n).iter().map(|v| v * v * 0.01 + 1e-4).collect();
    [uniform(45, n), m, v]
}

/// Asserts that a training step equals `forward_backward` then Adam over every parameter on the host (the
/// CPU twin of `adam_step`, bit-exact with the kernel): `make` builds two identical nets; fc1's fused
/// weight update must give the same bits as the stored gradient through the unfused update.
pub fn assert_step_is_forward_backward_then_adam<B: Backend>(
    what: &str,
    make: impl Fn() -> inception_cuda::nn::InceptionMnist<B>,
    images: &[f32],
    labels: &[u32],
) {
    use inception_cuda::shape::AdamStep;
    let lr = 1e-3;
    let mut plain = make();
    plain.forward_backward(images, labels).unwrap();
    let entries: Vec<(String, std::ops::Range<usize>)> = plain
        .params()
        .iter()
        .map(|e| (e.name.clone(), e.range.clone()))
        .collect();
    let mut stepped = make();
    stepped.train_step(images, labels, lr).unwrap();
    let state = stepped.train_state().unwrap();
    for (name, range) in &entries {
        let mut p = plain.param(name).unwrap();
        let g = plain.grad(name).unwrap();
        let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
        inception_cuda::cpu::adam_step(&mut p, &mut m, &mut v, &g, &AdamStep::new(lr, 1)).unwrap();
        let what = format!("{what}: {name} after one step");
        super::assert_bits_eq(&what, &stepped.param(name).unwrap(), &p);
        super::assert_bits_eq(&format!("{what}, adam_m"), &state.adam_m[range.clone()], &m);
        super::assert_bits_eq(&format!("{what}, adam_v"), &state.adam_v[range.clone()], &v);
    }
    let len = state.adam_m.len();
    assert!(
        len > 0 && state.adam_v.iter().any(|&v| v > 0.0),
        "{what}: no moment was updated"
    );
}

/// `d = a · b + c` for one TF32 tile (`mma_tf32_tile`) on backend `b`: `a, c: [16, 8]`, `bm: [8, 8]`.
pub fn mma_tile_on<B: Backend>(b: &B, a: &[f32], bm: &[f32], c: &[f32]) -> Vec<f32> {
    let (a, bm, c) = (
        b.upload(a).unwrap(),
        b.upload(bm).unwrap(),
        b.upload(c).unwrap(),
    );
    let mut d = b.upload(&[f32::NAN; 128]).unwrap();
    b.mma_tf32_tile(
        &mut b.view_mut(&mut d, 0..128).unwrap(),
        &b.view(&a, 0..128).unwrap(),
        &b.view(&bm, 0..64).unwrap(),
        &b.view(&c, 0..128).unwrap(),
    )
    .unwrap();
    b.to_host(&d).unwrap()
}

/// Inputs of the TF32 tile tests: `(a [16, 8], b [8, 8], c [16, 8])`. `exact`: small integers, so every
/// product and sum is exact and any summation order gives the same bits (the hardware's order is not
/// documented); otherwise values with bits below TF32's precision, so the rounding shows.
pub fn mma_inputs(seed: u64, exact: bool) -> [Vec<f32>; 3] {
    let shape = |v: Vec<f32>| -> Vec<f32> {
        if exact {
            v.iter().map(|x| (x * 8.0).round()).collect()
        } else {
            v.iter().map(|x| x * (1.0 + 1.0 / 3.0)).collect()
        }
    };
    [
        shape(super::uniform(seed, 128)),
        shape(super::uniform(seed + 1, 64)),
        shape(super::uniform(seed + 2, 128)),
    ]
}

/// `linear_bwd_adam` on backend `b` (one pass) and `linear_dgrad` then `linear_wgrad_adam` (two passes) from the
/// same state: `[[dx, w, m, v] one pass, [dx, w, m, v] two passes]`, on the host. Every tensor is a view that
/// starts `offset` floats into its buffer (an offset of 1 takes the kernels off their aligned paths).
pub fn bwd_adam_on<B: Backend>(
    b: &B,
    s: &inception_cuda::shape::LinearShape,
    dy: &[f32],
    x: &[f32],
    [w, m, v]: [&[f32]; 3],
    offset: usize,
) -> [[Vec<f32>; 4]; 2] {
    use inception_cuda::shape::AdamStep;
    let step = AdamStep::new(1e-3, 3);
    let up = |v: &[f32]| {
        let mut padded = vec![f32::NAN; offset];
        padded.extend_from_slice(v);
        b.upload(&padded).unwrap()
    };
    let at = |len: usize| offset..offset + len;
    let (dyb, xb) = (up(dy), up(x));
    let (dyv, xv) = (
        b.view(&dyb, at(dy.len())).unwrap(),
        b.view(&xb, at(x.len())).unwrap(),
    );
    let (n, nx) = (w.len(), x.len());
    let run = |one_pass: bool| -> [Vec<f32>; 4] {
        let (mut dx, mut bw, mut bm, mut bv) = (up(&vec![f32::NAN; nx]), up(w), up(m), up(v));
        {
            let mut dxv = b.view_mut(&mut dx, at(nx)).unwrap();
            if !one_pass {
                b.linear_dgrad(&mut dxv, &dyv, &b.view(&bw, at(n)).unwrap(), s)
                    .unwrap();
            }
            let wmv = [
                &mut b.view_mut(&mut bw, at(n)).unwrap(),
                &mut b.view_mut(&mut bm, at(n)).unwrap(),
                &mut b.view_mut(&mut bv, at(n)).unwrap(),
            ];
            if one_pass {
                b.linear_bwd_adam(&mut dxv, wmv, &dyv, &xv, s, &step)
                    .unwrap();
            } else {
                b.linear_wgrad_adam(wmv, &dyv, &xv, s, &step).unwrap();
            }
        }
        [dx, bw, bm, bv].map(|buf| b.to_host(&buf).unwrap()[offset..].to_vec())
    };
    [run(true), run(false)]
}

/// Shapes for the one-pass backward, each in both precisions: strip and row-chunk edges (k_in not a multiple
/// of 128, n_out not a multiple of 32 or 16), batches of 1, an odd one, the largest one pass takes (64) and
/// one past it (65, the two-pass fallback); k_in and n_out multiples of 4 (the TF32 kernel's cp.async path)
/// and not.
pub fn bwd_adam_shapes() -> Vec<inception_cuda::shape::LinearShape> {
    use inception_cuda::shape::{LinearShape, Precision};
    let shapes = [
        LinearShape::new(1, 300, 45),
        LinearShape::new(7, 129, 33),
        LinearShape::new(50, 260, 70),
        LinearShape::new(50, 264, 72),
        LinearShape::new(64, 256, 16),
        LinearShape::new(64, 131, 16),
        LinearShape::new(65, 70, 9),
    ];
    Precision::ALL
        .into_iter()
        .flat_map(|p| shapes.map(|s| s.with_precision(p)))
        .collect()
}

/// Asserts that `linear_bwd_adam` on `b` equals `linear_dgrad` then `linear_wgrad_adam` on `b` bit for bit,
/// and the CPU twin's one pass within the linear layers' tolerances, from aligned views and from views one
/// float into their buffers.
pub fn assert_bwd_adam<B: Backend>(
    what: &str,
    b: &B,
    shapes: &[inception_cuda::shape::LinearShape],
) {
    for s in shapes {
        let [x, _, _, dy] = linear_inputs(s);
        let [w, m, v] = wgrad_adam_state(s);
        let cpu = &inception_cuda::cpu::CpuBackend;
        let [twin, _] = bwd_adam_on(cpu, s, &dy, &x, [&w, &m, &v], 0);
        for offset in [0, 1] {
            let [one, two] = bwd_adam_on(b, s, &dy, &x, [&w, &m, &v], offset);
            for (k, name) in ["dx", "w", "adam_m", "adam_v"].iter().enumerate() {
                let what = format!("{what} linear_bwd_adam {s:?} offset {offset} {name}");
                super::assert_bits_eq(&format!("{what}: one pass vs two"), &one[k], &two[k]);
                super::assert_close_scaled(&what, &one[k], &twin[k], 1e-6, 1e-4);
            }
            assert!(one[1] != w, "{what} {s:?}: the weights did not move");
        }
    }
}

/// The shapes of the ReLU-mask tests, pairs of a conv into a channel slice and a fused conv of the same slice
/// (the same dy and y): odd image and channels off the tiles (a 5×5 fused conv); then 16-channel convs, whose
/// TF32 kernels gather one tap a k step (the masked fast paths of dgrad, wgrad and the fused conv's dmid).
pub const MASK_SHAPES: [(ConvShape, ReduceConvShape); 2] = [
    (
        ConvShape::new(2, 3, 5, 5, 7, 3).into_slice(9, 2),
        ReduceConvShape {
            n: 2,
            c_in: 3,
            c_mid: 4,
            c_out: 5,
            h: 5,
            w: 7,
            k: 5,
            c_total: 9,
            c_offset: 2,
            precision: Precision::Fp32,
        },
    ),
    (
        ConvShape::new(1, 16, 16, 5, 6, 3).into_slice(20, 3),
        ReduceConvShape {
            n: 1,
            c_in: 16,
            c_mid: 16,
            c_out: 16,
            h: 5,
            w: 6,
            k: 3,
            c_total: 20,
            c_offset: 3,
            precision: Precision::Fp32,
        },
    ),
];

/// `(dy, y, relu_bwd(dy, y))` of `len` elements: `y` holds positives, negatives, +0, -0 and NaN (only y > 0
/// passes dy).
pub fn relu_mask_inputs(len: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dy = super::uniform(75, len);
    let specials = [0.0, -0.0, f32::NAN, -1.0];
    let y: Vec<f32> = super::uniform(76, len)
        .iter()
        .enumerate()
        .map(|(i, &v)| if i % 3 == 0 { specials[i / 3 % 4] } else { v })
        .collect();
    let mut g = vec![0.0; len];
    inception_cuda::cpu::relu_bwd(&mut g, &dy, &y).unwrap();
    (dy, y, g)
}

/// conv_dgrad (accumulating), conv_wgrad and reduce_conv_bwd (accumulating) on backend `b` with `dy` and the
/// optional ReLU mask `y`, the other inputs seeded: `[dx, [dw | db], fused dx, fused dparams]` on the host.
pub fn masked_grads_on<B: Backend>(
    b: &B,
    s: &ConvShape,
    rs: &ReduceConvShape,
    dy: &[f32],
    y: Option<&[f32]>,
) -> Vec<Vec<f32>> {
    let (xl, wl) = (s.x_len("t").unwrap(), s.w_len("t").unwrap());
    let block = inception_cuda::backend::reduce_conv_param_ranges(rs)[3].end;
    let mid: Vec<f32> = super::uniform(74, rs.mid_len("t").unwrap())
        .iter()
        .map(|v| v.max(0.0))
        .collect();
    let up = |v: &[f32]| b.upload(v).unwrap();
    let (x, w, params, mid, dy) = (
        up(&super::uniform(71, xl)),
        up(&super::uniform(72, wl)),
        up(&super::uniform(73, block)),
        up(&mid),
        up(dy),
    );
    let y = y.map(up);
    fn all<'a, B: Backend>(b: &'a B, buf: &'a mut B::Buf) -> B::ViewMut<'a> {
        let len = b.len(buf);
        b.view_mut(buf, 0..len).unwrap()
    }
    let (xv, wv, pv, mv, dyv) = (
        whole(b, &x),
        whole(b, &w),
        whole(b, &params),
        whole(b, &mid),
        whole(b, &dy),
    );
    let yv = y.as_ref().map(|y| whole(b, y));
    let (mut dx, mut dwdb) = (up(&vec![0.5; xl]), up(&vec![f32::NAN; wl + s.c_out]));
    let (mut rdx, mut dparams, mut scratch) = (
        up(&vec![0.25; xl]),
        up(&vec![f32::NAN; block]),
        up(&vec![f32::NAN; b.len(&mid)]),
    );
    b.conv_dgrad(&mut all(b, &mut dx), &dyv, yv.as_ref(), &wv, s, true)
        .unwrap();
    b.conv_wgrad(&mut all(b, &mut dwdb), &dyv, yv.as_ref(), &xv, s)
        .unwrap();
    b.reduce_conv_bwd(
        &mut all(b, &mut rdx),
        &mut all(b, &mut dparams),
        &mut all(b, &mut scratch),
        &dyv,
        yv.as_ref(),
        &xv,
        &mv,
        &pv,
        rs,
        true,
    )
    .unwrap();
    [dx, dwdb, rdx, dparams]
        .iter()
        .map(|v| b.to_host(v).unwrap())
        .collect()
}
