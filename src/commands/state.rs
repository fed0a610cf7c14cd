//! `state push | pull | history | restore` and `unlock`: moving a stack's state into the team's
//! bucket, looking at it, bringing back an earlier version, and removing a dead run's lock.

use std::sync::Arc;

use crate::cli::{GlobalArgs, StateArgs, StateCommand, UnlockArgs};
use crate::exit::{CliError, CliResult, Diagnostic, ExitStatus};
use crate::ops::confirm;
use crate::ops::stack::{self, shared_store, stack_name};
use crate::printer::{Printer, table};
use crate::state::{self, LocalStore, StateStore};
use crate::state_bucket::{History, SharedStore};

/// The stack and the shared store the flags and config name; refused without a shared state.
/// Says first which bucket, account and principal it works with, as every command that talks
/// to AWS does.
async fn shared(global: &GlobalArgs, printer: &Printer, command: &str) -> Result<(String, SharedStore), CliError> {
    let (stack, _) = stack_name(global)?;
    let Some(url) = stack::state_url(global)? else {
        return Err(Diagnostic::new(format!("`{command}` works on a shared state, and none is named"))
            .with_help("pass --state-url s3://BUCKET/PREFIX (or set GITLAB_PROVISION_STATE, or `state` in the config); `gitlab-provision init --shared-state BUCKET` creates the bucket")
            .into());
    };
    let store = shared_store(global, url).await?;
    let region = global.region.clone().or(stack::file_settings(global)?.region);
    let (_, identity) = crate::aws::credentials::connect(region.as_deref(), global.profile.as_deref()).await?;
    printer.heading(&format!(
        "stack {stack} · {} · account {} as {}",
        store.0.url,
        identity.account,
        stack::short_arn(&identity.arn)
    ));
    Ok((stack, store))
}

pub async fn run(global: &GlobalArgs, args: StateArgs) -> CliResult {
    let printer = Printer::new(global, false);
    match args.command {
        StateCommand::Push => push(global, &printer).await,
        StateCommand::Pull { out } => {
            let (stack, store) = shared(global, &printer, "state pull").await?;
            let Some((bytes, _)) = store.0.current(&stack).await? else {
                return Err(nothing_shared(&stack, &store));
            };
            // Checked as any run would read it, so what is pulled is a state this tool accepts.
            state::parse(&bytes, std::path::Path::new(&store.location(&stack)), &stack)?;
            match out {
                Some(path) => {
                    state::write_file(&path, &bytes)?;
                    printer.note(&format!("wrote {} to {}", store.location(&stack), path.display()));
                }
                None => crate::printer::write_stdout(&String::from_utf8_lossy(&bytes)),
            }
            Ok(ExitStatus::Success)
        }
        StateCommand::History { json } => {
            let (stack, store) = shared(global, &printer, "state history").await?;
            let versions = store.0.history(&stack).await?;
            if json {
                let history = History { location: store.location(&stack), stack, versions };
                printer.json("state-history", &history)?;
                return Ok(ExitStatus::Success);
            }
            if versions.is_empty() {
                return Err(nothing_shared(&stack, &store));
            }
            let rows: Vec<Vec<String>> = versions
                .iter()
                .map(|v| {
                    let what = match (v.deleted, v.latest) {
                        (true, _) => "retired by down".to_string(),
                        (false, true) => format!("{} bytes, current", v.bytes),
                        (false, false) => format!("{} bytes", v.bytes),
                    };
                    vec![v.version.clone(), v.saved_at.clone(), what]
                })
                .collect();
            printer.out(&table(&["VERSION", "SAVED", ""], &rows));
            Ok(ExitStatus::Success)
        }
        StateCommand::Restore { version_id, yes } => restore(global, &printer, &version_id, yes).await,
    }
}

fn nothing_shared(stack: &str, store: &SharedStore) -> CliError {
    Diagnostic::new(format!("stack {stack} has no state in {}", store.location(stack)))
        .with_help("`gitlab-provision list` shows the stacks the bucket holds; `state push` moves a local state there")
        .into()
}

/// Moves `--state-dir`'s state into the bucket: written only where the bucket has none, then
/// the local file is renamed `.pushed` so no run works from it by mistake.
async fn push(global: &GlobalArgs, printer: &Printer) -> CliResult {
    let (stack, store) = shared(global, printer, "state push").await?;
    let local = LocalStore::at(&global.state_dir);
    // The local lock first: no run may be writing the file while it is read and moved.
    let (local_lock, _) = local.lock(&stack, "state push").await?;
    let Some((bytes, _)) = local.load(&stack).await? else {
        let pushed = state::state_path(&global.state_dir, &stack).with_extension("json.pushed");
        if pushed.exists() {
            return Err(Diagnostic::new(format!(
                "stack {stack} was already pushed ({} is what was moved); its state is in {}",
                pushed.display(),
                store.location(&stack)
            ))
            .with_help("nothing to do: every run works on the shared state now")
            .into());
        }
        return Err(Diagnostic::new(format!("stack {stack} has no local state at {}", local.location(&stack)))
            .with_help("pass --state-dir DIR where the state file is, and --stack NAME")
            .into());
    };
    let recorded = state::parse(&bytes, std::path::Path::new(&local.location(&stack)), &stack)?;
    refuse_an_older_copy(&store, &stack, &recorded).await?;
    let (shared_lock, _) = store.lock(&stack, "state push").await?;
    let written = store.save(&stack, bytes, None).await;
    shared_lock.release().await;
    if let Err(state::StateError::Conflict { .. }) = written {
        local_lock.release().await;
        return Err(Diagnostic::new(format!(
            "{} already holds a state for stack {stack}; nothing was written, the local state is untouched",
            store.location(&stack)
        ))
        .with_help("compare them (`gitlab-provision state pull`); to replace the shared one, `state restore` an earlier version or remove it with the bucket owner")
        .into());
    }
    written?;
    let path = state::state_path(&global.state_dir, &stack);
    let moved = path.with_extension("json.pushed");
    std::fs::rename(&path, &moved)?;
    local_lock.release().await;
    printer.out(&format!(
        "pushed stack {stack} (serial {}, {} resources) to {}; the local file is now {}",
        recorded.serial,
        recorded.resources.len(),
        store.location(&stack),
        moved.display()
    ));
    printer.note(&format!(
        "every run now needs the shared state: put `state = \"{}\"` in the config, or pass --state-url",
        store.0.url
    ));
    Ok(ExitStatus::Success)
}

