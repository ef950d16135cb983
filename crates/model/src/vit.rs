//! Vision Transformer in timm layout (`timm.models.vision_transformer`), with
//! prompt hooks on every block.

use std::path::Path;

use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::attention::{attend, AttentionImpl};
use crate::config::ViTConfig;
use crate::error::{ModelError, Result};
use crate::layers::{linear, LayerNorm};
use crate::lora::{merge_layer, LayerLora, LoraTarget, QkvWeights};
use crate::prompt::{generated_tokens, splice_prompt_tokens, split_prompt_tokens, LayerPrompt, Prompts, Ssf, SsfBlock};
use crate::weights::load_strict;
use crate::Precision;

/// Per-call switches that are not prompts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Keep prompt tokens in `VitOutput::tokens` (they are always available
    /// separately in `VitOutput::prompt_tokens`).
    pub keep_prompt_tokens: bool,
    /// Collect each block's output in `VitOutput::hidden`.
    pub return_hidden: bool,
    /// Collect each block's input (the residual stream it reads, prompt
    /// tokens included) in `VitOutput::block_inputs`: what statistics of a
    /// layer's attention inputs are computed from (VPT-NSP).
    pub return_block_inputs: bool,
    pub attention: AttentionImpl,
}

/// What a forward pass returns; all tensors are fp32 whatever the compute dtype.
///
/// # Shapes
/// - `tokens`: `[B, 1 + N, D]` after the final norm (`[B, 1 + P + N, D]` with
///   prompt tokens kept), N patches, P prompt tokens
/// - `cls`: `[B, D]` — timm's `forward_head(pre_logits=True)` for `global_pool="token"`
/// - `patch_mean`: `[B, D]` — mean of the patch tokens (no class or prompt tokens)
/// - `prompt_tokens`: `[B, P, D]` when the call inserted prompt tokens
/// - `hidden`: one `[B, S, D]` per block (before the final norm) when asked for
/// - `block_inputs`: one `[B, S, D]` per block, the stream entering it, when asked for
/// - `logits`: `[B, num_classes]` when the model has a head
#[derive(Debug)]
pub struct VitOutput {
    pub tokens: Tensor,
    pub cls: Tensor,
    pub patch_mean: Tensor,
    pub prompt_tokens: Option<Tensor>,
    pub hidden: Vec<Tensor>,
    pub block_inputs: Vec<Tensor>,
    pub logits: Option<Tensor>,
}

#[derive(Debug)]
struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    num_heads: i64,
}

impl Attention {
    fn new(p: nn::Path, cfg: &ViTConfig) -> Self {
        let d = cfg.embed_dim;
        Self { qkv: linear(&p / "qkv", d, 3 * d, cfg.qkv_bias), proj: linear(&p / "proj", d, d, true), num_heads: cfg.num_heads }
    }

