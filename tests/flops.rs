//! FLOP accounting (multiply-adds per image, K²·H·W·C_in·C_out per conv) against DESIGN.md and the write-up.

use inception_cuda::nn::{InceptionModule, InceptionWidths, MnistConfig};

#[test]
fn googlenet_3a_five_by_five_branch() {
    let m = InceptionModule::new(192, InceptionWidths::googlenet_3a());
    assert_eq!(m.macs_naive(28, 28).b5x5, 120_422_400);
    assert_eq!(m.macs_reduced(28, 28).b5x5, 2_408_448 + 10_035_200);
    assert_eq!(m.macs_reduced(28, 28).b5x5, 12_443_648);
}

#[test]
fn mnist_module_totals() {
    let (m1, m2, _) = MnistConfig::default().param_table();
    assert_eq!(m1.macs_naive(28, 28).total(), 878_080);
    assert_eq!(m1.macs_reduced(28, 28).total(), 13_723_136); // one input channel: the reduces cost more
    assert_eq!(m2.macs_naive(28, 28).total(), 224_788_480);
    assert_eq!(m2.macs_reduced(28, 28).total(), 43_352_064);
    // Per branch of module 2, reduced: 1×1, 1×1→3×3, 1×1→5×5, pool→1×1.
    let b = m2.macs_reduced(28, 28);
    assert_eq!(
        [b.b1x1, b.b3x3, b.b5x5, b.pool],
        [
            6_422_528,
            1_605_632 + 7_225_344,
            1_605_632 + 20_070_400,
            6_422_528
        ]
    );
}
