//! Shape descriptors of the kernels that take more than a flat length. The CPU twins, the CUDA launchers and
//! the tensor ops all take these, and all validate them the same way: every error names the op.
//!
//! Layout is NCHW, f32, contiguous. A branch output is a channel slice `[c_offset, c_offset + c_out)` of a
//! module output with `c_total` channels (concat is not a copy).

use crate::{Error, Result};

/// The kernel sizes the convs support (stride 1, 'same' zero padding of `k / 2`).
pub const CONV_KERNEL_SIZES: [usize; 3] = [1, 3, 5];

/// The largest index the kernels compute in 32-bit signed arithmetic (`i32::MAX`): shapes whose per-image,
/// per-plane or per-weight element counts pass it are refused on every backend.
pub const I32_INDEX: usize = i32::MAX as usize;

/// Rows one `count_correct` call may count: its counts are f32, exact below 2^24 (the kernel's and the
/// twin's alike).
pub(crate) fn check_count_rows(op: &'static str, m: usize) -> Result<()> {
    if m >= 1 << 24 {
        return Err(Error::InvalidShape {
            op,
            reason: format!(
                "{m} rows: its f32 counts are exact only below 2^24 (16,777,216); count in parts"
            ),
        });
    }
    Ok(())
}

fn invalid(op: &'static str, reason: String) -> Error {
    Error::InvalidShape { op, reason }
}

fn product(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::ShapeOverflow {
            op,
            shape: dims.to_vec(),
        })
}

/// Checks that buffer `what` of `op` holds exactly `expected` elements.
pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    expected: usize,
    len: usize,
) -> Result<()> {
    if expected == len {
        Ok(())
    } else {
        Err(Error::BufferLength {
            op,
            what,
            expected,
            len,
        })
    }
}

/// A stride-1 'same' convolution `x [n, c_in, h, w] → y[:, c_offset..c_offset + c_out]` of a
/// `[n, c_total, h, w]` output, with weight `[c_out, c_in, k, k]` and bias `[c_out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels of this conv.
    pub c_out: usize,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
    /// Kernel size: 1, 3 or 5.
    pub k: usize,
    /// Channels of the whole output buffer (the module's concat).
    pub c_total: usize,
    /// First channel of this conv's slice of the output.
    pub c_offset: usize,
    /// The arithmetic of the conv's products (forward, dgrad, wgrad); the bias gradient is a sum, f32 in
    /// every precision.
    pub precision: Precision,
}

impl ConvShape {
    /// A conv writing its own `[n, c_out, h, w]` output (no concat slice).
    pub const fn new(n: usize, c_in: usize, c_out: usize, h: usize, w: usize, k: usize) -> Self {
        ConvShape {
            n,
            c_in,
            c_out,
            h,
            w,
            k,
            c_total: c_out,
            c_offset: 0,
            precision: Precision::Fp32,
        }
    }

    /// The same conv computed in `precision`.
    pub const fn with_precision(self, precision: Precision) -> Self {
        ConvShape { precision, ..self }
    }

    /// The same conv writing channels `[c_offset, c_offset + c_out)` of a `c_total`-channel output.
    pub const fn into_slice(self, c_total: usize, c_offset: usize) -> Self {
        ConvShape {
            c_total,
            c_offset,
            ..self
        }
    }

