//! The CUDA kernels run under the CPU emulator (feature `emulation`) against their CPU twins, in both thread
//! orders, and the planted bugs the emulator must catch.

mod common;

use common::kernels::{mma_inputs, mma_tile_on, pool_on, train_ops_on};
use common::{assert_bits_eq, uniform};
use inception_cuda::cpu::CpuBackend;
use inception_cuda::emu::{planted, racecheck_build, EmuBackend, ThreadOrder};
use inception_cuda::launch::{self, LaunchDims, ELEMENTWISE_BLOCK, ELEMENTWISE_MAX_GRID};
use inception_cuda::{Backend, Error};

const ORDERS: [ThreadOrder; 2] = [ThreadOrder::Forward, ThreadOrder::Reverse];

/// Runs relu_fwd, relu_bwd and add_fwd on `b`, outputs pre-filled with NaN so unwritten elements show.
fn elementwise<B>(b: &B, n: usize) -> [Vec<f32>; 3]
where
    for<'a> B: Backend<Buf = Vec<f32>, View<'a> = &'a [f32], ViewMut<'a> = &'a mut [f32]>,
{
    let (x, dy) = (uniform(n as u64, n), uniform(n as u64 + 1, n));
    let mut y = vec![f32::NAN; n];
    b.relu_fwd(&mut y.as_mut_slice(), &x.as_slice()).unwrap();
    let mut dx = vec![f32::NAN; n];
    b.relu_bwd(&mut dx.as_mut_slice(), &dy.as_slice(), &y.as_slice())
        .unwrap();
    let mut s = vec![f32::NAN; n];
    b.add_fwd(&mut s.as_mut_slice(), &x.as_slice(), &dy.as_slice())
        .unwrap();
    [y, dx, s]
}

#[test]
fn emulated_elementwise_kernels_match_their_twins_bit_for_bit() {
    for n in [1, 255, 256, 257, 100_003] {
        let want = elementwise(&CpuBackend, n);
        for order in ORDERS {
            let got = elementwise(&EmuBackend { order }, n);
            for (name, g, w) in [
                ("relu_fwd", &got[0], &want[0]),
                ("relu_bwd", &got[1], &want[1]),
                ("add_fwd", &got[2], &want[2]),
            ] {
                assert_bits_eq(&format!("emulated {name}, n = {n}, {order:?}"), g, w);
            }
        }
    }
}

/// Past ELEMENTWISE_MAX_GRID · ELEMENTWISE_BLOCK elements the grid is capped: the real kernel's grid-stride
/// loop covers the tail, the planted kernel without one leaves it unwritten, and the parity check sees it.
#[test]
fn a_grid_that_misses_the_last_elements_is_caught() {
    let n = (ELEMENTWISE_MAX_GRID * ELEMENTWISE_BLOCK) as usize + 77;
    let x = uniform(3, n);
    let mut want = vec![0.0; n];
    inception_cuda::cpu::relu_fwd(&mut want, &x).unwrap();
    let emu = EmuBackend {
        order: ThreadOrder::Forward,
    };
    let mut y = vec![f32::NAN; n];
    emu.relu_fwd(&mut y.as_mut_slice(), &x.as_slice()).unwrap();
    assert_bits_eq("relu_fwd past the grid cap", &y, &want);
    let dims = launch::elementwise(n).unwrap();
    let mut planted_y = vec![f32::NAN; n];
    planted::relu_no_grid_stride(&mut planted_y, &x, dims, ThreadOrder::Forward).unwrap();
    let missed: Vec<usize> = (0..n)
        .filter(|&i| planted_y[i].to_bits() != want[i].to_bits())
        .collect();
    assert_eq!(
        missed,
        (n - 77..n).collect::<Vec<_>>(),
        "the planted kernel should miss exactly the last 77"
    );
}

#[test]
fn a_divergent_barrier_is_an_error() {
    for order in ORDERS {
        let mut y = vec![0.0; 64];
        let dims = LaunchDims {
            grid_y: 1,
            grid_z: 1,
            grid: 2,
            block: 32,
            shared_bytes: 0,
        };
        let err = planted::divergent_barrier(&mut y, dims, order).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Emulation {
                    op: "planted_divergent_barrier",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("divergent __syncthreads(): 16 threads wait"),
            "{err}"
        );
    }
}

/// Integer-valued inputs make every partial sum exact, so the expected values are exact too. The racecheck
/// build names the race instead.
#[test]
fn a_missing_barrier_shows_in_one_thread_order_and_the_fixed_kernel_passes_both() {
    let x: Vec<f32> = (0..128).map(|i| (i % 7) as f32 - 3.0).collect();
    let total: f32 = x.iter().sum();
    let mut wrong_orders = 0;
    for order in ORDERS {
        let mut y = [f32::NAN];
        match planted::missing_barrier_sum(&mut y, &x, order) {
            Err(e) if racecheck_build() => assert!(
                e.to_string().contains("hazard on __shared__ array"),
                "{order:?}: {e}"
            ),
            got => {
                got.unwrap();
                wrong_orders += usize::from(y[0].to_bits() != total.to_bits());
            }
        }
        let mut fixed = vec![f32::NAN; 5];
        planted::block_sum(&mut fixed, &x, order).unwrap();
        let warps: Vec<f32> = x.chunks(32).map(|w| w.iter().sum()).collect();
        assert_eq!(fixed[0], total, "{order:?}");
        assert_eq!(&fixed[1..], &warps[..], "{order:?}: warp shuffle sums");
    }
    assert!(
        racecheck_build() || wrong_orders >= 1,
        "the missing __syncthreads() went unnoticed in both thread orders"
    );
}

#[test]
fn a_shuffle_naming_an_exited_lane_is_an_error() {
    for order in ORDERS {
        let mut y = vec![0.0; 64];
        let err = planted::shfl_inactive_lane(&mut y, order).unwrap_err();
        assert!(err.to_string().contains("inactive lane"), "{err}");
    }
}

/// `cp.async` under emulation: the correct staging (issue, commit, wait, barrier, read) gives the input in both
/// thread orders; reading before the wait or without the barrier reads the old shared memory (NaN; the
/// racecheck build reports the race), a copy from a misaligned address and a thread that exits with its copy
/// in flight are errors.
#[test]
fn cp_async_misuse_is_caught() {
    use planted::CpAsyncBug;
    #[repr(C, align(16))]
    struct Aligned([f32; 4 * 64 + 4]);
    let mut x = Aligned([0.0; 4 * 64 + 4]);
    x.0.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
    let want: Vec<f32> = (0..4 * 64).map(|i| ((i + 4) % 256) as f32).collect();
    for order in ORDERS {
        let run = |bug| {
            let mut y = vec![0.0f32; 4 * 64];
            planted::cp_async_stage(&mut y, &x.0, bug, order).map(|()| y)
        };
        assert_eq!(
            run(CpAsyncBug::None).unwrap(),
            want,
            "{order:?}: correct staging"
        );
        for bug in [CpAsyncBug::ReadBeforeWait, CpAsyncBug::MissingBarrier] {
            if racecheck_build() {
                let err = run(bug).unwrap_err().to_string();
                assert!(err.contains("racecheck: "), "{order:?} {bug:?}: {err}");
                continue;
            }
            let y = run(bug).unwrap();
            let stale = y.iter().filter(|v| v.is_nan()).count();
            assert!(
                stale > 0,
                "{order:?} {bug:?}: every read saw the copied data"
            );
        }
        let err = run(CpAsyncBug::Misaligned).unwrap_err().to_string();
        assert!(err.contains("misaligned"), "{order:?}: {err}");
        let err = run(CpAsyncBug::NeverWaited).unwrap_err().to_string();
        assert!(err.contains("never waited for"), "{order:?}: {err}");
    }
}

