//! From a pod object to what the kubelet runs: the binary each container image stands for, its
//! arguments and environment resolved (Secrets, ConfigMaps, downward API), its volumes
//! materialised as directories, and every path and local address rewritten into the pod's
//! directory and loopback address.
//!
//! Pods here are processes sharing one filesystem and one network namespace, so two things a
//! container runtime gives for free are done by rewriting instead:
//! - **mounts**: a value (argument or environment variable) that is a mount path or lies under
//!   one is rewritten to the host directory backing that volume;
//! - **the pod's own addresses**: `0.0.0.0:`, `[::]:`, `127.0.0.1:` and `localhost:` in a value
//!   become the pod's loopback address, so every pod listens on its own IP and "localhost" still
//!   means the pod itself (its sidecar reaches its broker).
//!
//! File contents (a ConfigMap's broker.toml) are never rewritten; what must differ per pod is
//! set through the environment, as the operator does.

use super::probe::Probe;
use crate::controllers::text;
use crate::store::Store;
use base64::Engine;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Why a pod's container cannot be started yet; shown as its waiting reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct PlanError {
    pub container: String,
    pub reason: &'static str,
    pub message: String,
}

/// What one container runs.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
    pub startup: Option<Probe>,
}

/// A volume the kubelet keeps current while the pod runs (ConfigMaps and Secrets).
#[derive(Debug, Clone)]
pub struct ProjectedVolume {
    pub source: Projection,
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub enum Projection {
    ConfigMap {
        name: String,
        items: Value,
        optional: bool,
    },
    Secret {
        name: String,
        items: Value,
        optional: bool,
    },
}

/// Everything the kubelet needs to start a pod.
#[derive(Debug, Clone)]
pub struct PodPlan {
    pub containers: Vec<ContainerPlan>,
    pub projected: Vec<ProjectedVolume>,
    pub grace: std::time::Duration,
    pub restart_policy: RestartPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// Where the plan puts things and what it hands every process.
pub struct PlanContext<'a> {
    pub store: &'a Store,
    pub pod: &'a Value,
    pub ip: Ipv4Addr,
    /// The pod's own directory (volumes, logs); removed with the pod.
    pub pod_dir: &'a Path,
    /// Directories of PersistentVolumeClaims live here and outlive pods.
    pub claims_dir: &'a Path,
    pub images: &'a BTreeMap<String, PathBuf>,
    /// Arguments that replace a container's own for images whose stand-in takes others.
    pub image_args: &'a BTreeMap<String, Vec<String>>,
    /// Variables every process gets (KUBECONFIG, the hosts file, PATH).
    pub base_env: &'a [(String, String)],
}

/// `ghcr.io/iggy-rs/iggy-broker:0.1.0` → `iggy-broker`: the repository's last path segment,
/// without tag or digest.
pub fn image_key(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

pub fn plan(context: &PlanContext<'_>) -> Result<PodPlan, PlanError> {
    let pod = context.pod;
    let mounts_by_volume = materialise_volumes(context)?;
    let mut containers = Vec::new();
    for container in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let name = text(container, "/name").to_string();
        let error = |reason, message: String| PlanError {
            container: name.clone(),
            reason,
            message,
        };
        let image = text(container, "/image").to_string();
        let program = context
            .images
            .get(image_key(&image))
            .cloned()
            .ok_or_else(|| {
                error(
                    "ImageNotMapped",
                    format!(
                        "the dev cluster runs images it maps to local binaries ({}); {image:?} is not one",
                        context.images.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume = text(mount, "/name");
            let dir = mounts_by_volume.get(volume).ok_or_else(|| {
                error(
                    "CreateContainerConfigError",
                    format!("volumeMount {volume:?} names no volume of the pod"),
                )
            })?;
            let sub_path = text(mount, "/subPath");
            let host = if sub_path.is_empty() {
                dir.clone()
            } else {
                dir.join(sub_path)
            };
            mounts.push((
                text(mount, "/mountPath").trim_end_matches('/').to_string(),
                host,
            ));
        }
        // The longest mount path wins, as nested mounts shadow their parents.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        let localize =
            |value: &str| translate_paths(&localize_addresses(value, context.ip), &mounts);
        let env = resolve_env(context, container)
            .map_err(|message| error("CreateContainerConfigError", message))?;
        let env_map: BTreeMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<String> = match context.image_args.get(image_key(&image)) {
            Some(args) => args.clone(),
            None => command_and_args(container, &program, &env_map)
                .map_err(|message| error("CreateContainerError", message))?,
        };
        let args = args.iter().map(|a| localize(a)).collect();
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| {
                let v = localize(&v);
                (k, v)
            })
            .collect();
        for (k, v) in context.base_env {
            if !env.iter().any(|(name, _)| name == k) {
                env.push((k.clone(), v.clone()));
            }
        }
        let ports = container_ports(container);
        let probe = |field: &str| {
            Probe::from_spec(&container[field], &ports).map_err(|message| {
                error("CreateContainerConfigError", format!("{field}: {message}"))
            })
        };
        containers.push(ContainerPlan {
            log: context.pod_dir.join("logs").join(format!("{name}.log")),
            readiness: probe("readinessProbe")?,
            liveness: probe("livenessProbe")?,
            startup: probe("startupProbe")?,
            name,
            image,
            program,
            args,
            env,
        });
    }
    let projected = projections(pod, context.pod_dir);
    let grace = pod["metadata"]["deletionGracePeriodSeconds"]
        .as_u64()
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_u64())
        .unwrap_or(30);
    let restart_policy = match text(pod, "/spec/restartPolicy") {
        "Never" => RestartPolicy::Never,
        "OnFailure" => RestartPolicy::OnFailure,
        _ => RestartPolicy::Always,
    };
    Ok(PodPlan {
        containers,
        projected,
        grace: std::time::Duration::from_secs(grace),
        restart_policy,
    })
}

/// The arguments after the binary: `command` replaces the image's entrypoint, which here is
/// the mapped binary, so a command must name that binary and the rest are arguments; `args`
/// follow. `$(VAR)` is expanded in both.
fn command_and_args(
    container: &Value,
    program: &Path,
    env: &BTreeMap<&str, &str>,
) -> Result<Vec<String>, String> {
    let mut args: Vec<String> = Vec::new();
    if let Some(command) = container["command"].as_array() {
        let mut words = command.iter().filter_map(Value::as_str);
        if let Some(first) = words.next() {
            let binary = program.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if Path::new(first).file_name().and_then(|n| n.to_str()) != Some(binary) {
                return Err(format!(
                    "command {first:?} is not the image's binary {binary:?}; the dev cluster runs only that"
                ));
            }
        }
        args.extend(words.map(|w| expand(w, env)));
    }
    args.extend(
        container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|w| expand(w, env)),
    );
    Ok(args)
}

/// A container's named ports, for probes and Services that name them.
pub fn container_ports(container: &Value) -> BTreeMap<String, u16> {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                u16::try_from(p["containerPort"].as_u64()?).ok()?,
            ))
        })
        .collect()
}

fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(name)
}

/// Creates every volume's directory and fills ConfigMap and Secret volumes; returns each
/// volume's host directory by name.
fn materialise_volumes(context: &PlanContext<'_>) -> Result<BTreeMap<String, PathBuf>, PlanError> {
    let pod = context.pod;
    let namespace = text(pod, "/metadata/namespace");
    let error = |message: String| PlanError {
        container: String::new(),
        reason: "CreateContainerConfigError",
        message,
    };
    let mut dirs = BTreeMap::new();
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = text(volume, "/name").to_string();
        let dir = if let Some(claim) = volume.pointer("/persistentVolumeClaim/claimName") {
            let claim = claim.as_str().unwrap_or_default();
            let rt = context
                .store
                .type_by_kind("", "PersistentVolumeClaim")
                .expect("built in");
            let object = context
                .store
                .get(&rt, namespace, claim)
                .map_err(|_| error(format!("persistentvolumeclaim {claim:?} not found")))?;
            // The claim's uid keeps a deleted and recreated claim from inheriting old data.
            let uid = text(&object, "/metadata/uid");
            let suffix = uid.rsplit('-').next().unwrap_or(uid);
            context
                .claims_dir
                .join(namespace)
                .join(format!("{claim}-{suffix}"))
        } else {
            volume_dir(context.pod_dir, &name)
        };
        std::fs::create_dir_all(&dir).map_err(|e| {
            error(format!(
                "creating volume {name:?} at {}: {e}",
                dir.display()
            ))
        })?;
        dirs.insert(name, dir);
    }
    for projected in projections(pod, context.pod_dir) {
        refresh(context.store, namespace, &projected).map_err(error)?;
    }
    Ok(dirs)
}

