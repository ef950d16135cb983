//! promptcl's train and test transforms against torchvision's tensor
//! transforms with antialiasing (`data-scripts/gen_transform_fixtures.py`):
//! RandomResizedCrop's crop-then-resize (bilinear, bicubic, flipped) and
//! Resize + CenterCrop, on images the output downscales.

use std::collections::HashMap;
use std::path::PathBuf;

use promptcl_stream::{render, resize_center_crop, Image, Interpolation, TransformConfig, View};
use tch::{Device, Tensor};

fn golden() -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transform_golden.safetensors");
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

#[test]
fn transforms_match_torchvision_with_antialiasing() {
    let g = golden();
    let cfg = TransformConfig { size: 32, ..Default::default() };
    let mut worst: f64 = 0.0;
    for n in 0..2 {
        let t = &g[&format!("img{n}")];
        let (h, w) = (t.size()[1] as usize, t.size()[2] as usize);
        let img = Image::from_chw(h, w, Vec::<u8>::try_from(t.flatten(0, -1)).unwrap());
        let crop = View { top: 5.0, left: 10.0, height: 100.0, width: 90.0, flip: false, brightness: 1.0, resize_first: None };
        let test = resize_center_crop(h, w, &cfg);
        assert!(crop.downscales(32) && test.downscales(32));
        for (name, interpolation) in [("bilinear", Interpolation::Bilinear), ("bicubic", Interpolation::Bicubic)] {
            for (case, view) in [("train", crop), ("train_flip", View { flip: true, ..crop }), ("test", test)] {
                let got = render(&[&img], &[view], &cfg, interpolation, Device::Cpu).unwrap().squeeze_dim(0);
                let want = &g[&format!("img{n}.{case}.{name}")];
                let err = (&got - want).abs().max().double_value(&[]);
                assert!(err < 1e-5, "image {n} {case} {name}: max abs {err} from torchvision");
                worst = worst.max(err);
            }
        }
    }
    eprintln!("largest difference from torchvision: {worst:.1e}");
}

/// RandomResizedCrop crops, then resizes: pixels outside the crop cannot
/// reach the output, also when it upscales (CIFAR's 32 px crops to 224).
#[test]
fn training_crops_read_nothing_outside_the_crop() {
    let g = golden();
    let t = g["img0"].narrow(1, 0, 20).narrow(2, 0, 24);
    let data = Vec::<u8>::try_from(t.flatten(0, -1)).unwrap();
    let mut outside = data.clone();
    for c in 0..3 {
        for y in 0..20 {
            for x in 0..24 {
                if !(2..18).contains(&y) || !(3..21).contains(&x) {
                    outside[c * 480 + y * 24 + x] = 255 - outside[c * 480 + y * 24 + x];
                }
            }
        }
    }
    let cfg = TransformConfig { size: 32, ..Default::default() };
    let view = View { top: 2.0, left: 3.0, height: 16.0, width: 18.0, flip: false, brightness: 1.0, resize_first: None };
    assert!(!view.downscales(32));
    for interpolation in [Interpolation::Bilinear, Interpolation::Bicubic] {
        let render_of = |d: &[u8]| render(&[&Image::from_chw(20, 24, d.to_vec())], &[view], &cfg, interpolation, Device::Cpu).unwrap();
        assert!(render_of(&data).equal(&render_of(&outside)), "{interpolation:?}: the output saw pixels outside the crop");
    }
}
