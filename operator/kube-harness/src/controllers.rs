//! Simulated cluster controllers: StatefulSet (pods and PVCs by ordinal, OnDelete and
//! RollingUpdate, Parallel and OrderedReady), a scheduler (node selectors, required
//! anti-affinity on hostname, local-PV node affinity), PVC binding (static local PVs and
//! dynamic provisioning) and a kubelet that runs pods and honours readiness gates.
//!
//! They write straight to the store (not over HTTP), so the API request counts a test reads
//! are the operator's alone. Every pass is idempotent: a pass with nothing to do writes
//! nothing, so the loop settles.

use crate::store::{ApiError, PatchKind, Store, Subresource};
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
pub struct ControllerOptions {
    /// Readiness-gate condition types the kubelet sets True itself (standing in for a sidecar).
    pub auto_ready_gates: Vec<String>,
    /// A process kubelet runs the pods ([`crate::kubelet`]); the simulated one stands aside.
    pub process_pods: bool,
    /// Images the process kubelet can run. A Deployment whose images are all among them gets
    /// real pods; any other stays simulated (available at once, no pods).
    pub process_images: Vec<String>,
}

pub(crate) fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value["metadata"]["labels"]
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn match_labels(selector: &Value, object: &Value) -> bool {
    let have = labels(object);
    selector["matchLabels"].as_object().is_some_and(|wanted| {
        wanted
            .iter()
            .all(|(k, v)| have.get(k).map(String::as_str) == v.as_str())
    })
}

/// Whether a static PV may bind `claim`: unclaimed, or pre-bound to exactly that claim
/// (`claimRef` naming it, no uid yet), as the PV controller allows.
fn free_for(pv: &Value, namespace: &str, claim: &str) -> bool {
    let reference = &pv["spec"]["claimRef"];
    reference.is_null()
        || (reference["name"] == claim
            && reference["namespace"] == namespace
            && reference["uid"].is_null())
}

/// FNV-1a: a stable revision hash of a pod template, like controller-revision-hash.
fn revision_hash(template: &Value) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in serde_json::to_vec(template).unwrap_or_default() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:010x}", hash & 0xff_ffff_ffff)
}

pub(crate) fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn ordinal(pod_name: &str, set_name: &str) -> Option<i64> {
    pod_name
        .strip_prefix(set_name)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// One pass of every controller; returns whether anything was written.
pub fn reconcile_all(store: &mut Store, options: &ControllerOptions) -> bool {
    let mut wrote = false;
    wrote |= statefulsets(store).unwrap_or(false);
    wrote |= schedule(store).unwrap_or(false);
    if !options.process_pods {
        wrote |= kubelet(store, options).unwrap_or(false);
    }
    wrote |= statefulset_status(store).unwrap_or(false);
    wrote |= deployments(store, options).unwrap_or(false);
    wrote
}

/// Deployments. Those whose pods the process kubelet can run get real pods (no ReplicaSet in
/// between: pods are named `<deployment>-<template hash>-<n>` and owned by the Deployment;
/// a changed template replaces every pod at once, as the Recreate strategy would). Any other
/// Deployment becomes available at once without pods, as in pure simulation (the operator
/// deploys only an OpenTelemetry Collector this way and reads only its status).
fn deployments(store: &mut Store, options: &ControllerOptions) -> Result<bool, ApiError> {
    let rt = store.type_by_kind("apps", "Deployment").expect("built in");
    let mut wrote = false;
    for deployment in store.list(&rt, None) {
        let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
        let runnable = options.process_pods
            && deployment["spec"]["template"]["spec"]["containers"]
                .as_array()
                .is_some_and(|containers| {
                    containers.iter().all(|c| {
                        let image = crate::kubelet::plan::image_key(text(c, "/image"));
                        options.process_images.iter().any(|known| known == image)
                    })
                });
        let status = if runnable {
            let (pods_wrote, status) = deployment_pods(store, &deployment, replicas)?;
            wrote |= pods_wrote;
            status
        } else {
            json!({
                "observedGeneration": deployment["metadata"]["generation"],
                "replicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "updatedReplicas": replicas,
                "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
            })
        };
        wrote |= write_status(store, &rt, &deployment, status, "deployment-controller")?;
    }
    Ok(wrote)
}

/// The pods in `namespace` whose owner is `owner` (by uid).
fn pods_owned_by(store: &Store, namespace: &str, owner: &Value) -> Vec<Value> {
    let pod_type = store.type_by_kind("", "Pod").expect("built in");
    store
        .list(&pod_type, Some(namespace))
        .into_iter()
        .filter(|pod| {
            pod["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|reference| reference["uid"] == owner["metadata"]["uid"])
        })
        .collect()
}

/// A new pod from a workload's template, named and owned by the workload.
fn pod_from_template(template: &Value, name: &str, owner_kind: &str, owner: &Value) -> Value {
    let mut pod = json!({
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
        "status": {"phase": "Pending"},
    });
    if !pod["metadata"].is_object() {
        pod["metadata"] = json!({});
    }
    pod["metadata"]["name"] = json!(name);
    if !pod["metadata"]["labels"].is_object() {
        pod["metadata"]["labels"] = json!({});
    }
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": owner_kind, "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
    }]);
    pod
}

