//! The JSON Schemas of every `--json` document, generated from the very types that produce the
//! output (schemars), so the schemas cannot drift from it. `schemas/*.schema.json` are these,
//! committed for readers and scripts; a test fails when they differ from what the types
//! generate (`UPDATE_SCHEMAS=1 cargo test schemas` writes them anew).

use schemars::JsonSchema;
use serde_json::{Value, json};

use crate::printer::SCHEMA_VERSION;

/// Every document kind: its name (as in `"schema": "gitlab-provision.<kind>/1"`), what it is, and
/// its schema.
pub fn documents() -> Vec<(&'static str, Value)> {
    fn doc<T: JsonSchema>(kind: &'static str, title: &str) -> (&'static str, Value) {
        (kind, document::<T>(kind, title))
    }
    vec![
        doc::<crate::commands::up::UpResult>("up", "The last line of `up --json`: what was made and how to reach it"),
        doc::<crate::commands::down::DownResult>(
            "down",
            "The last line of `down --json`: what was removed, kept and left alone",
        ),
        doc::<crate::ops::plan::PlanReport>(
            "plan",
            "`plan --json`: what `up` would do, what it refuses, what it costs",
        ),
        doc::<crate::ops::plan::SavedPlan>("saved-plan", "A plan saved by `plan --out`, applied by `up FILE`"),
        doc::<crate::ops::status::StatusReport>(
            "status",
            "`status --json`: the verdict, every resource, GitLab's service",
        ),
        doc::<crate::commands::list::Listing>(
            "list",
            "`list --json`: the stacks of a state directory or shared bucket, and who holds them",
        ),
        doc::<crate::state_bucket::History>("state-history", "`state history --json`: a shared state's saved versions"),
        doc::<crate::commands::backup::Points>(
            "backups",
            "`backup list --json`: the recovery points of the stack's file systems",
        ),
        doc::<crate::ops::backup::Taken>("backup", "The last line of `backup --json`: the backup made"),
        doc::<crate::ops::restore::Restored>("restore", "The last line of `restore --json`: what was restored"),
        doc::<crate::ops::upgrade::Upgraded>("upgrade", "The last line of `upgrade --json`: the versions deployed"),
        doc::<crate::commands::logs::LogLine>("log", "One line of `logs --json`"),
        doc::<crate::printer::EventDoc>("event", "One progress event of a command run with --json (one per line)"),
    ]
}

/// A document's schema: the type's, with the `schema` key every document carries first, and
/// every key required (the output always has every key, `null` when it has no value).
fn document<T: JsonSchema>(kind: &str, title: &str) -> Value {
    let mut schema = schemars::schema_for!(T).to_value();
    require_every_key(&mut schema);
    if let Some(fields) = schema.as_object_mut() {
        fields.insert("$id".into(), json!(format!("https://gitlab-provision.invalid/schemas/{kind}.schema.json")));
        fields.insert("title".into(), json!(title));
        if let Some(properties) = fields.get_mut("properties").and_then(Value::as_object_mut) {
            let mut with_schema = serde_json::Map::new();
            with_schema
                .insert("schema".into(), json!({ "const": format!("gitlab-provision.{kind}/{SCHEMA_VERSION}") }));
            with_schema.extend(std::mem::take(properties));
            *properties = with_schema;
        }
        if let Some(required) = fields.get_mut("required").and_then(Value::as_array_mut) {
            required.insert(0, json!("schema"));
        }
    }
    schema
}

fn require_every_key(schema: &mut Value) {
    match schema {
        Value::Object(fields) => {
            if let Some(keys) =
                fields.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect::<Vec<_>>())
            {
                fields.insert("required".into(), json!(keys));
            }
            for value in fields.values_mut() {
                require_every_key(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(require_every_key),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed schemas are what the types generate; `UPDATE_SCHEMAS=1` writes them.
    #[test]
    fn the_committed_schemas_are_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        let mut stale = Vec::new();
        for (kind, schema) in documents() {
            let path = dir.join(format!("{kind}.schema.json"));
            let text = format!("{}\n", serde_json::to_string_pretty(&schema).expect("a schema is JSON"));
            if update {
                std::fs::write(&path, &text).expect("write the schema");
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        }
        let expected: Vec<String> = documents().iter().map(|(kind, _)| format!("{kind}.schema.json")).collect();
        let extra: Vec<String> = std::fs::read_dir(&dir)
            .expect("schemas/")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|name| !expected.contains(name))
            .collect();
        assert!(
            stale.is_empty(),
            "schemas differ from the types: {stale:?}; run `UPDATE_SCHEMAS=1 cargo test schemas`"
        );
        assert!(extra.is_empty(), "schemas/ holds files no type generates: {extra:?}");
    }
}