    /// # Shapes
    /// - `x`: `[B, N, D]` → `[B, N, D]`
    fn forward(&self, x: &Tensor, lp: Option<&LayerPrompt>, imp: AttentionImpl) -> Tensor {
        let s = x.size();
        let (b, n, c) = (s[0], s[1], s[2]);
        let ssf = lp.and_then(|lp| lp.ssf);
        let lora = lp.and_then(|lp| lp.lora);
        let qkv = self.qkv.forward(x);
        let qkv = match lora {
            Some(l) => l.add_fused_qkv(x, qkv),
            None => qkv,
        };
        let qkv = with_ssf(qkv, ssf.map(|s| &s.qkv));
        let qkv = qkv.reshape([b, n, 3, self.num_heads, c / self.num_heads]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let out =
            attend(&q, &k, &v, lp.and_then(|lp| lp.prefix.as_ref()), lp.and_then(|lp| lp.score_hook), lp.and_then(|lp| lp.zero_gate), None, imp);
        let out = out.transpose(1, 2).reshape([b, n, c]);
        let y = LayerLora::add_if(lora, LoraTarget::Out, &out, self.proj.forward(&out));
        with_ssf(y, ssf.map(|s| &s.proj))
    }
}

#[derive(Debug)]
struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Mlp {
    fn new(p: nn::Path, cfg: &ViTConfig) -> Self {
        Self { fc1: linear(&p / "fc1", cfg.embed_dim, cfg.mlp_hidden(), true), fc2: linear(&p / "fc2", cfg.mlp_hidden(), cfg.embed_dim, true) }
    }

    fn forward(&self, x: &Tensor, ssf: Option<&SsfBlock>) -> Tensor {
        // timm's Mlp uses nn.GELU (exact erf form); SSF's fc1 shift comes before it.
        let h = with_ssf(self.fc1.forward(x), ssf.map(|s| &s.fc1)).gelu("none");
        with_ssf(self.fc2.forward(&h), ssf.map(|s| &s.fc2))
    }
}

#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(p: nn::Path, cfg: &ViTConfig) -> Self {
        let eps = cfg.layer_norm_eps;
        Self {
            norm1: LayerNorm::new(&p / "norm1", cfg.embed_dim, eps),
            attn: Attention::new(&p / "attn", cfg),
            norm2: LayerNorm::new(&p / "norm2", cfg.embed_dim, eps),
            mlp: Mlp::new(&p / "mlp", cfg),
        }
    }

    /// `x` is the residual stream, fp32 whatever the weights are (as under
    /// autocast): each branch computes in the weights' dtype and is added back
    /// in fp32. With fp32 weights every cast is a no-op.
    /// An adapter reads the stream after the attention and is added beside
    /// the MLP: `x + MLP(norm2(x)) + adapter(x)` (PILOT's parallel option).
    fn forward(&self, x: &Tensor, lp: Option<&LayerPrompt>, imp: AttentionImpl) -> Tensor {
        let kind = self.attn.qkv.ws.kind();
        let ssf = lp.and_then(|lp| lp.ssf);
        let h = with_ssf(self.norm1.forward(x).to_kind(kind), ssf.map(|s| &s.norm1));
        let x = x + self.attn.forward(&h, lp, imp).to_kind(Kind::Float);
        let h = with_ssf(self.norm2.forward(&x).to_kind(kind), ssf.map(|s| &s.norm2));
        let out = &x + self.mlp.forward(&h, ssf).to_kind(Kind::Float);
        match lp.and_then(|lp| lp.adapter) {
            Some(a) => out + a.apply(&x.to_kind(kind)).to_kind(Kind::Float),
            None => out,
        }
    }
}

/// A timm-layout ViT. Parameter paths equal timm's state-dict keys
/// (`patch_embed.proj.weight`, `blocks.3.attn.qkv.bias`, `norm.weight`, …).
#[derive(Debug)]
pub struct VisionTransformer {
    cfg: ViTConfig,
    patch_embed: nn::Conv2D,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Option<nn::Linear>,
}

impl VisionTransformer {
    /// Builds the variables under `p`. `cfg` must have passed `validate()`.
    pub fn new(p: nn::Path, cfg: &ViTConfig) -> Self {
        debug_assert!(cfg.validate().is_ok(), "ViTConfig not validated");
        let d = cfg.embed_dim;
        let conv = nn::ConvConfig { stride: cfg.patch_size, ..Default::default() };
        // Init as timm's `init_weights`: small normal class token, trunc-normal(0.02)
        // position embedding; only matters for random-init runs (demo, benchmarks).
        let init_pos = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        Self {
            patch_embed: nn::conv2d(&p / "patch_embed" / "proj", cfg.in_chans, d, cfg.patch_size, conv),
            cls_token: p.var("cls_token", &[1, 1, d], nn::Init::Randn { mean: 0.0, stdev: 1e-6 }),
            pos_embed: p.var("pos_embed", &[1, 1 + cfg.num_patches(), d], init_pos),
            blocks: (0..cfg.depth).map(|i| Block::new(&p / "blocks" / i, cfg)).collect(),
            norm: LayerNorm::new(&p / "norm", d, cfg.layer_norm_eps),
            head: (cfg.num_classes > 0).then(|| linear(&p / "head", d, cfg.num_classes, true)),
            cfg: cfg.clone(),
        }
    }

    /// Builds the model in `vs` and loads a timm-named safetensors checkpoint
    /// strictly. A checkpoint for another image size has its position
    /// embedding resampled as timm's `checkpoint_filter_fn` does. The
    /// variables are frozen afterwards.
    pub fn from_safetensors(vs: &mut nn::VarStore, cfg: &ViTConfig, path: &Path) -> Result<Self> {
        cfg.validate()?;
        let model = Self::new(vs.root(), cfg);
        let ignore: &[&str] = if cfg.num_classes == 0 { &["head."] } else { &[] };
        let grid = cfg.grid_size();
        let adapt = |key: &str, t: Tensor, expected: &[i64]| -> Result<Tensor> {
            let s = t.size();
            let resamplable = key == "pos_embed" && s.len() == 3 && s[2] == expected[2] && s != expected && is_square(s[1] - 1);
            Ok(if resamplable { resample_pos_embed(&t, grid, grid) } else { t })
        };
        load_strict(vs, path, ignore, &adapt)?;
        vs.freeze();
        Ok(model)
    }

