//! metav1.LabelSelector against a set of labels: matchLabels and
//! matchExpressions (In, NotIn, Exists, DoesNotExist) all must hold; an
//! empty selector selects everything.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

/// A selector the API server would have refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("selector operator {0:?} is not In, NotIn, Exists or DoesNotExist")]
    Operator(String),
    #[error("selector operator {op} on {key:?} needs {need}")]
    Values {
        op: String,
        key: String,
        need: &'static str,
    },
}

pub fn selects(
    sel: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        let need = |need: &'static str| SelectorError::Values {
            op: e.operator.clone(),
            key: e.key.clone(),
            need,
        };
        let ok = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => return Err(need("values")),
            "Exists" | "DoesNotExist" if !values.is_empty() => return Err(need("no values")),
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => return Err(SelectorError::Operator(other.to_string())),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
        }
    }

    #[test]
    fn operators_as_upstream_defines_them() {
        let a = labels(&[("pod", "a"), ("tier", "web")]);
        let none = labels(&[]);
        assert!(
            selects(&LabelSelector::default(), &none).unwrap(),
            "empty selects all"
        );
        assert!(selects(&expr("pod", "In", &["a", "b"]), &a).unwrap());
        assert!(!selects(&expr("pod", "In", &["b"]), &a).unwrap());
        assert!(
            !selects(&expr("pod", "In", &["a"]), &none).unwrap(),
            "In needs the key"
        );
        assert!(selects(&expr("pod", "NotIn", &["b"]), &a).unwrap());
        assert!(
            selects(&expr("pod", "NotIn", &["b"]), &none).unwrap(),
            "NotIn holds without the key"
        );
        assert!(!selects(&expr("pod", "NotIn", &["a"]), &a).unwrap());
        assert!(selects(&expr("tier", "Exists", &[]), &a).unwrap());
        assert!(!selects(&expr("tier", "DoesNotExist", &[]), &a).unwrap());
        let both = LabelSelector {
            match_labels: Some([("pod".to_string(), "a".to_string())].into()),
            ..expr("tier", "In", &["db"])
        };
        assert!(!selects(&both, &a).unwrap(), "labels AND expressions");
        assert_eq!(
            selects(&expr("pod", "Matches", &["a"]), &a),
            Err(SelectorError::Operator("Matches".into()))
        );
        assert!(selects(&expr("pod", "In", &[]), &a).is_err());
        assert!(selects(&expr("pod", "Exists", &["a"]), &a).is_err());
    }
}
