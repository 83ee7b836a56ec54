//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902), the two patch formats clients send
//! besides server-side apply, served by the `json-patch` crate. Strategic merge patch is served as a merge patch: the difference
//! only shows on lists with merge keys, which the operator never patches that way.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatchError {
    #[error("JSON patch is not an array of RFC 6902 operations: {0}")]
    Malformed(String),
    #[error("JSON patch operation {operation} at {path:?} failed: {reason}")]
    Failed {
        operation: usize,
        path: String,
        reason: String,
    },
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902 with every operation; the whole patch applies or none of it does (it applies to a
/// copy, which is returned only when every operation succeeded).
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let operations: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|error| PatchError::Malformed(error.to_string()))?;
    let mut doc = target.clone();
    json_patch::patch_unsafe(&mut doc, &operations).map_err(|error| PatchError::Failed {
        operation: error.operation,
        path: error.path.to_string(),
        reason: error.kind.to_string(),
    })?;
    Ok(doc)
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
        assert!(
            matches!(&failed, Err(PatchError::Failed { operation: 0, path, .. }) if path == "/spec/replicas"),
            "{failed:?}"
        );
        assert!(matches!(
            json_patch(&doc, &json!({"op": "add"})),
            Err(PatchError::Malformed(_))
        ));
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
