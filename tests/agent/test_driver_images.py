"""What a driver needs from the agent, said through the driver interface (runtime/base.py Driver): an image
root and an image source (runc), image GC through its store (runc, process), nothing (sim). Before, the agent
asked `driver.name == "runc"` and `getattr(driver, "images")`."""
from __future__ import annotations

import os

import pytest

from raftctl.agent.runtime.base import ImageNotPushed
from raftctl.agent.runtime.process import ProcessDriver
from raftctl.agent.runtime.sim import SimDriver


class Source:
    def fetch(self, digest, consume):  # pragma: no cover - never called here
        raise AssertionError("no pull expected")


def test_runc_runs_in_the_images_root_and_refuses_an_image_never_pushed(runc_driver, busybox_store):
    store, digest = busybox_store
    with pytest.raises(ImageNotPushed, match="image ghost:1 is not pushed"):
        runc_driver.image_root("ghost:1", None)
    root = runc_driver.image_root("busybox:test", digest)
    assert root == store.unpacked_path(digest) and os.path.isdir(root)


def test_runc_takes_the_agents_image_source_unless_it_was_given_one(runc_driver):
    kept = runc_driver.image_source
    try:
        runc_driver.image_source = None
        mine, other = Source(), Source()
        runc_driver.use_image_source(mine)
        runc_driver.use_image_source(other)
        assert runc_driver.image_source is mine
    finally:
        runc_driver.image_source = kept


def test_the_process_and_sim_drivers_run_without_an_image_root(tmp_path):
    for d in (ProcessDriver(str(tmp_path / "p")), SimDriver()):
        assert d.image_root("ghost:1", None) == "" and d.image_root("web:1", "sha256:" + "a" * 64) == ""
        d.use_image_source(Source())
    assert SimDriver().collect_images(set(), 1.0, 0.0) == []
