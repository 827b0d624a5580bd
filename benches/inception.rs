//! What the 1×1 reductions buy: the FLOP table (naive vs reduced, per branch, for MNIST's two modules and
//! GoogLeNet's inception (3a)), written as markdown to `target/criterion/flops.md`, then timings of the
//! reduced module (forward, forward + backward), the fused reduce conv against the unfused chain, and fc1's
//! three GEMMs, on the CPU twins and, when a GPU is present, on the CUDA kernels. Throughput is reported as
//! elements/s where one element is one FLOP (2 per multiply-add): read "Gelem/s" as GFLOP/s.
//!
//!     cargo bench --bench inception

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, Bencher, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use inception_cuda::cpu::CpuBackend;
use inception_cuda::nn::{BranchMacs, InceptionModule, InceptionWidths, MnistConfig};
use inception_cuda::shape::{
    AdamStep, ConvShape, LinearShape, PoolShape, Precision, ReduceConvShape,
};
use inception_cuda::{Backend, Device};

#[cfg(feature = "baselines")]
#[path = "support/libs.rs"]
mod libs;
#[path = "support/secs.rs"]
mod secs;

/// One cell of the module table: (module label, batch, form "reduced"|"naive", side "ours"|"cuDNN",
/// precision, pass "forward"|"forward+backward").
type Cell = (
    String,
    usize,
    &'static str,
    &'static str,
    Precision,
    &'static str,
);

thread_local! {
    /// Milliseconds per iteration of every criterion sample (warm-up included) of the GPU module benchmarks,
    /// by table cell: the table reads the last [`SAMPLES`] of each, the samples criterion reports.
    static TIMES: RefCell<Vec<(Cell, f64)>> = const { RefCell::new(Vec::new()) };
}

/// Samples per benchmark ([`configured_group`]).
const SAMPLES: usize = 10;

/// `bch.iter(f)` with the device synchronised once a sample, after its iterations (back-to-back launches, as
/// PyTorch's baseline times its modules with CUDA events: a host round trip per iteration would add 10–20 µs
/// to sub-millisecond modules on one side only), also recording each sample's time per iteration under
/// `cell` when there is one (GPU groups).
fn timed(bch: &mut Bencher<'_>, cell: Option<Cell>, dev: &Device, mut f: impl FnMut()) {
    bch.iter_custom(|iters| {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        dev.synchronize().expect("sync");
        let e = t.elapsed();
        if let Some(cell) = &cell {
            let ms = e.as_secs_f64() * 1e3 / iters.max(1) as f64;
            TIMES.with(|t| t.borrow_mut().push((cell.clone(), ms)));
        }
        e
    })
}

/// The module table from the recorded samples (medians, ms): ours and cuDNN's, reduced and naive, both
/// precisions, each of ours against the faster of cuDNN's two forms in the same precision; every figure from
/// this run. `None` when no GPU module benchmark ran.
#[cfg(feature = "cuda")]
fn module_table(device: &str) -> Option<String> {
    let times = TIMES.with(|t| t.borrow().clone());
    if times.is_empty() {
        return None;
    }
    let median = |cell: &Cell| -> Option<f64> {
        let mut v: Vec<f64> = times
            .iter()
            .filter(|(c, _)| c == cell)
            .map(|&(_, ms)| ms)
            .collect();
        v.drain(..v.len().saturating_sub(SAMPLES));
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        match v.len() {
            0 => None,
            len if len % 2 == 1 => Some(v[mid]),
            _ => Some((v[mid - 1] + v[mid]) / 2.0),
        }
    };
    let fmt = |v: Option<f64>| v.map_or_else(|| "not run".to_string(), |v| format!("{v:.3}"));
    let mut md = format!(
        "Module table, {device}: ms per call (median of the samples criterion reports), this run. cuDNN: every conv with the \
         algorithm that ran fastest at its shape; its forward + backward leaves out the bias gradients (a lower \
         bound). Ratio = ours reduced / the faster of cuDNN's reduced and naive.\n\n\
         | module | batch | precision | pass | ours reduced | ours naive | cuDNN reduced | cuDNN naive | ratio |\n\
         |---|---:|---|---|---:|---:|---:|---:|---:|\n"
    );
    let mut rows: Vec<(String, usize)> = Vec::new();
    for ((label, n, ..), _) in &times {
        if !rows.contains(&(label.clone(), *n)) {
            rows.push((label.clone(), *n));
        }
    }
    for (label, n) in rows {
        for p in [Precision::Tf32, Precision::Fp32] {
            for pass in ["forward", "forward+backward"] {
                let get = |form, side| median(&(label.clone(), n, form, side, p, pass));
                let (r, nv) = (get("reduced", "ours"), get("naive", "ours"));
                let (cr, cn) = (get("reduced", "cuDNN"), get("naive", "cuDNN"));
                let best = [cr, cn].into_iter().flatten().min_by(f64::total_cmp);
                let ratio = match (r, best) {
                    (Some(r), Some(b)) => format!("{:.2}", r / b),
                    _ => "—".into(),
                };
                let _ = writeln!(
                    md,
                    "| {label} | {n} | {p:?} | {pass} | {} | {} | {} | {} | {ratio} |",
                    fmt(r),
                    fmt(nv),
                    fmt(cr),
                    fmt(cn)
                );
            }
        }
    }
    Some(md)
}

