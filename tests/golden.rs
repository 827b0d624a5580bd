//! Oracle 2 (DESIGN.md): golden values computed by PyTorch 2.11 with `tests/golden/make_golden.py` (never by
//! the crate): one Inception module's forward and gradients, and one whole training step with Adam.

mod common;

use std::collections::HashMap;

use common::assert_close;
use inception_cuda::cpu::CpuBackend;
use inception_cuda::nn::{InceptionMnist, InceptionModule, InceptionWidths, MnistConfig};

/// Every f32 tensor of a fixture, by name.
fn load(file: &str) -> HashMap<String, Vec<f32>> {
    let path = common::repo_path(&format!("tests/golden/{file}"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, data)
        })
        .collect()
}

#[test]
fn inception_module_matches_pytorch() {
    let g = load("module.safetensors");
    let m = InceptionModule::new(3, InceptionWidths::uniform(4, 2));
    let (n, h, w) = (2, 7, 7);
    let b = CpuBackend;
    let layout = m.layout();
    let params: Vec<f32> = layout
        .params
        .iter()
        .flat_map(|(name, _, _)| g[*name].clone())
        .collect();
    let (x, r) = (&g["x"], &g["r"]);
    let mut y = vec![0.0; n * m.c_out() * h * w];
    let mut saved = m.alloc_saved(&b, n, h, w).unwrap();
    m.forward(
        &b,
        &mut y.as_mut_slice(),
        &mut saved,
        &x.as_slice(),
        (&params, 0),
        (n, h, w),
    )
    .unwrap();
    assert_close("module out", &y, &g["out"], 1e-5, 1e-4);

    let mut dparams = vec![0.0; params.len()];
    let mut dx = vec![f32::NAN; x.len()]; // overwritten, not accumulated into
    let mut scratch = m.alloc_scratch(&b, n, h, w).unwrap();
    let (dxv, rv, yv, xv) = (
        &mut dx.as_mut_slice(),
        r.as_slice(),
        y.as_slice(),
        x.as_slice(),
    );
    m.backward(
        &b,
        Some(dxv),
        (&mut dparams, 0),
        &mut scratch,
        &rv,
        &yv,
        &xv,
        &saved,
        &params,
        (n, h, w),
    )
    .unwrap();
    assert_close("module grad x", &dx, &g["grad.x"], 1e-4, 1e-3);
    for (name, _, range) in &layout.params {
        assert_close(
            &format!("module grad {name}"),
            &dparams[range.clone()],
            &g[&format!("grad.{name}")],
            1e-4,
            1e-3,
        );
    }
}

#[test]
fn training_step_matches_pytorch() {
    let g = load("step.safetensors");
    let cfg = MnistConfig {
        map1: 3,
        map2: 2,
        reduce: 2,
        hidden: 8,
        dropout: 0.0,
        image: 28,
    };
    let mut net = InceptionMnist::new(CpuBackend, cfg, 0).unwrap();
    let names: Vec<String> = net.params().iter().map(|e| e.name.clone()).collect();
    for name in &names {
        net.set_param(name, &g[&format!("init.{name}")]).unwrap();
    }
    let labels: Vec<u32> = g["labels"].iter().map(|&l| l as u32).collect();
    // The gradients from forward_backward (a training step does not store fc1's weight gradient: it goes
    // straight into Adam), then the step itself, which repeats that forward and backward.
    net.forward_backward(&g["images"], &labels).unwrap();
    let loss = net.loss().unwrap();
    assert!(
        (loss - g["loss"][0]).abs() <= 1e-5 * g["loss"][0].abs(),
        "loss {loss} vs PyTorch {}",
        g["loss"][0]
    );
    for name in &names {
        assert_close(
            &format!("grad {name}"),
            &net.grad(name).unwrap(),
            &g[&format!("grad.{name}")],
            1e-5,
            1e-3,
        );
    }
    // Adam's first step moves each parameter by about lr·sign(g): compare to 1 % of lr.
    net.train_step(&g["images"], &labels, 1e-3).unwrap();
    for name in &names {
        assert_close(
            &format!("after Adam {name}"),
            &net.param(name).unwrap(),
            &g[&format!("after.{name}")],
            1e-5,
            1e-5,
        );
    }
}
