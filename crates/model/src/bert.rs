//! BERT encoder in Hugging Face layout (`transformers.BertModel`: post-norm
//! layers, learned absolute positions, token types, additive attention mask),
//! with the same prompt hooks as the ViT.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::attention::attend;
use crate::error::{ModelError, Result};
use crate::layers::{linear, LayerNorm};
use crate::lora::{merge_layer, LayerLora, LoraTarget, QkvWeights};
use crate::prompt::{splice_prompt_tokens, split_prompt_tokens, EmbeddingTuning, LayerPrompt, Prompts};
use crate::vit::ForwardOptions;

/// The subset of a Hugging Face `config.json` the encoder needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
}

impl Default for BertConfig {
    /// `bert-base-uncased`.
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
        }
    }
}

impl BertConfig {
    /// `sentence-transformers/all-MiniLM-L6-v2`.
    pub fn minilm_l6() -> Self {
        Self { hidden_size: 384, num_hidden_layers: 6, intermediate_size: 1536, ..Self::default() }
    }

    /// Reads a Hugging Face `config.json` (unknown keys are ignored: those
    /// files carry many that do not concern the encoder).
    pub fn from_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| ModelError::BadFile { path: path.to_path_buf(), reason: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.num_attention_heads <= 0 || self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!("hidden_size {} is not a multiple of num_attention_heads {}", self.hidden_size, self.num_attention_heads));
        }
        if self.num_hidden_layers == 0 || self.vocab_size <= 0 || self.max_position_embeddings <= 0 || self.intermediate_size <= 0 {
            return bad("num_hidden_layers, vocab_size, max_position_embeddings and intermediate_size must be positive".into());
        }
        if self.hidden_act != "gelu" {
            return bad(format!("hidden_act `{}` is not supported (only the exact `gelu`)", self.hidden_act));
        }
        Ok(())
    }
}

struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attn_out: nn::Linear,
    attn_norm: LayerNorm,
    intermediate: nn::Linear,
    out: nn::Linear,
    out_norm: LayerNorm,
    heads: i64,
}

impl Layer {
    fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let a = &p / "attention";
        Self {
            query: linear(&a / "self" / "query", d, d, true),
            key: linear(&a / "self" / "key", d, d, true),
            value: linear(&a / "self" / "value", d, d, true),
            attn_out: linear(&a / "output" / "dense", d, d, true),
            attn_norm: LayerNorm::new(&a / "output" / "LayerNorm", d, eps),
            intermediate: linear(&p / "intermediate" / "dense", d, cfg.intermediate_size, true),
            out: linear(&p / "output" / "dense", cfg.intermediate_size, d, true),
            out_norm: LayerNorm::new(&p / "output" / "LayerNorm", d, eps),
            heads: cfg.num_attention_heads,
        }
    }

    /// An adapter reads the FFN's input and is added beside its output,
    /// inside the post-LN residual: `LN(h + FFN(h) + adapter(h))` (the
    /// parallel adapter of He et al., 2022, placed for a post-LN encoder).
    ///
    /// # Shapes
    /// - `x`: `[B, T, D]`; `mask`: additive `[B, 1, 1, T]`
    fn forward(&self, x: &Tensor, mask: &Tensor, lp: Option<&LayerPrompt>, opts: &ForwardOptions) -> Tensor {
        let (prefix, hook) = (lp.and_then(|lp| lp.prefix.as_ref()), lp.and_then(|lp| lp.score_hook));
        let s = x.size();
        let (b, t, d) = (s[0], s[1], s[2]);
        let split = |y: Tensor| y.view([b, t, self.heads, d / self.heads]).transpose(1, 2);
        let lora = lp.and_then(|lp| lp.lora);
        let project = |lin: &nn::Linear, target: LoraTarget| LayerLora::add_if(lora, target, x, lin.forward(x));
        let (q, k, v) =
            (split(project(&self.query, LoraTarget::Q)), split(project(&self.key, LoraTarget::K)), split(project(&self.value, LoraTarget::V)));
        let ctx = attend(&q, &k, &v, prefix, hook, lp.and_then(|lp| lp.zero_gate), Some(mask), opts.attention).transpose(1, 2).reshape([b, t, d]);
        let attn_out = LayerLora::add_if(lora, LoraTarget::Out, &ctx, self.attn_out.forward(&ctx));
        let h = self.attn_norm.forward(&(attn_out + x));
        let inter = self.intermediate.forward(&h).gelu("none");
        let ffn = self.out.forward(&inter) + &h;
        let ffn = match lp.and_then(|lp| lp.adapter) {
            Some(a) => ffn + a.apply(&h),
            None => ffn,
        };
        self.out_norm.forward(&ffn)
    }
}