/// The table cell of a module benchmark: GPU groups only (the table compares against cuDNN).
fn cell(
    dev: &Device,
    label: &str,
    n: usize,
    form: &'static str,
    side: &'static str,
    p: Precision,
    pass: &'static str,
) -> Option<Cell> {
    matches!(dev, Device::Cuda(_)).then(|| (label.to_string(), n, form, side, p, pass))
}

fn modules() -> [(&'static str, InceptionModule, usize); 3] {
    let (m1, m2, _) = MnistConfig::default().param_table();
    let g3a = InceptionModule::new(192, InceptionWidths::googlenet_3a());
    [
        ("MNIST module 1", m1, 28),
        ("MNIST module 2", m2, 28),
        ("GoogLeNet inception (3a)", g3a, 28),
    ]
}

/// The FLOP table as markdown.
fn flop_table() -> String {
    let mut md = String::from(
        "Multiply-adds per image, counted as K²·H·W·C_in·C_out per conv (pooling counts none; the naive module\n\
         passes the pooled input through, the reduced one projects it with a 1×1 conv).\n\n\
         | module | form | 1×1 | 3×3 branch | 5×5 branch | pool branch | total |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    let row = |md: &mut String, name: &str, form: &str, m: &BranchMacs| {
        let _ = writeln!(
            md,
            "| {name} | {form} | {} | {} | {} | {} | {} |",
            m.b1x1,
            m.b3x3,
            m.b5x5,
            m.pool,
            m.total()
        );
    };
    for (name, m, hw) in modules() {
        let (naive, reduced) = (m.macs_naive(hw, hw), m.macs_reduced(hw, hw));
        row(&mut md, name, "naive", &naive);
        row(&mut md, name, "reduced", &reduced);
        let ratio = naive.total() as f64 / reduced.total() as f64;
        let verdict = if ratio >= 1.0 {
            format!("the reduces save {ratio:.1}×")
        } else {
            format!(
                "the reduces cost {:.1}× MORE (one input channel: nothing to reduce)",
                1.0 / ratio
            )
        };
        let _ = writeln!(
            md,
            "| {name} | naive / reduced | | | | | {ratio:.2}: {verdict} |"
        );
    }
    let g3a = InceptionModule::new(192, InceptionWidths::googlenet_3a());
    let (n5, r5) = (g3a.macs_naive(28, 28).b5x5, g3a.macs_reduced(28, 28).b5x5);
    let _ = writeln!(
        md,
        "\n(3a)'s 5×5 branch, the write-up's example: naive 5²·28²·192·32 = {n5}; reduced 1²·28²·192·16 + 5²·28²·16·32 = {r5}."
    );
    md
}

/// A benchmark group with this bench's settings: [`SAMPLES`] samples, 0.3 s warm-up, 3 s of measurement (or
/// `INCEPTION_BENCH_SECS`).
fn configured_group<'a>(c: &'a mut Criterion, name: String) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(secs::measurement_or(Duration::from_secs(3)));
    group
}

fn device_header(dev: &Device) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    match dev {
        Device::Cpu => format!("{cpu}, {}", dev.describe()),
        Device::Cuda(_) => dev.describe(),
    }
}

fn rand(seed: u32, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8) as f32 / 8_388_608.0 - 1.0)
        .collect()
}

