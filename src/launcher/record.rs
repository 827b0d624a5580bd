//! A recording driver: every launcher runs on it as on the CUDA driver and the emulator (the launchers are
//! the same code for all three), but each launch is recorded instead of run. The tests check every
//! recorded argument list against the kernel's `.cu` parameter list and every launch plan against the
//! hardware's limits, for every kernel: the CUDA launch code that CI cannot run is checked here.

use std::sync::{Mutex, PoisonError};

use super::{Driver, Kernel, ParamKind, Value};
use crate::backend::Backend;
use crate::launch::{LaunchDims, MAX_DYNAMIC_SHARED};
use crate::shape::{AdamStep, ConvShape, LinearShape, PoolShape, Precision, ReduceConvShape};
use crate::Result;

/// The length recorded for a null pointer argument (an optional buffer left out).
const NULL: usize = usize::MAX;

/// One recorded launch: the kernel, its geometry, and each argument's kind and (for buffers) length.
#[derive(Debug)]
struct Record {
    kernel: Kernel,
    dims: LaunchDims,
    args: Vec<(ParamKind, usize)>,
}

struct Recorder {
    log: Mutex<Vec<Record>>,
    /// The dynamic shared memory per block of the device it stands for (`Driver::max_dynamic_shared`).
    max_shared: usize,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            log: Mutex::default(),
            max_shared: MAX_DYNAMIC_SHARED,
        }
    }
}

impl Backend for Recorder {
    crate::cpu::host_buffers!();

    fn name(&self) -> &'static str {
        "recorder"
    }

    crate::backend::for_each_kernel!(forward_to_launchers);
}

impl Driver for Recorder {
    type Args<'a> = (Kernel, Vec<(ParamKind, usize)>);

    fn max_dynamic_shared(&self) -> usize {
        self.max_shared
    }

    fn args(&self, kernel: Kernel) -> Self::Args<'_> {
        (kernel, Vec::new())
    }

    fn push_out<'a>(args: &mut Self::Args<'a>, v: &'a mut &mut [f32]) {
        args.1.push((ParamKind::Out, v.len()));
    }

    fn push_in<'a>(args: &mut Self::Args<'a>, v: &'a &[f32]) {
        args.1.push((ParamKind::In, v.len()));
    }

    fn push_labels<'a>(args: &mut Self::Args<'a>, v: &'a Vec<u32>) {
        args.1.push((ParamKind::Labels, v.len()));
    }

    fn push_labels_out<'a>(args: &mut Self::Args<'a>, v: &'a mut Vec<u32>) {
        args.1.push((ParamKind::LabelsOut, v.len()));
    }

    fn push_null(args: &mut Self::Args<'_>, kind: ParamKind) {
        args.1.push((kind, NULL));
    }

    fn push_value<'a>(args: &mut Self::Args<'a>, v: Value<'a>) {
        args.1.push((v.kind(), 0));
    }

    fn launch(
        &self,
        _op: &'static str,
        kernel: Kernel,
        dims: LaunchDims,
        args: Self::Args<'_>,
    ) -> Result<()> {
        assert_eq!(args.0, kernel, "arguments built for another kernel");
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Record {
                kernel,
                dims,
                args: args.1,
            });
        Ok(())
    }

    crate::cpu::host_views!();
}

