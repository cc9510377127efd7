"""raftctl image build|import|list: content-addressed images, pushed to the control plane.

An image is built or imported into a throw-away local store (raftctl/agent/images.py),
its blobs are pushed to the control replicas (layers and config first, the manifest
last; blobs the replica already holds are skipped), then the name is tagged through
the log. Jobs that name the image store its digest when they are submitted.
"""
from __future__ import annotations

import os
import tarfile
import tempfile
import urllib.parse
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from raftctl.cli.base import client
from raftctl.cli.output import emit
from raftctl.client import Client
from raftctl.errors import ValidationError
from raftctl.statemachine.records import IMAGE_NAME_RE



def check_name(name: str, field: str = "--name") -> str:
    if not IMAGE_NAME_RE.match(name):  # the state machine's PutImage rule (name:tag)
        raise ValidationError(f"{name!r} is not an image name like web:1 (lower-case name, a colon, a tag)",
                              field=field)
    return name


def push(c: Client, store: Any, digest: str) -> dict[str, Any]:
    """Push every blob of image ``digest`` the control plane lacks; the manifest goes last, so a
    replica never holds a manifest whose parts are missing."""
    m = store.manifest(digest)
    pushed: list[str] = []
    present: list[str] = []
    for d in dict.fromkeys([m["config"]["digest"], *(x["digest"] for x in m["layers"]), digest]):
        if c.has_blob(d):
            present.append(d)
        else:
            c.push_blob(d, store.blob_path(d))
            pushed.append(d)
    return {"pushed": pushed, "present": present}


def push_and_tag(c: Client, store: Any, name: str, digest: str) -> dict[str, Any]:
    sent = push(c, store, digest)
    size = store.image_size(digest)
    res = c.request("PUT", f"/v1/images/{urllib.parse.quote(name, safe=':')}", {"digest": digest, "size": size})
    return {"name": name, "digest": digest, "size": size, "index": res.get("index"), **sent}


@contextmanager
def loaded(path: str, field: str, load: Callable[[Any], object], what: str = "") -> Iterator[Any]:
    """A throw-away local image store holding what ``load(store)`` put there; input it cannot use
    becomes a ValidationError naming ``field``."""
    from raftctl.agent.images import ImageStore
    from raftctl.oci import ImageError

    with tempfile.TemporaryDirectory(prefix="raftctl-image-") as tmp:
        store = ImageStore(tmp)
        try:
            load(store)
        except (ImageError, tarfile.TarError, ValueError, KeyError, OSError) as exc:
            raise ValidationError(f"{path}: {what}{exc}", field=field) from None
        yield store


def _summary(r: dict[str, Any]) -> str:
    return (f"{r['name']}  {r['digest']}  {human_size(r['size'])}  "
            f"({len(r['pushed'])} blobs pushed, {len(r['present'])} already on the control plane)")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def register(cli: click.Group) -> None:
    @cli.group()
    def image() -> None:
        """Build, import and list images (content-addressed; jobs run them by digest)."""

    @image.command("build")
    @click.argument("directory", metavar="DIR")
    @click.option("--name", required=True, help="name:tag to give the image, e.g. web:1.")
    @click.option("--base", type=click.Choice(["host", "scratch"]), default="scratch", show_default=True,
                  help="host: jobs get the host's /usr, /lib, /bin, /etc read-only under the image; "
                       "scratch: the image is the whole root.")
    @click.pass_context
    def build(ctx: click.Context, directory: str, name: str, base: str) -> None:
        """Build a one-layer image of DIR (the same DIR always gives the same digest) and push it."""
        check_name(name)
        if not os.path.isdir(directory):
            raise ValidationError(f"{directory}: no such directory", field="DIR")
        with loaded(directory, "DIR", lambda store: store.build(directory, name, base=base)) as store:
            res = push_and_tag(client(ctx), store, name, store.refs()[name])
        emit(ctx, res, text=_summary(res))

    @image.command("import")
    @click.argument("file", metavar="FILE")
    @click.option("--name", default=None,
                  help="name:tag to give the image (default: the archive's org.opencontainers.image.ref.name).")
    @click.pass_context
    def import_(ctx: click.Context, file: str, name: str | None) -> None:
        """Import an OCI image-layout archive (tar, optionally gzip), verify every blob, push and tag it."""
        if name is not None:
            check_name(name)
        if not os.path.isfile(file):
            raise ValidationError(f"{file}: no such file", field="FILE")
        with loaded(file, "FILE", lambda store: store.import_archive(file, name),
                    "not a valid OCI image layout archive: ") as store:
            refs = store.refs()
            if not refs:
                raise ValidationError(f"{file}: its index.json names no image "
                                      "(org.opencontainers.image.ref.name); pass --name", field="--name")
            for ref in refs:
                check_name(ref, field="FILE")
            c = client(ctx)
            results = [push_and_tag(c, store, ref, digest) for ref, digest in sorted(refs.items())]
        emit(ctx, {"images": results}, text="\n".join(_summary(r) for r in results))

    @image.command("list")
    @click.pass_context
    def list_(ctx: click.Context) -> None:
        """Images the control plane knows: name, manifest digest, size."""
        data = client(ctx).request("GET", "/v1/images")
        rows = [(i["name"], i["digest"][:19], human_size(i["size"]), i["modify_index"]) for i in data["images"]]
        emit(ctx, data, rows, ["name", "digest", "size", "index"])