/// The reduced module's forward and forward + backward at batch `n`, its convs in `m.precision`.
fn bench_module<B: Backend>(
    c: &mut Criterion,
    b: &B,
    dev: &Device,
    label: &str,
    m: &InceptionModule,
    n: usize,
) {
    let (h, w, precision) = (28, 28, m.precision);
    let x = b.upload(&rand(1, n * m.c_in * h * w)).expect("x");
    let params = b.upload(&rand(2, m.layout().len())).expect("params");
    let dy = b.upload(&rand(3, n * m.c_out() * h * w)).expect("dy");
    let mut y = b.alloc_zeros(n * m.c_out() * h * w).expect("y");
    let mut dx = b.alloc_zeros(n * m.c_in * h * w).expect("dx");
    let mut dparams = b.alloc_zeros(m.layout().len()).expect("dparams");
    let mut saved = m.alloc_saved(b, n, h, w).expect("saved");
    let mut scratch = m.alloc_scratch(b, n, h, w).expect("scratch");
    let flops = 2 * m.macs_reduced(h, w).total() * n as u64;
    let mut group = configured_group(
        c,
        format!(
            "inception module, reduced {precision:?} [{}]",
            device_header(dev)
        ),
    );
    group.throughput(Throughput::Elements(flops));
    let (yl, xl) = (b.len(&y), b.len(&x));
    let fwd_cell = cell(dev, label, n, "reduced", "ours", precision, "forward");
    group.bench_function(BenchmarkId::new(format!("{label} forward"), n), |bch| {
        timed(bch, fwd_cell.clone(), dev, || {
            let xv = b.view(&x, 0..xl).expect("view");
            m.forward(
                b,
                &mut b.view_mut(&mut y, 0..yl).expect("view"),
                &mut saved,
                &xv,
                (&params, 0),
                (n, h, w),
            )
            .expect("forward");
        })
    });
    group.throughput(Throughput::Elements(3 * flops)); // backward ≈ twice the forward's multiply-adds
    let both_cell = cell(
        dev,
        label,
        n,
        "reduced",
        "ours",
        precision,
        "forward+backward",
    );
    group.bench_function(
        BenchmarkId::new(format!("{label} forward+backward"), n),
        |bch| {
            timed(bch, both_cell.clone(), dev, || {
                let xv = b.view(&x, 0..xl).expect("view");
                m.forward(
                    b,
                    &mut b.view_mut(&mut y, 0..yl).expect("view"),
                    &mut saved,
                    &xv,
                    (&params, 0),
                    (n, h, w),
                )
                .expect("forward");
                let (yv, dyv) = (
                    b.view(&y, 0..yl).expect("view"),
                    b.view(&dy, 0..yl).expect("view"),
                );
                let mut dxv = b.view_mut(&mut dx, 0..xl).expect("view");
                m.backward(
                    b,
                    Some(&mut dxv),
                    (&mut dparams, 0),
                    &mut scratch,
                    &dyv,
                    &yv,
                    &xv,
                    &saved,
                    &params,
                    (n, h, w),
                )
                .expect("backward");
            })
        },
    );
    group.finish();
}

