//! The tests' IAM policy evaluation: what AWS decides for one request given a resource policy
//! (read back through the API) and whether the principal's own identity policy allows it. The
//! rules, from the IAM User Guide's "Policy evaluation logic":
//!
//! 1. An explicit Deny in any applicable statement wins.
//! 2. Otherwise an Allow in the resource policy, or (same account) in the identity policy,
//!    allows.
//! 3. Otherwise the request is implicitly denied.
//!
//! A statement applies when its Principal, Action, Resource and every Condition match. Condition
//! keys the request lacks: a positive operator (`StringEquals`, `ArnLike`, `Bool`) does not match;
//! a negated one (`StringNotEquals`, `ArnNotEquals`, `ArnNotLike`, `StringNotLike`) matches
//! ("...IfExists" variants match a missing key). An anonymous request (an NFS client mounting
//! without IAM) has no `aws:PrincipalArn` and no identity policy.

use std::collections::BTreeMap;

use serde_json::Value;

/// One request as the evaluation sees it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `aws:PrincipalArn` (a role's ARN, whatever session assumed it); None: anonymous.
    pub principal: Option<&'a str>,
    pub action: &'a str,
    pub resource: &'a str,
    /// Whether the principal's identity policies allow the action (an admin, a PowerUser role).
    pub identity_allows: bool,
    /// `aws:SecureTransport`.
    pub tls: bool,
}

impl<'a> Request<'a> {
    pub fn by(principal: &'a str, action: &'a str, resource: &'a str) -> Self {
        Request { principal: Some(principal), action, resource, identity_allows: true, tls: true }
    }

    pub fn anonymous(action: &'a str, resource: &'a str) -> Self {
        Request { principal: None, action, resource, identity_allows: false, tls: true }
    }

    pub fn without_tls(self) -> Self {
        Request { tls: false, ..self }
    }

    fn context(&self) -> BTreeMap<String, String> {
        let mut keys = BTreeMap::new();
        if let Some(p) = self.principal {
            keys.insert("aws:principalarn".to_string(), p.to_string());
        }
        keys.insert("aws:securetransport".to_string(), self.tls.to_string());
        keys
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    ExplicitDeny,
    ImplicitDeny,
}

/// AWS's decision on `request` under the resource policy `document` (a JSON string).
pub fn decide(document: &str, request: &Request) -> Decision {
    let policy: Value = serde_json::from_str(document).expect("a resource policy is JSON");
    let statements = match &policy["Statement"] {
        Value::Array(list) => list.clone(),
        one => vec![one.clone()],
    };
    let applicable: Vec<&Value> = statements.iter().filter(|s| applies(s, request)).collect();
    if applicable.iter().any(|s| s["Effect"] == "Deny") {
        Decision::ExplicitDeny
    } else if request.identity_allows || applicable.iter().any(|s| s["Effect"] == "Allow") {
        Decision::Allowed
    } else {
        Decision::ImplicitDeny
    }
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) => list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Value::Bool(b) => vec![b.to_string()],
        _ => vec![],
    }
}

/// IAM's wildcards: `*` any run of characters, `?` one.
pub fn wildcard(pattern: &str, value: &str, case_insensitive: bool) -> bool {
    let (p, v) = if case_insensitive {
        (pattern.to_lowercase(), value.to_lowercase())
    } else {
        (pattern.to_string(), value.to_string())
    };
    let (p, v): (Vec<char>, Vec<char>) = (p.chars().collect(), v.chars().collect());
    fn go(p: &[char], v: &[char]) -> bool {
        match p.first() {
            None => v.is_empty(),
            Some('*') => (0..=v.len()).any(|i| go(&p[1..], &v[i..])),
            Some('?') => !v.is_empty() && go(&p[1..], &v[1..]),
            Some(c) => v.first() == Some(c) && go(&p[1..], &v[1..]),
        }
    }
    go(&p, &v)
}

fn applies(statement: &Value, request: &Request) -> bool {
    principal_matches(&statement["Principal"], request)
        && strings(&statement["Action"]).iter().any(|a| wildcard(a, request.action, true))
        && strings(&statement["Resource"]).iter().any(|r| wildcard(r, request.resource, false))
        && conditions_hold(&statement["Condition"], &request.context())
}

/// `"*"` and `{"AWS": "*"}` name everyone, anonymous included; otherwise the ARNs named.
fn principal_matches(principal: &Value, request: &Request) -> bool {
    let named = match principal {
        Value::String(s) => vec![s.clone()],
        Value::Object(map) => map.get("AWS").map(strings).unwrap_or_default(),
        _ => vec![],
    };
    named.iter().any(|p| p == "*" || request.principal == Some(p.as_str()))
}

fn conditions_hold(conditions: &Value, context: &BTreeMap<String, String>) -> bool {
    let Value::Object(operators) = conditions else { return true };
    operators.iter().all(|(operator, keys)| {
        let Value::Object(keys) = keys else { return false };
        keys.iter().all(|(key, wanted)| condition_holds(operator, context.get(&key.to_lowercase()), &strings(wanted)))
    })
}

fn condition_holds(operator: &str, actual: Option<&String>, wanted: &[String]) -> bool {
    let (base, if_exists) = match operator.strip_suffix("IfExists") {
        Some(base) => (base, true),
        None => (operator, false),
    };
    let negated = matches!(base, "StringNotEquals" | "StringNotLike" | "ArnNotEquals" | "ArnNotLike");
    let Some(actual) = actual else { return negated || if_exists };
    let any = |f: &dyn Fn(&String) -> bool| wanted.iter().any(f);
    match base {
        "StringEquals" | "ArnEquals" | "Bool" => any(&|w| w == actual),
        "StringNotEquals" | "ArnNotEquals" => !any(&|w| w == actual),
        "StringLike" | "ArnLike" => any(&|w| wildcard(w, actual, false)),
        "StringNotLike" | "ArnNotLike" => !any(&|w| wildcard(w, actual, false)),
        other => panic!("the tests' evaluation does not know the condition operator {other}"),
    }
}
