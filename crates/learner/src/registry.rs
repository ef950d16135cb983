//! The method table: one entry per method — its name, a one-line
//! description, its typed parameters with their defaults, and its builder.
//! Adding a method is one file in `methods/` plus one `entry!` line here;
//! parsing, checking and `promptcl methods --params` all read the same entry,
//! so a method cannot half-exist.

use crate::method::{ContinualMethod, DataScope, MemoryNeed, MethodContext, Sizes};
use crate::methods::{
    aper, coda_prompt, dualprompt, ease, epi, fecam, finetune, hide_lora, hide_prompt, joint, l2p, norga, prototype, ranpac, slca, vpt_nsp, wave_cre,
};
use crate::params::{describe, parse_over};
use crate::{LearnerError, Result};

pub struct MethodEntry {
    pub name: &'static str,
    pub about: &'static str,
    /// Parses `[method.params]` (the method's part) without building anything.
    pub check: fn(&toml::Table) -> Result<()>,
    /// Every parameter with its default and doc comment.
    pub describe: fn() -> String,
    pub build: fn(&MethodContext, &toml::Table) -> Result<Box<dyn ContinualMethod>>,
    /// Bytes the method will hold beyond the backbone, when that can be large
    /// (checked before any data is read).
    pub memory: fn(&toml::Table, &Sizes) -> Result<Option<MemoryNeed>>,
}

impl std::fmt::Debug for MethodEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)
    }
}

/// `entry!(name, about, Params type, defaults, builder(ctx, params))`.
macro_rules! entry {
    // With a check and a memory need, both from the parsed parameters.
    ($name:literal, $about:literal, $params:ty, $defaults:expr, $build:expr, $validate:expr, $memory:expr) => {
        MethodEntry {
            memory: |t, s| Ok(($memory)(&parse_over::<$params>($name, &$defaults, t)?, s)),
            ..entry!($name, $about, $params, $defaults, $build, $validate)
        }
    };
    // With a check of the parsed parameters, run at config validation (before any data is read).
    ($name:literal, $about:literal, $params:ty, $defaults:expr, $build:expr, $validate:expr) => {
        MethodEntry { check: |t| ($validate)(&parse_over::<$params>($name, &$defaults, t)?), ..entry!($name, $about, $params, $defaults, $build) }
    };
    ($name:literal, $about:literal, $params:ty, $defaults:expr, $build:expr) => {
        MethodEntry {
            name: $name,
            about: $about,
            check: |t| parse_over::<$params>($name, &$defaults, t).map(drop),
            describe: || describe::<$params>(&$defaults),
            build: |ctx, t| {
                let p: $params = parse_over($name, &$defaults, t)?;
                Ok(Box::new(($build)(ctx, p)?))
            },
            memory: |_, _| Ok(None),
        }
    };
}

