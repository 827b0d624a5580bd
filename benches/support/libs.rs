//! The libraries a user would otherwise call, for `benches/inception.rs` (cargo feature `baselines`): fc1's
//! three GEMMs from cuBLAS (fp32 without TF32) and the modules' forward from cuDNN convolutions (fp32 or
//! TF32, with cuDNN's heuristic algorithm for the fused bias + ReLU call), on the crate's stream, through cudarc's dynamically loaded bindings. Both libraries are optional at run time:
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
use cudarc::driver::{CudaSlice, CudaStream};
use inception_cuda::nn::InceptionModule;
use inception_cuda::shape::Precision;

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

struct DnnConv {
    from: Place,
    to: Place,
    w: CudaSlice<f32>,
    b: CudaSlice<f32>,
    wdesc: FilterDescriptor<f32>,
    bdesc: TensorDescriptor<f32>,
    xdesc: TensorDescriptor<f32>,
    ydesc: TensorDescriptor<f32>,
    conv: ConvDescriptor<f32>,
    algo: dnn::cudnnConvolutionFwdAlgo_t,
    ws: CudaSlice<u8>,
}

/// One module's forward from cuDNN: each conv one `cudnnConvolutionBiasActivationForward` (bias and ReLU
/// fused) writing its channel slice of the concat in place (strided descriptor), max pooling one
/// `cudnnPoolingForward`. Reduced: the module as the crate computes it; naive: 1×1, 3×3, 5×5 on the input
/// and the pooled input passed through (ReLU'd into its slice by `cudnnActivationForward`).
pub struct DnnModule {
    convs: Vec<DnnConv>,
    x: CudaSlice<f32>,
    maps: Vec<CudaSlice<f32>>,
    y: CudaSlice<f32>,
    /// Zeros in y's layout: the `z` operand of the fused call (scaled by 0).
    z: CudaSlice<f32>,
    relu: ActivationDescriptor<f32>,
    pool: PoolingDescriptor<f32>,
    in_desc: TensorDescriptor<f32>,
    pooled_desc: TensorDescriptor<f32>,
    /// The pooled map's index in `maps`, and for the naive module its slice's descriptor and offset.
    pooled: usize,
    pass_through: Option<(TensorDescriptor<f32>, usize)>,
    hw: usize,
}

impl DnnModule {
    /// The module `m` at batch `n` on `h × w` images, reduced or naive, with weights from `rand`; its convs in
    /// `m.precision` (fp32: `CUDNN_FMA_MATH`, no TF32; TF32: `CUDNN_TENSOR_OP_MATH`, which lets cuDNN round
    /// fp32 operands to TF32 on the tensor cores).
    pub fn new(
        stream: &Arc<CudaStream>,
        m: &InceptionModule,
        (n, h, w): (usize, usize, usize),
        naive: bool,
        rand: impl Fn(u32, usize) -> Vec<f32>,
    ) -> Res<Self> {
        let math = match m.precision {
            Precision::Fp32 => dnn::cudnnMathType_t::CUDNN_FMA_MATH,
            _ => dnn::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
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
                (Place::Map(0), Place::Slice(op), c_in, wd.pool_proj, 1),
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
            let relu_tmp = dnn.create_activation::<f32>(
                dnn::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
                dnn::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                0.0,
            )?;
            let op = ConvBiasActivationForward {
                conv: &conv,
                act: &relu_tmp,
                x: &xdesc,
                w: &wdesc,
                z: &ydesc,
                bias: &bdesc,
                y: &ydesc,
            };
            let algo = op.pick_algorithm()?;
            let ws = stream.alloc_zeros::<u8>(op.get_workspace_size(algo)?.max(1))?;
            let seed = 40 + 2 * idx as u32;
            convs.push(DnnConv {
                from,
                to,
                w: stream.clone_htod(&rand(seed, co * ci * k * k))?,
                b: stream.clone_htod(&rand(seed + 1, co))?,
                wdesc,
                bdesc,
                xdesc,
                ydesc,
                conv,
                algo,
                ws,
            });
        }
        let maps = map_channels
            .iter()
            .map(|&c| stream.alloc_zeros::<f32>(n * c * hw))
            .collect::<Result<Vec<_>, _>>()?;
        let pass_through = if naive {
            Some((slice(c_in)?, wd.c1x1 + wd.c3x3 + wd.c5x5))
        } else {
            None
        };
        Ok(DnnModule {
            relu: dnn.create_activation::<f32>(
                dnn::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
                dnn::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                0.0,
            )?,
            pool: dnn.create_poolingnd::<f32>(
                &[3, 3],
                &[1, 1],
                &[1, 1],
                dnn::cudnnPoolingMode_t::CUDNN_POOLING_MAX,
                dnn::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
            )?,
            in_desc: packed(c_in)?,
            pooled_desc: packed(c_in)?,
            x: stream.clone_htod(&rand(30, n * c_in * hw))?,
            y: stream.alloc_zeros(n * c_total * hw)?,
            z: stream.alloc_zeros(n * c_total * hw)?,
            maps,
            convs,
            pooled: 0,
            pass_through,
            hw,
        })
    }

    /// One forward, issued to the stream (not synchronised).
    pub fn forward(&mut self) -> Res<()> {
        let hw = self.hw;
        {
            let pool = PoolingForward {
                pooling: &self.pool,
                x: &self.in_desc,
                y: &self.pooled_desc,
            };
            // SAFETY: x and the pooled map have the shapes of their descriptors.
            unsafe { pool.launch((1.0f32, 0.0f32), &self.x, &mut self.maps[self.pooled]) }?;
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
                    c.algo,
                    Some(&mut c.ws),
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
            unsafe { act.launch((1.0f32, 0.0f32), &self.maps[self.pooled], &mut dst) }?;
        }
        Ok(())
    }
}