fn projections(pod: &Value, pod_dir: &Path) -> Vec<ProjectedVolume> {
    let mut out = Vec::new();
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let dir = volume_dir(pod_dir, text(volume, "/name"));
        let source = if let Some(map) = volume.get("configMap") {
            Projection::ConfigMap {
                name: text(map, "/name").to_string(),
                items: map["items"].clone(),
                optional: map["optional"].as_bool().unwrap_or(false),
            }
        } else if let Some(secret) = volume.get("secret") {
            Projection::Secret {
                name: text(secret, "/secretName").to_string(),
                items: secret["items"].clone(),
                optional: secret["optional"].as_bool().unwrap_or(false),
            }
        } else {
            continue;
        };
        out.push(ProjectedVolume { source, dir });
    }
    out
}

/// Writes a ConfigMap or Secret volume's files as the object is now: changed files are
/// replaced atomically (temp file and rename), removed keys disappear. Returns whether any
/// file changed.
pub fn refresh(store: &Store, namespace: &str, volume: &ProjectedVolume) -> Result<bool, String> {
    let (kind, name, items, optional) = match &volume.source {
        Projection::ConfigMap {
            name,
            items,
            optional,
        } => ("ConfigMap", name, items, *optional),
        Projection::Secret {
            name,
            items,
            optional,
        } => ("Secret", name, items, *optional),
    };
    let rt = store.type_by_kind("", kind).expect("built in");
    let files: BTreeMap<String, Vec<u8>> = match store.get(&rt, namespace, name) {
        Ok(object) => object_files(kind, &object, items)?,
        Err(_) if optional => BTreeMap::new(),
        Err(_) => return Err(format!("{} {name:?} not found", kind.to_lowercase())),
    };
    std::fs::create_dir_all(&volume.dir).map_err(|e| e.to_string())?;
    let mut changed = false;
    for (path, bytes) in &files {
        let target = volume.dir.join(path);
        if std::fs::read(&target).ok().as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let temp = target.with_extension("kubelet-tmp");
        std::fs::write(&temp, bytes)
            .and_then(|()| std::fs::rename(&temp, &target))
            .map_err(|e| format!("writing {}: {e}", target.display()))?;
        changed = true;
    }
    if let Ok(entries) = std::fs::read_dir(&volume.dir) {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_file() && !files.keys().any(|k| k.split('/').next() == Some(&file)) {
                let _ = std::fs::remove_file(entry.path());
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// A ConfigMap's or Secret's keys as files (all keys, or the `items` chosen).
fn object_files(
    kind: &str,
    object: &Value,
    items: &Value,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut all: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if kind == "Secret" {
        for (key, value) in object["data"].as_object().into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().unwrap_or_default())
                .map_err(|e| format!("secret key {key:?} is not base64: {e}"))?;
            all.insert(key.clone(), bytes);
        }
    } else {
        for (key, value) in object["data"].as_object().into_iter().flatten() {
            all.insert(
                key.clone(),
                value.as_str().unwrap_or_default().as_bytes().to_vec(),
            );
        }
        for (key, value) in object["binaryData"].as_object().into_iter().flatten() {
            if let Ok(bytes) =
                base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap_or_default())
            {
                all.insert(key.clone(), bytes);
            }
        }
    }
    let Some(items) = items.as_array() else {
        return Ok(all);
    };
    let mut chosen = BTreeMap::new();
    for item in items {
        let key = text(item, "/key");
        let path = text(item, "/path");
        let bytes = all.get(key).ok_or_else(|| {
            format!(
                "key {key:?} not found in {}",
                text(object, "/metadata/name")
            )
        })?;
        chosen.insert(path.to_string(), bytes.clone());
    }
    Ok(chosen)
}

/// The container's environment in order: `envFrom` first, then `env`, `$(VAR)` expanded.
fn resolve_env(
    context: &PlanContext<'_>,
    container: &Value,
) -> Result<Vec<(String, String)>, String> {
    let pod = context.pod;
    let namespace = text(pod, "/metadata/namespace");
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
    };
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = text(source, "/prefix");
        let (kind, reference) = if let Some(r) = source.get("configMapRef") {
            ("ConfigMap", r)
        } else if let Some(r) = source.get("secretRef") {
            ("Secret", r)
        } else {
            continue;
        };
        let name = text(reference, "/name");
        let rt = context.store.type_by_kind("", kind).expect("built in");
        match context.store.get(&rt, namespace, name) {
            Ok(object) => {
                for (key, bytes) in object_files(kind, &object, &Value::Null)? {
                    set(
                        &mut env,
                        format!("{prefix}{key}"),
                        String::from_utf8_lossy(&bytes).into_owned(),
                    );
                }
            }
            Err(_) if reference["optional"].as_bool() == Some(true) => {}
            Err(_) => return Err(format!("{} {name:?} not found", kind.to_lowercase())),
        }
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        let name = text(variable, "/name").to_string();
        let value = if let Some(value) = variable["value"].as_str() {
            let known: BTreeMap<&str, &str> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            expand(value, &known)
        } else if let Some(from) = variable.get("valueFrom") {
            match value_from(context, from)? {
                Some(value) => value,
                None => continue,
            }
        } else {
            String::new()
        };
        set(&mut env, name, value);
    }
    Ok(env)
}