/// The naive module (DESIGN.md: 1×1, 3×3 and 5×5 convs on the input, the pooled input passed through, ReLU
/// over the concat), forward and forward + backward, from the crate's kernels. The convs write their channel
/// slices with the ReLU in their epilogue; the pooled input reaches its slice through one ReLU launch per image
/// (no pool kernel writes channel slices), and its gradient leaves it through one copy per image: 2·n small
/// launches that the reduced module does not pay.
fn bench_naive<B: Backend>(
    c: &mut Criterion,
    b: &B,
    dev: &Device,
    label: &str,
    m: &InceptionModule,
    n: usize,
) {
    let (h, w, c_in, wd, precision) = (28, 28, m.c_in, m.widths, m.precision);
    let (hw, c_total) = (h * w, wd.c1x1 + wd.c3x3 + wd.c5x5 + m.c_in);
    let convs: Vec<ConvShape> = [
        (wd.c1x1, 1, 0),
        (wd.c3x3, 3, wd.c1x1),
        (wd.c5x5, 5, wd.c1x1 + wd.c3x3),
    ]
    .into_iter()
    .map(|(co, k, off)| {
        ConvShape::new(n, c_in, co, h, w, k)
            .into_slice(c_total, off)
            .with_precision(precision)
    })
    .collect();
    let pool_off = wd.c1x1 + wd.c3x3 + wd.c5x5;
    let ps = PoolShape { n, c: c_in, h, w };
    let x = b.upload(&rand(11, n * c_in * hw)).expect("x");
    let dy = b.upload(&rand(12, n * c_total * hw)).expect("dy");
    let ws: Vec<_> = convs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let len = s.c_out * s.c_in * s.k * s.k;
            (
                b.upload(&rand(13 + i as u32, len)).expect("w"),
                b.upload(&rand(23 + i as u32, s.c_out)).expect("b"),
                b.alloc_zeros(len + s.c_out).expect("dwdb"),
            )
        })
        .collect();
    let mut ws = ws;
    let mut y = b.alloc_zeros(n * c_total * hw).expect("y");
    let mut g = b.alloc_zeros(n * c_total * hw).expect("g");
    let mut pooled = b.alloc_zeros(n * c_in * hw).expect("pooled");
    let mut dpooled = b.alloc_zeros(n * c_in * hw).expect("dpooled");
    let mut dx = b.alloc_zeros(n * c_in * hw).expect("dx");
    let (yl, xl, img) = (n * c_total * hw, n * c_in * hw, c_in * hw);
    type ConvBufs<B> = (
        <B as Backend>::Buf,
        <B as Backend>::Buf,
        <B as Backend>::Buf,
    ); // w, b, [dw | db]
    let forward = |y: &mut B::Buf, pooled: &mut B::Buf, ws: &[ConvBufs<B>]| {
        let xv = b.view(&x, 0..xl).expect("view");
        for (s, (wt, bias, _)) in convs.iter().zip(ws) {
            let (wv, bv) = (
                b.view(wt, 0..b.len(wt)).expect("view"),
                b.view(bias, 0..b.len(bias)).expect("view"),
            );
            b.conv_fwd(
                &mut b.view_mut(y, 0..yl).expect("view"),
                &xv,
                &wv,
                &bv,
                s,
                true,
            )
            .expect("conv_fwd");
        }
        b.maxpool3x3s1_fwd(&mut b.view_mut(pooled, 0..xl).expect("view"), &xv, &ps)
            .expect("pool");
        for i in 0..n {
            let dst = (i * c_total + pool_off) * hw;
            b.relu_fwd(
                &mut b.view_mut(y, dst..dst + img).expect("view"),
                &b.view(pooled, i * img..(i + 1) * img).expect("view"),
            )
            .expect("relu");
        }
    };
    let macs = m.macs_naive(h, w).total();
    let flops = 2 * macs * n as u64;
    let mut group = configured_group(
        c,
        format!(
            "inception module, naive {precision:?} [{}]",
            device_header(dev)
        ),
    );
    group.throughput(Throughput::Elements(flops));
    let fwd_cell = cell(dev, label, n, "naive", "ours", precision, "forward");
    group.bench_function(BenchmarkId::new(format!("{label} forward"), n), |bch| {
        timed(bch, fwd_cell.clone(), dev, || {
            forward(&mut y, &mut pooled, &ws);
        })
    });
    group.throughput(Throughput::Elements(3 * flops));
    let both_cell = cell(
        dev,
        label,
        n,
        "naive",
        "ours",
        precision,
        "forward+backward",
    );
    group.bench_function(
        BenchmarkId::new(format!("{label} forward+backward"), n),
        |bch| {
            timed(bch, both_cell.clone(), dev, || {
                forward(&mut y, &mut pooled, &ws);
                b.relu_bwd(
                    &mut b.view_mut(&mut g, 0..yl).expect("view"),
                    &b.view(&dy, 0..yl).expect("view"),
                    &b.view(&y, 0..yl).expect("view"),
                )
                .expect("relu_bwd");
                let (gv, xv) = (
                    b.view(&g, 0..yl).expect("view"),
                    b.view(&x, 0..xl).expect("view"),
                );
                for (i, (s, (wt, _, dwdb))) in convs.iter().zip(ws.iter_mut()).enumerate() {
                    let len = b.len(dwdb);
                    b.conv_wgrad(
                        &mut b.view_mut(dwdb, 0..len).expect("view"),
                        &gv,
                        None,
                        &xv,
                        s,
                    )
                    .expect("wgrad");
                    let wv = b.view(wt, 0..b.len(wt)).expect("view");
                    b.conv_dgrad(
                        &mut b.view_mut(&mut dx, 0..xl).expect("view"),
                        &gv,
                        None,
                        &wv,
                        s,
                        i > 0,
                    )
                    .expect("dgrad");
                }
                for i in 0..n {
                    let src = (i * c_total + pool_off) * hw;
                    b.copy(
                        &mut b
                            .view_mut(&mut dpooled, i * img..(i + 1) * img)
                            .expect("view"),
                        &b.view(&g, src..src + img).expect("view"),
                    )
                    .expect("copy");
                }
                b.maxpool3x3s1_bwd(
                    &mut b.view_mut(&mut dx, 0..xl).expect("view"),
                    &b.view(&dpooled, 0..xl).expect("view"),
                    &xv,
                    &ps,
                    true,
                )
                .expect("pool bwd");
            })
        },
    );
    group.finish();
}

