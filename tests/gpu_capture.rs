//! The step-capture tests (issues 6 and 17), in their own test binary: a capture records every launch on the
//! device's stream, which the tests of one binary share across their threads, so another test running beside
//! it would have its launches captured instead of run (seen on an H100 when the first of them sat in
//! tests/gpu_kernels.rs: a concurrent module test lost part of its dx), and its host syncs would invalidate
//! the capture. The harness runs tests on parallel threads, so each test here holds [`one_at_a_time`]'s lock.
//! `#[ignore]`d: they need a CUDA GPU.

mod common;

use std::sync::{Mutex, MutexGuard, PoisonError};

use common::capture::{data_set, CFG};
use common::{assert_bits_eq, uniform};
use inception_cuda::Device;

/// Serialises this binary's tests (see the module header); a failed test's poisoned lock still serves.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static STREAM: Mutex<()> = Mutex::new(());
    STREAM.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Issue 6's capture test: one training step captured (a host sync on the capturing thread would fail it)
/// holds only kernel, memset and device-to-device copy nodes (an allocation would show as a node), and replaying it gives the same
/// parameters, bit for bit, as the same step run uncaptured on a twin net.
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_training_step_captures_into_a_graph() {
    use inception_cuda::cuda::GraphNode;
    use inception_cuda::nn::InceptionMnist;
    let _stream = one_at_a_time();
    let dev = common::gpu();
    let Device::Cuda(cuda) = &dev else {
        unreachable!("common::gpu() returns a CUDA device")
    };
    let images: Vec<f32> = uniform(61, 8 * 784)
        .iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    let labels: Vec<u32> = (0..8).collect();
    let mut nets = [0, 1].map(|_| InceptionMnist::new(cuda.backend_arc(), CFG, 3).unwrap());
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

/// Issue 17's replay test: a gathered training run (data resident on the device, the batch, dropout step and
/// Adam scalars read from the device step counter) whose step is captured once and replayed equals the same
/// run issued launch by launch, bit for bit, over 60 steps: every logged mean loss, the parameters and both
/// moments. Midway an evaluation of a larger batch grows the device's working memory (the linear forward's
/// split-K partials), which must make the captured graph stale and be captured again, not replayed with a
/// freed address; and a net resumed from the replayed run's state at step 40 (the device counter restored
/// from the step) continues it bit for bit.
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_replayed_run_equals_the_uncaptured_run() {
    use inception_cuda::nn::InceptionMnist;
    let _stream = one_at_a_time();
    let dev = common::gpu();
    let Device::Cuda(cuda) = &dev else {
        unreachable!("common::gpu() returns a CUDA device")
    };
    let set = data_set(300);
    let (steps, batch, lr) = (60u64, 8, 1e-3);
    let mut nets = [0, 1].map(|_| InceptionMnist::new(cuda.backend_arc(), CFG, 3).unwrap());
    let data = nets[0].to_device(&set).unwrap();
    nets[1].set_capture(false);
    for net in &mut nets {
        net.reserve_steps(lr, steps).unwrap();
    }
    let mut resumed = None;
    for s in 1..=steps {
        for net in &mut nets {
            net.train_gathered(&data, batch, lr).unwrap();
        }
        if s % 10 == 0 {
            let [a, b] = nets
                .each_mut()
                .map(|n| n.take_mean_loss().unwrap().unwrap());
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "mean loss at step {s}: replayed {a}, uncaptured {b}"
            );
        }
        if s == 20 {
            // a batch of 100 needs more split-K partials than the training batch: the scratch grows
            let [a, b] = nets
                .each_mut()
                .map(|n| n.accuracy_on(&data, 200, 100).unwrap());
            assert_eq!(a.to_bits(), b.to_bits(), "validation at step {s}");
        }
        if s == 40 {
            let src = &nets[0];
            let mut r = InceptionMnist::new(cuda.backend_arc(), CFG, 77).unwrap();
            for e in src.params().to_vec() {
                r.set_param(&e.name, &src.param(&e.name).unwrap()).unwrap();
            }
            r.set_train_state(&src.train_state().unwrap()).unwrap();
            r.reserve_steps(lr, steps).unwrap();
            resumed = Some(r);
        }
        if s > 40 {
            if let Some(r) = resumed.as_mut() {
                r.train_gathered(&data, batch, lr).unwrap();
            }
        }
    }
    assert!(
        nets[0].replays() >= steps - 3,
        "{} replays",
        nets[0].replays()
    );
    assert_eq!(nets[1].replays(), 0);
    // captured at step 2 and again after the validation grew the working memory (no other test of this
    // binary grows it as far: tests/gpu_eval_reserve.rs, which would, runs in a process of its own)
    assert_eq!(nets[0].captures(), 2);
    let resumed = resumed.unwrap();
    for e in nets[0].params().to_vec() {
        let replayed = nets[0].param(&e.name).unwrap();
        assert_bits_eq(
            &format!("{} replayed vs uncaptured", e.name),
            &replayed,
            &nets[1].param(&e.name).unwrap(),
        );
        assert_bits_eq(
            &format!("{} resumed vs uninterrupted", e.name),
            &resumed.param(&e.name).unwrap(),
            &replayed,
        );
    }
    let [a, b] = nets.each_ref().map(|n| n.train_state().unwrap());
    assert_bits_eq("Adam m", &a.adam_m, &b.adam_m);
    assert_bits_eq("Adam v", &a.adam_v, &b.adam_v);
    assert_eq!(a.step, steps);
}

