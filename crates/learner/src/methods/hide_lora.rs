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
//! cosine`, Adam and 50 epochs live in `[optim]`.
//!
//! TII as the official `imr_continual_lora` run (`engines/continual_pet_engine.py`):
//! the backbone under one LoRA of the same shape, shared by all tasks and
//! trained in every task's `tii` stage with a linear head (timm init; CE
//! masked to the task; from the second task the LoRA at `--slow_lr 0.1` × the
//! head's rate), statistics of its features after each task, and from the
//! second task its head realigned on `5 × batch` samples per centroid of every
//! seen class (`train_task_adaptive_prediction`, the same as TAP). The
//! official code runs it as a separate job and loads its checkpoints; here it
//! is the `tii` and `tii-align` stages of the same run (per task the two are
//! independent, as in HiDe-Prompt).

use promptcl_model::LoraTarget;

use super::hide_prompt::{HidePrompt, Params};
use crate::parts::lora::{LoraInit, LoraSpec};
use crate::parts::tii::TiiNet;
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
    // `ContinualLora`: the same sites, rank and init, one set trained on.
    let tii_lora = LoraSpec { init_from_previous: false, momentum: 0.0, ..lora.clone() };
    Params {
        layers: vec![],
        lora: Some(lora),
        tii_lora: Some(tii_lora),
        tii_lora_lr_scale: 0.1,
        tii_net: TiiNet::Linear,
        tii_align_samples_factor: 5,
        tii_align_epochs: 30,
        tii_align_lr: 0.005,
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
