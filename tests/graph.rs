//! The graph front end on the CPU: a planned Inception module against the hand-scheduled one, and a planned
//! training step of the MNIST net against `InceptionMnist`'s, bit for bit; planning errors.

mod common;

#[path = "common/hand_scheduled.rs"]
mod hand_scheduled;

use common::{assert_bits_eq, uniform};
use inception_cuda::cpu::CpuBackend;
use inception_cuda::graph::{FuseWgradAdam, Graph, Params, Plan, TrainOptions};
use inception_cuda::nn::{
    inception, InceptionMnist, InceptionModule, InceptionWidths, MnistConfig,
};
use inception_cuda::{Backend, Error};

/// An inference plan of one module gives the hand-scheduled module's output, bit for bit.
#[test]
fn planned_module_forward_equals_the_nn_module() {
    let (n, c_in, h, w) = (2, 3, 7, 7);
    let widths = InceptionWidths::uniform(4, 2);
    let mut g = Graph::new();
    let x = g.input("x", &[c_in, h, w]).unwrap();
    let y = inception(&mut g, "m", x, widths).unwrap();
    let mut params = Params::new(CpuBackend, &g, 3).unwrap();
    let values = uniform(5, params.len());
    params.set_all(&values).unwrap();
    let xs = uniform(6, n * c_in * h * w);
    let mut plan = Plan::inference(CpuBackend, &g, n, y).unwrap();
    plan.set_input("x", &xs).unwrap();
    plan.forward(&params).unwrap();

    let m = InceptionModule::new(c_in, widths);
    let b = CpuBackend;
    let mut want = vec![0.0; n * m.c_out() * h * w];
    let mut saved = m.alloc_saved(&b, n, h, w).unwrap();
    m.forward(
        &b,
        &mut want.as_mut_slice(),
        &mut saved,
        &xs.as_slice(),
        (&values, 0),
        (n, h, w),
    )
    .unwrap();
    assert_bits_eq("planned module output", &plan.output().unwrap(), &want);
}

fn tiny(dropout: f32) -> MnistConfig {
    MnistConfig {
        dropout,
        ..MnistConfig::tiny()
    }
}

fn batch(n: usize, px: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let images = uniform(seed, n * px)
        .iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    let labels = (0..n)
        .map(|i| ((i * 7 + seed as usize) % 10) as u32)
        .collect();
    (images, labels)
}