/// Calls every kernel method of the backend once, on small shapes that take every launch path.
fn call_every_kernel(r: &Recorder) -> Result<()> {
    let z = |n: usize| vec![0.0f32; n];
    let (n, mut y) = (37, z(37));
    r.relu_fwd(&mut y.as_mut_slice(), &z(n).as_slice())?;
    r.relu_bwd(&mut y.as_mut_slice(), &z(n).as_slice(), &z(n).as_slice())?;
    r.add_fwd(&mut y.as_mut_slice(), &z(n).as_slice(), &z(n).as_slice())?;
    r.dropout_fwd(&mut y.as_mut_slice(), &z(n).as_slice(), 0.5, 1, 2)?;
    r.dropout_bwd(&mut y.as_mut_slice(), &z(n).as_slice(), 0.5, 1, 2)?;
    let (mut m, mut v) = (z(n), z(n));
    r.adam_step(
        &mut y.as_mut_slice(),
        &mut m.as_mut_slice(),
        &mut v.as_mut_slice(),
        &z(n).as_slice(),
        &AdamStep::new(1e-3, 1),
    )?;

    // the device-counter forms: the counter read by the kernel, the Adam table's rows
    let (counter, table) = (vec![0u32], z(12));
    r.dropout_fwd_at(&mut y.as_mut_slice(), &z(n).as_slice(), 0.5, 1, &counter)?;
    r.dropout_bwd_at(&mut y.as_mut_slice(), &z(n).as_slice(), 0.5, 1, &counter)?;
    r.adam_step_at(
        &mut y.as_mut_slice(),
        &mut m.as_mut_slice(),
        &mut v.as_mut_slice(),
        &z(n).as_slice(),
        &table.as_slice(),
        &counter,
    )?;
    let (mut images, mut batch_labels, all_labels) = (z(3 * 5), vec![0u32; 3], vec![1u32; 7]);
    r.batch_gather(
        &mut images.as_mut_slice(),
        &mut batch_labels,
        &z(7 * 5).as_slice(),
        &all_labels,
        4,
    )?;
    r.batch_gather_at(
        &mut images.as_mut_slice(),
        &mut batch_labels,
        &z(7 * 5).as_slice(),
        &all_labels,
        &counter,
    )?;
    let mut counter = counter;
    r.step_end(&mut z(8).as_mut_slice(), &mut counter, &z(1).as_slice())?;

    let ps = PoolShape {
        n: 2,
        c: 3,
        h: 5,
        w: 7,
    };
    let pl = 2 * 3 * 5 * 7;
    r.maxpool3x3s1_fwd(&mut z(pl).as_mut_slice(), &z(pl).as_slice(), &ps)?;
    r.maxpool3x3s1_bwd(
        &mut z(pl).as_mut_slice(),
        &z(pl).as_slice(),
        &z(pl).as_slice(),
        &ps,
        true,
    )?;

    let labels = vec![1u32, 2, 3];
    r.softmax_xent(
        &mut z(1).as_mut_slice(),
        &mut z(30).as_mut_slice(),
        &z(30).as_slice(),
        &labels,
        10,
    )?;

    r.count_correct(
        &mut z(2).as_mut_slice(),
        &z(30).as_slice(),
        &labels,
        10,
        true,
    )?;

    // the convs and the fused reduce conv, fp32 and on the tensor cores
    let (xl, yl, wl) = (2 * 3 * 30, 2 * 9 * 30, 4 * 3 * 9);
    for precision in Precision::ALL {
        let cs = ConvShape::new(2, 3, 4, 5, 6, 3)
            .into_slice(9, 2)
            .with_precision(precision);
        r.conv_fwd(
            &mut z(yl).as_mut_slice(),
            &z(xl).as_slice(),
            &z(wl).as_slice(),
            &z(4).as_slice(),
            &cs,
            true,
        )?;
        // without and with the ReLU mask (a null pointer, then a buffer)
        r.conv_dgrad(
            &mut z(xl).as_mut_slice(),
            &z(yl).as_slice(),
            None,
            &z(wl).as_slice(),
            &cs,
            false,
        )?;
        r.conv_dgrad(
            &mut z(xl).as_mut_slice(),
            &z(yl).as_slice(),
            Some(&z(yl).as_slice()),
            &z(wl).as_slice(),
            &cs,
            true,
        )?;
        for y in [None, Some(&z(yl).as_slice())] {
            r.conv_wgrad(
                &mut z(wl + 4).as_mut_slice(),
                &z(yl).as_slice(),
                y,
                &z(xl).as_slice(),
                &cs,
            )?;
        }

        let rs = ReduceConvShape {
            n: 2,
            c_in: 3,
            c_mid: 8, // a multiple of 8: the TF32 forward's tap-major k×k (conv_taps_tf32 first)
            c_out: 4,
            h: 5,
            w: 6,
            k: 3,
            c_total: 9,
            c_offset: 2,
            precision,
        };
        let block = crate::backend::reduce_conv_param_ranges(&rs)[3].end;
        let ml = 2 * 8 * 30;
        r.reduce_conv_fwd(
            &mut z(yl).as_mut_slice(),
            &mut z(ml).as_mut_slice(),
            &z(xl).as_slice(),
            &z(block).as_slice(),
            &rs,
        )?;
        for y in [None, Some(&z(yl).as_slice())] {
            r.reduce_conv_bwd(
                &mut z(xl).as_mut_slice(),
                &mut z(block).as_mut_slice(),
                &mut z(ml).as_mut_slice(),
                &z(yl).as_slice(),
                y,
                &z(xl).as_slice(),
                &z(ml).as_slice(),
                &z(block).as_slice(),
                &rs,
                true,
            )?;
        }
    }

    r.mma_tf32_tile(
        &mut z(128).as_mut_slice(),
        &z(128).as_slice(),
        &z(64).as_slice(),
        &z(128).as_slice(),
    )?;

    // the linear kernels, fp32 and their tensor-core twins
    let (xl, yl, wl) = (3 * 70, 3 * 5, 5 * 70);
    for precision in Precision::ALL {
        let ls = LinearShape::new(3, 70, 5).with_precision(precision);
        r.linear_fwd(
            &mut z(yl).as_mut_slice(),
            &z(xl).as_slice(),
            &z(wl).as_slice(),
            &z(5).as_slice(),
            &ls,
        )?;
        r.linear_dgrad(
            &mut z(xl).as_mut_slice(),
            &z(yl).as_slice(),
            &z(wl).as_slice(),
            &ls,
        )?;
        r.linear_wgrad(
            &mut z(wl).as_mut_slice(),
            &z(yl).as_slice(),
            &z(xl).as_slice(),
            &ls,
        )?;
        r.linear_bgrad(&mut z(5).as_mut_slice(), &z(yl).as_slice(), &ls)?;
        let (mut dx, mut w, mut m, mut v) = (z(xl), z(wl), z(wl), z(wl));
        let step = AdamStep::new(1e-3, 1);
        let (dy, x) = (z(yl), z(xl));
        r.linear_bwd_adam(
            &mut dx.as_mut_slice(),
            [
                &mut w.as_mut_slice(),
                &mut m.as_mut_slice(),
                &mut v.as_mut_slice(),
            ],
            &dy.as_slice(),
            &x.as_slice(),
            &ls,
            &step,
        )?;
        r.linear_wgrad_adam(
            [
                &mut w.as_mut_slice(),
                &mut m.as_mut_slice(),
                &mut v.as_mut_slice(),
            ],
            &dy.as_slice(),
            &x.as_slice(),
            &ls,
            &step,
        )?;
        let (table, counter) = (z(6), vec![0u32]);
        r.linear_bwd_adam_at(
            &mut dx.as_mut_slice(),
            [
                &mut w.as_mut_slice(),
                &mut m.as_mut_slice(),
                &mut v.as_mut_slice(),
            ],
            &dy.as_slice(),
            &x.as_slice(),
            &ls,
            &table.as_slice(),
            &counter,
        )?;
        r.linear_wgrad_adam_at(
            [
                &mut w.as_mut_slice(),
                &mut m.as_mut_slice(),
                &mut v.as_mut_slice(),
            ],
            &dy.as_slice(),
            &x.as_slice(),
            &ls,
            &table.as_slice(),
            &counter,
        )?;
    }
    Ok(())
}

