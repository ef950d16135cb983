//! Augmentation as the official prompt-CL code does it, computed per batch on
//! the device.
//!
//! L2P / DualPrompt / HiDe-Prompt (`datasets.build_transform`), the default here:
//! - train: `RandomResizedCrop(224, scale=(0.05, 1.0), ratio=(3/4, 4/3))` (bilinear),
//!   `RandomHorizontalFlip()`, `ToTensor()` — no normalisation;
//! - test: `Resize(256, bicubic)`, `CenterCrop(224)`, `ToTensor()`.
//!
//! NoRGa on CIFAR (`MoE_PromptCL/datasets.build_cifar_transform`), preset
//! [`TransformConfig::norga_cifar`]: `RandomResizedCrop(224, bicubic)` with the
//! default scale (0.08, 1), flip, `ColorJitter(brightness=63/255)`, and
//! `Normalize((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))` at train
//! and test.
//!
//! Crop boxes follow torchvision's `RandomResizedCrop.get_params` exactly (10
//! tries, then the central fallback), drawn from promptcl's RNG per sample.
//! Resizing is torchvision's with `antialias=True` (libtorch's `_aa`
//! kernels, PIL's filters): training crops are cut, then resized; test images
//! are resized whole, then centre-cropped, as the official pipelines do.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::dataset::Image;
use crate::error::{Result, StreamError};
use crate::rng::SplitMix64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// `ToTensor()` only: values in [0, 1] (the official prompt-CL pipelines).
    None,
    /// mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    Imagenet,
    /// mean = std = (0.5, 0.5, 0.5) (timm's augreg / inception weights).
    Inception,
    Custom {
        mean: [f64; 3],
        std: [f64; 3],
    },
}

