//! Server-side apply: field sets per manager, conflicts, and removal of fields a manager stops
//! applying.
//!
//! The subset of the real structured-merge-diff this implements: maps merge key by key; a list
//! whose elements are all objects with a `uid`, else a `name`, else a `type` is associative
//! (merged element by element, like containers, ports, ownerReferences and conditions); every
//! other list is atomic and owned whole. The real API server reads list semantics from the
//! OpenAPI schema; the heuristic agrees with it on every list the operator writes.

use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    Field(String),
    /// An element of an associative list, named by its key field and value.
    Key {
        field: String,
        value: String,
    },
}

pub type FieldPath = Vec<Step>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Metadata the server owns; never part of a manager's field set.
const SERVER_METADATA: [&str; 9] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "selfLink",
];

/// What part of an object a write addresses: the main resource (everything but status when
/// the kind has a status subresource) or the status subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Whole,
    MainOnly,
    StatusOnly,
}

/// The fields of `object` a write in `scope` can own.
pub fn field_set(object: &Value, scope: Scope) -> FieldSet {
    let mut out = FieldSet::new();
    let Value::Object(map) = object else {
        return out;
    };
    for (key, value) in map {
        let in_scope = match scope {
            Scope::Whole => true,
            Scope::MainOnly => key != "status",
            Scope::StatusOnly => key == "status",
        };
        if !in_scope || key == "apiVersion" || key == "kind" {
            continue;
        }
        let path = vec![Step::Field(key.clone())];
        if key == "metadata" {
            if let Value::Object(meta) = value {
                for (meta_key, meta_value) in meta {
                    if SERVER_METADATA.contains(&meta_key.as_str()) {
                        continue;
                    }
                    let mut meta_path = path.clone();
                    meta_path.push(Step::Field(meta_key.clone()));
                    walk(meta_value, meta_path, &mut out);
                }
            }
        } else {
            walk(value, path, &mut out);
        }
    }
    out
}

fn walk(value: &Value, path: FieldPath, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let mut child_path = path.clone();
                child_path.push(Step::Field(key.clone()));
                walk(child, child_path, out);
            }
        }
        Value::Array(items) => match list_key(items) {
            Some(field) => {
                for item in items {
                    let mut item_path = path.clone();
                    item_path.push(key_step(field, item));
                    out.insert(item_path.clone());
                    walk(item, item_path, out);
                }
            }
            None => {
                out.insert(path);
            }
        },
        _ => {
            out.insert(path);
        }
    }
}

/// The key field of an associative list, or None for an atomic one.
fn list_key(items: &[Value]) -> Option<&'static str> {
    if items.is_empty() {
        return None;
    }
    ["uid", "name", "type"].into_iter().find(|field| {
        items
            .iter()
            .all(|item| item.get(field).is_some_and(|key| key.is_string()))
    })
}

fn key_step(field: &str, item: &Value) -> Step {
    Step::Key {
        field: field.to_string(),
        value: item
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    }
}

fn matches_key(item: &Value, field: &str, value: &str) -> bool {
    item.get(field).and_then(Value::as_str) == Some(value)
}

/// The value at `path`, if present.
pub fn get<'a>(object: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut current = object;
    for step in path {
        current = match step {
            Step::Field(name) => current.get(name)?,
            Step::Key { field, value } => current
                .as_array()?
                .iter()
                .find(|item| matches_key(item, field, value))?,
        };
    }
    Some(current)
}

/// Removes the field or list element at `path`; false when it was not there.
pub fn remove(object: &mut Value, path: &[Step]) -> bool {
    let Some((last, parent_path)) = path.split_last() else {
        return false;
    };
    let mut parent = object;
    for step in parent_path {
        let next = match step {
            Step::Field(name) => parent.get_mut(name),
            Step::Key { field, value } => parent.as_array_mut().and_then(|items| {
                items
                    .iter_mut()
                    .find(|item| matches_key(item, field, value))
            }),
        };
        match next {
            Some(next) => parent = next,
            None => return false,
        }
    }
    match last {
        Step::Field(name) => parent
            .as_object_mut()
            .is_some_and(|map| map.remove(name).is_some()),
        Step::Key { field, value } => match parent.as_array_mut() {
            Some(items) => {
                let before = items.len();
                items.retain(|item| !matches_key(item, field, value));
                items.len() != before
            }
            None => false,
        },
    }
}