/// Races no thread order of the plain emulator shows, which the racecheck build (CI runs it) reports with
/// both threads named: a double-buffered `cp.async` pipeline refilling a stage before the barrier that ends
/// the other threads' reads of it, and two blocks writing one output. The fixed pipeline passes, and a warp
/// exchanging through shared memory passes with its `__syncwarp()` and fails without it; a misaligned float4
/// load is an error.
#[test]
#[ignore = "needs the racecheck build: INCEPTION_CUDA_EMU_RACECHECK=1 cargo test --features emulation --test emulation -- --ignored racecheck"]
fn racecheck_reports_what_thread_orders_cannot_show() {
    assert!(
        racecheck_build(),
        "not the racecheck build: set INCEPTION_CUDA_EMU_RACECHECK=1"
    );
    #[repr(C, align(16))]
    struct Tiles([f32; 3 * 4 * 64]);
    let mut x = Tiles([0.0; 3 * 4 * 64]);
    x.0.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = (i % 97) as f32);
    let want: Vec<f32> = (0..4 * 64)
        .map(|i| (0..3).map(|k| x.0[k * 256 + (i + 4) % 256]).sum::<f32>())
        .collect();
    for order in ORDERS {
        let mut y = vec![0.0f32; 4 * 64];
        planted::cp_async_pipeline(&mut y, &x.0, false, order).unwrap();
        assert_eq!(y, want, "{order:?}: the pipeline with its barrier");
        let err = planted::cp_async_pipeline(&mut y, &x.0, true, order)
            .unwrap_err()
            .to_string();
        // Seen from the copy (it overwrites what a neighbour read) or from the reader (it reads a copy in flight).
        assert!(
            err.contains("write-after-read hazard on __shared__ array")
                || err.contains("read of a cp.async destination in flight"),
            "{order:?}: {err}"
        );

        let mut out = vec![0.0f32; 64];
        let err = planted::blocks_share_output(&mut out, 3, order)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("write-after-write hazard on global memory")
                && err.contains("the blocks of a launch are unordered"),
            "{order:?}: {err}"
        );
        planted::blocks_share_output(&mut out, 1, order).unwrap();

        let mut lanes = [f32::NAN; 32];
        planted::warp_exchange(&mut lanes, true, order).unwrap();
        let next: Vec<f32> = (0..32).map(|l| ((l + 1) % 32) as f32).collect();
        assert_eq!(&lanes[..], &next[..], "{order:?}");
        let err = planted::warp_exchange(&mut lanes, false, order)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hazard on __shared__ array"),
            "{order:?}: {err}"
        );
    }
    // The same build checks the alignment of vector loads and stores, which a GPU faults on.
    #[repr(C, align(16))]
    struct Eight([f32; 8]);
    let x = Eight([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let mut y = [0.0f32; 32];
    planted::misaligned_float4(&mut y, &x.0, 4).unwrap();
    assert!(y.iter().all(|&v| v == 26.0), "{y:?}");
    let err = planted::misaligned_float4(&mut y, &x.0, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("misaligned 16-byte vector access"), "{err}");
}

/// The plain emulator runs the same planted races without an error, with the results of its one schedule:
/// the pipeline's race is invisible (its copies land at the wait) and the last block wins. This is why CI
/// also runs the racecheck build, where both are errors.
#[test]
fn the_plain_emulator_cannot_see_those_races() {
    #[repr(C, align(16))]
    struct Tiles([f32; 3 * 4 * 32]);
    let x = Tiles([1.0; 3 * 4 * 32]);
    for order in ORDERS {
        let mut y = vec![0.0f32; 4 * 32];
        let pipeline = planted::cp_async_pipeline(&mut y, &x.0, true, order);
        let mut out = vec![0.0f32; 32];
        let blocks = planted::blocks_share_output(&mut out, 3, order);
        if racecheck_build() {
            assert!(pipeline.is_err() && blocks.is_err(), "{order:?}");
            continue;
        }
        pipeline.unwrap();
        blocks.unwrap();
        assert!(y.iter().all(|&v| v == 3.0), "{order:?}: {y:?}");
        assert!(out.iter().all(|&v| v == 2.0), "{order:?}: {out:?}");
    }
}

#[test]
fn writing_past_dynamic_shared_memory_is_an_error() {
    let mut y = vec![0.0; 64];
    if inception_cuda::emu::asan_build() {
        // Under ASan the buffer has no guard bytes (ASan's redzones take their place, and a report ends the
        // process), so the launcher refuses the overflowing launch; the ASan test covers that kind of bug.
        let err =
            planted::dynamic_shared_overflow(&mut y, 63 * 4, ThreadOrder::Forward).unwrap_err();
        assert!(err.to_string().contains("under ASan"), "{err}");
        return;
    }
    planted::dynamic_shared_overflow(&mut y, 64 * 4, ThreadOrder::Forward).unwrap();
    assert_eq!(y, (0..64).map(|i| i as f32).collect::<Vec<_>>());
    let err = planted::dynamic_shared_overflow(&mut y, 63 * 4, ThreadOrder::Forward).unwrap_err();
    assert!(
        err.to_string()
            .contains("wrote past its 252 bytes of dynamic shared memory"),
        "{err}"
    );
}

/// Under the AddressSanitizer build (`INCEPTION_CUDA_EMU_ASAN=1`, which CI runs), a planted out-of-bounds
/// write in a kernel is reported. The report ends the process, so the write runs in a child process.
#[test]
#[ignore = "needs the ASan build: INCEPTION_CUDA_EMU_ASAN=1 cargo test --features emulation --test emulation -- --ignored"]
fn asan_reports_an_out_of_bounds_write() {
    assert!(
        inception_cuda::emu::asan_build(),
        "this test needs the ASan build (INCEPTION_CUDA_EMU_ASAN=1)"
    );
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "asan_child_oob_write",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EMU_PLANTED_OOB", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the child survived an out-of-bounds write:\n{stderr}"
    );
    assert!(
        stderr.contains("AddressSanitizer") && stderr.contains("heap-buffer-overflow"),
        "{stderr}"
    );
    assert!(
        stderr.contains("planted_oob_write"),
        "the report should name the kernel:\n{stderr}"
    );
}

/// The child of `asan_reports_an_out_of_bounds_write`; does nothing unless that test started it.
#[test]
#[ignore = "run by asan_reports_an_out_of_bounds_write in a child process"]
fn asan_child_oob_write() {
    if std::env::var_os("EMU_PLANTED_OOB").is_none() {
        panic!("run through asan_reports_an_out_of_bounds_write");
    }
    let mut y = vec![0.0f32; 100];
    // SAFETY: none, on purpose: this process is the ASan child, stopped at the out-of-bounds write.
    let _ = unsafe {
        planted::oob_write(
            &mut y,
            LaunchDims {
                grid_y: 1,
                grid_z: 1,
                grid: 1,
                block: 128,
                shared_bytes: 0,
            },
        )
    };
}

/// Inputs with ties and a NaN, so the tie rule and NaN handling are exercised, not only random values.
fn pool_input(len: usize, seed: u64) -> Vec<f32> {
    let mut x: Vec<f32> = uniform(seed, len)
        .iter()
        .map(|v| (v * 4.0).round())
        .collect(); // many ties
    if len > 10 {
        x[len / 3] = f32::NAN;
    }
    x
}