/// What the encoder returns (fp32).
///
/// # Shapes
/// - `hidden`: `[B, T, D]` last layer (`[B, T + P, D]` with prompt tokens kept)
/// - `prompt_tokens`: `[B, P, D]` when the call inserted prompt tokens
#[derive(Debug)]
pub struct BertOutput {
    pub hidden: Tensor,
    pub prompt_tokens: Option<Tensor>,
}

/// `transformers.BertModel` without the pooler. Parameter paths equal its
/// state-dict keys (`embeddings.word_embeddings.weight`,
/// `encoder.layer.3.attention.self.query.bias`, …).
pub struct BertModel {
    cfg: BertConfig,
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    /// Word-embedding rows beyond the loaded weights' (the last ones).
    new_rows: i64,
}

impl BertModel {
    /// Builds the variables under `p`. `cfg` must have passed `validate()`.
    pub fn new(p: nn::Path, cfg: &BertConfig) -> Self {
        let e = &p / "embeddings";
        let d = cfg.hidden_size;
        let emb = |name: &str, n: i64| nn::embedding(&e / name, n, d, Default::default());
        Self {
            word: emb("word_embeddings", cfg.vocab_size),
            position: emb("position_embeddings", cfg.max_position_embeddings),
            token_type: emb("token_type_embeddings", cfg.type_vocab_size),
            emb_norm: LayerNorm::new(&e / "LayerNorm", d, cfg.layer_norm_eps),
            layers: (0..cfg.num_hidden_layers).map(|i| Layer::new(&p / "encoder" / "layer" / i, cfg)).collect(),
            cfg: cfg.clone(),
            new_rows: 0,
        }
    }

    /// Loads Hugging Face weights strictly (a `bert.` prefix is accepted,
    /// the pooler ignored) and freezes them. A `cfg.vocab_size` larger than
    /// the file's (tokens added to the tokenizer, such as entity markers)
    /// gets new embedding rows drawn from a Gaussian with the per-dimension
    /// mean and spread of the trained rows, as `transformers`'
    /// `resize_token_embeddings(mean_resizing=True)` does (with a diagonal
    /// covariance); they depend on the torch seed.
    pub fn from_safetensors(vs: &mut nn::VarStore, cfg: &BertConfig, path: &Path) -> Result<Self> {
        cfg.validate()?;
        let mut model = Self::new(vs.root(), cfg);
        const SKIP: [&str; 6] =
            ["pooler.", "cls.", "embeddings.position_ids", "embeddings.token_type_ids", "bert.pooler.", "bert.embeddings.position_ids"];
        let mut file = crate::weights::read_safetensors_except(path, &SKIP)?;
        if file.keys().any(|k| k.starts_with("bert.")) {
            file = file.into_iter().map(|(k, v)| (k.strip_prefix("bert.").map(String::from).unwrap_or(k), v)).collect();
        }
        let grow = |name: &str, t: Tensor, expected: &[i64]| {
            let n = t.size()[0];
            if name != "embeddings.word_embeddings.weight" || t.dim() != 2 || n >= expected[0] || t.size()[1] != expected[1] {
                return Ok(t);
            }
            let t = t.to_kind(Kind::Float);
            let (mean, std) = (t.mean_dim(0, true, Kind::Float), t.std_dim(0, true, true));
            let extra = Tensor::randn([expected[0] - n, expected[1]], (Kind::Float, t.device())) * std + mean;
            Ok(Tensor::cat(&[t, extra], 0))
        };
        let rows = file.get("embeddings.word_embeddings.weight").map(|t| t.size()[0]).unwrap_or(cfg.vocab_size);
        model.new_rows = (cfg.vocab_size - rows).max(0);
        crate::weights::load_map(vs, path, file, &SKIP, &grow)?;
        vs.freeze();
        Ok(model)
    }

