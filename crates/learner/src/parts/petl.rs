//! Parameter-efficient tuning modules on the backbone: AdaptFormer adapters
//! beside every block's MLP, SSF scale-and-shift after the ops of every
//! block (ViT), or VPT prompt tokens (every block's own, or the first
//! block's carried through), in the method's own store and initialised as
//! LAMDA-PILOT's `vit_adapter.py` / `vit_ssf.py` / `vpt.py` (drawn from
//! promptcl's seeded RNG). APER adapts them on the first task, RanPAC too;
//! the backbone stays frozen.

use promptcl_model::{AdaptFormer, Prompts, Ssf, SsfBlock};
use promptcl_stream::SplitMix64;
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::methods::common::{ce_step, gaussian, seeded_uniform, var_from, CosineHead};
use crate::{Backbone, Inputs, LearnerError, MethodContext, OptimConfig, Result, Stage, Step, TaskInfo};

/// Which modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PetlKind {
    /// AdaptFormer (PILOT `ffn_option = "parallel"`, no LayerNorm): ViT and BERT.
    Adapter,
    /// SSF after the patch embedding, norm1, qkv, proj, norm2, fc1, fc2 and the final norm: ViT only.
    Ssf,
    /// VPT-deep (PILOT `vpt_type = "deep"`): zero-initialised tokens appended to every block's
    /// input, their outputs dropped after the block.
    #[serde(rename = "vpt-deep")]
    VptDeep,
    /// VPT-shallow: tokens appended before the first block, carried through every block.
    #[serde(rename = "vpt-shallow")]
    VptShallow,
}

/// Module settings: the adapter's (PILOT's defaults: `ffn_num = 64`, scalar
/// 0.1, dropout 0.1) and VPT's number of tokens (`prompt_token_num`).
#[derive(Debug, Clone, Copy)]
pub struct PetlShape {
    pub width: i64,
    pub scale: f64,
    pub dropout: f64,
    pub prompt_tokens: i64,
}

struct AdapterVars {
    down_weight: Tensor,
    down_bias: Tensor,
    up_weight: Tensor,
    up_bias: Tensor,
}

/// `[scale, shift]` of one SSF place.
type SsfVars = [Tensor; 2];

pub struct Petl {
    kind: PetlKind,
    shape: PetlShape,
    adapters: Vec<AdapterVars>,
    /// Per block: norm1, qkv, proj, norm2, fc1, fc2.
    ssf_blocks: Vec<[SsfVars; 6]>,
    ssf_ends: Option<[SsfVars; 2]>,
    /// VPT: `[depth or 1, tokens, D]`.
    prompts: Option<Tensor>,
}

impl Petl {
    /// Under `p` (`adapter.<layer>.{down,up}.{weight,bias}`, `ssf.<place>.{scale,shift}` or `vpt.prompts`).
    pub fn new(p: &nn::Path, kind: PetlKind, shape: PetlShape, backbone: &Backbone, seed: u64) -> Result<Self> {
        let (depth, d) = (backbone.depth(), backbone.token_dim());
        let zeros = |dims: &[i64]| Tensor::zeros(dims, (Kind::Float, tch::Device::Cpu));
        let mut petl = Self { kind, shape, adapters: Vec::new(), ssf_blocks: Vec::new(), ssf_ends: None, prompts: None };
        match kind {
            PetlKind::Adapter => {
                if shape.width < 1 {
                    return Err(LearnerError::Invalid(format!("ffn_num must be at least 1, got {}", shape.width)));
                }
                for i in 0..depth {
                    let q = p / "adapter" / i;
                    // kaiming_uniform_(a=√5) on [r, D] is U(±1/√D); the rest zero, so the adapter starts as a no-op.
                    let bound = 1.0 / (d as f64).sqrt();
                    petl.adapters.push(AdapterVars {
                        down_weight: var_from(&(&q / "down"), "weight", seeded_uniform(seed, &[0xADA9, i as u64], &[shape.width, d], -bound, bound)),
                        down_bias: var_from(&(&q / "down"), "bias", zeros(&[shape.width])),
                        up_weight: var_from(&(&q / "up"), "weight", zeros(&[d, shape.width])),
                        up_bias: var_from(&(&q / "up"), "bias", zeros(&[d])),
                    });
                }
            }
            PetlKind::Ssf => {
                let hidden = backbone.mlp_hidden().ok_or_else(|| LearnerError::Invalid("petl = \"ssf\" needs a ViT backbone".into()))?;
                // N(1, 0.02) scales and N(0, 0.02) shifts, as `init_ssf_scale_shift`.
                let mut rng = SplitMix64::derive(seed, &[0x55F]);
                let mut place = |q: nn::Path, width: i64| -> SsfVars {
                    let mut draw = |mean: f64| {
                        let v: Vec<f32> = (0..width).map(|_| (mean + 0.02 * gaussian(&mut rng)) as f32).collect();
                        Tensor::from_slice(&v)
                    };
                    let scale = draw(1.0);
                    let shift = draw(0.0);
                    [var_from(&q, "scale", scale), var_from(&q, "shift", shift)]
                };
                for i in 0..depth {
                    let q = p / "ssf" / i;
                    petl.ssf_blocks.push([
                        place(&q / "norm1", d),
                        place(&q / "qkv", 3 * d),
                        place(&q / "proj", d),
                        place(&q / "norm2", d),
                        place(&q / "fc1", hidden),
                        place(&q / "fc2", d),
                    ]);
                }
                petl.ssf_ends = Some([place(p / "ssf" / "embed", d), place(p / "ssf" / "final", d)]);
            }
            PetlKind::VptDeep | PetlKind::VptShallow => {
                if shape.prompt_tokens < 1 {
                    return Err(LearnerError::Invalid(format!("prompt_tokens must be at least 1, got {}", shape.prompt_tokens)));
                }
                let rows = if kind == PetlKind::VptDeep { depth as i64 } else { 1 };
                // `nn.Parameter(torch.zeros(...))` in PILOT's `VPT_ViT`.
                petl.prompts = Some(var_from(&(p / "vpt"), "prompts", zeros(&[rows, shape.prompt_tokens, d])));
            }
        }
        Ok(petl)
    }

