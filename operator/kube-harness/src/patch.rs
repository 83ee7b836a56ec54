//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902), the two patch formats clients send
//! besides server-side apply. Strategic merge patch is served as a merge patch: the difference
//! only shows on lists with merge keys, which the operator never patches that way.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    #[error("JSON patch must be an array of operations")]
    NotAnArray,
    #[error("JSON patch operation {index} is malformed: {reason}")]
    BadOperation { index: usize, reason: String },
    #[error("JSON patch path {path} does not exist")]
    MissingPath { path: String },
    #[error("JSON patch test failed at {path}")]
    TestFailed { path: String },
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(target_map) = target else {
        return;
    };
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
        } else {
            merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// RFC 6902 with every operation; the whole patch applies or none of it does.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::NotAnArray);
    };
    let mut doc = target.clone();
    for (index, op) in ops.iter().enumerate() {
        let bad = |reason: &str| PatchError::BadOperation {
            index,
            reason: reason.to_string(),
        };
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing op"))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing path"))?;
        let value = || op.get("value").cloned().ok_or_else(|| bad("missing value"));
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("missing from"))
        };
        match kind {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let moved = remove(&mut doc, from()?)?;
                add(&mut doc, path, moved)?;
            }
            "copy" => {
                let copied = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| PatchError::MissingPath { path: path.into() })?;
                add(&mut doc, path, copied)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(PatchError::TestFailed { path: path.into() });
                }
            }
            _ => return Err(bad("unknown op")),
        }
    }
    Ok(doc)
}

fn split(path: &str) -> Result<(String, String), PatchError> {
    let missing = || PatchError::MissingPath { path: path.into() };
    let cut = path.rfind('/').ok_or_else(missing)?;
    let last = path[cut + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..cut].to_string(), last))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    let missing = || PatchError::MissingPath { path: path.into() };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(map) => {
            map.insert(last, value);
        }
        Value::Array(items) => {
            if last == "-" {
                items.push(value);
            } else {
                let index: usize = last.parse().map_err(|_| missing())?;
                if index > items.len() {
                    return Err(missing());
                }
                items.insert(index, value);
            }
        }
        _ => return Err(missing()),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let (parent, last) = split(path)?;
    let missing = || PatchError::MissingPath { path: path.into() };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(map) => map.remove(&last).ok_or_else(missing),
        Value::Array(items) => {
            let index: usize = last.parse().map_err(|_| missing())?;
            if index >= items.len() {
                return Err(missing());
            }
            Ok(items.remove(index))
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        merge_patch(&mut doc, &json!({"list": [1, 2]}));
        merge_patch(&mut doc, &json!({"list": [3]}));
        assert_eq!(doc["list"], json!([3]));
    }

    #[test]
    fn json_patch_applies_all_or_nothing() {
        let doc = json!({"spec": {"replicas": 3, "items": ["a"]}});
        let patched = json_patch(
            &doc,
            &json!([
                {"op": "test", "path": "/spec/replicas", "value": 3},
                {"op": "replace", "path": "/spec/replicas", "value": 5},
                {"op": "add", "path": "/spec/items/-", "value": "b"},
                {"op": "copy", "from": "/spec/replicas", "path": "/spec/copy"},
            ]),
        )
        .expect("valid patch");
        assert_eq!(
            patched,
            json!({"spec": {"replicas": 5, "items": ["a", "b"], "copy": 5}})
        );
        let failed = json_patch(
            &doc,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 4}]),
        );
        assert_eq!(
            failed,
            Err(PatchError::TestFailed {
                path: "/spec/replicas".into()
            })
        );
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
