//! The kinds the harness serves: a fixed table of built-in resources, plus whatever
//! CustomResourceDefinitions clients create. Discovery documents are rendered from it.

use serde_json::{json, Value};

/// Where a kind keeps its replica count, for the scale subresource.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalePaths {
    /// JSON pointers, e.g. `/spec/replicas`.
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One printer column of a CRD, served through `kubectl get`'s Table format.
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub column_type: String,
    /// A simple JSONPath such as `.status.readyReplicas`.
    pub json_path: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    pub scale: Option<ScalePaths>,
    pub printer_columns: Vec<PrinterColumn>,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            short_names: Vec::new(),
            namespaced,
            status_subresource: false,
            scale: None,
            printer_columns: Vec::new(),
        }
    }

    fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    fn with_short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|name| name.to_string()).collect();
        self
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Stable identity used as the first part of every object key.
    pub fn key(&self) -> String {
        format!("{}/{}", self.api_version(), self.plural)
    }

    fn discovery_entry(&self) -> Vec<Value> {
        let verbs = [
            "create", "delete", "get", "list", "patch", "update", "watch",
        ];
        let mut entries = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
        })];
        if self.status_subresource {
            entries.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if self.scale.is_some() {
            entries.push(json!({
                "name": format!("{}/scale", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        entries
    }
}

/// The built-in kinds the operator, the simulated controllers and kubectl use.
pub fn builtin_types() -> Vec<ResourceType> {
    let statefulset = ResourceType {
        scale: Some(ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            label_selector: None,
        }),
        ..ResourceType::builtin("apps", "v1", "StatefulSet", "statefulsets", true)
            .with_status()
            .with_short_names(&["sts"])
    };
    vec![
        ResourceType::builtin("", "v1", "Namespace", "namespaces", false)
            .with_status()
            .with_short_names(&["ns"]),
        ResourceType::builtin("", "v1", "Pod", "pods", true)
            .with_status()
            .with_short_names(&["po"]),
        ResourceType::builtin("", "v1", "Service", "services", true)
            .with_status()
            .with_short_names(&["svc"]),
        ResourceType::builtin("", "v1", "ConfigMap", "configmaps", true).with_short_names(&["cm"]),
        ResourceType::builtin("", "v1", "Secret", "secrets", true),
        ResourceType::builtin("", "v1", "ServiceAccount", "serviceaccounts", true)
            .with_short_names(&["sa"]),
        ResourceType::builtin(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
        )
        .with_status()
        .with_short_names(&["pvc"]),
        ResourceType::builtin("", "v1", "PersistentVolume", "persistentvolumes", false)
            .with_status()
            .with_short_names(&["pv"]),
        ResourceType::builtin("", "v1", "Node", "nodes", false)
            .with_status()
            .with_short_names(&["no"]),
        ResourceType::builtin("", "v1", "Event", "events", true).with_short_names(&["ev"]),
        statefulset,
        ResourceType::builtin("apps", "v1", "Deployment", "deployments", true)
            .with_status()
            .with_short_names(&["deploy"]),
        ResourceType::builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
        )
        .with_status()
        .with_short_names(&["pdb"]),
        ResourceType::builtin("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
        ),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
        ),
        ResourceType::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        ),
        ResourceType::builtin(
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            false,
        )
        .with_short_names(&["sc"]),
        ResourceType::builtin("coordination.k8s.io", "v1", "Lease", "leases", true),
        // Stored and served; the process kubelet does not enforce them (loopback only).
        ResourceType::builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
        )
        .with_short_names(&["netpol"]),
        ResourceType::builtin(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            true,
        ),
        ResourceType::builtin("events.k8s.io", "v1", "Event", "events", true),
        ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        )
        .with_status()
        .with_short_names(&["crd", "crds"]),
    ]
}