/// A `valueFrom`; None when an optional reference is missing (the variable is left unset).
fn value_from(context: &PlanContext<'_>, from: &Value) -> Result<Option<String>, String> {
    let pod = context.pod;
    let namespace = text(pod, "/metadata/namespace");
    if let Some(field) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
        return field_value(pod, field, context.ip).map(Some);
    }
    for (kind, key_ref) in [("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")] {
        let Some(reference) = from.get(key_ref) else {
            continue;
        };
        let name = text(reference, "/name");
        let key = text(reference, "/key");
        let optional = reference["optional"].as_bool().unwrap_or(false);
        let rt = context.store.type_by_kind("", kind).expect("built in");
        let object = match context.store.get(&rt, namespace, name) {
            Ok(object) => object,
            Err(_) if optional => return Ok(None),
            Err(_) => return Err(format!("{} {name:?} not found", kind.to_lowercase())),
        };
        let files = object_files(kind, &object, &Value::Null)?;
        return match files.get(key) {
            Some(bytes) => Ok(Some(String::from_utf8_lossy(bytes).into_owned())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {kind} {namespace}/{name}"
            )),
        };
    }
    if from.get("resourceFieldRef").is_some() {
        // Resource limits are not enforced here; the variable is set to what a node without
        // limits reports (0 = unlimited would mislead), so it is left unset.
        return Ok(None);
    }
    Err(format!("unsupported valueFrom {from}"))
}

/// The downward API fields a kubelet serves for environment variables.
fn field_value(pod: &Value, path: &str, ip: Ipv4Addr) -> Result<String, String> {
    let keyed = |prefix: &str| -> Option<String> {
        let rest = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(rest.to_string())
    };
    if let Some(label) = keyed("metadata.labels") {
        return Ok(pod["metadata"]["labels"][&label]
            .as_str()
            .unwrap_or_default()
            .to_string());
    }
    if let Some(annotation) = keyed("metadata.annotations") {
        return Ok(pod["metadata"]["annotations"][&annotation]
            .as_str()
            .unwrap_or_default()
            .to_string());
    }
    Ok(match path {
        "metadata.name" => text(pod, "/metadata/name").to_string(),
        "metadata.namespace" => text(pod, "/metadata/namespace").to_string(),
        "metadata.uid" => text(pod, "/metadata/uid").to_string(),
        "spec.nodeName" => text(pod, "/spec/nodeName").to_string(),
        "spec.serviceAccountName" => text(pod, "/spec/serviceAccountName").to_string(),
        "status.podIP" | "status.podIPs" => ip.to_string(),
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".to_string(),
        other => return Err(format!("unsupported fieldRef fieldPath {other:?}")),
    })
}

/// `$(NAME)` replaced by an earlier variable's value; `$$(NAME)` is a literal `$(NAME)`;
/// unknown names stay as written, as Kubernetes does.
pub fn expand(value: &str, known: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(escaped) = tail.strip_prefix("$$(") {
            out.push_str("$(");
            rest = escaped;
            continue;
        }
        if let Some(open) = tail.strip_prefix("$(") {
            if let Some(close) = open.find(')') {
                let name = &open[..close];
                match known.get(name) {
                    Some(value) => out.push_str(value),
                    None => out.push_str(&tail[..close + 3]),
                }
                rest = &open[close + 1..];
                continue;
            }
        }
        out.push('$');
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

/// Local and wildcard listen addresses become the pod's own address (see the module notes).
pub fn localize_addresses(value: &str, ip: Ipv4Addr) -> String {
    const LOCAL: [&str; 4] = ["0.0.0.0:", "[::]:", "127.0.0.1:", "localhost:"];
    let mut out = String::with_capacity(value.len());
    let mut index = 0;
    'scan: while index < value.len() {
        let boundary = index == 0
            || value[..index]
                .chars()
                .next_back()
                .is_some_and(|c| matches!(c, '/' | '@' | '=' | ',' | ' ' | ';' | '"'));
        if boundary {
            for local in LOCAL {
                if value[index..].starts_with(local) {
                    out.push_str(&ip.to_string());
                    out.push(':');
                    index += local.len();
                    continue 'scan;
                }
            }
        }
        let c = value[index..].chars().next().unwrap_or_default();
        out.push(c);
        index += c.len_utf8();
    }
    out
}

