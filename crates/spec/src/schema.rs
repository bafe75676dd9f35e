//! The JSON Schema of the Dagu format as Trellis reads it, for editors (`trellis schema`).
//! Built from the same field tables the loader uses.

use serde_json::{Map, Value, json};

use crate::decode::Field;
use crate::fields;

/// The whole schema (draft 2020-12).
pub fn dag_schema() -> Value {
    let mut root = object(fields::DAG);
    let defs = json!({
        "step": object(fields::STEP_FIELDS),
        "handler_on": object(fields::HANDLERS),
        "retry_policy": object(fields::RETRY_FIELDS),
        "dag_retry_policy": object(fields::DAG_RETRY_FIELDS),
        "repeat_policy": object(fields::REPEAT_FIELDS),
        "continue_on": object(fields::CONTINUE_FIELDS),
        "precondition": object(fields::CONDITION_FIELDS),
        "parallel": object(fields::PARALLEL_FIELDS),
        "approval": object(fields::APPROVAL_FIELDS),
        "exec": object(fields::EXEC_FIELDS),
        "defaults": object(fields::DEFAULTS_FIELDS),
    });
    if let Value::Object(map) = &mut root {
        map.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        map.insert("$id".into(), json!("https://trellis.dev/schemas/dag.json"));
        map.insert("title".into(), json!("Trellis DAG (Dagu v1/v2 compatible)"));
        map.insert("$defs".into(), defs);
    }
    root
}

fn object(table: &[Field]) -> Value {
    let mut props = Map::new();
    for field in table {
        let schema: Value = serde_json::from_str(field.schema).unwrap_or_else(|_| json!({}));
        let mut with_doc = match schema {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        with_doc.insert("description".into(), json!(field.doc));
        props.insert(field.name.into(), Value::Object(with_doc.clone()));
        for alias in field.aliases {
            let mut deprecated = with_doc.clone();
            deprecated.insert("deprecated".into(), json!(true));
            deprecated.insert(
                "description".into(),
                json!(format!("Alias of `{}`. {}", field.name, field.doc)),
            );
            props.insert((*alias).into(), Value::Object(deprecated));
        }
    }
    json!({ "type": "object", "properties": props, "additionalProperties": false })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_field_schema_is_valid_json() {
        for table in [
            super::fields::DAG,
            super::fields::STEP_FIELDS,
            super::fields::HANDLERS,
        ] {
            for f in table {
                assert!(
                    serde_json::from_str::<serde_json::Value>(f.schema).is_ok(),
                    "{}",
                    f.name
                );
            }
        }
    }
}