/// FNV-1a over the bits of a buffer.
fn hash(v: &[f32]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ x.to_bits() as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The training step of the graph-defined MNIST net (fc1's weight fused into Adam, as the hand-scheduled
/// step did) equals the hand-scheduled step's: parameters, moments, loss and `forward_backward`'s gradients.
fn planned_step_equals_hand_scheduled(cfg: MnistConfig, n: usize, steps: usize) {
    let px = cfg.image * cfg.image;
    let batches: Vec<_> = (0..steps).map(|s| batch(n, px, 20 + s as u64)).collect();
    // One net at a time (the full one holds 2.2 GB): hashes of what each ends with.
    let old = {
        let mut net = hand_scheduled::HandScheduledMnist::new(CpuBackend, cfg, 9).unwrap();
        net.forward_backward(&batches[0].0, &batches[0].1).unwrap();
        let grads: Vec<u64> = net
            .params()
            .iter()
            .map(|e| hash(&net.grad(&e.name).unwrap()))
            .collect();
        let mut losses = Vec::new();
        for (images, labels) in &batches {
            net.train_step(images, labels, 1e-3).unwrap();
            losses.push(net.loss().unwrap().to_bits());
        }
        let state = net.train_state().unwrap();
        let params: Vec<u64> = net
            .params()
            .iter()
            .map(|e| hash(&net.param(&e.name).unwrap()))
            .collect();
        (
            params,
            grads,
            hash(&state.adam_m),
            hash(&state.adam_v),
            losses,
        )
    };
    let new = {
        let def = cfg.graph().unwrap();
        let mut params = Params::new(CpuBackend, &def.graph, 9).unwrap();
        let opts = TrainOptions {
            fuse_wgrad_adam: FuseWgradAdam::Named(vec!["fc1.weight".into()]),
            ..TrainOptions::default()
        };
        let mut plan = Plan::train_with(CpuBackend, &def.graph, n, &opts).unwrap();
        plan.set_input("images", &batches[0].0).unwrap();
        plan.set_labels(&batches[0].1).unwrap();
        plan.forward_backward(&mut params).unwrap();
        let names: Vec<String> = params.table().iter().map(|e| e.name.clone()).collect();
        let grads: Vec<u64> = names
            .iter()
            .map(|name| hash(&params.grad(name).unwrap()))
            .collect();
        let mut losses = Vec::new();
        for (images, labels) in &batches {
            plan.set_input("images", images).unwrap();
            plan.set_labels(labels).unwrap();
            plan.step(&mut params, 1e-3).unwrap();
            losses.push(plan.loss().unwrap().to_bits());
        }
        let (m, v) = params.moments().unwrap();
        let values: Vec<u64> = names
            .iter()
            .map(|name| hash(&params.get(name).unwrap()))
            .collect();
        (values, grads, hash(&m), hash(&v), losses)
    };
    assert_eq!(
        new.1, old.1,
        "forward_backward gradients (hash per parameter)"
    );
    assert_eq!(new.4, old.4, "losses of each step");
    assert_eq!(
        new.0, old.0,
        "parameters after the steps (hash per parameter)"
    );
    assert_eq!((new.2, new.3), (old.2, old.3), "Adam moments");
}

#[test]
fn planned_mnist_step_equals_the_hand_scheduled_step_small() {
    planned_step_equals_hand_scheduled(tiny(0.5), 3, 3);
    planned_step_equals_hand_scheduled(tiny(0.0), 2, 2);
}

/// `InceptionMnist` is the graph definition run by its plans: its step is the planned one.
#[test]
fn inception_mnist_runs_the_planned_step() {
    let cfg = tiny(0.5);
    let (images, labels) = batch(3, 36, 4);
    let mut net = InceptionMnist::new(CpuBackend, cfg, 9).unwrap();
    net.train_step(&images, &labels, 1e-3).unwrap();
    let mut hand = hand_scheduled::HandScheduledMnist::new(CpuBackend, cfg, 9).unwrap();
    hand.train_step(&images, &labels, 1e-3).unwrap();
    for e in net.params() {
        assert_bits_eq(
            &e.name,
            &net.param(&e.name).unwrap(),
            &hand.param(&e.name).unwrap(),
        );
    }
    assert_eq!(
        net.loss().unwrap().to_bits(),
        hand.loss().unwrap().to_bits()
    );
    let logits = net.logits(&images).unwrap();
    assert_bits_eq("logits", &logits, &hand.logits(&images).unwrap());
}

#[test]
fn planned_mnist_step_equals_the_hand_scheduled_step_full_size_batch_2() {
    planned_step_equals_hand_scheduled(MnistConfig::default(), 2, 1);
}

/// The plan reports its memory, and a training step allocates nothing: the buffers' addresses stay put.
#[test]
fn a_plan_reports_its_memory() {
    let def = tiny(0.5).graph().unwrap();
    let plan = Plan::train(CpuBackend, &def.graph, 4).unwrap();
    let eval = Plan::inference(CpuBackend, &def.graph, 4, def.logits).unwrap();
    assert!(
        plan.bytes() > eval.bytes(),
        "{} vs {}",
        plan.bytes(),
        eval.bytes()
    );
    assert!(eval.bytes() > 0);
}

#[test]
fn graph_and_plan_errors_name_the_problem() {
    let mut g = Graph::new();
    let x = g.input("x", &[2, 5, 5]).unwrap();
    let (w, b) = g.conv_params("c", 2, 3, 3).unwrap();
    assert!(matches!(
        g.conv_params("c", 2, 3, 3),
        Err(Error::Graph { .. })
    ));
    let (w4, _) = g.conv_params("d", 4, 3, 3).unwrap();
    let err = g.conv(x, w4, b).unwrap_err();
    assert!(err.to_string().contains("d.weight"), "{err}");
    let y = g.conv(x, w, b).unwrap();
    let pooled = g.maxpool3x3s1(x).unwrap();
    let cat = g.concat(&[y, pooled]).unwrap();
    let err = Plan::inference(CpuBackend, &g, 1, cat).unwrap_err();
    assert!(err.to_string().contains("maxpool3x3s1"), "{err}");
    assert!(Plan::train(CpuBackend, &g, 1).is_err(), "no loss");
    let params = Params::new(CpuBackend, &g, 0).unwrap();
    assert!(params.get("nope").is_err());
    let mut plan = Plan::inference(CpuBackend, &g, 1, y).unwrap();
    assert!(plan.set_input("images", &[0.0; 50]).is_err());
    assert!(plan.set_input("x", &[0.0; 49]).is_err());
    let _ = CpuBackend.name();
}
