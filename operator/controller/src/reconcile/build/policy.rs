//! The PodDisruptionBudget: voluntary disruptions (drains) take one broker at a time.

use super::super::validate::ValidatedCluster;
use super::child_meta;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// maxUnavailable 1: a ring of N keeps a quorum through one voluntary disruption for any
/// N >= 3. For N < 3 one disruption already costs the quorum, which no budget can prevent
/// short of blocking drains forever; the budget still serializes them.
pub fn disruption_budget(cluster: &ValidatedCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(cluster, &cluster.names.disruption_budget(), "broker"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(cluster.names.selector_labels()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::validated;
    use super::*;
    use serde_json::json;

    #[test]
    fn one_broker_at_a_time() {
        let budget = disruption_budget(&validated(json!({"replicas": 3})));
        assert_eq!(
            budget.spec.expect("spec").max_unavailable,
            Some(IntOrString::Int(1))
        );
    }
}
