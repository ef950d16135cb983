//! In-memory datasets: decoded uint8 images plus labels, one struct for every format.

use std::path::PathBuf;

use crate::hierarchy::LabelTree;

/// One decoded image, channel-planar (CHW) RGB uint8, as CIFAR stores it and
/// as the GPU wants it.
#[derive(Debug, Clone)]
pub struct Image {
    pub height: usize,
    pub width: usize,
    /// `3 * height * width` bytes: all R, then all G, then all B.
    pub data: Vec<u8>,
}

impl Image {
    pub fn from_chw(height: usize, width: usize, data: Vec<u8>) -> Self {
        debug_assert_eq!(data.len(), 3 * height * width);
        Self { height, width, data }
    }

    /// From interleaved RGB (what image decoders produce).
    pub fn from_hwc(height: usize, width: usize, hwc: &[u8]) -> Self {
        let plane = height * width;
        let mut data = vec![0u8; 3 * plane];
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            data[i] = px[0];
            data[plane + i] = px[1];
            data[2 * plane + i] = px[2];
        }
        Self { height, width, data }
    }

    /// Interleaved RGB (what image encoders take): the inverse of [`Image::from_hwc`].
    pub fn to_hwc(&self) -> Vec<u8> {
        let plane = self.height * self.width;
        (0..plane).flat_map(|p| [self.data[p], self.data[plane + p], self.data[2 * plane + p]]).collect()
    }

    /// Encodes to a file, the format chosen by the extension (`.png`, `.jpg`).
    pub fn save(&self, path: &std::path::Path) -> crate::Result<()> {
        let buf = image::RgbImage::from_raw(self.width as u32, self.height as u32, self.to_hwc()).expect("3·h·w bytes");
        buf.save(path).map_err(|e| crate::StreamError::Image { path: path.to_path_buf(), reason: e.to_string() })
    }
}

/// The samples of one side of a dataset (train or test): images, or
/// tokenized relation examples for text datasets.
#[derive(Debug, Clone, Default)]
pub struct Split {
    pub images: Vec<Image>,
    pub texts: Vec<crate::text::EncodedText>,
    /// Dataset class ids (`0..num_classes`), as the dataset defines them.
    pub labels: Vec<usize>,
    /// Where each image came from, for folder datasets (error messages, split files).
    pub paths: Vec<PathBuf>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub class_names: Vec<String>,
    pub train: Split,
    pub test: Split,
    /// Label hierarchy when the dataset ships one (CIFAR-100's superclasses).
    pub hierarchy: Option<LabelTree>,
    /// Task composition when the protocol fixes it (continual relation extraction).
    pub plan: Option<crate::cre::TaskPlan>,
    /// For text: rows the encoder's word embedding needs for the ids the
    /// tokenizer produced (its vocabulary plus the added entity markers).
    pub token_vocab: Option<usize>,
}

impl Dataset {
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    pub fn is_text(&self) -> bool {
        !self.train.texts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_through_save_and_decode() {
        let mut rng = crate::SplitMix64::new(2);
        let data: Vec<u8> = (0..3 * 12 * 7).map(|_| rng.below(256) as u8).collect();
        let img = Image::from_chw(12, 7, data);
        assert_eq!(Image::from_hwc(12, 7, &img.to_hwc()).data, img.data);
        let path = std::env::temp_dir().join(format!("promptcl-image-{}.png", std::process::id()));
        img.save(&path).unwrap();
        let back = crate::decode_image(&path, None).unwrap();
        assert_eq!((back.height, back.width, &back.data), (12, 7, &img.data));
        std::fs::remove_file(path).ok();
    }
}