    /// Checks the sizes and that every buffer length fits in `usize`.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if !CONV_KERNEL_SIZES.contains(&self.k) {
            return Err(invalid(
                op,
                format!("kernel size {} (supported: 1, 3, 5)", self.k),
            ));
        }
        if self.c_in == 0 || self.c_out == 0 || self.h == 0 || self.w == 0 {
            return Err(invalid(op, format!("zero-sized dimension in {self:?}")));
        }
        if self
            .c_offset
            .checked_add(self.c_out)
            .is_none_or(|end| end > self.c_total)
        {
            return Err(invalid(
                op,
                format!(
                    "channel slice {}..{} does not fit in {} output channels",
                    self.c_offset,
                    self.c_offset.saturating_add(self.c_out),
                    self.c_total
                ),
            ));
        }
        self.x_len(op)?;
        self.y_len(op)?;
        let w_len = self.w_len(op)?;
        // The kernels index within one image's channels, within the weight and bias, and within an image split
        // of the weight gradient (crate::launch::WGRAD_MAX_SPLITS) in 32-bit signed arithmetic; every backend
        // refuses the shapes beyond it alike.
        let hw = self.h.saturating_mul(self.w);
        let per_image = self.c_in.max(self.c_total).saturating_mul(hw);
        let per_split = self
            .n
            .div_ceil(crate::launch::WGRAD_MAX_SPLITS as usize)
            .max(1)
            .saturating_mul(hw);
        let weight_and_bias = w_len.saturating_add(self.c_out);
        // conv_wgrad's grid has one row of blocks per WGRAD_TILE output channels, at most 65,535 (CUDA's limit).
        let max_c_out = 65_535 * crate::bindings::WGRAD_TILE as usize;
        if self.c_out > max_c_out {
            return Err(invalid(
                op,
                format!(
                    "{} output channels: the weight gradient's grid takes at most {max_c_out}",
                    self.c_out
                ),
            ));
        }
        for (what, v) in [
            ("one image's channels", per_image),
            ("the weight and bias", weight_and_bias),
            ("an image split of the weight gradient", per_split),
        ] {
            if v > I32_INDEX {
                return Err(invalid(
                    op,
                    format!(
                        "{what} hold {v} elements: past the kernels' 32-bit index ({I32_INDEX})"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Elements of `x`: `n·c_in·h·w`.
    pub fn x_len(&self, op: &'static str) -> Result<usize> {
        product(op, &[self.n, self.c_in, self.h, self.w])
    }

    /// Elements of the whole output buffer: `n·c_total·h·w`.
    pub fn y_len(&self, op: &'static str) -> Result<usize> {
        product(op, &[self.n, self.c_total, self.h, self.w])
    }

    /// Elements of the weight: `c_out·c_in·k·k`.
    pub fn w_len(&self, op: &'static str) -> Result<usize> {
        product(op, &[self.c_out, self.c_in, self.k, self.k])
    }

    /// Multiply-adds per image: `k²·h·w·c_in·c_out`.
    pub fn macs_per_image(&self) -> u64 {
        (self.k * self.k * self.h * self.w * self.c_in * self.c_out) as u64
    }
}

/// The fused `1×1 (c_in → c_mid) + bias → ReLU → k×k (c_mid → c_out) + bias → ReLU`, written into
/// channels `[c_offset, c_offset + c_out)` of a `[n, c_total, h, w]` output. Weights: `w1 [c_mid, c_in, 1, 1]`,
/// `b1 [c_mid]`, `w2 [c_out, c_mid, k, k]`, `b2 [c_out]`; the reduced map `mid` is `[n, c_mid, h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReduceConvShape {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Reduced channels (the "#3×3 reduce" / "#5×5 reduce" width).
    pub c_mid: usize,
    /// Output channels of this branch.
    pub c_out: usize,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
    /// Kernel size of the second conv: 3 or 5.
    pub k: usize,
    /// Channels of the whole output buffer.
    pub c_total: usize,
    /// First channel of this branch's slice.
    pub c_offset: usize,
    /// The arithmetic of the branch's products (both convs, forward and backward); biases, ReLUs and
    /// reductions of partials stay f32.
    pub precision: Precision,
}

impl ReduceConvShape {
    /// The 1×1 reduce conv (its own `[n, c_mid, h, w]` output).
    pub fn reduce(&self) -> ConvShape {
        ConvShape::new(self.n, self.c_in, self.c_mid, self.h, self.w, 1)
            .with_precision(self.precision)
    }

    /// The same branch computed in `precision`.
    pub const fn with_precision(self, precision: Precision) -> Self {
        ReduceConvShape { precision, ..self }
    }

    /// The k×k conv from the reduced map into the output slice.
    pub fn conv(&self) -> ConvShape {
        ConvShape::new(self.n, self.c_mid, self.c_out, self.h, self.w, self.k)
            .into_slice(self.c_total, self.c_offset)
            .with_precision(self.precision)
    }

    /// Checks the sizes (`k` must be 3 or 5) and that every buffer length fits in `usize`.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if self.k != 3 && self.k != 5 {
            return Err(invalid(
                op,
                format!("fused reduce conv kernel size {} (supported: 3, 5)", self.k),
            ));
        }
        self.reduce().validate(op)?;
        self.conv().validate(op)
    }

    /// Elements of the reduced map `mid`: `n·c_mid·h·w`.
    pub fn mid_len(&self, op: &'static str) -> Result<usize> {
        product(op, &[self.n, self.c_mid, self.h, self.w])
    }
}

/// Max pooling 3×3, stride 1, 'same' (padding never wins) over `[n, c, h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
}

