//! Device selection: errors, never panics, when CUDA cannot be used; falls back to the CPU with a reason.

mod common;

use inception_cuda::{CudaUnavailable, Device, Error, Tensor};

/// No machine has 1000 GPUs: whatever this machine has (no driver, no GPU, some GPUs, a CPU-only build),
/// opening ordinal 1000 must be an error that says why.
#[test]
fn opening_a_missing_gpu_is_an_error_not_a_panic() {
    let err = Device::cuda(1000).unwrap_err();
    match &err {
        Error::CudaUnavailable(CudaUnavailable::NoDevice { ordinal: 1000, .. })
        | Error::CudaUnavailable(CudaUnavailable::NoDriver)
        | Error::CudaUnavailable(CudaUnavailable::NotCompiled) => {}
        #[cfg(feature = "cuda")]
        Error::CudaUnavailable(CudaUnavailable::Driver { ordinal: 1000, .. }) => {}
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(err.to_string().starts_with("CUDA unavailable: "), "{err}");
}

#[test]
fn cuda_if_available_falls_back_to_the_cpu_and_says_why() {
    let (device, reason) = Device::cuda_if_available(1000);
    assert_eq!(device, Device::Cpu);
    assert!(
        matches!(reason, Some(Error::CudaUnavailable(_))),
        "{reason:?}"
    );
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cpu_only_build_reports_cuda_as_not_compiled() {
    let err = Device::cuda(0).unwrap_err();
    assert!(
        matches!(err, Error::CudaUnavailable(CudaUnavailable::NotCompiled)),
        "{err:?}"
    );
}

#[test]
fn tensor_constructors_check_shapes() {
    let err = Tensor::from_vec(vec![1.0; 5], &[2, 3], &Device::Cpu).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Tensor::from_vec: 5 values given for shape [2, 3] (6 elements)"
    );
    let err = Tensor::zeros(&[usize::MAX, 2], &Device::Cpu).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ShapeOverflow {
                op: "Tensor::zeros",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_is_opened_once_and_describes_itself() {
    let a = common::gpu();
    let b = Device::cuda(0).unwrap();
    assert_eq!(a, b, "two opens of ordinal 0 must share one handle");
    assert_ne!(a, Device::Cpu);
    let text = a.describe();
    assert!(
        text.starts_with("cuda:0 (") && text.contains("PTX from"),
        "{text}"
    );
    let (fallback, reason) = Device::cuda_if_available(0);
    assert!(fallback.is_cuda() && reason.is_none(), "{reason:?}");
    let x = Tensor::from_vec(vec![1.0, -1.0], &[2], &a).unwrap();
    assert_eq!(
        x.to_device(&Device::Cpu).unwrap().to_vec().unwrap(),
        [1.0, -1.0]
    );
    a.synchronize().unwrap();
}
