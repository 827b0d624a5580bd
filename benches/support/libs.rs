//! The libraries a user would otherwise call, for `benches/inception.rs` (cargo feature `baselines`): fc1's
//! three GEMMs from cuBLAS (fp32 without TF32) and the modules' forward and backward from cuDNN convolutions
//! (fp32 or TF32, each conv with the algorithm that ran fastest at its shape), on the crate's stream, through
//! cudarc's dynamically loaded bindings. Both libraries are optional at run time:
//! [`cublas_present`] and [`cudnn_present`] say whether they load (cuDNN often lives in a Python
//! environment's `nvidia/cudnn/lib`: put that folder on `LD_LIBRARY_PATH`).

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t as Op;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::cudnn::sys as dnn;
use cudarc::cudnn::{
    ActivationDescriptor, ActivationForward, ConvBiasActivationForward, ConvDescriptor, Cudnn,
    FilterDescriptor, PoolingDescriptor, PoolingForward, TensorDescriptor,
};
use std::time::Instant;

use cudarc::cudnn::{ConvBackwardData, ConvBackwardFilter};
use cudarc::driver::{CudaSlice, CudaStream, CudaView};
use inception_cuda::cuda::CudaBackend;
use inception_cuda::nn::InceptionModule;
use inception_cuda::shape::{PoolShape, Precision};
use inception_cuda::Backend;

/// Errors of the baselines (library status codes and driver errors).
pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Whether cuBLAS can be loaded (cudarc panics if a missing library is used, so ask first).
pub fn cublas_present() -> bool {
    // SAFETY: only tries to open the library by its candidate names.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// Whether cuDNN can be loaded.
pub fn cudnn_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::cudnn::sys::is_culib_present() }
}

/// fc1's GEMMs on cuBLAS, row-major PyTorch layouts: `y [m, n] = x [m, k] · w [n, k]ᵀ`, `dx = dy · w`,
/// `dw = dyᵀ · x` (each one sgemm on the column-major transposes).
pub struct Fc1Blas {
    blas: CudaBlas,
    x: CudaSlice<f32>,
    w: CudaSlice<f32>,
    dy: CudaSlice<f32>,
    y: CudaSlice<f32>,
    dx: CudaSlice<f32>,
    dw: CudaSlice<f32>,
    m: i32,
    k: i32,
    n: i32,
}

impl Fc1Blas {
    /// Buffers for `m × k` inputs and `n` outputs, filled from `rand(seed, len)`.
    pub fn new(
        stream: &Arc<CudaStream>,
        (m, k, n): (usize, usize, usize),
        rand: impl Fn(u32, usize) -> Vec<f32>,
    ) -> Res<Self> {
        let up = |seed, len| stream.clone_htod(&rand(seed, len));
        Ok(Fc1Blas {
            blas: CudaBlas::new(stream.clone())?,
            x: up(31, m * k)?,
            w: up(32, n * k)?,
            dy: up(33, m * n)?,
            y: stream.alloc_zeros(m * n)?,
            dx: stream.alloc_zeros(m * k)?,
            dw: stream.alloc_zeros(n * k)?,
            m: i32::try_from(m)?,
            k: i32::try_from(k)?,
            n: i32::try_from(n)?,
        })
    }

    fn cfg(
        transa: Op,
        transb: Op,
        (m, n, k): (i32, i32, i32),
        (lda, ldb, ldc): (i32, i32, i32),
    ) -> GemmConfig<f32> {
        GemmConfig {
            transa,
            transb,
            m,
            n,
            k,
            alpha: 1.0,
            lda,
            ldb,
            beta: 0.0,
            ldc,
        }
    }

    /// `y = x · wᵀ`: column-major `yᵀ [n × m] = wᵀᵀ · xᵀ`.
    pub fn fwd(&mut self) -> Res<()> {
        let (m, k, n) = (self.m, self.k, self.n);
        let cfg = Self::cfg(Op::CUBLAS_OP_T, Op::CUBLAS_OP_N, (n, m, k), (k, k, n));
        // SAFETY: the buffers hold the sizes the config names (allocated in `new`).
        unsafe { self.blas.gemm(cfg, &self.w, &self.x, &mut self.y) }?;
        Ok(())
    }