#[test]
fn emulated_maxpool_matches_its_twin_bit_for_bit() {
    use inception_cuda::shape::PoolShape;
    // 40 rows: three row tiles of the backward (16, 16, 8); 700 columns: tiles of 3 rows (as many as fit in
    // 48 KiB with their halo, winners and dy); 7,000 columns: rows too wide for the tiles (the
    // one-thread-per-cell path).
    for (n, c, h, w) in [
        (1, 1, 5, 5),
        (3, 2, 7, 7),
        (2, 3, 28, 28),
        (1, 1, 1, 3),
        (1, 2, 40, 5),
        (1, 1, 8, 700),
        (1, 1, 3, 7000),
        // Planes one and two cells wide or high: every clipped window of the twin's separable passes.
        (1, 1, 1, 1),
        (1, 1, 6, 1),
        (2, 1, 2, 2),
        (1, 3, 1, 9),
    ] {
        let s = PoolShape { n, c, h, w };
        let len = n * c * h * w;
        let (x, dy, dx0) = (pool_input(len, 1), uniform(2, len), uniform(3, len));
        let want = pool_on(&CpuBackend, &s, &x, &dy, &dx0);
        for order in ORDERS {
            let got = pool_on(&EmuBackend { order }, &s, &x, &dy, &dx0);
            for (k, name) in ["fwd", "bwd", "bwd accumulate"].iter().enumerate() {
                assert_bits_eq(
                    &format!("emulated maxpool3x3s1 {name} {s:?} {order:?}"),
                    &got[k],
                    &want[k],
                );
            }
        }
    }
}

/// A plane past the kernels' 32-bit index is refused alike by the twin and by the kernels' launcher, even in
/// an empty batch.
#[test]
fn maxpool_planes_past_a_32_bit_index_are_refused_on_every_backend() {
    use inception_cuda::shape::PoolShape;
    fn refused<B: Backend>(b: &B) {
        for (h, w) in [(1 << 16, 1 << 15), (1 << 16, 1 << 16), (usize::MAX / 2, 3)] {
            let s = PoolShape { n: 0, c: 1, h, w };
            let (mut dx, e) = (b.alloc_zeros(0).unwrap(), b.alloc_zeros(0).unwrap());
            let ev = b.view(&e, 0..0).unwrap();
            let fwd = b.maxpool3x3s1_fwd(&mut b.view_mut(&mut dx, 0..0).unwrap(), &ev, &s);
            let bwd =
                b.maxpool3x3s1_bwd(&mut b.view_mut(&mut dx, 0..0).unwrap(), &ev, &ev, &s, false);
            for (r, op) in [(fwd, "maxpool3x3s1_fwd"), (bwd, "maxpool3x3s1_bwd")] {
                assert!(
                    matches!(&r, Err(Error::InvalidShape { op: o, .. }) if *o == op),
                    "{} {h}×{w}: {r:?}",
                    b.name()
                );
            }
        }
    }
    refused(&CpuBackend);
    refused(&EmuBackend {
        order: ThreadOrder::Forward,
    });
}

/// Dropout, Adam and softmax_xent: the same operations in the same order on the same libm, so bit for bit
/// here (on the GPU, expf/logf differ by ulps and softmax_xent's test allows 1e-5).
#[test]
fn emulated_dropout_adam_and_softmax_match_their_twins_bit_for_bit() {
    let n = 10_007;
    let (x, g) = (uniform(4, n), uniform(5, n));
    for (rows, classes) in [(1, 10), (50, 10), (300, 7)] {
        let logits: Vec<f32> = uniform(7, rows * classes).iter().map(|v| v * 8.0).collect();
        let labels: Vec<u32> = (0..rows as u32)
            .map(|i| (i * 7 + 3) % classes as u32)
            .collect();
        let want = train_ops_on(&CpuBackend, &x, &g, &logits, &labels);
        for order in ORDERS {
            let got = train_ops_on(&EmuBackend { order }, &x, &g, &logits, &labels);
            for (k, (w, o)) in want.iter().zip(&got).enumerate() {
                assert_bits_eq(
                    &format!("emulated training op output {k}, {rows}×{classes}, {order:?}"),
                    o,
                    w,
                );
            }
        }
    }
    let emu = EmuBackend {
        order: ThreadOrder::Forward,
    };
    let (mut loss, mut d) = (vec![0.0], vec![0.0; 20]);
    let logits = vec![0.0; 20];
    let err = emu
        .softmax_xent(
            &mut loss.as_mut_slice(),
            &mut d.as_mut_slice(),
            &logits.as_slice(),
            &vec![1, 10],
            10,
        )
        .unwrap_err();
    assert!(matches!(err, Error::OutOfRange { .. }), "{err:?}");
}

fn conv_inputs(s: &inception_cuda::shape::ConvShape) -> [Vec<f32>; 5] {
    [
        uniform(11, s.n * s.c_in * s.h * s.w),
        uniform(12, s.c_out * s.c_in * s.k * s.k),
        uniform(13, s.c_out),
        uniform(14, s.n * s.c_total * s.h * s.w),
        uniform(15, s.n * s.c_in * s.h * s.w),
    ]
}

#[test]
fn emulated_convs_match_their_twins() {
    use common::kernels::{assert_outputs, conv_on, conv_shapes, CONV_TOL};
    for s in conv_shapes() {
        let [x, w, b, dy, dx0] = conv_inputs(&s);
        let want = conv_on(&CpuBackend, &s, &x, &w, &b, &dy, &dx0);
        for order in ORDERS {
            let got = conv_on(&EmuBackend { order }, &s, &x, &w, &b, &dy, &dx0);
            assert_outputs(
                &format!("emulated conv {s:?} {order:?}"),
                &CONV_TOL,
                &got,
                &want,
            );
        }
    }
}

/// The tensor-core convs (conv_fwd_tf32, conv_dgrad_tf32, conv_wgrad_tf32) against the TF32 twins, which
/// round the same operands the same way, on shapes at every tile edge (see `conv_tf32_shapes`), in both
/// thread orders; and the rounding shows: the same outputs of the fp32 twin lie outside the tolerance, so
/// an fp32 kernel in place of a TF32 one fails this test.
#[test]
fn emulated_tf32_convs_match_their_twins() {
    use common::kernels::{
        assert_outputs, conv_on, conv_tf32_shapes, differs_beyond, CONV_TF32_TOL,
    };
    use inception_cuda::shape::Precision;
    for s in conv_tf32_shapes() {
        let [x, w, b, dy, dx0] = conv_inputs(&s);
        let want = conv_on(&CpuBackend, &s, &x, &w, &b, &dy, &dx0);
        let fp32 = conv_on(
            &CpuBackend,
            &s.with_precision(Precision::Fp32),
            &x,
            &w,
            &b,
            &dy,
            &dx0,
        );
        for order in ORDERS {
            let got = conv_on(&EmuBackend { order }, &s, &x, &w, &b, &dy, &dx0);
            assert_outputs(
                &format!("emulated tf32 conv {s:?} {order:?}"),
                &CONV_TF32_TOL,
                &got,
                &want,
            );
            for i in [1, 2, 4] {
                let (name, atol, rtol) = CONV_TF32_TOL[i];
                assert!(
                    differs_beyond(&got[i], &fp32[i], atol, rtol),
                    "{s:?} {order:?}: tf32 {name} is within fp32's tolerance of the fp32 twin"
                );
            }
        }
    }
}

/// A batch of no images: the weight and bias gradients are zeros (no split to sum), written over whatever
/// the buffers held, on the twins and the emulated kernels alike.
#[test]
fn conv_gradients_of_an_empty_batch_are_zero() {
    use inception_cuda::shape::ConvShape;
    let s = ConvShape::new(0, 3, 4, 5, 5, 3);
    let wl = 4 * 3 * 9;
    for order in ORDERS {
        let b = EmuBackend { order };
        for backend_name in ["cpu", "emulated"] {
            let mut dwdb = vec![f32::NAN; wl + 4];
            let (dy, x): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
            if backend_name == "cpu" {
                CpuBackend
                    .conv_wgrad(
                        &mut dwdb.as_mut_slice(),
                        &dy.as_slice(),
                        None,
                        &x.as_slice(),
                        &s,
                    )
                    .unwrap();
            } else {
                b.conv_wgrad(
                    &mut dwdb.as_mut_slice(),
                    &dy.as_slice(),
                    None,
                    &x.as_slice(),
                    &s,
                )
                .unwrap();
            }
            assert!(
                dwdb.iter().all(|&v| v == 0.0),
                "{backend_name} {order:?}: {dwdb:?}"
            );
        }
    }
}

