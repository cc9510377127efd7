"""Images: deterministic builds, digest verification, path safety, btrfs and overlay roots."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile

import pytest

from raftctl import oci
from raftctl.agent import rootfs
from raftctl.agent.images import ImageStore
from raftctl.agent.testimage import make_busybox_dir
from raftctl.oci import ImageError
from tests.agent.conftest import job_spec


def tree_digest(root: str) -> str:
    """Hash of every path, type, mode, owner, mtime, link target and content under ``root``."""
    h = hashlib.sha256()
    for rel, path in oci.walk_sorted(root):
        st = os.lstat(path)
        h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0{int(st.st_mtime)}\0".encode())
        if os.path.islink(path):
            h.update(os.readlink(path).encode())
        elif os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    (d / "app" / "sub").mkdir(parents=True)
    (d / "app" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(d / "app" / "run.sh", 0o755)
    (d / "app" / "sub" / "data.txt").write_text("data\n")
    os.symlink("run.sh", d / "app" / "link")
    os.symlink("/app/run.sh", d / "app" / "abslink")
    return str(d)


def test_same_source_same_digest_same_bytes_same_root(tmp_path, src):
    a, b = ImageStore(str(tmp_path / "m1")), ImageStore(str(tmp_path / "m2"))
    da = a.build(src, "web:1")
    os.utime(os.path.join(src, "app", "run.sh"), (12345, 12345))      # mtimes never reach the layer
    db = b.build(src, "web:1")
    assert da == db and a.resolve("web:1") == da
    assert sorted(os.listdir(a.blobs)) == sorted(os.listdir(b.blobs))
    for name in os.listdir(a.blobs):
        assert open(os.path.join(a.blobs, name), "rb").read() == open(os.path.join(b.blobs, name), "rb").read()
    ra, rb = a.unpack(da), b.unpack(db)
    assert tree_digest(ra) == tree_digest(rb)
    assert a.unpack(da) == ra                                          # once per digest
    assert open(os.path.join(ra, "app", "sub", "data.txt")).read() == "data\n"
    assert os.readlink(os.path.join(ra, "app", "abslink")) == "/app/run.sh"
    assert os.stat(os.path.join(ra, "app", "run.sh")).st_mode & 0o777 == 0o755


def test_export_import_round_trip_and_archive(tmp_path, src):
    a = ImageStore(str(tmp_path / "a"))
    d = a.build(src, "web:1")
    a.export_layout(d, str(tmp_path / "layout"), name="web:1")
    archive = str(tmp_path / "web.tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(str(tmp_path / "layout"), arcname=".")
    b = ImageStore(str(tmp_path / "b"))
    assert b.import_archive(archive) == [d]
    assert b.resolve("web:1") == d
    assert tree_digest(b.unpack(d)) == tree_digest(a.unpack(d))
    c = ImageStore(str(tmp_path / "c"))
    assert c.import_layout(str(tmp_path / "layout")) == [d]


def test_tampered_blob_is_refused(tmp_path, src):
    a = ImageStore(str(tmp_path / "a"))
    d = a.build(src, "web:1")
    layout = tmp_path / "layout"
    a.export_layout(d, str(layout), name="web:1")
    layer = a.manifest(d)["layers"][0]["digest"]
    blob = layout / "blobs" / "sha256" / layer.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[600] ^= 1
    blob.write_bytes(bytes(data))
    b = ImageStore(str(tmp_path / "b"))
    with pytest.raises(ImageError, match="hashes to"):
        b.import_layout(str(layout))
    assert not b.refs()
    # tampering inside a store after import is caught when unpacking
    stored = a.blob_path(layer)
    os.chmod(stored, 0o644)
    with open(stored, "r+b") as f:
        f.seek(600)
        byte = f.read(1)
        f.seek(600)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ImageError, match="tampered"):
        a.unpack(d)
    assert not os.path.exists(a.unpacked_path(d))
    with pytest.raises(ImageError):
        a.resolve("sha256:../../etc")


def layer_store(tmp_path, entries) -> tuple[ImageStore, str]:
    """An image whose single layer holds hand-made tar ``entries`` [(TarInfo, bytes|None)]."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    store = ImageStore(str(tmp_path / "evil"))
    ldig, lsize = store.put_bytes(buf.getvalue())
    cdig, csize = store.put_bytes(oci.canonical_json(oci.image_config(ldig, "scratch")))
    man = oci.manifest(oci.descriptor(oci.MT_CONFIG, cdig, csize), [oci.descriptor(oci.MT_LAYER, ldig, lsize)], "scratch")
    mdig, _ = store.put_bytes(oci.canonical_json(man))
    return store, mdig


