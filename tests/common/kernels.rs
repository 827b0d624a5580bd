//! Kernel sequences run on any backend (CPU twins, emulation, CUDA), outputs copied to the host, so each
//! backend's results can be compared with the twins'.

use inception_cuda::shape::{AdamStep, PoolShape};
use inception_cuda::Backend;

/// Max pooling forward, backward and accumulating backward on backend `b`, outputs on the host.
pub fn pool_on<B: Backend>(
    b: &B,
    s: &PoolShape,
    x: &[f32],
    dy: &[f32],
    dx0: &[f32],
) -> [Vec<f32>; 3] {
    let len = x.len();
    let (xb, dyb) = (b.upload(x).unwrap(), b.upload(dy).unwrap());
    let (xv, dyv) = (b.view(&xb, 0..len).unwrap(), b.view(&dyb, 0..len).unwrap());
    let mut y = b.upload(&vec![f32::NAN; len]).unwrap();
    b.maxpool3x3s1_fwd(&mut b.view_mut(&mut y, 0..len).unwrap(), &xv, s)
        .unwrap();
    let mut dx = b.upload(&vec![f32::NAN; len]).unwrap();
    b.maxpool3x3s1_bwd(
        &mut b.view_mut(&mut dx, 0..len).unwrap(),
        &dyv,
        &xv,
        s,
        false,
    )
    .unwrap();
    let mut acc = b.upload(dx0).unwrap();
    b.maxpool3x3s1_bwd(
        &mut b.view_mut(&mut acc, 0..len).unwrap(),
        &dyv,
        &xv,
        s,
        true,
    )
    .unwrap();
    [
        b.to_host(&y).unwrap(),
        b.to_host(&dx).unwrap(),
        b.to_host(&acc).unwrap(),
    ]
}

/// Dropout (three probabilities, forward and backward), three Adam steps (p, m, v) and softmax_xent
/// (loss, dlogits) on backend `b`, outputs on the host in that order.
pub fn train_ops_on<B: Backend>(
    b: &B,
    x: &[f32],
    g: &[f32],
    logits: &[f32],
    labels: &[u32],
) -> Vec<Vec<f32>> {
    let n = x.len();
    let (xb, gb) = (b.upload(x).unwrap(), b.upload(g).unwrap());
    let (xv, gv) = (b.view(&xb, 0..n).unwrap(), b.view(&gb, 0..n).unwrap());
    let mut out = Vec::new();
    for (p, step) in [(0.5f32, 3u64), (0.0, 1), (0.9, 7)] {
        let mut y = b.upload(&vec![f32::NAN; n]).unwrap();
        b.dropout_fwd(&mut b.view_mut(&mut y, 0..n).unwrap(), &xv, p, 42, step)
            .unwrap();
        out.push(b.to_host(&y).unwrap());
        b.dropout_bwd(&mut b.view_mut(&mut y, 0..n).unwrap(), &gv, p, 42, step)
            .unwrap();
        out.push(b.to_host(&y).unwrap());
    }
    let (mut p, mut m, mut v) = (
        b.upload(x).unwrap(),
        b.alloc_zeros(n).unwrap(),
        b.alloc_zeros(n).unwrap(),
    );
    for t in 1..=3 {
        b.adam_step(
            &mut b.view_mut(&mut p, 0..n).unwrap(),
            &mut b.view_mut(&mut m, 0..n).unwrap(),
            &mut b.view_mut(&mut v, 0..n).unwrap(),
            &gv,
            &AdamStep::new(1e-3, t),
        )
        .unwrap();
    }
    out.extend([
        b.to_host(&p).unwrap(),
        b.to_host(&m).unwrap(),
        b.to_host(&v).unwrap(),
    ]);
    let (rows, classes) = (labels.len(), logits.len() / labels.len());
    let lb = b.upload(logits).unwrap();
    let labels = b.upload_labels(labels).unwrap();
    let (mut loss, mut d) = (
        b.alloc_zeros(1).unwrap(),
        b.alloc_zeros(logits.len()).unwrap(),
    );
    b.softmax_xent(
        &mut b.view_mut(&mut loss, 0..1).unwrap(),
        &mut b.view_mut(&mut d, 0..rows * classes).unwrap(),
        &b.view(&lb, 0..rows * classes).unwrap(),
        &labels,
        classes,
    )
    .unwrap();
    out.extend([b.to_host(&loss).unwrap(), b.to_host(&d).unwrap()]);
    out
}
