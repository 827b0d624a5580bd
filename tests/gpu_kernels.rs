//! Oracle 3 (DESIGN.md): every CUDA kernel against its CPU twin on the same seeded inputs, on a real GPU.
//! `#[ignore]`d: run with `cargo test --test gpu_kernels -- --include-ignored` on a machine with a GPU
//! (they fail, never pass, without one). Tests named `small_*` use a few images and small channel counts:
//! the staging runner runs those under compute-sanitizer.
//!
//! Tolerances, `|gpu - cpu| <= atol + rtol·|cpu|`: 0 (bit for bit) for relu, add, max pooling, dropout and
//! Adam (integer hash, comparisons, and `_rn` arithmetic that nvcc cannot contract); 1e-5 for softmax_xent
//! (the GPU's expf/logf differ from libm by a few ulps).

mod common;

use common::kernels::{mma_inputs, mma_tile_on, pool_on, train_ops_on};
use common::{assert_bits_eq, assert_close, uniform};
use inception_cuda::cpu::CpuBackend;
use inception_cuda::nn::{InceptionModule, InceptionWidths};
use inception_cuda::shape::PoolShape;
use inception_cuda::Device;

/// Runs `f` with the CUDA backend of device 0.
fn with_gpu<T>(f: impl FnOnce(&inception_cuda::cuda::CudaBackend) -> T) -> T {
    let dev = common::gpu();
    match &dev {
        Device::Cuda(d) => f(d.backend()),
        Device::Cpu => unreachable!("common::gpu() returns a CUDA device"),
    }
}

