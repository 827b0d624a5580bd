//! The tape over the tensor ops: an Inception module built from `conv`, `reduce_conv3x3/5x5` and
//! `maxpool3x3s1` (the module input is read by four ops, so the tape accumulates its gradient) against
//! PyTorch's golden values, and the training ops against finite differences.

mod common;

use std::collections::HashMap;

use common::gradcheck::gradcheck;
use common::{assert_bits_eq, assert_close, uniform};
use inception_cuda::{ops, Device, Tape, Tensor};

fn load(file: &str) -> HashMap<String, Vec<f32>> {
    let path = common::repo_path(&format!("tests/golden/{file}"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                v.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )
        })
        .collect()
}

/// Channels `c0..c0 + 4` of a `[2, 16, 7, 7]` buffer.
fn channels(v: &[f32], c0: usize) -> Vec<f32> {
    (0..2)
        .flat_map(|n| v[(n * 16 + c0) * 49..(n * 16 + c0 + 4) * 49].to_vec())
        .collect()
}

#[test]
fn module_from_tape_ops_matches_pytorch() {
    let g = load("module.safetensors");
    let dev = Device::Cpu;
    let tape = Tape::new();
    let shapes: [(&str, &[usize]); 12] = [
        ("branch1x1.weight", &[4, 3, 1, 1]),
        ("branch1x1.bias", &[4]),
        ("reduce3x3.weight", &[2, 3, 1, 1]),
        ("reduce3x3.bias", &[2]),
        ("conv3x3.weight", &[4, 2, 3, 3]),
        ("conv3x3.bias", &[4]),
        ("reduce5x5.weight", &[2, 3, 1, 1]),
        ("reduce5x5.bias", &[2]),
        ("conv5x5.weight", &[4, 2, 5, 5]),
        ("conv5x5.bias", &[4]),
        ("pool_proj.weight", &[4, 3, 1, 1]),
        ("pool_proj.bias", &[4]),
    ];
    let p: HashMap<&str, Tensor> = shapes
        .iter()
        .map(|(n, s)| {
            (
                *n,
                tape.watch(&Tensor::from_vec(g[*n].clone(), s, &dev).unwrap()),
            )
        })
        .collect();
    let x = tape.watch(&Tensor::from_vec(g["x"].clone(), &[2, 3, 7, 7], &dev).unwrap());
    let branches = [
        ops::relu(&ops::conv(&x, &p["branch1x1.weight"], &p["branch1x1.bias"]).unwrap()).unwrap(),
        ops::reduce_conv3x3(
            &x,
            &p["reduce3x3.weight"],
            &p["reduce3x3.bias"],
            &p["conv3x3.weight"],
            &p["conv3x3.bias"],
        )
        .unwrap(),
        ops::reduce_conv5x5(
            &x,
            &p["reduce5x5.weight"],
            &p["reduce5x5.bias"],
            &p["conv5x5.weight"],
            &p["conv5x5.bias"],
        )
        .unwrap(),
        ops::relu(
            &ops::conv(
                &ops::maxpool3x3s1(&x).unwrap(),
                &p["pool_proj.weight"],
                &p["pool_proj.bias"],
            )
            .unwrap(),
        )
        .unwrap(),
    ];
    let seeds: Vec<Tensor> = (0..4)
        .map(|i| Tensor::from_vec(channels(&g["r"], 4 * i), &[2, 4, 7, 7], &dev).unwrap())
        .collect();
    for (i, y) in branches.iter().enumerate() {
        assert_close(
            &format!("branch {i} output"),
            &y.to_vec().unwrap(),
            &channels(&g["out"], 4 * i),
            1e-5,
            1e-4,
        );
    }
    let pairs: Vec<(&Tensor, &Tensor)> = branches.iter().zip(&seeds).collect();
    let grads = tape.backward_many(&pairs).unwrap();
    assert_close(
        "grad x (four readers)",
        &grads.get(&x).unwrap().to_vec().unwrap(),
        &g["grad.x"],
        1e-4,
        1e-3,
    );
    for (name, _) in shapes {
        let got = grads.get(&p[name]).unwrap().to_vec().unwrap();
        assert_close(
            &format!("grad {name}"),
            &got,
            &g[&format!("grad.{name}")],
            1e-4,
            1e-3,
        );
    }
}