def ti(name, type=tarfile.REGTYPE, linkname="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = type, linkname, mode
    return info


@pytest.mark.parametrize("entries, why", [
    ([(ti("../escape"), b"x")], "'..'"),
    ([(ti("a/../../escape"), b"x")], "'..'"),
    ([(ti("/etc/evil"), b"x")], "absolute"),
    ([(ti("lnk", tarfile.SYMTYPE, "/tmp"), None), (ti("lnk/evil"), b"x")], "symlink"),
    ([(ti("up", tarfile.SYMTYPE, "../../.."), None)], "outside"),
    ([(ti("hard", tarfile.LNKTYPE, "../../etc/passwd"), None)], "'..'"),
    ([(ti("dev/sda", tarfile.BLKTYPE), None)], "device"),
    ([(ti("dev/null", tarfile.CHRTYPE), None)], "device"),
])
def test_path_escapes_are_refused(tmp_path, entries, why):
    store, digest = layer_store(tmp_path, entries)
    with pytest.raises(ImageError, match=why):
        store.unpack(digest)
    assert not os.path.exists(store.unpacked_path(digest))
    assert not os.path.exists(str(tmp_path / "escape"))


def test_whiteouts_apply(tmp_path):
    store, digest = layer_store(tmp_path, [(ti("d", tarfile.DIRTYPE, mode=0o755), None), (ti("d/a"), b"a"),
                                           (ti("d/b"), b"b"), (ti("d/.wh.a"), b"")])
    root = store.unpack(digest)
    assert sorted(os.listdir(os.path.join(root, "d"))) == ["b"]


@pytest.mark.parametrize("name", [".wh..", ".wh...", ".wh.", "d/.wh..", "d/.wh...", ".wh..wh.x"])
def test_a_whiteout_that_is_not_a_plain_name_is_refused_and_the_store_survives(tmp_path, src, name):
    """Item 8 of issue 12: ``.wh..`` removed the directory being unpacked and ``.wh...`` every unpacked image
    on the machine (the lower dirs of running containers included)."""
    store = ImageStore(str(tmp_path / "evil"))
    neighbour = store.unpack(store.build(src, "web:1"))
    before = tree_digest(neighbour)
    evil_store, digest = layer_store(tmp_path, [(ti("d", tarfile.DIRTYPE, mode=0o755), None), (ti("d/a"), b"a"),
                                                (ti(name), b"")])
    assert evil_store.root == store.root
    with pytest.raises(ImageError, match="whiteout"):
        store.unpack(digest)
    assert os.path.isdir(neighbour) and tree_digest(neighbour) == before
    assert not os.path.exists(store.unpacked_path(digest))
    assert os.path.isdir(store.unpacked)


@pytest.mark.parametrize("entries, why", [
    ([(ti("f"), b"x"), (ti("h", tarfile.LNKTYPE, "/etc/passwd"), None)], "absolute"),
    ([(ti("h", tarfile.LNKTYPE, "."), None)], "image root"),
    ([(ti("h", tarfile.LNKTYPE, "missing"), None)], "does not hold"),
    ([(ti("l", tarfile.SYMTYPE, "/etc/passwd"), None), (ti("h", tarfile.LNKTYPE, "l"), None)], "not a regular"),
    ([(ti("d", tarfile.SYMTYPE, ".."), None), (ti("h", tarfile.LNKTYPE, "d/x"), None)], "outside|symlink"),
])
def test_hard_links_and_odd_names_stay_inside_the_root(tmp_path, entries, why):
    store, digest = layer_store(tmp_path, entries)
    with pytest.raises(ImageError, match=why):
        store.unpack(digest)
    assert not os.path.exists(store.unpacked_path(digest))


def test_plain_whiteouts_and_the_opaque_marker_still_apply(tmp_path):
    store, digest = layer_store(tmp_path, [(ti("d", tarfile.DIRTYPE, mode=0o755), None), (ti("d/a"), b"a"),
                                           (ti("d/..a"), b"x"), (ti("d/.wh...a"), b""),
                                           (ti("e", tarfile.DIRTYPE, mode=0o755), None), (ti("e/x"), b"x"),
                                           (ti("e/.wh..wh..opq"), b""), (ti("e/y"), b"y")])
    root = store.unpack(digest)
    assert sorted(os.listdir(os.path.join(root, "d"))) == ["a"]
    assert sorted(os.listdir(os.path.join(root, "e"))) == ["y"]


# -- pulling from the control replicas -----------------------------------------------------------
class BlobServer:
    """A loopback HTTP server answering GET /v1/images/blobs/<digest> from a dict, optionally
    flipping one byte of every blob (a tampering replica). Records the requests it saw."""

    def __init__(self, blobs: dict[str, bytes], tamper: bool = False) -> None:
        import http.server
        import threading

        outer = self
        self.seen: list[tuple[str, str | None]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append((self.path, self.headers.get("Authorization")))
                digest = self.path.rsplit("/", 1)[-1]
                data = blobs.get(digest)
                if data is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                if tamper:
                    data = bytes([data[0] ^ 1]) + data[1:]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    """Start BlobServers on loopback for a test; all are closed when it ends."""
    servers: list[BlobServer] = []

    def start(blobs: dict[str, bytes], tamper: bool = False) -> BlobServer:
        servers.append(BlobServer(blobs, tamper))
        return servers[-1]
    yield start
    for srv in servers:
        srv.close()


@pytest.fixture
def published(tmp_path, src):
    """An image built on a 'workstation' store; its blobs keyed by digest, as the replicas hold them."""
    ws = ImageStore(str(tmp_path / "workstation"))
    digest = ws.build(src, "web:1")
    m = ws.manifest(digest)
    names = [digest, m["config"]["digest"], *(x["digest"] for x in m["layers"])]
    return ws, digest, {d: open(ws.blob_path(d), "rb").read() for d in names}


def test_pull_fetches_what_is_missing_verifies_it_and_unpacks_the_same_tree(tmp_path, published, serve):
    from raftctl.agent.control import BlobFetcher

    ws, digest, blobs = published
    good = serve(blobs)
    agent = ImageStore(str(tmp_path / "agent"))
    fetcher = BlobFetcher([good.url], "agent-token")
    assert agent.pull(digest, fetcher) == sum(len(b) for b in blobs.values())
    assert {p for p, _ in good.seen} == {f"/v1/images/blobs/{d}" for d in blobs}
    assert {a for _, a in good.seen} == {"Bearer agent-token"}
    assert agent.pull(digest, fetcher) == 0                         # everything is here: nothing fetched
    assert len(good.seen) == len(blobs)
    assert tree_digest(agent.unpack(digest)) == tree_digest(ws.unpack(digest))


def test_replicas_starting_together_share_one_pull(tmp_path, published, serve):
    from concurrent.futures import ThreadPoolExecutor

    from raftctl.agent.control import BlobFetcher

    _, digest, blobs = published
    srv = serve(blobs)
    agent = ImageStore(str(tmp_path / "agent"))
    with ThreadPoolExecutor(4) as pool:
        fetched = list(pool.map(lambda _: agent.pull(digest, BlobFetcher([srv.url], "t")), range(4)))
    assert sorted(fetched) == [0, 0, 0, sum(len(b) for b in blobs.values())]
    assert len(srv.seen) == len(blobs)                               # every blob fetched once


def test_pull_refuses_a_tampered_copy_and_takes_the_next_replica(tmp_path, published, serve):
    from raftctl.agent.control import BlobFetcher

    _, digest, blobs = published
    evil, good = serve(blobs, tamper=True), serve(blobs)
    agent = ImageStore(str(tmp_path / "agent"))
    agent.pull(digest, BlobFetcher([evil.url, good.url], "t"))
    assert len(evil.seen) >= 1 and len(good.seen) >= 1
    for d, data in blobs.items():
        assert open(agent.blob_path(d), "rb").read() == data

    only_evil = ImageStore(str(tmp_path / "agent2"))
    with pytest.raises(ImageError, match="could not pull blob .*hashes to"):
        only_evil.pull(digest, BlobFetcher([evil.url], "t"))
    assert os.listdir(only_evil.blobs) == []                        # nothing tampered was stored


def test_pull_of_an_image_no_replica_has_says_so(tmp_path, published, serve):
    from raftctl.agent.control import BlobFetcher

    _, digest, _ = published
    empty = serve({})
    with pytest.raises(ImageError, match=f"could not pull blob {digest}: .*HTTP 404"):
        ImageStore(str(tmp_path / "agent")).pull(digest, BlobFetcher([empty.url, "http://127.0.0.1:9"], "t"))


def test_a_tampered_local_layer_is_dropped_so_the_next_pull_replaces_it(tmp_path, published, serve):
    from raftctl.agent.control import BlobFetcher

    _, digest, blobs = published
    fetcher = BlobFetcher([serve(blobs).url], "t")
    agent = ImageStore(str(tmp_path / "agent"))
    agent.pull(digest, fetcher)
    layer = agent.manifest(digest)["layers"][0]["digest"]
    path = agent.blob_path(layer)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"X")
    with pytest.raises(ImageError, match="tampered"):
        agent.unpack(digest)
    assert not agent.has_blob(layer)
    assert agent.pull(digest, fetcher) == len(blobs[layer])
    assert os.path.isdir(agent.unpack(digest))


# -- container roots (root) --------------------------------------------------------------------
@pytest.fixture
def btrfs_dir(root_runc, tmp_path):
    """A btrfs filesystem on a loop file, made and removed by the test."""
    img = tmp_path / "btrfs.img"
    with open(img, "wb") as f:
        f.truncate(256 << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(img)], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.root
def test_btrfs_store_gives_snapshot_roots(btrfs_dir, tmp_path, make_spec):
    from raftctl.agent.runtime.runc import RuncDriver
    store = ImageStore(os.path.join(btrfs_dir, "images"))
    digest = store.build(make_busybox_dir(str(tmp_path / "bb")), "bb:1")
    image_root = store.unpack(digest)
    assert rootfs.is_subvolume(image_root)
    drv = RuncDriver(btrfs_dir, store)
    spec = make_spec(["sleep", "300"], rootfs=image_root, user="0", read_only_root=False)
    drv.create(spec)
    try:
        assert open(os.path.join(drv.bundle(spec.id), rootfs.KIND_FILE)).read() == "btrfs"
        drv.start(spec.id)
        assert drv.exec(spec.id, ["sh", "-c", "echo snap > /new && cat /new"]) == (0, "snap\n")
        assert os.path.exists(os.path.join(drv.bundle(spec.id), "rootfs", "new"))
        assert not os.path.exists(os.path.join(image_root, "new"))
    finally:
        drv.remove(spec.id)
        drv.close()
    assert not os.path.exists(drv.bundle(spec.id))
    store.remove_unpacked(digest)


@pytest.mark.root
def test_overlay_root_on_a_non_btrfs_store(runc_driver, make_spec, busybox_store):
    store, digest = busybox_store
    assert not rootfs.is_btrfs(store.root)
    spec = make_spec(["sleep", "300"], user="0", read_only_root=False)
    runc_driver.create(spec)
    try:
        b = runc_driver.bundle(spec.id)
        assert open(os.path.join(b, rootfs.KIND_FILE)).read() == "overlay"
        assert rootfs.fs_type(os.path.join(b, "rootfs")) == "overlay"
        runc_driver.start(spec.id)
        assert runc_driver.exec(spec.id, ["sh", "-c", "echo up > /new"])[0] == 0
        assert open(os.path.join(b, "upper", "new")).read() == "up\n"
        assert not os.path.exists(os.path.join(store.unpack(digest), "new"))
    finally:
        runc_driver.remove(spec.id)
    assert not any(spec.id in line for line in open("/proc/self/mountinfo"))


# -- garbage collection ------------------------------------------------------------------------
class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def files(store: ImageStore) -> set[str]:
    return {"sha256:" + n for n in os.listdir(store.blobs) if not n.startswith(".")}


def image_blobs(store: ImageStore, digest: str) -> set[str]:
    m = store.manifest(digest)
    return {digest, m["config"]["digest"], *(x["digest"] for x in m["layers"])}


def test_gc_removes_an_image_unused_past_the_grace_period_with_its_blobs(tmp_path, src):
    clock = Clock()
    store = ImageStore(str(tmp_path / "agent"), clock=clock)
    digest = store.build(src)                 # untagged, as an agent's pulled images are
    parts = image_blobs(store, digest)
    root = store.unpack(digest)
    assert store.gc(set(), clock.t + 599, 600) == [] and os.path.isdir(root)
    assert store.gc(set(), clock.t + 601, 600) == [digest]
    assert not os.path.exists(root) and files(store) & parts == set() and store.last_used() == {}
    assert store.gc(set(), clock.t + 602, 600) == []


def test_gc_keeps_what_is_in_use_and_restarts_its_grace_period(tmp_path, src):
    clock = Clock()
    store = ImageStore(str(tmp_path / "agent"), clock=clock)
    digest = store.build(src)
    root = store.unpack(digest)
    assert store.gc({digest}, clock.t + 3600, 600) == [] and os.path.isdir(root)
    assert store.last_used()[digest] == clock.t + 3600
    assert store.gc(set(), clock.t + 3600 + 599, 600) == []        # stopped being used just now
    assert store.gc(set(), clock.t + 3600 + 601, 600) == [digest]


def test_gc_keeps_a_layer_another_image_still_needs(tmp_path, src):
    clock = Clock()
    store = ImageStore(str(tmp_path / "agent"), clock=clock)
    old = store.build(src, base="scratch")
    new = store.build(src, base="host")         # the same layer, another config and manifest
    shared = image_blobs(store, old) & image_blobs(store, new)
    assert len(shared) == 1
    store.unpack(old)
    clock.t += 1000
    store.unpack(new)
    assert store.gc(set(), clock.t + 1, 600) == [old]
    assert files(store) == image_blobs(store, new)
    assert os.path.isdir(store.unpacked_path(new)) and not os.path.exists(store.unpacked_path(old))


def test_gc_keeps_images_tagged_in_the_store_and_is_off_with_grace_zero(tmp_path, src):
    clock = Clock()
    store = ImageStore(str(tmp_path / "agent"), clock=clock)
    tagged = store.build(src, "web:1")
    store.unpack(tagged)
    untagged = store.build(src, base="host")
    store.unpack(untagged)
    assert store.gc(set(), clock.t + 10**6, 0) == []
    assert store.gc(set(), clock.t + 10**6, 600) == [untagged]
    assert os.path.isdir(store.unpacked_path(tagged)) and image_blobs(store, tagged) <= files(store)


def test_gc_adopts_trees_unpacked_before_it_existed(tmp_path, src):
    clock = Clock()
    store = ImageStore(str(tmp_path / "agent"), clock=clock)
    digest = store.build(src)
    store.unpack(digest)
    os.unlink(os.path.join(store.used, digest.split(":")[1]))        # an older agent left no record
    assert store.gc(set(), clock.t + 10**6, 600) == []                # its grace starts now
    assert store.gc(set(), clock.t + 10**6 + 601, 600) == [digest]


def test_gc_never_removes_an_image_while_it_is_being_pulled(tmp_path, published, serve):
    """A pull holds the image's lock: GC skips it (and the blobs it is fetching) until the pull is done."""
    import threading

    from raftctl.agent.control import BlobFetcher

    _, digest, blobs = published
    srv = serve(blobs)
    clock = Clock()
    store = ImageStore(str(tmp_path / "agent"), clock=clock)
    store.touch(digest, clock.t - 10**6)          # pulled long ago, then lost its tree and blobs
    started, release = threading.Event(), threading.Event()

    class SlowSource:
        def fetch(self, d, consume):
            started.set()
            release.wait(30)
            return BlobFetcher([srv.url], "t").fetch(d, consume)

    t = threading.Thread(target=lambda: store.pull(digest, SlowSource()))
    t.start()
    assert started.wait(30)
    try:
        assert store.gc(set(), clock.t + 10**6, 600) == []    # pull lock held: skipped
    finally:
        release.set()
        t.join(30)
    assert image_blobs(store, digest) <= files(store)
    assert store.gc(set(), clock.t + 601, 600) == [digest]   # the pull counted as a use: grace from then


def test_unpack_after_the_list_was_made_keeps_the_image(tmp_path, src):
    """A container starting between GC's in-use snapshot and the removal: unpack records the use under the
    image's lock, and GC re-checks under that lock."""
    clock = Clock()
    store = ImageStore(str(tmp_path / "agent"), clock=clock)
    digest = store.build(src)
    store.unpack(digest)
    clock.t += 10**6
    store.unpack(digest)                              # a new container (recorded at clock.t)
    assert store.gc(set(), clock.t + 1, 600) == []
    assert os.path.isdir(store.unpacked_path(digest))


def test_agent_gc_keeps_images_its_containers_or_assignments_use(tmp_path, src):
    """The agent's image GC (agent/imagegc.py) through the driver: in use = containers it supervises + its last
    assignment answer; an adopted container whose placement has not arrived yet makes GC wait; its wall time is
    the agent clock's (the store stamps uses with the same clock here)."""
    import asyncio

    from raftctl.agent.imagegc import ImageGC
    from raftctl.agent.runtime.process import ProcessDriver
    from raftctl.agent.supervisor import Supervised
    from raftctl.clock import FakeClock

    clock = FakeClock()
    store = ImageStore(str(tmp_path / "images"), clock=lambda: clock.now_ms() / 1000)
    running, assigned, stale = store.build(src), store.build(src, base="host"), None
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_text("x")
    stale = store.build(str(other))
    for d in (running, assigned, stale):
        store.unpack(d)
    containers = {"p1": Supervised(placement={"id": "p1", "job": "web", "spec": job_spec(image_digest=running)})}
    gc = ImageGC(ProcessDriver(str(tmp_path / "proc"), store), containers, 600, clock)
    gc.note_assignment([{"id": "p2", "spec": job_spec(image="web:2", image_digest=assigned)},
                        {"id": "p3", "spec": None}])
    assert gc.assigned == {assigned}
    clock.advance(601)

    containers["p0"] = Supervised(placement={"id": "p0"})      # adopted, placement not known yet
    assert asyncio.run(gc.collect()) == []
    del containers["p0"]
    assert asyncio.run(gc.collect(clock.now_ms() / 1000 - 2)) == []   # 599 s: within the grace
    assert asyncio.run(gc.collect()) == [stale]                       # the clock's wall time: 601 s
    assert {d for d in (running, assigned, stale) if os.path.isdir(store.unpacked_path(d))} == {running, assigned}
    gc.after_s = 0
    gc.assigned = set()
    assert asyncio.run(gc.collect(clock.now_ms() / 500)) == []


@pytest.mark.root
def test_gc_deletes_a_btrfs_image_subvolume(btrfs_dir, tmp_path, src):
    clock = Clock()
    store = ImageStore(os.path.join(btrfs_dir, "images"), clock=clock)
    digest = store.build(src)
    root = store.unpack(digest)
    assert rootfs.is_subvolume(root)
    assert store.gc(set(), clock.t + 601, 600) == [digest]
    assert not os.path.exists(root)
    out = subprocess.run(["btrfs", "subvolume", "list", btrfs_dir], capture_output=True, text=True, check=True)
    assert digest.split(":")[1] not in out.stdout