    /// `dx = dy · w`: column-major `dxᵀ [k × m] = wᵀ · dyᵀ`.
    pub fn dgrad(&mut self) -> Res<()> {
        let (m, k, n) = (self.m, self.k, self.n);
        let cfg = Self::cfg(Op::CUBLAS_OP_N, Op::CUBLAS_OP_N, (k, m, n), (k, n, k));
        // SAFETY: as above.
        unsafe { self.blas.gemm(cfg, &self.w, &self.dy, &mut self.dx) }?;
        Ok(())
    }

    /// `dw = dyᵀ · x`: column-major `dwᵀ [k × n] = xᵀ · dy`.
    pub fn wgrad(&mut self) -> Res<()> {
        let (m, k, n) = (self.m, self.k, self.n);
        let cfg = Self::cfg(Op::CUBLAS_OP_N, Op::CUBLAS_OP_T, (k, n, m), (k, n, k));
        // SAFETY: as above.
        unsafe { self.blas.gemm(cfg, &self.x, &self.dy, &mut self.dw) }?;
        Ok(())
    }
}

/// Where a cuDNN conv of a module reads and writes.
#[derive(Clone, Copy)]
enum Place {
    /// The module input `x [n, c_in, h, w]`.
    Input,
    /// Intermediate map `i` (`[n, c, h, w]`).
    Map(usize),
    /// Channels from this offset of the concat output `y [n, c_total, h, w]`.
    Slice(usize),
}

/// One conv of a module plan: (reads, writes, c_in, c_out, k).
type ConvPlan = (Place, Place, usize, usize, usize);

/// An algorithm cuDNN ran fastest here, with the workspace it needs.
struct Algo<A> {
    algo: A,
    ws: CudaSlice<u8>,
}

struct DnnConv {
    from: Place,
    to: Place,
    w: CudaSlice<f32>,
    b: CudaSlice<f32>,
    dw: CudaSlice<f32>,
    wdesc: FilterDescriptor<f32>,
    bdesc: TensorDescriptor<f32>,
    xdesc: TensorDescriptor<f32>,
    ydesc: TensorDescriptor<f32>,
    conv: ConvDescriptor<f32>,
    fwd: Algo<dnn::cudnnConvolutionFwdAlgo_t>,
    data: Algo<dnn::cudnnConvolutionBwdDataAlgo_t>,
    filter: Algo<dnn::cudnnConvolutionBwdFilterAlgo_t>,
}

/// One module's forward and backward from cuDNN, each conv with the algorithm cuDNN ran fastest at its shape
/// (every algorithm timed, as `cudnnFind*` and PyTorch's `cudnn.benchmark` do).
///
/// Forward: each conv one `cudnnConvolutionBiasActivationForward` (bias and ReLU fused) writing its channel
/// slice of the concat in place (strided descriptor), max pooling one `cudnnPoolingForward`. Reduced: the
/// module as the crate computes it; naive: 1×1, 3×3, 5×5 on the input and the pooled input passed through
/// (ReLU'd into its slice by `cudnnActivationForward`).
///
/// Backward: every conv's data and filter gradients from cuDNN (`cudnnConvolutionBackwardData` / `…Filter`,
/// reading the concat gradient's slices in place). The ReLU and max-pool gradients are the crate's kernels,
/// as in PyTorch they are PyTorch's own kernels rather than cuDNN's; the bias gradients are left out (cuDNN's
/// safe API in cudarc has no call for them), which makes cuDNN's forward + backward a slight lower bound.
pub struct DnnModule {
    convs: Vec<DnnConv>,
    /// `[n, c_in, h, w]`: the module input.
    x: CudaSlice<f32>,
    /// `[n, c, h, w]` each: the pooled input (`c_in` channels), then the reduce maps (reduced module only).
    maps: Vec<CudaSlice<f32>>,
    /// `[n, c_total, h, w]`: the concat output.
    y: CudaSlice<f32>,
    /// `[n, c_total, h, w]`, zeros: the `z` operand of the fused call (scaled by 0).
    z: CudaSlice<f32>,
    /// `[n, c_total, h, w]`: the gradient of `y` (input of the backward), and `g`, the same through the
    /// module's ReLU.
    dy: CudaSlice<f32>,
    g: CudaSlice<f32>,
    /// `[n, c_in, h, w]`: the input gradient.
    dx: CudaSlice<f32>,
    /// Gradients of the maps, each in its map's shape: as the conv reading the map gives them, and (reduce
    /// maps) through their ReLU.
    dmaps_raw: Vec<CudaSlice<f32>>,
    dmaps: Vec<CudaSlice<f32>>,
    relu: ActivationDescriptor<f32>,
    pool: PoolingDescriptor<f32>,
    in_desc: TensorDescriptor<f32>,
    pooled_desc: TensorDescriptor<f32>,
    /// For the naive module: the pooled input's slice of the concat (descriptor, channel offset).
    pass_through: Option<(TensorDescriptor<f32>, usize)>,
    shape: PoolShape,
    c_total: usize,
}

