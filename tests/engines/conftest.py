"""The real vLLM engine for the slow tests of this package (skipped unless ``make vllm`` made ``.venv-vllm``).

The embedded model is exported once (``antidistill model export``, ~30 s here) and one engine with the plugin is
started once (~100-150 s on these 2 shared cores, most of it torch.compile) for every module of the package that
asks for :func:`vllm_engine`: each start is minutes of the suite. The master key is in the engine's environment
only.

:func:`start_engine` also starts an engine *without* the plugin, as an operator would by forgetting it: antidistill
is installed in ``.venv-vllm`` and registers its entry point there, so vLLM would load the plugin anyway; a
``PYTHONPATH`` directory holding an ``antidistill`` distribution without entry points hides it
(``importlib.metadata`` takes the first distribution of a name on the path), which is the engine of a venv without
antidistill.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from antidistill.store.api import is_pending_record
from antidistill.store.sql import Store

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
FQCN = "antidistill.engines.vllm:AntidistillLogitsProcessor"
MASTER_HEX = "5e" * 32
ADMIN = "admin-" + "3c9e1f7a5b2d4c6e8a0f1b3d5e7a9c2f"
START_TIMEOUT = float(os.environ.get("ANTIDISTILL_TEST_VLLM_START_TIMEOUT", "600"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Engine:
    """A vLLM OpenAI server started by the tests."""

    base: str
    log_path: Path
    proc: subprocess.Popen[bytes]
    started_at: float

    def wait_ready(self) -> float:
        """Wait until it serves (fail the test if it exits or takes too long); the seconds since its start."""
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/v1/models", timeout=2):
                    return time.monotonic() - self.started_at
            except OSError:
                if time.monotonic() - self.started_at > START_TIMEOUT:
                    pytest.fail(f"vLLM did not start in {START_TIMEOUT} s:\n{self.log_path.read_text()[-4000:]}")
                time.sleep(1)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_engine(
    model_dir: Path, tmp: Path, *, plugin: bool = True, eager: bool = False, extra_args: Sequence[str] = ()
) -> Engine:
    """Start (not wait for) an engine on ``model_dir``: with the plugin named in ``--logits-processors`` and the
    master key in its environment, or without the plugin at all. ``eager``: skip torch.compile (starts in ~40 s
    instead of ~120 s, decodes several times slower: for a few requests only). ``extra_args``: more arguments of the
    server (e.g. ``--watermark-config`` for vLLM's native watermark)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTIDISTILL_", "VLLM_"))}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind")
    if plugin:
        env.update(ANTIDISTILL_MASTER_KEY=MASTER_HEX, ANTIDISTILL_ENV="test", ANTIDISTILL_DATA_DIR=str(tmp / "data"))
    else:
        hide = tmp / "no-plugin" / "antidistill-0.0.0.dist-info"
        hide.mkdir(parents=True, exist_ok=True)
        (hide / "METADATA").write_text("Metadata-Version: 2.1\nName: antidistill\nVersion: 0.0.0\n")
        env["PYTHONPATH"] = os.pathsep.join([str(hide.parent), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", "smollm2", "--dtype", "float32", "--max-model-len", "2048",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    if plugin:
        cmd += ["--logits-processors", FQCN]
    if eager:
        cmd.append("--enforce-eager")
    cmd += list(extra_args)
    log_path = tmp / "engine.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Engine(f"http://127.0.0.1:{port}", log_path, proc, time.monotonic())


@dataclass
class Gateway:
    """``antidistill serve --backend vllm`` as a process."""

    url: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    def account(self, name: str) -> tuple[str, str]:
        r = httpx.post(self.url + "/admin/accounts", json={"name": name}, headers={"Authorization": f"Bearer {ADMIN}"})
        r.raise_for_status()
        return r.json()["account"]["id"], r.json()["api_key"]

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else float("nan")

    def records(self) -> list[dict]:
        store = Store.open(f"sqlite:///{self.data_dir / 'antidistill.db'}", migrate_schema=False)
        try:
            return [r for r in store.iter_audit() if not is_pending_record(r)]
        finally:
            store.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_gateway(engine: Engine, tmp: Path, cache_dir: Path, **env: str) -> Gateway:
    """The exact command line: ``antidistill serve --backend vllm --upstream-url http://HOST:PORT/v1``."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    script = Path(sys.executable).with_name("antidistill")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "antidistill"]
    cmd += ["serve", "--backend", "vllm", "--upstream-url", engine.base + "/v1", "--port", str(port)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ANTIDISTILL_")}
    environ.update(
        ANTIDISTILL_ENV="test",
        ANTIDISTILL_DATA_DIR=str(tmp / "data"),
        ANTIDISTILL_CACHE_DIR=str(cache_dir),  # the session's: the tokenizer of the sample check is cached there
        ANTIDISTILL_MASTER_KEY=MASTER_HEX,
        ANTIDISTILL_ADMIN_TOKEN=ADMIN,
        ANTIDISTILL_VERIFY_EVERY="1",
        **env,
    )
    log_path = tmp / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=environ, stdout=log, stderr=subprocess.STDOUT)
    gw = Gateway(f"http://127.0.0.1:{port}", tmp / "data", log_path, proc)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the gateway exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(gw.url + "/health", timeout=1).status_code == 200:
                return gw
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            gw.stop()
            pytest.fail(f"the gateway did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="package")
def exported_model(tmp_path_factory, model_cache_dir) -> Path:
    """The embedded model as a transformers directory (what ``antidistill model export DIR`` writes)."""
    from antidistill.models.embedded import export_model, resolve_model

    return export_model(tmp_path_factory.mktemp("vllm-model") / "model", resolve_model(), model_cache_dir)


@pytest.fixture(scope="package")
def vllm_engine(exported_model, tmp_path_factory) -> Iterator[Engine]:
    """One engine with the plugin for the whole package."""
    engine = start_engine(exported_model, tmp_path_factory.mktemp("vllm"))
    try:
        print(f"vLLM started in {engine.wait_ready():.0f} s", file=sys.stderr)
        yield engine
    finally:
        engine.stop()