/// The fused reduce conv against the chain 1×1 conv + ReLU → k×k conv + ReLU, at module 2's 5×5 branch.
fn bench_fused<B: Backend>(c: &mut Criterion, b: &B, dev: &Device) {
    let s = ReduceConvShape {
        n: 50,
        c_in: 128,
        c_mid: 16,
        c_out: 64,
        h: 28,
        w: 28,
        k: 5,
        c_total: 64,
        c_offset: 0,
        precision: inception_cuda::shape::Precision::Fp32,
    };
    let plen = 16 * 128 + 16 + 64 * 16 * 25 + 64;
    let x = b.upload(&rand(4, 50 * 128 * 784)).expect("x");
    let params = b.upload(&rand(5, plen)).expect("params");
    let (mut y, mut mid) = (
        b.alloc_zeros(50 * 64 * 784).expect("y"),
        b.alloc_zeros(50 * 16 * 784).expect("mid"),
    );
    let flops = 2 * 50 * (s.reduce().macs_per_image() + s.conv().macs_per_image());
    let mut group = configured_group(
        c,
        format!("fused vs unfused reduce conv 5×5 [{}]", device_header(dev)),
    );
    group.throughput(Throughput::Elements(flops));
    let (xl, yl, ml) = (b.len(&x), b.len(&y), b.len(&mid));
    group.bench_function("fused reduce_conv_fwd, batch 50", |bch| {
        bch.iter(|| {
            let (xv, pv) = (
                b.view(&x, 0..xl).expect("v"),
                b.view(&params, 0..plen).expect("v"),
            );
            b.reduce_conv_fwd(
                &mut b.view_mut(&mut y, 0..yl).expect("v"),
                &mut b.view_mut(&mut mid, 0..ml).expect("v"),
                &xv,
                &pv,
                &s,
            )
            .expect("fused");
            dev.synchronize().expect("sync");
        })
    });
    let r = inception_cuda::backend::reduce_conv_param_ranges(&s);
    group.bench_function("unfused conv_fwd 1×1 + conv_fwd 5×5, batch 50", |bch| {
        bch.iter(|| {
            let xv = b.view(&x, 0..xl).expect("v");
            let p = |i: usize| b.view(&params, r[i].clone()).expect("v");
            b.conv_fwd(
                &mut b.view_mut(&mut mid, 0..ml).expect("v"),
                &xv,
                &p(0),
                &p(1),
                &s.reduce(),
                true,
            )
            .expect("1×1");
            let midv = b.view(&mid, 0..ml).expect("v");
            b.conv_fwd(
                &mut b.view_mut(&mut y, 0..yl).expect("v"),
                &midv,
                &p(2),
                &p(3),
                &s.conv(),
                true,
            )
            .expect("5×5");
            dev.synchronize().expect("sync");
        })
    });
    // Issue 12's question: should the backward recompute the reduced map from the module input or read the
    // copy the forward saved? Recomputing costs one 1×1 conv + ReLU over the input (it reads x, 20 MB here);
    // the saved copy costs its traffic, written once in the forward and read once in the backward: exactly one
    // copy of the map (2.5 MB each way).
    group.throughput(Throughput::Elements(2 * 50 * s.reduce().macs_per_image()));
    for p in Precision::ALL {
        group.bench_function(format!("map recomputed {p:?} (1×1 conv)"), |bch| {
            bch.iter(|| {
                let xv = b.view(&x, 0..xl).expect("v");
                let p0 = b.view(&params, r[0].clone()).expect("v");
                let p1 = b.view(&params, r[1].clone()).expect("v");
                b.conv_fwd(
                    &mut b.view_mut(&mut mid, 0..ml).expect("v"),
                    &xv,
                    &p0,
                    &p1,
                    &s.reduce().with_precision(p),
                    true,
                )
                .expect("1×1");
                dev.synchronize().expect("sync");
            })
        });
    }
    let mut copy = b.alloc_zeros(ml).expect("copy");
    group.throughput(Throughput::Bytes(2 * 4 * ml as u64));
    group.bench_function("map saved (one copy's traffic)", |bch| {
        bch.iter(|| {
            b.copy(
                &mut b.view_mut(&mut copy, 0..ml).expect("v"),
                &b.view(&mid, 0..ml).expect("v"),
            )
            .expect("copy");
            dev.synchronize().expect("sync");
        })
    });
    group.finish();
}

