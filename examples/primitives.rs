//! One Inception module, forward and backward, built directly from the public CUDA launchers on your own
//! cudarc buffers (no tensors, no tape), checked against the CPU twin.
//!
//!     cargo run --example primitives --release
//!
//! Needs a CUDA GPU: without one it says why and exits with status 2 (nothing was checked).

use cudarc::driver::CudaSlice;
use inception_cuda::cpu::CpuBackend;
use inception_cuda::cuda::{self, CudaBackend};
use inception_cuda::nn::{InceptionModule, InceptionWidths};
use inception_cuda::shape::PoolShape;
use inception_cuda::{Backend, Device};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = match Device::cuda(0) {
        Ok(dev) => dev,
        Err(reason) => {
            eprintln!("this example needs a CUDA GPU: {reason}");
            std::process::exit(2);
        }
    };
    let Device::Cuda(cuda_dev) = &dev else {
        unreachable!("Device::cuda returns a CUDA device")
    };
    let gpu: &CudaBackend = cuda_dev.backend();
    println!("device: {}", dev.describe());

    // Module 2 of the MNIST net on a batch of 8: 128 inputs, branches 64 | 16→64 | 16→64 | pool→64.
    let m = InceptionModule::new(128, InceptionWidths::uniform(64, 16));
    let (n, h, w) = (8, 28, 28);
    let (s1, s3, s5, sp) = m.branch_shapes(n, h, w);
    let layout = m.layout();
    let rand = |seed: u32, len: usize| {
        (0..len)
            .map(|i| {
                ((i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8) as f32 / 8_388_608.0 - 1.0
            })
            .collect::<Vec<f32>>()
    };
    let (x_h, params_h, dy_h) = (
        rand(1, n * 128 * h * w),
        rand(2, layout.len()),
        rand(3, n * m.c_out() * h * w),
    );

    // Your buffers: plain cudarc slices on the device's stream.
    let stream = gpu.stream();
    let x: CudaSlice<f32> = stream.clone_htod(&x_h)?;
    let params: CudaSlice<f32> = stream.clone_htod(&params_h)?;
    let dy: CudaSlice<f32> = stream.clone_htod(&dy_h)?;
    let mut y = stream.alloc_zeros::<f32>(dy_h.len())?;
    let mut mid3 = stream.alloc_zeros::<f32>(n * 16 * h * w)?;
    let mut mid5 = stream.alloc_zeros::<f32>(n * 16 * h * w)?;
    let mut pooled = stream.alloc_zeros::<f32>(x_h.len())?;
    let p = |name: &str| params.slice(layout.range(name));
    let block =
        |first: &str, last: &str| params.slice(layout.range(first).start..layout.range(last).end);

    // Forward: each branch writes its channel slice of y, with the module's ReLU in its epilogue.
    cuda::conv_fwd(
        gpu,
        &mut y.as_view_mut(),
        &x.as_view(),
        &p("branch1x1.weight"),
        &p("branch1x1.bias"),
        &s1,
        true,
    )?;
    cuda::reduce_conv_fwd(
        gpu,
        &mut y.as_view_mut(),
        &mut mid3.as_view_mut(),
        &x.as_view(),
        &block("reduce3x3.weight", "conv3x3.bias"),
        &s3,
    )?;
    cuda::reduce_conv_fwd(
        gpu,
        &mut y.as_view_mut(),
        &mut mid5.as_view_mut(),
        &x.as_view(),
        &block("reduce5x5.weight", "conv5x5.bias"),
        &s5,
    )?;
    let pool = PoolShape { n, c: 128, h, w };
    cuda::maxpool3x3s1_fwd(gpu, &mut pooled.as_view_mut(), &x.as_view(), &pool)?;
    cuda::conv_fwd(
        gpu,
        &mut y.as_view_mut(),
        &pooled.as_view(),
        &p("pool_proj.weight"),
        &p("pool_proj.bias"),
        &sp,
        true,
    )?;

    // Backward: through the ReLU once, then every branch reads its slice of g; dx accumulates four branches.
    let mut g = stream.alloc_zeros::<f32>(dy_h.len())?;
    cuda::relu_bwd(gpu, &mut g.as_view_mut(), &dy.as_view(), &y.as_view())?;
    let mut dparams = stream.alloc_zeros::<f32>(layout.len())?;
    let mut dx = stream.alloc_zeros::<f32>(x_h.len())?;
    let mut scratch = stream.alloc_zeros::<f32>(n * 16 * h * w)?;
    let mut dpooled = stream.alloc_zeros::<f32>(x_h.len())?;
    let r = |name: &str| layout.range(name);
    // dw and db in one kernel: the weight and its bias are adjacent in the block.
    cuda::conv_wgrad(
        gpu,
        &mut dparams.slice_mut(r("branch1x1.weight").start..r("branch1x1.bias").end),
        &g.as_view(),
        None,
        &x.as_view(),
        &s1,
    )?;
    cuda::conv_dgrad(
        gpu,
        &mut dx.as_view_mut(),
        &g.as_view(),
        None,
        &p("branch1x1.weight"),
        &s1,
        false,
    )?;
    for (first, last, mid, s) in [
        ("reduce3x3.weight", "conv3x3.bias", &mid3, &s3),
        ("reduce5x5.weight", "conv5x5.bias", &mid5, &s5),
    ] {
        let range = r(first).start..r(last).end;
        cuda::reduce_conv_bwd(
            gpu,
            &mut dx.as_view_mut(),
            &mut dparams.slice_mut(range.clone()),
            &mut scratch.as_view_mut(),
            &g.as_view(),
            None,
            &x.as_view(),
            &mid.as_view(),
            &params.slice(range),
            s,
            true,
        )?;
    }
    // dw and db in one kernel: the weight and its bias are adjacent in the block.
    cuda::conv_wgrad(
        gpu,
        &mut dparams.slice_mut(r("pool_proj.weight").start..r("pool_proj.bias").end),
        &g.as_view(),
        None,
        &pooled.as_view(),
        &sp,
    )?;
    cuda::conv_dgrad(
        gpu,
        &mut dpooled.as_view_mut(),
        &g.as_view(),
        None,
        &p("pool_proj.weight"),
        &sp,
        false,
    )?;
    cuda::maxpool3x3s1_bwd(
        gpu,
        &mut dx.as_view_mut(),
        &dpooled.as_view(),
        &x.as_view(),
        &pool,
        true,
    )?;

    // The same module on the CPU twins.
    let cpu = CpuBackend;
    let mut y_c = vec![0.0; dy_h.len()];
    let mut saved = m.alloc_saved(&cpu, n, h, w)?;
    m.forward(
        &cpu,
        &mut y_c.as_mut_slice(),
        &mut saved,
        &x_h.as_slice(),
        (&params_h, 0),
        (n, h, w),
    )?;
    let (mut dx_c, mut dp_c) = (vec![0.0; x_h.len()], vec![0.0; layout.len()]);
    let mut sc = m.alloc_scratch(&cpu, n, h, w)?;
    let (dy_v, y_v, x_v) = (dy_h.as_slice(), y_c.as_slice(), x_h.as_slice());
    m.backward(
        &cpu,
        Some(&mut dx_c.as_mut_slice()),
        (&mut dp_c, 0),
        &mut sc,
        &dy_v,
        &y_v,
        &x_v,
        &saved,
        &params_h,
        (n, h, w),
    )?;

    // Largest |gpu - cpu| relative to the output's RMS: sums of many products that cancel near zero carry
    // rounding of the size of their terms, so an element's own magnitude is the wrong yardstick.
    let worst =
        |gpu_buf: &CudaSlice<f32>, cpu_buf: &[f32]| -> Result<f32, Box<dyn std::error::Error>> {
            let host = gpu.to_host(gpu_buf)?;
            let rms = (cpu_buf.iter().map(|v| v * v).sum::<f32>() / cpu_buf.len().max(1) as f32)
                .sqrt()
                .max(f32::MIN_POSITIVE);
            Ok(host
                .iter()
                .zip(cpu_buf)
                .map(|(a, b)| (a - b).abs() / rms)
                .fold(
                    0.0,
                    |m: f32, e| if e.is_nan() { f32::NAN } else { m.max(e) },
                ))
        };
    let (ey, edx, edp) = (
        worst(&y, &y_c)?,
        worst(&dx, &dx_c)?,
        worst(&dparams, &dp_c)?,
    );
    println!("max |gpu - cpu| / rms(cpu): y {ey:.2e}, dx {edx:.2e}, dparams {edp:.2e}");
    if !(ey <= 1e-4 && edx <= 1e-3 && edp <= 1e-3) {
        return Err("the GPU module differs from the CPU twin (limits: y 1e-4, dx and dparams 1e-3 of the RMS)".into());
    }
    println!("one Inception module from the primitives matches the CPU twin");
    Ok(())
}
