//! One module per AWS area, each with its resources' create, read and delete side by side.
//! The areas are peers: one uses another only to reuse what that one does (the certificate
//! writes its validation record through `dns`). The stack itself is declared in `catalog`,
//! on top of them.

pub mod backup;
pub mod certificate;
pub mod cloudtrail;
pub mod database;
pub mod dns;
pub mod efs_init;
pub mod iam;
pub mod kms;
pub mod lambda;
pub mod load_balancer;
pub mod logs;
pub mod nat;
pub mod network;
pub mod quotas;
pub mod s3;
pub mod scaling;
pub mod secret;
pub mod security_group;
pub mod service;
pub mod storage;
pub mod traffic;
pub mod waf;
pub mod wake;