    /// Merges `lora` into layer `layer`'s frozen projections in place (PEFT's
    /// `merge`): afterwards the plain forward computes what the unmerged
    /// update did. Only updates shared by the batch (2-D factors) merge.
    pub fn merge_lora(&mut self, layer: usize, lora: &LayerLora) -> Result<()> {
        self.merge_signed(layer, lora, 1.0)
    }

    /// Subtracts what [`Self::merge_lora`] added (PEFT's `unmerge`; exact up to fp rounding).
    pub fn unmerge_lora(&mut self, layer: usize, lora: &LayerLora) -> Result<()> {
        self.merge_signed(layer, lora, -1.0)
    }

    fn merge_signed(&mut self, layer: usize, lora: &LayerLora, sign: f64) -> Result<()> {
        let (d, depth) = (self.cfg.embed_dim, self.cfg.depth);
        let block =
            self.blocks.get_mut(layer).ok_or_else(|| ModelError::Input(format!("LoRA for layer {layer}, but the model has {depth} layers")))?;
        let attn = &mut block.attn;
        merge_layer(lora, layer, d, QkvWeights::Fused(&mut attn.qkv.ws), &mut attn.proj.ws, sign)
    }

    /// The final norm's eps, when a method replaces that norm with a fresh
    /// one of another eps (SLCA's `nn.LayerNorm(768)`: 1e-5, the blocks' 1e-6).
    pub fn set_final_norm_eps(&mut self, eps: f64) {
        self.norm.set_eps(eps);
    }

    pub fn config(&self) -> &ViTConfig {
        &self.cfg
    }

    /// The dtype the backbone computes in (that of its weights).
    pub fn compute_kind(&self) -> Kind {
        self.patch_embed.ws.kind()
    }

    pub fn device(&self) -> Device {
        self.patch_embed.ws.device()
    }

    /// The frozen, un-prompted model's class-token feature, without autograd:
    /// the "query" of L2P / DualPrompt / HiDe-Prompt.
    ///
    /// # Shapes
    /// - `images`: `[B, C, H, W]` → `[B, D]`
    pub fn query(&self, images: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| Ok(self.forward(images, &Prompts::none())?.cls))
    }

    pub fn forward(&self, images: &Tensor, prompts: &Prompts) -> Result<VitOutput> {
        self.forward_with(images, prompts, &ForwardOptions::default())
    }

    /// # Shapes
    /// - `images`: `[B, in_chans, H, W]`, H and W multiples of the patch size
    ///   (another size than the config's resamples the position embedding)
    /// - see [`VitOutput`] for the outputs
    pub fn forward_with(&self, images: &Tensor, prompts: &Prompts, opts: &ForwardOptions) -> Result<VitOutput> {
        let cfg = &self.cfg;
        let (b, gh, gw) = self.check_images(images)?;
        prompts.validate(cfg.depth, b, cfg.embed_dim, cfg.num_heads)?;
        let kind = self.compute_kind();
        let d = cfg.embed_dim;

        if prompts.has_embeddings() {
            return Err(ModelError::Input("embedding tuning replaces BERT's embedding layer; the ViT takes none".into()));
        }
        prompts.validate_ssf(d, cfg.mlp_hidden())?;
        let x = with_ssf(images.to_kind(kind).apply(&self.patch_embed).flatten(2, 3).transpose(1, 2), prompts.ssf_embed);
        let pos =
            if gh == cfg.grid_size() && gw == cfg.grid_size() { self.pos_embed.shallow_clone() } else { resample_pos_embed(&self.pos_embed, gh, gw) };
        let cls = self.cls_token.to_kind(Kind::Float).expand([b, 1, d], false);
        let mut x = Tensor::cat(&[&cls, &x.to_kind(Kind::Float)], 1) + pos.to_kind(Kind::Float);

        let mut n_prompt = 0;
        let mut hidden = Vec::new();
        let mut block_inputs = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            let lp = prompts.layer(i);
            let generated = match lp.and_then(|lp| lp.token_generator) {
                Some(g) => Some(generated_tokens(g, &x, n_prompt, (gh, gw), i)?),
                None => None,
            };
            if let Some(tokens) = generated.as_ref().or(lp.and_then(|lp| lp.tokens.as_ref())) {
                let p = tokens.size()[1];
                x = splice_prompt_tokens(&x, &tokens.to_kind(Kind::Float).expand([b, p, d], false), n_prompt);
                n_prompt = p;
            }
            if opts.return_block_inputs {
                block_inputs.push(x.shallow_clone());
            }
            x = block.forward(&x, lp, opts.attention);
            if opts.return_hidden {
                hidden.push(x.to_kind(Kind::Float));
            }
        }

        let x = with_ssf(self.norm.forward(&x), prompts.ssf_final);
        let cls = x.select(1, 0);
        let (without_prompts, prompt_tokens) = split_prompt_tokens(&x, n_prompt);
        let patch_mean = x.narrow(1, 1 + n_prompt, x.size()[1] - 1 - n_prompt).mean_dim(1, false, Kind::Float);
        let tokens = if opts.keep_prompt_tokens { x } else { without_prompts };
        let logits = self.head.as_ref().map(|h| h.forward(&cls.to_kind(h.ws.kind())).to_kind(Kind::Float));
        Ok(VitOutput { tokens, cls, patch_mean, prompt_tokens, hidden, block_inputs, logits })
    }

    fn check_images(&self, images: &Tensor) -> Result<(i64, i64, i64)> {
        let s = images.size();
        let cfg = &self.cfg;
        if s.len() != 4 || s[1] != cfg.in_chans {
            return Err(ModelError::Input(format!("images must be [batch, {}, height, width], got {s:?}", cfg.in_chans)));
        }
        if s[0] == 0 {
            return Err(ModelError::Input("empty batch".into()));
        }
        let p = cfg.patch_size;
        if s[2] % p != 0 || s[3] % p != 0 || s[2] == 0 || s[3] == 0 {
            return Err(ModelError::Input(format!("image size {}x{} is not a positive multiple of the patch size {p}", s[2], s[3])));
        }
        if !matches!(images.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
            return Err(ModelError::Input(format!("images must be a float tensor (normalised), got {:?}", images.kind())));
        }
        Ok((s[0], s[2] / p, s[3] / p))
    }
}

