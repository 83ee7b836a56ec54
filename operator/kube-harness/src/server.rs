//! The HTTP face of the store: Kubernetes API paths, verbs, watch streams, discovery, Table
//! output for kubectl, request counting and injected faults.

use crate::resources::{
    group_list, openapi_v3_group, openapi_v3_root, resource_list, ResourceType,
};
use crate::selector::Selector;
use crate::store::{ApiError, Change, EventType, PatchKind, Store, Subresource};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

pub type Body = BoxBody<Bytes, Infallible>;

/// An error answer the test wants for the next `remaining` matching requests.
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`; None matches all.
    pub verb: Option<String>,
    /// Plural resource name; None matches all.
    pub resource: Option<String>,
    pub remaining: u32,
    pub code: u16,
}

#[derive(Default)]
pub struct Faults {
    pub rules: Vec<FaultRule>,
    pub latency: Duration,
}

/// Requests served, by (verb, plural resource).
pub type RequestCounts = BTreeMap<(String, String), u64>;

pub struct Shared {
    pub store: Mutex<Store>,
    pub counts: Mutex<RequestCounts>,
    pub faults: Mutex<Faults>,
    /// Pods' log directories, when a process kubelet runs them (`pods/<name>/log`).
    pub pod_logs: Option<crate::kubelet::LogDirectories>,
    /// Bumped to end every open watch (see `Harness::reset_watches`).
    pub watch_resets: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self, verb: &str, resource: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry((verb.into(), resource.into())).or_default() += 1;
    }

    fn injected(&self, verb: &str, resource: &str) -> (Duration, Option<u16>) {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let latency = faults.latency;
        let hit = faults.rules.iter_mut().find(|rule| {
            rule.remaining > 0
                && rule.verb.as_deref().is_none_or(|v| v == verb)
                && rule.resource.as_deref().is_none_or(|r| r == resource)
        });
        let code = hit.map(|rule| {
            rule.remaining -= 1;
            rule.code
        });
        faults.rules.retain(|rule| rule.remaining > 0);
        (latency, code)
    }
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn error(err: &ApiError) -> Response<Body> {
    full(
        StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &err.status_body(),
    )
}

/// A parsed resource path.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn query_map(uri: &hyper::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<String> = path.split('/').skip(1).map(decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let response = match segments.as_slice() {
        ["version"] => full(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-iggy-harness", "platform": "linux/amd64"}),
        ),
        ["healthz"] | ["readyz"] | ["livez"] => Response::new(Full::new(Bytes::from("ok")).boxed()),
        ["api"] => full(
            StatusCode::OK,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        ["apis"] => full(StatusCode::OK, &group_list(shared.store().types())),
        ["openapi", "v3"] => full(StatusCode::OK, &openapi_v3_root(shared.store().types())),
        ["openapi", "v3", "api", version] => openapi_group(&shared, "", version),
        ["openapi", "v3", "apis", group, version] => openapi_group(&shared, group, version),
        ["api", "v1"] => discovery(&shared, "", "v1"),
        ["apis", group, version] => discovery(&shared, group, version),
        ["api", "v1", rest @ ..] => resource_request(&shared, "", "v1", rest, request).await,
        ["apis", group, version, rest @ ..] => {
            let (group, version) = (group.to_string(), version.to_string());
            resource_request(&shared, &group, &version, rest, request).await
        }
        _ => error(&ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )),
    };
    Ok(response)
}

fn openapi_group(shared: &Shared, group: &str, version: &str) -> Response<Body> {
    match openapi_v3_group(shared.store().types(), group, version) {
        Some(document) => full(StatusCode::OK, &document),
        None => error(&ApiError::new(
            404,
            "NotFound",
            format!("no OpenAPI document for {group}/{version}"),
        )),
    }
}

fn discovery(shared: &Shared, group: &str, version: &str) -> Response<Body> {
    match resource_list(shared.store().types(), group, version) {
        Some(list) => full(StatusCode::OK, &list),
        None => error(&ApiError::new(
            404,
            "NotFound",
            format!("group version {group}/{version} not served"),
        )),
    }
}

fn parse_target(
    shared: &Shared,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Target, ApiError> {
    let (namespace, rest) = match rest {
        ["namespaces", namespace, plural, tail @ ..]
            if !matches!(*plural, "status" | "finalize") =>
        {
            (Some(namespace.to_string()), [&[*plural], tail].concat())
        }
        other => (None, other.to_vec()),
    };
    let plural = rest
        .first()
        .ok_or_else(|| ApiError::new(404, "NotFound", "no resource in path"))?;
    let rt = shared
        .store()
        .type_for(group, version, plural)
        .ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({group}/{version} {plural})"
                ),
            )
        })?;
    Ok(Target {
        rt,
        namespace,
        name: rest.get(1).map(|name| name.to_string()),
        subresource: rest.get(2).map(|sub| sub.to_string()),
    })
}

async fn resource_request(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    request: Request<Incoming>,
) -> Response<Body> {
    let target = match parse_target(shared, group, version, rest) {
        Ok(target) => target,
        Err(err) => return error(&err),
    };
    let query = query_map(request.uri());
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (request.method(), &target.name) {
        (&Method::GET, _) if watching => "watch",
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => {
            return error(&ApiError::new(
                405,
                "MethodNotAllowed",
                "method not allowed",
            ))
        }
    };
    shared.count(verb, &target.rt.plural);
    let (latency, fault) = shared.injected(verb, &target.rt.plural);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(code) = fault {
        return error(&ApiError::new(
            code,
            "InternalError",
            format!("injected fault for {verb} {}", target.rt.plural),
        ));
    }
    let table = request
        .headers()
        .get("accept")
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("as=Table"));
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    if content_type.contains("protobuf") || content_type.contains("cbor") {
        return error(&ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the harness serves JSON and YAML only, not {content_type}"),
        ));
    }
    if target.subresource.as_deref() == Some("log") && target.rt.kind == "Pod" && verb == "get" {
        return pod_log(shared, &target, &query);
    }
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return error(&ApiError::bad_request("unreadable body")),
    };
    if verb == "watch" {
        return watch(shared.clone(), target, &query);
    }
    let namespace = target.namespace.clone().unwrap_or_default();
    let manager = query.get("fieldManager").cloned().unwrap_or_default();
    let result = (|| -> Result<(StatusCode, Value), ApiError> {
        let parse_body = || -> Result<Value, ApiError> {
            serde_yaml::from_slice::<Value>(&body)
                .map_err(|e| ApiError::bad_request(format!("malformed body: {e}")))
        };
        let subresource = match target.subresource.as_deref() {
            None => Subresource::Main,
            Some("status") if target.rt.status_subresource => Subresource::Status,
            Some("scale") if target.rt.scale.is_some() => {
                return scale(shared, &target, verb, &content_type, parse_body, &manager)
            }
            Some(other) => {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("subresource {other} not served"),
                ))
            }
        };
        let name = target.name.as_deref().unwrap_or_default();
        let mut store = shared.store();
        match verb {
            "get" => Ok((StatusCode::OK, store.get(&target.rt, &namespace, name)?)),
            "list" => {
                let labels =
                    Selector::labels(query.get("labelSelector").map(String::as_str).unwrap_or(""))
                        .map_err(|e| ApiError::bad_request(e.to_string()))?;
                let fields =
                    Selector::fields(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
                        .map_err(|e| ApiError::bad_request(e.to_string()))?;
                let mut objects = store.list(&target.rt, target.namespace.as_deref());
                if target.rt.group.is_empty() && target.rt.kind == "Event" {
                    // One store behind both Event APIs, as on a real server: `kubectl describe`
                    // reads core/v1 events, controllers write events.k8s.io/v1 ones.
                    if let Some(newer) = store.type_by_kind("events.k8s.io", "Event") {
                        objects.extend(
                            store
                                .list(&newer, target.namespace.as_deref())
                                .iter()
                                .map(core_event),
                        );
                    }
                }
                let items: Vec<Value> = objects
                    .into_iter()
                    .filter(|object| labels.matches(object) && fields.matches(object))
                    .collect();
                Ok((
                    StatusCode::OK,
                    json!({
                        "kind": format!("{}List", target.rt.kind),
                        "apiVersion": target.rt.api_version(),
                        "metadata": {"resourceVersion": store.revision().to_string()},
                        "items": items,
                    }),
                ))
            }
            "create" => Ok((
                StatusCode::CREATED,
                store.create(&target.rt, &namespace, parse_body()?, &manager)?,
            )),
            "update" => Ok((
                StatusCode::OK,
                store.replace(
                    &target.rt,
                    &namespace,
                    name,
                    parse_body()?,
                    subresource,
                    &manager,
                )?,
            )),
            "patch" => {
                let kind = patch_kind(&content_type)?;
                let force = query.get("force").is_some_and(|f| f == "true");
                let existed = store.get(&target.rt, &namespace, name).is_ok();
                let object = store.patch(
                    &target.rt,
                    &namespace,
                    name,
                    kind,
                    &parse_body()?,
                    subresource,
                    &manager,
                    force,
                )?;
                Ok((
                    if existed {
                        StatusCode::OK
                    } else {
                        StatusCode::CREATED
                    },
                    object,
                ))
            }
            "delete" => {
                let object = store.delete(&target.rt, &namespace, name)?;
                Ok((
                    StatusCode::OK,
                    if object.is_null() {
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})
                    } else {
                        object
                    },
                ))
            }
            _ => Err(ApiError::new(405, "MethodNotAllowed", "method not allowed")),
        }
    })();
    match result {
        Ok((status, value)) if table && (verb == "get" || verb == "list") => {
            full(status, &crate::table::to_table(&target.rt, &value))
        }
        Ok((status, value)) => full(status, &value),
        Err(err) => error(&err),
    }
}

/// An events.k8s.io/v1 Event in its core/v1 shape.
fn core_event(event: &Value) -> Value {
    let series_count = event.pointer("/series/count").cloned();
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": event["metadata"],
        "involvedObject": event["regarding"],
        "reason": event["reason"],
        "message": event["note"],
        "type": event["type"],
        "source": {"component": event["reportingController"]},
        "reportingComponent": event["reportingController"],
        "reportingInstance": event["reportingInstance"],
        "firstTimestamp": event["eventTime"],
        "lastTimestamp": event.pointer("/series/lastObservedTime").cloned().unwrap_or_else(|| event["eventTime"].clone()),
        "eventTime": event["eventTime"],
        "count": series_count.unwrap_or(json!(1)),
        "action": event["action"],
    })
}

fn patch_kind(content_type: &str) -> Result<PatchKind, ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        "application/apply-patch+yaml" => Ok(PatchKind::Apply),
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {other}"),
        )),
    }
}

/// `GET pods/<name>/log`: a container's output as the process kubelet captured it
/// (`container`, `previous` and `tailLines` honoured; `follow` answers what is there now).
fn pod_log(shared: &Shared, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let pod = match shared.store().get(&target.rt, &namespace, &name) {
        Ok(pod) => pod,
        Err(err) => return error(&err),
    };
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let container = match query.get("container") {
        Some(container) => container.clone(),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return error(&ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    if !containers.contains(&container) {
        return error(&ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    let dir = shared.pod_logs.as_ref().and_then(|logs| {
        logs.lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(namespace.clone(), name.clone()))
            .cloned()
    });
    let Some(dir) = dir else {
        return error(&ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: no process runs it"
        )));
    };
    // An exited instance's log is renamed `.previous` at once; until the next instance starts,
    // it is also the current one (what kubectl shows for a container in back-off).
    let previous = query.get("previous").is_some_and(|p| p == "true");
    let current = dir.join(format!("{container}.log"));
    let file = if previous || !current.exists() {
        dir.join(format!("{container}.log.previous"))
    } else {
        current
    };
    let text = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(_) if previous => {
            return error(&ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{name}\" not found"
            )))
        }
        Err(_) => Vec::new(),
    };
    let text = match query.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        Some(lines) => {
            let all: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
            all[all.len().saturating_sub(lines)..].concat()
        }
        None => text,
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(text)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// The scale subresource: an autoscaling/v1 Scale view of `spec.replicas`.
fn scale(
    shared: &Shared,
    target: &Target,
    verb: &str,
    content_type: &str,
    parse_body: impl Fn() -> Result<Value, ApiError>,
    manager: &str,
) -> Result<(StatusCode, Value), ApiError> {
    let paths = target
        .rt
        .scale
        .clone()
        .ok_or_else(|| ApiError::new(404, "NotFound", "no scale subresource"))?;
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.as_deref().unwrap_or_default();
    let mut store = shared.store();
    let object = store.get(&target.rt, &namespace, name)?;
    let view = |object: &Value| {
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": object["metadata"]["name"],
                "namespace": object["metadata"]["namespace"],
                "uid": object["metadata"]["uid"],
                "resourceVersion": object["metadata"]["resourceVersion"],
                "creationTimestamp": object["metadata"]["creationTimestamp"],
            },
            "spec": {"replicas": object.pointer(&paths.spec_replicas).cloned().unwrap_or(json!(0))},
            "status": {
                "replicas": object.pointer(&paths.status_replicas).cloned().unwrap_or(json!(0)),
                "selector": paths.label_selector.as_ref().and_then(|p| object.pointer(p)).cloned().unwrap_or(json!("")),
            },
        })
    };
    let current = view(&object);
    let wanted = match verb {
        "get" => return Ok((StatusCode::OK, current)),
        "update" => parse_body()?,
        "patch" => match patch_kind(content_type)? {
            PatchKind::Json => crate::patch::json_patch(&current, &parse_body()?)?,
            _ => {
                let mut patched = current.clone();
                crate::patch::merge_patch(&mut patched, &parse_body()?);
                patched
            }
        },
        _ => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "scale supports get, update and patch",
            ))
        }
    };
    let replicas = wanted["spec"]["replicas"]
        .as_i64()
        .ok_or_else(|| ApiError::invalid("spec.replicas: Required value"))?;
    let mut patch = json!({});
    let mut cursor = &mut patch;
    for part in paths.spec_replicas.trim_start_matches('/').split('/') {
        cursor = &mut cursor[part];
    }
    *cursor = json!(replicas);
    if let Some(version) = wanted
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        patch["metadata"] = json!({"resourceVersion": version});
    }
    let updated = store.patch(
        &target.rt,
        &namespace,
        name,
        PatchKind::Merge,
        &patch,
        Subresource::Main,
        manager,
        false,
    )?;
    Ok((StatusCode::OK, view(&updated)))
}

fn watch_event(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A streamed watch: replay or initial state, then live changes, bookmarks, and an end after
/// `timeoutSeconds`. An expired resourceVersion is answered with an ERROR event carrying 410.
fn watch(shared: Arc<Shared>, target: Target, query: &BTreeMap<String, String>) -> Response<Body> {
    let labels = Selector::labels(query.get("labelSelector").map(String::as_str).unwrap_or(""));
    let fields = Selector::fields(query.get("fieldSelector").map(String::as_str).unwrap_or(""));
    let (Ok(labels), Ok(fields)) = (labels, fields) else {
        return error(&ApiError::bad_request("unable to parse selector"));
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let resource = target.rt.key();
    let namespace = target.namespace.clone();
    let matches = move |object: &Value| labels.matches(object) && fields.matches(object);
    let in_scope = {
        let resource = resource.clone();
        move |change: &Change| {
            change.resource == resource
                && namespace.as_deref().is_none_or(|ns| change.namespace == ns)
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut resets = shared.watch_resets.subscribe();
    let (mut changes, start, initial, replay) = {
        let store = shared.store();
        let changes = store.subscribe();
        let start = store.revision();
        let requested = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0);
        let current: Vec<Value> = store
            .list(&target.rt, target.namespace.as_deref())
            .into_iter()
            .filter(|o| matches(o))
            .collect();
        let replay = match requested {
            Some(revision) if !send_initial => Some(store.changes_since(revision)),
            _ => None,
        };
        (changes, start, current, replay)
    };
    let kind = target.rt.kind.clone();
    let api_version = target.rt.api_version();
    tokio::spawn(async move {
        let bookmark = |revision: u64, initial_end: bool| {
            let mut meta = json!({"resourceVersion": revision.to_string()});
            if initial_end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            watch_event(
                "BOOKMARK",
                &json!({"kind": kind, "apiVersion": api_version, "metadata": meta}),
            )
        };
        let mut known: HashSet<(String, String)> = HashSet::new();
        let id = |object: &Value| {
            (
                object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        match replay {
            Some(Err(expired)) => {
                let _ = tx.send(watch_event("ERROR", &expired.status_body())).await;
                return;
            }
            Some(Ok(replayed)) => {
                known.extend(initial.iter().map(id));
                for change in replayed.iter().filter(|c| in_scope(c)) {
                    if let Some(line) = translate(change, &matches, &mut known, id) {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
            }
            None => {
                for object in &initial {
                    known.insert(id(object));
                    if tx.send(watch_event("ADDED", object)).await.is_err() {
                        return;
                    }
                }
                if send_initial && tx.send(bookmark(start, true)).await.is_err() {
                    return;
                }
            }
        }
        let mut last_seen = start;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = resets.changed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(bookmark(last_seen, false)).await.is_err() {
                        return;
                    }
                }
                received = changes.recv() => match received {
                    Ok(change) => {
                        if change.revision <= last_seen {
                            continue;
                        }
                        last_seen = change.revision;
                        if !in_scope(&change) {
                            continue;
                        }
                        if let Some(line) = translate(&change, &matches, &mut known, id) {
                            if tx.send(line).await.is_err() {
                                return;
                            }
                        }
                    }
                    // A watcher that fell behind ends; clients re-list, as with a real server.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(StreamBody::new(stream).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// One change as this watch sees it: objects entering or leaving the selector appear as
/// ADDED or DELETED, as on a real API server.
fn translate(
    change: &Change,
    matches: &impl Fn(&Value) -> bool,
    known: &mut HashSet<(String, String)>,
    id: impl Fn(&Value) -> (String, String),
) -> Option<Bytes> {
    let key = id(&change.object);
    let now_matches = matches(&change.object);
    let was_known = known.contains(&key);
    let kind = match (change.event, was_known, now_matches) {
        (EventType::Deleted, true, _) => "DELETED",
        (EventType::Deleted, false, _) => return None,
        (_, false, true) => "ADDED",
        (_, true, true) => "MODIFIED",
        (_, true, false) => "DELETED",
        (_, false, false) => return None,
    };
    if kind == "DELETED" {
        known.remove(&key);
    } else {
        known.insert(key);
    }
    Some(watch_event(kind, &change.object))
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(decode("app%3Diggy%2Ctier+x"), "app=iggy,tier x");
        assert_eq!(decode("100%"), "100%");
    }
}
