//! Reusable pieces of methods: what HiDe-Prompt, NoRGa, WAVE-CRE, EPI and
//! HierC are composed of, and what later methods compose.
//!
//! - [`task_prompts`]: per-task prefix prompts (or keyed pools, or one shared pool), trained only
//!   in their own task, copy-initialised, momentum-mixed; written into
//!   `Prompts` once for every prefix method.
//! - [`tii`]: task-identity inference from the frozen query (an MLP + head
//!   trained on the task, refined on Gaussian pseudo-queries).
//! - [`adaptive_prompt`]: VAPT's adaptive prompt tokens, made from the previous block's patches, per task.
//! - [`alignment`]: Gaussian class statistics as a generator of pseudo-feature
//!   batches, and the stage that retrains a head on them.
//! - [`classifier`]: a linear head or a ReLU MLP over features (WAVE-CRE's relation classifier and task predictor).
//! - [`embedding_tuning`]: BERT's marker rows, position and token-type embeddings and embedding LayerNorm trained on the first task (WAVE-CRE's group code).
//! - [`gate`]: NoRGa's non-linear residual gate on the prefix logits, and task-specific zero-initialised gates.
//! - [`shared_experts`]: the one gate and LoRA of a method that infers no task (CODA-Prompt, L2P's prefix pool).
//! - [`lora`]: task-specific LoRA on the attention projections, routed per sample by task identity (HiDe-LoRA).
//! - [`prompt_param`]: how prefixes are made from parameters: direct, reparameterised by an MLP, through the frozen projections, non-linear.
//! - [`petl`]: AdaptFormer adapters or SSF on the backbone (APER, RanPAC).
//! - [`prototypes`]: class-mean prototypes and their cosine classifier (SimpleCIL, APER).
//! - [`ridge`]: a ridge classifier on accumulated Gram statistics with λ chosen per task (RanPAC).
//! - [`null_space`]: prompts as prefixes through the frozen attention, and the null-space projection of their updates (VPT-NSP).

pub mod adaptive_prompt;
pub mod alignment;
pub mod classifier;
pub mod embedding_tuning;
pub mod gate;
pub mod lora;
pub mod null_space;
pub mod petl;
pub mod prompt_param;
pub mod prototypes;
pub mod ridge;
pub mod shared_experts;
pub mod task_prompts;
pub mod tii;

use tch::{Device, Tensor};

/// Whose per-task experts (prompts, gates, LoRA, adaptive prompts) a forward pass uses.
#[derive(Clone, Copy)]
pub enum Route<'a> {
    /// The whole batch is of this task (training, per-task statistics).
    Task(usize),
    /// Per sample (`[B]` task ids, int64): inference under task identity.
    Samples(&'a Tensor),
}

/// Trains only `vars[current]`: the others stop taking gradients (and lose
/// any they have), so a finished task's parameters stay bit-identical.
pub fn train_only(vars: &mut [Tensor], current: usize) {
    for (i, v) in vars.iter_mut().enumerate() {
        if i != current {
            v.zero_grad();
        }
        let _ = v.set_requires_grad(i == current);
    }
}

/// Starts `vars[t]` as a copy of `vars[t − 1]` (the official
/// `shared_prompt_pool` transfer at the start of each task): values only,
/// outside the graph. Nothing to copy for the first task.
pub fn copy_previous(vars: &mut [Tensor], t: usize) {
    if t > 0 {
        tch::no_grad(|| {
            let prev = vars[t - 1].copy();
            vars[t].copy_(&prev);
        });
    }
}

/// Per-sample task ids `[B]` (int64 on `device`), the form [`Route::Samples`] takes.
pub fn task_ids(tasks: &[usize], device: Device) -> Tensor {
    Tensor::from_slice(&tasks.iter().map(|&t| t as i64).collect::<Vec<_>>()).to_device(device)
}