/// Every mount path in a value (alone, as `--flag=path`, under it, or inside a shell
/// command) points into the host directory behind the mount instead. A path counts where it
/// starts a word (after the start, whitespace, a quote, `=` or `:`) and ends at `/`, a quote,
/// whitespace or the end; `mounts` is ordered longest path first.
pub fn translate_paths(value: &str, mounts: &[(String, PathBuf)]) -> String {
    let starts_word = |before: Option<char>| {
        before.is_none_or(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '=' | ':' | ','))
    };
    let ends_path = |after: Option<char>| {
        after.is_none_or(|c| c.is_whitespace() || matches!(c, '/' | '"' | '\'' | ';' | ','))
    };
    let mut out = String::with_capacity(value.len());
    let mut index = 0;
    'scan: while index < value.len() {
        if starts_word(value[..index].chars().next_back()) {
            for (mount, host) in mounts {
                let Some(rest) = value[index..].strip_prefix(mount.as_str()) else {
                    continue;
                };
                if ends_path(rest.chars().next()) {
                    out.push_str(&host.display().to_string());
                    index += mount.len();
                    continue 'scan;
                }
            }
        }
        let c = value[index..].chars().next().unwrap_or_default();
        out.push(c);
        index += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_keys_drop_registry_tag_and_digest() {
        assert_eq!(
            image_key("ghcr.io/iggy-rs/iggy-broker:0.1.0"),
            "iggy-broker"
        );
        assert_eq!(image_key("iggy-sidecar"), "iggy-sidecar");
        assert_eq!(image_key("localhost:5000/x/y@sha256:abc"), "y");
    }

    #[test]
    fn local_addresses_become_the_pods_own() {
        let ip = Ipv4Addr::new(127, 1, 0, 7);
        assert_eq!(localize_addresses("0.0.0.0:8090", ip), "127.1.0.7:8090");
        assert_eq!(
            localize_addresses("http://127.0.0.1:3000", ip),
            "http://127.1.0.7:3000"
        );
        assert_eq!(
            localize_addresses("--bind=[::]:9", ip),
            "--bind=127.1.0.7:9"
        );
        assert_eq!(
            localize_addresses("http://localhost:4317", ip),
            "http://127.1.0.7:4317"
        );
        // Only whole hosts: a name that ends in "localhost" or a longer address is kept.
        assert_eq!(localize_addresses("mylocalhost:1", ip), "mylocalhost:1");
        assert_eq!(localize_addresses("10.0.0.0:1", ip), "10.0.0.0:1");
        assert_eq!(localize_addresses("plain", ip), "plain");
    }

    #[test]
    fn mount_paths_point_into_the_volume_directories() {
        let mounts = vec![
            ("/etc/iggy/extra".to_string(), PathBuf::from("/s/extra")),
            ("/etc/iggy".to_string(), PathBuf::from("/s/config")),
            ("/var/lib/iggy".to_string(), PathBuf::from("/s/data")),
        ];
        assert_eq!(
            translate_paths("/etc/iggy/broker.toml", &mounts),
            "/s/config/broker.toml"
        );
        assert_eq!(translate_paths("/etc/iggy/extra/x", &mounts), "/s/extra/x");
        assert_eq!(
            translate_paths("--data=/var/lib/iggy", &mounts),
            "--data=/s/data"
        );
        assert_eq!(translate_paths("/var/lib/iggyx", &mounts), "/var/lib/iggyx");
        assert_eq!(translate_paths("--config", &mounts), "--config");
        assert_eq!(
            translate_paths("cat /etc/iggy/a; ls '/var/lib/iggy'", &mounts),
            "cat /s/config/a; ls '/s/data'"
        );
        assert_eq!(translate_paths("x/etc/iggy/a", &mounts), "x/etc/iggy/a");
    }

    #[test]
    fn variables_expand_from_earlier_ones() {
        let known = BTreeMap::from([("POD", "dev-0")]);
        assert_eq!(expand("$(POD).svc", &known), "dev-0.svc");
        assert_eq!(expand("$$(POD) $(NOPE) $", &known), "$(POD) $(NOPE) $");
    }
}
