//! `password`: the root password and nothing else, for scripts.

use anyhow::Context as _;

use crate::cli::GlobalArgs;
use crate::exit::{CliResult, Diagnostic, ExitStatus};
use crate::keys;
use crate::ops::stack::{Reached, reach};
use crate::printer::Printer;
use crate::steps::secret::read_password;

/// Prints exactly the password and a newline: `gitlab-provision password | pbcopy` works.
pub async fn run(global: &GlobalArgs) -> CliResult {
    let printer = Printer::new(global, false);
    let Reached { stack, recorded, ctx } = reach(global, &printer).await?;
    let Some(secret) = recorded.resources.get(keys::ROOT_SECRET).and_then(|r| r.id.clone()) else {
        return Err(Diagnostic::new(format!("stack {stack} has no root secret recorded"))
            .with_help("run `gitlab-provision up` first: it creates the root secret")
            .into());
    };
    let password = read_password(&ctx, &secret).await.context("reading the root password")?;
    printer.out(&password);
    Ok(ExitStatus::Success)
}
