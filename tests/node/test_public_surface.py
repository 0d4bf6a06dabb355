"""Actor authors import ``node.job``; its surface changes only on purpose."""

from __future__ import annotations

import node.job


def test_job_context_public_surface_is_pinned():
    assert sorted(node.job.__all__) == ["Artifacts", "JobCheckpoint", "JobContext", "Preempted", "current_job"]
    public = {name for name in dir(node.job.JobContext) if not name.startswith("_")}
    assert public == {"hand_back", "progress", "request_stop", "should_stop", "wait_for_stop"}