/// Keeps `replicas` pods of the Deployment's current template; returns whether it wrote and
/// the Deployment's status.
fn deployment_pods(
    store: &mut Store,
    deployment: &Value,
    replicas: i64,
) -> Result<(bool, Value), ApiError> {
    let pod_type = store.type_by_kind("", "Pod").expect("built in");
    let namespace = text(deployment, "/metadata/namespace").to_string();
    let name = text(deployment, "/metadata/name").to_string();
    let template = &deployment["spec"]["template"];
    let hash = revision_hash(template);
    let owned = pods_owned_by(store, &namespace, deployment);
    let mut wrote = false;
    let live: Vec<&Value> = owned
        .iter()
        .filter(|pod| !pod["metadata"]["deletionTimestamp"].is_string())
        .collect();
    let (current, outdated): (Vec<&Value>, Vec<&Value>) = live
        .iter()
        .partition(|pod| text(pod, "/metadata/labels/pod-template-hash") == hash);
    for pod in outdated
        .iter()
        .chain(current.iter().skip(replicas.max(0) as usize))
    {
        store.delete(&pod_type, &namespace, text(pod, "/metadata/name"))?;
        wrote = true;
    }
    let mut index = 0;
    for _ in current.len() as i64..replicas {
        let pod_name = loop {
            let candidate = format!("{name}-{hash}-{index}");
            index += 1;
            if !owned.iter().any(|p| text(p, "/metadata/name") == candidate) {
                break candidate;
            }
        };
        let mut pod = pod_from_template(template, &pod_name, "Deployment", deployment);
        pod["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        store.create(&pod_type, &namespace, pod, "deployment-controller")?;
        wrote = true;
    }
    let ready = current.iter().filter(|pod| is_ready(pod)).count() as i64;
    let available = ready >= replicas;
    let status = json!({
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": live.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "updatedReplicas": current.len(),
        "conditions": [{
            "type": "Available",
            "status": if available { "True" } else { "False" },
            "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
        }],
    });
    Ok((wrote, status))
}

/// Replaces an object's status when it differs; returns whether that wrote.
fn write_status(
    store: &mut Store,
    rt: &crate::resources::ResourceType,
    object: &Value,
    status: Value,
    manager: &str,
) -> Result<bool, ApiError> {
    if object["status"] == status {
        return Ok(false);
    }
    let namespace = text(object, "/metadata/namespace").to_string();
    let name = text(object, "/metadata/name").to_string();
    let after = store.patch(
        rt,
        &namespace,
        &name,
        PatchKind::Merge,
        &json!({"status": status}),
        Subresource::Status,
        manager,
        false,
    )?;
    Ok(before_after_differ(object, &after))
}

fn before_after_differ(before: &Value, after: &Value) -> bool {
    before["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"]
}

fn statefulsets(store: &mut Store) -> Result<bool, ApiError> {
    let sts_type = store.type_by_kind("apps", "StatefulSet").expect("built in");
    let pod_type = store.type_by_kind("", "Pod").expect("built in");
    let pvc_type = store
        .type_by_kind("", "PersistentVolumeClaim")
        .expect("built in");
    let mut wrote = false;
    for set in store.list(&sts_type, None) {
        if set["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let name = text(&set, "/metadata/name").to_string();
        let namespace = text(&set, "/metadata/namespace").to_string();
        let replicas = set["spec"]["replicas"].as_i64().unwrap_or(1);
        let template = &set["spec"]["template"];
        let revision = format!("{name}-{}", revision_hash(template));
        let parallel = set["spec"]["podManagementPolicy"] == "Parallel";
        let pods: BTreeMap<i64, Value> = pods_owned_by(store, &namespace, &set)
            .into_iter()
            .filter_map(|pod| Some((ordinal(text(&pod, "/metadata/name"), &name)?, pod)))
            .collect();
        // Scale down: highest ordinal first. Only a delete that changed something is a write:
        // deleting a pod that already terminates leaves it as it is, and counting that would
        // spin the controller loop until the kubelet finished it.
        for pod in pods
            .iter()
            .rev()
            .filter(|(index, _)| **index >= replicas)
            .map(|(_, pod)| pod)
        {
            let after = store.delete(&pod_type, &namespace, text(pod, "/metadata/name"))?;
            wrote |= before_after_differ(pod, &after);
            if !parallel {
                break;
            }
        }
        for index in 0..replicas {
            if pods.contains_key(&index) {
                continue;
            }
            if !parallel && (0..index).any(|lower| !pods.get(&lower).is_some_and(is_ready)) {
                break;
            }
            let pod_name = format!("{name}-{index}");
            for claim in set["spec"]["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let claim_name = format!("{}-{pod_name}", text(claim, "/metadata/name"));
                if store.get(&pvc_type, &namespace, &claim_name).is_ok() {
                    continue;
                }
                let mut claim_labels = claim["metadata"]["labels"].clone();
                if !claim_labels.is_object() {
                    claim_labels = json!({});
                }
                if let Some(selector) = set["spec"]["selector"]["matchLabels"].as_object() {
                    for (k, v) in selector {
                        claim_labels[k] = v.clone();
                    }
                }
                let pvc = json!({
                    "metadata": {"name": claim_name, "labels": claim_labels},
                    "spec": claim["spec"],
                    "status": {"phase": "Pending"},
                });
                store.create(&pvc_type, &namespace, pvc, "statefulset-controller")?;
            }
            let mut pod = pod_from_template(template, &pod_name, "StatefulSet", &set);
            pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
            pod["metadata"]["labels"]["controller-revision-hash"] = json!(revision);
            pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"] = json!(index.to_string());

            pod["spec"]["hostname"] = json!(pod_name);
            if let Some(service) = set["spec"]["serviceName"].as_str() {
                pod["spec"]["subdomain"] = json!(service);
            }
            let mut volumes = pod["spec"]["volumes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for claim in set["spec"]["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let claim_name = text(claim, "/metadata/name");
                volumes.push(json!({"name": claim_name, "persistentVolumeClaim": {"claimName": format!("{claim_name}-{pod_name}")}}));
            }
            pod["spec"]["volumes"] = json!(volumes);
            store.create(&pod_type, &namespace, pod, "statefulset-controller")?;
            wrote = true;
        }
        // RollingUpdate replaces one outdated pod at a time, highest ordinal first, once every
        // pod is ready; OnDelete leaves outdated pods alone until someone deletes them.
        if set["spec"]["updateStrategy"]["type"] != "OnDelete" {
            let all_ready = pods.len() as i64 >= replicas && pods.values().all(is_ready);
            let outdated = pods.iter().rev().find(|(index, pod)| {
                **index < replicas
                    && !pod["metadata"]["deletionTimestamp"].is_string()
                    && text(pod, "/metadata/labels/controller-revision-hash") != revision
            });
            if let (true, Some((_, pod))) = (all_ready, outdated) {
                store.delete(&pod_type, &namespace, text(pod, "/metadata/name"))?;
                wrote = true;
            }
        }
    }
    Ok(wrote)
}

fn statefulset_status(store: &mut Store) -> Result<bool, ApiError> {
    let sts_type = store.type_by_kind("apps", "StatefulSet").expect("built in");
    let mut wrote = false;
    for set in store.list(&sts_type, None) {
        let name = text(&set, "/metadata/name").to_string();
        let namespace = text(&set, "/metadata/namespace").to_string();
        let revision = format!("{name}-{}", revision_hash(&set["spec"]["template"]));
        let pods = pods_owned_by(store, &namespace, &set);
        let ready = pods.iter().filter(|pod| is_ready(pod)).count();
        let updated = pods
            .iter()
            .filter(|pod| text(pod, "/metadata/labels/controller-revision-hash") == revision)
            .count();
        let status = json!({
            "observedGeneration": set["metadata"]["generation"],
            "replicas": pods.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": updated,
            "updatedReplicas": updated,
            "currentRevision": revision,
            "updateRevision": revision,
            "collisionCount": 0,
        });
        wrote |= write_status(store, &sts_type, &set, status, "statefulset-controller")?;
    }
    Ok(wrote)
}

/// Picks a node for each pending pod and binds its claims.
fn schedule(store: &mut Store) -> Result<bool, ApiError> {
    let pod_type = store.type_by_kind("", "Pod").expect("built in");
    let node_type = store.type_by_kind("", "Node").expect("built in");
    let pvc_type = store
        .type_by_kind("", "PersistentVolumeClaim")
        .expect("built in");
    let pv_type = store
        .type_by_kind("", "PersistentVolume")
        .expect("built in");
    let class_type = store
        .type_by_kind("storage.k8s.io", "StorageClass")
        .expect("built in");
    let mut wrote = false;
    for pod in store.list(&pod_type, None) {
        if pod["spec"]["nodeName"].is_string() || pod["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let namespace = text(&pod, "/metadata/namespace").to_string();
        let pod_name = text(&pod, "/metadata/name").to_string();
        let all_pods = store.list(&pod_type, Some(&namespace));
        let mut nodes: Vec<Value> = store.list(&node_type, None);
        nodes.sort_by(|a, b| text(a, "/metadata/name").cmp(text(b, "/metadata/name")));
        // Node selector.
        if let Some(selector) = pod["spec"]["nodeSelector"].as_object() {
            nodes.retain(|node| {
                let node_labels = labels(node);
                selector
                    .iter()
                    .all(|(k, v)| node_labels.get(k).map(String::as_str) == v.as_str())
            });
        }
        // Required anti-affinity on the hostname topology.
        let anti = pod
            .pointer(
                "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
            )
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for term in anti {
            let taken: Vec<String> = all_pods
                .iter()
                .filter(|other| text(other, "/metadata/name") != pod_name)
                .filter(|other| match_labels(&term["labelSelector"], other))
                .filter_map(|other| other["spec"]["nodeName"].as_str().map(String::from))
                .collect();
            nodes.retain(|node| !taken.iter().any(|t| t == text(node, "/metadata/name")));
        }
        // Volumes: a bound local PV pins the node; an unbound local claim needs a free PV.
        let claims: Vec<String> = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| {
                v.pointer("/persistentVolumeClaim/claimName")?
                    .as_str()
                    .map(String::from)
            })
            .collect();
        let pvs = store.list(&pv_type, None);
        let mut plan: Vec<(String, Option<String>)> = Vec::new();
        let mut feasible = true;
        for claim_name in &claims {
            let Ok(claim) = store.get(&pvc_type, &namespace, claim_name) else {
                feasible = false;
                break;
            };
            if let Some(volume) = claim["spec"]["volumeName"].as_str() {
                if let Some(pv) = pvs.iter().find(|pv| text(pv, "/metadata/name") == volume) {
                    if let Some(host) = pv_node(pv) {
                        nodes.retain(|node| text(node, "/metadata/name") == host);
                    }
                }
                continue;
            }
            let class_name = text(&claim, "/spec/storageClassName").to_string();
            let class = store.get(&class_type, "", &class_name).ok();
            let static_only = class
                .as_ref()
                .is_some_and(|c| c["provisioner"] == "kubernetes.io/no-provisioner");
            if static_only {
                let used: Vec<&str> = plan.iter().filter_map(|(_, pv)| pv.as_deref()).collect();
                let candidates: Vec<&Value> = pvs
                    .iter()
                    .filter(|pv| text(pv, "/spec/storageClassName") == class_name)
                    .filter(|pv| {
                        free_for(pv, &namespace, claim_name)
                            && !used.contains(&text(pv, "/metadata/name"))
                    })
                    .filter(|pv| fits(pv, &claim))
                    .collect();
                nodes.retain(|node| {
                    candidates
                        .iter()
                        .any(|pv| pv_node(pv) == Some(text(node, "/metadata/name")))
                });
                plan.push((claim_name.clone(), None));
            } else {
                plan.push((claim_name.clone(), Some(String::new())));
            }
        }
        let Some(node) = nodes
            .first()
            .filter(|_| feasible)
            .map(|n| text(n, "/metadata/name").to_string())
        else {
            let unschedulable = json!({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0 nodes are available"}]}});
            if pod["status"]["conditions"] != unschedulable["status"]["conditions"] {
                store.patch(
                    &pod_type,
                    &namespace,
                    &pod_name,
                    PatchKind::Merge,
                    &unschedulable,
                    Subresource::Status,
                    "scheduler",
                    false,
                )?;
                wrote = true;
            }
            continue;
        };
        // Bind claims: local ones to a free PV on the chosen node, others to a new PV.
        for (claim_name, dynamic) in plan {
            let claim = store.get(&pvc_type, &namespace, &claim_name)?;
            let pv_name = match dynamic {
                Some(_) => {
                    let pv_name = format!("pvc-{}", text(&claim, "/metadata/uid"));
                    let pv = json!({
                        "metadata": {"name": pv_name},
                        "spec": {
                            "capacity": {"storage": claim.pointer("/spec/resources/requests/storage").cloned().unwrap_or(json!("1Gi"))},
                            "accessModes": claim["spec"]["accessModes"],
                            "storageClassName": claim["spec"]["storageClassName"],
                            "persistentVolumeReclaimPolicy": "Delete",
                            "hostPath": {"path": format!("/var/lib/harness/{pv_name}")},
                            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
                        },
                    });
                    store.create(&pv_type, "", pv, "persistentvolume-controller")?;
                    pv_name
                }
                None => {
                    let class_name = text(&claim, "/spec/storageClassName").to_string();
                    let pvs = store.list(&pv_type, None);
                    let Some(pv) = pvs.iter().find(|pv| {
                        text(pv, "/spec/storageClassName") == class_name
                            && free_for(pv, &namespace, &claim_name)
                            && pv_node(pv) == Some(node.as_str())
                            && fits(pv, &claim)
                    }) else {
                        continue;
                    };
                    text(pv, "/metadata/name").to_string()
                }
            };
            let claim_ref = json!({"spec": {"claimRef": {"kind": "PersistentVolumeClaim", "namespace": namespace, "name": claim_name, "uid": claim["metadata"]["uid"]}}});
            store.patch(
                &pv_type,
                "",
                &pv_name,
                PatchKind::Merge,
                &claim_ref,
                Subresource::Main,
                "persistentvolume-controller",
                false,
            )?;
            store.patch(
                &pv_type,
                "",
                &pv_name,
                PatchKind::Merge,
                &json!({"status": {"phase": "Bound"}}),
                Subresource::Status,
                "persistentvolume-controller",
                false,
            )?;
            store.patch(
                &pvc_type,
                &namespace,
                &claim_name,
                PatchKind::Merge,
                &json!({"spec": {"volumeName": pv_name}}),
                Subresource::Main,
                "persistentvolume-controller",
                false,
            )?;
            let capacity = store.get(&pv_type, "", &pv_name)?["spec"]["capacity"].clone();
            store.patch(&pvc_type, &namespace, &claim_name, PatchKind::Merge, &json!({"status": {"phase": "Bound", "capacity": capacity, "accessModes": claim["spec"]["accessModes"]}}), Subresource::Status, "persistentvolume-controller", false)?;
        }
        store.patch(
            &pod_type,
            &namespace,
            &pod_name,
            PatchKind::Merge,
            &json!({"spec": {"nodeName": node}}),
            Subresource::Main,
            "scheduler",
            false,
        )?;
        wrote = true;
    }
    Ok(wrote)
}

/// The node a PV is pinned to by its required node affinity on the hostname label.
fn pv_node(pv: &Value) -> Option<&str> {
    pv.pointer("/spec/nodeAffinity/required/nodeSelectorTerms/0/matchExpressions")?
        .as_array()?
        .iter()
        .find(|e| e["key"] == "kubernetes.io/hostname")?
        .pointer("/values/0")?
        .as_str()
}

/// Parses the quantities storage requests use (Ki..Ti, k..T, plain bytes).
pub fn quantity_bytes(text: &str) -> Option<u128> {
    let text = text.trim();
    let units: [(&str, u128); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<u128>().ok().map(|n| n * factor);
        }
    }
    text.parse().ok()
}

fn fits(pv: &Value, claim: &Value) -> bool {
    let capacity = pv
        .pointer("/spec/capacity/storage")
        .and_then(Value::as_str)
        .and_then(quantity_bytes);
    let wanted = claim
        .pointer("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .and_then(quantity_bytes);
    match (capacity, wanted) {
        (Some(capacity), Some(wanted)) => capacity >= wanted,
        _ => true,
    }
}

/// A running pod's conditions, as a kubelet writes them: readiness-gate conditions kept as
/// their writers (sidecars) set them, or set True here for `auto_gates`; ContainersReady from
/// the containers; Ready only when the containers are ready and every gate is True.
/// Transition times are kept while a condition's status holds.
pub(crate) fn pod_conditions(
    pod: &Value,
    containers_ready: bool,
    auto_gates: &[String],
) -> Vec<Value> {
    let existing: Vec<Value> = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let gates: Vec<String> = pod["spec"]["readinessGates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["conditionType"].as_str().map(String::from))
        .collect();
    let mut conditions: Vec<Value> = existing
        .iter()
        .filter(|c| gates.iter().any(|g| c["type"] == g.as_str()))
        .cloned()
        .collect();
    for gate in gates.iter().filter(|g| auto_gates.contains(g)) {
        if !conditions.iter().any(|c| c["type"] == gate.as_str()) {
            conditions.push(json!({"type": gate, "status": "True", "reason": "SetByHarness"}));
        }
    }
    let gates_true = gates.iter().all(|gate| {
        conditions
            .iter()
            .any(|c| c["type"] == gate.as_str() && c["status"] == "True")
    });
    let since = |kind: &str, status: &str| {
        existing
            .iter()
            .find(|c| c["type"] == kind && c["status"] == status)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(crate::store::now()))
    };
    let flag = |b: bool| if b { "True" } else { "False" };
    let ready = containers_ready && gates_true;
    let ready_reason = if !containers_ready {
        Some("ContainersNotReady")
    } else if !gates_true {
        Some("ReadinessGatesNotReady")
    } else {
        None
    };
    for (kind, status, reason) in [
        ("PodScheduled", "True", None),
        ("Initialized", "True", None),
        (
            "ContainersReady",
            flag(containers_ready),
            (!containers_ready).then_some("ContainersNotReady"),
        ),
        ("Ready", flag(ready), ready_reason),
    ] {
        let mut condition =
            json!({"type": kind, "status": status, "lastTransitionTime": since(kind, status)});
        if let Some(reason) = reason {
            condition["reason"] = json!(reason);
        }
        conditions.push(condition);
    }
    conditions
}

/// Runs scheduled pods: Running with an IP, conditions, and Ready only when every readiness
/// gate is True.
fn kubelet(store: &mut Store, options: &ControllerOptions) -> Result<bool, ApiError> {
    let pod_type = store.type_by_kind("", "Pod").expect("built in");
    let mut wrote = false;
    for (index, pod) in store.list(&pod_type, None).into_iter().enumerate() {
        let Some(node) = pod["spec"]["nodeName"].as_str() else {
            continue;
        };
        let namespace = text(&pod, "/metadata/namespace").to_string();
        let name = text(&pod, "/metadata/name").to_string();
        let conditions = pod_conditions(&pod, true, &options.auto_ready_gates);
        let containers: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| json!({"name": c["name"], "image": c["image"], "ready": true, "restartCount": 0, "started": true, "state": {"running": {}}}))
            .collect();
        let status = json!({
            "phase": "Running",
            "hostIP": format!("192.168.0.{}", 10 + node.bytes().last().unwrap_or(b'0') % 200),
            "podIP": pod["status"]["podIP"].as_str().map(String::from).unwrap_or_else(|| format!("10.244.{}.{}", index / 250, index % 250 + 2)),
            "conditions": conditions,
            "containerStatuses": containers,
        });
        let mut current = pod["status"].clone();
        if let Some(map) = current.as_object_mut() {
            map.remove("startTime");
        }
        if current != status {
            let mut patch = json!({"status": status});
            patch["status"]["startTime"] = pod["status"]["startTime"].clone();
            if patch["status"]["startTime"].is_null() {
                patch["status"]["startTime"] = json!(crate::store::now());
            }
            store.patch(
                &pod_type,
                &namespace,
                &name,
                PatchKind::Merge,
                &patch,
                Subresource::Status,
                "kubelet",
                false,
            )?;
            wrote = true;
        }
    }
    Ok(wrote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_binary_and_decimal_suffixes() {
        assert_eq!(quantity_bytes("10Gi"), Some(10 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("42"), Some(42));
        assert_eq!(quantity_bytes("x"), None);
    }

    fn nodes(store: &mut Store, count: usize) {
        let node_type = store.type_by_kind("", "Node").expect("built in");
        for i in 0..count {
            let node = json!({"metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}")}}});
            store.create(&node_type, "", node, "t").expect("node");
        }
    }

    fn settle(store: &mut Store, options: &ControllerOptions) {
        for _ in 0..50 {
            if !reconcile_all(store, options) {
                return;
            }
        }
        panic!("controllers did not settle");
    }

    /// Merges `spec` into the test StatefulSet `web`'s spec.
    fn patch_web_spec(store: &mut Store, spec: Value) {
        let sts_type = store.type_by_kind("apps", "StatefulSet").expect("built in");
        store
            .patch(
                &sts_type,
                "default",
                "web",
                PatchKind::Merge,
                &json!({ "spec": spec }),
                Subresource::Main,
                "t",
                false,
            )
            .expect("the StatefulSet patches");
    }

    fn sts(replicas: i64) -> Value {
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": replicas, "serviceName": "web", "podManagementPolicy": "Parallel",
                "updateStrategy": {"type": "OnDelete"},
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{"name": "c", "image": "i:1"}],
                        "readinessGates": [{"conditionType": "example.com/gate"}],
                        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}},
                    },
                },
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
            },
        })
    }

    /// Under the process kubelet a deleted pod terminates for a while; the controllers must
    /// settle meanwhile instead of deleting it again on every pass (a spin that once held a
    /// worker thread and the store until the test runner gave up).
    #[test]
    fn a_scale_down_settles_while_its_pods_terminate_gracefully() {
        let mut store = Store::new();
        store.set_graceful_pod_deletion(true);
        nodes(&mut store, 3);
        let sts_type = store.type_by_kind("apps", "StatefulSet").expect("built in");
        store
            .create(&sts_type, "default", sts(3), "t")
            .expect("sts");
        let options = ControllerOptions {
            auto_ready_gates: vec!["example.com/gate".into()],
            ..ControllerOptions::default()
        };
        settle(&mut store, &options);
        patch_web_spec(
            &mut store,
            json!({"replicas": 1, "template": {"metadata": {"annotations": {"changed": "yes"}}}}),
        );
        settle(&mut store, &options);
        let pod_type = store.type_by_kind("", "Pod").expect("built in");
        let pods = store.list(&pod_type, Some("default"));
        let terminating: Vec<&str> = pods
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_string())
            .map(|p| text(p, "/metadata/name"))
            .collect();
        assert_eq!(pods.len(), 3, "the leavers are still terminating");
        assert_eq!(terminating.len(), 2, "{terminating:?}");
        assert!(
            !reconcile_all(&mut store, &options),
            "nothing left to write"
        );
    }

    #[test]
    fn statefulset_creates_spread_pods_and_claims_and_waits_for_gates() {
        let mut store = Store::new();
        nodes(&mut store, 3);
        let sts_type = store.type_by_kind("apps", "StatefulSet").expect("built in");
        store
            .create(&sts_type, "default", sts(3), "t")
            .expect("sts");
        settle(&mut store, &ControllerOptions::default());
        let pod_type = store.type_by_kind("", "Pod").expect("built in");
        let pods = store.list(&pod_type, Some("default"));
        assert_eq!(pods.len(), 3);
        let mut hosts: Vec<&str> = pods.iter().map(|p| text(p, "/spec/nodeName")).collect();
        hosts.sort();
        assert_eq!(hosts, ["node-0", "node-1", "node-2"]);
        assert!(pods
            .iter()
            .all(|p| p["status"]["phase"] == "Running" && !is_ready(p)));
        let set = store.get(&sts_type, "default", "web").expect("sts");
        assert_eq!(set["status"]["readyReplicas"], 0);

        let options = ControllerOptions {
            auto_ready_gates: vec!["example.com/gate".into()],
            ..ControllerOptions::default()
        };
        settle(&mut store, &options);
        let set = store.get(&sts_type, "default", "web").expect("sts");
        assert_eq!(set["status"]["readyReplicas"], 3);
        let pvc_type = store
            .type_by_kind("", "PersistentVolumeClaim")
            .expect("built in");
        let claims = store.list(&pvc_type, Some("default"));
        assert_eq!(claims.len(), 3);
        assert!(claims.iter().all(|c| c["status"]["phase"] == "Bound"));

        // A fourth replica has no free node under required anti-affinity.
        patch_web_spec(&mut store, json!({"replicas": 4}));
        settle(&mut store, &options);
        let stuck = store
            .get(&pod_type, "default", "web-3")
            .expect("pod exists");
        assert!(stuck["spec"]["nodeName"].is_null());
        assert_eq!(stuck["status"]["conditions"][0]["reason"], "Unschedulable");

        // Scale down removes the highest ordinals and keeps the claims.
        patch_web_spec(&mut store, json!({"replicas": 1}));
        settle(&mut store, &options);
        assert_eq!(store.list(&pod_type, Some("default")).len(), 1);
        assert_eq!(store.list(&pvc_type, Some("default")).len(), 4);
    }

    #[test]
    fn on_delete_keeps_outdated_pods_until_deleted() {
        let mut store = Store::new();
        nodes(&mut store, 1);
        let options = ControllerOptions {
            auto_ready_gates: vec!["example.com/gate".into()],
            ..ControllerOptions::default()
        };
        let sts_type = store.type_by_kind("apps", "StatefulSet").expect("built in");
        store
            .create(&sts_type, "default", sts(1), "t")
            .expect("sts");
        settle(&mut store, &options);
        store.patch(&sts_type, "default", "web", PatchKind::Json, &json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "i:2"}]), Subresource::Main, "t", false).expect("new image");
        settle(&mut store, &options);
        let pod_type = store.type_by_kind("", "Pod").expect("built in");
        assert_eq!(
            store.get(&pod_type, "default", "web-0").expect("pod")["spec"]["containers"][0]
                ["image"],
            "i:1"
        );
        store.delete(&pod_type, "default", "web-0").expect("delete");
        settle(&mut store, &options);
        assert_eq!(
            store.get(&pod_type, "default", "web-0").expect("pod")["spec"]["containers"][0]
                ["image"],
            "i:2"
        );
    }

    /// The no-provisioner class `local`; returns the PersistentVolume type.
    fn local_class(store: &mut Store) -> crate::resources::ResourceType {
        let class_type = store
            .type_by_kind("storage.k8s.io", "StorageClass")
            .expect("built in");
        store.create(&class_type, "", json!({"metadata": {"name": "local"}, "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}), "t").expect("class");
        store
            .type_by_kind("", "PersistentVolume")
            .expect("built in")
    }

    /// A 10Gi local PV of class `local` on `node`, pre-bound to `claim` when given.
    fn local_pv(store: &mut Store, name: &str, node: &str, claim: Option<&str>) {
        let pv_type = store
            .type_by_kind("", "PersistentVolume")
            .expect("built in");
        let mut pv = json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": "10Gi"}, "storageClassName": "local", "local": {"path": "/mnt/nvme0"}, "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}});
        if let Some(claim) = claim {
            pv["spec"]["claimRef"] =
                json!({"kind": "PersistentVolumeClaim", "namespace": "default", "name": claim});
        }
        store.create(&pv_type, "", pv, "t").expect("pv");
    }

    /// StatefulSet `web` of `replicas` whose claims use class `local`, settled.
    fn local_sts(store: &mut Store, replicas: i64) {
        let mut set = sts(replicas);
        set["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] = json!("local");
        let sts_type = store.type_by_kind("apps", "StatefulSet").expect("built in");
        store.create(&sts_type, "default", set, "t").expect("sts");
        settle(store, &ControllerOptions::default());
    }

    #[test]
    fn local_claims_bind_to_the_pv_on_the_chosen_node() {
        let mut store = Store::new();
        nodes(&mut store, 2);
        let pv_type = local_class(&mut store);
        // Only node-1 has a disk.
        local_pv(&mut store, "disk-1", "node-1", None);
        local_sts(&mut store, 1);
        let pod_type = store.type_by_kind("", "Pod").expect("built in");
        assert_eq!(
            store.get(&pod_type, "default", "web-0").expect("pod")["spec"]["nodeName"],
            "node-1"
        );
        assert_eq!(
            store.get(&pv_type, "", "disk-1").expect("pv")["spec"]["claimRef"]["name"],
            "data-web-0"
        );
    }

    #[test]
    fn a_pre_bound_pv_goes_to_its_claim_only() {
        let mut store = Store::new();
        nodes(&mut store, 2);
        let pv_type = local_class(&mut store);
        // Crosswise: node-0's disk is member 1's, node-1's is member 0's.
        for (disk, node, claim) in [
            ("disk-a", "node-0", "data-web-1"),
            ("disk-b", "node-1", "data-web-0"),
        ] {
            local_pv(&mut store, disk, node, Some(claim));
        }
        local_sts(&mut store, 2);
        let pod_type = store.type_by_kind("", "Pod").expect("built in");
        let node_of = |pod: &str| {
            store.get(&pod_type, "default", pod).expect("pod")["spec"]["nodeName"].clone()
        };
        assert_eq!(node_of("web-0"), "node-1");
        assert_eq!(node_of("web-1"), "node-0");
        let claim = store.get(&pv_type, "", "disk-b").expect("pv")["spec"]["claimRef"].clone();
        assert_eq!(claim["name"], "data-web-0");
        assert!(claim["uid"].is_string(), "bound now: {claim}");
    }
}
