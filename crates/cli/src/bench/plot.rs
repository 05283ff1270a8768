//! The PNG chart of a bench run.

use std::path::Path;

use super::Report;

/// Draws `report` to `path`.
///
/// # Errors
/// Not implemented yet.
pub fn plot(report: &Report, path: &Path) -> anyhow::Result<()> {
    let _ = (report, path);
    anyhow::bail!("plotting is not implemented yet")
}