/// Merges an applied configuration into the live object: maps key by key, associative lists
/// element by element, everything else replaced.
pub fn merge(live: &mut Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(live_map), Value::Object(applied_map)) => {
            for (key, value) in applied_map {
                match live_map.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        live_map.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(live_items), Value::Array(applied_items)) => {
            let key = list_key(applied_items)
                .filter(|field| live_items.is_empty() || list_key(live_items) == Some(*field));
            match key {
                Some(field) => {
                    for item in applied_items {
                        let value = item.get(field).and_then(Value::as_str).unwrap_or_default();
                        match live_items
                            .iter_mut()
                            .find(|live_item| matches_key(live_item, field, value))
                        {
                            Some(live_item) => merge(live_item, item),
                            None => live_items.push(item.clone()),
                        }
                    }
                }
                None => *live_items = applied_items.clone(),
            }
        }
        (live, applied) => *live = applied.clone(),
    }
}

/// The paths of `set` whose values differ between two versions of an object.
pub fn changed(set: &FieldSet, before: &Value, after: &Value) -> FieldSet {
    set.iter()
        .filter(|path| get(before, path) != get(after, path))
        .cloned()
        .collect()
}

/// Drops empty maps left behind after their last field was pruned, below `path`'s parent.
pub fn prune_empty_parents(object: &mut Value, path: &[Step]) {
    for depth in (1..path.len()).rev() {
        let parent_path = &path[..depth];
        let empty = get(object, parent_path).is_some_and(|value| match value {
            Value::Object(map) => map.is_empty(),
            _ => false,
        });
        if empty {
            remove(object, parent_path);
        } else {
            return;
        }
    }
}

/// The `fieldsV1` document Kubernetes shows in `metadata.managedFields`.
pub fn fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        insert_path(&mut root, path);
    }
    Value::Object(root)
}

fn insert_path(root: &mut Map<String, Value>, path: &[Step]) {
    {
        let mut node = root;
        for step in path {
            let key = match step {
                Step::Field(name) => format!("f:{name}"),
                Step::Key { field, value } => {
                    format!("k:{}", serde_json::json!({ field: value }))
                }
            };
            let entry = node.entry(key).or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(child) = entry else {
                return;
            };
            node = child;
        }
        if matches!(path.last(), Some(Step::Key { .. })) {
            node.insert(".".into(), Value::Object(Map::new()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(steps: &[&str]) -> FieldPath {
        steps
            .iter()
            .map(|step| Step::Field(step.to_string()))
            .collect()
    }

    #[test]
    fn field_set_skips_server_metadata_and_keys_named_lists() {
        let object = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "uid": "u", "labels": {"a": "b"}},
            "data": {"k": "v"},
            "spec": {"containers": [{"name": "broker", "image": "i"}], "args": ["x", "y"]},
            "status": {"ready": true}
        });
        let set = field_set(&object, Scope::MainOnly);
        assert!(set.contains(&path(&["metadata", "labels", "a"])));
        assert!(set.contains(&path(&["data", "k"])));
        assert!(set.contains(&path(&["spec", "args"])));
        let mut container = path(&["spec", "containers"]);
        container.push(Step::Key {
            field: "name".into(),
            value: "broker".into(),
        });
        assert!(set.contains(&container));
        container.push(Step::Field("image".into()));
        assert!(set.contains(&container));
        assert!(!set
            .iter()
            .any(|p| p.first() == Some(&Step::Field("status".into()))));
        assert!(!set.contains(&path(&["metadata", "name"])));
        assert_eq!(
            field_set(&object, Scope::StatusOnly),
            FieldSet::from([path(&["status", "ready"])])
        );
    }

    #[test]
    fn merge_keeps_other_elements_of_associative_lists() {
        let mut live = json!({"c": [{"name": "a", "x": 1}, {"name": "b", "x": 2}], "l": [1, 2]});
        merge(&mut live, &json!({"c": [{"name": "b", "x": 3}], "l": [3]}));
        assert_eq!(
            live,
            json!({"c": [{"name": "a", "x": 1}, {"name": "b", "x": 3}], "l": [3]})
        );
        let mut element = path(&["c"]);
        element.push(Step::Key {
            field: "name".into(),
            value: "a".into(),
        });
        assert!(remove(&mut live, &element));
        assert_eq!(live["c"], json!([{"name": "b", "x": 3}]));
    }

    #[test]
    fn fields_v1_has_the_kubernetes_shape() {
        let set = field_set(
            &json!({"metadata": {"labels": {"a": "b"}}, "spec": {"ports": [{"name": "tcp", "port": 1}]}}),
            Scope::Whole,
        );
        assert_eq!(
            fields_v1(&set),
            json!({
                "f:metadata": {"f:labels": {"f:a": {}}},
                "f:spec": {"f:ports": {"k:{\"name\":\"tcp\"}": {".": {}, "f:name": {}, "f:port": {}}}}
            })
        );
    }
}
