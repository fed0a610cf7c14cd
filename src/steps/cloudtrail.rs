//! CloudTrail: whether the account keeps a record of who opens a shell in GitLab. ECS Exec's
//! `ExecuteCommand` is a management event: only a trail keeps it beyond the 90 days of Event
//! history, and it is the only record of who opened a session (the session log says what was
//! typed, not by whom). Read, never changed: trails are the account's, not the stack's.

use aws_sdk_cloudtrail::types::Trail;

use crate::aws::{AwsResultExt, Ctx};

/// What the account's trails say for this region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// A trail in this region, or a multi-region one, is logging.
    Logging(String),
    /// Trails exist but none logging covers this region.
    NotLogging,
    None,
    /// The credentials may not read CloudTrail.
    Unknown(String),
}

/// Whether a trail logs this region's management events (DescribeTrails with shadow trails, so
/// an organization's or another region's multi-region trail counts; then GetTrailStatus).
pub async fn coverage(ctx: &Ctx) -> Coverage {
    let trails = match ctx.aws.cloudtrail.describe_trails().include_shadow_trails(true).send().await {
        Ok(out) => out.trail_list.unwrap_or_default(),
        Err(e) => {
            let error = Err::<(), _>(e).or_aws(|| "reading the account's trails".into()).unwrap_err();
            return Coverage::Unknown(error.to_string());
        }
    };
    let covering: Vec<&Trail> = trails
        .iter()
        .filter(|t| t.is_multi_region_trail == Some(true) || t.home_region.as_deref() == Some(ctx.region()))
        .collect();
    if covering.is_empty() {
        return if trails.is_empty() { Coverage::None } else { Coverage::NotLogging };
    }
    for trail in covering {
        let Some(name) = trail.trail_arn.as_deref().or(trail.name.as_deref()) else { continue };
        // An organization's trail seen from a member account may not answer: it exists.
        match ctx.aws.cloudtrail.get_trail_status().name(name).send().await {
            Ok(status) if status.is_logging == Some(true) => return Coverage::Logging(name.to_string()),
            Ok(_) => {}
            Err(_) => return Coverage::Logging(name.to_string()),
        }
    }
    Coverage::NotLogging
}

/// The warning `plan` and `up` give when shells are allowed and nothing records who opens them.
pub async fn warning(ctx: &Ctx, exec: bool) -> Option<String> {
    if !exec || ctx.account.is_none() {
        return None;
    }
    let why = match coverage(ctx).await {
        Coverage::Logging(_) => return None,
        Coverage::None => "the account has no CloudTrail trail",
        Coverage::NotLogging => "no CloudTrail trail is logging in this region",
        Coverage::Unknown(_) => {
            "these credentials cannot read CloudTrail, so whether a trail records shells is unknown"
        }
    };
    Some(format!(
        "{why}: who opens a shell in GitLab (`exec`, `shell`) is kept only 90 days in Event history; create a multi-region trail, or set exec = false"
    ))
}