/// A local copy of a state the bucket held since (same lineage, a serial not above the
/// bucket's latest) is older than what the team worked from: pushing it would bring back
/// resources a later run deleted, or forget ones it made.
async fn refuse_an_older_copy(store: &SharedStore, stack: &str, local: &state::State) -> Result<(), CliError> {
    let history = store.0.history(stack).await?;
    let Some(latest) = history.iter().find(|v| !v.deleted) else { return Ok(()) };
    let Some(bytes) = store.0.version(stack, &latest.version).await? else { return Ok(()) };
    let Ok(theirs) = state::parse(&bytes, std::path::Path::new(&store.location(stack)), stack) else { return Ok(()) };
    if theirs.lineage != local.lineage || theirs.serial < local.serial {
        return Ok(());
    }
    let retired = if history.first().is_some_and(|v| v.deleted) { ", since retired by `down`" } else { "" };
    Err(Diagnostic::new(format!(
        "{} held a later state of this very stack (serial {}, saved {}{retired}) than this copy (serial {}); nothing was written",
        store.location(stack),
        theirs.serial,
        latest.saved_at,
        local.serial
    ))
    .with_help("work from the shared state (`gitlab-provision state history`, `state restore VERSION`); an old local copy would bring back what a later run changed")
    .into())
}

/// Brings an earlier version back as the current state, under the stack's lock, with a serial
/// above the current one (a saved plan of the replaced state is then refused).
async fn restore(global: &GlobalArgs, printer: &Printer, version: &str, yes: bool) -> CliResult {
    let (stack, store) = shared(global, printer, "state restore").await?;
    let Some(bytes) = store.0.version(&stack, version).await? else {
        return Err(Diagnostic::new(format!("{} has no version {version:?}", store.location(&stack)))
            .with_help("`gitlab-provision state history` lists the versions")
            .into());
    };
    let mut earlier = state::parse(&bytes, std::path::Path::new(&store.location(&stack)), &stack)?;
    if store.0.current(&stack).await?.is_some_and(|(current, _)| current == bytes) {
        printer.out(&format!("version {version} is stack {stack}'s current state; nothing to do"));
        return Ok(ExitStatus::Success);
    }
    confirm(
        printer,
        &format!(
            "version {version} (serial {}, {} resources) replaces the current state of stack {stack}",
            earlier.serial,
            earlier.resources.len()
        ),
        "Make it the current state?",
        yes,
        "pass --yes to confirm",
    )?;
    let store: Arc<dyn StateStore> = Arc::new(store);
    let (lock, _) = store.lock(&stack, "state restore").await?;
    let current = store.load(&stack).await;
    let result = async {
        let (current_serial, revision) = match current? {
            Some((bytes, revision)) => {
                let serial = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["serial"].as_u64())
                    .unwrap_or_default();
                (serial, revision)
            }
            None => (0, None),
        };
        earlier.serial = current_serial.max(earlier.serial) + 1;
        let json = serde_json::to_vec_pretty(&earlier).map_err(anyhow::Error::from)?;
        store.save(&stack, json, revision).await?;
        Ok::<u64, CliError>(earlier.serial)
    }
    .await;
    lock.release().await;
    let serial = result?;
    printer.out(&format!(
        "stack {stack}'s state is version {version} again ({} resources), saved as serial {serial}",
        earlier.resources.len()
    ));
    Ok(ExitStatus::Success)
}

/// Removes a lock a dead run left, after showing its holder and asking.
pub async fn unlock(global: &GlobalArgs, args: UnlockArgs) -> CliResult {
    let printer = Printer::new(global, false);
    let (stack, store) = shared(global, &printer, "unlock").await?;
    let Some(holder) = store.0.read_lock(&stack).await? else {
        printer.out(&format!("stack {stack} is not locked; nothing to do"));
        return Ok(ExitStatus::Success);
    };
    if holder.id != args.lock_id {
        return Err(Diagnostic::new(format!(
            "stack {stack}'s lock is {} ({}), not {}; it was left alone",
            holder.id,
            holder.describe(),
            args.lock_id
        ))
        .with_help("copy the id from the refused run's message, or from `gitlab-provision list`")
        .into());
    }
    confirm(
        &printer,
        &format!(
            "stack {stack} is locked by {}; remove the lock only if that run is dead: a live run would race the next one",
            holder.describe()
        ),
        "Remove the lock?",
        args.yes,
        "pass --yes once you know that run is dead",
    )?;
    if store.0.remove_lock(&stack, &args.lock_id).await? {
        printer.out(&format!("removed the lock of stack {stack} ({})", holder.describe()));
    } else {
        printer.out(&format!("the lock of stack {stack} was already gone"));
    }
    Ok(ExitStatus::Success)
}