impl PoolShape {
    /// Elements of input and output: `n·c·h·w`.
    pub fn len(&self, op: &'static str) -> Result<usize> {
        product(op, &[self.n, self.c, self.h, self.w])
    }

    /// Cells of one plane, `h·w`; planes past the kernels' and the twin's 32-bit cell index ([`I32_INDEX`])
    /// are an error, even in an empty batch.
    pub fn plane(&self, op: &'static str) -> Result<usize> {
        self.h
            .checked_mul(self.w)
            .filter(|&hw| hw <= I32_INDEX)
            .ok_or_else(|| {
                invalid(
                    op,
                    format!(
                        "a {} × {} plane has more cells than a 32-bit index reaches",
                        self.h, self.w
                    ),
                )
            })
    }
}

/// The arithmetic of a kernel's products (DESIGN.md, "Precision"). Half types come later.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Precision {
    /// f32 operands, f32 accumulation on FMAs: deterministic, the bits of the CPU twins' order aside.
    #[default]
    Fp32,
    /// The products' operands rounded to TF32 (`cvt.rna`: nearest, ties away from zero; 10 explicit mantissa
    /// bits) and multiplied on the tensor cores (`mma.sync` m16n8k8), f32 accumulation; bias, reductions
    /// of partials and Adam stay f32. The CPU twins round the same operands the same way.
    Tf32,
}

impl Precision {
    /// Every precision, in declaration order.
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Tf32];

    /// The precision's name, as [`Display`](std::fmt::Display) writes it and [`FromStr`](std::str::FromStr)
    /// reads it: `"fp32"` or `"tf32"`.
    pub const fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads a precision by its [`Precision::name`] (`"fp32"`, `"tf32"`), as a command line or a run's recipe
/// spells it; anything else is [`Error::OutOfRange`] naming the value.
impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::OutOfRange {
                op: "Precision::from_str",
                what: "precision".into(),
                value: format!("{s:?}"),
                allowed: "fp32 or tf32",
            })
    }
}

/// A linear layer `y [m, n_out] = x [m, k_in] · wᵀ + b` with PyTorch's weight layout `w [n_out, k_in]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows (batch size).
    pub m: usize,
    /// Input features.
    pub k_in: usize,
    /// Output features.
    pub n_out: usize,
    /// The arithmetic of the layer's three products (forward, dgrad, wgrad).
    pub precision: Precision,
}

impl LinearShape {
    /// An fp32 layer of `m` rows, `k_in` inputs and `n_out` outputs.
    pub const fn new(m: usize, k_in: usize, n_out: usize) -> Self {
        LinearShape {
            m,
            k_in,
            n_out,
            precision: Precision::Fp32,
        }
    }

    /// The same layer computed in `precision`.
    pub const fn with_precision(self, precision: Precision) -> Self {
        LinearShape { precision, ..self }
    }

    /// Checks that every buffer length fits in `usize`.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        product(op, &[self.m, self.k_in])?;
        product(op, &[self.m, self.n_out])?;
        product(op, &[self.n_out, self.k_in])?;
        // The kernels count rows, columns and k in 32-bit arithmetic (offsets are 64-bit).
        for (what, v) in [("m", self.m), ("k_in", self.k_in), ("n_out", self.n_out)] {
            if v > I32_INDEX {
                return Err(invalid(
                    op,
                    format!("{what} = {v}: past the kernels' 32-bit index ({I32_INDEX})"),
                ));
            }
        }
        Ok(())
    }

    /// Elements of the input `x [m, k_in]` (an error on overflow).
    pub fn x_len(&self, op: &'static str) -> Result<usize> {
        product(op, &[self.m, self.k_in])
    }

    /// Elements of the output `y [m, n_out]` (an error on overflow).
    pub fn y_len(&self, op: &'static str) -> Result<usize> {
        product(op, &[self.m, self.n_out])
    }

    /// Elements of the weight `w [n_out, k_in]` (an error on overflow).
    pub fn w_len(&self, op: &'static str) -> Result<usize> {
        product(op, &[self.n_out, self.k_in])
    }
}

