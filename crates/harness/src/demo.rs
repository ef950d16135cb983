//! Placeholder replaced below.
use anyhow::Result;
pub fn run(_device: &str, _quiet: bool) -> Result<()> {
    anyhow::bail!("demo not built yet")
}
