//! BERT's embedding layer trained once, on the first task, then frozen: the
//! entity-marker rows (random, mean-resized, when the tokenizer added them),
//! the position and token-type embeddings and the embedding LayerNorm, by
//! cross-entropy through a throw-away head on the un-prompted relation
//! representation. The WAVE-CRE group's code does this before its first
//! prompt pool (CRE-Prompt `methods/manager.py` `train_encoder`: Adam over
//! `encoder.embeddings` and a fresh `Classifier`, 10 epochs at 1e-3, the
//! word-embedding gradient masked to the marker rows).
//!
//! The tensors live in the method's store (so a checkpoint holds them) and
//! reach the model through [`Prompts::with_embeddings`]; a method that uses
//! them must do so for its queries as well as its prompted features.

use std::ops::Range;

use promptcl_model::{EmbeddingTuning as Tensors, Prompts};
use tch::{nn, nn::Module, Tensor};

use super::classifier::Classifier;
use crate::methods::common::{ce_step, LinearInit};
use crate::{Backbone, Inputs, LearnerError, MethodContext, Result, Step};

/// Variables under this name, the throw-away head included: the stage trains `only` it.
pub const NAME: &str = "embeddings";

pub struct EmbeddingTuning {
    tensors: Tensors,
    head: Classifier,
}

impl EmbeddingTuning {
    /// Copies of the backbone's embedding tensors under `root/embeddings` (timm/HF
    /// names; the marker rows as `word_embeddings.new_rows`), and a head of
    /// `hidden` widths under `root/embeddings/head`.
    pub fn new(root: &nn::Path, ctx: &MethodContext, hidden: &[i64]) -> Result<Self> {
        let b = &ctx.backbone;
        let Some(new_rows) = b.new_token_rows() else {
            return Err(LearnerError::Invalid("embedding tuning needs the BERT encoder (relation extraction)".into()));
        };
        let p = root / NAME;
        let copy = |name: &str, src: Tensor| {
            let (module, leaf) = name.split_once('.').expect("module.leaf");
            (&p / module).var_copy(leaf, &src)
        };
        let word = b.frozen_f32("embeddings.word_embeddings.weight")?;
        let vocab = word.size()[0];
        let tensors = Tensors {
            new_rows: copy("word_embeddings.new_rows", word.narrow(0, vocab - new_rows, new_rows)),
            position: copy("position_embeddings.weight", b.frozen_f32("embeddings.position_embeddings.weight")?),
            token_type: copy("token_type_embeddings.weight", b.frozen_f32("embeddings.token_type_embeddings.weight")?),
            norm_weight: copy("LayerNorm.weight", b.frozen_f32("embeddings.LayerNorm.weight")?),
            norm_bias: copy("LayerNorm.bias", b.frozen_f32("embeddings.LayerNorm.bias")?),
        };
        let head = Classifier::new(&p, ctx.feature_dim(), hidden, ctx.num_classes, ctx.seed ^ 0xE3BE, LinearInit::Timm);
        Ok(Self { tensors, head })
    }

    /// The hook that puts these tensors in the encoder; a base for further prompts.
    pub fn prompts(&self) -> Prompts<'_> {
        Prompts::none().with_embeddings(&self.tensors)
    }

    /// Cross-entropy of the throw-away head over `classes` on the un-prompted feature.
    pub fn step(&self, backbone: &Backbone, x: &Inputs, labels: &Tensor, classes: Range<usize>) -> Result<Step> {
        let feats = backbone.forward(x, &self.prompts())?.feature;
        Ok(ce_step(&self.head.forward(&feats), labels, classes))
    }
}