/// One Adam update with PyTorch's semantics (bias-corrected, `eps` added outside the square root).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment (PyTorch default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (PyTorch default 0.999).
    pub beta2: f64,
    /// Added to the denominator (PyTorch default 1e-8).
    pub eps: f64,
    /// The step number, starting at 1.
    pub t: u64,
}

impl AdamStep {
    /// PyTorch's defaults at learning rate `lr`, step `t`.
    pub fn new(lr: f64, t: u64) -> Self {
        AdamStep {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t,
        }
    }

    /// The per-launch scalars, computed in f64 on the host as PyTorch does, then rounded to f32:
    /// `(1 - β1, β2, 1 - β2, lr / (1 - β1ᵗ), √(1 - β2ᵗ), eps)`.
    pub fn scalars(&self, op: &'static str) -> Result<[f32; 6]> {
        let ok = |v: f64, lo: f64, hi: f64| v.is_finite() && v >= lo && v < hi;
        if !(ok(self.beta1, 0.0, 1.0)
            && ok(self.beta2, 0.0, 1.0)
            && ok(self.lr, 0.0, f64::MAX)
            && ok(self.eps, 0.0, f64::MAX))
        {
            return Err(Error::OutOfRange {
                op,
                what: "Adam hyperparameters".into(),
                value: format!("{self:?}"),
                allowed: "0 <= beta1, beta2 < 1; lr, eps finite and >= 0",
            });
        }
        if self.t == 0 {
            return Err(Error::OutOfRange {
                op,
                what: "step t".into(),
                value: "0".into(),
                allowed: "t >= 1",
            });
        }
        let t = i32::try_from(self.t).unwrap_or(i32::MAX);
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let scalars = [
            (1.0 - self.beta1) as f32,
            self.beta2 as f32,
            (1.0 - self.beta2) as f32,
            (self.lr / bc1) as f32,
            bc2.sqrt() as f32,
            self.eps as f32,
        ];
        // A learning rate such as 1e300 is finite in f64 but its step size is not in f32: every parameter
        // would become non-finite for good.
        if let Some(v) = scalars.iter().find(|v| !v.is_finite()) {
            return Err(Error::OutOfRange {
                op,
                what: "Adam step size lr / (1 - beta1^t)".into(),
                value: format!("{} (as f32: {v}; lr = {})", self.lr / bc1, self.lr),
                allowed: "finite in f32",
            });
        }
        Ok(scalars)
    }

    /// The Adam table of a run at learning rate `lr` with PyTorch's defaults: the rows of
    /// [`Self::scalars`] for steps `1..=rows`, 6 floats a row in the kernels' `AdamScalars` field order
    /// (row `t − 1` is step `t`), computed exactly as a step computes them, so a kernel that reads row
    /// `counter` (the steps taken) updates bit for bit as a launch given the step's [`AdamStep`].
    pub fn table(lr: f64, rows: usize) -> Result<Vec<f32>> {
        let mut table = Vec::with_capacity(rows.saturating_mul(ADAM_ROW));
        for t in 1..=rows as u64 {
            table.extend_from_slice(&AdamStep::new(lr, t).scalars("AdamStep::table")?);
        }
        Ok(table)
    }
}

/// Floats in a row of an Adam table ([`AdamStep::table`]): the kernels' `AdamScalars`.
pub const ADAM_ROW: usize = 6;

/// Where the scalars of an Adam update come from: an [`AdamStep`] (computed for the update), or a row of an
/// Adam table ([`AdamStep::table`]) that a kernel reads at the device step counter. The CPU twins take
/// either (`&AdamStep` converts).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AdamSource<'a> {
    /// Scalars computed from the step's hyperparameters.
    Step(&'a AdamStep),
    /// A table row, already computed.
    Row([f32; ADAM_ROW]),
}

impl<'a> From<&'a AdamStep> for AdamSource<'a> {
    fn from(step: &'a AdamStep) -> Self {
        AdamSource::Step(step)
    }
}