/// loss = softmax_xent(linear(x, w, b)): gradients of x, w and b against central differences (smooth: no
/// kink on this path; f32 step 1e-2, tolerance 1e-3 absolute and relative).
#[test]
fn linear_and_loss_on_the_tape_match_finite_differences() {
    let dev = Device::Cpu;
    let (x0, w0, b0) = (uniform(1, 3 * 6), uniform(2, 4 * 6), uniform(3, 4));
    let labels = [2u32, 0, 3];
    let loss_of = |x: &[f32], w: &[f32], b: &[f32]| {
        let t = |v: &[f32], s: &[usize]| Tensor::from_vec(v.to_vec(), s, &dev).unwrap();
        let l = ops::softmax_xent(
            &ops::linear(&t(x, &[3, 6]), &t(w, &[4, 6]), &t(b, &[4])).unwrap(),
            &labels,
        )
        .unwrap();
        (l.to_vec().unwrap()[0] as f64, Vec::new())
    };
    let tape = Tape::new();
    let x = tape.watch(&Tensor::from_vec(x0.clone(), &[3, 6], &dev).unwrap());
    let w = tape.watch(&Tensor::from_vec(w0.clone(), &[4, 6], &dev).unwrap());
    let b = tape.watch(&Tensor::from_vec(b0.clone(), &[4], &dev).unwrap());
    let loss = ops::softmax_xent(&ops::linear(&x, &w, &b).unwrap(), &labels).unwrap();
    // Seed 2: the loss's backward scales its saved gradient by the incoming one.
    let grads = tape
        .backward(&loss, &Tensor::from_vec(vec![2.0], &[1], &dev).unwrap())
        .unwrap();
    let half = |t: &Tensor| {
        grads
            .get(t)
            .unwrap()
            .to_vec()
            .unwrap()
            .iter()
            .map(|v| v / 2.0)
            .collect::<Vec<_>>()
    };
    gradcheck("tape dx", &x0, &half(&x), 1e-2, 1e-3, 1e-3, |v| {
        loss_of(v, &w0, &b0)
    });
    gradcheck("tape dw", &w0, &half(&w), 1e-2, 1e-3, 1e-3, |v| {
        loss_of(&x0, v, &b0)
    });
    gradcheck("tape db", &b0, &half(&b), 1e-2, 1e-3, 1e-3, |v| {
        loss_of(&x0, &w0, v)
    });
    let logits = ops::linear(&x.detach(), &w.detach(), &b.detach()).unwrap();
    let err = ops::softmax_xent(&logits, &[1, 2]).unwrap_err();
    assert!(
        err.to_string()
            .contains("labels has 2 elements, expected 3"),
        "{err}"
    );
}

#[test]
fn dropout_on_the_tape_passes_gradient_through_the_kept_elements() {
    let dev = Device::Cpu;
    let tape = Tape::new();
    let x = tape.watch(&Tensor::from_vec(vec![1.0; 1000], &[1000], &dev).unwrap());
    let y = ops::dropout(&x, 0.25, 9, 3).unwrap();
    let grads = tape
        .backward(
            &y,
            &Tensor::from_vec(vec![1.0; 1000], &[1000], &dev).unwrap(),
        )
        .unwrap();
    // d y / d x is the mask times 1/(1-p): the forward output itself when x is all ones.
    assert_bits_eq(
        "dropout gradient",
        &grads.get(&x).unwrap().to_vec().unwrap(),
        &y.to_vec().unwrap(),
    );
}

#[test]
fn tensor_ops_reject_bad_shapes() {
    let dev = Device::Cpu;
    let t = |s: &[usize]| Tensor::zeros(s, &dev).unwrap();
    let err = ops::conv(&t(&[1, 3, 5, 5]), &t(&[4, 2, 3, 3]), &t(&[4])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "conv_fwd: w has shape [4, 2, 3, 3], expected [4, 3, 3, 3]"
    );
    let err = ops::conv(&t(&[3, 5, 5]), &t(&[4, 3, 3, 3]), &t(&[4])).unwrap_err();
    assert!(err.to_string().contains("expected 4 dimensions"), "{err}");
    let err = ops::reduce_conv3x3(
        &t(&[1, 3, 5, 5]),
        &t(&[2, 3, 3, 3]),
        &t(&[2]),
        &t(&[4, 2, 3, 3]),
        &t(&[4]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("expected a 1×1 kernel"), "{err}");
    let err = ops::reduce_conv5x5(
        &t(&[1, 3, 5, 5]),
        &t(&[2, 3, 1, 1]),
        &t(&[2]),
        &t(&[4, 2, 3, 3]),
        &t(&[4]),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("w2 has shape [4, 2, 3, 3], expected [4, 2, 5, 5]"),
        "{err}"
    );
    let err = ops::linear(&t(&[2, 5]), &t(&[3, 4]), &t(&[3])).unwrap_err();
    assert!(
        err.to_string()
            .contains("linear_fwd: w has shape [3, 4], expected [3, 5]"),
        "{err}"
    );
    assert!(ops::maxpool3x3s1(&t(&[5, 5])).is_err());
    assert!(ops::dropout(&t(&[4]), 2.0, 0, 0).is_err());
}
