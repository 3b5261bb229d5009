"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1 for tests and the hub benchmark.

It implements the subset of endpoints huggingface_hub's client calls for create_repo, create_commit /
upload_folder (preupload, LFS batch + basic PUT, commit), model_info, list_repo_tree, list_models (tag filter,
cardData), validate-yaml and file downloads (HEAD + GET with Range). Blobs live on disk; repos in memory.
Faults can be scripted: ``server.fail(method, path_fragment, status)`` or ``server.cut(path_fragment)`` (send half
the body, then close). Writes need ``Authorization: Bearer <token>`` with a token in ``server.tokens``.
Use Xet off (``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``) so uploads take the LFS path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_MIN_BYTES = 10 << 20


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """Start with ``HubServer()``; ``.url`` is the endpoint; ``.close()`` stops it."""

    def __init__(self, root: Path | None = None, tokens: tuple[str, ...] = ("hf_test_write_token",)) -> None:
        self._tmp = None if root else tempfile.mkdtemp(prefix="hubserver-")
        self.root = Path(root or self._tmp)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.tokens = set(tokens)
        self.repos: dict[str, dict[str, Any]] = {}
        self.faults: list[tuple[str, str, Any]] = []
        self.log: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        self.n_commits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _dispatch(self, method: str) -> None:
                try:
                    server.handle(self, method)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:  # noqa: N802
                self._dispatch("GET")

            def do_HEAD(self) -> None:  # noqa: N802
                self._dispatch("HEAD")

            def do_POST(self) -> None:  # noqa: N802
                self._dispatch("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._dispatch("PUT")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ control
    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def fail(self, method: str, fragment: str, status: int = 500, times: int = 1) -> None:
        """The next ``times`` requests of ``method`` whose path contains ``fragment`` answer ``status``."""
        self.faults += [(method, fragment, status)] * times

    def cut(self, fragment: str) -> None:
        """The next GET of a file whose path contains ``fragment`` sends half of its body, then closes."""
        self.faults.append(("GET", fragment, "cut"))

    def put_file(self, repo_id: str, path: str, data: bytes) -> str:
        """Commit a file directly (as a tampering third party would); returns the commit id."""
        return self._commit(repo_id, {path: self._store(data)}, set(), "server-side edit")

    def files(self, repo_id: str) -> dict[str, bytes]:
        """Current content of every file of a repo."""
        head = self.repos[repo_id]["commits"][self.repos[repo_id]["head"]]
        return {p: (self.root / "blobs" / e["sha256"]).read_bytes() for p, e in head.items()}

    # ------------------------------------------------------------------ storage
    def _store(self, data: bytes) -> dict[str, Any]:
        sha = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / sha).write_bytes(data)
        return {"sha256": sha, "size": len(data), "oid": git_oid(data), "lfs": len(data) >= LFS_MIN_BYTES}

    def _commit(self, repo_id: str, adds: dict[str, dict[str, Any]], deletes: set[str], title: str) -> str:
        with self.lock:
            repo = self.repos[repo_id]
            tree = dict(repo["commits"][repo["head"]]) if repo["head"] else {}
            for p in deletes:
                tree = {k: v for k, v in tree.items() if k != p and not k.startswith(p.rstrip("/") + "/")}
            tree.update(adds)
            self.n_commits += 1
            oid = hashlib.sha1(f"{repo_id}-{self.n_commits}-{title}".encode()).hexdigest()
            repo["commits"][oid] = tree
            repo["head"] = oid
            return oid

    def _resolve(self, repo_id: str, rev: str) -> str | None:
        repo = self.repos[repo_id]
        if rev in ("main", "") and repo["head"]:
            return str(repo["head"])
        return rev if rev in repo["commits"] else None

    # ------------------------------------------------------------------ HTTP
    def _send(self, h: BaseHTTPRequestHandler, status: int, body: Any = b"", headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.send_response(status)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        for k, v in hdrs.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)) if "Content-Length" not in hdrs else hdrs["Content-Length"])
        h.end_headers()
        if not head:
            h.wfile.write(data)

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, msg: str, head: bool = False) -> None:
        self._send(h, status, {"error": msg}, {"X-Error-Code": code, "X-Error-Message": msg}, head)

    def _body(self, h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(h.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    h.rfile.readline()
                    return bytes(out)
                out += h.rfile.read(size)
                h.rfile.readline()
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    def _authed(self, h: BaseHTTPRequestHandler) -> bool:
        auth = h.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.tokens

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        path, query = unquote(url.path), parse_qs(url.query)
        body = self._body(h) if method in ("POST", "PUT") else b""
        with self.lock:
            self.log.append((method, path))
            self.bodies.append(body[:4096])
            fault = next((f for f in self.faults if f[0] == method and f[1] in path), None)
            if fault:
                self.faults.remove(fault)
        if fault and fault[2] != "cut":
            return self._error(h, int(fault[2]), "Injected", "injected failure", method == "HEAD")
        head = method == "HEAD"
        m = re.match(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?$", path)
        if method == "POST" and path == "/api/repos/create":
            return self._create(h, json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._send(h, 200, {"errors": [], "warnings": []})
        if method == "GET" and path == "/api/models":
            return self._list_models(h, query)
        if method == "GET" and m:
            return self._info(h, m.group(1), m.group(2) or "main")
        m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?$", path)
        if method == "GET" and m:
            return self._tree(h, m.group(1), m.group(2), (m.group(3) or "").strip("/"))
        m = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)$", path)
        if method == "POST" and m:
            if not self._authed(h):
                return self._error(h, 401, "Unauthorized", "Invalid credentials")
            if m.group(1) not in self.repos:
                return self._error(h, 404, "RepoNotFound", "Repository not found")
            return (self._preupload if m.group(2) == "preupload" else self._do_commit)(h, m.group(1), body)
        m = re.match(r"^/([^/]+/[^/]+)\.git/info/lfs/objects/batch$", path)
        if method == "POST" and m:
            return self._batch(h, json.loads(body))
        m = re.match(r"^/lfs-upload/([0-9a-f]{64})$", path)
        if method == "PUT" and m:
            if hashlib.sha256(body).hexdigest() != m.group(1):
                return self._error(h, 400, "BadOid", "content does not match oid")
            (self.root / "blobs" / m.group(1)).write_bytes(body)
            return self._send(h, 200, b"")
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if method in ("GET", "HEAD") and m:
            return self._file(h, m.group(1), m.group(2), m.group(3), head, fault is not None, h.headers.get("Range"))
        return self._error(h, 404, "NotFound", f"no route {method} {path}", head)

    def _create(self, h: BaseHTTPRequestHandler, payload: dict[str, Any]) -> None:
        if not self._authed(h):
            return self._error(h, 401, "Unauthorized", "Invalid credentials")
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        if repo_id in self.repos:
            return self._send(h, 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"})
        self.repos[repo_id] = {"commits": {}, "head": None,
                               "private": payload.get("visibility") == "private" or bool(payload.get("private"))}
        self._commit(repo_id, {".gitattributes": self._store(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n")},
                     set(), "initial commit")
        return self._send(h, 200, {"url": f"{self.url}/{repo_id}"})

    def _card(self, tree: dict[str, Any]) -> dict[str, Any]:
        if "README.md" not in tree:
            return {}
        text = (self.root / "blobs" / tree["README.md"]["sha256"]).read_text()
        m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        return (yaml.safe_load(m.group(1)) or {}) if m else {}

    def _model(self, repo_id: str, commit: str) -> dict[str, Any]:
        tree = self.repos[repo_id]["commits"][commit]
        card = self._card(tree)
        return {"id": repo_id, "modelId": repo_id, "sha": commit, "private": self.repos[repo_id]["private"],
                "tags": list(card.get("tags", [])), "cardData": card, "lastModified": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p} for p in sorted(tree)], "library_name": card.get("library_name")}

    def _info(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str) -> None:
        if repo_id not in self.repos or (self.repos[repo_id]["private"] and not self._authed(h)):
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        commit = self._resolve(repo_id, rev)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
        return self._send(h, 200, self._model(repo_id, commit))

    def _list_models(self, h: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        want = set(query.get("filter", []))
        out = [self._model(r, str(v["head"])) for r, v in sorted(self.repos.items()) if not v["private"] and v["head"]]
        out = [m for m in out if want <= set(m["tags"])]
        return self._send(h, 200, out[: int(query.get("limit", ["1000"])[0])])

    def _tree(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, prefix: str) -> None:
        if repo_id not in self.repos:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        commit = self._resolve(repo_id, rev)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
        items = []
        for p, e in sorted(self.repos[repo_id]["commits"][commit].items()):
            if prefix and not p.startswith(prefix + "/"):
                continue
            item = {"type": "file", "path": p, "size": e["size"], "oid": e["oid"]}
            if e["lfs"]:
                item["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": 130}
            items.append(item)
        return self._send(h, 200, items)

    def _preupload(self, h: BaseHTTPRequestHandler, repo_id: str, body: bytes) -> None:
        tree = self.repos[repo_id]["commits"][self.repos[repo_id]["head"]]
        files = []
        for f in json.loads(body)["files"]:
            lfs = f["size"] >= LFS_MIN_BYTES or f["path"].endswith(".safetensors")
            old = tree.get(f["path"])
            oid = (old["sha256"] if old["lfs"] else old["oid"]) if old else None
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return self._send(h, 200, {"files": files})

    def _batch(self, h: BaseHTTPRequestHandler, payload: dict[str, Any]) -> None:
        if not self._authed(h):
            return self._error(h, 401, "Unauthorized", "Invalid credentials")
        objects = []
        for o in payload["objects"]:
            rec: dict[str, Any] = {"oid": o["oid"], "size": o["size"]}
            if not (self.root / "blobs" / o["oid"]).exists():
                rec["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"}}
            objects.append(rec)
        return self._send(h, 200, {"transfer": "basic", "objects": objects})

    def _do_commit(self, h: BaseHTTPRequestHandler, repo_id: str, body: bytes) -> None:
        adds: dict[str, dict[str, Any]] = {}
        deletes: set[str] = set()
        title = "commit"
        for line in body.splitlines():
            item = json.loads(line)
            v = item["value"]
            if item["key"] == "header":
                title = v["summary"]
            elif item["key"] == "file":
                adds[v["path"]] = self._store(base64.b64decode(v["content"]))
            elif item["key"] == "lfsFile":
                blob = self.root / "blobs" / v["oid"]
                if not blob.exists():
                    return self._error(h, 400, "MissingLfs", f"lfs object {v['oid']} was not uploaded")
                size = blob.stat().st_size
                adds[v["path"]] = {"sha256": v["oid"], "size": size, "lfs": True,
                                   "oid": hashlib.sha1(f"lfs-pointer-{v['oid']}".encode()).hexdigest()}
            elif item["key"] in ("deletedFile", "deletedFolder"):
                deletes.add(v["path"])
        oid = self._commit(repo_id, adds, deletes, title)
        return self._send(h, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid})

    def _file(self, h: BaseHTTPRequestHandler, repo_id: str, rev: str, name: str, head: bool, cut: bool,
              rng: str | None) -> None:
        if repo_id not in self.repos or (self.repos[repo_id]["private"] and not self._authed(h)):
            return self._error(h, 404, "RepoNotFound", "Repository not found", head)
        commit = self._resolve(repo_id, rev)
        if commit is None:
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id", head)
        e = self.repos[repo_id]["commits"][commit].get(name)
        if e is None:
            return self._error(h, 404, "EntryNotFound", "Entry not found", head)
        hdrs = {"X-Repo-Commit": commit, "ETag": f'"{e["oid"]}"', "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes"}
        if e["lfs"]:
            hdrs.update({"X-Linked-Etag": f'"{e["sha256"]}"', "X-Linked-Size": str(e["size"])})
        blob = self.root / "blobs" / e["sha256"]
        start, status = 0, 200
        if rng and not head:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))  # type: ignore[union-attr]
            status = 206
            hdrs["Content-Range"] = f"bytes {start}-{e['size'] - 1}/{e['size']}"
        length = e["size"] - start
        h.send_response(status)
        for k, v in {**hdrs, "Content-Length": str(length)}.items():
            h.send_header(k, v)
        h.end_headers()
        if head:
            return
        send = length // 2 if cut else length
        with open(blob, "rb") as fh:
            fh.seek(start)
            left = send
            while left > 0:
                chunk = fh.read(min(left, 8 << 20))
                if not chunk:
                    break
                h.wfile.write(chunk)
                left -= len(chunk)
        if cut:
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