    /// Merges `lora` into layer `layer`'s frozen projections in place (PEFT's `merge`).
    pub fn merge_lora(&mut self, layer: usize, lora: &LayerLora) -> Result<()> {
        self.merge_signed(layer, lora, 1.0)
    }

    /// Subtracts what [`Self::merge_lora`] added (PEFT's `unmerge`).
    pub fn unmerge_lora(&mut self, layer: usize, lora: &LayerLora) -> Result<()> {
        self.merge_signed(layer, lora, -1.0)
    }

    fn merge_signed(&mut self, layer: usize, lora: &LayerLora, sign: f64) -> Result<()> {
        let (d, depth) = (self.cfg.hidden_size, self.cfg.num_hidden_layers);
        let l = self.layers.get_mut(layer).ok_or_else(|| ModelError::Input(format!("LoRA for layer {layer}, but the model has {depth} layers")))?;
        let qkv = QkvWeights::Split([&mut l.query.ws, &mut l.key.ws, &mut l.value.ws]);
        merge_layer(lora, layer, d, qkv, &mut l.attn_out.ws, sign)
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.word.ws.device()
    }

    /// Word-embedding rows added beyond the loaded weights' (the tokenizer's
    /// entity markers, mean-resized by [`Self::from_safetensors`]); they are the
    /// vocabulary's last rows. 0 for a model built by [`Self::new`].
    pub fn new_rows(&self) -> i64 {
        self.new_rows
    }

    /// Token, position and token-type embeddings, summed and normalised, from
    /// the model's tensors or from `tuning`'s where given.
    fn embed(&self, ids: &Tensor, positions: &Tensor, types: &Tensor, tuning: Option<&EmbeddingTuning>) -> Tensor {
        let Some(e) = tuning else {
            return self.emb_norm.forward(&(self.word.forward(ids) + self.position.forward(positions) + self.token_type.forward(types)));
        };
        let lookup = |table: &Tensor, ids: &Tensor| Tensor::embedding(table, ids, -1, false, false);
        let mut word = self.word.forward(ids);
        if self.new_rows > 0 {
            let start = self.cfg.vocab_size - self.new_rows;
            let own = lookup(&e.new_rows, &(ids - start).clamp_min(0));
            word = own.where_self(&ids.ge(start).unsqueeze(-1), &word);
        }
        let x = word + lookup(&e.position, positions) + lookup(&e.token_type, types);
        self.emb_norm.forward_with(&x, &e.norm_weight, &e.norm_bias)
    }

