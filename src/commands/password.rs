use anyhow::Context as _;

use super::{UserError, context, stack_name};
use crate::cli::GlobalArgs;
use crate::state;
use crate::steps::secret::{KEY_ROOT_SECRET, read_password};

/// Prints exactly the password and a newline: `gitlab-provision password | pbcopy` works.
pub async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    let (stack, _) = stack_name(global)?;
    let recorded = state::read(&global.state_dir, &stack)?;
    let Some(secret) = recorded.as_ref().and_then(|s| s.resources.get(KEY_ROOT_SECRET)).and_then(|r| r.id.clone())
    else {
        return Err(UserError(format!(
            "stack {stack} has no root secret recorded\n    help: run `gitlab-provision up` first"
        ))
        .into());
    };
    let region = recorded.map(|s| s.region);
    let ctx = context(&stack, region.as_deref(), global.profile.as_deref()).await?;
    let password = read_password(&ctx, &secret).await.context("reading the root password")?;
    println!("{password}");
    Ok(())
}
