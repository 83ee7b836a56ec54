//! The process kubelet with real processes: `sh` and `python3` stand in for images. Every
//! process runs on a loopback pod address, stops with its pod, and is killed when the
//! harness drops.

use kube_harness::kubelet::ProcessOptions;
use kube_harness::{Harness, HarnessOptions};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH; the process kubelet tests run it"))
}

async fn harness(state: &tempfile::TempDir) -> Harness {
    let mut processes = ProcessOptions::new(state.path().to_path_buf());
    processes.images.insert("shell".into(), which("sh"));
    processes.images.insert("python".into(), which("python3"));
    processes.backoff.base = Duration::from_millis(200);
    Harness::start(HarnessOptions {
        nodes: 2,
        processes: Some(processes),
        ..HarnessOptions::default()
    })
    .await
    .expect("harness starts")
}

async fn wait_for(
    harness: &Harness,
    what: &str,
    kind: (&str, &str),
    name: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(object) = harness.get(kind.0, kind.1, "default", name) {
            if check(&object) {
                return object;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}: {object:#}");
            }
        } else if Instant::now() > deadline {
            panic!("timed out waiting for {what}: {name} does not exist");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn a_crashing_container_gets_its_env_and_files_and_backs_off() {
    let state = tempfile::tempdir().expect("temp dir");
    let harness = harness(&state).await;
    harness
        .apply_yaml(
            r#"
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {app.conf: "level = 7"}
---
apiVersion: v1
kind: Pod
metadata: {name: crasher, labels: {app: crasher}}
spec:
  containers:
  - name: main
    image: example.com/tools/shell:1.0
    command: [sh, -c, 'echo "password=$PASSWORD ip=$MY_IP name=$MY_NAME"; cat /etc/app/app.conf; echo; echo "listen=$LISTEN"; exit 3']
    env:
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: MY_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: LISTEN, value: "0.0.0.0:8090"}
    volumeMounts: [{name: config, mountPath: /etc/app}]
  volumes: [{name: config, configMap: {name: settings}}]
"#,
        )
        .expect("objects apply");
    let pod = wait_for(
        &harness,
        "a restart after exit 3",
        ("", "Pod"),
        "crasher",
        |pod| {
            let main = container(pod, "main");
            main["restartCount"].as_u64() >= Some(1)
                && main["lastState"]["terminated"]["exitCode"] == 3
        },
    )
    .await;
    let ip = pod["status"]["podIP"].as_str().expect("pod IP").to_string();
    assert!(ip.starts_with("127.") && !ip.starts_with("127.0."), "{ip}");
    assert_eq!(
        pod["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"].clone()),
        Some("False".into())
    );
    let pod = wait_for(
        &harness,
        "CrashLoopBackOff",
        ("", "Pod"),
        "crasher",
        |pod| container(pod, "main")["state"]["waiting"]["reason"] == "CrashLoopBackOff",
    )
    .await;
    assert!(container(&pod, "main")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("back-off"));
    // The container's output, as `kubectl logs` reads it through the API: the current
    // instance's, or the previous one's while the next has not printed yet.
    let base = format!(
        "{}/api/v1/namespaces/default/pods/crasher/log",
        harness.url()
    );
    let mut log = http_get(&base).await;
    if !log.contains("password=") {
        log = http_get(&format!("{base}?previous=true")).await;
    }
    assert!(log.contains("password=s3cret"), "{log}");
    assert!(log.contains(&format!("ip={ip} name=crasher")), "{log}");
    assert!(log.contains("level = 7"), "{log}");
    assert!(log.contains(&format!("listen={ip}:8090")), "{log}");
}

