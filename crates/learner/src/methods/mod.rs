//! One method per file; the registry (`crate::registry`) lists them.

pub mod aper;
pub mod coda_prompt;
pub(crate) mod common;
pub mod dualprompt;
pub mod ease;
pub mod epi;
pub mod fecam;
pub mod finetune;
pub mod hide_lora;
pub mod hide_prompt;
pub mod joint;
pub mod l2p;
pub mod norga;
pub mod prototype;
pub mod ranpac;
pub mod slca;
pub mod vpt_nsp;
pub mod wave_cre;