#[test]
fn emulated_fused_reduce_conv_matches_its_twin() {
    use common::kernels::{assert_outputs, fused_on, fused_shapes, fused_tiled_shapes, FUSED_TOL};
    let tiled = fused_tiled_shapes().into_iter().map(|s| (s, &ORDERS[..1])); // slow to emulate: one order
    for (s, orders) in fused_shapes()
        .into_iter()
        .map(|s| (s, &ORDERS[..]))
        .chain(tiled)
    {
        let x = uniform(21, s.n * s.c_in * s.h * s.w);
        let plen = s.c_mid * s.c_in + s.c_mid + s.c_out * s.c_mid * s.k * s.k + s.c_out;
        let params = uniform(22, plen);
        let (dy, dx0) = (
            uniform(23, s.n * s.c_total * s.h * s.w),
            uniform(24, x.len()),
        );
        let want = fused_on(&CpuBackend, &s, &x, &params, &dy, &dx0);
        for &order in orders {
            let got = fused_on(&EmuBackend { order }, &s, &x, &params, &dy, &dx0);
            assert_outputs(
                &format!("emulated reduce_conv {s:?} {order:?}"),
                &FUSED_TOL,
                &got,
                &want,
            );
        }
    }
}

/// The fused reduce conv in TF32 (reduce_conv_fwd_tf32 with the reduced map on chip; the backward's
/// reduce_conv_dmid_tf32 and TF32 conv kernels) against the TF32 twin, in both thread orders (the maps too
/// large for one block, split into row tiles of padded planes, in one: slow to emulate); and the rounding
/// shows in the output and every gradient (an fp32 kernel in place of a TF32 one fails).
#[test]
fn emulated_tf32_fused_reduce_conv_matches_its_twin() {
    use common::kernels::{
        assert_outputs, differs_beyond, fused_on, fused_tf32_shapes, fused_tf32_stages,
        fused_tiled_shapes, FUSED_TF32_TOL,
    };
    use inception_cuda::shape::Precision;
    let tiled = fused_tiled_shapes()
        .into_iter()
        .map(|s| (s.with_precision(Precision::Tf32), &ORDERS[..1]));
    for (s, orders) in fused_tf32_shapes()
        .into_iter()
        .map(|s| (s, &ORDERS[..]))
        .chain(tiled)
    {
        let x = uniform(21, s.n * s.c_in * s.h * s.w);
        let plen = s.c_mid * s.c_in + s.c_mid + s.c_out * s.c_mid * s.k * s.k + s.c_out;
        let params = uniform(22, plen);
        let (dy, dx0) = (
            uniform(23, s.n * s.c_total * s.h * s.w),
            uniform(24, x.len()),
        );
        let fp32 = fused_on(
            &CpuBackend,
            &s.with_precision(Precision::Fp32),
            &x,
            &params,
            &dy,
            &dx0,
        );
        for &order in orders {
            let [got, want] = fused_tf32_stages(&EmuBackend { order }, &s, &x, &params, &dy, &dx0);
            assert_outputs(
                &format!("emulated tf32 reduce_conv {s:?} {order:?}"),
                &FUSED_TF32_TOL,
                &got,
                &want,
            );
            for i in [0, 2, 3] {
                let (name, atol, rtol) = FUSED_TF32_TOL[i];
                assert!(
                    differs_beyond(&got[i], &fp32[i], atol, rtol),
                    "{s:?} {order:?}: tf32 {name} is within fp32's tolerance of the fp32 twin"
                );
            }
        }
    }
}

/// One whole Inception module (all four branches written in place, the module input's gradient accumulated
/// from four branches) under emulation against the twins, in both precisions.
#[test]
fn emulated_inception_module_matches_its_twin() {
    use common::kernels::{assert_outputs, module_on, MODULE_TOL};
    use inception_cuda::nn::{InceptionModule, InceptionWidths};
    use inception_cuda::shape::Precision;
    let (n, h, w) = (2, 7, 7);
    let x = uniform(31, n * 3 * h * w);
    let mut twins = Vec::new();
    for p in Precision::ALL {
        let m = InceptionModule::new(3, InceptionWidths::uniform(4, 2)).with_precision(p);
        let params = uniform(32, m.layout().len());
        let dy = uniform(33, n * m.c_out() * h * w);
        let want = module_on(&CpuBackend, &m, (n, h, w), &x, &params, &dy);
        twins.push(want[0].clone());
        for order in ORDERS {
            let got = module_on(&EmuBackend { order }, &m, (n, h, w), &x, &params, &dy);
            assert_outputs(
                &format!("emulated {p:?} module {order:?}"),
                &MODULE_TOL,
                &got,
                &want,
            );
        }
    }
    assert!(
        twins[0] != twins[1],
        "the TF32 module's output equals the fp32 one: the precision did not reach the convs"
    );
}

/// Regression of the H100 round: image 26 of the module-2 parity inputs (seeds 31, 32, 33 at batch 50) has
/// one module output whose pre-activation the kernels and the twin round to opposite sides of 0. With each
/// backend running its backward on its own forward, that one ReLU kink moved 3,085 values of dx (on the GPU
/// and under emulation alike); `module_on` now feeds both backwards the twin's forward, and the gradients
/// agree. The image alone reproduces it (the module treats images independently). The test also checks that
/// the flip is still there, so that it keeps testing what it is named for: a change of summation order in the
/// kernels or twins can move it, and then another image or seed with a flip must be found.
#[test]
fn emulated_module_2_parity_survives_a_relu_kink() {
    use common::kernels::{assert_outputs, module_on, MODULE_TOL};
    use inception_cuda::nn::{InceptionModule, InceptionWidths};
    let m = InceptionModule::new(128, InceptionWidths::uniform(64, 16));
    let (n, h, w, img) = (50, 28, 28, 26);
    let one = |v: Vec<f32>| -> Vec<f32> {
        let per = v.len() / n;
        v[img * per..(img + 1) * per].to_vec()
    };
    let x = one(uniform(31, n * 128 * h * w));
    let params = uniform(32, m.layout().len());
    let dy = one(uniform(33, n * m.c_out() * h * w));
    let want = module_on(&CpuBackend, &m, (1, h, w), &x, &params, &dy);
    let got = module_on(
        &EmuBackend {
            order: ThreadOrder::Forward,
        },
        &m,
        (1, h, w),
        &x,
        &params,
        &dy,
    );
    // the kink is there: the two forwards disagree on which side of 0 one output lies
    let flips = (0..want[0].len())
        .filter(|&i| (want[0][i] > 0.0) != (got[0][i] > 0.0))
        .count();
    assert!(
        flips >= 1,
        "no ReLU kink flip in this input any more: {flips}"
    );
    assert_outputs("emulated module 2, image 26", &MODULE_TOL, &got, &want);
}

/// The GEMMs at small shapes: an odd one inside one tile (scalar loads), one with split-K (3 slices of k) and
/// two column tiles, one at the edges of the float4 loads and stores, and one whose strides are all multiples
/// of 4 (the float4 paths throughout) run also on views one float into their buffers (16-byte misaligned
/// pointers: the scalar paths).
#[test]
fn emulated_linear_kernels_match_their_twins() {
    use common::kernels::assert_linear_matches_twin;
    use inception_cuda::shape::LinearShape;
    let emu = EmuBackend {
        order: ThreadOrder::Reverse,
    };
    for (s, offsets) in [
        (LinearShape::new(5, 37, 13), &[0][..]),
        (LinearShape::new(3, 9000, 70), &[0]),
        // float4 paths with tails: two row tiles (66 rows), a 4-wide last k slice (4100 = 4096 + 4), 70
        // columns (a partial float4 group at the edge)
        (LinearShape::new(66, 4100, 70), &[0]),
        (LinearShape::new(9, 2060, 72), &[0, 1]),
    ] {
        assert_linear_matches_twin("emulated linear", &emu, &s, offsets);
    }
}

