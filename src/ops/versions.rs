//! GitLab's versions as the state knows them: what the stack runs (its task definition's
//! record), and the three a status or a plan reports.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::keys;
use crate::state::{RecordStatus, ResourceRecord};

/// GitLab's version: what the state records (its task definition), what runs (the live task's
/// image), and for a plan, what `up` would deploy. `null` where there is none.
#[derive(Debug, Default, Clone, Serialize, schemars::JsonSchema)]
pub struct GitLabVersion {
    pub recorded: Option<String>,
    pub running: Option<String>,
    pub wanted: Option<String>,
}

/// The GitLab version the stack runs, from its task definition's record.
pub fn running_version(records: &BTreeMap<String, ResourceRecord>) -> Option<crate::gitlab_version::Version> {
    let image = records.get(keys::TASK_DEFINITION).filter(|r| r.status == RecordStatus::Created)?.attr("image")?;
    crate::gitlab_version::Version::parse(image.rsplit(':').next()?)
}
