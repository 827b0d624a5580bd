//! The Inception module: four branches over one input, written in place into one output whose channels are
//! the concatenation `[1×1 | 1×1→3×3 | 1×1→5×5 | pool→1×1]`, with one ReLU over it (in each branch's
//! epilogue). Also its FLOP accounting, naive and reduced.

use std::ops::Range;

use crate::backend::Backend;
use crate::shape::{ConvShape, PoolShape, Precision, ReduceConvShape};
use crate::Result;

/// GoogLeNet's six widths of a module (its table's columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InceptionWidths {
    /// `#1×1`: output channels of the 1×1 branch.
    pub c1x1: usize,
    /// `#3×3 reduce`.
    pub c3x3_reduce: usize,
    /// `#3×3`.
    pub c3x3: usize,
    /// `#5×5 reduce`.
    pub c5x5_reduce: usize,
    /// `#5×5`.
    pub c5x5: usize,
    /// `pool proj`.
    pub pool_proj: usize,
}

impl InceptionWidths {
    /// The MNIST net's modules: every branch `width` maps, both reduces `reduce` maps.
    pub fn uniform(width: usize, reduce: usize) -> Self {
        InceptionWidths {
            c1x1: width,
            c3x3_reduce: reduce,
            c3x3: width,
            c5x5_reduce: reduce,
            c5x5: width,
            pool_proj: width,
        }
    }

    /// GoogLeNet's inception (3a): 64, 96, 128, 16, 32, 32 (on 192 input channels).
    pub fn googlenet_3a() -> Self {
        InceptionWidths {
            c1x1: 64,
            c3x3_reduce: 96,
            c3x3: 128,
            c5x5_reduce: 16,
            c5x5: 32,
            pool_proj: 32,
        }
    }
}

/// Multiply-adds per image of each branch and in total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BranchMacs {
    /// The 1×1 branch.
    pub b1x1: u64,
    /// The 3×3 branch (its reduce included when reduced).
    pub b3x3: u64,
    /// The 5×5 branch (its reduce included when reduced).
    pub b5x5: u64,
    /// The pool branch (pooling itself counts no multiply-adds; the naive module has no projection).
    pub pool: u64,
}

impl BranchMacs {
    /// The module total.
    pub fn total(&self) -> u64 {
        self.b1x1 + self.b3x3 + self.b5x5 + self.pool
    }
}

/// Where each parameter of a module sits inside its contiguous parameter block, in the reference file's
/// order: `branch1x1, reduce3x3, conv3x3, reduce5x5, conv5x5, pool_proj`, each weight then bias. So each
/// fused branch's `[w1 | b1 | w2 | b2]` is contiguous.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleLayout {
    /// `(name, shape, range)` of every parameter, relative to the block's start.
    pub params: Vec<(&'static str, Vec<usize>, Range<usize>)>,
}

impl ModuleLayout {
    /// The range of `name` relative to the block (empty for an unknown name, which no caller passes).
    pub fn range(&self, name: &str) -> Range<usize> {
        self.params
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, r)| r.clone())
            .unwrap_or(0..0)
    }

    /// From the start of `first` to the end of `last`, shifted by `base`.
    fn at(&self, first: &str, last: &str, base: usize) -> Range<usize> {
        base + self.range(first).start..base + self.range(last).end
    }

    /// Elements of the whole block.
    pub fn len(&self) -> usize {
        self.params.last().map_or(0, |(_, _, r)| r.end)
    }

    /// Whether the module has no parameters (never true for a valid module).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One Inception module over `c_in` input channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InceptionModule {
    /// Input channels.
    pub c_in: usize,
    /// The six widths.
    pub widths: InceptionWidths,
    /// The arithmetic of its convolutions' products ([`Precision::Fp32`] from [`Self::new`]).
    pub precision: Precision,
}

/// Buffers the forward pass saves for backward: the two reduced maps and the pooled input.
pub struct ModuleSaved<B: Backend> {
    /// `[n, #3×3 reduce, h, w]`, post-ReLU.
    pub mid3: B::Buf,
    /// `[n, #5×5 reduce, h, w]`, post-ReLU.
    pub mid5: B::Buf,
    /// `[n, c_in, h, w]`: the pooled input the projection reads.
    pub pooled: B::Buf,
}