/// fc1's three GEMMs at batch 50 (M=50, N=700, K=200,704), in `precision`, then the training step's forms of
/// its backward: the weight gradient applied by Adam as it is formed (`linear_wgrad_adam`) and dgrad with it in
/// one pass over the weight (`linear_bwd_adam`; in TF32 `linear_bwd_adam_tf32`, cp.async-pipelined).
fn bench_fc1<B: Backend>(c: &mut Criterion, b: &B, dev: &Device, precision: Precision) {
    let s = LinearShape::new(50, 200_704, 700).with_precision(precision);
    let (nx, nw) = (50 * 200_704, 700 * 200_704);
    let x = b.upload(&rand(6, nx)).expect("x");
    let wt = b.upload(&rand(7, nw)).expect("w");
    let bias = b.upload(&rand(8, 700)).expect("b");
    let (mut y, mut dx, mut dw) = (
        b.alloc_zeros(35_000).expect("y"),
        b.alloc_zeros(nx).expect("dx"),
        b.alloc_zeros(nw).expect("dw"),
    );
    let name = format!("fc1 GEMMs {precision:?} [{}]", device_header(dev));
    let mut group = configured_group(c, name);
    group.throughput(Throughput::Elements(2 * 50 * 200_704 * 700));
    let (xv, wv, bv) = (
        b.view(&x, 0..nx).expect("v"),
        b.view(&wt, 0..nw).expect("v"),
        b.view(&bias, 0..700).expect("v"),
    );
    group.bench_function("linear_fwd", |bch| {
        bch.iter(|| {
            b.linear_fwd(
                &mut b.view_mut(&mut y, 0..35_000).expect("v"),
                &xv,
                &wv,
                &bv,
                &s,
            )
            .expect("fwd");
            dev.synchronize().expect("sync");
        })
    });
    let yv = b.view(&y, 0..35_000).expect("v");
    group.bench_function("linear_dgrad", |bch| {
        bch.iter(|| {
            b.linear_dgrad(&mut b.view_mut(&mut dx, 0..nx).expect("v"), &yv, &wv, &s)
                .expect("dgrad");
            dev.synchronize().expect("sync");
        })
    });
    group.bench_function("linear_wgrad", |bch| {
        bch.iter(|| {
            b.linear_wgrad(&mut b.view_mut(&mut dw, 0..nw).expect("v"), &yv, &xv, &s)
                .expect("wgrad");
            dev.synchronize().expect("sync");
        })
    });
    // The training step's forms: Adam applied to the gradient as it is formed (never stored), and dgrad with it
    // in one pass. Bytes moved by the one pass: w, m, v read and written, dy, x read, dx written.
    let (mut am, mut av) = (
        b.alloc_zeros(nw).expect("adam_m"),
        b.alloc_zeros(nw).expect("adam_v"),
    );
    let mut t = 0;
    group.bench_function("linear_wgrad_adam", |bch| {
        bch.iter(|| {
            t += 1;
            let wmv = [
                &mut b.view_mut(&mut dw, 0..nw).expect("v"),
                &mut b.view_mut(&mut am, 0..nw).expect("v"),
                &mut b.view_mut(&mut av, 0..nw).expect("v"),
            ];
            b.linear_wgrad_adam(wmv, &yv, &xv, &s, &AdamStep::new(1e-4, t))
                .expect("wgrad_adam");
            dev.synchronize().expect("sync");
        })
    });
    group.throughput(Throughput::Bytes(
        4 * (6 * nw as u64 + 2 * nx as u64 + 35_000),
    ));
    group.bench_function(
        "linear_bwd_adam (dgrad + wgrad + Adam, one pass; bytes)",
        |bch| {
            bch.iter(|| {
                t += 1;
                let wmv = [
                    &mut b.view_mut(&mut dw, 0..nw).expect("v"),
                    &mut b.view_mut(&mut am, 0..nw).expect("v"),
                    &mut b.view_mut(&mut av, 0..nw).expect("v"),
                ];
                let mut dxv = b.view_mut(&mut dx, 0..nx).expect("v");
                b.linear_bwd_adam(&mut dxv, wmv, &yv, &xv, &s, &AdamStep::new(1e-4, t))
                    .expect("bwd_adam");
                dev.synchronize().expect("sync");
            })
        },
    );
    group.finish();
}

