//! Convolutions as tensor ops: the plain `conv` (stride 1, 'same', kernel 1, 3 or 5, with bias) and the fused
//! `reduce_conv3x3` / `reduce_conv5x5` (1×1 + bias → ReLU → K×K + bias → ReLU), each with its backward.
//!
//! These ops allocate their outputs; the Inception module of [`crate::nn`] calls the same kernels on
//! preallocated buffers and writes each branch into its channel slice instead.

use crate::backend::reduce_conv_param_ranges;
use crate::ops::relu_bwd;
use crate::shape::{ConvShape, ReduceConvShape};
use crate::tape::record;
use crate::tensor::{check_shape, Storage, Tensor};
use crate::{Error, Result};

/// `[n, c, h, w]` of a 4-d operand, or an error naming `op` and the operand.
fn nchw(op: &'static str, what: &'static str, t: &Tensor) -> Result<[usize; 4]> {
    <[usize; 4]>::try_from(t.shape()).map_err(|_| Error::InvalidShape {
        op,
        reason: format!("{what} has shape {:?}, expected 4 dimensions", t.shape()),
    })
}

/// The conv shape of `x [n, c_in, h, w]`, `w [c_out, c_in, k, k]`, `b [c_out]`.
fn conv_shape(op: &'static str, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<ConvShape> {
    let [n, c_in, h, wd] = nchw(op, "x", x)?;
    let [c_out, _, k, _] = nchw(op, "w", w)?;
    check_shape(op, "w", &[c_out, c_in, k, k], w.shape())?;
    check_shape(op, "b", &[c_out], b.shape())?;
    let s = ConvShape::new(n, c_in, c_out, h, wd, k);
    s.validate(op)?;
    Ok(s)
}

/// Wraps the storages of a multi-output dispatch into tensors of the given shapes.
fn tensors(storages: Vec<Storage>, shapes: &[&[usize]], device: &crate::Device) -> Vec<Tensor> {
    storages
        .into_iter()
        .zip(shapes)
        .map(|(st, sh)| Tensor::from_storage(st, sh, device.clone()))
        .collect()
}

/// `y [n, c_out, h, w] = w ⊛ x + b`: stride 1, 'same' zero padding, kernel 1, 3 or 5. Recorded on the tape
/// of its tracked operands; backward gives `dx`, `dw`, `db`.
pub fn conv(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let s = conv_shape("conv_fwd", x, w, b)?;
    let len = s.y_len("conv_fwd")?;
    let storage = dispatch!("conv_fwd", x.device(), |be, x = x, w = w, b = b| {
        crate::tensor::fill_new(be, len, |y| be.conv_fwd(y, &x, &w, &b, &s, false))
    });
    let y = Tensor::from_storage(storage, &[s.n, s.c_out, s.h, s.w], x.device().clone());
    let (x_saved, w_saved) = (x.detach(), w.detach());
    record("conv", &[x, w, b], y, move |dy| {
        conv_bwd(dy, &x_saved, &w_saved, &s)
    })
}

/// Backward of [`conv`]: `[dx, dw, db]` from `dy [n, c_out, h, w]`.
fn conv_bwd(dy: &Tensor, x: &Tensor, w: &Tensor, s: &ConvShape) -> Result<Vec<Tensor>> {
    let (x_len, w_len) = (s.x_len("conv_dgrad")?, s.w_len("conv_wgrad")?);
    let storages = dispatch_many!("conv_bwd", x.device(), |be, dy = dy, x = x, w = w| {
        // dw and db as one block [dw | db] (the layout of a flat gradient buffer), then split.
        let (mut dx, mut block) = (be.alloc_zeros(x_len)?, be.alloc_zeros(w_len + s.c_out)?);
        let ranges = [0..w_len, w_len..w_len + s.c_out];
        crate::graph::defs::conv_bwd(be, Some((&mut be.view_mut(&mut dx, 0..x_len)?, false)), &mut block, ranges.clone(), &dy, None, &x, &w, s)?;
        let mut out = vec![dx];
        for r in ranges {
            let mut part = be.alloc_zeros(r.len())?;
            be.copy(&mut be.view_mut(&mut part, 0..r.len())?, &be.view(&block, r)?)?;
            out.push(part);
        }
        Ok::<_, Error>(out)
    });
    Ok(tensors(
        storages,
        &[x.shape(), w.shape(), &[s.c_out]],
        x.device(),
    ))
}

/// The fused 3×3 branch: `relu(w2 ⊛ relu(w1 ⊛ x + b1) + b2)` with `w1 [c_mid, c_in, 1, 1]`,
/// `w2 [c_out, c_mid, 3, 3]`. Backward gives the gradients of `x, w1, b1, w2, b2`.
pub fn reduce_conv3x3(
    x: &Tensor,
    w1: &Tensor,
    b1: &Tensor,
    w2: &Tensor,
    b2: &Tensor,
) -> Result<Tensor> {
    reduce_conv(3, x, w1, b1, w2, b2)
}