/// Scratch of the backward pass.
pub struct ModuleScratch<B: Backend> {
    /// `[n, c_in, h, w]`: the gradient of the pooled input.
    pub dpooled: B::Buf,
    /// `[n, max(#3×3 reduce, #5×5 reduce), h, w]`: working memory of the fused branches' backward.
    pub dmid: B::Buf,
    /// `[n, c_out, h, w]`: the output gradient through the module's ReLU, on backends that do not fold the ReLU's
    /// backward into the branches' kernels ([`Backend::FOLDS_RELU_BWD`] false: the CPU); `None` where they do.
    pub dy_relu: Option<B::Buf>,
}

impl InceptionModule {
    /// The module over `c_in` input channels with these widths, in fp32.
    pub const fn new(c_in: usize, widths: InceptionWidths) -> Self {
        InceptionModule {
            c_in,
            widths,
            precision: Precision::Fp32,
        }
    }

    /// The same module computing its convolutions in `precision`.
    pub const fn with_precision(self, precision: Precision) -> Self {
        InceptionModule { precision, ..self }
    }

    /// Output channels: `#1×1 + #3×3 + #5×5 + pool proj`.
    pub fn c_out(&self) -> usize {
        let w = &self.widths;
        w.c1x1 + w.c3x3 + w.c5x5 + w.pool_proj
    }