#[test]
fn every_kernel_is_launched_with_its_cu_parameter_list_and_a_valid_plan() {
    let r = Recorder::default();
    call_every_kernel(&r).expect("every launcher accepts its arguments");
    let log = r.log.lock().unwrap_or_else(PoisonError::into_inner);
    for k in Kernel::ALL {
        assert!(
            log.iter().any(|rec| rec.kernel == k),
            "{} was never launched",
            k.name()
        );
    }
    for rec in log.iter() {
        let kinds: Vec<ParamKind> = rec.args.iter().map(|(k, _)| *k).collect();
        let expected: Vec<ParamKind> = rec.kernel.params().iter().map(|(_, k)| *k).collect();
        assert_eq!(kinds, expected, "arguments of {}", rec.kernel.name());
        for (i, (kind, len)) in rec.args.iter().enumerate() {
            if matches!(kind, ParamKind::Out | ParamKind::In | ParamKind::Labels) {
                assert!(
                    *len > 0,
                    "{}: buffer {} is empty",
                    rec.kernel.name(),
                    rec.kernel.params()[i].0
                );
            }
        }
        assert_valid_plan(rec, r.max_shared);
    }
}

/// A launch plan the hardware accepts: CUDA's grid and block limits, and no more dynamic shared memory than
/// the device grants a block (`max_shared`).
fn assert_valid_plan(rec: &Record, max_shared: usize) {
    let d = rec.dims;
    assert!(
        d.grid >= 1 && d.grid_y >= 1 && d.grid_z >= 1 && d.grid <= i32::MAX as u32,
        "{}: grid {d:?}",
        rec.kernel.name()
    );
    assert!(
        d.grid_y <= 65_535 && d.grid_z <= 65_535,
        "{}: grid {d:?}",
        rec.kernel.name()
    );
    assert!(
        (1..=1024).contains(&d.block) && d.block % 32 == 0,
        "{}: block {d:?}",
        rec.kernel.name()
    );
    assert!(
        d.shared_bytes as usize <= max_shared,
        "{}: shared memory {d:?} > {max_shared}",
        rec.kernel.name()
    );
}

