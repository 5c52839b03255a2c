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
