"""Production properties of the runtime: thread safety, memory, close(), determinism."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_cnn

from explainer import Explainer, ExplainerError, OnnxcamError
from exporters import build_bundle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    bundle = build_bundle(make_tiny_cnn(), "act", target_layer="relu2", labels=list("abcde"))
    return bundle.save(tmp_path_factory.mktemp("bundle") / "tiny")


def _inputs(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.normal(size=(1 + i % 3, 3, 16, 16)).astype(np.float32) for i in range(count)]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_threads_share_one_explainer_bitwise(bundle_dir):
    """8 threads x 200 calls on one Explainer give exactly the sequential results."""
    explainer = Explainer(bundle_dir)
    inputs = _inputs(16)
    targets = ["top2", None, 3, "top1+least"]
    expected = [explainer.explain(x, targets=targets[i % 4]) for i, x in enumerate(inputs)]
    mismatches, errors = [], []
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        order = np.random.default_rng(seed).integers(0, len(inputs), 200)
        start.wait()
        for i in order:
            try:
                got = explainer.explain(inputs[i], targets=targets[i % 4])
            except Exception as err:  # recorded and asserted below
                errors.append(err)
                return
            want = expected[i]
            if not (np.array_equal(got.heatmaps, want.heatmaps)
                    and np.array_equal(got.class_ids, want.class_ids)
                    and np.array_equal(got.logits, want.logits)):
                mismatches.append(int(i))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and not mismatches


def test_memory_is_stable_over_many_calls(bundle_dir):
    explainer = Explainer(bundle_dir)
    inputs = _inputs(8)
    for i in range(100):  # warm-up: arenas, caches, the logits session
        explainer.explain(inputs[i % 8], targets="top2")
    before = _rss_bytes()
    for i in range(1000):
        explainer.explain(inputs[i % 8], targets="top2")
    growth = (_rss_bytes() - before) / before
    assert growth < 0.10, f"resident memory grew by {growth:.1%} over 1000 calls"


def test_close_and_context_manager(bundle_dir):
    x = _inputs(1)[0]
    with Explainer(bundle_dir) as explainer:
        explainer.explain(x, targets="top1")  # builds the logits session too
        assert explainer.runner.features_session is not None and not explainer.closed
    assert explainer.closed and explainer.graph is None and not explainer.runner._pool._sessions
    for call in (lambda: explainer.explain(x), lambda: explainer.runner.run_features(x),
                 lambda: explainer.runner.logits_session, lambda: explainer.runner.features_session,
                 lambda: explainer.runner.head_session):
        with pytest.raises(ExplainerError, match="closed") as info:
            call()
        assert isinstance(info.value, OnnxcamError) and info.value.exit_code == 1
    explainer.close()  # idempotent
    with pytest.raises(ExplainerError, match="closed"):
        with explainer:
            pass


def test_close_releases_memory(bundle_dir):
    """Sessions of a closed Explainer are freed: creating and closing many does not grow."""
    x = _inputs(1)[0]
    for _ in range(5):
        with Explainer(bundle_dir) as explainer:
            explainer.explain(x)
    before = _rss_bytes()
    for _ in range(40):
        with Explainer(bundle_dir) as explainer:
            explainer.explain(x)
    assert (_rss_bytes() - before) / before < 0.10


DIGEST = """
import hashlib, sys
import numpy as np
from explainer import Explainer
x = np.random.default_rng(3).normal(size=(4, 3, 16, 16)).astype(np.float32)
e = Explainer(sys.argv[1]).explain(x, targets="top2+least")
digest = hashlib.sha256()
for array in (e.heatmaps, e.cams, e.logits, e.class_ids):
    digest.update(np.ascontiguousarray(array).tobytes())
print(digest.hexdigest())
"""


def test_same_input_gives_bitwise_identical_maps_across_processes(bundle_dir):
    digests = [
        subprocess.run([sys.executable, "-c", DIGEST, str(bundle_dir)], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout.strip()
        for _ in range(2)
    ]
    x = np.random.default_rng(3).normal(size=(4, 3, 16, 16)).astype(np.float32)
    e = Explainer(bundle_dir).explain(x, targets="top2+least")
    digest = hashlib.sha256()
    for array in (e.heatmaps, e.cams, e.logits, e.class_ids):
        digest.update(np.ascontiguousarray(array).tobytes())
    assert digests[0] == digests[1] == digest.hexdigest()


def _explainer_imports() -> dict[str, set[str]]:
    """Module -> the ``explainer`` modules it imports (relative, absolute, under
    TYPE_CHECKING, inside functions and through ``import_module("...")`` strings)."""
    import ast

    root = Path(__file__).resolve().parents[2] / "explainer"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts if path.name == "__init__.py" else parts[:-1]
        name = ".".join(parts[:-1] if path.name == "__init__.py" else parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = (package[: len(package) - node.level + 1] if node.level else [])
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
                found.add(module)
                found |= {f"{module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                found.add(str(node.args[0].value).lstrip("."))
        graph[name] = found
    return {m: {i for i in found if i in graph and i != m} for m, found in graph.items()}


def test_no_import_cycle_in_the_runtime_core():
    """The runtime, its runner, the methods, the pixel methods, the manifest and the bundle
    import each other one way only; the methods reach none of them (only leaf modules such
    as the errors)."""
    graph = _explainer_imports()
    core = {f"explainer.{m}" for m in ("runtime", "runner", "access", "pixels", "bundle",
                                       "manifest", "task_runs")}
    core |= {m for m in graph if m.startswith("explainer.methods")}
    assert core <= set(graph)

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            for nxt in graph[stack.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                stack.append(nxt)
        return False

    cycles = sorted(m for m in core if reaches(m, m))
    assert not cycles, f"modules on an import cycle: {cycles}"
    runtime = core - {m for m in core if m.startswith("explainer.methods")}
    for module in (m for m in graph if m.startswith("explainer.methods")):
        reached = sorted(m for m in runtime if reaches(module, m))
        assert not reached, f"{module} imports the runtime's {reached}"
