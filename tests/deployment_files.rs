//! The deployment files keep the promises deploy/README.md makes: several replicas with the
//! engine's health routes, no root, no literal secret, every `${…}` of the mappings provided,
//! a multi-stage image with an unprivileged user, a restarting and hardened systemd unit.
//!
//! YAML is read with cosell's own loader (YAML 1.2 core schema, one document per call), after
//! splitting multi-document files on lines that are exactly `---`.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

const KUBE: &str = "deploy/kubernetes";
/// The mappings whose references the deployment must provide; the last is the one it runs.
const MAPPINGS: [&str; 3] = [
    "mappings/dynamics365.yaml",
    "mappings/salesforce.yaml",
    "deploy/kubernetes/mapping.yaml",
];

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(full).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn documents(path: &str) -> Vec<Value> {
    let mut chunks = vec![String::new()];
    for line in read(path).lines() {
        if line.trim_end() == "---" {
            chunks.push(String::new());
        } else if let Some(chunk) = chunks.last_mut() {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    let content = |c: &&String| {
        c.lines()
            .any(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
    };
    let parse = |c: &String| {
        cosell::config::yaml::parse(c).unwrap_or_else(|e| panic!("{path}: not valid YAML: {e:?}"))
    };
    chunks
        .iter()
        .filter(content)
        .map(|c| parse(c).value)
        .collect()
}

/// The array at `pointer`, or an empty one.
fn array<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The one document of `kind` among deploy/kubernetes/*.yaml.
fn of_kind(kind: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(KUBE);
    let listing = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {KUBE}: {e}"));
    let names = listing.map(|f| {
        f.expect("directory entry")
            .file_name()
            .to_string_lossy()
            .into_owned()
    });
    let yaml = names.filter(|f| f.ends_with(".yaml"));
    let docs = yaml.flat_map(|f| documents(&format!("{KUBE}/{f}")));
    let mut found: Vec<Value> = docs.filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{KUBE} must hold exactly one {kind}");
    found.remove(0)
}

fn container(deployment: &Value) -> &Value {
    let containers = array(deployment, "/spec/template/spec/containers");
    containers
        .iter()
        .find(|c| c["name"] == "cosell")
        .expect("the Deployment has a container named cosell")
}

fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| strings(i, out)),
        _ => {}
    }
}

/// What the mapping's `connections` reference: `${NAME}` / `${NAME:-default}` names and
/// `${file:/path}` paths (prefixed `file:`).
fn references(mapping: &str) -> BTreeSet<String> {
    let mut texts = Vec::new();
    let doc = documents(mapping)
        .pop()
        .unwrap_or_else(|| panic!("{mapping} is empty"));
    strings(&doc["connections"], &mut texts);
    let inner = texts
        .into_iter()
        .flat_map(|t| t.split("${").skip(1))
        .filter_map(|r| r.split_once('}'));
    inner
        .map(|(r, _)| r.split(":-").next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn deployment_runs_several_unprivileged_replicas_with_the_engines_health_routes() {
    let deployment = of_kind("Deployment");
    let replicas = deployment
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    assert!(
        replicas >= 2,
        "the Deployment has {replicas} replica(s); several instances need 2 or more"
    );
    let c = container(&deployment);
    let path = |probe: &str| {
        c.pointer(&format!("/{probe}/httpGet/path"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        path("livenessProbe"),
        "/healthz",
        "livenessProbe must GET /healthz (liveness)"
    );
    assert_eq!(
        path("readinessProbe"),
        "/readyz",
        "readinessProbe must GET /readyz (store and tokens OK)"
    );
    let pod = deployment.pointer("/spec/template/spec/securityContext/runAsNonRoot");
    let own = c.pointer("/securityContext/runAsNonRoot");
    let yes = |flag: Option<&Value>| flag.and_then(Value::as_bool) == Some(true);
    assert!(
        yes(pod) || yes(own),
        "runAsNonRoot: true is missing (pod or container securityContext)"
    );
}

#[test]
fn credentials_come_from_the_secret_and_the_instance_name_from_the_pod() {
    let deployment = of_kind("Deployment");
    let env = array(container(&deployment), "/env");
    for required in ["COSELL_INSTANCE", "COSELL_PIPELINE", "COSELL_STATE"] {
        assert!(
            env.iter().any(|v| v["name"] == required),
            "the container does not set {required}"
        );
    }
    let example = of_kind("Secret");
    for var in env {
        let name = var["name"].as_str().expect("every env entry has a name");
        if name == "COSELL_INSTANCE" {
            let field = var
                .pointer("/valueFrom/fieldRef/fieldPath")
                .and_then(Value::as_str);
            assert_eq!(
                field,
                Some("metadata.name"),
                "COSELL_INSTANCE must come from fieldRef metadata.name"
            );
        } else if !matches!(name, "COSELL_PIPELINE" | "RUST_LOG") {
            assert!(
                var.get("value").is_none(),
                "env {name} has a literal value; it belongs in the Secret"
            );
            let key = var
                .pointer("/valueFrom/secretKeyRef/key")
                .and_then(Value::as_str);
            let key = key.unwrap_or_else(|| panic!("env {name} must use valueFrom.secretKeyRef"));
            assert!(
                example["stringData"].get(key).is_some(),
                "secret.example.yaml lacks the key {key} of env {name}"
            );
        }
    }
    let resources = of_kind("Kustomization")["resources"].to_string();
    assert!(
        !resources.contains("example"),
        "kustomization.yaml must not apply *.example.yaml: {resources}"
    );
}

#[test]
fn every_reference_of_the_mappings_is_provided_by_the_deployment() {
    let (deployment, kustomization) = (of_kind("Deployment"), of_kind("Kustomization"));
    let c = container(&deployment);
    let mut provided = Vec::new(); // env names, mount paths, file names in the mounted volumes
    provided.extend(array(c, "/env").iter().filter_map(|v| v["name"].as_str()));
    provided.extend(
        array(c, "/volumeMounts")
            .iter()
            .filter_map(|m| m["mountPath"].as_str()),
    );
    for generator in array(&kustomization, "/configMapGenerator") {
        strings(&generator["files"], &mut provided);
    }
    for volume in array(&deployment, "/spec/template/spec/volumes") {
        for source in array(volume, "/projected/sources") {
            provided.extend(
                array(source, "/secret/items")
                    .iter()
                    .filter_map(|i| i["path"].as_str()),
            );
        }
    }
    for mapping in MAPPINGS {
        for reference in references(mapping) {
            let needed = match reference.strip_prefix("file:") {
                Some(path) => path
                    .rsplit_once('/')
                    .map(|(dir, file)| vec![dir, file])
                    .unwrap_or_default(),
                None => vec![reference.as_str()],
            };
            if let Some(missing) = needed.into_iter().find(|n| !provided.contains(n)) {
                panic!("{mapping} needs {reference}; deployment.yaml does not provide {missing}");
            }
        }
    }
}

#[test]
fn kubernetes_mapping_is_the_shipped_dynamics_mapping_plus_webhooks() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(MAPPINGS[2]);
    let checked = cosell::load::check_file(&path, &[]).expect("the Kubernetes mapping is readable");
    let problems: Vec<&String> = checked.diagnostics.iter().map(|d| &d.message).collect();
    assert!(
        !checked.has_errors(),
        "{} is not a valid mapping: {problems:?}",
        MAPPINGS[2]
    );
    let mut deployed = documents(MAPPINGS[2]).pop().expect("one document");
    let webhooks = deployed["connections"]
        .as_object_mut()
        .and_then(|c| c.remove("webhooks"));
    let anchored = webhooks.is_some_and(|w| !array(&w, "/trust_anchors").is_empty());
    assert!(
        anchored,
        "{} needs connections.webhooks with trust_anchors",
        MAPPINGS[2]
    );
    let shipped = documents(MAPPINGS[0]).pop().expect("one document");
    let stale =
        "differs beyond connections.webhooks: copy the shipped mapping again, re-add webhooks";
    assert!(
        deployed == shipped,
        "{} {stale} ({})",
        MAPPINGS[2],
        MAPPINGS[0]
    );
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_an_unprivileged_user() {
    let dockerfile = read("Dockerfile");
    let lines = dockerfile.lines().filter_map(|l| l.trim().split_once(' '));
    let words: Vec<(String, &str)> = lines
        .map(|(i, rest)| (i.to_ascii_uppercase(), rest.trim()))
        .collect();
    let froms = words.iter().filter(|(i, _)| i == "FROM").count();
    assert!(
        froms >= 2,
        "the Dockerfile has {froms} FROM line(s); it needs a builder and a runtime stage"
    );
    let runtime = words
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .expect("a FROM line");
    let user = words[runtime..].iter().rev().find(|(i, _)| i == "USER");
    let (_, user) =
        user.expect("the runtime stage (after the last FROM) has no USER, so it runs as root");
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        !matches!(name, "root" | "0"),
        "the runtime stage runs as USER {user}; it must be unprivileged"
    );
}

#[test]
fn systemd_unit_restarts_and_is_hardened() {
    let unit = read("deploy/systemd/cosell.service");
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let restart = settings.iter().find_map(|l| l.strip_prefix("Restart="));
    assert!(
        restart.is_some_and(|r| r != "no"),
        "cosell.service needs Restart=always, found {restart:?}"
    );
    assert!(
        settings.contains(&"NoNewPrivileges=yes"),
        "cosell.service must set NoNewPrivileges=yes"
    );
}