fn run_all<B: Backend>(c: &mut Criterion, b: &B, dev: &Device, gpu: bool) {
    let [_, (_, m2, _), (_, g3a, _)] = modules();
    // TF32 on the GPU only: on the CPU the twins round the operands and run the same fp32 products.
    let precisions: &[Precision] = if gpu {
        &Precision::ALL
    } else {
        &[Precision::Fp32]
    };
    for &p in precisions {
        let (m2, g3a) = (m2.with_precision(p), g3a.with_precision(p));
        bench_module(c, b, dev, "MNIST module 2", &m2, 50);
        bench_naive(c, b, dev, "MNIST module 2", &m2, 50);
        bench_module(c, b, dev, "GoogLeNet (3a)", &g3a, 32);
        bench_naive(c, b, dev, "GoogLeNet (3a)", &g3a, 32);
        if gpu {
            bench_module(c, b, dev, "GoogLeNet (3a)", &g3a, 128);
            bench_naive(c, b, dev, "GoogLeNet (3a)", &g3a, 128);
        }
    }
    bench_fused(c, b, dev);
    bench_fc1(c, b, dev, Precision::Fp32);
    if gpu {
        bench_fc1(c, b, dev, Precision::Tf32);
    }
}

/// cuDNN modules (reduced and naive, forward and forward + backward, fp32 and TF32; every conv with the
/// algorithm that ran fastest at its shape) and cuBLAS fc1 GEMMs at the shapes timed above, same stream, same
/// run; skipped, with the reason, where a library is missing. The module table printed at the end compares
/// them with ours; `scripts/module-table.py` does the same against PyTorch's whole module (`cudnn.benchmark`).
#[cfg(feature = "baselines")]
fn bench_libraries(c: &mut Criterion, dev: &Device) {
    let Device::Cuda(cuda) = dev else { return };
    let stream = cuda.backend().stream().clone();
    let header = device_header(dev);
    if libs::cudnn_present() {
        let [_, (_, m2, _), (_, g3a, _)] = modules();
        for (label, m, n) in Precision::ALL.into_iter().flat_map(|p| {
            [
                ("MNIST module 2", m2.with_precision(p), 50),
                ("GoogLeNet (3a)", g3a.with_precision(p), 32),
                ("GoogLeNet (3a)", g3a.with_precision(p), 128),
            ]
        }) {
            let p = m.precision;
            for naive in [false, true] {
                let form = if naive { "naive" } else { "reduced" };
                let mut module = match libs::DnnModule::new(&stream, &m, (n, 28, 28), naive, rand) {
                    Ok(module) => module,
                    Err(e) => {
                        println!("cuDNN {form} {p:?} {label} batch {n}: not timed: {e}");
                        continue;
                    }
                };
                let macs = if naive {
                    m.macs_naive(28, 28)
                } else {
                    m.macs_reduced(28, 28)
                };
                println!(
                    "cuDNN {form} {p:?} {label} batch {n}: algorithms (forward/data/filter) {}",
                    module.algorithms()
                );
                let mut group =
                    configured_group(c, format!("cuDNN module, {form} {p:?} [{header}]"));
                group.throughput(Throughput::Elements(2 * macs.total() * n as u64));
                let fwd_cell = cell(dev, label, n, form, "cuDNN", p, "forward");
                group.bench_function(BenchmarkId::new(format!("{label} forward"), n), |bch| {
                    timed(bch, fwd_cell.clone(), dev, || {
                        module.forward().expect("cuDNN forward");
                    })
                });
                group.throughput(Throughput::Elements(3 * 2 * macs.total() * n as u64));
                let both_cell = cell(dev, label, n, form, "cuDNN", p, "forward+backward");
                group.bench_function(
                    BenchmarkId::new(format!("{label} forward+backward"), n),
                    |bch| {
                        timed(bch, both_cell.clone(), dev, || {
                            module.forward().expect("cuDNN forward");
                            module.backward(cuda.backend()).expect("cuDNN backward");
                        })
                    },
                );
                group.finish();
            }
        }
    } else {
        println!(
            "cuDNN not found (libcudnn.so.9 on LD_LIBRARY_PATH?): the cuDNN modules are not timed"
        );
    }
    // Before the cuBLAS groups: a run cut short after the modules still prints the table.
    print_module_table(dev);
    if libs::cublas_present() {
        let (m, k, n) = (50, 200_704, 700); // fc1 at batch 50, as bench_fc1
        let mut fc1 = match libs::Fc1Blas::new(&stream, (m, k, n), rand) {
            Ok(fc1) => fc1,
            Err(e) => return println!("cuBLAS fc1: not timed: {e}"),
        };
        let mut group = configured_group(c, format!("cuBLAS fc1 GEMMs [{header}]"));
        group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        group.bench_function("sgemm fwd", |bch| {
            bch.iter(|| {
                fc1.fwd().expect("sgemm");
                dev.synchronize().expect("sync");
            })
        });
        group.bench_function("sgemm dgrad", |bch| {
            bch.iter(|| {
                fc1.dgrad().expect("sgemm");
                dev.synchronize().expect("sync");
            })
        });
        group.bench_function("sgemm wgrad", |bch| {
            bch.iter(|| {
                fc1.wgrad().expect("sgemm");
                dev.synchronize().expect("sync");
            })
        });
        group.finish();
    } else {
        println!("cuBLAS not found (libcublas.so.13 on LD_LIBRARY_PATH?): the cuBLAS GEMMs are not timed");
    }
}