/// The pooled input: map 0 of every module.
const POOLED: usize = 0;

/// Timed runs per candidate algorithm.
const TRIALS: u32 = 5;

/// The candidate whose `run` is fastest over [`TRIALS`] runs after one untimed run, candidates that fail
/// (not supported at this shape, workspace too large) skipped, and that candidate's workspace.
fn fastest<A: Copy>(
    stream: &Arc<CudaStream>,
    what: &str,
    candidates: &[A],
    workspace: impl Fn(A) -> Res<usize>,
    mut run: impl FnMut(A, &mut CudaSlice<u8>) -> Res<()>,
) -> Res<Algo<A>> {
    let mut best: Option<(f64, Algo<A>)> = None;
    for &algo in candidates {
        let Ok(mut ws) = workspace(algo).and_then(|len| Ok(stream.alloc_zeros::<u8>(len.max(1))?))
        else {
            continue;
        };
        if run(algo, &mut ws)
            .and_then(|()| Ok(stream.synchronize()?))
            .is_err()
        {
            continue;
        }
        let t = Instant::now();
        let ok = (0..TRIALS).try_for_each(|_| run(algo, &mut ws));
        stream.synchronize()?;
        let secs = t.elapsed().as_secs_f64();
        if ok.is_ok() && best.as_ref().is_none_or(|(b, _)| secs < *b) {
            best = Some((secs, Algo { algo, ws }));
        }
    }
    best.map(|(_, a)| a)
        .ok_or_else(|| format!("{what}: no cuDNN algorithm ran").into())
}

