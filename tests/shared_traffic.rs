//! Shared-memory bank conflicts of the kernels, as the racecheck build's traffic counter sees them
//! (`inception_cuda::emu::count_shared_traffic`): the counter against hand-worked bank patterns, and a report
//! of every shared-memory kernel at the shapes of the MNIST net. Both need the racecheck build:
//!
//! ```sh
//! INCEPTION_CUDA_EMU_RACECHECK=1 cargo test --features emulation --test shared_traffic -- --ignored --nocapture
//! ```
#![cfg(feature = "emulation")]

mod common;

use common::uniform;
use inception_cuda::emu::{
    count_shared_traffic, planted, racecheck_build, EmuBackend, SharedTraffic, ThreadOrder,
};

fn require_racecheck() {
    assert!(
        racecheck_build(),
        "not the racecheck build: set INCEPTION_CUDA_EMU_RACECHECK=1"
    );
}

/// One warp loading from `s[lane · stride]`: wavefronts and the conflict-free count, worked by hand from the
/// 32 banks of 4 bytes (a float load is served for the whole warp, a float2 load per half-warp, a float4
/// load per quarter-warp; each phase takes as many wavefronts as the most words in one bank).
#[test]
#[ignore = "needs the racecheck build: INCEPTION_CUDA_EMU_RACECHECK=1 cargo test --features emulation --test shared_traffic -- --ignored"]
fn the_wavefront_counter_follows_the_bank_rules() {
    require_racecheck();
    // (stride in floats, floats per load, wavefronts, conflict-free wavefronts)
    let cases = [
        (1, 1, 1, 1),   // 32 consecutive words: 32 banks
        (0, 1, 1, 1),   // one word for every lane: a broadcast
        (2, 1, 2, 1),   // even banks only, two words each
        (32, 1, 32, 1), // every lane in bank 0
        (33, 1, 1, 1),  // the padded column: 32 banks
        (2, 2, 2, 2),   // float2, consecutive: each half-warp's 32 words in 32 banks
        (4, 4, 4, 4),   // float4, consecutive: each quarter-warp's 32 words in 32 banks
        (8, 4, 8, 4),   // float4, 8 floats apart: each quarter-warp doubles up on 16 banks
        (36, 4, 4, 4),  // float4 rows padded by 4 floats: conflict-free again
    ];
    for (stride, width, wavefronts, ideal) in cases {
        let mut y = [f32::NAN; 32];
        let (r, log) =
            count_shared_traffic(|| planted::bank_pattern(&mut y, stride, width)).unwrap();
        r.unwrap();
        let want: Vec<f32> = (0..32)
            .map(|l| (0..width).map(|j| (l * stride + j) as f32).sum())
            .collect();
        assert_eq!(&y[..], &want[..], "stride {stride} width {width}");
        assert_eq!(log.len(), 1);
        let t = log[0].1;
        assert_eq!(
            (t.load_requests, t.load_wavefronts, t.load_ideal),
            (1, wavefronts, ideal),
            "stride {stride} width {width}: {t:?}"
        );
        // The fill: 128 warp stores of 32 consecutive floats.
        assert_eq!(
            (t.store_requests, t.store_wavefronts, t.store_ideal),
            (128, 128, 128)
        );
    }
}

fn row(name: &str, t: &SharedTraffic) -> String {
    let pct = |w: u64, i: u64| {
        if i == 0 {
            "—".to_string()
        } else {
            format!("{:.0} %", 100.0 * (w - i) as f64 / i as f64)
        }
    };
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} |",
        t.load_requests,
        t.load_wavefronts,
        pct(t.load_wavefronts, t.load_ideal),
        t.store_requests,
        t.store_wavefronts,
        pct(t.store_wavefronts, t.store_ideal)
    )
}

/// Every shared-memory kernel of a training step at the MNIST net's shapes (module 2 at one 28 × 28 image,
/// fc1's products at batch 50 over a slice of its columns), both precisions: the table of warp requests,
/// wavefronts and the wavefronts beyond the conflict-free count, printed and written to
/// `target/emu-shared-traffic.md`. The tensor-core kernels must stay free of bank conflicts (their layouts are
/// chosen for it: notes/perf.md), the fused conv's loads within 1.5× of it; the fp32 kernels and max pooling
/// are reported only.
#[test]
#[ignore = "needs the racecheck build: INCEPTION_CUDA_EMU_RACECHECK=1 cargo test --features emulation --test shared_traffic -- --ignored --nocapture"]
fn shared_traffic_of_the_kernels() {
    use inception_cuda::nn::{InceptionModule, InceptionWidths};
    use inception_cuda::shape::{LinearShape, Precision};
    require_racecheck();
    let emu = EmuBackend {
        order: ThreadOrder::Forward,
    };
    let mut conflicted = Vec::new();
    let mut lines = vec![
        "| kernel | loads | load wavefronts | beyond conflict-free | stores | store wavefronts | beyond conflict-free |".to_string(),
        "|---|---:|---:|---:|---:|---:|---:|".to_string(),
    ];
    for p in Precision::ALL {
        let m = InceptionModule::new(128, InceptionWidths::uniform(64, 16)).with_precision(p);
        let (n, h, w) = (1, 28, 28);
        let x = uniform(1, n * m.c_in * h * w);
        let params = uniform(2, m.layout().len());
        let dy = uniform(3, n * m.c_out() * h * w);
        let ((), log) = count_shared_traffic(|| {
            drop(common::kernels::module_on(
                &emu,
                &m,
                (n, h, w),
                &x,
                &params,
                &dy,
            ))
        })
        .unwrap();
        let s = LinearShape::new(50, 1024, 96).with_precision(p);
        let linear = common::kernels::linear_inputs(&s);
        let ((), log2) = count_shared_traffic(|| {
            drop(common::kernels::linear_on(&emu, &s, &linear, 0));
            let [wm, mm, vm] = common::kernels::wgrad_adam_state(&s);
            drop(common::kernels::bwd_adam_on(
                &emu,
                &s,
                &linear[3],
                &linear[0],
                [&wm, &mm, &vm],
                0,
            ));
        })
        .unwrap();
        for (name, t) in log.iter().chain(&log2) {
            if t.load_requests + t.store_requests > 0 {
                lines.push(row(&format!("{name} ({p:?})"), t));
            }
            // The fused conv's k×k B loads read neighbouring taps of one channel: up to 1.5× by choice
            // (notes/perf.md: the conflict-free order scatters its weight loads).
            let allowed = if *name == "reduce_conv_fwd" {
                t.load_ideal / 2
            } else {
                0
            };
            if p == Precision::Tf32 && !name.starts_with("maxpool") && t.conflicts() > allowed {
                conflicted.push(format!("{name}: {t:?}"));
            }
        }
    }
    let table = lines.join("\n");
    assert!(
        conflicted.is_empty(),
        "bank conflicts in the tensor-core kernels:\n{}\n{table}",
        conflicted.join("\n")
    );
    println!("{table}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../emu-shared-traffic.md");
    std::fs::write(&path, format!("{table}\n")).unwrap();
    assert!(lines.len() > 20, "kernels missing from the table:\n{table}");
}
