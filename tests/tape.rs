//! The minimal tape: recording, the reverse walk, gradient accumulation and its error cases.

mod common;

use inception_cuda::{ops, Device, Error, Tape, Tensor};

on_cpu_and_gpu!(
    chain_of_relus_backpropagates,
    tensor_read_twice_accumulates_its_gradient,
    untracked_ops_are_not_recorded,
    backward_rejects_bad_seeds_and_reuse,
    mixing_tapes_is_an_error,
);

fn t(v: &[f32], dev: &Device) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()], dev).unwrap()
}

fn chain_of_relus_backpropagates(dev: &Device) {
    let tape = Tape::new();
    let x = tape.watch(&t(&[-1.0, 0.0, 2.0, 3.0], dev));
    let h = ops::relu(&x).unwrap();
    let y = ops::relu(&h).unwrap();
    assert_eq!(tape.len(), 2);
    let grads = tape
        .backward(&y, &t(&[10.0, 20.0, 30.0, 40.0], dev))
        .unwrap();
    assert_eq!(
        grads.get(&x).unwrap().to_vec().unwrap(),
        [0.0, 0.0, 30.0, 40.0]
    );
    assert_eq!(
        grads.get(&h).unwrap().to_vec().unwrap(),
        [0.0, 0.0, 30.0, 40.0]
    );
}

/// z = relu(x) + x: x is read by two ops, so dz/dx = [x > 0] + 1 (hand-computed).
fn tensor_read_twice_accumulates_its_gradient(dev: &Device) {
    let tape = Tape::new();
    let x = tape.watch(&t(&[-1.5, 0.0, 0.25, 4.0], dev));
    let z = ops::add(&ops::relu(&x).unwrap(), &x).unwrap();
    assert_eq!(z.to_vec().unwrap(), [-1.5, 0.0, 0.5, 8.0]);
    let grads = tape.backward(&z, &t(&[1.0, 2.0, 3.0, 4.0], dev)).unwrap();
    assert_eq!(
        grads.get(&x).unwrap().to_vec().unwrap(),
        [1.0, 2.0, 6.0, 8.0]
    );
    assert_eq!(grads.get(&x).unwrap().device(), dev);
}

fn untracked_ops_are_not_recorded(dev: &Device) {
    let tape = Tape::new();
    let plain = t(&[1.0, -1.0], dev);
    let y = ops::relu(&plain).unwrap();
    assert!(!y.is_tracked());
    assert!(tape.is_empty());
    // Mixing a tracked and an untracked operand records the op once.
    let x = tape.watch(&plain);
    let z = ops::add(&x, &y).unwrap();
    assert!(z.is_tracked() && !x.detach().is_tracked());
    assert_eq!(tape.len(), 1);
}

fn backward_rejects_bad_seeds_and_reuse(dev: &Device) {
    let tape = Tape::new();
    let x = tape.watch(&t(&[1.0, 2.0], dev));
    let y = ops::relu(&x).unwrap();
    let err = tape.backward(&y, &t(&[1.0, 2.0, 3.0], dev)).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { op: "backward", .. }),
        "{err:?}"
    );
    let err = tape
        .backward(&y.detach(), &t(&[1.0, 1.0], dev))
        .unwrap_err();
    assert!(matches!(err, Error::Backward { .. }), "{err:?}");
    tape.backward(&y, &t(&[1.0, 1.0], dev)).unwrap();
    let err = tape.backward(&y, &t(&[1.0, 1.0], dev)).unwrap_err();
    assert!(err.to_string().contains("already consumed"), "{err}");
    let err = ops::relu(&x).unwrap_err();
    assert!(err.to_string().contains("already consumed"), "{err}");
}

fn mixing_tapes_is_an_error(dev: &Device) {
    let (a, b) = (Tape::new(), Tape::new());
    let x = a.watch(&t(&[1.0], dev));
    let y = b.watch(&t(&[2.0], dev));
    let err = ops::add(&x, &y).unwrap_err();
    assert!(matches!(err, Error::TapeMismatch { op: "add" }), "{err:?}");
}
