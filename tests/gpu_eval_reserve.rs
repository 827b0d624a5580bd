//! Issue 17's validation that does not stall the captured step, in a test binary of its own: the CUDA
//! backend's working memory is per process and never shrinks, so this test's large evaluations would leave
//! the other capture tests (tests/gpu_capture.rs) nothing to grow. `#[ignore]`d: it needs a CUDA GPU.

mod common;

use common::capture::{data_set, CFG};
use inception_cuda::Device;

/// An evaluation in batches larger than the training step's grows the device's working memory (fc1's
/// split-K partials) and costs the captured step a second capture; after `reserve_eval` (as `train_mnist`
/// calls it before its first step) an evaluation in still larger batches, a remainder batch included, leaves
/// the one capture current.
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_a_reserved_evaluation_keeps_the_captured_step() {
    use inception_cuda::nn::InceptionMnist;
    let dev = common::gpu();
    let Device::Cuda(cuda) = &dev else {
        unreachable!("common::gpu() returns a CUDA device")
    };
    let (steps, batch, lr) = (8u64, 8, 1e-3);
    let run = |images: usize, eval_batch: usize, reserve: bool| {
        let mut net = InceptionMnist::new(cuda.backend_arc(), CFG, 3).unwrap();
        let data = net.to_device(&data_set(images)).unwrap();
        net.reserve_steps(lr, steps).unwrap();
        if reserve {
            net.reserve_eval(images, eval_batch).unwrap();
        }
        for s in 1..=steps {
            net.train_gathered(&data, batch, lr).unwrap();
            if s == 4 {
                let acc = net.accuracy_on(&data, images, eval_batch).unwrap();
                assert!((0.0..=100.0).contains(&acc), "{acc}");
            }
        }
        assert_eq!(net.replays(), steps - 1, "the first step runs uncaptured");
        net.captures()
    };
    assert_eq!(
        run(300, 300, false),
        2,
        "the grown working memory is recaptured"
    );
    assert_eq!(
        run(500, 400, true),
        1,
        "reserve_eval sized the working memory"
    );
}
