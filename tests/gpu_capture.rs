//! The step-capture test (issue 6), alone in its own test binary: a capture in global mode records every
//! launch on the device's stream, which the tests of one binary share across their threads, so another test
//! running beside it would have its launches captured instead of run (seen on an H100 when this test sat in
//! tests/gpu_kernels.rs: a concurrent module test lost part of its dx). `#[ignore]`d: it needs a CUDA GPU.

mod common;

use common::{assert_bits_eq, uniform};
use inception_cuda::Device;

/// Issue 6's capture test: one training step captured in global mode (a host sync would fail the capture)
/// holds only kernel, memset and device-to-device copy nodes (an allocation would show as a node), and replaying it gives the same
/// parameters, bit for bit, as the same step run uncaptured on a twin net.
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_training_step_captures_into_a_graph() {
    use inception_cuda::cuda::GraphNode;
    use inception_cuda::nn::{InceptionMnist, MnistConfig};
    let dev = common::gpu();
    let Device::Cuda(cuda) = &dev else {
        unreachable!("common::gpu() returns a CUDA device")
    };
    let cfg = MnistConfig {
        map1: 4,
        map2: 4,
        reduce: 2,
        hidden: 16,
        dropout: 0.5,
        image: 28,
    };
    let images: Vec<f32> = uniform(61, 8 * 784)
        .iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    let labels: Vec<u32> = (0..8).collect();
    let mut nets = [0, 1].map(|_| InceptionMnist::new(cuda.backend_arc(), cfg, 3).unwrap());
    for net in &mut nets {
        net.load_batch(&images, Some(&labels)).unwrap();
        net.train_loaded(1e-3).unwrap(); // first step: the workspace and scratch exist from here on
    }
    let [captured, plain] = &mut nets;
    let (_, graph) = cuda
        .backend()
        .capture(|| captured.train_loaded(1e-3))
        .unwrap();
    let nodes = graph.nodes().unwrap();
    assert!(nodes.contains(&GraphNode::Kernel), "{nodes:?}");
    assert!(
        nodes.iter().all(|n| matches!(
            n,
            GraphNode::Kernel | GraphNode::Memset | GraphNode::MemcpyDeviceToDevice
        )),
        "{nodes:?}"
    );
    graph.replay().unwrap();
    plain.train_loaded(1e-3).unwrap();
    for e in captured.params().to_vec() {
        assert_bits_eq(
            &format!("{} after a replayed step", e.name),
            &captured.param(&e.name).unwrap(),
            &plain.param(&e.name).unwrap(),
        );
    }
}