    /// The parameter layout (reference names without the module prefix).
    pub fn layout(&self) -> ModuleLayout {
        let (c, w) = (self.c_in, &self.widths);
        let shapes: [(&'static str, Vec<usize>); 12] = [
            ("branch1x1.weight", vec![w.c1x1, c, 1, 1]),
            ("branch1x1.bias", vec![w.c1x1]),
            ("reduce3x3.weight", vec![w.c3x3_reduce, c, 1, 1]),
            ("reduce3x3.bias", vec![w.c3x3_reduce]),
            ("conv3x3.weight", vec![w.c3x3, w.c3x3_reduce, 3, 3]),
            ("conv3x3.bias", vec![w.c3x3]),
            ("reduce5x5.weight", vec![w.c5x5_reduce, c, 1, 1]),
            ("reduce5x5.bias", vec![w.c5x5_reduce]),
            ("conv5x5.weight", vec![w.c5x5, w.c5x5_reduce, 5, 5]),
            ("conv5x5.bias", vec![w.c5x5]),
            ("pool_proj.weight", vec![w.pool_proj, c, 1, 1]),
            ("pool_proj.bias", vec![w.pool_proj]),
        ];
        let mut at = 0;
        let params = shapes
            .into_iter()
            .map(|(name, shape)| {
                let len: usize = shape.iter().product();
                at += len;
                (name, shape, at - len..at)
            })
            .collect();
        ModuleLayout { params }
    }

    /// Shapes of the four branches for a batch of `n` images of `h × w`.
    pub fn branch_shapes(
        &self,
        n: usize,
        h: usize,
        w: usize,
    ) -> (ConvShape, ReduceConvShape, ReduceConvShape, ConvShape) {
        let (c, wd, total) = (self.c_in, &self.widths, self.c_out());
        let b1 = ConvShape::new(n, c, wd.c1x1, h, w, 1)
            .into_slice(total, 0)
            .with_precision(self.precision);
        let fused = |c_mid, c_out, k, c_offset| ReduceConvShape {
            n,
            c_in: c,
            c_mid,
            c_out,
            h,
            w,
            k,
            c_total: total,
            c_offset,
            precision: self.precision,
        };
        let b3 = fused(wd.c3x3_reduce, wd.c3x3, 3, wd.c1x1);
        let b5 = fused(wd.c5x5_reduce, wd.c5x5, 5, wd.c1x1 + wd.c3x3);
        let pool = ConvShape::new(n, c, wd.pool_proj, h, w, 1)
            .into_slice(total, wd.c1x1 + wd.c3x3 + wd.c5x5)
            .with_precision(self.precision);
        (b1, b3, b5, pool)
    }

    /// Multiply-adds per `h × w` image of the module as built (with its 1×1 reduces):
    /// `K²·H·W·C_in·C_out` summed over its convs.
    pub fn macs_reduced(&self, h: usize, w: usize) -> BranchMacs {
        let (c, wd, hw) = (self.c_in as u64, &self.widths, (h * w) as u64);
        let m = |k: u64, cin: u64, cout: usize| k * k * hw * cin * cout as u64;
        BranchMacs {
            b1x1: m(1, c, wd.c1x1),
            b3x3: m(1, c, wd.c3x3_reduce) + m(3, wd.c3x3_reduce as u64, wd.c3x3),
            b5x5: m(1, c, wd.c5x5_reduce) + m(5, wd.c5x5_reduce as u64, wd.c5x5),
            pool: m(1, c, wd.pool_proj),
        }
    }

    /// Multiply-adds per image of the naive module (DESIGN.md): 1×1, 3×3 and 5×5 convs straight on the
    /// input, the pooled input passed through with no projection.
    pub fn macs_naive(&self, h: usize, w: usize) -> BranchMacs {
        let (c, wd, hw) = (self.c_in as u64, &self.widths, (h * w) as u64);
        BranchMacs {
            b1x1: hw * c * wd.c1x1 as u64,
            b3x3: 9 * hw * c * wd.c3x3 as u64,
            b5x5: 25 * hw * c * wd.c5x5 as u64,
            pool: 0,
        }
    }

    /// Buffers for what forward saves, for a batch of `n` images of `h × w`.
    pub fn alloc_saved<B: Backend>(
        &self,
        b: &B,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<ModuleSaved<B>> {
        let hw = n * h * w;
        Ok(ModuleSaved {
            mid3: b.alloc_zeros(hw * self.widths.c3x3_reduce)?,
            mid5: b.alloc_zeros(hw * self.widths.c5x5_reduce)?,
            pooled: b.alloc_zeros(hw * self.c_in)?,
        })
    }

    /// Scratch buffers of backward.
    pub fn alloc_scratch<B: Backend>(
        &self,
        b: &B,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<ModuleScratch<B>> {
        let hw = n * h * w;
        Ok(ModuleScratch {
            dpooled: b.alloc_zeros(hw * self.c_in)?,
            dmid: b.alloc_zeros(hw * self.widths.c3x3_reduce.max(self.widths.c5x5_reduce))?,
            dy_relu: if B::FOLDS_RELU_BWD {
                None
            } else {
                Some(b.alloc_zeros(hw * self.c_out())?)
            },
        })
    }

    /// Forward: `y [n, c_out, h, w] = relu(concat(branches(x)))`, each branch writing its channel slice.
    /// `params` is the buffer holding this module's block ([`Self::layout`]) at offset `base`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<B: Backend>(
        &self,
        b: &B,
        y: &mut B::ViewMut<'_>,
        saved: &mut ModuleSaved<B>,
        x: &B::View<'_>,
        (params, base): (&B::Buf, usize),
        (n, h, w): (usize, usize, usize),
    ) -> Result<()> {
        let (s1, s3, s5, sp) = self.branch_shapes(n, h, w);
        let l = self.layout();
        let p = |name: &str| b.view(params, l.at(name, name, base));
        let block = |first: &str, last: &str| b.view(params, l.at(first, last, base));
        b.conv_fwd(
            y,
            x,
            &p("branch1x1.weight")?,
            &p("branch1x1.bias")?,
            &s1,
            true,
        )?;
        let mid3_len = b.len(&saved.mid3);
        let mut mid3 = b.view_mut(&mut saved.mid3, 0..mid3_len)?;
        b.reduce_conv_fwd(
            y,
            &mut mid3,
            x,
            &block("reduce3x3.weight", "conv3x3.bias")?,
            &s3,
        )?;
        let mid5_len = b.len(&saved.mid5);
        let mut mid5 = b.view_mut(&mut saved.mid5, 0..mid5_len)?;
        b.reduce_conv_fwd(
            y,
            &mut mid5,
            x,
            &block("reduce5x5.weight", "conv5x5.bias")?,
            &s5,
        )?;
        let pool = PoolShape {
            n,
            c: self.c_in,
            h,
            w,
        };
        let pooled_len = b.len(&saved.pooled);
        b.maxpool3x3s1_fwd(&mut b.view_mut(&mut saved.pooled, 0..pooled_len)?, x, &pool)?;
        let pooled = b.view(&saved.pooled, 0..pooled_len)?;
        b.conv_fwd(
            y,
            &pooled,
            &p("pool_proj.weight")?,
            &p("pool_proj.bias")?,
            &sp,
            true,
        )
    }

    /// Backward from `dy`, the gradient of the module output `y`: writes this module's parameter
    /// gradients into its block of `dparams` (at offset `base`; `params` holds the parameters at the same
    /// offset) and, when `dx` is given, overwrites it with the input gradient (the four branches accumulate
    /// into it).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Backend>(
        &self,
        b: &B,
        dx: Option<&mut B::ViewMut<'_>>,
        (dparams, base): (&mut B::Buf, usize),
        scratch: &mut ModuleScratch<B>,
        dy: &B::View<'_>,
        y: &B::View<'_>,
        x: &B::View<'_>,
        saved: &ModuleSaved<B>,
        params: &B::Buf,
        (n, h, w): (usize, usize, usize),
    ) -> Result<()> {
        // The module's ReLU backward: folded into the branches' kernels, each reading its slice of dy in place
        // where y > 0 (relu_bwd's rule, the same bits as a relu_bwd pass before them), or, where the backend
        // does not fold it (the CPU: a folded mask costs a pass per reading kernel), one relu_bwd pass.
        let ModuleScratch {
            dpooled,
            dmid,
            dy_relu,
        } = scratch;
        let rest = (dx, (dparams, base), (dpooled, dmid));
        match dy_relu {
            Some(buf) if !B::FOLDS_RELU_BWD => {
                let len = b.len(buf);
                b.relu_bwd(&mut b.view_mut(buf, 0..len)?, dy, y)?;
                let g = b.view(buf, 0..len)?;
                self.branches_backward(b, rest, &g, None, x, saved, params, (n, h, w))
            }
            _ => self.branches_backward(b, rest, dy, Some(y), x, saved, params, (n, h, w)),
        }
    }

    /// The branches' backward from `g`, the gradient of the module output before its ReLU, or, with `y`, after
    /// it (each kernel then reads `g` where `y > 0`).
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn branches_backward<B: Backend>(
        &self,
        b: &B,
        (dx, (dparams, base), (dpooled, dmid)): (
            Option<&mut B::ViewMut<'_>>,
            (&mut B::Buf, usize),
            (&mut B::Buf, &mut B::Buf),
        ),
        g: &B::View<'_>,
        y: Option<&B::View<'_>>,
        x: &B::View<'_>,
        saved: &ModuleSaved<B>,
        params: &B::Buf,
        (n, h, w): (usize, usize, usize),
    ) -> Result<()> {
        let (s1, s3, s5, sp) = self.branch_shapes(n, h, w);
        let l = self.layout();
        let r = |name: &str| l.at(name, name, base);
        let p = |name: &str| b.view(params, r(name));
        let whole = |buf: &B::Buf| 0..b.len(buf);
        let (mid3, mid5, pooled) = (
            b.view(&saved.mid3, whole(&saved.mid3))?,
            b.view(&saved.mid5, whole(&saved.mid5))?,
            b.view(&saved.pooled, whole(&saved.pooled))?,
        );
        // The 1×1 branch's weight and bias gradients now, its input gradient below with the others'.
        crate::graph::defs::conv_bwd(
            b,
            None,
            dparams,
            [r("branch1x1.weight"), r("branch1x1.bias")],
            g,
            y,
            x,
            &p("branch1x1.weight")?,
            &s1,
        )?;
        let r3 = l.at("reduce3x3.weight", "conv3x3.bias", base);
        let r5 = l.at("reduce5x5.weight", "conv5x5.bias", base);
        let Some(dx) = dx else {
            // No input gradient wanted (the first module): the fused branches still need somewhere to put
            // theirs, so they share the pooled-gradient scratch, which has the input's shape.
            crate::graph::defs::conv_bwd(
                b,
                None,
                dparams,
                [r("pool_proj.weight"), r("pool_proj.bias")],
                g,
                y,
                &pooled,
                &p("pool_proj.weight")?,
                &sp,
            )?;
            let len = b.len(dpooled);
            let mut sink = b.view_mut(dpooled, 0..len)?;
            b.reduce_conv_bwd(
                &mut sink,
                &mut b.view_mut(dparams, r3.clone())?,
                &mut b.view_mut(dmid, 0..s3.mid_len("reduce_conv_bwd")?)?,
                g,
                y,
                x,
                &mid3,
                &b.view(params, r3)?,
                &s3,
                false,
            )?;
            return b.reduce_conv_bwd(
                &mut sink,
                &mut b.view_mut(dparams, r5.clone())?,
                &mut b.view_mut(dmid, 0..s5.mid_len("reduce_conv_bwd")?)?,
                g,
                y,
                x,
                &mid5,
                &b.view(params, r5)?,
                &s5,
                false,
            );
        };
        b.conv_dgrad(dx, g, y, &p("branch1x1.weight")?, &s1, false)?;
        b.reduce_conv_bwd(
            dx,
            &mut b.view_mut(dparams, r3.clone())?,
            &mut b.view_mut(dmid, 0..s3.mid_len("reduce_conv_bwd")?)?,
            g,
            y,
            x,
            &mid3,
            &b.view(params, r3)?,
            &s3,
            true,
        )?;
        b.reduce_conv_bwd(
            dx,
            &mut b.view_mut(dparams, r5.clone())?,
            &mut b.view_mut(dmid, 0..s5.mid_len("reduce_conv_bwd")?)?,
            g,
            y,
            x,
            &mid5,
            &b.view(params, r5)?,
            &s5,
            true,
        )?;
        let dpooled_len = b.len(dpooled);
        crate::graph::defs::conv_bwd(
            b,
            Some((&mut b.view_mut(dpooled, 0..dpooled_len)?, false)),
            dparams,
            [r("pool_proj.weight"), r("pool_proj.bias")],
            g,
            y,
            &pooled,
            &p("pool_proj.weight")?,
            &sp,
        )?;
        let pool = PoolShape {
            n,
            c: self.c_in,
            h,
            w,
        };
        b.maxpool3x3s1_bwd(dx, &b.view(dpooled, 0..dpooled_len)?, x, &pool, true)
    }
}

/// Adds an Inception module over `x [c_in, h, w]` to `g`: its twelve parameters named
/// `{name}.{branch1x1, reduce3x3, conv3x3, reduce5x5, conv5x5, pool_proj}.{weight, bias}` (the reference's
/// names and order, PyTorch's default initialisation), the four branches written in place into one
/// concatenation, and one ReLU over it (in each branch's epilogue). Returns the `[c_out, h, w]` output.
///
/// ```
/// use inception_cuda::graph::Graph;
/// use inception_cuda::nn::{inception, InceptionWidths};
/// # fn main() -> inception_cuda::Result<()> {
/// let mut g = Graph::new();
/// let x = g.input("x", &[192, 28, 28])?;
/// let y = inception(&mut g, "inception_3a", x, InceptionWidths::googlenet_3a())?;
/// assert_eq!(g.shape(y), &[256, 28, 28]);
/// # Ok(())
/// # }
/// ```
pub fn inception(
    g: &mut crate::graph::Graph,
    name: &str,
    x: crate::graph::Value,
    widths: InceptionWidths,
) -> Result<crate::graph::Value> {
    let c_in = g.shape(x).first().copied().unwrap_or(0);
    let w = widths;
    let (b1w, b1b) = g.conv_params(&format!("{name}.branch1x1"), c_in, w.c1x1, 1)?;
    let (r3w, r3b) = g.conv_params(&format!("{name}.reduce3x3"), c_in, w.c3x3_reduce, 1)?;
    let (c3w, c3b) = g.conv_params(&format!("{name}.conv3x3"), w.c3x3_reduce, w.c3x3, 3)?;
    let (r5w, r5b) = g.conv_params(&format!("{name}.reduce5x5"), c_in, w.c5x5_reduce, 1)?;
    let (c5w, c5b) = g.conv_params(&format!("{name}.conv5x5"), w.c5x5_reduce, w.c5x5, 5)?;
    let (ppw, ppb) = g.conv_params(&format!("{name}.pool_proj"), c_in, w.pool_proj, 1)?;
    let b1 = g.conv(x, b1w, b1b)?;
    let b3 = g.reduce_conv(x, [r3w, r3b, c3w, c3b])?;
    let b5 = g.reduce_conv(x, [r5w, r5b, c5w, c5b])?;
    let pooled = g.maxpool3x3s1(x)?;
    let bp = g.conv(pooled, ppw, ppb)?;
    let y = g.concat(&[b1, b3, b5, bp])?;
    g.relu(y)
}
