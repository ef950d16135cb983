use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// A timm-layout Vision Transformer (`timm.models.vision_transformer.VisionTransformer`
/// with class token, learned absolute position embeddings, pre-norm blocks).
///
/// Defaults are ViT-B/16 at 224×224 without a classifier head, the backbone
/// every prompt-based CL paper freezes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViTConfig {
    pub img_size: i64,
    pub patch_size: i64,
    pub in_chans: i64,
    pub embed_dim: i64,
    pub depth: usize,
    pub num_heads: i64,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    /// 0 means no head (timm's `num_classes=0`): `head.*` tensors in a
    /// checkpoint are ignored.
    pub num_classes: i64,
    /// timm uses `partial(nn.LayerNorm, eps=1e-6)` for ViTs.
    pub layer_norm_eps: f64,
}

impl Default for ViTConfig {
    fn default() -> Self {
        Self::vit_base_patch16_224()
    }
}

impl ViTConfig {
    fn preset(embed_dim: i64, depth: usize, num_heads: i64) -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            num_classes: 0,
            layer_norm_eps: 1e-6,
        }
    }

    /// timm `vit_base_patch16_224` (ViT-B/16).
    pub fn vit_base_patch16_224() -> Self {
        Self::preset(768, 12, 12)
    }

    /// timm `vit_small_patch16_224` (ViT-S/16).
    pub fn vit_small_patch16_224() -> Self {
        Self::preset(384, 12, 6)
    }

    /// timm `vit_tiny_patch16_224` (ViT-Ti/16).
    pub fn vit_tiny_patch16_224() -> Self {
        Self::preset(192, 12, 3)
    }

    /// Looks a preset up by its timm name.
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "vit_base_patch16_224" | "vit-b16" => Ok(Self::vit_base_patch16_224()),
            "vit_small_patch16_224" | "vit-s16" => Ok(Self::vit_small_patch16_224()),
            "vit_tiny_patch16_224" | "vit-ti16" => Ok(Self::vit_tiny_patch16_224()),
            _ => Err(ModelError::Config(format!(
                "unknown ViT preset `{name}`; valid: vit_base_patch16_224, vit_small_patch16_224, vit_tiny_patch16_224"
            ))),
        }
    }

    pub fn head_dim(&self) -> i64 {
        self.embed_dim / self.num_heads
    }

    pub fn grid_size(&self) -> i64 {
        self.img_size / self.patch_size
    }

    pub fn num_patches(&self) -> i64 {
        self.grid_size() * self.grid_size()
    }

    pub fn mlp_hidden(&self) -> i64 {
        (self.embed_dim as f64 * self.mlp_ratio) as i64
    }

    /// Checks every constraint the constructor relies on; call before any tensor exists.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.patch_size <= 0 || self.img_size <= 0 || self.in_chans <= 0 {
            return bad(format!("img_size ({}), patch_size ({}) and in_chans ({}) must be positive", self.img_size, self.patch_size, self.in_chans));
        }
        if self.img_size % self.patch_size != 0 {
            return bad(format!("img_size {} is not divisible by patch_size {}", self.img_size, self.patch_size));
        }
        if self.embed_dim <= 0 || self.num_heads <= 0 || self.embed_dim % self.num_heads != 0 {
            return bad(format!("embed_dim {} must be a positive multiple of num_heads {}", self.embed_dim, self.num_heads));
        }
        if self.depth == 0 {
            return bad("depth must be at least 1".into());
        }
        if !(self.mlp_ratio > 0.0) || self.mlp_hidden() == 0 {
            return bad(format!("mlp_ratio {} gives an empty MLP", self.mlp_ratio));
        }
        if self.num_classes < 0 {
            return bad(format!("num_classes {} is negative", self.num_classes));
        }
        if !(self.layer_norm_eps > 0.0) {
            return bad(format!("layer_norm_eps {} must be positive", self.layer_norm_eps));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_timm_dimensions() {
        let b = ViTConfig::vit_base_patch16_224();
        assert_eq!((b.embed_dim, b.depth, b.num_heads, b.head_dim()), (768, 12, 12, 64));
        assert_eq!(b.num_patches(), 196);
        let s = ViTConfig::by_name("vit_small_patch16_224").unwrap();
        assert_eq!((s.embed_dim, s.num_heads, s.head_dim()), (384, 6, 64));
        let t = ViTConfig::by_name("vit-ti16").unwrap();
        assert_eq!((t.embed_dim, t.num_heads, t.head_dim()), (192, 3, 64));
        assert!(ViTConfig::by_name("vit_huge").is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = ViTConfig::vit_tiny_patch16_224();
        c.img_size = 225;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("225") && e.contains("patch_size 16"), "{e}");
        let mut c = ViTConfig::vit_tiny_patch16_224();
        c.num_heads = 5;
        assert!(c.validate().unwrap_err().to_string().contains("num_heads 5"));
        let err = serde_json::from_str::<ViTConfig>(r#"{"depht": 3}"#).unwrap_err();
        assert!(err.to_string().contains("depht"), "{err}");
    }
}
