//! Picks the GPU if one can be used (else says why and uses the CPU), runs ReLU forward and backward through
//! the tape there, and checks the result against the CPU twins bit for bit.
//!
//!     cargo run --example device_info --release

use inception_cuda::{ops, Device, Tape, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (device, why_not_cuda) = Device::cuda_if_available(0);
    match &why_not_cuda {
        None => println!("device: {}", device.describe()),
        Some(reason) => println!("device: {} (CUDA not used: {reason})", device.describe()),
    }

    let n = 1 << 20;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let dy: Vec<f32> = (0..n)
        .map(|i| ((i * 104_729) % 1999) as f32 / 999.0 - 1.0)
        .collect();

    let run = |dev: &Device| -> inception_cuda::Result<(Vec<f32>, Vec<f32>)> {
        let tape = Tape::new();
        let x = tape.watch(&Tensor::from_vec(x.clone(), &[n], dev)?);
        let y = ops::relu(&x)?;
        let grads = tape.backward(&y, &Tensor::from_vec(dy.clone(), &[n], dev)?)?;
        let dx = grads
            .get(&x)
            .map(Tensor::to_vec)
            .transpose()?
            .unwrap_or_default();
        Ok((y.to_vec()?, dx))
    };
    let (y, dx) = run(&device)?;
    let (y_cpu, dx_cpu) = run(&Device::Cpu)?;
    let same = |a: &[f32], b: &[f32]| {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits())
    };
    let positive = y.iter().filter(|&&v| v > 0.0).count();
    println!("relu over {n} values on {device}: {positive} positive");
    println!(
        "forward  matches the CPU twin bit for bit: {}\nbackward matches the CPU twin bit for bit: {}",
        same(&y, &y_cpu),
        same(&dx, &dx_cpu)
    );
    if same(&y, &y_cpu) && same(&dx, &dx_cpu) {
        Ok(())
    } else {
        Err("device results differ from the CPU twins".into())
    }
}
