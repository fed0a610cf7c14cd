//! What GitLab's releases require of the platform (data/gitlab-requirements.toml, dated and
//! sourced): from which version its official image runs on arm64. (The file also lists the
//! PostgreSQL each GitLab major supports, read for the external database still to come.)

use serde::Deserialize;

use crate::gitlab_version::Version;

const FILE: &str = include_str!("../data/gitlab-requirements.toml");

#[derive(Debug, Deserialize)]
struct Requirements {
    as_of: String,
    arm64: Arm64,
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
    let Requirements { as_of, arm64 } = shipped();
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
    }
}