pub const METHODS: &[MethodEntry] = &[
    entry!(
        "finetune-head",
        "sequential fine-tuning of a linear head on the frozen backbone (lower bound)",
        finetune::Params,
        finetune::Params::default(),
        |c, p| { finetune::Finetune::new(c, p, finetune::Trains::Head, DataScope::CurrentTask) }
    ),
    entry!(
        "finetune-full",
        "sequential fine-tuning of the whole backbone and head (lower bound)",
        finetune::Params,
        finetune::Params::default(),
        |c, p| { finetune::Finetune::new(c, p, finetune::Trains::Backbone, DataScope::CurrentTask) }
    ),
    entry!("joint", "training on all data seen so far (upper bound)", joint::Params, joint::Params::default(), joint::new),
    entry!(
        "simplecil",
        "class-mean prototypes of frozen features, cosine classifier (SimpleCIL, Zhou et al. 2023)",
        prototype::Params,
        prototype::Params::default(),
        prototype::Prototype::new
    ),
    entry!(
        "aper",
        "first-task adapters or SSF, then prototypes of frozen + adapted features (APER, Zhou et al. 2024)",
        aper::Params,
        aper::Params::default(),
        aper::Aper::new
    ),
    entry!(
        "ranpac",
        "first-task adapters, then a random projection and a ridge classifier on accumulated statistics (RanPAC, McDonnell et al. 2023)",
        ranpac::Params,
        ranpac::Params::default(),
        ranpac::RanPac::new,
        ranpac::Params::validate,
        ranpac::Params::memory
    ),
    entry!(
        "fecam",
        "per-class shrunk covariances of frozen features, Mahalanobis classifier (FeCAM, Goswami et al. 2023)",
        fecam::Params,
        fecam::Params::default(),
        fecam::FeCam::new
    ),
    entry!(
        "fecam-pilot",
        "FeCAM as LAMDA-PILOT runs it: first-task adapters, corrcoef(S + 100·I) of raw adapted features (models/fecam.py)",
        fecam::PilotParams,
        fecam::PilotParams::default(),
        fecam::FeCam::pilot
    ),
    entry!(
        "slca",
        "slow fine-tuning of the whole backbone, per-task heads aligned on Gaussian pseudo-features (SLCA, Zhang et al. 2023)",
        slca::Params,
        slca::Params::default(),
        slca::Slca::new
    ),
    entry!(
        "ease",
        "a fresh adapter subspace per task, old classes' prototypes completed in new subspaces (EASE, Zhou et al. 2024)",
        ease::Params,
        ease::Params::default(),
        ease::Ease::new,
        ease::Params::validate
    ),
    entry!("l2p", "Learning to Prompt: key-matched prompt pool (Wang et al. 2022)", l2p::Params, l2p::Params::default(), l2p::L2P::new),
    entry!(
        "dualprompt",
        "G-prompt + per-task E-prompts, prefix-tuned (Wang et al. 2022)",
        dualprompt::Params,
        dualprompt::Params::default(),
        dualprompt::DualPrompt::new
    ),
    entry!(
        "coda-prompt",
        "attention-weighted orthogonal prompt components (Smith et al. 2023)",
        coda_prompt::Params,
        coda_prompt::Params::default(),
        coda_prompt::CodaPrompt::new
    ),
    entry!(
        "hide-prompt",
        "TII + per-task prefix prompts + task-adaptive prediction (Wang et al. 2023)",
        hide_prompt::Params,
        hide_prompt::Params::default(),
        |c, p| { hide_prompt::HidePrompt::new(c, p, "hide-prompt") }
    ),
    entry!(
        "hide-lora",
        "HiDe-Prompt's stages with task-specific LoRA routed by TII (HiDe-PET, Wang et al. 2024)",
        hide_prompt::Params,
        hide_lora::defaults(),
        hide_lora::new
    ),
    entry!("norga", "HiDe-Prompt with NoRGa's non-linear residual gate (Le et al. 2024)", hide_prompt::Params, norga::defaults(), norga::new),
    entry!(
        "wave-cre",
        "per-task prompt pools + Gaussian replay of relations, rehearsal-free CRE (Le et al. 2025)",
        hide_prompt::Params,
        wave_cre::defaults(),
        wave_cre::new
    ),
    entry!(
        "vpt-nsp",
        "shared per-layer prompts whose Adam updates are projected towards a null space of earlier tasks' attention (VPT-NSP, Lu et al. 2024)",
        vpt_nsp::Params,
        vpt_nsp::Params::default(),
        vpt_nsp::VptNsp::new,
        vpt_nsp::Params::validate
    ),
    entry!(
        "epi",
        "per-task prefix prompt chosen by Mahalanobis task identification (EPI, Wang et al. 2023)",
        epi::Params,
        epi::Params::default(),
        epi::Epi::new
    ),
];

pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|e| e.name).collect()
}

/// Older names that still work: (alias, method).
pub const ALIASES: &[(&str, &str)] = &[("prototype", "simplecil")];

pub fn entry(name: &str) -> Result<&'static MethodEntry> {
    let name = ALIASES.iter().find(|(alias, _)| *alias == name).map_or(name, |(_, to)| to);
    METHODS.iter().find(|e| e.name == name).ok_or_else(|| {
        let valid = names();
        let hint = crate::config::closest(name, &valid).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
        LearnerError::UnknownMethod { name: name.into(), hint, valid: valid.join(", ") }
    })
}

/// Builds a method by name; an unknown name lists the valid ones.
pub fn build(name: &str, ctx: &MethodContext, params: &toml::Table) -> Result<Box<dyn ContinualMethod>> {
    let e = entry(name)?;
    // `regularizers = [...]` is for the wrapper, everything else for the method.
    let (params, regs) = crate::regularizer::split_params(params)?;
    crate::regularizer::wrap(name, (e.build)(ctx, &params)?, ctx, &regs)
}

/// What the method will hold beyond the backbone, where that can be large.
pub fn memory_need(name: &str, params: &toml::Table, sizes: &Sizes) -> Result<Option<MemoryNeed>> {
    let e = entry(name)?;
    let (params, _) = crate::regularizer::split_params(params)?;
    (e.memory)(&params, sizes)
}

/// Checks that a method name exists and its parameters parse, without building it.
pub fn check(name: &str, params: &toml::Table) -> Result<()> {
    let e = entry(name)?;
    let (params, _) = crate::regularizer::split_params(params)?;
    (e.check)(&params)
}
