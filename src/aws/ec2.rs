//! One generic EC2 kind: a tagged EC2 resource is described by id or by tag filters and deleted;
//! reading, finding after a crash, ownership and discovery are derived here once.

use std::marker::PhantomData;

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, Tag};

use super::{AwsError, Ctx, fresh};
use crate::engine::{Discovered, Found, Live, Lost, ResourceOps, StepScope};
use crate::state::ResourceRecord;

/// How to ask EC2 for items of a kind.
pub enum Query<'a> {
    Id(&'a str),
    Filters(Vec<Filter>),
}

impl Query<'_> {
    /// What the query is about, for error messages.
    pub fn about(&self) -> String {
        match self {
            Query::Id(id) => id.to_string(),
            Query::Filters(_) => "by tag".to_string(),
        }
    }
}

/// A tagged EC2 resource kind.
#[async_trait]
pub trait Ec2Kind: Send + Sync + 'static {
    type Item: Send + Sync;
    const NOUN: &'static str;

    /// The items a query names; "not found" for an id is an empty list.
    async fn describe(ctx: &Ctx, query: Query<'_>) -> Result<Vec<Self::Item>, AwsError>;
    fn id(item: &Self::Item) -> Option<&str>;
    fn tags(item: &Self::Item) -> &[Tag];
    /// Items that still show but no longer count (a terminated instance, a deleted NAT gateway).
    fn gone(_item: &Self::Item) -> bool {
        false
    }
    /// A one-line summary of the live item, and how it differs from its record.
    fn live(item: &Self::Item, record: &ResourceRecord) -> (String, Vec<String>);
    /// Deletes it (and waits for what must happen before its dependents can go).
    async fn delete(ctx: &Ctx, id: &str, scope: &StepScope) -> anyhow::Result<()>;
}

/// The engine's operations for an EC2 kind.
pub struct Ec2<K>(PhantomData<K>);

impl<K: Ec2Kind> Ec2<K> {
    pub const OPS: Ec2<K> = Ec2(PhantomData);

    /// The live item, `None` when it is gone.
    pub async fn get(ctx: &Ctx, id: &str) -> Result<Option<K::Item>, AwsError> {
        Ok(K::describe(ctx, Query::Id(id)).await?.into_iter().find(|i| !K::gone(i)))
    }

    /// The item just created (or about to be changed): EC2 may not show a new id for a moment.
    pub async fn get_fresh(ctx: &Ctx, id: &str) -> anyhow::Result<K::Item> {
        let item = fresh(|| async {
            Self::get(ctx, id).await?.ok_or_else(|| AwsError {
                action: format!("reading {} {id}", K::NOUN),
                code: Some("NotFound".into()),
                message: format!("{} {id} is not visible yet", K::NOUN),
            })
        })
        .await?;
        Ok(item)
    }
}

#[async_trait]
impl<K: Ec2Kind> ResourceOps<Ctx> for Ec2<K> {
    fn noun(&self) -> &'static str {
        K::NOUN
    }

    async fn read(&self, ctx: &Ctx, record: &ResourceRecord) -> anyhow::Result<Live> {
        let Some(item) = Self::get(ctx, record.id()?).await? else { return Ok(Live::Missing) };
        let (summary, drift) = K::live(&item, record);
        Ok(Live::present(summary, drift).owned_by(ctx.tags.owner_of(K::tags(&item))))
    }

    async fn find(&self, ctx: &Ctx, lost: &Lost<'_>) -> anyhow::Result<Option<String>> {
        let items = K::describe(ctx, Query::Filters(ctx.tags.ec2_filters(lost.key))).await?;
        Ok(items.iter().filter(|i| !K::gone(i)).find_map(|i| K::id(i).map(str::to_string)))
    }

    async fn delete(&self, ctx: &Ctx, record: &ResourceRecord, scope: &StepScope) -> anyhow::Result<()> {
        K::delete(ctx, record.id()?, scope).await
    }

    async fn discover(&self, ctx: &Ctx) -> anyhow::Result<Found> {
        let items = K::describe(ctx, Query::Filters(vec![ctx.tags.stack_filter()])).await?;
        Ok(items
            .iter()
            .filter(|i| !K::gone(i))
            .filter_map(|i| Some(Discovered::new(ctx.tags.key_of(K::tags(i))?, K::id(i)?)))
            .collect::<Vec<_>>()
            .into())
    }
}

/// Applies a [`Query`] to a describe request builder whose id and filter setters are named
/// differently per operation.
#[macro_export]
macro_rules! ec2_query {
    ($request:expr, $query:expr, $ids:ident, $filters:ident) => {
        match $query {
            $crate::aws::ec2::Query::Id(id) => $request.$ids(id),
            $crate::aws::ec2::Query::Filters(filters) => $request.$filters(Some(filters)),
        }
    };
}