#[tokio::test]
async fn a_service_routes_to_ready_pods_and_deletion_stops_them() {
    let state = tempfile::tempdir().expect("temp dir");
    let harness = harness(&state).await;
    harness
        .apply_yaml(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: server
    image: python
    command: [python3, -c, "import http.server, os; http.server.HTTPServer((os.environ['MY_IP'], 8080), http.server.SimpleHTTPRequestHandler).serve_forever()"]
    env: [{name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#,
        )
        .expect("objects apply");
    let pod = wait_for(&harness, "the pod to be ready", ("", "Pod"), "web", |pod| {
        container(pod, "server")["ready"] == true
            && pod["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    })
    .await;
    let pod_ip = pod["status"]["podIP"].as_str().expect("pod IP").to_string();
    let service = wait_for(&harness, "a ClusterIP", ("", "Service"), "web", |s| {
        s["spec"]["clusterIP"].is_string()
    })
    .await;
    let cluster_ip = service["spec"]["clusterIP"]
        .as_str()
        .expect("ip")
        .to_string();
    assert!(
        cluster_ip.starts_with("127.") && !cluster_ip.starts_with("127.0."),
        "{cluster_ip}"
    );
    let slice = wait_for(
        &harness,
        "the EndpointSlice",
        ("discovery.k8s.io", "EndpointSlice"),
        "web",
        |s| s["endpoints"][0]["conditions"]["ready"] == true,
    )
    .await;
    assert_eq!(slice["endpoints"][0]["addresses"][0], pod_ip.as_str());
    assert_eq!(
        slice["ports"][0]["port"], 8080,
        "the pod's port, resolved by name"
    );
    let page = http_get(&format!("http://{cluster_ip}:80/")).await;
    assert!(page.contains("Directory listing"), "{page}");
    let hosts = std::fs::read_to_string(state.path().join("hosts")).expect("hosts file");
    assert!(
        hosts.contains(&format!(
            "{cluster_ip} web.default.svc.cluster.local web.default.svc"
        )),
        "{hosts}"
    );

    // Deletion: SIGTERM stops the server, then the pod object goes and the route with it.
    let took = delete_and_wait_gone(&harness, "web").await;
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM, not the grace period, stopped it"
    );
    assert!(
        tokio::net::TcpStream::connect(format!("{pod_ip}:8080"))
            .await
            .is_err(),
        "the process is gone"
    );
}

/// Deletes a pod and waits until its object is gone (its processes stopped); how long it took.
async fn delete_and_wait_gone(harness: &Harness, name: &str) -> Duration {
    let started = Instant::now();
    {
        let mut store = harness.store();
        let rt = store.type_by_kind("", "Pod").expect("built in");
        store.delete(&rt, "default", name).expect("delete");
    }
    while harness.get("", "Pod", "default", name).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} was not removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// A GET that must answer 200; the body.
async fn http_get(url: &str) -> String {
    let (status, body) = kube_harness::http_get(url).await.expect("answers");
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_and_a_stubborn_process_is_killed_after_its_grace() {
    let state = tempfile::tempdir().expect("temp dir");
    let harness = harness(&state).await;
    harness
        .apply_yaml(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: unhealthy}
spec:
  containers:
  - name: server
    image: python
    command: [python3, -c, "import http.server, os; http.server.HTTPServer((os.environ['MY_IP'], 8080), http.server.SimpleHTTPRequestHandler).serve_forever()"]
    env: [{name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
    ports: [{name: http, containerPort: 8080}]
    livenessProbe: {httpGet: {path: /no-such-file, port: http}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: shell
    command: [sh, -c, 'trap "" TERM; while true; do sleep 0.1; done']
"#,
        )
        .expect("pods apply");
    // 404 is a failed httpGet probe: two in a row restart the container.
    let pod = wait_for(
        &harness,
        "a liveness restart",
        ("", "Pod"),
        "unhealthy",
        |pod| container(pod, "server")["restartCount"].as_u64() >= Some(1),
    )
    .await;
    let last = &container(&pod, "server")["lastState"]["terminated"];
    assert_eq!(last["signal"], 15, "stopped by SIGTERM: {last}");

    // SIGTERM is ignored: SIGKILL follows once the 1 s grace period is over.
    wait_for(
        &harness,
        "the shell running",
        ("", "Pod"),
        "stubborn",
        |pod| container(pod, "main")["state"]["running"].is_object(),
    )
    .await;
    let took = delete_and_wait_gone(&harness, "stubborn").await;
    assert!(
        took >= Duration::from_millis(900),
        "the grace period was waited out: {took:?}"
    );
}