fn pool_case(shapes: &[(usize, usize, usize, usize)]) {
    for &(n, c, h, w) in shapes {
        let s = PoolShape { n, c, h, w };
        let len = n * c * h * w;
        let mut x: Vec<f32> = uniform(1, len).iter().map(|v| (v * 4.0).round()).collect(); // ties
        x[len / 3] = f32::NAN;
        let (dy, dx0) = (uniform(2, len), uniform(3, len));
        let want = pool_on(&CpuBackend, &s, &x, &dy, &dx0);
        let got = with_gpu(|b| pool_on(b, &s, &x, &dy, &dx0));
        for (k, name) in ["fwd", "bwd", "bwd accumulate"].iter().enumerate() {
            assert_bits_eq(&format!("gpu maxpool3x3s1 {name} {s:?}"), &got[k], &want[k]);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_maxpool_matches_twin() {
    pool_case(&[(1, 1, 5, 5), (3, 2, 7, 7), (1, 3, 28, 28)]);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_maxpool_at_module_2_size_matches_twin() {
    pool_case(&[(50, 128, 28, 28)]);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_dropout_adam_softmax_match_twins() {
    let n = 100_003;
    let (x, g) = (uniform(4, n), uniform(5, n));
    let logits: Vec<f32> = uniform(6, 50 * 10).iter().map(|v| v * 8.0).collect();
    let labels: Vec<u32> = (0..50).map(|i| (i * 7 + 3) % 10).collect();
    let want = train_ops_on(&CpuBackend, &x, &g, &logits, &labels);
    let got = with_gpu(|b| train_ops_on(b, &x, &g, &logits, &labels));
    for k in 0..6 {
        assert_bits_eq(&format!("gpu dropout output {k}"), &got[k], &want[k]);
    }
    for (k, name) in [(6, "p"), (7, "m"), (8, "v")] {
        assert_bits_eq(
            &format!("gpu adam_step {name} after 3 steps"),
            &got[k],
            &want[k],
        );
    }
    assert_close("gpu softmax_xent loss", &got[9], &want[9], 1e-5, 1e-5);
    assert_close("gpu softmax_xent dlogits", &got[10], &want[10], 1e-5, 1e-5);
}

fn conv_case(shapes: &[inception_cuda::shape::ConvShape]) {
    conv_case_tol(shapes, &common::kernels::CONV_TOL);
}

/// [`conv_case`] with the tolerances `tol` (the TF32 kernels use `CONV_TF32_TOL`).
fn conv_case_tol(shapes: &[inception_cuda::shape::ConvShape], tol: &[(&str, f32, f32); 6]) {
    use common::kernels::{assert_outputs, conv_on};
    for s in shapes {
        let (x, w, b) = (
            uniform(11, s.n * s.c_in * s.h * s.w),
            uniform(12, s.c_out * s.c_in * s.k * s.k),
            uniform(13, s.c_out),
        );
        let (dy, dx0) = (
            uniform(14, s.n * s.c_total * s.h * s.w),
            uniform(15, x.len()),
        );
        let want = conv_on(&CpuBackend, s, &x, &w, &b, &dy, &dx0);
        let got = with_gpu(|g| conv_on(g, s, &x, &w, &b, &dy, &dx0));
        assert_outputs(&format!("gpu conv {s:?}"), tol, &got, &want);
    }
}

fn fused_inputs(s: &inception_cuda::shape::ReduceConvShape) -> [Vec<f32>; 4] {
    let x = uniform(21, s.n * s.c_in * s.h * s.w);
    let params = uniform(
        22,
        s.c_mid * s.c_in + s.c_mid + s.c_out * s.c_mid * s.k * s.k + s.c_out,
    );
    let (dy, dx0) = (
        uniform(23, s.n * s.c_total * s.h * s.w),
        uniform(24, x.len()),
    );
    [x, params, dy, dx0]
}

fn fused_case(shapes: &[inception_cuda::shape::ReduceConvShape]) {
    use common::kernels::{assert_outputs, fused_on, FUSED_TOL};
    for s in shapes {
        let [x, params, dy, dx0] = fused_inputs(s);
        let want = fused_on(&CpuBackend, s, &x, &params, &dy, &dx0);
        let got = with_gpu(|g| fused_on(g, s, &x, &params, &dy, &dx0));
        assert_outputs(&format!("gpu reduce_conv {s:?}"), &FUSED_TOL, &got, &want);
    }
}

/// The TF32 fused conv stage by stage against the TF32 twins (`fused_tf32_stages`: each stage fed the GPU's
/// own inputs to it, so a sum that rounds to TF32 on the other side of a boundary is not a failure).
fn fused_tf32_case(shapes: &[inception_cuda::shape::ReduceConvShape]) {
    use common::kernels::{assert_outputs, fused_tf32_stages, FUSED_TF32_TOL};
    for s in shapes {
        let [x, params, dy, dx0] = fused_inputs(s);
        let [got, want] = with_gpu(|g| fused_tf32_stages(g, s, &x, &params, &dy, &dx0));
        assert_outputs(
            &format!("gpu tf32 reduce_conv {s:?}"),
            &FUSED_TF32_TOL,
            &got,
            &want,
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_convs_match_twins() {
    conv_case(&common::kernels::conv_shapes());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_fused_reduce_conv_matches_twin() {
    fused_case(&common::kernels::fused_shapes());
    fused_case(&common::kernels::fused_tiled_shapes());
}

/// The tensor-core convs (conv_*_tf32) against the TF32 twins at every tile edge.
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_tf32_convs_match_twins() {
    conv_case_tol(
        &common::kernels::conv_tf32_shapes(),
        &common::kernels::CONV_TF32_TOL,
    );
}

/// The fused reduce conv on the tensor cores (reduce_conv_fwd_tf32, reduce_conv_dmid_tf32) against the TF32
/// twin, at the tile edges and on GoogLeNet (3a)-wide reduced maps (row tiles with halos, 96 reduce channels:
/// three 32-row slabs of the on-chip map).
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_tf32_fused_reduce_conv_matches_twin() {
    use common::kernels::{fused_tf32_shapes, fused_tiled_shapes};
    use inception_cuda::shape::Precision;
    let tiled: Vec<_> = fused_tiled_shapes()
        .into_iter()
        .map(|s| s.with_precision(Precision::Tf32))
        .collect();
    fused_tf32_case(&fused_tf32_shapes());
    fused_tf32_case(&tiled);
}

/// Module 2's convs at batch 50 on the tensor cores: the 1×1 branch, and both fused branches (the reduced
/// map's 50 KB in shared memory with the opt-in).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_tf32_convs_at_module_2_size_match_twins() {
    use common::kernels::CONV_TF32_TOL;
    use inception_cuda::shape::{ConvShape, Precision, ReduceConvShape};
    conv_case_tol(
        &[ConvShape::new(50, 128, 64, 28, 28, 1)
            .into_slice(256, 0)
            .with_precision(Precision::Tf32)],
        &CONV_TF32_TOL,
    );
    let fused = |k, off| ReduceConvShape {
        n: 50,
        c_in: 128,
        c_mid: 16,
        c_out: 64,
        h: 28,
        w: 28,
        k,
        c_total: 256,
        c_offset: off,
        precision: Precision::Tf32,
    };
    fused_tf32_case(&[fused(3, 64), fused(5, 128)]);
}

/// Module 2 of the MNIST net at batch 50: the 28×28×16 reduced map (50 KB) needs the shared-memory opt-in.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_convs_at_module_2_size_match_twins() {
    use inception_cuda::shape::{ConvShape, ReduceConvShape};
    conv_case(&[ConvShape::new(50, 128, 64, 28, 28, 1).into_slice(256, 0)]);
    let fused = |k, off| ReduceConvShape {
        n: 50,
        c_in: 128,
        c_mid: 16,
        c_out: 64,
        h: 28,
        w: 28,
        k,
        c_total: 256,
        c_offset: off,
        precision: inception_cuda::shape::Precision::Fp32,
    };
    fused_case(&[fused(3, 64), fused(5, 128)]);
}

/// One Inception module forward and backward (all four branches) on the GPU against the CPU twin: a small
/// one, and module 2 of the MNIST net at batch 50.
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_inception_module_matches_twin() {
    module_case(3, InceptionWidths::uniform(4, 2), (2, 7, 7));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_inception_module_2_matches_twin() {
    module_case(128, InceptionWidths::uniform(64, 16), (50, 28, 28));
}

fn module_case(c_in: usize, widths: InceptionWidths, (n, h, w): (usize, usize, usize)) {
    use common::kernels::{assert_outputs, module_on, MODULE_TOL};
    let m = InceptionModule::new(c_in, widths);
    let x = uniform(31, n * c_in * h * w);
    let params = uniform(32, m.layout().len());
    let dy = uniform(33, n * m.c_out() * h * w);
    let want = module_on(&CpuBackend, &m, (n, h, w), &x, &params, &dy);
    let got = with_gpu(|g| module_on(g, &m, (n, h, w), &x, &params, &dy));
    assert_outputs("gpu module", &MODULE_TOL, &got, &want);
}

fn linear_case(shapes: &[inception_cuda::shape::LinearShape]) {
    for s in shapes {
        with_gpu(|g| common::kernels::assert_linear_matches_twin("gpu linear", g, s, &[0]));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_linear_matches_twin() {
    use inception_cuda::shape::LinearShape;
    linear_case(&[LinearShape::new(5, 37, 13), LinearShape::new(3, 9000, 70)]);
}

/// fc1 and fc2 of the MNIST net at batch 50.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_linear_at_fc1_and_fc2_shapes_matches_twin() {
    use inception_cuda::shape::LinearShape;
    linear_case(&[
        LinearShape::new(50, 200_704, 700),
        LinearShape::new(50, 700, 10),
    ]);
}

/// A whole training step on the GPU against the CPU twin: loss and every gradient (Adam is checked on its
/// own above, since its first step turns sign noise of near-zero gradients into full-size updates).
fn step_case(config: inception_cuda::nn::MnistConfig, batch: usize) {
    use common::kernels::step_on;
    let px = config.image * config.image;
    let images: Vec<f32> = uniform(51, batch * px)
        .iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    let labels: Vec<u32> = (0..batch as u32).map(|i| (i * 7 + 3) % 10).collect();
    let (loss, grads) = step_on(CpuBackend, config, &images, &labels);
    let dev = common::gpu();
    let Device::Cuda(cuda) = &dev else {
        unreachable!("common::gpu() returns a CUDA device")
    };
    let (gloss, ggrads) = step_on(cuda.backend_arc(), config, &images, &labels);
    assert!(
        (gloss - loss).abs() <= 1e-5 * loss.abs().max(1.0),
        "loss {gloss} vs twin {loss}"
    );
    for ((name, g), (_, e)) in grads.iter().zip(&ggrads) {
        assert_close(&format!("gpu step grad {name}"), e, g, 1e-4, 1e-3);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_training_step_matches_twin() {
    step_case(inception_cuda::nn::MnistConfig::tiny(), 3);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_full_training_step_matches_twin() {
    step_case(inception_cuda::nn::MnistConfig::default(), 50);
}

fn wgrad_adam_case(shapes: &[inception_cuda::shape::LinearShape]) {
    with_gpu(|g| common::kernels::assert_wgrad_adam("gpu", g, shapes));
}

/// The fused weight gradient + Adam equals the unfused kernels bit for bit, and its CPU twin within the
/// GEMM tolerance: small shapes (scalar and float4 paths) and fc1's and fc2's real shapes.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_linear_wgrad_adam_is_wgrad_then_adam() {
    use inception_cuda::shape::LinearShape;
    let [odd, edges] = common::kernels::WGRAD_ADAM_SMALL_SHAPES;
    let fc2 = LinearShape::new(50, 700, 10);
    let fc1 = LinearShape::new(50, 200_704, 700);
    wgrad_adam_case(&[odd, edges, fc2, fc1]);
}

/// A training step of the full net at batch 50 on the GPU is `forward_backward` then Adam over every
/// parameter, bit for bit (fc1's weight update fused into its gradient included).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_training_step_is_forward_backward_then_adam() {
    use inception_cuda::nn::{InceptionMnist, MnistConfig};
    use inception_cuda::shape::Precision;
    let dev = common::gpu();
    let Device::Cuda(d) = &dev else {
        unreachable!("common::gpu() returns a CUDA device")
    };
    let images: Vec<f32> = uniform(53, 50 * 784)
        .iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    let labels: Vec<u32> = (0..50).map(|i| (i * 3 + 1) % 10).collect();
    for p in Precision::ALL {
        common::kernels::assert_step_is_forward_backward_then_adam(
            &format!("gpu {p:?} step"),
            || {
                let mut net =
                    InceptionMnist::new(d.backend_arc(), MnistConfig::default(), 5).unwrap();
                net.set_precision(p).unwrap();
                net
            },
            &images,
            &labels,
        );
    }
}

/// The fragment layout of `mma.sync.m16n8k8` TF32 on the hardware equals the emulator's (PTX ISA layout):
/// with exact inputs bit for bit against the CPU twin, which the emulated test holds equal to the emulator, and
/// (in a build with `--features emulation`, as `scripts/stage-gpu.sh` makes) against the emulator itself;
/// with inexact inputs within f32 summation-order rounding (the hardware's order is not documented).
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_mma_fragment_layout_matches_the_emulator() {
    for (seed, exact) in [(1, true), (5, true), (2, false)] {
        let [a, b, c] = mma_inputs(seed, exact);
        let got = with_gpu(|g| mma_tile_on(g, &a, &b, &c));
        let want = mma_tile_on(&CpuBackend, &a, &b, &c);
        if exact {
            assert_bits_eq(&format!("gpu mma_tf32_tile, seed {seed}"), &got, &want);
            #[cfg(feature = "emulation")]
            {
                let emu = inception_cuda::emu::EmuBackend {
                    order: inception_cuda::emu::ThreadOrder::Forward,
                };
                let emulated = mma_tile_on(&emu, &a, &b, &c);
                assert_bits_eq(
                    &format!("gpu vs emulated mma, seed {seed}"),
                    &got,
                    &emulated,
                );
            }
        } else {
            assert_close(
                &format!("gpu mma_tf32_tile, seed {seed}"),
                &got,
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

/// fc1's one-pass backward + Adam equals linear_dgrad then linear_wgrad_adam bit for bit on the GPU: small
/// edge shapes (compute-sanitizer runs these), and fc1's own shape at batch 50.
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_linear_bwd_adam_is_dgrad_then_wgrad_adam() {
    with_gpu(|g| common::kernels::assert_bwd_adam("gpu", g, &common::kernels::bwd_adam_shapes()));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_linear_bwd_adam_at_fc1_shape_is_dgrad_then_wgrad_adam() {
    use common::kernels::{bwd_adam_on, linear_inputs, wgrad_adam_state};
    use inception_cuda::shape::Precision;
    for p in Precision::ALL {
        let s = inception_cuda::shape::LinearShape::new(50, 200_704, 700).with_precision(p);
        let [x, _, _, dy] = linear_inputs(&s);
        let [w, m, v] = wgrad_adam_state(&s);
        let [one, two] = with_gpu(|g| bwd_adam_on(g, &s, &dy, &x, [&w, &m, &v], 0));
        for (k, name) in ["dx", "w", "adam_m", "adam_v"].iter().enumerate() {
            assert_bits_eq(
                &format!("gpu fc1 {p:?} linear_bwd_adam {name}"),
                &one[k],
                &two[k],
            );
        }
    }
}

/// The kernels with the module's ReLU backward folded in (conv_dgrad, conv_wgrad and the fused conv's
/// backward, fp32 and TF32) given `y` equal `relu_bwd` first, then the same kernels without it, bit for bit
/// on the GPU (masking is exact); and the masked twins within the weight gradients' tolerance.
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_relu_mask_equals_relu_bwd_first() {
    use common::kernels::{masked_grads_on, relu_mask_inputs, MASK_SHAPES};
    use inception_cuda::shape::Precision;
    for ((s, rs), precision) in MASK_SHAPES
        .into_iter()
        .flat_map(|pair| Precision::ALL.map(|p| (pair, p)))
    {
        let (s, rs) = (&s.with_precision(precision), &rs.with_precision(precision));
        let (dy, y, g) = relu_mask_inputs(s.y_len("t").unwrap());
        let (folded, unfolded) = with_gpu(|b| {
            (
                masked_grads_on(b, s, rs, &dy, Some(&y)),
                masked_grads_on(b, s, rs, &g, None),
            )
        });
        let twin = masked_grads_on(&CpuBackend, s, rs, &dy, Some(&y));
        for (i, name) in ["dx", "[dw | db]", "fused dx", "fused dparams"]
            .iter()
            .enumerate()
        {
            let what = format!("gpu {precision:?} {name}");
            assert_bits_eq(
                &format!("{what}: masked vs relu_bwd first"),
                &folded[i],
                &unfolded[i],
            );
            // The TF32 fused chain rounds dpre to TF32 between its kernels, where a value on a rounding
            // boundary can land one TF32 ulp apart from the twin's: fused_tf32_stages checks that chain stage
            // by stage (small_gpu_tf32_fused_reduce_conv_matches_twin).
            if precision == Precision::Fp32 || i < 2 {
                assert_close(&format!("{what} vs twin"), &folded[i], &twin[i], 1e-4, 1e-3);
            }
        }
    }
}
