//! `kubectl get` asks for the meta.k8s.io Table format; this renders it with a CRD's printer
//! columns (or Name and Age for built-in kinds), as the API server does.

use crate::resources::ResourceType;
use serde_json::{json, Value};

/// `5s`, `3m`, `2h`, `4d`: how kubectl shows an age.
pub fn age(timestamp: &str) -> String {
    let Ok(then) = chrono::DateTime::parse_from_rfc3339(timestamp) else {
        return "<unknown>".into();
    };
    let seconds = (chrono::Utc::now() - then.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Evaluates the simple JSONPaths printer columns use: `.a.b.c`.
fn lookup<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .try_fold(object, |value, part| value.get(part))
}

pub fn to_table(rt: &ResourceType, value: &Value) -> Value {
    let items: Vec<&Value> = match value.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![value],
    };
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0}),
    ];
    let printer: Vec<(String, String, String)> = if rt.printer_columns.is_empty() {
        vec![(
            "Age".into(),
            "date".into(),
            ".metadata.creationTimestamp".into(),
        )]
    } else {
        rt.printer_columns
            .iter()
            .map(|c| (c.name.clone(), c.column_type.clone(), c.json_path.clone()))
            .collect()
    };
    for (name, column_type, _) in &printer {
        let column_type = if column_type == "date" {
            "string"
        } else {
            column_type.as_str()
        };
        columns.push(json!({"name": name, "type": column_type, "format": "", "description": "", "priority": 0}));
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut cells = vec![item["metadata"]["name"].clone()];
            for (_, column_type, path) in &printer {
                let cell = match (lookup(item, path), column_type.as_str()) {
                    (Some(Value::String(ts)), "date") => json!(age(ts)),
                    (Some(value), _) => value.clone(),
                    (None, _) => Value::Null,
                };
                cells.push(cell);
            }
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item["metadata"]},
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": value.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))},
        "columnDefinitions": columns,
        "rows": rows,
    })
}
