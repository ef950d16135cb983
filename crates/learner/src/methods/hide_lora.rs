//! HiDe-LoRA (Wang et al., HiDe-PET, TPAMI 2024; `ivcylc/HiDe-PET`
//! `engines/hide_lora_wtp_and_tap_engine.py`, `peft/lora/hide_lora.py`):
//! HiDe-Prompt's stages (`hide_prompt.rs`) with task-specific LoRA in place
//! of the task prompts ([`crate::parts::lora`]). Each task trains its own k
//! and v updates in blocks 0–4 with the head, started from the previous
//! task's, mixed with the earlier tasks' after training (momentum 0.1, on A
//! and B), and TII routes every test sample to its task's update.
//!
//! Defaults from the official `imr_hidelora` README run and
//! `configs/imr_hidelora.py`: rank 5, `lora_alpha` 1 (scale 1/r; the
//! constructor's default, never passed), A `kaiming_uniform_` on the
//! `[in, r]` layout (`U(±1/√r)`), `--reg 0.001`, `--crct_epochs 30`,
//! `--ca_lr 0.005`, multi-centroid statistics (10 per class, diagonal
//! variance + 1e-4, `5 × batch` samples per centroid), head and LoRA in one
//! optimizer at one learning rate. The prompt stage's `--lr 0.01 --sched
//! cosine`, Adam and 50 epochs live in `[optim]`. What differs: the official
//! task identifier is a second ViT with one continually trained LoRA (its
//! `imr_continual_lora` run); here it is HiDe-Prompt's MLP on the frozen
//! query (`benchmarks/configs/README.md`, deviations).

use promptcl_model::LoraTarget;

use super::hide_prompt::{HidePrompt, Params};
use crate::parts::lora::{LoraInit, LoraSpec};
use crate::stats::StatsKind;
use crate::{MethodContext, Result};

pub fn defaults() -> Params {
    let lora = LoraSpec {
        rank: 5,
        alpha: 1.0,
        targets: vec![LoraTarget::K, LoraTarget::V],
        layers: vec![0, 1, 2, 3, 4],
        a_init: LoraInit::HidePet,
        init_from_previous: true,
        momentum: 0.1,
    };
    Params {
        layers: vec![],
        lora: Some(lora),
        reg: 0.001,
        head_lr_scale: 1.0,
        statistics: StatsKind::MultiCentroid,
        n_centroids: 10,
        align_per_centroid: true,
        align_epochs: 30,
        align_lr: 0.005,
        ..Params::default()
    }
}

pub fn new(ctx: &MethodContext, params: Params) -> Result<HidePrompt> {
    HidePrompt::new(ctx, params, "hide-lora")
}