#[cfg(all(feature = "cuda", not(feature = "baselines")))]
fn bench_libraries(_: &mut Criterion, dev: &Device) {
    if matches!(dev, Device::Cuda(_)) {
        println!("cuDNN/cuBLAS side by side: build with `--features baselines` to time them");
        print_module_table(dev);
    }
}

/// Where criterion writes its reports (`target/criterion`); this bench's tables go there too.
fn criterion_dir() -> std::path::PathBuf {
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    target.parent().unwrap_or(target).join("criterion")
}

/// Prints the module table of the GPU groups run so far and writes it to `target/criterion/module-table.md`.
#[cfg(feature = "cuda")]
fn print_module_table(dev: &Device) {
    if let Some(md) = module_table(&dev.describe()) {
        println!("\n{md}");
        let _ = std::fs::write(criterion_dir().join("module-table.md"), &md);
    }
}

fn inception(c: &mut Criterion) {
    let md = flop_table();
    println!("\n{md}");
    let dir = criterion_dir();
    if std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("flops.md"), &md))
        .is_ok()
    {
        println!("(written to {})\n", dir.join("flops.md").display());
    }
    println!(
        "CPU: batch 128 of (3a) is left to the GPU group to keep the default run short. On a GPU, with \
         `--features baselines`, cuDNN (reduced and naive modules) and cuBLAS (fc1) run beside the crate's kernels.\n"
    );
    if std::env::var("INCEPTION_BENCH_CPU").is_ok_and(|v| v == "0") {
        println!("CPU groups skipped (INCEPTION_BENCH_CPU=0)");
    } else {
        run_all(c, &CpuBackend, &Device::Cpu, false);
    }
    #[cfg(feature = "cuda")]
    match Device::cuda(0) {
        Ok(dev) => {
            if let Device::Cuda(cuda) = &dev {
                run_all(c, cuda.backend(), &dev, true);
            }
            bench_libraries(c, &dev);
        }
        Err(reason) => println!("GPU benchmarks skipped: {reason}"),
    }
}

criterion_group!(benches, inception);
criterion_main!(benches);
