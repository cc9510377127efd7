"""Image GC's wiring (agent/imagegc.py): the in-use set, the period, and the collection through the driver,
on a fake clock and a recording driver (the store's own GC is test_images.py's)."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raftctl.agent.imagegc import ImageGC, assigned_images, gc_period, image_digest, images_in_use
from raftctl.agent.runtime.base import Driver
from raftctl.agent.supervisor import Supervised
from tests.agent.conftest import CountedClock, job_spec

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


class Collecting:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[set[str], float, float]] = []
        self.fail = fail

    def collect_images(self, in_use: set[str], grace_s: float, now: float) -> list[str]:
        self.calls.append((set(in_use), grace_s, now))
        if self.fail:
            self.fail -= 1
            raise OSError("EIO")
        return [D3]


def sup(digest: str | None = None, spec: bool = True, image: str = "web:1") -> Supervised:
    p: dict[str, Any] = {"id": "p", "job": "web"}
    if spec:
        p["spec"] = job_spec(image=image, image_digest=digest)
    return Supervised(placement=p)


def test_the_digest_is_the_resolved_one_or_an_image_named_by_digest():
    assert image_digest({"spec": job_spec(image="web:1", image_digest=D1)}) == D1
    assert image_digest({"spec": job_spec(image=D2)}) == D2
    assert image_digest({"spec": job_spec(image="web:1", image_digest=None)}) is None
    assert image_digest({"spec": job_spec(image="web:1")}) is None


def test_in_use_is_the_assignment_and_the_containers_and_unknown_while_an_image_is():
    assert assigned_images([{"spec": job_spec(image="a", image_digest=D1)}, {"spec": None},
                            {"spec": job_spec(image="b", image_digest=None)}]) == {D1}
    assert images_in_use({D1}, [sup(D2), sup(None)]) == {D1, D2}
    assert images_in_use({D1}, [sup(D2), sup(spec=False)]) is None     # adopted, placement not arrived yet
    assert images_in_use(set(), []) == set()


@pytest.mark.parametrize("after_s, period", [(600, 60.0), (300, 30.0), (5, 2.0), (0, 2.0), (86400, 60.0)])
def test_gc_runs_every_tenth_of_its_grace_between_2_and_60_seconds(after_s, period):
    assert gc_period(after_s) == period


async def test_the_loop_collects_every_period_with_the_in_use_set_and_survives_a_failure():
    clock, driver = CountedClock(stop_after=3), Collecting(fail=1)
    containers = {"p": sup(D2)}
    gc = ImageGC(driver, containers, 300, clock)  # type: ignore[arg-type]
    gc.note_assignment([{"spec": job_spec(image="a", image_digest=D1)}])
    with pytest.raises(asyncio.CancelledError):
        await gc.run()
    assert clock.sleeps == [30.0, 30.0, 30.0]
    # every pass on the clock's wall time; the first failed: logged, the next pass tries again
    assert driver.calls == [({D1, D2}, 300, 1_700_000_000.0 + t) for t in (30, 60, 90)]
    assert await gc.collect(123.0) == [D3] and driver.calls[-1] == ({D1, D2}, 300, 123.0)


async def test_nothing_is_collected_while_gc_is_off_or_an_image_is_unknown():
    driver = Collecting()
    containers = {"p": sup(spec=False)}
    gc = ImageGC(driver, containers, 300, CountedClock(0))  # type: ignore[arg-type]
    assert await gc.collect() == [] and driver.calls == []
    containers["p"] = sup(D2)
    gc.after_s = 0
    assert await gc.collect() == [] and driver.calls == []
    gc.after_s = 1
    assert await gc.collect() == [D3] and len(driver.calls) == 1


def test_a_driver_that_keeps_no_images_collects_nothing_and_runs_without_an_image_root():
    class Bare(Driver):
        prepare_image = create = start = stop = kill = status = stats = exec = list_existing = remove = None  # type: ignore
    d = Bare()
    assert d.collect_images({D1}, 60, 0.0) == [] and d.image_root("web:1", None) == "" and d.image_root("web:1", D1) == ""
    d.use_image_source(object())  # type: ignore[arg-type]   # ignored


def test_the_same_answer_again_is_not_walked_again_and_a_new_one_is():
    gc = ImageGC(Collecting(), {}, 300, CountedClock())  # type: ignore[arg-type]
    answer = [{"spec": job_spec(image="a", image_digest=D1)}]
    gc.note_assignment(answer)
    assert gc.assigned == {D1}
    answer[0] = {"spec": job_spec(image="b", image_digest=D2)}   # never done by the agent: shows the skip
    gc.note_assignment(answer)                                    # the reconcile pass hands the same list over
    assert gc.assigned == {D1}
    gc.note_assignment([{"spec": job_spec(image="b", image_digest=D2)}])   # a new answer
    assert gc.assigned == {D2}