    pub fn kind(&self) -> PetlKind {
        self.kind
    }

    /// The backbone's feature with the modules in place (`train`: adapter dropout on).
    pub fn forward(&self, backbone: &Backbone, x: &Inputs, train: bool) -> Result<Tensor> {
        let adapters: Vec<AdaptFormer> = self
            .adapters
            .iter()
            .map(|a| AdaptFormer {
                down_weight: a.down_weight.shallow_clone(),
                down_bias: a.down_bias.shallow_clone(),
                up_weight: a.up_weight.shallow_clone(),
                up_bias: a.up_bias.shallow_clone(),
                scale: self.shape.scale,
                dropout: self.shape.dropout,
                train,
            })
            .collect();
        let ssf = |[scale, shift]: &SsfVars| Ssf { scale: scale.shallow_clone(), shift: shift.shallow_clone() };
        let blocks: Vec<SsfBlock> = self
            .ssf_blocks
            .iter()
            .map(|[n1, qkv, proj, n2, fc1, fc2]| SsfBlock {
                norm1: ssf(n1),
                qkv: ssf(qkv),
                proj: ssf(proj),
                norm2: ssf(n2),
                fc1: ssf(fc1),
                fc2: ssf(fc2),
            })
            .collect();
        let ends = self.ssf_ends.as_ref().map(|[e, f]| (ssf(e), ssf(f)));
        let mut prompts = Prompts::none();
        for (i, a) in adapters.iter().enumerate() {
            prompts = prompts.with_adapter(i, a);
        }
        for (i, b) in blocks.iter().enumerate() {
            prompts = prompts.with_ssf(i, b);
        }
        if let Some((e, f)) = &ends {
            prompts = prompts.with_ssf_ends(e, f);
        }
        if let Some(p) = &self.prompts {
            // Deep: each block's own tokens replace the previous block's; shallow: the first block's stay.
            for i in 0..p.size()[0] {
                prompts = prompts.with_tokens(i as usize, &p.narrow(0, i, 1));
            }
        }
        Ok(backbone.forward(x, &prompts)?.feature)
    }
}

/// The first-task adaptation APER and RanPAC share (PILOT stage 1): the
/// modules and a cosine head train on the first task's classes with the
/// run's optimizer; later tasks train nothing.
pub struct FirstTaskAdaptation {
    pub petl: Petl,
    head: CosineHead,
}

impl FirstTaskAdaptation {
    /// Under `root`: `petl.*` and `cosine_head.*`.
    pub fn new(root: &nn::Path, kind: PetlKind, shape: PetlShape, ctx: &MethodContext) -> Result<Self> {
        let petl = Petl::new(&(root / "petl"), kind, shape, &ctx.backbone, ctx.seed)?;
        Ok(Self { petl, head: CosineHead::new(root, ctx.feature_dim(), ctx.num_classes, ctx.seed) })
    }

    pub fn stages(&self, task: &TaskInfo, optim: &OptimConfig) -> Vec<Stage> {
        if task.task == 0 {
            vec![Stage::from_run("adapt", optim).only(&[("petl", 1.0), ("cosine_head", 1.0)])]
        } else {
            Vec::new()
        }
    }

    pub fn train_step(&self, backbone: &Backbone, x: &Inputs, labels: &Tensor, task: &TaskInfo) -> Result<Step> {
        let feats = self.petl.forward(backbone, x, true)?;
        // PILOT's head has the first task's classes only.
        Ok(ce_step(&self.head.forward(&feats), labels, task.classes.clone()))
    }

    /// The adapted feature, without autograd (dropout off).
    pub fn adapted(&self, backbone: &Backbone, x: &Inputs) -> Result<Tensor> {
        tch::no_grad(|| self.petl.forward(backbone, x, false))
    }

    /// The head's learned scale σ.
    pub fn sigma(&self) -> Tensor {
        self.head.sigma.detach()
    }
}