/// On a GPU that grants a block 99 KiB of dynamic shared memory (most consumer parts), every kernel's launch
/// fits: fc1's TF32 one pass (137 KiB) gives way to dgrad + wgrad_adam, and the fused reduce conv sizes its row
/// tiles to the limit.
#[test]
fn every_launch_fits_a_consumer_gpus_shared_memory() {
    let r = Recorder {
        max_shared: 99 * 1024,
        ..Recorder::default()
    };
    call_every_kernel(&r).expect("every launcher accepts its arguments");
    // A wide reduced map: 64 channels × 56 columns, 14 KiB a row (3 rows and a 5×5 halo in 99 KiB).
    let s = ReduceConvShape {
        n: 1,
        c_in: 4,
        c_mid: 64,
        c_out: 8,
        h: 56,
        w: 56,
        k: 5,
        c_total: 8,
        c_offset: 0,
        precision: Precision::Tf32,
    };
    let z = |n: usize| vec![0.0f32; n];
    let (mut y, mut mid) = (z(8 * 56 * 56), z(64 * 56 * 56));
    let params = z(64 * 4 + 64 + 8 * 64 * 25 + 8);
    for precision in Precision::ALL {
        r.reduce_conv_fwd(
            &mut y.as_mut_slice(),
            &mut mid.as_mut_slice(),
            &z(4 * 56 * 56).as_slice(),
            &params.as_slice(),
            &s.with_precision(precision),
        )
        .expect("reduce_conv_fwd");
    }
    let log = r.log.lock().unwrap_or_else(PoisonError::into_inner);
    for rec in log.iter() {
        assert_valid_plan(rec, r.max_shared);
    }
    let launched = |k: Kernel| log.iter().any(|rec| rec.kernel == k);
    assert!(
        !launched(Kernel::LinearBwdAdamTf32),
        "the one pass needs 137 KiB"
    );
    assert!(launched(Kernel::LinearWgradAdamTf32) && launched(Kernel::LinearDgradTf32));
    // The last two fused forwards (fp32, then TF32, whose launcher also launches conv_taps_tf32 before it).
    let fused: Vec<_> = log
        .iter()
        .filter(|rec| {
            matches!(
                rec.kernel,
                Kernel::ReduceConvFwd | Kernel::ReduceConvFwdTf32
            )
        })
        .collect();
    let wide = fused.len() >= 2
        && fused[fused.len() - 2..]
            .iter()
            .all(|rec| rec.dims.shared_bytes as usize > 48 * 1024);
    assert!(
        wide,
        "the wide map's tiles use more than the default 48 KiB"
    );
}

