//! The object store behind the API: objects as JSON, one global resourceVersion, a bounded
//! history of changes for watches, field managers, finalizers and ownerReference garbage
//! collection. Every write goes through `commit`, so watch events, resourceVersions and
//! generation bumps follow the same rules whatever verb made them.

use crate::patch::{json_patch, merge_patch, PatchError};
use crate::resources::{types_of_crd, ResourceType};
use crate::ssa::{self, FieldSet, Scope, Step};
use base64::prelude::{Engine, BASE64_STANDARD};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::broadcast;

/// An error answered as a Kubernetes `Status` object.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        let group = if rt.group.is_empty() {
            String::new()
        } else {
            format!(".{}", rt.group)
        };
        Self::new(
            404,
            "NotFound",
            format!("{}{group} \"{name}\" not found", rt.plural),
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "Conflict", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn status_body(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

impl From<PatchError> for ApiError {
    fn from(error: PatchError) -> Self {
        ApiError::invalid(error.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change, as watchers see it.
#[derive(Debug)]
pub struct Change {
    pub revision: u64,
    pub resource: String,
    pub namespace: String,
    pub event: EventType,
    pub object: Value,
}

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    /// Served as a merge patch; see `patch.rs`.
    Strategic,
    Apply,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Operation {
    Apply,
    Update,
}

#[derive(Clone, Debug)]
struct Manager {
    name: String,
    operation: Operation,
    subresource: Subresource,
    fields: FieldSet,
    time: String,
}

#[derive(Clone, Debug)]
struct Entry {
    value: Value,
    managers: Vec<Manager>,
}

type ObjectKey = (String, String, String);

/// How many changes a watch can resume from; older resourceVersions get 410 Gone.
const HISTORY_LIMIT: usize = 20_000;

pub struct Store {
    types: Vec<ResourceType>,
    objects: BTreeMap<ObjectKey, Entry>,
    revision: u64,
    history: VecDeque<Arc<Change>>,
    /// Watches asking for a resourceVersion below this are answered 410 Gone.
    oldest_resumable: u64,
    changes: broadcast::Sender<Arc<Change>>,
    next_uid: u64,
    /// Pods are deleted as a kubelet would: marked with a deletionTimestamp and removed only
    /// once their processes stopped ([`Store::finish_pod_deletion`]). Off for the simulated
    /// kubelet, whose pods have nothing to stop.
    graceful_pods: bool,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn key(rt: &ResourceType, namespace: &str, name: &str) -> ObjectKey {
    let namespace = if rt.namespaced { namespace } else { "" };
    (rt.key(), namespace.to_string(), name.to_string())
}

fn name_of(object: &Value) -> Option<&str> {
    object.pointer("/metadata/name").and_then(Value::as_str)
}

/// Everything but metadata and status: what `metadata.generation` counts changes of.
fn desired_state(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    copy
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(65_536);
        let mut store = Self {
            types: crate::resources::builtin_types(),
            objects: BTreeMap::new(),
            revision: 1,
            history: VecDeque::new(),
            oldest_resumable: 1,
            changes,
            next_uid: 0,
            graceful_pods: false,
        };
        let namespaces = store.type_by_kind("", "Namespace").expect("built-in kind");
        for namespace in ["default", "kube-system"] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}, "status": {"phase": "Active"}});
            store
                .create(&namespaces, "", body, "harness")
                .expect("fresh store accepts namespaces");
        }
        store
    }

    /// Turns on graceful pod deletion (the process kubelet runs pods that must stop first).
    pub fn set_graceful_pod_deletion(&mut self, on: bool) {
        self.graceful_pods = on;
    }

    /// Removes a pod marked for deletion once the kubelet stopped it.
    pub fn finish_pod_deletion(&mut self, namespace: &str, name: &str) {
        let Some(rt) = self.type_by_kind("", "Pod") else {
            return;
        };
        let marked = self
            .objects
            .get(&key(&rt, namespace, name))
            .is_some_and(|entry| entry.value["metadata"]["deletionTimestamp"].is_string());
        let finalizers_left = self
            .objects
            .get(&key(&rt, namespace, name))
            .is_some_and(|entry| {
                entry.value["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|list| !list.is_empty())
            });
        if marked && !finalizers_left {
            self.remove(&rt, namespace, name);
        }
    }

    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    pub fn type_for(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|rt| rt.group == group && rt.version == version && rt.plural == plural)
            .cloned()
    }

    pub fn type_by_kind(&self, group: &str, kind: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|rt| rt.group == group && rt.kind == kind)
            .cloned()
    }

    /// Changes after `revision` for a resumed watch, or 410 when history no longer reaches it.
    pub fn changes_since(&self, revision: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if revision + 1 < self.oldest_resumable {
            return Err(ApiError::new(
                410,
                "Expired",
                format!(
                    "too old resource version: {revision} ({})",
                    self.oldest_resumable
                ),
            ));
        }
        Ok(self
            .history
            .iter()
            .filter(|change| change.revision > revision)
            .cloned()
            .collect())
    }

    /// Forgets all history, so every resumed watch gets 410 Gone (tests of relisting).
    pub fn compact(&mut self) {
        self.history.clear();
        self.oldest_resumable = self.revision + 1;
    }

    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&key(rt, namespace, name))
            .map(|entry| entry.value.clone())
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Objects of a kind, in one namespace or all (`None`).
    pub fn list(&self, rt: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
        let resource = rt.key();
        self.objects
            .iter()
            .filter(|((kind, ns, _), _)| {
                *kind == resource && (!rt.namespaced || namespace.is_none_or(|wanted| ns == wanted))
            })
            .map(|(_, entry)| entry.value.clone())
            .collect()
    }

    pub fn create(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        mut body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request("body must be a JSON object"));
        }
        let name = match name_of(&body) {
            Some(name) => name.to_string(),
            None => match body
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                Some(prefix) => format!("{prefix}{:05x}", self.next_uid + 1),
                None => return Err(ApiError::invalid("metadata.name: Required value")),
            },
        };
        if self.objects.contains_key(&key(rt, namespace, &name)) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", rt.plural),
            ));
        }
        body["metadata"]["name"] = json!(name);
        let scope = if rt.status_subresource {
            Scope::MainOnly
        } else {
            Scope::Whole
        };
        let manager = Manager {
            name: manager.to_string(),
            operation: Operation::Update,
            subresource: Subresource::Main,
            fields: ssa::field_set(&body, scope),
            time: now(),
        };
        self.commit(rt, namespace, None, body, vec![manager])
    }

    /// PUT: replaces the object (or its status), with optimistic concurrency when the body
    /// carries a resourceVersion.
    pub fn replace(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        body: Value,
        subresource: Subresource,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let entry = self.entry(rt, namespace, name)?;
        check_resource_version(&entry.value, &body)?;
        let new = scoped_write(rt, &entry.value, body, subresource);
        let managers = record_update(&entry, &new, rt, subresource, manager);
        self.commit(rt, namespace, Some(entry), new, managers)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
        subresource: Subresource,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        if kind == PatchKind::Apply {
            return self.apply(rt, namespace, name, body, subresource, manager, force);
        }
        let entry = self.entry(rt, namespace, name)?;
        let patched = match kind {
            PatchKind::Json => json_patch(&entry.value, body)?,
            _ => {
                let mut target = entry.value.clone();
                merge_patch(&mut target, body);
                target
            }
        };
        check_resource_version(&entry.value, body)?;
        let new = scoped_write(rt, &entry.value, patched, subresource);
        let managers = record_update(&entry, &new, rt, subresource, manager);
        self.commit(rt, namespace, Some(entry), new, managers)
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        config: &Value,
        subresource: Subresource,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        if manager.is_empty() {
            return Err(ApiError::bad_request(
                "PATCH with apply requires fieldManager",
            ));
        }
        if name_of(config).is_some_and(|applied| applied != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let scope = match subresource {
            Subresource::Status => Scope::StatusOnly,
            Subresource::Main if rt.status_subresource => Scope::MainOnly,
            Subresource::Main => Scope::Whole,
        };
        let mut config = config.clone();
        if let Some(map) = config.as_object_mut() {
            match scope {
                Scope::MainOnly => {
                    map.remove("status");
                }
                Scope::StatusOnly => map.retain(|key, _| key == "status" || key == "metadata"),
                Scope::Whole => {}
            }
        }
        let applied_fields = ssa::field_set(&config, scope);
        let me = |m: &Manager| {
            m.name == manager && m.operation == Operation::Apply && m.subresource == subresource
        };
        let Ok(entry) = self.entry(rt, namespace, name) else {
            if subresource == Subresource::Status {
                return Err(ApiError::not_found(rt, name));
            }
            let mut body = config;
            body["metadata"]["name"] = json!(name);
            let owner = Manager {
                name: manager.to_string(),
                operation: Operation::Apply,
                subresource,
                fields: applied_fields,
                time: now(),
            };
            return self.commit(rt, namespace, None, body, vec![owner]);
        };
        check_resource_version(&entry.value, &config)?;
        let mut managers = entry.managers.clone();
        let mut conflicts = Vec::new();
        for other in managers.iter_mut().filter(|m| !me(m) && m.name != manager) {
            let contested: Vec<_> = other
                .fields
                .iter()
                .filter(|path| matches!(path.last(), Some(Step::Field(_))))
                .filter(|path| applied_fields.contains(*path))
                .filter(|path| ssa::get(&entry.value, path) != ssa::get(&config, path))
                .cloned()
                .collect();
            for path in contested {
                if force {
                    other.fields.remove(&path);
                } else {
                    conflicts.push(format!(
                        "conflict with \"{}\": {}",
                        other.name,
                        display(&path)
                    ));
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(ApiError::conflict(format!(
                "Apply failed with {} conflict(s): {}",
                conflicts.len(),
                conflicts.join("; ")
            )));
        }
        let previous = managers
            .iter()
            .find(|m| me(m))
            .map(|m| m.fields.clone())
            .unwrap_or_default();
        let mut value = entry.value.clone();
        // Fields this manager applied before and dropped now go, unless someone else owns them.
        let dropped_paths: Vec<_> = previous.difference(&applied_fields).cloned().collect();
        for dropped in dropped_paths.iter().rev() {
            let shared = managers
                .iter()
                .filter(|m| !me(m))
                .any(|m| m.fields.iter().any(|path| path.starts_with(dropped)));
            if !shared && ssa::remove(&mut value, dropped) {
                ssa::prune_empty_parents(&mut value, dropped);
            }
        }
        ssa::merge(&mut value, &config);
        let time = now();
        match managers.iter_mut().find(|m| me(m)) {
            Some(mine) => {
                if mine.fields != applied_fields {
                    mine.time = time;
                }
                mine.fields = applied_fields;
            }
            None => managers.push(Manager {
                name: manager.to_string(),
                operation: Operation::Apply,
                subresource,
                fields: applied_fields,
                time,
            }),
        }
        let new = scoped_write(rt, &entry.value, value, subresource);
        self.commit(rt, namespace, Some(entry), new, managers)
    }

    /// DELETE: marks the object with a deletionTimestamp while finalizers remain, otherwise
    /// removes it and collects its dependents.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let entry = self.entry(rt, namespace, name)?;
        let has_finalizers = entry.value["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|list| !list.is_empty());
        let running_pod = self.graceful_pods
            && rt.group.is_empty()
            && rt.kind == "Pod"
            && entry.value["spec"]["nodeName"].is_string();
        if has_finalizers || running_pod {
            if entry.value["metadata"]["deletionTimestamp"].is_string() {
                return Ok(entry.value);
            }
            let grace = if running_pod {
                entry.value["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30)
            } else {
                0
            };
            let mut marked = entry.value.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            let managers = entry.managers.clone();
            return self.commit_marking(rt, namespace, Some(entry), marked, managers, true);
        }
        Ok(self.remove(rt, namespace, name))
    }

    fn remove(&mut self, rt: &ResourceType, namespace: &str, name: &str) -> Value {
        let Some(entry) = self.objects.remove(&key(rt, namespace, name)) else {
            return Value::Null;
        };
        let mut object = entry.value;
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        self.publish(rt, namespace, EventType::Deleted, object.clone());
        if rt.kind == "CustomResourceDefinition" {
            let gone = types_of_crd(&object);
            self.types.retain(|known| !gone.contains(known));
        }
        self.collect_garbage();
        object
    }

    /// Deletes every object all of whose owners are gone (background propagation).
    fn collect_garbage(&mut self) {
        loop {
            let live_uids: std::collections::HashSet<String> = self
                .objects
                .values()
                .filter_map(|entry| {
                    entry
                        .value
                        .pointer("/metadata/uid")?
                        .as_str()
                        .map(String::from)
                })
                .collect();
            let orphaned: Vec<ObjectKey> = self
                .objects
                .iter()
                .filter(|(_, entry)| {
                    entry.value["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|owners| {
                            !owners.is_empty()
                                && owners.iter().all(|owner| {
                                    owner["uid"]
                                        .as_str()
                                        .is_none_or(|uid| !live_uids.contains(uid))
                                })
                        })
                })
                .map(|(key, _)| key.clone())
                .collect();
            let mut progressed = false;
            for (resource, namespace, name) in orphaned {
                let Some(rt) = self.types.iter().find(|rt| rt.key() == resource).cloned() else {
                    continue;
                };
                let already_marked = self
                    .objects
                    .get(&(resource.clone(), namespace.clone(), name.clone()))
                    .is_some_and(|entry| entry.value["metadata"]["deletionTimestamp"].is_string());
                if already_marked {
                    continue;
                }
                if self.delete(&rt, &namespace, &name).is_ok() {
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn entry(&self, rt: &ResourceType, namespace: &str, name: &str) -> Result<Entry, ApiError> {
        self.objects
            .get(&key(rt, namespace, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// The single write path: server-owned metadata, generation, managedFields, no-op
    /// detection, resourceVersion, finalizer-driven removal, and the watch event.
    fn commit(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        old: Option<Entry>,
        new: Value,
        managers: Vec<Manager>,
    ) -> Result<Value, ApiError> {
        self.commit_marking(rt, namespace, old, new, managers, false)
    }

    /// `commit`, where `marking_deletion` lets the DELETE path set deletionTimestamp, which
    /// clients cannot.
    fn commit_marking(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        old: Option<Entry>,
        mut new: Value,
        mut managers: Vec<Manager>,
        marking_deletion: bool,
    ) -> Result<Value, ApiError> {
        let name = name_of(&new)
            .ok_or_else(|| ApiError::invalid("metadata.name: Required value"))?
            .to_string();
        if !new.is_object() || !new["metadata"].is_object() {
            return Err(ApiError::bad_request("object has no metadata"));
        }
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        if rt.group.is_empty() && rt.kind == "Secret" {
            fold_string_data(&mut new);
        }
        let meta = &mut new["metadata"];
        if rt.namespaced {
            meta["namespace"] = json!(namespace);
        } else if let Some(map) = meta.as_object_mut() {
            map.remove("namespace");
        }
        managers.retain(|m| !m.fields.is_empty());
        match &old {
            Some(old) => {
                for field in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "generation",
                ] {
                    if marking_deletion && field == "deletionTimestamp" {
                        continue;
                    }
                    match old.value["metadata"].get(field) {
                        Some(value) => meta[field] = value.clone(),
                        None => {
                            if let Some(map) = meta.as_object_mut() {
                                map.remove(field);
                            }
                        }
                    }
                }
                if rt.status_subresource && desired_state(&old.value) != desired_state(&new) {
                    let generation = old.value["metadata"]["generation"].as_i64().unwrap_or(1);
                    new["metadata"]["generation"] = json!(generation + 1);
                }
            }
            None => {
                self.next_uid += 1;
                meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.next_uid));
                meta["creationTimestamp"] = json!(now());
                if let Some(map) = meta.as_object_mut() {
                    map.remove("deletionTimestamp");
                }
                if rt.status_subresource {
                    meta["generation"] = json!(1);
                }
            }
        }
        let managed: Vec<Value> = managers
            .iter()
            .map(|m| {
                let mut entry = json!({
                    "manager": m.name,
                    "operation": if m.operation == Operation::Apply { "Apply" } else { "Update" },
                    "apiVersion": rt.api_version(),
                    "time": m.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": ssa::fields_v1(&m.fields),
                });
                if m.subresource == Subresource::Status {
                    entry["subresource"] = json!("status");
                }
                entry
            })
            .collect();
        new["metadata"]["managedFields"] = json!(managed);
        if let Some(old) = &old {
            new["metadata"]["resourceVersion"] = old.value["metadata"]["resourceVersion"].clone();
            if old.value == new {
                return Ok(new);
            }
        }
        self.revision += 1;
        new["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        // A pod a process kubelet runs is removed by the kubelet once its processes stopped.
        let kubelet_removes = self.graceful_pods
            && rt.group.is_empty()
            && rt.kind == "Pod"
            && new["spec"]["nodeName"].is_string();
        let finished = new["metadata"]["deletionTimestamp"].is_string()
            && !kubelet_removes
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|list| list.is_empty());
        let event = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.objects.insert(
            key(rt, namespace, &name),
            Entry {
                value: new.clone(),
                managers,
            },
        );
        self.publish(rt, namespace, event, new.clone());
        if rt.kind == "CustomResourceDefinition" {
            self.register_crd(rt, &name);
        }
        if finished {
            return Ok(self.remove(rt, namespace, &name));
        }
        // An object written with owners that are already gone (a controller racing its owner's
        // deletion) is garbage too, as the real collector finds on its next pass.
        let owned = new["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|owners| !owners.is_empty());
        if owned {
            self.collect_garbage();
        }
        Ok(new)
    }

    /// Serves the CRD's kinds and marks it Established, as the real API server does.
    fn register_crd(&mut self, crd_type: &ResourceType, name: &str) {
        let Some(entry) = self.objects.get(&key(crd_type, "", name)) else {
            return;
        };
        let crd = entry.value.clone();
        let served = types_of_crd(&crd);
        let group = crd["spec"]["group"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.types
            .retain(|known| !(known.group == group && known.kind == kind));
        self.types.extend(served);
        if crd["status"]["conditions"].is_array() {
            return;
        }
        let mut established = crd.clone();
        established["status"] = json!({
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "lastTransitionTime": now()},
            ],
            "acceptedNames": crd["spec"]["names"],
            "storedVersions": crd["spec"]["versions"].as_array().into_iter().flatten().map(|v| v["name"].clone()).collect::<Vec<_>>(),
        });
        let managers = entry.managers.clone();
        let old = entry.clone();
        let _ = self.commit(crd_type, "", Some(old), established, managers);
    }

    fn publish(&mut self, rt: &ResourceType, namespace: &str, event: EventType, object: Value) {
        let change = Arc::new(Change {
            revision: self.revision,
            resource: rt.key(),
            namespace: if rt.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            event,
            object,
        });
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest_resumable = dropped.revision + 1;
            }
        }
        // No receivers is fine: nobody is watching yet.
        let _ = self.changes.send(change);
    }
}

/// Secrets store `stringData` as base64 `data`, as the real API server does on every write.
fn fold_string_data(secret: &mut Value) {
    let Some(Value::Object(plain)) = secret
        .as_object_mut()
        .and_then(|map| map.remove("stringData"))
    else {
        return;
    };
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    for (key, value) in plain {
        let text = value.as_str().unwrap_or_default();
        secret["data"][key] = json!(BASE64_STANDARD.encode(text.as_bytes()));
    }
}

fn display(path: &[Step]) -> String {
    path.iter()
        .map(|step| match step {
            Step::Field(name) => format!(".{name}"),
            Step::Key { field, value } => format!("[{field}={value}]"),
        })
        .collect()
}

fn check_resource_version(current: &Value, body: &Value) -> Result<(), ApiError> {
    let wanted = body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    match wanted {
        Some(wanted) if !wanted.is_empty() && Some(wanted) != current.pointer("/metadata/resourceVersion").and_then(Value::as_str) => {
            Err(ApiError::conflict(format!(
                "Operation cannot be fulfilled on {}: the object has been modified; please apply your changes to the latest version and try again",
                current.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
            )))
        }
        _ => Ok(()),
    }
}

/// Keeps a write to the main resource from touching status, and a status write from touching
/// anything else, for kinds with a status subresource.
fn scoped_write(rt: &ResourceType, old: &Value, mut new: Value, subresource: Subresource) -> Value {
    match subresource {
        Subresource::Status => {
            let mut scoped = old.clone();
            scoped["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            if scoped["status"].is_null() {
                if let Some(map) = scoped.as_object_mut() {
                    map.remove("status");
                }
            }
            scoped
        }
        Subresource::Main if rt.status_subresource => {
            match old.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => {
                    if let Some(map) = new.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            new
        }
        Subresource::Main => new,
    }
}

/// Ownership after a non-apply write: the writer takes the fields it changed.
fn record_update(
    entry: &Entry,
    new: &Value,
    rt: &ResourceType,
    subresource: Subresource,
    manager: &str,
) -> Vec<Manager> {
    let scope = match subresource {
        Subresource::Status => Scope::StatusOnly,
        Subresource::Main if rt.status_subresource => Scope::MainOnly,
        Subresource::Main => Scope::Whole,
    };
    let changed = ssa::changed(&ssa::field_set(new, scope), &entry.value, new);
    let mut managers = entry.managers.clone();
    for m in managers.iter_mut() {
        m.fields
            .retain(|path| !changed.contains(path) && ssa::get(new, path).is_some());
    }
    if changed.is_empty() {
        return managers;
    }
    let manager = if manager.is_empty() {
        "unknown"
    } else {
        manager
    };
    match managers.iter_mut().find(|m| {
        m.name == manager && m.operation == Operation::Update && m.subresource == subresource
    }) {
        Some(mine) => {
            mine.fields.extend(changed);
            mine.time = now();
        }
        None => managers.push(Manager {
            name: manager.to_string(),
            operation: Operation::Update,
            subresource,
            fields: changed,
            time: now(),
        }),
    }
    managers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configmaps(store: &Store) -> ResourceType {
        store.type_for("", "v1", "configmaps").expect("built in")
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    #[test]
    fn apply_removes_fields_a_manager_stops_applying() {
        let mut store = Store::new();
        let rt = configmaps(&store);
        store
            .patch(
                &rt,
                "default",
                "c",
                PatchKind::Apply,
                &cm(json!({"a": "1", "b": "2"})),
                Subresource::Main,
                "op",
                false,
            )
            .expect("create by apply");
        let after = store
            .patch(
                &rt,
                "default",
                "c",
                PatchKind::Apply,
                &cm(json!({"a": "1"})),
                Subresource::Main,
                "op",
                false,
            )
            .expect("second apply");
        assert_eq!(after["data"], json!({"a": "1"}));
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let mut store = Store::new();
        let rt = configmaps(&store);
        store
            .patch(
                &rt,
                "default",
                "c",
                PatchKind::Apply,
                &cm(json!({"a": "1"})),
                Subresource::Main,
                "first",
                false,
            )
            .expect("create");
        let conflict = store
            .patch(
                &rt,
                "default",
                "c",
                PatchKind::Apply,
                &cm(json!({"a": "2"})),
                Subresource::Main,
                "second",
                false,
            )
            .expect_err("owned by first");
        assert_eq!(conflict.code, 409);
        // Agreeing on a value is shared ownership, not a conflict.
        store
            .patch(
                &rt,
                "default",
                "c",
                PatchKind::Apply,
                &cm(json!({"a": "1", "b": "x"})),
                Subresource::Main,
                "second",
                false,
            )
            .expect("same value");
        let forced = store
            .patch(
                &rt,
                "default",
                "c",
                PatchKind::Apply,
                &cm(json!({"a": "2"})),
                Subresource::Main,
                "second",
                true,
            )
            .expect("force takes ownership");
        assert_eq!(forced["data"]["a"], "2");
        // "second" dropped b and nobody else owns it, so it is gone.
        assert!(forced["data"].get("b").is_none());
    }

    #[test]
    fn unchanged_apply_keeps_the_resource_version() {
        let mut store = Store::new();
        let rt = configmaps(&store);
        let first = store
            .patch(
                &rt,
                "default",
                "c",
                PatchKind::Apply,
                &cm(json!({"a": "1"})),
                Subresource::Main,
                "op",
                false,
            )
            .expect("create");
        let revision = store.revision();
        let second = store
            .patch(
                &rt,
                "default",
                "c",
                PatchKind::Apply,
                &cm(json!({"a": "1"})),
                Subresource::Main,
                "op",
                false,
            )
            .expect("no-op");
        assert_eq!(
            first["metadata"]["resourceVersion"],
            second["metadata"]["resourceVersion"]
        );
        assert_eq!(store.revision(), revision);
    }

    #[test]
    fn stale_resource_version_is_a_conflict() {
        let mut store = Store::new();
        let rt = configmaps(&store);
        let created = store
            .create(&rt, "default", cm(json!({"a": "1"})), "t")
            .expect("create");
        let mut stale = created.clone();
        stale["data"]["a"] = json!("2");
        store
            .replace(&rt, "default", "c", stale.clone(), Subresource::Main, "t")
            .expect("fresh");
        let error = store
            .replace(&rt, "default", "c", stale, Subresource::Main, "t")
            .expect_err("stale");
        assert_eq!(error.code, 409);
    }

    #[test]
    fn finalizers_hold_deletion_and_owners_collect_dependents() {
        let mut store = Store::new();
        let rt = configmaps(&store);
        let mut owner = cm(json!({}));
        owner["metadata"]["finalizers"] = json!(["keep"]);
        let owner = store.create(&rt, "default", owner, "t").expect("owner");
        let dependent = json!({"metadata": {"name": "d", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": owner["metadata"]["uid"]}]}});
        store
            .create(&rt, "default", dependent, "t")
            .expect("dependent");
        let marked = store.delete(&rt, "default", "c").expect("delete");
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(store.get(&rt, "default", "d").is_ok());
        store
            .patch(
                &rt,
                "default",
                "c",
                PatchKind::Merge,
                &json!({"metadata": {"finalizers": null}}),
                Subresource::Main,
                "t",
                false,
            )
            .expect("drop finalizer");
        assert_eq!(store.get(&rt, "default", "c").expect_err("gone").code, 404);
        assert_eq!(
            store.get(&rt, "default", "d").expect_err("collected").code,
            404
        );
    }

    #[test]
    fn objects_created_for_a_deleted_owner_are_collected() {
        let mut store = Store::new();
        let rt = configmaps(&store);
        let orphan = json!({"metadata": {"name": "late", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": "no-such-uid"}]}});
        store
            .create(&rt, "default", orphan, "t")
            .expect("create is accepted");
        assert_eq!(
            store
                .get(&rt, "default", "late")
                .expect_err("collected")
                .code,
            404
        );
    }

    #[test]
    fn status_subresource_separates_spec_and_status_writes() {
        let mut store = Store::new();
        let rt = store
            .type_for("apps", "v1", "statefulsets")
            .expect("built in");
        let sts =
            json!({"metadata": {"name": "s"}, "spec": {"replicas": 1}, "status": {"replicas": 9}});
        let created = store.create(&rt, "default", sts, "t").expect("create");
        assert_eq!(created["metadata"]["generation"], 1);
        let status = store
            .patch(
                &rt,
                "default",
                "s",
                PatchKind::Merge,
                &json!({"spec": {"replicas": 7}, "status": {"replicas": 2}}),
                Subresource::Status,
                "t",
                false,
            )
            .expect("status");
        assert_eq!(status["spec"]["replicas"], 1);
        assert_eq!(status["status"]["replicas"], 2);
        assert_eq!(status["metadata"]["generation"], 1);
        let spec = store
            .patch(
                &rt,
                "default",
                "s",
                PatchKind::Merge,
                &json!({"spec": {"replicas": 3}, "status": {"replicas": 0}}),
                Subresource::Main,
                "t",
                false,
            )
            .expect("spec");
        assert_eq!(spec["status"]["replicas"], 2);
        assert_eq!(spec["metadata"]["generation"], 2);
    }

    #[test]
    fn secrets_fold_string_data_into_base64_data() {
        let mut store = Store::new();
        let rt = store.type_for("", "v1", "secrets").expect("built in");
        let secret = store
            .create(&rt, "default", json!({"metadata": {"name": "s"}, "data": {"a": "YQ=="}, "stringData": {"b": "hello"}}), "t")
            .expect("create");
        assert_eq!(secret["data"], json!({"a": "YQ==", "b": "aGVsbG8="}));
        assert!(secret.get("stringData").is_none());
    }

    #[test]
    fn watch_history_expires_with_410() {
        let mut store = Store::new();
        let rt = configmaps(&store);
        store
            .create(&rt, "default", cm(json!({})), "t")
            .expect("create");
        let before = store.revision() - 1;
        assert_eq!(store.changes_since(before).expect("kept").len(), 1);
        store.compact();
        assert_eq!(store.changes_since(before).expect_err("expired").code, 410);
        assert!(store
            .changes_since(store.revision())
            .expect("current")
            .is_empty());
    }
}
