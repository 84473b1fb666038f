import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MMF_RUN = os.path.join(os.path.dirname(sys.executable), "mmf_run")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory):
    """A small synthetic catalog shared by the end-to-end tests (read-only for them)."""
    from mmf_fashionvil.synthetic import generate_catalog

    out = tmp_path_factory.mktemp("catalog") / "catalog"
    generate_catalog(out, seed=3, num_products=40, image_size=64)
    return str(out)


def run_command(command, timeout=600, env=None, cwd=REPO):
    """Runs a command line; returns (exit code, combined output)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    full_env.update(env or {})
    result = subprocess.run(
        command, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )
    return result.returncode, result.stdout


def free_port():
    """A TCP port nobody listens on now, for a test's own process group."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_jsonl(path):
    """The records of a JSON-lines log (train_log.jsonl, eval_log.jsonl)."""
    with open(path) as f:
        return [json.loads(line) for line in f]
