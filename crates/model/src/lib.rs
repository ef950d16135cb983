//! Frozen transformer backbones with prompt hooks, on libtorch (`tch`).
//!
//! Owns: network definitions (timm ViT, Hugging Face BERT), weight loading, prompt injection,
//! attention kernels. Must not know about datasets, tasks or methods.

mod attention;
mod bert;
mod config;
mod error;
mod layers;
mod lora;
mod prompt;
mod vit;
pub mod weights;

use serde::{Deserialize, Serialize};

pub use attention::AttentionImpl;
pub use bert::{frozen_bert, mean_pool, BertConfig, BertModel, BertOutput};
pub use config::ViTConfig;
pub use error::{ModelError, Result};
pub use lora::{LayerLora, LoraTarget, LoraUpdate};
pub use prompt::{
    AdaptFormer, EmbeddingTuning, GateActivation, LayerPrompt, NoRGaGate, ParallelAdapter, Prefix, PrefixScoreHook, Prompts, Ssf, SsfBlock,
    TokenGenerator, ZeroInitGate,
};
pub use vit::{frozen_vit, resample_pos_embed, ForwardOptions, VisionTransformer, VitOutput};

/// The dtype a frozen backbone computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 everywhere: what the official research code does; bit-for-bit
    /// comparable with PyTorch on CPU.
    #[default]
    F32,
    /// CUDA autocast's dtypes: bf16 matmul / convolution weights and
    /// matmuls; LayerNorm (with fp32 weights), softmax, the residual stream,
    /// class token and position embedding in fp32; fp32 outputs.
    Bf16,
}
