//! Launch geometry of every kernel: the plans the launchers of [`crate::launcher`] follow on every driver
//! (the CUDA driver and the emulator), so a wrong grid or block size shows up in CI too. Pure arithmetic: no
//! driver calls here. The tile constants shared with the kernels come from `kernels/args.h` through
//! [`crate::bindings`].

use crate::bindings::{AdamScalars, ConvDims, GemmDims, ReduceDims};

/// Grid, block and dynamic shared memory of one launch (1-D blocks; the GEMMs use a 3-D grid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    /// Blocks in x.
    pub grid: u32,
    /// Blocks in y.
    pub grid_y: u32,
    /// Blocks in z.
    pub grid_z: u32,
    /// Threads per block in x.
    pub block: u32,
    /// Dynamic shared memory per block, bytes.
    pub shared_bytes: u32,
}

impl LaunchDims {
    /// `[x, y, z]` blocks of `block` threads with `shared_bytes` of dynamic shared memory each.
    pub const fn new([grid, grid_y, grid_z]: [u32; 3], block: u32, shared_bytes: u32) -> Self {
        LaunchDims {
            grid,
            grid_y,
            grid_z,
            block,
            shared_bytes,
        }
    }
}

/// Threads per block of the elementwise kernels.
pub const ELEMENTWISE_BLOCK: u32 = 256;
/// Upper bound on blocks of the elementwise kernels: their grid-stride loops cover any `n`, and ~8 waves of
/// 256-thread blocks on a 132-SM H100 saturate memory bandwidth.
pub const ELEMENTWISE_MAX_GRID: u32 = 8192;

/// Geometry of a grid-stride elementwise kernel over `n` elements (`relu_fwd`, `relu_bwd`, `add_fwd`).
/// `None` for `n == 0`: a zero-sized grid is an invalid launch, so there is nothing to launch.
pub fn elementwise(n: usize) -> Option<LaunchDims> {
    if n == 0 {
        return None;
    }
    let blocks = n
        .div_ceil(ELEMENTWISE_BLOCK as usize)
        .min(ELEMENTWISE_MAX_GRID as usize);
    // blocks <= ELEMENTWISE_MAX_GRID
    Some(LaunchDims::new([blocks as u32, 1, 1], ELEMENTWISE_BLOCK, 0))
}

/// Threads per block of `softmax_xent` (one block; rows are strided over its threads).
pub const SOFTMAX_BLOCK: u32 = 256;
/// The most rows `softmax_xent` takes: their losses sit in the block's shared memory (48 KiB).
pub const SOFTMAX_MAX_ROWS: usize = 12 * 1024;

/// A checked pooling launch: geometry and the kernel's size arguments.
pub(crate) struct PoolPlan {
    pub dims: LaunchDims,
    pub planes: u64,
    pub h: u32,
    pub w: u32,
    /// maxpool3x3s1_bwd: rows per block (0: rows too wide for shared memory, one thread per cell instead)
    /// and its launch.
    pub bwd_tile_h: u32,
    pub bwd_dims: LaunchDims,
}

/// Rows per block of the tiled `maxpool3x3s1_bwd` (fewer when wide rows would not fit in 48 KiB).
pub const POOL_TILE_H: usize = 16;

/// The tiled pool backward's rows per block and shared bytes for `w`-wide rows: `(tile_h + 4) · w` floats
/// of x, `(tile_h + 2) · w` winners and `(tile_h + 2) · w` floats of dy within 48 KiB; `(0, 0)` when not
/// even one row fits.
fn pool_bwd_tile(h: usize, w: usize) -> (usize, usize) {
    let fit = (48 * 1024 / (4 * w.max(1))).saturating_sub(8) / 3; // 4·w·(3·tile_h + 8) <= 48 KiB
    let tile_h = fit.min(POOL_TILE_H).min(h);
    if tile_h == 0 {
        return (0, 0);
    }
    (tile_h, 4 * w * (3 * tile_h + 8))
}

