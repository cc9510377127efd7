#!/usr/bin/env python3
"""The cost of making the image tag the durability point (a real 3-replica LocalCluster on loopback).

For a one-layer image of SIZE_MB random bytes (config and manifest pushed to every replica):
  copy:   the layer is on one follower's disk only; the tag (sent to the other follower, forwarded to
          the leader) fetches it to the leader first -> seconds until the tag is committed;
  steady: the same image re-tagged under another name with every blob already on every replica
          (the leader re-hashes its copies and asks its peers with HEAD) -> seconds per tag.
Prints human figures and one JSON line.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raftctl.agent.images import ImageStore  # noqa: E402
from raftctl.devcluster import LocalCluster  # noqa: E402

SIZE_MB = int(os.environ.get("SIZE_MB", "64"))
N = int(os.environ.get("N", "5"))


def put(url: str, data: bytes, token: str, content_type: str = "application/octet-stream") -> None:
    req = urllib.request.Request(url, data=data, method="PUT",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="raftctl-bench-tag-")
    cluster = LocalCluster(os.path.join(tmp, "cluster"), replicas=3)
    try:
        cluster.start(timeout=60)
        token = cluster.token() or ""
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        with open(os.path.join(src, "payload"), "wb") as f:
            f.write(os.urandom(SIZE_MB << 20))
        store = ImageStore(os.path.join(tmp, "store"))
        digest = store.build(src)
        m = store.manifest(digest)
        layer = m["layers"][0]["digest"]
        for d in (m["config"]["digest"], digest):
            with open(store.blob_path(d), "rb") as f:
                put(f"{cluster.urls[0]}/v1/images/blobs/{d}", f.read(), token)
        leader = cluster.leader()
        assert leader is not None
        holder, other = [p for p in cluster.servers if p is not leader]
        dest = os.path.join(holder.data_dir, "blobs", "sha256", layer.split(":")[1])
        shutil.copyfile(store.blob_path(layer), dest)
        body = json.dumps({"digest": digest, "size": store.image_size(digest)}).encode()
        t0 = time.perf_counter()
        put(f"{other.url}/v1/images/bench:copy", body, token, "application/json")
        copy_s = time.perf_counter() - t0
        steady = []
        for i in range(N):
            t0 = time.perf_counter()
            put(f"{other.url}/v1/images/bench:{i}", body, token, "application/json")
            steady.append(time.perf_counter() - t0)
        print(f"layer {SIZE_MB} MiB on one follower: tag committed after {copy_s:.2f} s (leader fetched it)")
        print(f"every blob on every replica: tag median {statistics.median(steady):.3f} s, "
              f"max {max(steady):.3f} s over {N}")
        print(json.dumps({"bench": "image_tag", "size_mb": SIZE_MB, "copy_s": round(copy_s, 3),
                          "steady_median_s": round(statistics.median(steady), 4),
                          "steady_max_s": round(max(steady), 4), "n": N}))
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
