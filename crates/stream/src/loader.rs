//! Deterministic batches: the same images, crops and order on every machine
//! for a given (seed, epoch), whatever the batch size or thread count.

use tch::{Device, Tensor};

use crate::dataset::Split;
use crate::error::Result;
use crate::rng::SplitMix64;
use crate::transform::{random_resized_crop, render, resize_center_crop, TransformConfig};

#[derive(Debug, Clone, Copy)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub shuffle: bool,
    /// Train-time augmentation (random resized crop + flip) instead of the test transform.
    pub augment: bool,
    pub drop_last: bool,
    pub seed: u64,
}

/// One ready batch.
///
/// # Shapes
/// - `inputs`: images `[B, 3, size, size]` float32 on the loader's device, or
///   for text datasets the packed tokens `[B, 3 + T]` int64 (see [`crate::text::pack`])
/// - `labels`, `indices`: `B` dataset labels and sample indices
#[derive(Debug)]
pub struct Batch {
    pub inputs: Tensor,
    pub labels: Vec<usize>,
    pub indices: Vec<usize>,
}

pub struct Loader<'a> {
    split: &'a Split,
    order: Vec<usize>,
    opts: LoaderOptions,
    epoch: u64,
    transform: &'a TransformConfig,
    device: Device,
    pos: usize,
}

impl<'a> Loader<'a> {
    /// Batches over `indices` of `split` for `epoch`.
    pub fn new(split: &'a Split, mut indices: Vec<usize>, opts: LoaderOptions, epoch: u64, transform: &'a TransformConfig, device: Device) -> Self {
        if opts.shuffle {
            SplitMix64::derive(opts.seed, &[epoch, 0x5EED_0F0D]).shuffle(&mut indices);
        }
        Self { split, order: indices, opts, epoch, transform, device, pos: 0 }
    }

    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.order.len(), self.opts.batch_size.max(1));
        if self.opts.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }
}

impl Iterator for Loader<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.opts.batch_size.max(1);
        let remaining = self.order.len() - self.pos;
        if remaining == 0 || (self.opts.drop_last && remaining < b) {
            return None;
        }
        let take = remaining.min(b);
        let indices = self.order[self.pos..self.pos + take].to_vec();
        self.pos += take;
        let labels = indices.iter().map(|&i| self.split.labels[i]).collect();
        if !self.split.texts.is_empty() {
            let texts: Vec<_> = indices.iter().map(|&i| &self.split.texts[i]).collect();
            return Some(Ok(Batch { inputs: crate::text::pack(&texts, self.device), labels, indices }));
        }
        let images: Vec<_> = indices.iter().map(|&i| &self.split.images[i]).collect();
        let boxes: Vec<_> = indices
            .iter()
            .zip(&images)
            .map(|(&i, img)| {
                if self.opts.augment {
                    // Per-sample stream: crops do not depend on batch composition.
                    let mut rng = SplitMix64::derive(self.opts.seed, &[self.epoch, i as u64]);
                    random_resized_crop(img.height, img.width, self.transform, &mut rng)
                } else {
                    resize_center_crop(img.height, img.width, self.transform)
                }
            })
            .collect();
        let interpolation = if self.opts.augment { self.transform.train_interpolation } else { self.transform.test_interpolation };
        Some(render(&images, &boxes, self.transform, interpolation, self.device).map(|inputs| Batch { inputs, labels, indices }))
    }
}
