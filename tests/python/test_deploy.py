"""docker-compose.yml against what the binaries really read: each service
runs one of our binaries, every variable it sets is one that binary takes
(its --help lists them; the model folder is read outside clap), every URL
names a service of the file at the port that service listens on, and the
secrets and dependencies it names exist."""
import os
import re
import subprocess
from urllib.parse import urlparse

import yaml

from conftest import REPO

BINARIES = {"rungate-edge", "rungate-billing", "rungate-inference", "rungate-ledger"}
# Read with std::env rather than clap, so not in --help (checked in the source below).
OUTSIDE_CLAP = {"rungate-inference": {"RUNGATE_MODEL_DIR"}}


def variables_read_by(binary):
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    path = os.path.join(target, "debug", binary)
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "--quiet", "--bin", binary], cwd=REPO, check=True)
    shown = subprocess.run([path, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", shown)) | OUTSIDE_CLAP.get(binary, set())


def test_compose_sets_only_what_each_binary_reads_and_wires_services_to_their_ports():
    with open(os.path.join(REPO, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    ours = {name: s for name, s in services.items() if s.get("command") in BINARIES}
    assert set(s["command"] for s in ours.values()) == BINARIES
    listens = {}
    for name, service in ours.items():
        read = variables_read_by(service["command"])
        unknown = set(service.get("environment", {})) - read
        assert not unknown, f"{name} sets {unknown}, which {service['command']} does not read"
        for key, value in service["environment"].items():
            if key.endswith("_LISTEN"):
                listens[name] = value.rsplit(":", 1)[1]
    for name, service in ours.items():
        for key, value in service["environment"].items():
            if key.endswith("_URL") and key.startswith("RUNGATE_") and str(value).startswith("http://"):
                url = urlparse(value)
                if url.hostname in ours:
                    assert str(url.port) == listens[url.hostname], f"{name}: {key}={value}"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"], f"{name} uses unknown secret {secret}"
    for binary, names in OUTSIDE_CLAP.items():
        crate = os.path.join(REPO, "services", binary.removeprefix("rungate-"), "src")
        sources = "".join(open(os.path.join(d, f)).read() for d, _, fs in os.walk(crate) for f in fs)
        assert all(f'"{name}"' in sources for name in names)


def test_the_image_builds_llama_cpp_and_ships_a_model_folder():
    with open(os.path.join(REPO, "Dockerfile")) as f:
        build_stage = re.split(r"^FROM ", f.read(), flags=re.M)[1]
    # llama-cpp-sys-2 builds llama.cpp with cmake and its bindings with libclang.
    for package in ("cmake", "clang", "libclang-dev"):
        assert re.search(rf"apt-get install[^\n]*\b{re.escape(package)}\b", build_stage), package
    with open(os.path.join(REPO, "docker-compose.yml")) as f:
        inference = yaml.safe_load(f)["services"]["inference"]
    assert inference["environment"]["RUNGATE_MODEL_DIR"] == "/models"
    assert any(str(v).endswith(":/models") for v in inference.get("volumes", []))


K8S = os.path.join(REPO, "deploy/k8s")
# Made by the operator (deploy/README.md), never committed.
OPERATOR_SECRETS = {"rungate-database", "rungate-keys"}


def k8s_resources():
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    listed = set(kustomization["resources"])
    present = {f for f in os.listdir(K8S) if f.endswith(".yaml") and f != "kustomization.yaml"}
    assert listed == present, "kustomization.yaml lists every manifest"
    docs = []
    for name in sorted(listed):
        with open(os.path.join(K8S, name)) as f:
            docs += [doc for doc in yaml.safe_load_all(f) if doc]
    return docs


def test_the_kubernetes_base_is_valid_and_wired_to_what_the_binaries_read():
    import kubernetes_validate

    docs = k8s_resources()
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    deployments = {**by_kind["Deployment"], **by_kind["StatefulSet"]}
    services = by_kind["Service"]
    assert set(deployments) == BINARIES
    listen_port = {}
    for name, deployment in deployments.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == [name]
        env = {e["name"]: e.get("value") for e in container["env"]}
        unknown = set(env) - variables_read_by(name)
        assert not unknown, f"{name} sets {unknown}, which it does not read"
        listen_port[name] = int(next(v for k, v in env.items() if k.endswith("_LISTEN")).rsplit(":", 1)[1])
        assert [p["containerPort"] for p in container["ports"]] == [listen_port[name]]
        # gRPC services are probed with grpc.health.v1 on their port; the edge on /healthz.
        for probe in ("readinessProbe", "livenessProbe"):
            check = container[probe]
            if name == "rungate-edge":
                assert check["httpGet"]["path"] == "/healthz"
            else:
                assert check["grpc"]["port"] == listen_port[name]
        volumes = deployment["spec"]["template"]["spec"].get("volumes", [])
        for volume in volumes:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in OPERATOR_SECRETS
            if "configMap" in volume:
                assert volume["configMap"]["name"] in by_kind["ConfigMap"]
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in by_kind["PersistentVolumeClaim"]
        for e in container["env"]:
            if "secretKeyRef" in e.get("valueFrom", {}):
                assert e["valueFrom"]["secretKeyRef"]["name"] in OPERATOR_SECRETS
    # Each Service selects its Deployment and reaches the port it listens on;
    # every internal URL names a Service at its port.
    for name, service in services.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
    for name, deployment in deployments.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        for e in container["env"]:
            if e["name"].endswith("_URL") and str(e.get("value", "")).startswith("http://"):
                for each in e["value"].split(","):
                    url = urlparse(each)
                    # A StatefulSet pod's own name: <set>-<index>.<service>.
                    service = url.hostname.split(".")[-1]
                    [port] = services[service]["spec"]["ports"]
                    assert url.port == port["port"] and listen_port[service] == port["port"], e
    # Billing's replicas: the edge lists every pod, in index order, and each
    # pod knows its index and how many there are.
    billing = by_kind["StatefulSet"]["rungate-billing"]
    replicas = billing["spec"]["replicas"]
    assert services[billing["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    [container] = billing["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RUNGATE_BILLING_REPLICAS"]["value"] == str(replicas)
    assert env["RUNGATE_BILLING_REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    [edge] = deployments["rungate-edge"]["spec"]["template"]["spec"]["containers"]
    listed = next(e["value"] for e in edge["env"] if e["name"] == "RUNGATE_BILLING_URL").split(",")
    assert [urlparse(u).hostname for u in listed] == [f"rungate-billing-{i}.rungate-billing" for i in range(replicas)]
    # Edge and inference scale with load.
    scaled = {hpa["spec"]["scaleTargetRef"]["name"] for hpa in by_kind["HorizontalPodAutoscaler"].values()}
    assert scaled == {"rungate-edge", "rungate-inference"}