/// The tensor-core (TF32) linear kernels against their twins, which round the same operands the same way, on
/// shapes that hit every tile edge (rows, columns and k not multiples of the tiles; several split-K slices),
/// one with every stride a multiple of 4 (the cp.async tiles) also on views one float into their buffers
/// (16-byte misaligned: the scalar paths); and the rounding shows in every product (an fp32 kernel in place of
/// a TF32 one fails).
#[test]
fn emulated_tf32_linear_kernels_match_their_twins() {
    use common::kernels::{assert_linear_matches_twin, differs_beyond, linear_on, LINEAR_TOL};
    use inception_cuda::shape::{LinearShape, Precision};
    let emu = EmuBackend {
        order: ThreadOrder::Forward,
    };
    for (s, offsets) in [
        (LinearShape::new(5, 37, 13), &[0][..]),
        (LinearShape::new(66, 2100, 70), &[0]),
        (LinearShape::new(17, 9, 130), &[0]),
        (LinearShape::new(17, 2060, 72), &[0, 1]),
    ] {
        let s = s.with_precision(Precision::Tf32);
        let (inputs, want) = assert_linear_matches_twin("emulated tf32 linear", &emu, &s, offsets);
        let fp32 = linear_on(&CpuBackend, &s.with_precision(Precision::Fp32), &inputs, 0);
        for (i, &(name, atol, rtol)) in LINEAR_TOL[..3].iter().enumerate() {
            assert!(
                differs_beyond(&fp32[i], &want[i], atol, rtol),
                "{s:?}: the TF32 twin's {name} is within tolerance of fp32's"
            );
        }
    }
}

/// The fused weight gradient + Adam: bit for bit the unfused kernels' result (same GEMM core, same update
/// arithmetic), and within the GEMM tolerance of its CPU twin; at an odd shape (scalar loads and
/// stores), one at the float4 edges (partial column group, a row tile of 6, 66 = 64 + 2 rows of k), and
/// an empty batch (zero gradient: Adam still decays the moments).
#[test]
fn emulated_linear_wgrad_adam_is_wgrad_then_adam() {
    use inception_cuda::shape::LinearShape;
    let emu = EmuBackend {
        order: ThreadOrder::Reverse,
    };
    let empty_batch = LinearShape::new(0, 8, 3);
    let [odd, edges] = common::kernels::WGRAD_ADAM_SMALL_SHAPES;
    common::kernels::assert_wgrad_adam("emulated", &emu, &[odd, edges, empty_batch]);
}

/// linear_wgrad_adam on the tensor cores equals linear_wgrad on them then adam_step, bit for bit.
#[test]
fn emulated_tf32_linear_wgrad_adam_is_wgrad_then_adam() {
    use inception_cuda::shape::Precision;
    let emu = EmuBackend {
        order: ThreadOrder::Reverse,
    };
    let shapes =
        common::kernels::WGRAD_ADAM_SMALL_SHAPES.map(|s| s.with_precision(Precision::Tf32));
    common::kernels::assert_wgrad_adam("emulated tf32", &emu, &shapes);
}

/// The small net of the emulated step tests (dropout on) and a batch of 3 images drawn from `seed`.
fn small_net(seed: u64) -> (inception_cuda::nn::MnistConfig, Vec<f32>) {
    let cfg = inception_cuda::nn::MnistConfig::tiny();
    let images = uniform(seed, 3 * 36)
        .iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    (cfg, images)
}

/// A training step on emulated kernels is `forward_backward` then Adam over every parameter, bit for bit:
/// fc1's fused weight update included (its one-pass backward + Adam), in both precisions.
#[test]
fn emulated_training_step_is_forward_backward_then_adam() {
    use inception_cuda::nn::InceptionMnist;
    use inception_cuda::shape::Precision;
    let (cfg, images) = small_net(52);
    let labels = [1u32, 9, 4];
    let emu = EmuBackend {
        order: ThreadOrder::Forward,
    };
    for p in Precision::ALL {
        common::kernels::assert_step_is_forward_backward_then_adam(
            &format!("emulated {p:?} step"),
            || {
                let mut net = InceptionMnist::new(emu, cfg, 11).unwrap();
                net.set_precision(p).unwrap();
                net
            },
            &images,
            &labels,
        );
        common::kernels::assert_step_is_forward_backward_then_adam(
            &format!("cpu {p:?} step"),
            || {
                let mut net = InceptionMnist::new(CpuBackend, cfg, 11).unwrap();
                net.set_precision(p).unwrap();
                net
            },
            &images,
            &labels,
        );
    }
}

/// A whole training step of a small net (dropout on) with every kernel emulated, against the twins: the
/// loss and every gradient.
#[test]
fn emulated_training_step_matches_its_twin() {
    use common::kernels::step_on;
    let (cfg, images) = small_net(51);
    let labels = [3u32, 8, 0];
    let (loss, grads) = step_on(CpuBackend, cfg, &images, &labels);
    let (eloss, egrads) = step_on(
        EmuBackend {
            order: ThreadOrder::Forward,
        },
        cfg,
        &images,
        &labels,
    );
    assert!(
        (eloss - loss).abs() <= 1e-5 * loss.abs(),
        "loss {eloss} vs twin {loss}"
    );
    for ((name, g), (_, e)) in grads.iter().zip(&egrads) {
        common::assert_close(&format!("emulated step grad {name}"), e, g, 1e-5, 1e-3);
    }
}

/// A planned Inception module (inference plan: the branches written in place as channel slices of one
/// buffer, the ReLU in their epilogues) on emulated kernels against the CPU plan.
#[test]
fn emulated_planned_module_matches_the_cpu_plan() {
    use inception_cuda::graph::{Graph, Params, Plan};
    use inception_cuda::nn::{inception, InceptionWidths};
    fn run<B: inception_cuda::Backend>(b: B, x: &[f32]) -> Vec<f32> {
        let mut g = Graph::new();
        let xv = g.input("x", &[3, 7, 7]).unwrap();
        let y = inception(&mut g, "m", xv, InceptionWidths::uniform(4, 2)).unwrap();
        let b = std::sync::Arc::new(b);
        let mut params = Params::new(b.clone(), &g, 0).unwrap();
        params.set_all(&uniform(62, params.len())).unwrap();
        let mut plan = Plan::inference(b, &g, 2, y).unwrap();
        plan.set_input("x", x).unwrap();
        plan.forward(&params).unwrap();
        plan.output().unwrap()
    }
    let x = uniform(61, 2 * 3 * 49);
    let want = run(CpuBackend, &x);
    let got = run(
        EmuBackend {
            order: ThreadOrder::Reverse,
        },
        &x,
    );
    common::assert_close("emulated planned module", &got, &want, 1e-5, 1e-4);
}

