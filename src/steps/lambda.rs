//! Lambda: the stack's functions (the EFS initializer, which exists only while it runs; the
//! function that wakes a sleeping GitLab): their packages, waiting until one is active, and the
//! kind's read, find, delete and discovery.

use std::io::Write as _;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_lambda::types::State;

use crate::aws::{Ctx, if_there};
use crate::engine::{Conflict, Discovered, Found, Live, Lost, Poll, ResourceOps, StepScope, WaitPolicy, wait_until};
use crate::keys::{self, Kind, names};
use crate::state::ResourceRecord;

/// A function in a VPC takes up to a minute or two to become active (its network interfaces).
const FUNCTION_WAIT: WaitPolicy = WaitPolicy::up_to(Duration::from_secs(600));

/// A deployment package of one handler.py, stored uncompressed (it is a few KB).
pub fn package(handler_source: &str) -> anyhow::Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o644);
    zip.start_file("handler.py", options)?;
    zip.write_all(handler_source.as_bytes())?;
    Ok(zip.finish()?.into_inner())
}

/// Waits until the function can be invoked.
pub async fn wait_active(ctx: &Ctx, scope: &StepScope, name: &str) -> anyhow::Result<()> {
    wait_until(scope, &format!("function {name} to become active"), FUNCTION_WAIT, || async {
        Ok(match function_state(ctx, name).await? {
            Some((State::Active, _)) => Poll::Ready(()),
            Some((State::Failed, reason)) => Poll::Failed(reason),
            Some((state, _)) => Poll::Pending(state.as_str().to_lowercase()),
            None => Poll::Pending("not visible yet".into()),
        })
    })
    .await?;
    Ok(())
}

pub async fn function_state(ctx: &Ctx, name: &str) -> anyhow::Result<Option<(State, String)>> {
    let out = if_there(ctx.aws.lambda.get_function_configuration().function_name(name).send(), || {
        format!("reading function {name}")
    })
    .await?;
    Ok(out.map(|c| (c.state().cloned().unwrap_or(State::Pending), c.state_reason().unwrap_or_default().to_string())))
}

async fn function_owner(ctx: &Ctx, name: &str) -> anyhow::Result<Option<crate::engine::Owner>> {
    let out = if_there(ctx.aws.lambda.get_function().function_name(name).send(), || format!("reading function {name}"))
        .await?;
    Ok(out.map(|f| {
        let tags = f.tags.unwrap_or_default();
        ctx.tags.owner(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }))
}

pub struct FunctionOps;

#[async_trait]
impl ResourceOps<Ctx> for FunctionOps {
    fn noun(&self) -> &'static str {
        Kind::Function.noun()
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        Ok(match function_state(ctx, record.id()?).await? {
            None => Live::Missing,
            Some((state, _)) => Live::present(state.as_str().to_lowercase(), vec![]),
        })
    }

    async fn read_owned(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let live = self.read(ctx, record).await?;
        Ok(match function_owner(ctx, record.id()?).await? {
            Some(owner) => live.owned_by(owner),
            None => Live::Missing,
        })
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let Some(name) = lost.record.attr("name") else { return Ok(None) };
        Ok(function_owner(ctx, name).await?.filter(|o| *o == crate::engine::Owner::Ours).map(|_| name.to_string()))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, _scope: &StepScope) -> anyhow::Result<()> {
        let name = record.id()?;
        if_there(ctx.aws.lambda.delete_function().function_name(name).send(), || format!("deleting function {name}"))
            .await?;
        Ok(())
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let mut found = Found::default();
        let stack = &ctx.tags.stack;
        for (key, name) in
            [(keys::INIT_FUNCTION, names::init_function(stack)), (keys::WAKE_FUNCTION, names::wake_function(stack))]
        {
            match function_owner(ctx, &name).await? {
                None => {}
                Some(crate::engine::Owner::Foreign(why)) => {
                    found.conflicts.push(Conflict { kind: Kind::Function.to_string(), id: name, why })
                }
                Some(_) => found.ours.push(Discovered::new(key, name.clone()).with("name", name)),
            }
        }
        Ok(found)
    }
}
