//! CPU twins of every kernel: the same names, argument order and arithmetic as `kernels/*.cu`, run with
//! rayon over fixed chunks so results do not depend on scheduling. They are the specification the CUDA
//! kernels are checked against.

mod adam;
mod add;
mod conv;
mod dropout;
mod linear;
mod loss;
mod matmul;
mod pool;
mod reduce_conv;
mod relu;
mod schedule;
mod tf32;

pub use adam::{adam_step, adam_step_at};
pub use add::add_fwd;
pub use conv::{conv_dgrad, conv_fwd, conv_wgrad};
pub use dropout::{
    dropout_bwd, dropout_bwd_at, dropout_fwd, dropout_fwd_at, dropout_hash, dropout_threshold,
};
pub use linear::{
    linear_bgrad, linear_bwd_adam, linear_bwd_adam_at, linear_dgrad, linear_fwd, linear_wgrad,
    linear_wgrad_adam, linear_wgrad_adam_at,
};
pub use loss::{check_labels, count_correct, softmax_xent};
pub use pool::{maxpool3x3s1_bwd, maxpool3x3s1_fwd};
pub use reduce_conv::{reduce_conv_bwd, reduce_conv_fwd};
pub use relu::{relu_bwd, relu_fwd};
pub(crate) use schedule::gather_shape;
pub use schedule::{batch_gather, batch_gather_at, gather_offset, step_end};
pub use tf32::{mma_tf32_tile, tf32_round};

use rayon::prelude::*;

use crate::backend::Backend;
use crate::Result;

/// Elements per rayon task in elementwise twins (fixed, so work splits the same way on every run).
pub(crate) const CHUNK: usize = 1 << 14;

/// `out = Σ_i partials[i]`, summed in index order for every element: the result does not depend on how
/// the partials were scheduled.
pub(crate) fn sum_in_order(out: &mut [f32], partials: &[Vec<f32>]) {
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        out.fill(0.0);
        for p in partials {
            for (o, v) in out.iter_mut().zip(&p[c * CHUNK..]) {
                *o += v;
            }
        }
    });
}

/// Computes one partial per image with `f(image, partial)` (in parallel) and sums them in image order into
/// `out`: deterministic whatever the thread count.
pub(crate) fn sum_over_images(
    out: &mut [f32],
    n: usize,
    f: impl Fn(usize, &mut [f32]) -> Result<()> + Sync,
) -> Result<()> {
    let partials: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut partial = vec![0.0f32; out.len()];
            f(i, &mut partial).map(|()| partial)
        })
        .collect::<Result<_>>()?;
    sum_in_order(out, &partials);
    Ok(())
}

/// The CPU backend: host `Vec<f32>` buffers, slices as views, and the twins above.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

/// The buffer plumbing of the backends that keep their data in host memory (the CPU twins and the
/// emulator): `Vec<f32>` buffers, slices as views. Expands inside `impl Backend for ...`.
macro_rules! host_buffers {
    () => {
        type Buf = Vec<f32>;
        type Labels = Vec<u32>;
        type View<'a> = &'a [f32];
        type ViewMut<'a> = &'a mut [f32];

        fn alloc_zeros(&self, len: usize) -> $crate::Result<Vec<f32>> {
            Ok(vec![0.0; len])
        }

        fn upload(&self, data: &[f32]) -> $crate::Result<Vec<f32>> {
            Ok(data.to_vec())
        }

        fn upload_labels(&self, labels: &[u32]) -> $crate::Result<Vec<u32>> {
            Ok(labels.to_vec())
        }

        fn copy(&self, dst: &mut &mut [f32], src: &&[f32]) -> $crate::Result<()> {
            $crate::shape::check_len("copy", "dst", src.len(), dst.len())?;
            dst.copy_from_slice(src);
            Ok(())
        }

        fn write(&self, dst: &mut &mut [f32], src: &[f32]) -> $crate::Result<()> {
            $crate::shape::check_len("write", "dst", src.len(), dst.len())?;
            dst.copy_from_slice(src);
            Ok(())
        }

        fn write_labels(&self, dst: &mut Vec<u32>, src: &[u32]) -> $crate::Result<()> {
            $crate::shape::check_len("write_labels", "dst", src.len(), dst.len())?;
            dst.copy_from_slice(src);
            Ok(())
        }

        fn to_host(&self, buf: &Vec<f32>) -> $crate::Result<Vec<f32>> {
            Ok(buf.clone())
        }

        fn read(&self, src: &&[f32]) -> $crate::Result<Vec<f32>> {
            Ok(src.to_vec())
        }

        fn len(&self, buf: &Vec<f32>) -> usize {
            buf.len()
        }

        fn view<'a>(
            &'a self,
            buf: &'a Vec<f32>,
            range: std::ops::Range<usize>,
        ) -> $crate::Result<&'a [f32]> {
            $crate::backend::check_range("view", &range, buf.len())?;
            Ok(&buf[range])
        }

        fn view_mut<'a>(
            &'a self,
            buf: &'a mut Vec<f32>,
            range: std::ops::Range<usize>,
        ) -> $crate::Result<&'a mut [f32]> {
            $crate::backend::check_range("view_mut", &range, buf.len())?;
            Ok(&mut buf[range])
        }
    };
}
#[cfg(any(feature = "emulation", test))]
pub(crate) use host_buffers;

/// The view plumbing of the drivers whose buffers are host memory (the emulator, the tests' recorder):
/// expands inside `impl Driver for ...`. Scratch memory starts as NaN, so a kernel that reads it before
/// writing it shows.
#[cfg(any(feature = "emulation", test))]
macro_rules! host_views {
    () => {
        fn zero(&self, _op: &'static str, v: &mut &mut [f32]) -> $crate::Result<()> {
            v.fill(0.0);
            Ok(())
        }

        fn with_scratch<T>(
            &self,
            _op: &'static str,
            len: usize,
            f: impl FnOnce(&mut &mut [f32]) -> $crate::Result<T>,
        ) -> $crate::Result<T> {
            f(&mut vec![f32::NAN; len].as_mut_slice())
        }

        fn len_of(v: &&[f32]) -> usize {
            v.len()
        }

        fn len_of_mut(v: &&mut [f32]) -> usize {
            v.len()
        }

        fn len_of_labels(v: &Vec<u32>) -> usize {
            v.len()
        }

        fn labels_on_host(v: &Vec<u32>) -> Option<&[u32]> {
            Some(v)
        }

        fn sub<'a>(v: &'a &[f32], r: std::ops::Range<usize>) -> $crate::Result<&'a [f32]> {
            $crate::backend::check_range("view", &r, v.len())?;
            Ok(&v[r])
        }

        fn sub_mut<'a>(
            v: &'a mut &mut [f32],
            r: std::ops::Range<usize>,
        ) -> $crate::Result<&'a mut [f32]> {
            $crate::backend::check_range("view_mut", &r, v.len())?;
            Ok(&mut v[r])
        }

        fn reader<'a>(v: &'a &mut [f32]) -> &'a [f32] {
            v
        }
    };
}
#[cfg(any(feature = "emulation", test))]
pub(crate) use host_views;

impl crate::backend::BackendHandle for CpuBackend {
    type Backend = CpuBackend;
    fn into_backend(self) -> std::sync::Arc<CpuBackend> {
        std::sync::Arc::new(self)
    }
}

impl Backend for CpuBackend {
    host_buffers!();
    const FOLDS_RELU_BWD: bool = false;

    fn name(&self) -> &'static str {
        "cpu"
    }

    crate::backend::for_each_kernel!(forward_to_twins);
}