impl Normalize {
    fn mean_std(&self) -> Option<([f64; 3], [f64; 3])> {
        match self {
            Self::None => None,
            Self::Imagenet => Some(([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])),
            Self::Inception => Some(([0.5; 3], [0.5; 3])),
            Self::Custom { mean, std } => Some((*mean, *std)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    #[default]
    Bilinear,
    Bicubic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformConfig {
    pub size: usize,
    pub scale: [f64; 2],
    pub ratio: [f64; 2],
    pub hflip: bool,
    /// `ColorJitter(brightness=b)`: each training image scaled by a factor
    /// uniform in `[max(0, 1 − b), 1 + b]`, then clamped to [0, 1]. 0 = off.
    pub brightness: f64,
    /// Interpolation of the training crop.
    pub train_interpolation: Interpolation,
    /// Interpolation of the test resize: bicubic in timm-based code (L2P,
    /// DualPrompt, HiDe, NoRGa), torchvision's default bilinear in CODA-Prompt.
    pub test_interpolation: Interpolation,
    /// Test images: shorter side resized to `round(size · test_resize_ratio)`, then a centre crop.
    pub test_resize_ratio: f64,
    pub normalize: Normalize,
}

impl Default for TransformConfig {
    fn default() -> Self {
        Self {
            size: 224,
            scale: [0.05, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            hflip: true,
            brightness: 0.0,
            train_interpolation: Interpolation::Bilinear,
            test_interpolation: Interpolation::Bicubic,
            test_resize_ratio: 256.0 / 224.0,
            normalize: Normalize::None,
        }
    }
}

impl TransformConfig {
    /// NoRGa's CIFAR-100 pipeline (see the module docs).
    pub fn norga_cifar() -> Self {
        Self {
            scale: [0.08, 1.0],
            brightness: 63.0 / 255.0,
            train_interpolation: Interpolation::Bicubic,
            normalize: Normalize::Custom { mean: [0.5071, 0.4867, 0.4408], std: [0.2675, 0.2565, 0.2761] },
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StreamError::Config(m));
        if self.size == 0 {
            return bad("transform.size must be positive".into());
        }
        let [s0, s1] = self.scale;
        if !(0.0 < s0 && s0 <= s1 && s1 <= 1.0) {
            return bad(format!("transform.scale {:?} must satisfy 0 < lo <= hi <= 1", self.scale));
        }
        let [r0, r1] = self.ratio;
        if !(0.0 < r0 && r0 <= r1) {
            return bad(format!("transform.ratio {:?} must satisfy 0 < lo <= hi", self.ratio));
        }
        if !(self.brightness >= 0.0) {
            return bad(format!("transform.brightness {} must be >= 0", self.brightness));
        }
        if !(self.test_resize_ratio >= 1.0) {
            return bad(format!("transform.test_resize_ratio {} must be >= 1", self.test_resize_ratio));
        }
        if let Some((_, std)) = self.normalize.mean_std() {
            if std.iter().any(|&s| !(s > 0.0)) {
                return bad(format!("normalize std {std:?} must be positive"));
            }
        }
        Ok(())
    }
}

/// How one sample is seen: a source rectangle in pixels (top, left, height,
/// width), a horizontal flip and a brightness factor; for test views also the
/// whole-image resize the crop is taken from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub top: f64,
    pub left: f64,
    pub height: f64,
    pub width: f64,
    pub flip: bool,
    pub brightness: f64,
    /// torchvision's `Resize` + `CenterCrop`: the whole image resized first,
    /// then cropped (the filter reads across the box's edges, which a crop
    /// taken first would cut off).
    pub resize_first: Option<ResizeFirst>,
}

/// The size an image is resized to and where the crop sits in it (pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizeFirst {
    pub height: usize,
    pub width: usize,
    pub top: usize,
    pub left: usize,
}

impl View {
    pub fn full(img: &Image) -> Self {
        Self { top: 0.0, left: 0.0, height: img.height as f64, width: img.width as f64, flip: false, brightness: 1.0, resize_first: None }
    }

    /// Whether the view shrinks its source in either direction to `size`.
    pub fn downscales(&self, size: usize) -> bool {
        self.height > size as f64 + 1e-9 || self.width > size as f64 + 1e-9
    }
}

/// torchvision `RandomResizedCrop.get_params` (+ a flip coin), with our RNG.
pub fn random_resized_crop(h: usize, w: usize, cfg: &TransformConfig, rng: &mut SplitMix64) -> View {
    let area = (h * w) as f64;
    let (lr0, lr1) = (cfg.ratio[0].ln(), cfg.ratio[1].ln());
    let mut pick = None;
    for _ in 0..10 {
        let target = area * rng.uniform(cfg.scale[0], cfg.scale[1]);
        let aspect = rng.uniform(lr0, lr1).exp();
        let cw = (target * aspect).sqrt().round_ties_even() as usize;
        let ch = (target / aspect).sqrt().round_ties_even() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let i = rng.below((h - ch + 1) as u64) as usize;
            let j = rng.below((w - cw + 1) as u64) as usize;
            pick = Some((i, j, ch, cw));
            break;
        }
    }
    let (i, j, ch, cw) = pick.unwrap_or_else(|| {
        let in_ratio = w as f64 / h as f64;
        let (ch, cw) = if in_ratio < cfg.ratio[0] {
            ((w as f64 / cfg.ratio[0]).round_ties_even() as usize, w)
        } else if in_ratio > cfg.ratio[1] {
            (h, (h as f64 * cfg.ratio[1]).round_ties_even() as usize)
        } else {
            (h, w)
        };
        ((h - ch) / 2, (w - cw) / 2, ch, cw)
    });
    let flip = cfg.hflip && rng.unit() < 0.5;
    let brightness = if cfg.brightness > 0.0 { rng.uniform((1.0 - cfg.brightness).max(0.0), 1.0 + cfg.brightness) } else { 1.0 };
    View { top: i as f64, left: j as f64, height: ch as f64, width: cw as f64, flip, brightness, resize_first: None }
}

/// `Resize(round(size·ratio))` then `CenterCrop(size)`, as a box in source pixels.
pub fn resize_center_crop(h: usize, w: usize, cfg: &TransformConfig) -> View {
    let resized_short = (cfg.size as f64 * cfg.test_resize_ratio).round_ties_even();
    let k = resized_short / h.min(w) as f64;
    // torchvision: the longer side becomes int(resized_short * long / short).
    let (rh, rw) = if h <= w {
        (resized_short, (resized_short * w as f64 / h as f64).floor())
    } else {
        ((resized_short * h as f64 / w as f64).floor(), resized_short)
    };
    let s = cfg.size as f64;
    let top = ((rh - s) / 2.0).round_ties_even().max(0.0);
    let left = ((rw - s) / 2.0).round_ties_even().max(0.0);
    let resize_first = Some(ResizeFirst { height: rh as usize, width: rw as usize, top: top as usize, left: left as usize });
    View { top: top / k, left: left / k, height: s.min(rh) / k, width: s.min(rw) / k, flip: false, brightness: 1.0, resize_first }
}

/// Crops, resizes, flips and normalises a batch on `device`, as torchvision
/// resizes tensors with `antialias=True` (PIL's filters, which the official
/// pipelines use on their PIL images: bicubic with a = −0.5, a support
/// widened when shrinking). Training views are cropped, then resized
/// (`RandomResizedCrop`: nothing outside the crop is read); test views resize
/// the whole image, then crop (`Resize` + `CenterCrop`).
///
/// # Shapes
/// - returns `[B, 3, size, size]` float32 on `device`
pub fn render(images: &[&Image], boxes: &[View], cfg: &TransformConfig, interpolation: Interpolation, device: Device) -> Result<Tensor> {
    assert_eq!(images.len(), boxes.len());
    let b = images.len();
    let hm = images.iter().map(|i| i.height).max().unwrap_or(1);
    let wm = images.iter().map(|i| i.width).max().unwrap_or(1);
    let canvas = pack(images, hm, wm);
    let input = Tensor::f_from_slice(&canvas)?.f_view([b as i64, 3, hm as i64, wm as i64])?.f_to_device(device)?.f_to_kind(Kind::Float)? / 255.0;
    let size = cfg.size as i64;
    let bicubic = interpolation == Interpolation::Bicubic;
    let resize = |x: &Tensor, h: i64, w: i64| {
        if bicubic {
            x.f_internal_upsample_bicubic2d_aa([h, w], false, None, None)
        } else {
            x.f_internal_upsample_bilinear2d_aa([h, w], false, None, None)
        }
    };
    let mut rendered = Vec::with_capacity(b);
    for (i, bx) in boxes.iter().enumerate() {
        let img = input.get(i as i64).narrow(1, 0, images[i].height as i64).narrow(2, 0, images[i].width as i64).unsqueeze(0);
        let mut one = match bx.resize_first {
            Some(r) => resize(&img, r.height as i64, r.width as i64)?.narrow(2, r.top as i64, size).narrow(3, r.left as i64, size),
            None => resize(&img.narrow(2, bx.top as i64, bx.height as i64).narrow(3, bx.left as i64, bx.width as i64), size, size)?,
        };
        if bx.flip {
            one = one.flip([3]);
        }
        rendered.push(one);
    }
    let mut out = Tensor::f_cat(&rendered, 0)?;
    if boxes.iter().any(|v| v.brightness != 1.0) {
        let f: Vec<f32> = boxes.iter().map(|v| v.brightness as f32).collect();
        out = out * Tensor::f_from_slice(&f)?.f_view([b as i64, 1, 1, 1])?.f_to_device(device)?;
        out = out.clamp(0.0, 1.0);
    } else if bicubic {
        out = out.clamp(0.0, 1.0);
    }
    if let Some((mean, std)) = cfg.normalize.mean_std() {
        let m = Tensor::from_slice(&mean.map(|v| v as f32)).view([1, 3, 1, 1]).to_device(device);
        let s = Tensor::from_slice(&std.map(|v| v as f32)).view([1, 3, 1, 1]).to_device(device);
        out = (out - m) / s;
    }
    Ok(out)
}

/// Copies CHW images into the top-left of a `[B, 3, hm, wm]` canvas (one
/// transfer to the device for the batch; each image is read back at its own size).
fn pack(images: &[&Image], hm: usize, wm: usize) -> Vec<u8> {
    use rayon::prelude::*;
    let per = 3 * hm * wm;
    let mut canvas = vec![0u8; images.len() * per];
    canvas.par_chunks_mut(per).zip(images.par_iter()).for_each(|(dst, img)| {
        let (h, w) = (img.height, img.width);
        for c in 0..3 {
            let src_plane = &img.data[c * h * w..(c + 1) * h * w];
            let dst_plane = &mut dst[c * hm * wm..(c + 1) * hm * wm];
            for y in 0..h {
                dst_plane[y * wm..y * wm + w].copy_from_slice(&src_plane[y * w..(y + 1) * w]);
            }
        }
    });
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_resized_crop_stays_inside_and_is_deterministic() {
        let cfg = TransformConfig::default();
        for seed in 0..200 {
            let a = random_resized_crop(32, 48, &cfg, &mut SplitMix64::new(seed));
            let b = random_resized_crop(32, 48, &cfg, &mut SplitMix64::new(seed));
            assert_eq!(a, b);
            assert!(a.top >= 0.0 && a.left >= 0.0 && a.top + a.height <= 32.0 && a.left + a.width <= 48.0, "{a:?}");
            let area = a.height * a.width / (32.0 * 48.0);
            assert!(area > 0.0 && area <= 1.0);
        }
    }

    #[test]
    fn center_crop_box_matches_torchvision_geometry() {
        // 32×32 CIFAR image → Resize(256) → CenterCrop(224): the middle 28×28 source pixels.
        let b = resize_center_crop(32, 32, &TransformConfig::default());
        assert!((b.top - 2.0).abs() < 1e-9 && (b.height - 28.0).abs() < 1e-9, "{b:?}");
        // 300×400 → shorter side 256 (k = 256/300), resized 256×341, crop top 16, left 58.
        let b = resize_center_crop(300, 400, &TransformConfig::default());
        let k = 256.0 / 300.0;
        assert!((b.top - 16.0 / k).abs() < 1e-9 && (b.left - 58.0 / k).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn full_box_equals_bilinear_interpolate_and_flip_mirrors() {
        let mut rng = SplitMix64::new(1);
        let data: Vec<u8> = (0..3 * 20 * 24).map(|_| rng.below(256) as u8).collect();
        let img = Image::from_chw(20, 24, data.clone());
        let cfg = TransformConfig { size: 56, ..Default::default() };
        let out = render(&[&img], &[View::full(&img)], &cfg, Interpolation::Bilinear, Device::Cpu).unwrap();
        let reference =
            (Tensor::from_slice(&data).view([1, 3, 20, 24]).to_kind(Kind::Float) / 255.0).upsample_bilinear2d([56, 56], false, None, None);
        let err = (&out - &reference).abs().max().double_value(&[]);
        assert!(err < 1e-5, "upscaling: the antialiased resize is the plain bilinear one: {err}");
        let flipped = render(&[&img], &[View { flip: true, ..View::full(&img) }], &cfg, Interpolation::Bilinear, Device::Cpu).unwrap();
        let err = (&flipped - out.flip([3])).abs().max().double_value(&[]);
        assert!(err < 1e-5, "flip: {err}");
    }

    #[test]
    fn brightness_scales_and_clamps() {
        let img = Image::from_chw(4, 4, vec![100; 48]);
        let cfg = TransformConfig { size: 4, ..Default::default() };
        let views = [View { brightness: 1.5, ..View::full(&img) }, View { brightness: 3.0, ..View::full(&img) }];
        let out = render(&[&img, &img], &views, &cfg, Interpolation::Bilinear, Device::Cpu).unwrap();
        assert!((out.get(0).mean(Kind::Float).double_value(&[]) - 150.0 / 255.0).abs() < 1e-6);
        assert!((out.get(1).max().double_value(&[]) - 1.0).abs() < 1e-9, "clamped");
        let norga = TransformConfig::norga_cifar();
        norga.validate().unwrap();
        let mut rng = SplitMix64::new(0);
        for _ in 0..100 {
            let v = random_resized_crop(32, 32, &norga, &mut rng);
            assert!((1.0 - 63.0 / 255.0..=1.0 + 63.0 / 255.0).contains(&v.brightness));
        }
    }

    #[test]
    fn smaller_images_in_a_batch_are_not_polluted_by_padding() {
        let a = Image::from_chw(8, 8, vec![200; 3 * 64]);
        let b = Image::from_chw(16, 12, vec![10; 3 * 16 * 12]);
        let cfg = TransformConfig { size: 32, ..Default::default() };
        let out = render(&[&a, &b], &[View::full(&a), View::full(&b)], &cfg, Interpolation::Bilinear, Device::Cpu).unwrap();
        let a_out = out.get(0);
        let expect = 200.0 / 255.0;
        assert!((a_out.min().double_value(&[]) - expect).abs() < 1e-6 && (a_out.max().double_value(&[]) - expect).abs() < 1e-6);
    }
}