/// A planned training step of the small MNIST net (dropout on) on emulated kernels against the CPU plan:
/// the loss, every gradient, and the parameters after one Adam step; in fp32 and in TF32 (every conv and
/// linear product on the tensor-core kernels, against the twins that round the same operands). The TF32
/// tolerances are fp32's: both sides multiply the same rounded operands and differ in the order of their
/// f32 sums (activations rounded again as the next layer's operands can land one TF32 ulp apart where a
/// sum sits at a rounding boundary, a rare event these inputs do not hit). Every nonzero gradient of the
/// TF32 step must differ from the fp32 step's by more than fp32 noise.
#[test]
fn emulated_planned_step_matches_the_cpu_plan() {
    use inception_cuda::graph::{Params, Plan, Precision, TrainOptions};
    fn run<B: inception_cuda::Backend>(
        b: B,
        precision: Precision,
        images: &[f32],
        labels: &[u32],
    ) -> (f32, Vec<Vec<f32>>, Vec<f32>) {
        let (cfg, _) = small_net(0);
        let def = cfg.graph().unwrap();
        let b = std::sync::Arc::new(b);
        let mut params = Params::new(b.clone(), &def.graph, 7).unwrap();
        let opts = TrainOptions {
            precision,
            ..TrainOptions::default()
        };
        let mut plan = Plan::train_with(b, &def.graph, 3, &opts).unwrap();
        plan.set_input("images", images).unwrap();
        plan.set_labels(labels).unwrap();
        plan.forward_backward(&mut params).unwrap();
        let grads = params
            .table()
            .iter()
            .map(|e| params.grad(&e.name).unwrap())
            .collect();
        let loss = plan.loss().unwrap();
        plan.step(&mut params, 1e-3).unwrap();
        (loss, grads, params.values().unwrap())
    }
    fn weight_names() -> Vec<String> {
        let (cfg, _) = small_net(0);
        let def = cfg.graph().unwrap();
        let params = Params::new(std::sync::Arc::new(CpuBackend), &def.graph, 7).unwrap();
        params.table().iter().map(|e| e.name.clone()).collect()
    }
    let (_, images) = small_net(53);
    let labels = [2u32, 5, 7];
    let (_, fp32_grads, _) = run(CpuBackend, Precision::Fp32, &images, &labels);
    for precision in Precision::ALL {
        let (loss, grads, after) = run(CpuBackend, precision, &images, &labels);
        let (eloss, egrads, eafter) = run(
            EmuBackend {
                order: ThreadOrder::Forward,
            },
            precision,
            &images,
            &labels,
        );
        assert!(
            (eloss - loss).abs() <= 1e-5 * loss.abs(),
            "{precision:?}: loss {eloss} vs CPU plan {loss}"
        );
        for (i, (g, e)) in grads.iter().zip(&egrads).enumerate() {
            common::assert_close(
                &format!("{precision:?} emulated planned step grad {i}"),
                e,
                g,
                1e-5,
                1e-3,
            );
        }
        common::assert_close(
            &format!("{precision:?} emulated planned step, parameters after Adam"),
            &eafter,
            &after,
            1e-5,
            1e-4,
        );
        if precision == Precision::Tf32 {
            // every nonzero weight gradient (a product's result) shows the rounding, the convs' included:
            // TF32 operands move the products by up to 2⁻¹¹ relative each, far beyond fp32's
            // summation-order noise (1e-5 relative; this small net's gradients go down to 1e-6, so no
            // absolute tolerance); some of its channels are dead (4 of its 14 weight gradients are zero)
            let names = weight_names();
            let weights = names.iter().filter(|n| n.ends_with("weight")).count();
            let mut checked = 0;
            for (i, (g, f)) in egrads.iter().zip(&fp32_grads).enumerate() {
                if !names[i].ends_with("weight") || f.iter().all(|&v| v == 0.0) {
                    continue;
                }
                checked += 1;
                assert!(
                    common::kernels::differs_beyond(g, f, 0.0, 1e-5),
                    "TF32 gradient of {} equals the fp32 step's within fp32 noise",
                    names[i]
                );
            }
            assert!(
                2 * checked >= weights,
                "{checked} of {weights} weight gradients live"
            );
        }
    }
}

/// The emulator's tensor-core collective (kernels/mma.cuh) with the PTX ISA's fragment layout equals the CPU
/// twin bit for bit (same TF32 rounding, products summed in k order), in both thread orders.
#[test]
fn emulated_mma_tile_matches_its_twin_bit_for_bit() {
    for (seed, exact) in [(1, true), (2, false), (3, false)] {
        let [a, b, c] = mma_inputs(seed, exact);
        let want = mma_tile_on(&CpuBackend, &a, &b, &c);
        assert!(want.iter().all(|v| v.is_finite()));
        for order in ORDERS {
            let got = mma_tile_on(&EmuBackend { order }, &a, &b, &c);
            assert_bits_eq(
                &format!("emulated mma_tf32_tile, seed {seed}, {order:?}"),
                &got,
                &want,
            );
        }
    }
}

/// A kernel that loads one fragment register from the wrong place (a1 and a2 swapped) fails the comparison
/// the correct kernel passes.
#[test]
fn a_wrong_mma_fragment_index_is_caught() {
    let [a, b, c] = mma_inputs(4, false);
    let want = mma_tile_on(&CpuBackend, &a, &b, &c);
    for order in ORDERS {
        let mut d = vec![f32::NAN; 128];
        planted::mma_wrong_fragment(&mut d, &a, &b, &c, order).unwrap();
        let wrong = d
            .iter()
            .zip(&want)
            .filter(|(g, w)| g.to_bits() != w.to_bits())
            .count();
        assert!(wrong >= 64, "{order:?}: only {wrong} of 128 outputs differ");
    }
}

/// fc1's one-pass backward + Adam equals linear_dgrad then linear_wgrad_adam bit for bit, on shapes that hit
/// every strip and row-chunk edge (and the two-pass fallback past 64 rows), in both precisions.
#[test]
fn emulated_linear_bwd_adam_is_dgrad_then_wgrad_adam() {
    let emu = EmuBackend {
        order: ThreadOrder::Reverse,
    };
    common::kernels::assert_bwd_adam("emulated", &emu, &common::kernels::bwd_adam_shapes());
}

/// The evaluation's correct count on the device equals the twin's (ties: the first largest logit; rows with
/// a NaN counted apart), overwriting and accumulating, on more rows than the block's threads.
#[test]
fn emulated_count_correct_matches_its_twin() {
    fn counts<B>(b: &B, logits: &[f32], labels: &[u32]) -> Vec<f32>
    where
        for<'a> B: Backend<
            Buf = Vec<f32>,
            Labels = Vec<u32>,
            View<'a> = &'a [f32],
            ViewMut<'a> = &'a mut [f32],
        >,
    {
        let labels = labels.to_vec();
        let mut count = vec![5.0f32, 1.0];
        b.count_correct(&mut count.as_mut_slice(), &logits, &labels, 10, true)
            .unwrap();
        let accumulated = count.clone();
        b.count_correct(&mut count.as_mut_slice(), &logits, &labels, 10, false)
            .unwrap();
        [accumulated, count].concat()
    }
    let rows = 300;
    let mut logits: Vec<f32> = uniform(9, rows * 10)
        .iter()
        .map(|v| (v * 3.0).round())
        .collect(); // ties
    logits[7 * 10 + 3] = f32::NAN;
    let labels: Vec<u32> = uniform(10, rows)
        .iter()
        .map(|v| ((v + 1.0) * 5.0) as u32 % 10)
        .collect();
    let want = counts(&CpuBackend, &logits, &labels);
    assert!(want[2] > 0.0 && want[3] == 1.0, "{want:?}");
    for order in ORDERS {
        let got = counts(&EmuBackend { order }, &logits, &labels);
        assert_bits_eq(&format!("emulated count_correct, {order:?}"), &got, &want);
    }
}

/// A batch gathered by `b` (outputs pre-filled: NaN pixels, `u32::MAX` labels): from the device step counter
/// `counter` when given, else from image `start`.
fn gathered<B>(
    b: &B,
    data: &inception_cuda::data::Dataset,
    batch: usize,
    counter: Option<u32>,
    start: usize,
) -> inception_cuda::Result<(Vec<f32>, Vec<u32>)>
where
    for<'a> B: Backend<
        Buf = Vec<f32>,
        Labels = Vec<u32>,
        View<'a> = &'a [f32],
        ViewMut<'a> = &'a mut [f32],
    >,
{
    let mut images = vec![f32::NAN; batch * data.pixels()];
    let mut labels = vec![u32::MAX; batch];
    let all = data.images.as_slice();
    match counter {
        Some(c) => b.batch_gather_at(
            &mut images.as_mut_slice(),
            &mut labels,
            &all,
            &data.labels,
            &vec![c],
        )?,
        None => b.batch_gather(
            &mut images.as_mut_slice(),
            &mut labels,
            &all,
            &data.labels,
            start,
        )?,
    }
    Ok((images, labels))
}

