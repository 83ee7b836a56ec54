//! Label and field selectors as list and watch requests send them.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector` or `fieldSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    requirements: Vec<Requirement>,
    fields: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unable to parse selector {0:?}")]
pub struct SelectorError(String);

/// Splits on commas that are not inside `in (a,b)` parentheses.
fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for ch in text.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    out.push(current);
    out.into_iter()
        .map(|term| term.trim().to_string())
        .filter(|term| !term.is_empty())
        .collect()
}

fn set(values: &str) -> Vec<String> {
    values
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(|value| value.trim().to_string())
        .collect()
}

impl Selector {
    pub fn labels(text: &str) -> Result<Self, SelectorError> {
        Self::parse(text, false)
    }

    pub fn fields(text: &str) -> Result<Self, SelectorError> {
        Self::parse(text, true)
    }

    fn parse(text: &str, fields: bool) -> Result<Self, SelectorError> {
        let bad = || SelectorError(text.to_string());
        let mut requirements = Vec::new();
        for term in terms(text) {
            let requirement = if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once("==") {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once('=') {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some((key, values)) = term.split_once(" notin ") {
                Requirement::NotIn(key.trim().into(), set(values))
            } else if let Some((key, values)) = term.split_once(" in ") {
                Requirement::In(key.trim().into(), set(values))
            } else if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().into())
            } else if !term.contains(' ') && !fields {
                Requirement::Exists(term)
            } else {
                return Err(bad());
            };
            requirements.push(requirement);
        }
        Ok(Self {
            requirements,
            fields,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|requirement| {
            let lookup = |key: &str| -> Option<String> {
                if self.fields {
                    let pointer = format!("/{}", key.replace('.', "/"));
                    object.pointer(&pointer).map(|value| match value {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    })
                } else {
                    object
                        .pointer("/metadata/labels")
                        .and_then(|labels| labels.get(key))
                        .and_then(Value::as_str)
                        .map(String::from)
                }
            };
            match requirement {
                Requirement::Equals(key, value) => lookup(key).as_deref() == Some(value),
                Requirement::NotEquals(key, value) => lookup(key).as_deref() != Some(value),
                Requirement::In(key, values) => lookup(key).is_some_and(|v| values.contains(&v)),
                Requirement::NotIn(key, values) => lookup(key).is_none_or(|v| !values.contains(&v)),
                Requirement::Exists(key) => lookup(key).is_some(),
                Requirement::DoesNotExist(key) => lookup(key).is_none(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_cover_every_operator() {
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "iggy", "tier": "broker"}}});
        for (selector, expected) in [
            ("", true),
            ("app=iggy", true),
            ("app==iggy,tier=broker", true),
            ("app!=iggy", false),
            ("tier in (broker, sidecar)", true),
            ("tier notin (broker)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
        ] {
            assert_eq!(
                Selector::labels(selector).expect("parses").matches(&pod),
                expected,
                "{selector}"
            );
        }
        assert!(Selector::labels("a b").is_err());
    }

    #[test]
    fn field_selectors_read_object_paths() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}});
        assert!(Selector::fields("metadata.name=p")
            .expect("parses")
            .matches(&pod));
        assert!(!Selector::fields("metadata.name=q,metadata.namespace=ns")
            .expect("parses")
            .matches(&pod));
    }
}