/// Builds a frozen ViT in its own `VarStore` on `device`, from a checkpoint or
/// (with `path = None`) from a seeded random init, in the given precision.
pub fn frozen_vit(cfg: &ViTConfig, path: Option<&Path>, device: Device, precision: Precision) -> Result<(nn::VarStore, VisionTransformer)> {
    cfg.validate()?;
    let mut vs = nn::VarStore::new(device);
    let model = match path {
        Some(path) => VisionTransformer::from_safetensors(&mut vs, cfg, path)?,
        None => {
            let m = VisionTransformer::new(vs.root(), cfg);
            vs.freeze();
            m
        }
    };
    if precision == Precision::Bf16 {
        // As autocast: the matmul and convolution weights (and biases) compute in bf16; LayerNorm
        // parameters, the class token and the position embedding stay fp32, like the residual stream.
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                if !(name.contains("norm") || name == "cls_token" || name == "pos_embed") {
                    t.set_data(&t.to_kind(Kind::BFloat16));
                }
            }
        });
    }
    Ok((vs, model))
}

fn with_ssf(x: Tensor, ssf: Option<&Ssf>) -> Tensor {
    match ssf {
        Some(s) => s.apply(&x),
        None => x,
    }
}

fn is_square(n: i64) -> bool {
    let r = (n as f64).sqrt().round() as i64;
    n > 0 && r * r == n
}

/// timm's `resample_abs_pos_embed` with its defaults (bicubic, antialias=True,
/// one class-token prefix), computed in fp32.
///
/// # Shapes
/// - `pos`: `[1, 1 + g*g, D]` (square grid) → `[1, 1 + gh*gw, D]`
pub fn resample_pos_embed(pos: &Tensor, gh: i64, gw: i64) -> Tensor {
    let s = pos.size();
    let (n_old, d) = (s[1] - 1, s[2]);
    let old = (n_old as f64).sqrt().round() as i64;
    let kind = pos.kind();
    let grid = pos
        .narrow(1, 1, n_old)
        .to_kind(Kind::Float)
        .reshape([1, old, old, d])
        .permute([0, 3, 1, 2])
        .internal_upsample_bicubic2d_aa([gh, gw], false, None, None)
        .permute([0, 2, 3, 1])
        .reshape([1, gh * gw, d])
        .to_kind(kind);
    Tensor::cat(&[pos.narrow(1, 0, 1), grid], 1)
}
