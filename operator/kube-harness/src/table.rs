//! `kubectl get` asks for the meta.k8s.io Table format; this renders it with a CRD's printer
//! columns, kubectl's usual columns for pods and Services, or Name and Age for other built-in
//! kinds, as the API server does.

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

/// A column computed from the whole object.
type Cell = fn(&Value) -> Value;

/// What a pod's STATUS column says: Terminating, a container's waiting or terminated reason,
/// or the phase.
fn pod_status(pod: &Value) -> Value {
    if pod["metadata"]["deletionTimestamp"].is_string() {
        return json!("Terminating");
    }
    let containers = pod["status"]["containerStatuses"].as_array();
    let reason = containers.into_iter().flatten().find_map(|c| {
        c["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| *r != "ContainerCreating" || pod["status"]["podIP"].is_string())
            .or_else(|| c["state"]["terminated"]["reason"].as_str())
    });
    json!(reason
        .or(pod["status"]["phase"].as_str())
        .unwrap_or("Pending"))
}

fn pod_ready(pod: &Value) -> Value {
    let containers = pod["status"]["containerStatuses"].as_array();
    let ready = containers
        .into_iter()
        .flatten()
        .filter(|c| c["ready"] == true)
        .count();
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    json!(format!("{ready}/{total}"))
}

fn pod_restarts(pod: &Value) -> Value {
    let containers = pod["status"]["containerStatuses"].as_array();
    json!(containers
        .into_iter()
        .flatten()
        .filter_map(|c| c["restartCount"].as_u64())
        .sum::<u64>())
}

fn service_ports(service: &Value) -> Value {
    let ports: Vec<String> = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
        .collect();
    json!(ports.join(","))
}

/// kubectl's columns for the built-in kinds a user of the dev cluster looks at most.
fn builtin_columns(rt: &ResourceType) -> Option<Vec<(&'static str, Cell)>> {
    if !rt.group.is_empty() {
        return None;
    }
    let age: Cell = |o| {
        json!(age(o["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or("")))
    };
    match rt.kind.as_str() {
        "Pod" => Some(vec![
            ("Ready", pod_ready),
            ("Status", pod_status),
            ("Restarts", pod_restarts),
            ("Age", age),
            ("IP", |p| p["status"]["podIP"].clone()),
            ("Node", |p| p["spec"]["nodeName"].clone()),
        ]),
        "Service" => Some(vec![
            ("Type", |s| {
                json!(s["spec"]["type"].as_str().unwrap_or("ClusterIP"))
            }),
            ("Cluster-IP", |s| s["spec"]["clusterIP"].clone()),
            ("Port(s)", service_ports),
            ("Age", age),
        ]),
        _ => None,
    }
}

pub fn to_table(rt: &ResourceType, value: &Value) -> Value {
    let items: Vec<&Value> = match value.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![value],
    };
    if let Some(cells) = builtin_columns(rt) {
        return computed_table(value, &items, &cells);
    }
    let mut columns = vec![name_column()];
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
            row(item, cells)
        })
        .collect();
    table(value, columns, rows)
}

fn name_column() -> Value {
    json!({"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0})
}

fn row(item: &Value, cells: Vec<Value>) -> Value {
    json!({
        "cells": cells,
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item["metadata"]},
    })
}

fn table(value: &Value, columns: Vec<Value>, rows: Vec<Value>) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": value.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn computed_table(value: &Value, items: &[&Value], cells: &[(&'static str, Cell)]) -> Value {
    let mut columns = vec![name_column()];
    for (name, _) in cells {
        columns.push(
            json!({"name": name, "type": "string", "format": "", "description": "", "priority": 0}),
        );
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut values = vec![item["metadata"]["name"].clone()];
            values.extend(cells.iter().map(|(_, cell)| cell(item)));
            row(item, values)
        })
        .collect();
    table(value, columns, rows)
}
