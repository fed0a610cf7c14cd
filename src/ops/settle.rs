//! What `up` does first: finish or roll back a day-two operation whose run died.

use std::sync::Arc;

use super::journal::Journal;
use crate::aws::Ctx;
use crate::exit::CliError;
use crate::printer::Printer;
use crate::state::StateHandle;

/// A day-two operation the state records as in progress, when `up` runs, is one whose run died
/// (it held the stack's lock, which `up` now has): `up` is never blocked by it. It rolls back what
/// cannot be finished here (a backup's job stopped, a restore that had not switched abandoned) and
/// starts GitLab again if the operation stopped it; the converge that follows finishes the rest.
pub async fn settle_dead_operation(ctx: &Arc<Ctx>, state: &StateHandle, printer: &Printer) -> Result<(), CliError> {
    match Journal::current(state)? {
        None => Ok(()),
        Some(Journal::Backup(journal)) => super::backup::settle_dead(ctx, state, printer, &journal).await,
        Some(Journal::Restore(journal)) => super::restore::settle_dead(ctx, state, printer, &journal).await,
        Some(Journal::Upgrade(journal)) => {
            super::upgrade::settle_dead(printer, &journal)?;
            Journal::write(state, None).await
        }
    }
}
