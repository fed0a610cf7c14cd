//! What GitLab's releases require of the platform (data/gitlab-requirements.toml, dated and
//! sourced): from which version its official image runs on arm64. (The file also lists the
//! PostgreSQL each GitLab major supports: the one `database = "rds"` creates, and the oldest an
//! upgrade accepts.)

use serde::Deserialize;

use crate::gitlab_version::Version;

const FILE: &str = include_str!("../data/gitlab-requirements.toml");

#[derive(Debug, Deserialize)]
struct Requirements {
    as_of: String,
    arm64: Arm64,
    postgresql: Vec<Postgresql>,
}

/// The PostgreSQL a GitLab major supports with an external database.
#[derive(Debug, Clone, Deserialize)]
pub struct Postgresql {
    pub gitlab: u32,
    /// The oldest it runs on ("16.5").
    pub minimum: String,
    /// The newest major it supports: what the tool creates.
    pub newest: String,
}

/// The PostgreSQL GitLab `version` needs, or why it is not known.
pub fn postgresql(version: Version) -> anyhow::Result<Postgresql> {
    let Requirements { as_of, postgresql, .. } = shipped();
    postgresql.into_iter().find(|p| p.gitlab == version.major).ok_or_else(|| {
        anyhow::anyhow!(
            "the PostgreSQL GitLab {} needs is not known here (data/gitlab-requirements.toml, read {as_of}, lists GitLab {} and later)",
            version.major,
            17
        )
    })
}

/// Whether a PostgreSQL version ("16.4", "17.2") is at least `minimum` ("16.5", "17").
pub fn at_least(version: &str, minimum: &str) -> bool {
    let parts = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    parts(version) >= parts(minimum)
}

#[derive(Debug, Deserialize)]
struct Arm64 {
    image: String,
    from: String,
    source: String,
}

fn shipped() -> Requirements {
    toml::from_str(FILE).expect("data/gitlab-requirements.toml is checked by a test")
}

/// Whether `image` at `version` has an official arm64 build: `Ok(true)` from the first release
/// that has one, `Err(why not)` otherwise (another image's platforms are not known here).
pub fn arm64(image: &str, version: Version) -> Result<(), String> {
    let Requirements { as_of, arm64, .. } = shipped();
    if image != arm64.image {
        return Err(format!("{image} is not {}, whose arm64 builds are known; its platforms are not", arm64.image));
    }
    let from = Version::parse(&arm64.from).expect("checked by a test");
    if version < from {
        return Err(format!(
            "{} has official arm64 images from {from} on ({}, read {as_of}), not {version}",
            arm64.image, arm64.source
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_requirements_read_and_agree_with_themselves() {
        let r = shipped();
        assert!(!r.as_of.is_empty() && r.arm64.source.starts_with("https://"));
        assert!(Version::parse(&r.arm64.from).is_some());
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(arm64("gitlab/gitlab-ce", v("18.2.0-ce.0")).is_ok());
        assert!(arm64("gitlab/gitlab-ce", v("18.1.6-ce.0")).is_err());
        assert!(arm64("123456789012.dkr.ecr.eu-west-1.amazonaws.com/gitlab-ce", v("19.4.1-ce.0")).is_err());
        let pg18 = postgresql(v("18.6.1-ce.0")).unwrap();
        assert_eq!((pg18.minimum.as_str(), pg18.newest.as_str()), ("16.5", "17"));
        assert!(postgresql(v("16.11.0-ce.0")).is_err(), "GitLab 16 is not listed");
    }

    #[test]
    fn postgres_versions_compare_by_number() {
        assert!(at_least("16.5", "16.5") && at_least("16.10", "16.5") && at_least("17.2", "16.5"));
        assert!(!at_least("16.4", "16.5") && !at_least("16.9", "17"));
    }
}