/// Issue 17's checkpoint copy: the parameters and moments copied to pinned memory in stream order at step 3,
/// while steps 4..6 are issued behind it, give the checkpoint unit of step 3, byte for byte that of a
/// synchronous checkpoint taken at step 3, finished and written on another thread.
#[test]
#[ignore = "needs a CUDA GPU"]
fn small_gpu_checkpoint_copy_in_stream_order_equals_a_synchronous_one() {
    use inception_cuda::nn::InceptionMnist;
    use std::collections::BTreeMap;
    let _stream = one_at_a_time();
    let dev = common::gpu();
    let Device::Cuda(cuda) = &dev else {
        unreachable!("common::gpu() returns a CUDA device")
    };
    let images: Vec<f32> = uniform(62, 8 * 784)
        .iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    let labels: Vec<u32> = (0..8).collect();
    let mut net = InceptionMnist::new(cuda.backend_arc(), CFG, 3).unwrap();
    for _ in 0..3 {
        net.train_step(&images, &labels, 1e-3).unwrap();
    }
    let root = std::env::temp_dir().join(format!("inception-gpu-ckpt-{}", std::process::id()));
    let (sync_dir, bg_dir) = (root.join("sync"), root.join("background"));
    std::fs::create_dir_all(&sync_dir).unwrap();
    std::fs::create_dir_all(&bg_dir).unwrap();
    let recipe = BTreeMap::from([("lr".to_string(), "0.001".to_string())]);
    net.save_checkpoint(&sync_dir, &recipe).unwrap();
    for round in 0..2 {
        // the second round reuses the pinned buffers the first handed back
        let pending = net.checkpoint_snapshot_async().unwrap();
        let expected = net.step();
        for _ in 0..3 {
            net.train_step(&images, &labels, 1e-3).unwrap();
        }
        let (dir, r) = (bg_dir.join(round.to_string()), recipe.clone());
        std::fs::create_dir_all(&dir).unwrap();
        let written = std::thread::spawn(move || pending.finish()?.write(&dir, &r))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(written.step, expected);
        if round == 0 {
            for name in [
                "model-00000003.safetensors",
                "train_state-00000003.safetensors",
                "checkpoint.json",
            ] {
                let (a, b) = (
                    std::fs::read(sync_dir.join(name)).unwrap(),
                    std::fs::read(bg_dir.join("0").join(name)).unwrap(),
                );
                assert!(
                    a == b,
                    "{name} differs between the synchronous and the stream-ordered checkpoint"
                );
            }
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}
