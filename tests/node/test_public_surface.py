"""Actor authors import ``node.job`` and nothing else from ``node``; its surface changes only on purpose."""

from __future__ import annotations

import ast
from pathlib import Path

import node.job

ROOT = Path(__file__).resolve().parents[2]


def test_job_context_public_surface_is_pinned():
    assert sorted(node.job.__all__) == [
        "Artifacts",
        "Checkpoint",
        "CorruptCheckpoint",
        "Inputs",
        "InvalidInput",
        "JobContext",
        "JobOptions",
        "Preempted",
        "current_job",
    ]
    public = {name for name in dir(node.job.JobContext) if not name.startswith("_")}
    assert public == {"emit", "hand_back", "progress", "should_stop", "wait_for_stop"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.ImportFrom) and item.module and item.level == 0:
            found.add(item.module)
        elif isinstance(item, ast.Import):
            found.update(alias.name for alias in item.names)
    return found


def test_actors_import_only_node_job_and_node_never_imports_cloud_or_actors():
    for path in (ROOT / "actors").glob("*.py"):
        assert {m for m in imports(path) if m.split(".")[0] == "node"} <= {"node.job"}, path
    for path in (ROOT / "node").rglob("*.py"):
        assert not {m for m in imports(path) if m.split(".")[0] in ("cloud", "actors")}, path