/// batch_gather under emulation equals its twin, and both equal the host's own batch of the step
/// (`Dataset::batch`, the write-up's offset `(s · batch) mod (count − batch)`) bit for bit, for counters up to
/// u32::MAX − 1 and batches up to the whole set; gathering by offset too; an offset past the set is an error.
/// step_end stores the loss at the counter's slot of the ring and advances the counter (wrapping as u32).
#[test]
fn emulated_batch_gather_and_step_end_match_their_twins_and_the_host_batch() {
    use inception_cuda::data::Dataset;
    let (count, px) = (37usize, 5usize);
    let data = Dataset {
        images: uniform(70, count * px)
            .iter()
            .map(|v| (v + 1.0) / 2.0)
            .collect(),
        labels: (0..count as u32).map(|i| (i * 7 + 3) % 10).collect(),
        rows: 1,
        cols: px,
    };
    for batch in [1, 4, 36, 37] {
        for c in [0u32, 1, 8, 1000, u32::MAX - 1] {
            let (hx, hy) = data.batch(u64::from(c), batch).unwrap();
            let want = gathered(&CpuBackend, &data, batch, Some(c), 0).unwrap();
            let what = format!("batch {batch} at counter {c}");
            assert_bits_eq(&format!("twin gather, {what}"), &want.0, hx);
            assert_eq!(want.1, hy, "twin gather's labels, {what}");
            for order in ORDERS {
                let got = gathered(&EmuBackend { order }, &data, batch, Some(c), 0).unwrap();
                assert_bits_eq(&format!("emulated gather, {what}, {order:?}"), &got.0, hx);
                assert_eq!(got.1, hy, "emulated gather's labels, {what}, {order:?}");
            }
        }
        for start in [0, (count - batch) / 2, count - batch] {
            let want = data.slice(start..start + batch).unwrap();
            for order in ORDERS {
                let got = gathered(&EmuBackend { order }, &data, batch, None, start).unwrap();
                assert_bits_eq(
                    &format!("emulated gather from {start}"),
                    &got.0,
                    &want.images,
                );
                assert_eq!(got.1, want.labels);
            }
            let twin = gathered(&CpuBackend, &data, batch, None, start).unwrap();
            assert_bits_eq(&format!("twin gather from {start}"), &twin.0, &want.images);
        }
        let emu = EmuBackend {
            order: ThreadOrder::Forward,
        };
        for err in [
            gathered(&emu, &data, batch, None, count - batch + 1),
            gathered(&CpuBackend, &data, batch, None, count - batch + 1),
        ] {
            let err = err.unwrap_err().to_string();
            assert!(
                err.contains("batch_gather") && err.contains("start"),
                "{err}"
            );
        }
    }

    fn end<B>(b: &B, counter: u32) -> (Vec<f32>, Vec<u32>)
    where
        for<'a> B: Backend<
            Buf = Vec<f32>,
            Labels = Vec<u32>,
            View<'a> = &'a [f32],
            ViewMut<'a> = &'a mut [f32],
        >,
    {
        let mut ring = vec![f32::NAN; 5];
        let mut c = vec![counter];
        b.step_end(&mut ring.as_mut_slice(), &mut c, &[2.5f32].as_slice())
            .unwrap();
        (ring, c)
    }
    for counter in [0u32, 7, u32::MAX] {
        let want = end(&CpuBackend, counter);
        assert_eq!(want.1, [counter.wrapping_add(1)]);
        assert_eq!(want.0[counter as usize % 5], 2.5);
        for order in ORDERS {
            let got = end(&EmuBackend { order }, counter);
            assert_bits_eq(
                &format!("emulated step_end ring at {counter}"),
                &got.0,
                &want.0,
            );
            assert_eq!(got.1, want.1, "emulated step_end counter at {counter}");
        }
    }
}

/// `|v|` elementwise (outside the generic helpers, whose higher-ranked bounds a closure trips over).
fn abs_all(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(f32::abs).collect()
}

/// The kernels of a step that read the step on the device equal the same kernels given the step's values,
/// bit for bit, under emulation (both thread orders) and on the twins: Adam with row `c` of the Adam table
/// against `AdamStep::new(lr, c + 1)` (adam_step, linear_wgrad_adam and linear_bwd_adam, fp32 and TF32),
/// dropout at counter `c` against step `c + 1`. A counter past the table is an error naming the step.
#[test]
fn emulated_device_counter_kernels_equal_the_by_value_launches() {
    use inception_cuda::shape::{AdamStep, LinearShape, Precision};
    fn both<B>(b: &B, c: u32) -> Vec<(String, Vec<f32>, Vec<f32>)>
    where
        for<'a> B: Backend<
            Buf = Vec<f32>,
            Labels = Vec<u32>,
            View<'a> = &'a [f32],
            ViewMut<'a> = &'a mut [f32],
        >,
    {
        let lr = 1e-3;
        let table = AdamStep::table(lr, 9).unwrap();
        let step = AdamStep::new(lr, u64::from(c) + 1);
        let counter = vec![c];
        let n = 1001;
        let g = uniform(80, n);
        let start = [uniform(81, n), uniform(82, n), abs_all(uniform(83, n))];
        let mut out = Vec::new();
        let (mut a, mut t) = (start.clone(), start.clone());
        let [ap, am, av] = &mut a;
        b.adam_step(
            &mut ap.as_mut_slice(),
            &mut am.as_mut_slice(),
            &mut av.as_mut_slice(),
            &g.as_slice(),
            &step,
        )
        .unwrap();
        let [tp, tm, tv] = &mut t;
        b.adam_step_at(
            &mut tp.as_mut_slice(),
            &mut tm.as_mut_slice(),
            &mut tv.as_mut_slice(),
            &g.as_slice(),
            &table.as_slice(),
            &counter,
        )
        .unwrap();
        out.push(("adam_step".into(), a.concat(), t.concat()));
        let (mut y1, mut y2) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        b.dropout_fwd(&mut y1.as_mut_slice(), &g.as_slice(), 0.5, 9, step.t)
            .unwrap();
        b.dropout_fwd_at(&mut y2.as_mut_slice(), &g.as_slice(), 0.5, 9, &counter)
            .unwrap();
        out.push(("dropout_fwd".into(), y1.clone(), y2.clone()));
        b.dropout_bwd(&mut y1.as_mut_slice(), &g.as_slice(), 0.3, 9, step.t)
            .unwrap();
        b.dropout_bwd_at(&mut y2.as_mut_slice(), &g.as_slice(), 0.3, 9, &counter)
            .unwrap();
        out.push(("dropout_bwd".into(), y1, y2));
        for precision in Precision::ALL {
            let s = LinearShape::new(3, 37, 5).with_precision(precision);
            let (dy, x) = (uniform(84, 3 * 5), uniform(85, 3 * 37));
            let w0 = [uniform(86, 5 * 37), uniform(87, 5 * 37), vec![0.01; 5 * 37]];
            let (mut a, mut t) = (w0.clone(), w0.clone());
            let [aw, am, av] = &mut a;
            let [tw, tm, tv] = &mut t;
            b.linear_wgrad_adam(
                [
                    &mut aw.as_mut_slice(),
                    &mut am.as_mut_slice(),
                    &mut av.as_mut_slice(),
                ],
                &dy.as_slice(),
                &x.as_slice(),
                &s,
                &step,
            )
            .unwrap();
            b.linear_wgrad_adam_at(
                [
                    &mut tw.as_mut_slice(),
                    &mut tm.as_mut_slice(),
                    &mut tv.as_mut_slice(),
                ],
                &dy.as_slice(),
                &x.as_slice(),
                &s,
                &table.as_slice(),
                &counter,
            )
            .unwrap();
            out.push((
                format!("linear_wgrad_adam {precision:?}"),
                a.concat(),
                t.concat(),
            ));
            let (mut a, mut t) = (w0.clone(), w0.clone());
            let (mut dxa, mut dxt) = (vec![f32::NAN; 3 * 37], vec![f32::NAN; 3 * 37]);
            let [aw, am, av] = &mut a;
            let [tw, tm, tv] = &mut t;
            b.linear_bwd_adam(
                &mut dxa.as_mut_slice(),
                [
                    &mut aw.as_mut_slice(),
                    &mut am.as_mut_slice(),
                    &mut av.as_mut_slice(),
                ],
                &dy.as_slice(),
                &x.as_slice(),
                &s,
                &step,
            )
            .unwrap();
            b.linear_bwd_adam_at(
                &mut dxt.as_mut_slice(),
                [
                    &mut tw.as_mut_slice(),
                    &mut tm.as_mut_slice(),
                    &mut tv.as_mut_slice(),
                ],
                &dy.as_slice(),
                &x.as_slice(),
                &s,
                &table.as_slice(),
                &counter,
            )
            .unwrap();
            out.push((
                format!("linear_bwd_adam {precision:?}"),
                [dxa, a.concat()].concat(),
                [dxt, t.concat()].concat(),
            ));
        }
        out
    }
    for c in [0u32, 3, 8] {
        let twin = both(&CpuBackend, c);
        for (name, by_value, at) in &twin {
            assert_bits_eq(&format!("twin {name} at counter {c}"), at, by_value);
        }
        for order in ORDERS {
            let emu = both(&EmuBackend { order }, c);
            for ((name, by_value, at), (_, twin_value, _)) in emu.iter().zip(&twin) {
                assert_bits_eq(
                    &format!("emulated {name} at counter {c}, {order:?}"),
                    at,
                    by_value,
                );
                if name.starts_with("adam") || name.starts_with("dropout") {
                    assert_bits_eq(
                        &format!("emulated {name} vs twin, {order:?}"),
                        at,
                        twin_value,
                    );
                }
            }
        }
    }
    // counter 9 of a 9-row table: past it, on the emulator and the twin alike
    let table = AdamStep::table(1e-3, 9).unwrap();
    let emu = EmuBackend {
        order: ThreadOrder::Forward,
    };
    let mut p = vec![0.0f32; 4];
    let (mut m, mut v, g) = (p.clone(), p.clone(), p.clone());
    for err in [
        emu.adam_step_at(
            &mut p.as_mut_slice(),
            &mut m.as_mut_slice(),
            &mut v.as_mut_slice(),
            &g.as_slice(),
            &table.as_slice(),
            &vec![9],
        ),
        CpuBackend.adam_step_at(
            &mut p.as_mut_slice(),
            &mut m.as_mut_slice(),
            &mut v.as_mut_slice(),
            &g.as_slice(),
            &table.as_slice(),
            &vec![9],
        ),
    ] {
        let err = err.unwrap_err().to_string();
        assert!(err.contains("step 10 of a table of 9 rows"), "{err}");
    }
}

