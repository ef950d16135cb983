//! The method table: a config's `method.name` → constructor. Adding a method
//! is one file in `methods/` plus one line here.

use crate::config::parse_params;
use crate::method::{ContinualMethod, DataScope, MethodContext};
use crate::methods::{coda_prompt, dualprompt, epi, finetune, hide_prompt, joint, l2p, norga, prototype, wave_cre};
use crate::{LearnerError, Result};

pub type Constructor = fn(&MethodContext, &toml::Table) -> Result<Box<dyn ContinualMethod>>;

/// (name, one-line description, constructor)
pub const METHODS: &[(&str, &str, Constructor)] = &[
    ("finetune-head", "sequential fine-tuning of a linear head on the frozen backbone (lower bound)", |c, p| {
        Ok(Box::new(finetune::Finetune::new(c, parse_params("finetune-head", p)?, false, DataScope::CurrentTask)?))
    }),
    ("finetune-full", "sequential fine-tuning of the whole backbone and head (lower bound)", |c, p| {
        Ok(Box::new(finetune::Finetune::new(c, parse_params("finetune-full", p)?, true, DataScope::CurrentTask)?))
    }),
    ("joint", "training on all data seen so far (upper bound)", |c, p| Ok(Box::new(joint::new(c, parse_params("joint", p)?)?))),
    ("prototype", "class-mean prototypes of frozen features, cosine classifier (SimpleCIL)", |c, p| {
        Ok(Box::new(prototype::Prototype::new(c, parse_params("prototype", p)?)?))
    }),
    ("l2p", "Learning to Prompt: key-matched prompt pool (Wang et al. 2022)", |c, p| Ok(Box::new(l2p::L2P::new(c, parse_params("l2p", p)?)?))),
    ("dualprompt", "G-prompt + per-task E-prompts, prefix-tuned (Wang et al. 2022)", |c, p| {
        Ok(Box::new(dualprompt::DualPrompt::new(c, parse_params("dualprompt", p)?)?))
    }),
    ("coda-prompt", "attention-weighted orthogonal prompt components (Smith et al. 2023)", |c, p| {
        Ok(Box::new(coda_prompt::CodaPrompt::new(c, parse_params("coda-prompt", p)?)?))
    }),
    ("hide-prompt", "TII + per-task prefix prompts + task-adaptive prediction (Wang et al. 2023)", |c, p| {
        Ok(Box::new(hide_prompt::HidePrompt::new(c, parse_params("hide-prompt", p)?, "hide-prompt")?))
    }),
    ("norga", "HiDe-Prompt with NoRGa's non-linear residual gate (Le et al. 2024)", |c, p| Ok(Box::new(norga::new(c, p)?))),
    ("wave-cre", "per-task prompt pools + Gaussian replay of relations, rehearsal-free CRE (Le et al. 2025)", |c, p| {
        Ok(Box::new(wave_cre::new(c, p)?))
    }),
    ("epi", "per-task prefix prompt chosen by Mahalanobis task identification (EPI, Wang et al. 2023)", |c, p| {
        Ok(Box::new(epi::Epi::new(c, parse_params("epi", p)?)?))
    }),
];

pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|(n, _, _)| *n).collect()
}

/// Builds a method by name; an unknown name lists the valid ones.
pub fn build(name: &str, ctx: &MethodContext, params: &toml::Table) -> Result<Box<dyn ContinualMethod>> {
    let Some((_, _, make)) = METHODS.iter().find(|(n, _, _)| *n == name) else {
        return Err(LearnerError::UnknownMethod { name: name.into(), valid: names().join(", ") });
    };
    // `regularizers = [...]` is for the wrapper, everything else for the method.
    let (params, regs) = crate::regularizer::split_params(params)?;
    crate::regularizer::wrap(name, make(ctx, &params)?, ctx, &regs)
}

/// Checks that a method name exists and its parameters parse, without building it.
pub fn check(name: &str, params: &toml::Table) -> Result<()> {
    let (params, _) = crate::regularizer::split_params(params)?;
    let params = &params;
    let parsed = match name {
        "finetune-head" | "finetune-full" => parse_params::<finetune::Params>(name, params).map(drop),
        "joint" => parse_params::<joint::Params>(name, params).map(drop),
        "prototype" => parse_params::<prototype::Params>(name, params).map(drop),
        "l2p" => parse_params::<l2p::Params>(name, params).map(drop),
        "dualprompt" => parse_params::<dualprompt::Params>(name, params).map(drop),
        "coda-prompt" => parse_params::<coda_prompt::Params>(name, params).map(drop),
        "hide-prompt" | "norga" => parse_params::<hide_prompt::Params>(name, params).map(drop),
        "wave-cre" => wave_cre::params(params).map(drop),
        "epi" => parse_params::<epi::Params>(name, params).map(drop),
        _ => Err(LearnerError::UnknownMethod { name: name.into(), valid: names().join(", ") }),
    };
    parsed
}