#[test]
fn an_argument_list_that_drifts_from_the_kernel_is_an_error_not_a_launch() {
    let r = Recorder::default();
    let (mut y, x) = (vec![0.0f32; 4], vec![0.0f32; 4]);
    let (mut y, x) = (y.as_mut_slice(), x.as_slice());
    let dims = crate::launch::elementwise(4).expect("4 elements");
    // relu_fwd(float* y, const float* x, unsigned long long n), given n as a u32:
    let err = super::Launch::new(&r, "relu_fwd", Kernel::ReluFwd, dims)
        .out(&mut y)
        .inp(&x)
        .val(&4u32)
        .run()
        .expect_err("a u32 where the kernel takes an unsigned long long");
    assert!(
        err.to_string()
            .contains("do not match the parameters of relu_fwd"),
        "{err}"
    );
    // ... and with an argument missing.
    let err = super::Launch::new(&r, "relu_fwd", Kernel::ReluFwd, dims)
        .out(&mut y)
        .inp(&x)
        .run()
        .expect_err("n missing");
    assert!(err.to_string().contains("relu_fwd"), "{err}");
    assert!(
        r.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty(),
        "nothing was launched"
    );
}

/// Kernels recorded in one training step of the MNIST net `cfg` at batch `n`: `(Plan::launches(), kernel
/// launches, launches of conv_wgrad or conv_wgrad_tf32, of conv_split_sum, of relu_bwd)`.
fn step_kernels(
    cfg: crate::nn::MnistConfig,
    n: usize,
    precision: Precision,
    separate_relu_bwd: bool,
) -> [usize; 5] {
    use crate::graph::{Params, Plan, TrainOptions};
    let r = std::sync::Arc::new(Recorder::default());
    let def = cfg.graph().expect("net");
    let mut params = Params::new(r.clone(), &def.graph, 1).expect("params");
    let opts = TrainOptions {
        precision,
        separate_relu_bwd,
        ..TrainOptions::default()
    };
    let mut plan = Plan::train_with(r.clone(), &def.graph, n, &opts).expect("plan");
    let before = r.log.lock().unwrap_or_else(PoisonError::into_inner).len();
    plan.step(&mut params, 1e-3).expect("step");
    let log = r.log.lock().unwrap_or_else(PoisonError::into_inner);
    let step = &log[before..];
    let count = |ks: &[Kernel]| step.iter().filter(|rec| ks.contains(&rec.kernel)).count();
    [
        plan.launches(),
        step.len(),
        count(&[Kernel::ConvWgrad, Kernel::ConvWgradTf32]),
        count(&[Kernel::ConvSplitSum]),
        count(&[Kernel::ReluBwd]),
    ]
}

/// The launch counts of a step with the ReLU backward folded and not, both precisions: the folded plan
/// drops one relu_bwd pass per module (two here) and nothing else, and every conv's weight and bias
/// gradients take one wgrad kernel and one split sum.
fn assert_fewer_launches(cfg: crate::nn::MnistConfig, n: usize) {
    for precision in Precision::ALL {
        let folded = step_kernels(cfg, n, precision, false);
        let separate = step_kernels(cfg, n, precision, true);
        println!(
            "{precision:?}, batch {n}: folded [plan launches, kernels, wgrads, split sums, relu_bwd] \
             {folded:?}, separate relu_bwd {separate:?}"
        );
        assert_eq!(
            folded[0] + 2,
            separate[0],
            "{precision:?}: Plan::launches()"
        );
        assert_eq!(folded[1] + 2, separate[1], "{precision:?}: kernels");
        assert_eq!(separate[4], folded[4] + 2, "{precision:?}: relu_bwd passes");
        // 6 convs per module (1×1, both reduces, 3×3, 5×5, pool projection), each its own wgrad + split sum.
        assert_eq!(folded[2], 12, "{precision:?}: conv wgrads");
        assert_eq!(
            folded[3], folded[2],
            "{precision:?}: one split sum per wgrad"
        );
    }
}

#[test]
fn a_step_with_the_relu_backward_folded_launches_fewer_kernels() {
    assert_fewer_launches(crate::nn::MnistConfig::tiny(), 3);
}

#[test]
#[ignore = "allocates the full MNIST net (2.2 GB of parameters, gradients and moments): run by hand with \
            --ignored --nocapture for the launch counts of a batch-50 step"]
fn the_mnist_step_at_batch_50_launches_fewer_kernels() {
    assert_fewer_launches(crate::nn::MnistConfig::default(), 50);
}