/// Checks the buffers of a pooling kernel against `s` (each must hold `n·c·h·w` elements). `None` when
/// there is nothing to compute.
pub(crate) fn pool_plan(
    op: &'static str,
    s: &crate::shape::PoolShape,
    bufs: &[(&'static str, usize)],
) -> crate::Result<Option<PoolPlan>> {
    let len = s.len(op)?;
    for &(what, got) in bufs {
        crate::shape::check_len(op, what, len, got)?;
    }
    // The kernels index a plane's cells, and rows and columns a few past its edge, in 32 bits.
    s.plane(op)?;
    let (Ok(h), Ok(w)) = (u32::try_from(s.h), u32::try_from(s.w)) else {
        return Err(crate::Error::InvalidShape {
            op,
            reason: format!("image {}×{} exceeds u32", s.h, s.w),
        });
    };
    let (tile_h, shared) = pool_bwd_tile(s.h, s.w);
    let tiles = (s.n * s.c).saturating_mul(s.h.div_ceil(tile_h.max(1)));
    Ok(elementwise(len).map(|dims| PoolPlan {
        dims,
        planes: (s.n * s.c) as u64,
        h,
        w,
        bwd_tile_h: tile_h as u32, // <= POOL_TILE_H
        bwd_dims: if tile_h == 0 {
            dims
        } else {
            // grid <= ELEMENTWISE_MAX_GRID, shared <= 48 KiB
            let grid = tiles.min(ELEMENTWISE_MAX_GRID as usize) as u32;
            LaunchDims::new([grid, 1, 1], ELEMENTWISE_BLOCK, shared as u32)
        },
    }))
}

/// Checks a `softmax_xent` launch: `loss [1]`, `dlogits` and `logits` `[m, classes]`; at most
/// [`SOFTMAX_MAX_ROWS`] rows. `None` when there are no rows or classes (the loss is then 0).
pub(crate) fn softmax_plan(
    op: &'static str,
    m: usize,
    classes: usize,
    [loss, dlogits, logits]: [usize; 3],
) -> crate::Result<Option<LaunchDims>> {
    let len = m.checked_mul(classes).ok_or(crate::Error::ShapeOverflow {
        op,
        shape: vec![m, classes],
    })?;
    crate::shape::check_len(op, "loss", 1, loss)?;
    crate::shape::check_len(op, "dlogits", len, dlogits)?;
    crate::shape::check_len(op, "logits", len, logits)?;
    if m > SOFTMAX_MAX_ROWS || u32::try_from(classes).is_err() {
        return Err(crate::Error::InvalidShape {
            op,
            reason: format!("{m} rows of {classes} classes (at most {SOFTMAX_MAX_ROWS} rows)"),
        });
    }
    if m == 0 || classes == 0 {
        return Ok(None);
    }
    Ok(Some(LaunchDims::new(
        [1, 1, 1],
        SOFTMAX_BLOCK,
        (4 * m) as u32,
    )))
}

/// At most this many image splits in the conv weight and bias gradients (their partials are summed in order).
pub const WGRAD_MAX_SPLITS: u32 = 64;
/// Output channels per block of `reduce_conv_fwd`.
pub const REDUCE_CO_GROUP: usize = crate::bindings::REDUCE_CO_GROUP as usize;
/// Output rows per block of `reduce_conv_fwd` (fewer when a wide map's rows do not fit in shared memory).
pub const REDUCE_TILE_H: usize = 4;
/// Dynamic shared memory a block may use after opting in on the smallest data-centre GPU we design for (A100:
/// 163 KiB; H100 and H200: 227 KiB): what a driver without a device answers for
/// [`crate::launcher::Driver::max_dynamic_shared`]. Launches size their tiles to the driver's answer.
pub const MAX_DYNAMIC_SHARED: usize = 163 * 1024;

/// A grid's x extent: at most 2³¹ − 1 blocks (CUDA's limit).
pub(crate) fn grid_x(op: &'static str, blocks: usize) -> crate::Result<u32> {
    u32::try_from(blocks)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| crate::Error::InvalidShape {
            op,
            reason: format!("{blocks} blocks exceed CUDA's grid limit of 2^31 - 1"),
        })
}

fn u32_of(op: &'static str, v: usize) -> crate::Result<u32> {
    u32::try_from(v).map_err(|_| crate::Error::InvalidShape {
        op,
        reason: format!("size {v} exceeds u32"),
    })
}

/// Work items of the conv tile kernels (`conv_tile` in kernels/conv.cu): 4 channels × 4 pixels of a row each.
fn tile_items(n: u32, channels: u32, h: u32, w: u32) -> usize {
    n as usize * channels.div_ceil(4) as usize * h as usize * w.div_ceil(4) as usize
}

impl ConvDims {
    /// The kernel's dims of a validated shape.
    pub fn of(op: &'static str, s: &crate::shape::ConvShape) -> crate::Result<Self> {
        s.validate(op)?;
        let [n, c_in, c_out, h, w, k, c_total, c_offset] =
            [s.n, s.c_in, s.c_out, s.h, s.w, s.k, s.c_total, s.c_offset].map(|v| u32_of(op, v));
        Ok(ConvDims {
            n: n?,
            c_in: c_in?,
            c_out: c_out?,
            h: h?,
            w: w?,
            k: k?,
            c_total: c_total?,
            c_offset: c_offset?,
        })
    }

    /// conv_fwd: one thread per tile item (4 output channels × 4 pixels of a row).
    pub fn fwd(&self) -> Option<LaunchDims> {
        elementwise(tile_items(self.n, self.c_out, self.h, self.w))
    }

    /// conv_dgrad: one thread per tile item of dx (4 input channels × 4 pixels).
    pub fn dgrad(&self) -> Option<LaunchDims> {
        elementwise(tile_items(self.n, self.c_in, self.h, self.w))
    }

    /// Images per split of the weight and bias gradients: splits = ceil(n / imgs_per_split) ≤ 64, fixed by
    /// the shape alone (so the summation order, and the result's bits, depend on nothing else).
    pub fn imgs_per_split(&self) -> u32 {
        self.n.div_ceil(WGRAD_MAX_SPLITS).max(1)
    }

    /// Number of image splits of the weight and bias gradients.
    pub fn splits(&self) -> u32 {
        self.n.div_ceil(self.imgs_per_split())
    }

    /// Floats of the weight and bias gradients' split partials: `[splits, c_out·c_in·k·k + c_out]`
    /// (each split's `[dw | db]`).
    pub fn wgrad_partials_len(&self) -> usize {
        self.splits() as usize * self.c_out as usize * (self.c_in * self.k * self.k + 1) as usize
    }

    /// conv_wgrad: `WGRAD_TILE`² tiles of `[c_out, c_in·k·k]`, one grid z-slice per image split (None if empty).
    pub fn wgrad(&self) -> Option<LaunchDims> {
        let cols = self.c_in * self.k * self.k;
        if self.n == 0 || self.c_out == 0 || cols == 0 {
            return None;
        }
        let tile = crate::bindings::WGRAD_TILE;
        let grid = [
            cols.div_ceil(tile),
            self.c_out.div_ceil(tile),
            self.splits(),
        ];
        Some(LaunchDims::new(grid, crate::bindings::WGRAD_THREADS, 0))
    }

    /// The tensor-core convs' grid over a GEMM of `rows` × `cols` (`CONV_TC_BM` × `CONV_TC_BN` tiles per
    /// block, `CONV_TC_THREADS` threads), `z` slices; None if empty or beyond CUDA's grid limits.
    fn tc_grid(rows: usize, cols: usize, z: u32) -> Option<LaunchDims> {
        use crate::bindings::{CONV_TC_BM, CONV_TC_BN, CONV_TC_THREADS};
        if rows == 0 || cols == 0 || z == 0 {
            return None;
        }
        let gx = u32::try_from(cols.div_ceil(CONV_TC_BN as usize)).ok()?;
        let gy = u32::try_from(rows.div_ceil(CONV_TC_BM as usize)).ok()?;
        (gx <= i32::MAX as u32 && gy <= 65_535)
            .then(|| LaunchDims::new([gx, gy, z], CONV_TC_THREADS, 0))
    }

    /// conv_fwd_tf32: tiles of 32 output channels × 128 pixels (counted over all images).
    pub fn fwd_tf32(&self, op: &'static str) -> crate::Result<Option<LaunchDims>> {
        self.tc_checked(
            op,
            self.c_out,
            self.n as usize * (self.h * self.w) as usize,
            1,
        )
    }

    /// conv_dgrad_tf32: tiles of 32 input channels × 128 pixels.
    pub fn dgrad_tf32(&self, op: &'static str) -> crate::Result<Option<LaunchDims>> {
        self.tc_checked(
            op,
            self.c_in,
            self.n as usize * (self.h * self.w) as usize,
            1,
        )
    }

    /// conv_wgrad_tf32: tiles of 32 output channels × 128 columns of `[c_out, c_in·k·k]`, one grid z-slice
    /// per image split (the same splits as [`Self::wgrad`]).
    pub fn wgrad_tf32(&self, op: &'static str) -> crate::Result<Option<LaunchDims>> {
        if self.n == 0 {
            return Ok(None);
        }
        let cols = (self.c_in * self.k * self.k) as usize;
        self.tc_checked(op, self.c_out, cols, self.splits())
    }

    fn tc_checked(
        &self,
        op: &'static str,
        rows: u32,
        cols: usize,
        z: u32,
    ) -> crate::Result<Option<LaunchDims>> {
        if rows == 0 || cols == 0 || z == 0 {
            return Ok(None);
        }
        Self::tc_grid(rows as usize, cols, z)
            .map(Some)
            .ok_or_else(|| crate::Error::InvalidShape {
                op,
                reason: format!("{rows} × {cols} outputs exceed CUDA's grid limits"),
            })
    }
}

impl ReduceDims {
    /// The kernel's dims of a validated shape, its row tiles sized to `max_shared` bytes of dynamic shared
    /// memory per block (the device's opt-in limit, [`crate::launcher::Driver::max_dynamic_shared`]: 227 KiB on
    /// H100 and H200, 163 KiB on A100, 99 KiB on most consumer GPUs).
    pub fn of(
        op: &'static str,
        s: &crate::shape::ReduceConvShape,
        max_shared: usize,
    ) -> crate::Result<Self> {
        s.validate(op)?;
        let [n, c_in, c_mid, c_out, h, w, k, c_total, c_offset] = [
            s.n, s.c_in, s.c_mid, s.c_out, s.h, s.w, s.k, s.c_total, s.c_offset,
        ]
        .map(|v| u32_of(op, v));
        // REDUCE_TILE_H rows per tile, or as many as fit with their halo (k − 1 rows, fewer in a map of fewer
        // rows: a tile loads at most the map's h rows); in TF32 each plane padded to `tc_plane` floats.
        let row_bytes = 4 * s.c_mid * s.w;
        let halo = (s.k - 1).min(s.h.saturating_sub(1));
        let tf32 = s.precision == crate::shape::Precision::Tf32;
        let Some(fit) = (1..=s.h.min(REDUCE_TILE_H))
            .rev()
            .find(|&t| Self::map_bytes(s.c_mid, s.h, s.w, s.k, t, tf32) <= max_shared)
        else {
            return Err(crate::Error::InvalidShape {
                op,
                reason: format!(
                    "one row of the reduced map ({row_bytes} bytes) and its halo of {halo} rows{} exceed \
                     this device's {max_shared} bytes of shared memory per block",
                    if tf32 { " (TF32: padded to tc_plane floats a channel)" } else { "" }
                ),
            });
        };
        Ok(ReduceDims {
            n: n?,
            c_in: c_in?,
            c_mid: c_mid?,
            c_out: c_out?,
            h: h?,
            w: w?,
            k: k?,
            c_total: c_total?,
            c_offset: c_offset?,
            tile_h: u32_of(op, fit)?,
        })
    }

    /// reduce_conv_fwd: one block per (image, group of output channels, tile of `tile_h` rows), the tile's
    /// reduced map with its halo in dynamic shared memory. `None` for an empty batch.
    pub fn fwd(&self, op: &'static str) -> crate::Result<Option<LaunchDims>> {
        let bytes = self.shared_bytes(false); // <= the device's limit by tile_h
        let groups = (self.c_out as usize).div_ceil(REDUCE_CO_GROUP);
        let tiles = (self.h as usize).div_ceil(self.tile_h as usize);
        let grid = grid_x(op, (self.n as usize).saturating_mul(groups * tiles))?;
        Ok((grid > 0).then_some(LaunchDims::new([grid, 1, 1], 256, bytes as u32)))
    }

    /// reduce_conv_fwd_tf32: [`Self::fwd`]'s blocks, `CONV_TC_THREADS` threads, the reduced map's planes
    /// [`Self::tc_plane`] floats apart.
    pub fn fwd_tf32(&self, op: &'static str) -> crate::Result<Option<LaunchDims>> {
        let bytes = self.shared_bytes(true); // <= the limit (`of`)
        Ok(self.fwd(op)?.map(|d| LaunchDims {
            block: crate::bindings::CONV_TC_THREADS,
            shared_bytes: bytes as u32,
            ..d
        }))
    }

    /// Bytes of the reduced map a block holds in shared memory: `tile_h` rows and their halo (at most the
    /// map's `h` rows) of `c_mid` channels, each plane padded to [`Self::tc_plane`] floats in TF32.
    fn map_bytes(c_mid: usize, h: usize, w: usize, k: usize, tile_h: usize, tf32: bool) -> usize {
        let pixels = (tile_h + k - 1).min(h) * w;
        4 * c_mid * if tf32 { Self::tc_plane(pixels) } else { pixels }
    }

    /// [`Self::map_bytes`] of these dims.
    fn shared_bytes(&self, tf32: bool) -> usize {
        let [c_mid, h, w, k, tile_h] =
            [self.c_mid, self.h, self.w, self.k, self.tile_h].map(|v| v as usize);
        Self::map_bytes(c_mid, h, w, k, tile_h, tf32)
    }

    /// Floats between the planes of reduce_conv_fwd_tf32's reduced map of `pixels` pixels: the next count
    /// ≡ 8 mod 32, so that the kernel's stores into the map hit 32 banks (`REDUCE_TC_PLANE` of kernels/args.h).
    pub const fn tc_plane(pixels: usize) -> usize {
        pixels + (40 - pixels % 32) % 32
    }

    /// reduce_conv_dmid_tf32: conv_dgrad_tf32's tiles of the k×k conv (`c_in` = `c_mid`): `[c_mid, n·h·w]`.
    pub fn dmid_tf32(&self, op: &'static str) -> crate::Result<Option<LaunchDims>> {
        self.conv().dgrad_tf32(op)
    }

    /// The k×k conv of the fused branch as a plain conv (for its weight and bias gradients).
    pub fn conv(&self) -> ConvDims {
        ConvDims {
            n: self.n,
            c_in: self.c_mid,
            c_out: self.c_out,
            h: self.h,
            w: self.w,
            k: self.k,
            c_total: self.c_total,
            c_offset: self.c_offset,
        }
    }

    /// The 1×1 reduce of the fused branch as a plain conv reading the `[n, c_mid, h, w]` scratch.
    pub fn reduce(&self) -> ConvDims {
        ConvDims {
            n: self.n,
            c_in: self.c_in,
            c_out: self.c_mid,
            h: self.h,
            w: self.w,
            k: 1,
            c_total: self.c_mid,
            c_offset: 0,
        }
    }

    /// reduce_conv_dmid: one thread per tile item of the reduced map (4 channels × 4 pixels).
    pub fn dmid(&self) -> Option<LaunchDims> {
        elementwise(tile_items(self.n, self.c_mid, self.h, self.w))
    }
}

/// Rows of C per block of the GEMM kernels.
pub const GEMM_BM: usize = crate::bindings::GEMM_BM as usize;
/// Rows of C per block of `linear_wgrad_adam` (4 rows a thread: registers for more blocks and loads).
pub const WGRAD_ADAM_BM: usize = crate::bindings::WGRAD_ADAM_BM as usize;
/// Columns of C per block of the GEMM kernels.
pub const GEMM_BN: usize = crate::bindings::GEMM_BN as usize;
/// Threads per block of the GEMM kernels.
pub const GEMM_THREADS: u32 = crate::bindings::GEMM_THREADS;
/// k per split-K slice of `linear_fwd` (at least; more when there would be over 65,535 slices); a multiple
/// of the kernels' k step ([`crate::bindings::GEMM_BK`]). fc1 at batch 50: 196 slices × 6 column tiles = 1,176 blocks.
pub const LINEAR_K_CHUNK: usize = 1024;

impl AdamScalars {
    /// The scalars of `step`; errors (naming `op`) on hyperparameters outside Adam's domain.
    pub fn of(op: &'static str, step: &crate::shape::AdamStep) -> crate::Result<Self> {
        let [one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, eps] = step.scalars(op)?;
        Ok(AdamScalars {
            one_minus_b1,
            b2,
            one_minus_b2,
            step_size,
            bc2_sqrt,
            eps,
        })
    }
}

/// Every launch of a linear layer's kernels, checked against its shape.
pub(crate) struct LinearPlan {
    /// linear_fwd: the partial products, `splits` slices of `[m, n_out]`.
    pub fwd: (GemmDims, LaunchDims),
    pub splits: u32,
    /// linear_fwd_reduce: one thread per output.
    pub reduce: Option<LaunchDims>,
    pub dgrad: (GemmDims, LaunchDims),
    pub wgrad: (GemmDims, LaunchDims),
    /// linear_wgrad_adam: wgrad's product in tiles of [`WGRAD_ADAM_BM`] rows.
    pub wgrad_adam: (GemmDims, LaunchDims),
    pub bgrad: Option<LaunchDims>,
    pub m: u32,
    pub n_out: u32,
    pub k_in: u32,
}

impl LinearPlan {
    /// Floats of the split-K partial buffer of the forward.
    pub fn partials_len(&self) -> usize {
        self.splits as usize * self.m as usize * self.n_out as usize
    }
}

fn gemm_grid(op: &'static str, n: usize, m: usize, z: usize) -> crate::Result<LaunchDims> {
    gemm_grid_bm(op, n, m, z, GEMM_BM)
}

fn gemm_grid_bm(
    op: &'static str,
    n: usize,
    m: usize,
    z: usize,
    bm: usize,
) -> crate::Result<LaunchDims> {
    // every (row tile, column tile) in x, row tiles fastest (kernels/linear.cu: gemm_tile_of)
    let tiles = grid_x(op, n.div_ceil(GEMM_BN).max(1) * m.div_ceil(bm).max(1))?;
    Ok(LaunchDims::new(
        [tiles, 1, u32_of(op, z.max(1))?],
        GEMM_THREADS,
        0,
    ))
}

/// The launches of a linear layer. Errors when a size exceeds the kernels' integer widths.
pub(crate) fn linear_plan(
    op: &'static str,
    s: &crate::shape::LinearShape,
) -> crate::Result<LinearPlan> {
    s.validate(op)?;
    let (m, k, n) = (s.m, s.k_in, s.n_out);
    let (m32, k32, n32) = (u32_of(op, m)?, u32_of(op, k)?, u32_of(op, n)?);
    let bk = crate::bindings::GEMM_BK as usize;
    let k_chunk = LINEAR_K_CHUNK.max(k.div_ceil(65_535).div_ceil(bk) * bk);
    let splits = k.div_ceil(k_chunk).max(1);
    let (k64, n64) = (k as u64, n as u64);
    let fwd = GemmDims {
        a_rs: k64,
        a_ks: 1,
        b_ks: 1,
        b_cs: k64,
        c_rs: n64,
        c_slice: (m * n) as u64,
        m: m32,
        n: n32,
        k: k32,
        k_chunk: u32_of(op, k_chunk)?,
    };
    let dgrad = GemmDims {
        a_rs: n64,
        a_ks: 1,
        b_ks: k64,
        b_cs: 1,
        c_rs: k64,
        c_slice: 0,
        m: m32,
        n: k32,
        k: n32,
        k_chunk: n32,
    };
    let wgrad = GemmDims {
        a_rs: 1,
        a_ks: n64,
        b_ks: k64,
        b_cs: 1,
        c_rs: k64,
        c_slice: 0,
        m: n32,
        n: k32,
        k: m32,
        k_chunk: m32,
    };
    Ok(LinearPlan {
        fwd: (fwd, gemm_grid(op, n, m, splits)?),
        splits: u32_of(op, splits)?,
        reduce: elementwise(m * n),
        dgrad: (dgrad, gemm_grid(op, k, m, 1)?),
        wgrad: (wgrad, gemm_grid(op, k, n, 1)?),
        wgrad_adam: (wgrad, gemm_grid_bm(op, k, n, 1, WGRAD_ADAM_BM)?),
        bgrad: elementwise(n),
        m: m32,
        n_out: n32,
        k_in: k32,
    })
}

/// Checks each `(buffer, expected length, length)` of a launch.
pub(crate) fn check_lens(
    op: &'static str,
    bufs: &[(&'static str, usize, usize)],
) -> crate::Result<()> {
    bufs.iter()
        .try_for_each(|&(what, expected, len)| crate::shape::check_len(op, what, expected, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_conv_tiles_fit_the_devices_shared_memory() {
        use crate::shape::ReduceConvShape;
        // 64 reduce channels × 112 columns: 28 KiB a row, a 5×5 conv's halo 4 rows.
        let s = ReduceConvShape {
            n: 1,
            c_in: 8,
            c_mid: 64,
            c_out: 16,
            h: 112,
            w: 112,
            k: 5,
            c_total: 16,
            c_offset: 0,
            precision: crate::shape::Precision::Fp32,
        };
        for (limit, tile_h) in [(227 * 1024, 4), (163 * 1024, 1), (200 * 1024, 3)] {
            let rd = ReduceDims::of("t", &s, limit).unwrap();
            assert_eq!(rd.tile_h, tile_h, "limit {limit}");
            let bytes = rd.fwd("t").unwrap().unwrap().shared_bytes as usize;
            assert!(bytes <= limit, "{bytes} > {limit}");
        }
        // TF32 pads each plane (tc_plane): 4 rows and the halo, 896 floats a plane, pad to 904, 231,424 bytes
        // (fit in 227 KiB); 3 rows, 784 → 808 floats, 206,848 bytes: more than 200 KiB, so 2 rows there.
        let tf32 = s.with_precision(crate::shape::Precision::Tf32);
        assert_eq!(ReduceDims::tc_plane(784), 808);
        for (limit, tile_h) in [(227 * 1024, 4), (200 * 1024, 2)] {
            let rd = ReduceDims::of("t", &tf32, limit).unwrap();
            assert_eq!(rd.tile_h, tile_h, "tf32, limit {limit}");
            let bytes = rd.fwd_tf32("t").unwrap().unwrap().shared_bytes as usize;
            assert!(bytes <= limit, "tf32: {bytes} > {limit}");
        }
        // A consumer GPU's 99 KiB cannot hold one row and its halo (5 × 28 KiB): a clear error, not a launch
        // the driver refuses.
        let e = ReduceDims::of("reduce_conv_fwd", &s, 99 * 1024)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("reduce_conv_fwd") && e.contains("101376 bytes of shared memory"),
            "{e}"
        );
        let narrow = ReduceConvShape { w: 56, ..s }; // 14 KiB a row: 3 rows and the halo in 99 KiB
        assert_eq!(ReduceDims::of("t", &narrow, 99 * 1024).unwrap().tile_h, 3);
    }

    #[test]
    fn elementwise_grid_covers_small_sizes_and_caps_large_ones() {
        assert_eq!(elementwise(0), None);
        assert_eq!(elementwise(1).map(|d| d.grid), Some(1));
        assert_eq!(elementwise(256).map(|d| d.grid), Some(1));
        assert_eq!(elementwise(257).map(|d| d.grid), Some(2));
        assert_eq!(
            elementwise(usize::MAX).map(|d| d.grid),
            Some(ELEMENTWISE_MAX_GRID)
        );
    }
}
