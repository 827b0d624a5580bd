//! ReLU through every layer (twin, launcher, op, tape), on the CPU and, with `--ignored`, on the GPU.

mod common;

use common::{assert_bits_eq, assert_close, uniform};
use inception_cuda::{ops, Device, Error, Tape, Tensor};

on_cpu_and_gpu!(
    relu_fwd_exact_values,
    relu_bwd_exact_values,
    relu_of_empty_tensor,
    relu_bwd_rejects_mismatched_shapes,
    relu_gradient_matches_finite_differences,
);

fn relu_fwd_exact_values(dev: &Device) {
    let nan = f32::from_bits(0x7fc0_1234); // a NaN with a payload: it must come back a NaN
    let x = [
        -2.0,
        -0.0,
        0.0,
        0.5,
        3.0,
        nan,
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::MIN_POSITIVE,
        -1e-30,
    ];
    let want = [
        0.0,
        0.0,
        0.0,
        0.5,
        3.0,
        nan,
        0.0,
        f32::INFINITY,
        f32::MIN_POSITIVE,
        0.0,
    ];
    let x = Tensor::from_vec(x.to_vec(), &[2, 5], dev).unwrap();
    let y = ops::relu(&x).unwrap();
    assert_eq!(y.shape(), [2, 5]);
    assert_eq!(y.device(), dev);
    // -0.0 -> +0.0 and NaN stays NaN, bit for bit otherwise. The NaN's payload is not part of the contract:
    // on an H100 ptxas turns the select into the max instruction, which returns the canonical NaN.
    let canon = |v: Vec<f32>| -> Vec<f32> {
        v.into_iter()
            .map(|x| if x.is_nan() { f32::NAN } else { x })
            .collect()
    };
    assert_bits_eq(
        "relu_fwd",
        &canon(y.to_vec().unwrap()),
        &canon(want.to_vec()),
    );
}

fn relu_bwd_exact_values(dev: &Device) {
    // y is a forward output: >= 0 or NaN. The gradient at exactly 0 is 0; NaN in y blocks the gradient.
    let y = [0.0, 0.0, 0.5, 3.0, f32::NAN, f32::INFINITY, 1e-38];
    let dy = [1.0, -2.0, 3.0, -4.0, 5.0, 6.0, f32::NAN];
    let want = [0.0, 0.0, 3.0, -4.0, 0.0, 6.0, f32::NAN];
    let y = Tensor::from_vec(y.to_vec(), &[7], dev).unwrap();
    let dy = Tensor::from_vec(dy.to_vec(), &[7], dev).unwrap();
    let dx = ops::relu_bwd(&dy, &y).unwrap();
    assert_bits_eq("relu_bwd", &dx.to_vec().unwrap(), &want);
}

fn relu_of_empty_tensor(dev: &Device) {
    let x = Tensor::from_vec(vec![], &[0, 3], dev).unwrap();
    let y = ops::relu(&x).unwrap();
    assert_eq!(y.shape(), [0, 3]);
    assert!(y.to_vec().unwrap().is_empty());
}

fn relu_bwd_rejects_mismatched_shapes(dev: &Device) {
    let y = Tensor::zeros(&[2, 3], dev).unwrap();
    let dy = Tensor::zeros(&[3, 2], dev).unwrap();
    let err = ops::relu_bwd(&dy, &y).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { op: "relu_bwd", what: "dy", expected, got }
            if expected == &[2, 3] && got == &[3, 2]),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "relu_bwd: dy has shape [3, 2], expected [2, 3]"
    );
}

/// Oracle 1 (DESIGN.md): central differences of loss = sum(relu(x) · R) with a random R, so a permuted
/// gradient cannot pass; x is kept at least 0.1 away from the kink, where relu is exactly linear, so
/// f32 differences with step 1e-2 are accurate to rounding (tolerance 1e-3 absolute and relative).
fn relu_gradient_matches_finite_differences(dev: &Device) {
    let n = 3 * 5 * 7;
    let x: Vec<f32> = uniform(1, n)
        .iter()
        .map(|&v| {
            if v.abs() < 0.1 {
                v + 0.2f32.copysign(v)
            } else {
                v
            }
        })
        .collect();
    let r = uniform(2, n);
    let loss = |x: &[f32]| -> f64 {
        let t = Tensor::from_vec(x.to_vec(), &[3, 5, 7], dev).unwrap();
        let y = ops::relu(&t).unwrap().to_vec().unwrap();
        y.iter().zip(&r).map(|(&y, &r)| y as f64 * r as f64).sum()
    };
    let tape = Tape::new();
    let xt = tape.watch(&Tensor::from_vec(x.clone(), &[3, 5, 7], dev).unwrap());
    let y = ops::relu(&xt).unwrap();
    let grads = tape
        .backward(&y, &Tensor::from_vec(r.clone(), &[3, 5, 7], dev).unwrap())
        .unwrap();
    let analytic = grads.get(&xt).unwrap().to_vec().unwrap();
    let h = 1e-2f32;
    let fd: Vec<f32> = (0..n)
        .map(|i| {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[i] += h;
            minus[i] -= h;
            ((loss(&plus) - loss(&minus)) / (2.0 * h as f64)) as f32
        })
        .collect();
    assert_close(
        "relu gradient vs finite differences",
        &analytic,
        &fd,
        1e-3,
        1e-3,
    );
}

/// Oracle 3 (DESIGN.md): the kernels against their CPU twins, bit for bit, on a buffer longer than one
/// grid-stride pass (8192 blocks × 256 threads) and of odd length.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_relu_matches_cpu_twin_bit_for_bit() {
    let gpu = common::gpu();
    let n = 3 * 8192 * 256 + 17;
    let x = uniform(7, n);
    let dy = uniform(8, n);
    let shape = [n];
    let on = |dev: &Device| {
        let x = Tensor::from_vec(x.clone(), &shape, dev).unwrap();
        let dy = Tensor::from_vec(dy.clone(), &shape, dev).unwrap();
        let y = ops::relu(&x).unwrap();
        let dx = ops::relu_bwd(&dy, &y).unwrap();
        let s = ops::add(&x, &dy).unwrap();
        (
            y.to_vec().unwrap(),
            dx.to_vec().unwrap(),
            s.to_vec().unwrap(),
        )
    };
    let (cpu, gpu) = (on(&Device::Cpu), on(&gpu));
    assert_bits_eq("relu_fwd gpu vs cpu", &gpu.0, &cpu.0);
    assert_bits_eq("relu_bwd gpu vs cpu", &gpu.1, &cpu.1);
    assert_bits_eq("add_fwd gpu vs cpu", &gpu.2, &cpu.2);
}

/// Tensors on different devices are an error naming the op and operand, not a panic.
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_mixing_devices_is_an_error() {
    let gpu = common::gpu();
    let a = Tensor::zeros(&[4], &Device::Cpu).unwrap();
    let b = Tensor::zeros(&[4], &gpu).unwrap();
    let err = ops::add(&a, &b).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DeviceMismatch {
                op: "add_fwd",
                what: "b",
                ..
            }
        ),
        "{err:?}"
    );
    let err = ops::relu_bwd(&a, &b).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DeviceMismatch {
                op: "relu_bwd",
                what: "dy",
                ..
            }
        ),
        "{err:?}"
    );
}
