//! `password`: the root password and nothing else, for scripts.

use anyhow::Context as _;

use super::{connect, stack_name};
use crate::cli::GlobalArgs;
use crate::exit::{CliResult, Diagnostic, ExitStatus};
use crate::keys;
use crate::printer::Printer;
use crate::state;
use crate::steps::secret::read_password;

/// Prints exactly the password and a newline: `gitlab-provision password | pbcopy` works.
pub async fn run(global: &GlobalArgs) -> CliResult {
    let (stack, _) = stack_name(global)?;
    let printer = Printer::new(global, false);
    let recorded = state::read(&global.state_dir, &stack)?;
    let Some(secret) = recorded.as_ref().and_then(|s| s.resources.get(keys::ROOT_SECRET)).and_then(|r| r.id.clone())
    else {
        return Err(Diagnostic::new(format!(
            "stack {stack} has no root secret recorded in {}",
            global.state_dir.display()
        ))
        .with_help("run `gitlab-provision up` first (or pass --state-dir)")
        .into());
    };
    let region = recorded.as_ref().map(|s| s.region.clone());
    let ctx = connect(global, &stack, region.as_deref(), recorded.as_ref(), &printer).await?;
    let password = read_password(&ctx, &secret).await.context("reading the root password")?;
    printer.out(&password);
    Ok(ExitStatus::Success)
}
