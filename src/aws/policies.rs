//! Resource policies, built one way: a Deny for everyone but the principals named (by
//! `aws:PrincipalArn`, which holds a role's ARN whatever session assumed it, so a role that is
//! deleted and created again keeps its place), and the comparison of a policy AWS returns with
//! the one wanted (as JSON, whatever its spacing or key order).

use serde_json::{Value, json};

/// A statement denying `actions` on `resource` to every principal but `allowed`. A request
/// without a principal ARN (an anonymous NFS client) is denied too: a negated condition on a key
/// the request lacks is true.
pub fn deny_all_but(sid: &str, actions: &[&str], resource: &str, allowed: &[String], principal: Value) -> Value {
    let action: Value = if actions.len() == 1 { json!(actions[0]) } else { json!(actions) };
    json!({
        "Sid": sid,
        "Effect": "Deny",
        "Principal": principal,
        "Action": action,
        "Resource": resource,
        "Condition": {"StringNotEquals": {"aws:PrincipalArn": allowed}}
    })
}

/// A statement denying everything over plain (non-TLS) connections.
pub fn deny_without_tls(sid: &str, resource: &str) -> Value {
    json!({
        "Sid": sid,
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": "*",
        "Resource": resource,
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}
    })
}

pub fn document(statements: Vec<Value>) -> String {
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// Whether two policy documents say the same (as JSON values).
pub fn same(a: &str, b: &str) -> bool {
    match (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The principals a stack's guarded resources admit: the operator who created it and the admins
/// the configuration names (and, where given, the service roles that need them).
pub fn admins(operator: Option<&str>, configured: &[String], roles: &[String]) -> Vec<String> {
    let mut all: Vec<String> = roles.iter().cloned().chain(operator.map(str::to_string)).collect();
    all.extend(configured.iter().cloned());
    all.sort();
    all.dedup();
    all
}
