//! deploy/: every Kubernetes manifest parses, and the ports, paths, flags, names and
//! environment variables they name are those of the binary and of the config they mount.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{Gateway, BIN};
use serde_yaml::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

/// Every document of every manifest, with its file name.
fn manifests() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(Path::new(DIR).join("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                v["apiVersion"].is_string() && v["kind"].is_string(),
                "{name}: {v:?}"
            );
            out.push((name.clone(), v));
        }
    }
    out
}

use serde::Deserialize as _;

fn find<'a>(all: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .map(|(_, v)| v)
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn the_manifests_agree_with_the_binary_and_the_config() {
    let all = manifests();
    // Kustomize applies every file there is.
    let kustomization: Value = serde_yaml::from_str(
        &std::fs::read_to_string(Path::new(DIR).join("kubernetes/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    let files: BTreeSet<&str> = all
        .iter()
        .map(|(f, _)| f.as_str())
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files);

    // The mounted config passes `switchyard check` as the pods will read it.
    let cm = find(&all, "ConfigMap", "switchyard");
    let yaml = s(&cm["data"]["switchyard.yaml"]);
    let config: Value = serde_yaml::from_str(yaml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchyard.yaml");
    std::fs::write(&file, yaml).unwrap();
    let password_env = s(&config["shared"]["password_env"]);
    let check = Command::new(BIN)
        .args(["check", "-c", file.to_str().unwrap()])
        .env(password_env, "secret")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let (api, admin) = (port_of(s(&config["listen"])), port_of(s(&config["admin"])));

    // The Deployment runs `run -c <the mounted file>`, a flag the binary has.
    let deploy = find(&all, "Deployment", "switchyard");
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(&args[..2], ["run", "-c"]);
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap();
    assert_eq!(
        args[2],
        format!("{}/switchyard.yaml", s(&mount["mountPath"]))
    );
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], "switchyard");
    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("-c, --config"));

    // Its ports are the config's, its probes name the admin port and paths the binary serves.
    let ports: Vec<(&str, u64)> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_u64().unwrap()))
        .collect();
    assert_eq!(ports, [("api", api), ("admin", admin)]);
    let mut probed = Vec::new();
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["port"], "admin", "{probe}");
        probed.push(s(&get["path"]).to_owned());
    }
    assert_eq!(probed, ["/readyz", "/healthz"]);
    let env: Vec<&str> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| s(&e["name"]))
        .collect();
    assert!(env.contains(&password_env), "{env:?}");

    // SIGTERM drains for grace_period after the preStop pause; the kubelet waits longer.
    let grace = humantime::parse_duration(s(&config["server"]["grace_period"])).unwrap();
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(termination > grace.as_secs() + pause, "{termination} s");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // The Service, the PDB and the HPA reach this Deployment.
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    let service = find(&all, "Service", "switchyard");
    assert_eq!(&service["spec"]["selector"], labels);
    for p in service["spec"]["ports"].as_sequence().unwrap() {
        assert!(
            ports.iter().any(|(n, _)| *n == s(&p["targetPort"])),
            "{p:?}"
        );
    }
    let pdb = find(&all, "PodDisruptionBudget", "switchyard");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert!(
        pdb["spec"]["minAvailable"].as_u64().unwrap()
            < deploy["spec"]["replicas"].as_u64().unwrap()
    );
    let hpa = find(&all, "HorizontalPodAutoscaler", "switchyard");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "switchyard");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");

    // The config's Redis is the Redis Service; its inference servers the headless Service.
    let redis_url = s(&config["shared"]["redis"]);
    let redis = find(&all, "Service", "switchyard-redis");
    let redis_host = format!(
        "{}.{}.svc.cluster.local:{}",
        s(&redis["metadata"]["name"]),
        s(&redis["metadata"]["namespace"]),
        redis["spec"]["ports"][0]["port"].as_u64().unwrap()
    );
    assert!(
        redis_url.starts_with(&format!("redis://{redis_host}")),
        "{redis_url}"
    );
    let dns = s(&config["pools"]["llama-8b"]["servers"][0]["dns"]);
    let vllm = find(&all, "Service", "vllm");
    assert_eq!(
        vllm["spec"]["clusterIP"], "None",
        "a headless Service: one address per pod"
    );
    assert_eq!(
        dns,
        format!(
            "{}.{}.svc.cluster.local:{}",
            s(&vllm["metadata"]["name"]),
            s(&vllm["metadata"]["namespace"]),
            vllm["spec"]["ports"][0]["port"].as_u64().unwrap()
        )
    );

    // The image: non-root, runs the binary on the config it carries, exposes the same ports.
    let docker = std::fs::read_to_string(Path::new(DIR).join("Dockerfile")).unwrap();
    let line = |word: &str| {
        docker
            .lines()
            .rfind(|l| l.starts_with(word))
            .unwrap_or_else(|| panic!("no {word}"))
            .to_owned()
    };
    assert!(line("FROM ").contains("distroless"), "{}", line("FROM "));
    let user = line("USER ");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    assert_eq!(
        line("ENTRYPOINT "),
        "ENTRYPOINT [\"/usr/local/bin/switchyard\"]"
    );
    assert_eq!(
        line("CMD "),
        format!("CMD [\"run\", \"-c\", \"{}\"]", args[2])
    );
    assert_eq!(line("EXPOSE "), format!("EXPOSE {api} {admin}"));
    for copied in docker.lines().filter_map(|l| l.strip_prefix("COPY ")) {
        if copied.starts_with("--from") {
            continue;
        }
        for src in copied.split_whitespace().rev().skip(1) {
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(src).exists(),
                "Dockerfile copies {src}, which is not in the repository"
            );
        }
    }
}

/// The probe paths the Deployment names are the admin listener's, and answer.
#[tokio::test]
async fn the_probed_paths_answer_on_the_admin_listener() {
    let sim = common::Sim::fast("m");
    let gw = Gateway::single("m", &[sim.url()], "");
    for path in ["/readyz", "/healthz"] {
        let resp = common::client()
            .get(gw.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}