impl AdamSource<'_> {
    /// The update's scalars `(1 - β1, β2, 1 - β2, lr / (1 - β1ᵗ), √(1 - β2ᵗ), eps)`; an error naming `op`
    /// for hyperparameters out of range.
    pub fn scalars(&self, op: &'static str) -> Result<[f32; ADAM_ROW]> {
        match self {
            AdamSource::Step(step) => step.scalars(op),
            AdamSource::Row(row) => Ok(*row),
        }
    }

    /// Row `counter[0]` of Adam table `table` (the steps taken index the step being run's row), checked:
    /// a counter of one element, a row inside the table.
    pub fn row_at(op: &'static str, table: &[f32], counter: &[u32]) -> Result<Self> {
        let [c] = counter else {
            return Err(Error::BufferLength {
                op,
                what: "step counter",
                expected: 1,
                len: counter.len(),
            });
        };
        let at = (*c as usize).saturating_mul(ADAM_ROW);
        match table.get(at..at.saturating_add(ADAM_ROW)) {
            Some(row) => {
                let mut r = [0.0f32; ADAM_ROW];
                r.copy_from_slice(row);
                Ok(AdamSource::Row(r))
            }
            None => Err(Error::OutOfRange {
                op,
                what: "the step counter's row of the Adam table".into(),
                value: format!(
                    "step {} of a table of {} rows",
                    u64::from(*c) + 1,
                    table.len() / ADAM_ROW
                ),
                allowed: "a step the table covers",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A precision's name reads back as the same precision; other spellings are refused, naming the value.
    #[test]
    fn precision_names_round_trip_and_others_are_refused() {
        for p in Precision::ALL {
            assert_eq!(p.to_string(), p.name());
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        for bad in ["", "FP32", "tf16", "fp32 "] {
            match bad.parse::<Precision>() {
                Err(e @ Error::OutOfRange { .. }) => {
                    assert!(e.to_string().contains(&format!("{bad:?}")), "{e}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    /// Shapes past the kernels' 32-bit indices are refused by `validate`, which every backend calls, with a
    /// reason that says which count is too large; shapes just inside pass.
    #[test]
    fn shapes_past_the_kernels_32_bit_indices_are_refused() {
        let refused = |r: Result<()>, what: &str| match r {
            Err(Error::InvalidShape { op: "t", reason }) => {
                assert!(reason.contains(what), "{reason}")
            }
            other => panic!("{what}: {other:?}"),
        };
        // 1024 channels of 2048 × 2048: one image holds 2^32 elements.
        refused(
            ConvShape::new(1, 1024, 4, 2048, 2048, 3).validate("t"),
            "one image's channels",
        );
        // The concat's channels count too.
        refused(
            ConvShape::new(1, 4, 4, 2048, 2048, 1)
                .into_slice(1024, 0)
                .validate("t"),
            "one image's channels",
        );
        refused(
            ConvShape::new(1, 1 << 20, 1 << 9, 1, 1, 3).validate("t"),
            "the weight and bias",
        );
        // 384 images in 64 splits of 6, each 6 × 20000² pixels.
        refused(
            ConvShape::new(384, 1, 1, 20_000, 20_000, 1).validate("t"),
            "an image split",
        );
        assert!(ConvShape::new(320, 1, 1, 20_000, 20_000, 1)
            .validate("t")
            .is_ok()); // splits of 5: 2.0e9
                       // 511 channels of 2048 × 2048: 2,143,289,344 elements, just inside.
        assert!(ConvShape::new(1, 511, 4, 2048, 2048, 3)
            .validate("t")
            .is_ok());
        for (m, k_in, n_out, what) in [
            (1 << 31, 0, 1, "m = "),
            (0, 1 << 31, 1, "k_in = "),
            (0, 1, 1 << 31, "n_out = "),
        ] {
            refused(LinearShape::new(m, k_in, n_out).validate("t"), what);
        }
        refused(
            ConvShape::new(1, 1, 65_535 * 64 + 1, 1, 1, 1).validate("t"),
            "output channels",
        );
        assert!(LinearShape::new(50, 200_704, 700).validate("t").is_ok());
        refused(check_count_rows("t", 1 << 24), "2^24");
        assert!(check_count_rows("t", (1 << 24) - 1).is_ok());
    }
}
