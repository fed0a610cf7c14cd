//! `-v`: one log line per AWS call (service, operation, the resource it names, duration,
//! outcome), from an SDK interceptor, so no call site has to remember to log.

use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

#[derive(Debug)]
pub struct CallLog;

#[derive(Debug, Clone)]
struct Started(Instant);
impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

#[derive(Debug, Clone)]
struct Names(String);
impl Storable for Names {
    type Storer = StoreReplace<Self>;
}

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "gitlab-provision call log"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Started(Instant::now()));
        Ok(())
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let body = request.body().bytes().unwrap_or_default();
        cfg.interceptor_state().store_put(Names(resource_named(request.uri(), body)));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) =
            cfg.load::<Metadata>().map(|m| (m.service().to_string(), m.name().to_string())).unwrap_or_default();
        let millis = cfg.load::<Started>().map(|s| s.0.elapsed().as_millis()).unwrap_or_default();
        let names = cfg.load::<Names>().map(|n| n.0.clone()).unwrap_or_default();
        let outcome = match context.output_or_error() {
            Some(Ok(_)) | None => "ok".to_string(),
            Some(Err(e)) => match context.response() {
                Some(response) => format!(
                    "failed: HTTP {} {}",
                    response.status().as_u16(),
                    error_code(response.headers().get("x-amzn-ErrorType"), response.body().bytes().unwrap_or_default())
                ),
                None => format!("failed: {}", first_line(&e.to_string())),
            },
        };
        tracing::info!(target: "gitlab_provision::aws", "{service} {operation} {names} ({millis} ms) {outcome}");
        Ok(())
    }
}

/// The AWS error code of a failed call's answer (header, JSON `__type` or XML `<Code>`).
fn error_code(header: Option<&str>, body: &[u8]) -> String {
    if let Some(code) = header {
        return code.split(':').next().unwrap_or(code).to_string();
    }
    let text = String::from_utf8_lossy(body);
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(code) = fields.get("__type").and_then(|t| t.as_str())
    {
        return code.rsplit('#').next().unwrap_or(code).to_string();
    }
    text.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_string())
        .unwrap_or_default()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The ids, ARNs and names a request is about. Only parameters named like identifiers are read
/// (never values such as a secret's string), so nothing sensitive reaches a log.
fn resource_named(uri: &str, body: &[u8]) -> String {
    let is_identifier = |name: &str| {
        let name = name.split('.').next().unwrap_or(name);
        (name.ends_with("Id") || name.ends_with("Arn") || name.ends_with("Name") || name.ends_with("Identifier"))
            && !["Password", "SecretString", "SecretBinary", "Token", "ZipFile"].iter().any(|s| name.contains(s))
    };
    let mut names: Vec<String> = Vec::new();
    let text = String::from_utf8_lossy(body);
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(&text) {
        names.extend(
            fields.iter().filter(|(k, _)| is_identifier(k)).filter_map(|(_, v)| v.as_str().map(str::to_string)),
        );
    } else {
        for pair in text.split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && is_identifier(name)
                && name != "Action"
            {
                names.push(percent_decode(value));
            }
        }
    }
    if names.is_empty() {
        // REST services name the resource in the path: /2015-02-01/file-systems/fs-123.
        let path = uri.split('?').next().unwrap_or_default();
        if let Some(last) = path.rsplit('/').find(|s| !s.is_empty()).filter(|s| s.contains('-') && !s.starts_with("20"))
        {
            names.push(percent_decode(last));
        }
    }
    names.truncate(3);
    names.join(" ")
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_identifier_parameters_only() {
        let form = b"Action=DeleteSubnet&Version=2016-11-15&SubnetId=subnet-0abc";
        assert_eq!(resource_named("/", form), "subnet-0abc");
        let json = br#"{"SecretId":"arn:aws:secretsmanager:us-east-1:1:secret:x","SecretString":"{\"password\":\"hunter2\"}"}"#;
        let named = resource_named("/", json);
        assert_eq!(named, "arn:aws:secretsmanager:us-east-1:1:secret:x");
        assert!(!named.contains("hunter2"));
        assert_eq!(resource_named("/2015-02-01/file-systems/fs-123", b""), "fs-123");
    }

    #[test]
    fn error_codes_come_from_any_protocol() {
        assert_eq!(error_code(Some("ResourceNotFoundException:http://internal"), b""), "ResourceNotFoundException");
        assert_eq!(
            error_code(None, br#"{"__type":"com.amazon#ClusterContainsTasksException"}"#),
            "ClusterContainsTasksException"
        );
        assert_eq!(
            error_code(None, b"<Response><Errors><Error><Code>DependencyViolation</Code>"),
            "DependencyViolation"
        );
    }
}
