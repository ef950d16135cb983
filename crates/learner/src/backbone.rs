//! The frozen pretrained encoder every method shares — a ViT for images or a
//! BERT for relation extraction — behind one small interface, so that one
//! implementation of a method runs on both.

use promptcl_model::{BertModel, ForwardOptions, Prompts, VisionTransformer};
use tch::{nn, Kind, Tensor};

use crate::error::{LearnerError, Result};
use crate::method::Inputs;

pub enum Encoder {
    Vit(VisionTransformer),
    /// Reads packed text batches (`promptcl_stream::text::pack`); its feature
    /// is the relation representation `[h(E11); h(E21)]`.
    Bert(BertModel),
}

/// What an encoder call gives a method.
///
/// # Shapes
/// - `feature`: `[B, feature_dim]` — the ViT class token, or BERT's `[h(E11); h(E21)]`
/// - `prompt_tokens`: `[B, P, token_dim]` when prompt tokens were inserted
pub struct Features {
    pub feature: Tensor,
    pub prompt_tokens: Option<Tensor>,
}

pub struct Backbone {
    pub encoder: Encoder,
    /// Its (frozen) variables; methods that fine-tune copy them into their own store.
    pub vars: nn::VarStore,
}

impl Backbone {
    pub fn new(encoder: Encoder, vars: nn::VarStore) -> Self {
        Self { encoder, vars }
    }

    pub fn depth(&self) -> usize {
        match &self.encoder {
            Encoder::Vit(m) => m.config().depth,
            Encoder::Bert(m) => m.config().num_hidden_layers,
        }
    }

    pub fn num_heads(&self) -> i64 {
        match &self.encoder {
            Encoder::Vit(m) => m.config().num_heads,
            Encoder::Bert(m) => m.config().num_attention_heads,
        }
    }

    pub fn head_dim(&self) -> i64 {
        match &self.encoder {
            Encoder::Vit(m) => m.config().head_dim(),
            Encoder::Bert(m) => m.config().head_dim(),
        }
    }

    /// Width of the token sequence (prompt tokens and prefixes live here).
    pub fn token_dim(&self) -> i64 {
        match &self.encoder {
            Encoder::Vit(m) => m.config().embed_dim,
            Encoder::Bert(m) => m.config().hidden_size,
        }
    }

    /// The ViT's MLP hidden width (where SSF's `fc1` place sits); none for BERT.
    pub fn mlp_hidden(&self) -> Option<i64> {
        match &self.encoder {
            Encoder::Vit(m) => Some(m.config().mlp_hidden()),
            Encoder::Bert(_) => None,
        }
    }

    /// BERT's word-embedding rows beyond its loaded weights (the entity
    /// markers; the vocabulary's last rows); `None` for the ViT.
    pub fn new_token_rows(&self) -> Option<i64> {
        match &self.encoder {
            Encoder::Vit(_) => None,
            Encoder::Bert(m) => Some(m.new_rows()),
        }
    }

    /// Width of [`Features::feature`] and of [`Backbone::query`].
    pub fn feature_dim(&self) -> i64 {
        match &self.encoder {
            Encoder::Vit(m) => m.config().embed_dim,
            Encoder::Bert(m) => 2 * m.config().hidden_size,
        }
    }

    pub fn forward(&self, x: &Inputs, prompts: &Prompts) -> Result<Features> {
        self.encoder.forward(x, prompts)
    }

    /// A frozen weight by its timm/HF name (`blocks.3.attn.qkv.weight`), detached, in f32.
    pub fn frozen_f32(&self, name: &str) -> Result<Tensor> {
        self.vars
            .variables()
            .get(name)
            .map(|t| t.detach().to_kind(Kind::Float))
            .ok_or_else(|| LearnerError::Invalid(format!("the backbone has no `{name}`")))
    }

    /// The frozen, un-prompted feature without autograd: the "query" of
    /// L2P / DualPrompt / CODA / HiDe-Prompt / WAVE-CRE.
    pub fn query(&self, x: &Inputs) -> Result<Tensor> {
        self.query_under(x, &Prompts::none())
    }

    /// The query under `base` hooks (tuned embeddings), without autograd.
    pub fn query_under(&self, x: &Inputs, base: &Prompts) -> Result<Tensor> {
        tch::no_grad(|| Ok(self.forward(x, base)?.feature))
    }

    /// The queries and labels of every batch of `data`: `([N, D], [N])`.
    pub fn queries(&self, data: &mut dyn crate::BatchSource) -> Result<(Tensor, Tensor)> {
        self.queries_under(data, &Prompts::none())
    }

    /// [`Self::queries`] under `base` hooks.
    pub fn queries_under(&self, data: &mut dyn crate::BatchSource, base: &Prompts) -> Result<(Tensor, Tensor)> {
        crate::method::collect_features(data, &mut |x| self.query_under(x, base))
    }

    /// A trainable copy of the encoder under `p` (for full fine-tuning),
    /// initialised from the frozen weights; `vs` is the store `p` belongs to.
    pub fn trainable_copy(&self, p: nn::Path, vs: &nn::VarStore) -> Encoder {
        let prefix = format!("{}.", p.components().collect::<Vec<_>>().join("."));
        let own = match &self.encoder {
            Encoder::Vit(m) => Encoder::Vit(VisionTransformer::new(p, m.config())),
            Encoder::Bert(m) => Encoder::Bert(BertModel::new(p, m.config())),
        };
        let mine = vs.variables();
        tch::no_grad(|| {
            for (name, src) in self.vars.variables() {
                let mut dst = mine[&format!("{prefix}{name}")].shallow_clone();
                dst.copy_(&src.to_kind(dst.kind()));
            }
        });
        own
    }
}

impl Encoder {
    pub fn forward(&self, x: &Inputs, prompts: &Prompts) -> Result<Features> {
        match (self, x) {
            (Self::Vit(m), Inputs::Images(x)) => {
                let out = m.forward(x, prompts)?;
                Ok(Features { feature: out.cls, prompt_tokens: out.prompt_tokens })
            }
            (Self::Bert(m), Inputs::Text(x)) => {
                let batch = promptcl_stream::text::unpack(x).map_err(|e| LearnerError::Invalid(e.to_string()))?;
                let out = m.forward(&batch.ids, Some(&batch.mask), prompts, &ForwardOptions::default())?;
                let at = |pos: &Tensor| {
                    let (b, d) = (out.hidden.size()[0], out.hidden.size()[2]);
                    out.hidden.gather(1, &pos.view([b, 1, 1]).expand([b, 1, d], false), false).squeeze_dim(1)
                };
                let feature = Tensor::cat(&[at(&batch.head), at(&batch.tail)], 1).to_kind(Kind::Float);
                Ok(Features { feature, prompt_tokens: out.prompt_tokens })
            }
            (_, Inputs::Features(_)) => Err(LearnerError::Invalid("generated features cannot go through the encoder".into())),
            (Self::Vit(_), Inputs::Text(_)) => Err(LearnerError::Invalid("the ViT encoder reads images, not text".into())),
            (Self::Bert(_), Inputs::Images(_)) => Err(LearnerError::Invalid("the BERT encoder reads text, not images".into())),
        }
    }
}