/// The ReLU backward folded into the kernels that read the gradient (the default plan: the branches' dgrad,
/// wgrad and the fused conv's first kernels read dy where the module output y > 0) gives the bits of the
/// unfolded plan (`TrainOptions::separate_relu_bwd`: a relu_bwd pass over each module output, then the
/// kernels without a mask), on the emulated kernels and on the twins, in both precisions: the loss, every
/// gradient of `forward_backward`, and the parameters after a step. The folded plan has one launch fewer per
/// module (its ReLU's backward pass) on the emulator; the CPU backend keeps the pass (`FOLDS_RELU_BWD`).
#[test]
fn the_folded_relu_backward_gives_the_unfolded_steps_bits() {
    use inception_cuda::graph::{Params, Plan, Precision, TrainOptions};
    type Run = (f32, Vec<f32>, Vec<f32>, usize);
    fn run<B: inception_cuda::Backend>(b: B, precision: Precision, separate: bool) -> Run {
        let (cfg, images) = small_net(54);
        let def = cfg.graph().unwrap();
        let b = std::sync::Arc::new(b);
        let mut params = Params::new(b.clone(), &def.graph, 7).unwrap();
        let opts = TrainOptions {
            precision,
            separate_relu_bwd: separate,
            ..TrainOptions::default()
        };
        let mut plan = Plan::train_with(b, &def.graph, 3, &opts).unwrap();
        plan.set_input("images", &images).unwrap();
        plan.set_labels(&[4, 0, 6]).unwrap();
        plan.forward_backward(&mut params).unwrap();
        let grads = params
            .table()
            .iter()
            .flat_map(|e| params.grad(&e.name).unwrap())
            .collect();
        let loss = plan.loss().unwrap();
        plan.step(&mut params, 1e-3).unwrap();
        (loss, grads, params.values().unwrap(), plan.launches())
    }
    // `fewer`: the launches the fold saves (two modules; none on the CPU, which keeps the separate pass).
    let check = |what: &str, folded: Run, unfolded: Run, fewer: usize| {
        assert_eq!(folded.0.to_bits(), unfolded.0.to_bits(), "{what}: loss");
        common::assert_bits_eq(&format!("{what}: gradients"), &folded.1, &unfolded.1);
        common::assert_bits_eq(&format!("{what}: after Adam"), &folded.2, &unfolded.2);
        assert_eq!(folded.3 + fewer, unfolded.3, "{what}: launches");
    };
    for precision in Precision::ALL {
        let emu = || EmuBackend {
            order: ThreadOrder::Forward,
        };
        check(
            &format!("emulated {precision:?}"),
            run(emu(), precision, false),
            run(emu(), precision, true),
            2,
        );
        check(
            &format!("cpu {precision:?}"),
            run(CpuBackend, precision, false),
            run(CpuBackend, precision, true),
            0,
        );
    }
}

/// The kernels that fold the ReLU backward in (conv_dgrad, conv_wgrad, the fused conv's backward; fp32 and
/// TF32) given the forward output `y` equal `relu_bwd` into a buffer followed by the same kernel without it,
/// bit for bit, on the emulator and the twins: `y` holds positives, negatives, +0, -0 and NaN (only y > 0
/// passes dy, as relu_bwd's rule), and the mask changes every result (so it is applied at all).
#[test]
fn kernels_with_the_relu_mask_equal_relu_bwd_then_the_kernel() {
    use common::kernels::{masked_grads_on, relu_mask_inputs, MASK_SHAPES};
    use inception_cuda::shape::Precision;
    let emu = EmuBackend {
        order: ThreadOrder::Reverse,
    };
    for ((s, rs), precision) in MASK_SHAPES
        .into_iter()
        .flat_map(|pair| Precision::ALL.map(|p| (pair, p)))
    {
        let (s, rs) = (&s.with_precision(precision), &rs.with_precision(precision));
        let (dy, y, g) = relu_mask_inputs(s.y_len("t").unwrap());
        let names = ["dx", "[dw | db]", "fused dx", "fused dparams"];
        for (backend, folded, unfolded, plain) in [
            (
                "emulated",
                masked_grads_on(&emu, s, rs, &dy, Some(&y)),
                masked_grads_on(&emu, s, rs, &g, None),
                masked_grads_on(&emu, s, rs, &dy, None),
            ),
            (
                "cpu",
                masked_grads_on(&CpuBackend, s, rs, &dy, Some(&y)),
                masked_grads_on(&CpuBackend, s, rs, &g, None),
                masked_grads_on(&CpuBackend, s, rs, &dy, None),
            ),
        ] {
            for (i, name) in names.iter().enumerate() {
                common::assert_bits_eq(
                    &format!("{backend} {precision:?} {name}: masked vs relu_bwd first"),
                    &folded[i],
                    &unfolded[i],
                );
                assert!(
                    folded[i].iter().zip(&plain[i]).any(|(a, b)| a != b),
                    "{backend} {precision:?} {name}: the mask changed nothing"
                );
            }
        }
    }
}