/// The fused 5×5 branch: as [`reduce_conv3x3`] with `w2 [c_out, c_mid, 5, 5]`.
pub fn reduce_conv5x5(
    x: &Tensor,
    w1: &Tensor,
    b1: &Tensor,
    w2: &Tensor,
    b2: &Tensor,
) -> Result<Tensor> {
    reduce_conv(5, x, w1, b1, w2, b2)
}

fn reduce_conv(
    k: usize,
    x: &Tensor,
    w1: &Tensor,
    b1: &Tensor,
    w2: &Tensor,
    b2: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "reduce_conv_fwd";
    let reduce = conv_shape(OP, x, w1, b1)?;
    if reduce.k != 1 {
        return Err(Error::InvalidShape {
            op: OP,
            reason: format!("w1 has shape {:?}, expected a 1×1 kernel", w1.shape()),
        });
    }
    let [c_out, ..] = nchw(OP, "w2", w2)?;
    check_shape(OP, "w2", &[c_out, reduce.c_out, k, k], w2.shape())?;
    check_shape(OP, "b2", &[c_out], b2.shape())?;
    let s = ReduceConvShape {
        n: reduce.n,
        c_in: reduce.c_in,
        c_mid: reduce.c_out,
        c_out,
        h: reduce.h,
        w: reduce.w,
        k,
        c_total: c_out,
        c_offset: 0,
        precision: crate::shape::Precision::Fp32,
    };
    s.validate(OP)?;
    let (y_len, mid_len) = (s.conv().y_len(OP)?, s.mid_len(OP)?);
    let ranges = reduce_conv_param_ranges(&s);
    let total = ranges[3].end;
    let dev = x.device();
    let storages = dispatch_many!(OP, dev, |be, x = x, w1 = w1, b1 = b1, w2 = w2, b2 = b2| {
        // The kernel reads its parameters as one block [w1 | b1 | w2 | b2] (their layout in a net's flat
        // parameter buffer): a few KB, copied on the device.
        let mut block = be.alloc_zeros(total)?;
        for (src, r) in [&w1, &b1, &w2, &b2].into_iter().zip(ranges.clone()) {
            be.copy(&mut be.view_mut(&mut block, r)?, src)?;
        }
        let (mut y, mut mid) = (be.alloc_zeros(y_len)?, be.alloc_zeros(mid_len)?);
        {
            let params = be.view(&block, 0..total)?;
            be.reduce_conv_fwd(&mut be.view_mut(&mut y, 0..y_len)?, &mut be.view_mut(&mut mid, 0..mid_len)?, &x, &params, &s)?;
        }
        Ok::<_, Error>(vec![y, mid, block])
    });
    let mut outs = tensors(
        storages,
        &[&[s.n, c_out, s.h, s.w], &[s.n, s.c_mid, s.h, s.w], &[total]],
        dev,
    )
    .into_iter();
    let (Some(y), Some(mid), Some(block)) = (outs.next(), outs.next(), outs.next()) else {
        return Err(Error::Internal {
            op: OP,
            reason: "missing outputs".into(),
        });
    };
    let saved = (x.detach(), y.detach(), mid, block);
    let shapes = [
        w1.shape().to_vec(),
        b1.shape().to_vec(),
        w2.shape().to_vec(),
        b2.shape().to_vec(),
    ];
    record("reduce_conv", &[x, w1, b1, w2, b2], y, move |dy| {
        let (x, y, mid, block) = &saved;
        reduce_conv_bwd(dy, x, y, mid, block, &s, &shapes)
    })
}

/// Backward of the fused branch: `[dx, dw1, db1, dw2, db2]` from the output gradient `dy`.
fn reduce_conv_bwd(
    dy: &Tensor,
    x: &Tensor,
    y: &Tensor,
    mid: &Tensor,
    block: &Tensor,
    s: &ReduceConvShape,
    shapes: &[Vec<usize>; 4],
) -> Result<Vec<Tensor>> {
    const OP: &str = "reduce_conv_bwd";
    let g = relu_bwd(dy, y)?; // through the output ReLU
    let ranges = reduce_conv_param_ranges(s);
    let (x_len, total, mid_len) = (x.elem_count(), ranges[3].end, mid.elem_count());
    let storages = dispatch_many!(OP, x.device(), |be, g = g, x = x, mid = mid, block = block| {
        let (mut dx, mut dblock) = (be.alloc_zeros(x_len)?, be.alloc_zeros(total)?);
        let mut scratch = be.alloc_zeros(mid_len)?;
        be.reduce_conv_bwd(
            &mut be.view_mut(&mut dx, 0..x_len)?,
            &mut be.view_mut(&mut dblock, 0..total)?,
            &mut be.view_mut(&mut scratch, 0..mid_len)?,
            &g,
            None,
            &x,
            &mid,
            &block,
            s,
            false,
        )?;
        let mut out = vec![dx];
        for r in ranges.clone() {
            let mut part = be.alloc_zeros(r.len())?;
            be.copy(&mut be.view_mut(&mut part, 0..r.len())?, &be.view(&dblock, r)?)?;
            out.push(part);
        }
        Ok::<_, Error>(out)
    });
    let [s1, s2, s3, s4] = shapes;
    Ok(tensors(storages, &[x.shape(), s1, s2, s3, s4], x.device()))
}