    /// # Shapes
    /// - `input_ids`: `[B, T]` int64; `attention_mask`: `[B, T]` (1 = token, 0 = padding)
    /// - see [`BertOutput`]
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, prompts: &Prompts, opts: &ForwardOptions) -> Result<BertOutput> {
        let s = input_ids.size();
        if s.len() != 2 || input_ids.kind() != Kind::Int64 {
            return Err(ModelError::Input(format!("input_ids must be int64 [batch, tokens], got {:?} {s:?}", input_ids.kind())));
        }
        let (b, t) = (s[0], s[1]);
        if t == 0 || b == 0 || t > self.cfg.max_position_embeddings {
            return Err(ModelError::Input(format!("{t} tokens: need 1..={} (max_position_embeddings)", self.cfg.max_position_embeddings)));
        }
        let (min, max) = (input_ids.min().int64_value(&[]), input_ids.max().int64_value(&[]));
        if min < 0 || max >= self.cfg.vocab_size {
            return Err(ModelError::Input(format!("token ids span {min}..={max}, vocabulary is 0..{}", self.cfg.vocab_size)));
        }
        prompts.validate(self.cfg.num_hidden_layers, b, self.cfg.hidden_size, self.cfg.num_attention_heads)?;
        if let Some(e) = prompts.embeddings {
            e.check(self.new_rows, self.cfg.hidden_size, self.cfg.max_position_embeddings, self.cfg.type_vocab_size)?;
        }
        if prompts.has_ssf() {
            return Err(ModelError::Input("SSF is implemented for the ViT only; the BERT encoder takes prompts, prefixes and adapters".into()));
        }
        let device = self.device();
        let mask = match attention_mask {
            Some(m) if m.size() != [b, t] => return Err(ModelError::Input(format!("attention_mask is {:?}, input_ids {:?}", m.size(), s))),
            Some(m) => m.to_kind(Kind::Float),
            None => Tensor::ones([b, t], (Kind::Float, device)),
        };
        let positions = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0);
        let types = Tensor::zeros([b, t], (Kind::Int64, device));
        let mut x = self.embed(input_ids, &positions, &types, prompts.embeddings);
        let mut mask = mask;
        let mut n_prompt = 0;
        let d = self.cfg.hidden_size;
        for (i, layer) in self.layers.iter().enumerate() {
            let lp = prompts.layer(i);
            if lp.is_some_and(|lp| lp.token_generator.is_some()) {
                return Err(ModelError::Input(format!("layer {i}: token generators (adaptive prompts) need a patch grid; BERT has none")));
            }
            if let Some(tokens) = lp.and_then(|lp| lp.tokens.as_ref()) {
                let p = tokens.size()[1];
                x = splice_prompt_tokens(&x, &tokens.to_kind(x.kind()).expand([b, p, d], false), n_prompt);
                mask = splice_prompt_tokens(&mask, &Tensor::ones([b, p], (Kind::Float, device)), n_prompt);
                n_prompt = p;
            }
            // transformers' extended mask: (1 − m) · finfo(float32).min.
            let additive = ((mask.ones_like() - &mask) * f64::from(f32::MIN)).view([b, 1, 1, -1]);
            x = layer.forward(&x, &additive, lp, opts);
        }
        let x = x.to_kind(Kind::Float);
        let (without_prompts, prompt_tokens) = split_prompt_tokens(&x, n_prompt);
        let hidden = if opts.keep_prompt_tokens { x } else { without_prompts };
        Ok(BertOutput { hidden, prompt_tokens })
    }
}

/// sentence-transformers' mean pooling over real tokens.
///
/// # Shapes
/// - `hidden`: `[B, T, D]`, `mask`: `[B, T]` → `[B, D]`
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(Kind::Float).unsqueeze(-1);
    (hidden * &m).sum_dim_intlist(1, false, Kind::Float) / m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1e-9)
}

/// Builds a frozen BERT in its own `VarStore` from Hugging Face weights, or
/// (with `path = None`) from a seeded random init.
pub fn frozen_bert(cfg: &BertConfig, path: Option<&Path>, device: Device) -> Result<(nn::VarStore, BertModel)> {
    cfg.validate()?;
    let mut vs = nn::VarStore::new(device);
    let model = match path {
        Some(path) => BertModel::from_safetensors(&mut vs, cfg, path)?,
        None => {
            let m = BertModel::new(vs.root(), cfg);
            vs.freeze();
            m
        }
    };
    Ok((vs, model))
}