/// The kinds one CRD serves, one per served version.
pub fn types_of_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let mut types = Vec::new();
    for version in spec["versions"].as_array().into_iter().flatten() {
        if version["served"] == Value::Bool(false) {
            continue;
        }
        let subresources = &version["subresources"];
        let scale = subresources.get("scale").map(|scale| ScalePaths {
            spec_replicas: json_path_to_pointer(&text(&scale["specReplicasPath"])),
            status_replicas: json_path_to_pointer(&text(&scale["statusReplicasPath"])),
            label_selector: scale
                .get("labelSelectorPath")
                .map(|path| json_path_to_pointer(&text(path))),
        });
        let printer_columns = version["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|column| PrinterColumn {
                name: text(&column["name"]),
                column_type: text(&column["type"]),
                json_path: text(&column["jsonPath"]),
            })
            .collect();
        types.push(ResourceType {
            group: text(&spec["group"]),
            version: text(&version["name"]),
            kind: text(&names["kind"]),
            plural: text(&names["plural"]),
            singular: text(&names["singular"]),
            short_names: names["shortNames"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect(),
            namespaced: spec["scope"] != "Cluster",
            status_subresource: subresources.get("status").is_some(),
            scale,
            printer_columns,
        });
    }
    types
}

/// `.spec.replicas` → `/spec/replicas`.
pub fn json_path_to_pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |pointer, part| pointer + "/" + part)
}

/// `/api/v1`, `/apis/<group>/<version>`: the resources of one group version.
pub fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let members: Vec<&ResourceType> = types
        .iter()
        .filter(|rt| rt.group == group && rt.version == version)
        .collect();
    let first = members.first()?;
    let resources: Vec<Value> = members.iter().flat_map(|rt| rt.discovery_entry()).collect();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": first.api_version(),
        "resources": resources,
    }))
}

/// `/apis`: every named group with its versions.
pub fn group_list(types: &[ResourceType]) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for rt in types.iter().filter(|rt| !rt.group.is_empty()) {
        match groups.iter_mut().find(|(group, _)| *group == rt.group) {
            Some((_, versions)) if !versions.contains(&rt.version) => {
                versions.push(rt.version.clone())
            }
            Some(_) => {}
            None => groups.push((rt.group.clone(), vec![rt.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|version| json!({"groupVersion": format!("{group}/{version}"), "version": version}))
                .collect();
            json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/openapi/v3`: one entry per served group version. kubectl reads it to learn that the
/// server validates fields itself (`fieldValidation`), and then sends objects unvalidated.
pub fn openapi_v3_root(types: &[ResourceType]) -> Value {
    let mut paths = serde_json::Map::new();
    for rt in types {
        let path = group_version_path(rt);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash=harness")}),
        );
    }
    json!({"paths": paths})
}

fn group_version_path(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        format!("api/{}", rt.version)
    } else {
        format!("apis/{}/{}", rt.group, rt.version)
    }
}

/// `/openapi/v3/apis/<group>/<version>`: the write operations of each kind with the query
/// parameters the harness honours. Schemas are left out; the harness does not validate them.
pub fn openapi_v3_group(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let members: Vec<&ResourceType> = types
        .iter()
        .filter(|rt| rt.group == group && rt.version == version)
        .collect();
    if members.is_empty() {
        return None;
    }
    let parameters: Vec<Value> = ["fieldValidation", "fieldManager", "force", "dryRun"]
        .iter()
        .map(|name| json!({"name": name, "in": "query", "schema": {"type": "string"}}))
        .collect();
    let mut paths = serde_json::Map::new();
    for rt in members {
        let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let operation = json!({
            "x-kubernetes-group-version-kind": gvk,
            "parameters": parameters,
            "responses": {"200": {"description": "OK"}},
        });
        let base = format!("/{}", group_version_path(rt));
        let collection = if rt.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("{base}/{}", rt.plural)
        };
        paths.insert(
            collection.clone(),
            json!({"post": operation, "get": operation}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"patch": operation, "put": operation, "get": operation, "delete": operation}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "kube-harness", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