impl DnnModule {
    /// The module `m` at batch `n` on `h × w` images, reduced or naive, with weights from `rand`; its convs in
    /// `m.precision` (fp32: `CUDNN_FMA_MATH`, no TF32; TF32: `CUDNN_DEFAULT_MATH`, which lets cuDNN round fp32
    /// operands to TF32 on the tensor cores: PyTorch's two settings). Times every algorithm of every conv, on
    /// random data, to choose the fastest.
    pub fn new(
        stream: &Arc<CudaStream>,
        m: &InceptionModule,
        (n, h, w): (usize, usize, usize),
        naive: bool,
        rand: impl Fn(u32, usize) -> Vec<f32>,
    ) -> Res<Self> {
        use dnn::cudnnConvolutionBwdDataAlgo_t as D;
        use dnn::cudnnConvolutionBwdFilterAlgo_t as F;
        use dnn::cudnnConvolutionFwdAlgo_t as A;
        let math = match m.precision {
            Precision::Fp32 => dnn::cudnnMathType_t::CUDNN_FMA_MATH,
            _ => dnn::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        };
        let dnn = Cudnn::new(stream.clone())?;
        let wd = m.widths;
        let c_in = m.c_in;
        let hw = h * w;
        // (input, output, c_in, c_out, k); maps: 0 = pooled, 1 = 3×3 reduce, 2 = 5×5 reduce
        let (c_total, plan, map_channels): (usize, Vec<ConvPlan>, Vec<usize>) = if naive {
            let c_total = wd.c1x1 + wd.c3x3 + wd.c5x5 + c_in;
            let plan = vec![
                (Place::Input, Place::Slice(0), c_in, wd.c1x1, 1),
                (Place::Input, Place::Slice(wd.c1x1), c_in, wd.c3x3, 3),
                (
                    Place::Input,
                    Place::Slice(wd.c1x1 + wd.c3x3),
                    c_in,
                    wd.c5x5,
                    5,
                ),
            ];
            (c_total, plan, vec![c_in])
        } else {
            let c_total = m.c_out();
            let o3 = wd.c1x1;
            let o5 = o3 + wd.c3x3;
            let op = o5 + wd.c5x5;
            let plan = vec![
                (Place::Input, Place::Slice(0), c_in, wd.c1x1, 1),
                (Place::Input, Place::Map(1), c_in, wd.c3x3_reduce, 1),
                (Place::Map(1), Place::Slice(o3), wd.c3x3_reduce, wd.c3x3, 3),
                (Place::Input, Place::Map(2), c_in, wd.c5x5_reduce, 1),
                (Place::Map(2), Place::Slice(o5), wd.c5x5_reduce, wd.c5x5, 5),
                (Place::Map(POOLED), Place::Slice(op), c_in, wd.pool_proj, 1),
            ];
            (c_total, plan, vec![c_in, wd.c3x3_reduce, wd.c5x5_reduce])
        };
        let i = |v: usize| i32::try_from(v);
        let (ni, hi, wi, cti) = (i(n)?, i(h)?, i(w)?, i(c_total)?);
        let packed = |c: usize| -> Res<TensorDescriptor<f32>> {
            Ok(dnn.create_4d_tensor::<f32>(
                dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                [ni, i(c)?, hi, wi],
            )?)
        };
        let slice = |c: usize| -> Res<TensorDescriptor<f32>> {
            let hwi = i(hw)?;
            Ok(dnn.create_4d_tensor_ex::<f32>([ni, i(c)?, hi, wi], [cti * hwi, hwi, wi, 1])?)
        };
        let x = stream.clone_htod(&rand(30, n * c_in * hw))?;
        // Random maps and map gradients (the forward and backward overwrite them): algorithms are timed on
        // data, not zeros.
        let random = |seed: u32, len: usize| stream.clone_htod(&rand(seed, len));
        let mut maps = map_channels
            .iter()
            .enumerate()
            .map(|(j, &c)| random(20 + j as u32, n * c * hw))
            .collect::<Result<Vec<_>, _>>()?;
        let mut y = stream.alloc_zeros::<f32>(n * c_total * hw)?;
        let z = stream.alloc_zeros::<f32>(n * c_total * hw)?;
        let g = stream.clone_htod(&rand(29, n * c_total * hw))?;
        let mut dx = stream.alloc_zeros::<f32>(n * c_in * hw)?;
        let mut dmaps_raw = maps
            .iter()
            .map(|m| stream.alloc_zeros::<f32>(m.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let dmaps = maps
            .iter()
            .enumerate()
            .map(|(j, m)| random(24 + j as u32, m.len()))
            .collect::<Result<Vec<_>, _>>()?;
        // The backward's beta for each data gradient: 0 where it writes a map's gradient or first writes the
        // input's (the backward runs the plan in reverse), 1 where it adds to the input's.
        let first_input_write = plan.iter().rposition(|p| matches!(p.0, Place::Input));
        let relu = dnn.create_activation::<f32>(
            dnn::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
            dnn::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
            0.0,
        )?;
        let mut convs = Vec::new();
        for (idx, &(from, to, ci, co, k)) in plan.iter().enumerate() {
            let xdesc = packed(ci)?;
            let ydesc = match to {
                Place::Slice(_) => slice(co)?,
                _ => packed(co)?,
            };
            let wdesc = dnn.create_4d_filter::<f32>(
                dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                [i(co)?, i(ci)?, i(k)?, i(k)?],
            )?;
            let bdesc = dnn.create_4d_tensor::<f32>(
                dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                [1, i(co)?, 1, 1],
            )?;
            let p = i(k / 2)?;
            let mut conv = dnn.create_conv2d::<f32>(
                [p, p],
                [1, 1],
                [1, 1],
                dnn::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )?;
            conv.set_math_type(math)?;
            let seed = 40 + 2 * idx as u32;
            let wt = stream.clone_htod(&rand(seed, co * ci * k * k))?;
            let b = stream.clone_htod(&rand(seed + 1, co))?;
            let mut dw = stream.alloc_zeros::<f32>(co * ci * k * k)?;
            let out_off = match to {
                Place::Slice(off) => off * hw,
                _ => 0,
            };
            let label = format!("conv {idx} ({k}×{k}, {ci} → {co})");
            let op = ConvBiasActivationForward {
                conv: &conv,
                act: &relu,
                x: &xdesc,
                w: &wdesc,
                z: &ydesc,
                bias: &bdesc,
                y: &ydesc,
            };
            let fwd = {
                let zv = z.slice(out_off..);
                // The input and output are distinct buffers (a conv never reads the map it writes).
                let (src, mut dst) = match (from, to) {
                    (Place::Input, Place::Slice(_)) => (x.slice(0..), y.slice_mut(out_off..)),
                    (Place::Input, Place::Map(j)) => (x.slice(0..), maps[j].slice_mut(0..)),
                    (Place::Map(i), Place::Slice(_)) => {
                        (maps[i].slice(0..), y.slice_mut(out_off..))
                    }
                    _ => return Err("unsupported conv placement".into()),
                };
                fastest(
                    stream,
                    &format!("{label} forward"),
                    &[
                        A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
                        A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
                    ],
                    |a| Ok(op.get_workspace_size(a)?),
                    |a, ws| {
                        // SAFETY: every buffer has (at least) the extent of its descriptor; z is zeros.
                        unsafe {
                            op.launch(
                                a,
                                Some(ws),
                                (1.0f32, 0.0f32),
                                &src,
                                &wt,
                                &zv,
                                &b.slice(0..),
                                &mut dst,
                            )
                        }?;
                        Ok(())
                    },
                )?
            };
            // The gradient this conv reads: the concat gradient's slice, or its output map's through the
            // map's ReLU.
            let dyv = match to {
                Place::Slice(off) => g.slice(off * hw..),
                Place::Map(j) => dmaps[j].slice(0..),
                Place::Input => return Err("a conv writing the input".into()),
            };
            let filter_op = ConvBackwardFilter {
                conv: &conv,
                x: &xdesc,
                dw: &wdesc,
                dy: &ydesc,
            };
            let filter = fastest(
                stream,
                &format!("{label} filter gradient"),
                &[
                    F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
                    F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
                    F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
                    F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
                    F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
                    F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
                    F::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
                ],
                |a| Ok(filter_op.get_workspace_size(a)?),
                |a, ws| {
                    let src = place(from, &x, &maps);
                    // SAFETY: as above; dw is [c_out, c_in, k, k].
                    unsafe {
                        filter_op.launch(a, Some(ws), (1.0f32, 0.0f32), &src, &mut dw, &dyv)
                    }?;
                    Ok(())
                },
            )?;
            let data_op = ConvBackwardData {
                conv: &conv,
                dx: &xdesc,
                w: &wdesc,
                dy: &ydesc,
            };
            let beta = match from {
                Place::Input if Some(idx) != first_input_write => 1.0f32,
                _ => 0.0,
            };
            let data = {
                let mut dst = match from {
                    Place::Input => dx.slice_mut(0..),
                    Place::Map(j) => dmaps_raw[j].slice_mut(0..),
                    Place::Slice(_) => return Err("a conv reading the concat".into()),
                };
                fastest(
                    stream,
                    &format!("{label} data gradient"),
                    &[
                        D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
                        D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                        D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
                        D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
                        D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
                        D::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
                    ],
                    |a| Ok(data_op.get_workspace_size(a)?),
                    |a, ws| {
                        // SAFETY: as above; the input gradient has the input's layout.
                        unsafe {
                            data_op.launch(a, Some(ws), (1.0f32, beta), &mut dst, &wt, &dyv)
                        }?;
                        Ok(())
                    },
                )?
            };
            convs.push(DnnConv {
                from,
                to,
                w: wt,
                b,
                dw,
                wdesc,
                bdesc,
                xdesc,
                ydesc,
                conv,
                fwd,
                data,
                filter,
            });
        }
        let pass_through = if naive {
            Some((slice(c_in)?, wd.c1x1 + wd.c3x3 + wd.c5x5))
        } else {
            None
        };
        Ok(DnnModule {
            relu,
            pool: dnn.create_poolingnd::<f32>(
                &[3, 3],
                &[1, 1],
                &[1, 1],
                dnn::cudnnPoolingMode_t::CUDNN_POOLING_MAX,
                dnn::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
            )?,
            in_desc: packed(c_in)?,
            pooled_desc: packed(c_in)?,
            dy: stream.clone_htod(&rand(28, n * c_total * hw))?,
            dmaps,
            x,
            y,
            z,
            g,
            dx,
            maps,
            dmaps_raw,
            convs,
            pass_through,
            shape: PoolShape { n, c: c_in, h, w },
            c_total,
        })
    }

    /// The algorithm each conv runs (forward, data gradient, filter gradient), for the bench's log.
    pub fn algorithms(&self) -> String {
        let short = |s: String| {
            s.trim_start_matches("CUDNN_CONVOLUTION_")
                .replace("FWD_ALGO_", "")
                .replace("BWD_DATA_ALGO_", "")
                .replace("BWD_FILTER_ALGO_", "")
        };
        self.convs
            .iter()
            .map(|c| {
                format!(
                    "{}/{}/{}",
                    short(format!("{:?}", c.fwd.algo)),
                    short(format!("{:?}", c.data.algo)),
                    short(format!("{:?}", c.filter.algo))
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One forward, issued to the stream (not synchronised).
    pub fn forward(&mut self) -> Res<()> {
        let hw = self.shape.h * self.shape.w;
        {
            let pool = PoolingForward {
                pooling: &self.pool,
                x: &self.in_desc,
                y: &self.pooled_desc,
            };
            // SAFETY: x and the pooled map have the shapes of their descriptors.
            unsafe { pool.launch((1.0f32, 0.0f32), &self.x, &mut self.maps[POOLED]) }?;
        }
        for c in &mut self.convs {
            let op = ConvBiasActivationForward {
                conv: &c.conv,
                act: &self.relu,
                x: &c.xdesc,
                w: &c.wdesc,
                z: &c.ydesc,
                bias: &c.bdesc,
                y: &c.ydesc,
            };
            let (maps, y, z, x) = (&mut self.maps, &mut self.y, &self.z, &self.x);
            let zoff = match c.to {
                Place::Slice(off) => off * hw,
                _ => 0,
            };
            let zv = z.slice(zoff..);
            let bv = c.b.slice(0..);
            // The input and output are distinct buffers (a conv never reads the map it writes).
            let (src, dst) = match (c.from, c.to) {
                (Place::Input, Place::Slice(off)) => (x.slice(0..), y.slice_mut(off * hw..)),
                (Place::Input, Place::Map(j)) => (x.slice(0..), maps[j].slice_mut(0..)),
                (Place::Map(i), Place::Slice(off)) => (maps[i].slice(0..), y.slice_mut(off * hw..)),
                _ => return Err("unsupported conv placement".into()),
            };
            let mut dst = dst;
            // SAFETY: every buffer has (at least) the extent of its descriptor; z is all zeros in y's layout.
            unsafe {
                op.launch(
                    c.fwd.algo,
                    Some(&mut c.fwd.ws),
                    (1.0f32, 0.0f32),
                    &src,
                    &c.w,
                    &zv,
                    &bv,
                    &mut dst,
                )
            }?;
        }
        if let Some((desc, off)) = &self.pass_through {
            let act = ActivationForward {
                act: &self.relu,
                x: &self.pooled_desc,
                y: desc,
            };
            let mut dst = self.y.slice_mut(off * hw..);
            // SAFETY: the pooled map is packed [n, c_in, h, w]; the slice descriptor stays inside y.
            unsafe { act.launch((1.0f32, 0.0f32), &self.maps[POOLED], &mut dst) }?;
        }
        Ok(())
    }

    /// One backward after [`DnnModule::forward`], issued to the stream: the module ReLU's gradient, then the
    /// convs in reverse (filter gradient, data gradient into the input gradient or a map's), each reduce map's
    /// ReLU, and the max pool's gradient added to the input gradient. `b` runs the ReLU and pool gradients.
    pub fn backward(&mut self, b: &CudaBackend) -> Res<()> {
        let hw = self.shape.h * self.shape.w;
        b.relu_bwd(
            &mut self.g.slice_mut(0..),
            &self.dy.slice(0..),
            &self.y.slice(0..),
        )?;
        let mut dx_written = false;
        for c in self.convs.iter_mut().rev() {
            let dyv = match c.to {
                Place::Slice(off) => self.g.slice(off * hw..),
                Place::Map(j) => self.dmaps[j].slice(0..),
                Place::Input => return Err("a conv writing the input".into()),
            };
            let src = place(c.from, &self.x, &self.maps);
            let filter = ConvBackwardFilter {
                conv: &c.conv,
                x: &c.xdesc,
                dw: &c.wdesc,
                dy: &c.ydesc,
            };
            // SAFETY: every buffer has (at least) the extent of its descriptor; dw is [c_out, c_in, k, k].
            unsafe {
                filter.launch(
                    c.filter.algo,
                    Some(&mut c.filter.ws),
                    (1.0f32, 0.0f32),
                    &src,
                    &mut c.dw,
                    &dyv,
                )
            }?;
            let data = ConvBackwardData {
                conv: &c.conv,
                dx: &c.xdesc,
                w: &c.wdesc,
                dy: &c.ydesc,
            };
            let (mut dst, beta) = match c.from {
                Place::Input => {
                    let beta = if dx_written { 1.0f32 } else { 0.0 };
                    dx_written = true;
                    (self.dx.slice_mut(0..), beta)
                }
                Place::Map(j) => (self.dmaps_raw[j].slice_mut(0..), 0.0),
                Place::Slice(_) => return Err("a conv reading the concat".into()),
            };
            // SAFETY: as above; the input gradient has the input's layout.
            unsafe {
                data.launch(
                    c.data.algo,
                    Some(&mut c.data.ws),
                    (1.0f32, beta),
                    &mut dst,
                    &c.w,
                    &dyv,
                )
            }?;
            // A reduce map's gradient through its ReLU, before the reverse order reaches the conv that wrote it.
            if let Place::Map(j) = c.from {
                if j != POOLED {
                    b.relu_bwd(
                        &mut self.dmaps[j].slice_mut(0..),
                        &self.dmaps_raw[j].slice(0..),
                        &self.maps[j].slice(0..),
                    )?;
                }
            }
        }
        if let Some((_, off)) = self.pass_through {
            // The pooled input's gradient: its slice of the concat gradient, image by image.
            let img = self.shape.c * hw;
            for i in 0..self.shape.n {
                let src = (i * self.c_total + off) * hw;
                b.copy(
                    &mut self.dmaps_raw[POOLED].slice_mut(i * img..(i + 1) * img),
                    &self.g.slice(src..src + img),
                )?;
            }
        }
        b.maxpool3x3s1_bwd(
            &mut self.dx.slice_mut(0..),
            &self.dmaps_raw[POOLED].slice(0..),
            &self.x.slice(0..),
            &self.shape,
            dx_written,
        )?;
        Ok(())
    }
}

/// The buffer a conv reads.
fn place<'a>(from: Place, x: &'a CudaSlice<f32>, maps: &'a [CudaSlice<f32>]) -> CudaView<'a, f32> {
    match from {
        Place::Map(i) => maps[i].slice(0..),
        _ => x.slice(0..),
    }
}
