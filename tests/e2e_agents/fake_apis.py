#!/usr/bin/env python3
"""Fake upstreams for the coding-agent end-to-end test (tests/e2e_agents).

One TLS server on 127.0.0.1 (HTTP/1.1, a certificate for every test host),
answering as:

  api.anthropic.com  POST /v1/messages (streamed or not), /v1/messages/count_tokens
  api.openai.com     POST /v1/responses (streamed, the Responses API Codex uses),
                     POST /v1/chat/completions, GET /v1/models
  api.github.com     GET /user, GET /repos/{o}/{r}, GET /repos/{o}/{r}/readme,
                     POST /graphql (what `gh repo view` asks)
  github.com         git's smart HTTP through `git http-backend` (clone, fetch,
                     push) and the LFS batch API, for repositories under
                     --git-root, only with `Authorization: Basic
                     base64("x-access-token:" + token)` for a token given with
                     --github-token (else 401, as GitHub answers)

Every request is appended to the record file as one JSON line
({"host","method","path","headers":[[name, value]...],"body_len"}), so the
test can check what arrived (the real key, never a placeholder). Anything
else is answered 404 and recorded: the test lists what a CLI tried.

Usage: fake_apis.py --cert C --key K --record FILE --ready-file FILE
                    --git-root DIR --github-token T [--github-token T2]
The ready file receives {"port": N} once the server listens.
"""
import argparse
import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORD_LOCK = threading.Lock()
ARGS = None
EVENT_GAP = 0.05  # seconds between streamed events

CLAUDE_ANSWER = "FAKE-CLAUDE-ANSWER-7f3a"
CODEX_ANSWER = "FAKE-CODEX-ANSWER-91c2"
OPENAI_ANSWER = "Hello from the fake upstream."


def record(entry: dict) -> None:
    with RECORD_LOCK:
        with open(ARGS.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")


def anthropic_events(model: str, text: str):
    msg = {"id": "msg_fake01", "type": "message", "role": "assistant", "model": model, "content": [],
           "stop_reason": None, "stop_sequence": None,
           "usage": {"input_tokens": 12, "output_tokens": 1, "cache_creation_input_tokens": 0,
                     "cache_read_input_tokens": 0}}
    yield "message_start", {"type": "message_start", "message": msg}
    yield "content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}
    yield "ping", {"type": "ping"}
    half = len(text) // 2
    for part in (text[:half], text[half:]):
        yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": part}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": 8}}
    yield "message_stop", {"type": "message_stop"}


def anthropic_message(model: str, text: str) -> dict:
    return {"id": "msg_fake02", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 8, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


def responses_events(model: str, text: str):
    created = int(time.time())
    base = {"id": "resp_fake01", "object": "response", "created_at": created, "model": model,
            "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
    item = {"id": "msg_fake01", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    done_item = dict(item, status="completed", content=[dict(part, text=text)])
    usage = {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 8,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 28}
    seq = iter(range(100))
    yield "response.created", {"type": "response.created", "sequence_number": next(seq),
                               "response": dict(base, status="in_progress")}
    yield "response.in_progress", {"type": "response.in_progress", "sequence_number": next(seq),
                                   "response": dict(base, status="in_progress")}
    yield "response.output_item.added", {"type": "response.output_item.added", "sequence_number": next(seq),
                                         "output_index": 0, "item": item}
    yield "response.content_part.added", {"type": "response.content_part.added", "sequence_number": next(seq),
                                          "item_id": "msg_fake01", "output_index": 0, "content_index": 0,
                                          "part": part}
    half = len(text) // 2
    for delta in (text[:half], text[half:]):
        yield "response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": next(seq),
                                             "item_id": "msg_fake01", "output_index": 0, "content_index": 0,
                                             "delta": delta}
    yield "response.output_text.done", {"type": "response.output_text.done", "sequence_number": next(seq),
                                        "item_id": "msg_fake01", "output_index": 0, "content_index": 0,
                                        "text": text}
    yield "response.content_part.done", {"type": "response.content_part.done", "sequence_number": next(seq),
                                         "item_id": "msg_fake01", "output_index": 0, "content_index": 0,
                                         "part": dict(part, text=text)}
    yield "response.output_item.done", {"type": "response.output_item.done", "sequence_number": next(seq),
                                        "output_index": 0, "item": done_item}
    yield "response.completed", {"type": "response.completed", "sequence_number": next(seq),
                                 "response": dict(base, status="completed", output=[done_item], usage=usage)}


GITHUB_USER = {"login": "octo-e2e", "id": 4242, "node_id": "U_e2e", "type": "User", "name": "Octo E2E",
               "html_url": "https://github.com/octo-e2e", "site_admin": False}


def github_repo(owner: str, name: str) -> dict:
    return {"id": 77, "node_id": "R_e2e", "name": name, "full_name": f"{owner}/{name}", "private": True,
            "owner": {"login": owner, "id": 4242, "type": "User"}, "description": "FAKE-REPO-DESCRIPTION",
            "html_url": f"https://github.com/{owner}/{name}", "default_branch": "main",
            "visibility": "private", "stargazers_count": 3, "forks_count": 1}


def graphql_repo(owner: str, name: str) -> dict:
    """Every field `gh repo view` may ask for; unused ones are ignored."""
    return {
        "id": "R_e2e", "name": name, "nameWithOwner": f"{owner}/{name}", "owner": {"id": "U_e2e", "login": owner},
        "description": "FAKE-REPO-DESCRIPTION", "url": f"https://github.com/{owner}/{name}",
        "homepageUrl": "", "isPrivate": True, "visibility": "PRIVATE", "isArchived": False, "isFork": False,
        "isTemplate": False, "isEmpty": False, "isInOrganization": False, "isMirror": False,
        "isSecurityPolicyEnabled": False, "isUserConfigurationRepository": False, "isBlankIssuesEnabled": True,
        "stargazerCount": 3, "forkCount": 1, "watchers": {"totalCount": 1}, "issues": {"totalCount": 0},
        "pullRequests": {"totalCount": 0}, "viewerPermission": "ADMIN",
        "defaultBranchRef": {"name": "main"}, "parent": None, "templateRepository": None,
        "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
        "pushedAt": "2026-01-01T00:00:00Z", "sshUrl": f"git@github.com:{owner}/{name}.git",
        "hasIssuesEnabled": True, "hasWikiEnabled": False, "hasProjectsEnabled": False,
        "hasDiscussionsEnabled": False, "mergeCommitAllowed": True, "squashMergeAllowed": True,
        "rebaseMergeAllowed": True, "deleteBranchOnMerge": False, "primaryLanguage": None,
        "languages": {"nodes": []}, "repositoryTopics": {"nodes": []}, "licenseInfo": None,
        "codeOfConduct": None, "fundingLinks": [], "latestRelease": None, "diskUsage": 1,
        "assignableUsers": {"nodes": []}, "mentionableUsers": {"nodes": []}, "milestones": {"nodes": []},
        "labels": {"nodes": []}, "projects": {"nodes": []}, "projectsV2": {"nodes": []},
        "contactLinks": [], "issueTemplates": [], "pullRequestTemplates": [],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-apis/1"
    timeout = 60

    def log_message(self, fmt, *args):
        if os.environ.get("FAKE_APIS_VERBOSE"):
            sys.stderr.write("fake-apis: " + (fmt % args) + "\n")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        entry = {"host": host, "method": self.command, "path": self.path,
                 "headers": [[k.lower(), v] for k, v in self.headers.items()], "body_len": len(body)}
        if host == "api.openai.com" or host == "api.anthropic.com":
            entry["body"] = body[:4000].decode("utf-8", "replace")
        record(entry)
        try:
            self._route(host, body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def _send(self, status: int, body: bytes, ctype: str, extra=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, extra=None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", extra)

    def _sse(self, events) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for name, data in events:
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            time.sleep(EVENT_GAP)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _route(self, host: str, body: bytes) -> None:
        path = self.path.split("?", 1)[0]
        method = self.command
        try:
            req = json.loads(body) if body[:1] in (b"{", b"[") else {}
        except ValueError:
            req = {}
        req = req if isinstance(req, dict) else {}
        model = req.get("model") or "fake-model"
        if host == "api.anthropic.com":
            if method == "POST" and path == "/v1/messages":
                if req.get("stream"):
                    return self._sse(anthropic_events(model, CLAUDE_ANSWER))
                return self._json(anthropic_message(model, CLAUDE_ANSWER), extra={"request-id": "req_fake"})
            if method == "POST" and path == "/v1/messages/count_tokens":
                return self._json({"input_tokens": 12})
        if host == "api.openai.com":
            if method == "GET" and path == "/v1/responses" and \
                    (self.headers.get("Upgrade") or "").lower() == "websocket":
                return self._responses_websocket()
            if method == "POST" and path == "/v1/responses":
                return self._sse(responses_events(model, CODEX_ANSWER))
            if method == "POST" and path == "/v1/chat/completions":
                return self._json({"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                                   "model": model, "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                   "message": {"role": "assistant", "content": OPENAI_ANSWER, "refusal": None}}],
                                   "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}})
            if method == "GET" and path == "/v1/models":
                return self._json({"object": "list", "data": [
                    {"id": "gpt-fake", "object": "model", "created": 1700000000, "owned_by": "fake"}]})
        if host == "api.github.com":
            return self._github_api(method, path, req)
        if host == "github.com":
            return self._git(method, body)
        self._json({"message": f"fake-apis: no route for {method} {host}{path}"}, status=404)

    # ------------------------------------------------------------ Responses over a websocket
    def _responses_websocket(self) -> None:
        """The Responses API as Codex speaks it over a websocket: each
        `response.create` message is answered with the stream's events, one
        text frame each."""
        key = self.headers.get("Sec-WebSocket-Key") or ""
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            frame = self._ws_read()
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 0x8:  # close
                self._ws_write(0x8, payload[:2])
                return
            if opcode == 0x9:  # ping
                self._ws_write(0xA, payload)
                continue
            if opcode != 0x1:
                continue
            try:
                msg = json.loads(payload)
            except ValueError:
                continue
            record({"host": "api.openai.com", "method": "WS", "path": "ws:/v1/responses",
                    "headers": [], "body_len": len(payload), "body": payload[:4000].decode("utf-8", "replace")})
            if msg.get("type") == "response.create":
                model = msg.get("model") or "fake-model"
                for _name, data in responses_events(model, CODEX_ANSWER):
                    self._ws_write(0x1, json.dumps(data).encode())

    def _ws_read(self):
        """One whole message (fragments joined): (opcode, payload), or None at the end."""
        opcode, data = None, b""
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return None
            fin, op = head[0] & 0x80, head[0] & 0x0F
            n = head[1] & 0x7F
            if n == 126:
                n = int.from_bytes(self.rfile.read(2), "big")
            elif n == 127:
                n = int.from_bytes(self.rfile.read(8), "big")
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            raw = self.rfile.read(n)
            if len(raw) < n:
                return None
            chunk = bytes(b ^ mask[i % 4] for i, b in enumerate(raw))
            if op >= 0x8:
                return op, chunk
            if op != 0:
                opcode = op
            data += chunk
            if fin:
                return opcode, data

    def _ws_write(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
        self.wfile.write(head + payload)
        self.wfile.flush()

    # ------------------------------------------------------------ api.github.com
    def _github_api(self, method: str, path: str, req: dict) -> None:
        auth = self.headers.get("Authorization") or ""
        if not any(auth in (f"Bearer {t}", f"token {t}") for t in ARGS.github_token):
            return self._json({"message": "Bad credentials"}, status=401)
        parts = path.strip("/").split("/")
        scopes = {"X-OAuth-Scopes": "repo, read:org", "X-GitHub-Api-Version-Selected": "2022-11-28"}
        if method == "GET" and path == "/user":
            return self._json(GITHUB_USER, extra=scopes)
        if method == "GET" and len(parts) == 3 and parts[0] == "repos":
            return self._json(github_repo(parts[1], parts[2]), extra=scopes)
        if method == "GET" and len(parts) == 4 and parts[0] == "repos" and parts[3] == "readme":
            text = b"# FAKE-README\n\nA private repository served by the fake.\n"
            if "raw" in (self.headers.get("Accept") or ""):
                return self._send(200, text, "text/plain", scopes)
            return self._json({"name": "README.md", "path": "README.md", "encoding": "base64",
                               "content": base64.b64encode(text).decode()}, extra=scopes)
        if method == "POST" and path == "/graphql":
            variables = req.get("variables") or {}
            owner, name = variables.get("owner", "acme"), variables.get("name", "widgets")
            return self._json({"data": {"repository": graphql_repo(owner, name),
                                        "viewer": {"login": GITHUB_USER["login"]}}}, extra=scopes)
        self._json({"message": "Not Found"}, status=404)

    # ------------------------------------------------------------ github.com (git)
    def _git(self, method: str, body: bytes) -> None:
        auth = self.headers.get("Authorization") or ""
        expected = {"Basic " + base64.b64encode(f"x-access-token:{t}".encode()).decode() for t in ARGS.github_token}
        if auth not in expected:
            return self._send(401, b"Invalid username or token.\n", "text/plain",
                              {"WWW-Authenticate": 'Basic realm="GitHub"'})
        path = self.path.split("?", 1)[0]
        if "/info/lfs/" in path:
            return self._lfs(path, body)
        self._cgi(method, body)

    def _lfs(self, path: str, body: bytes) -> None:
        if not path.endswith("/info/lfs/objects/batch"):
            return self._json({"message": "Not found"}, status=404)
        try:
            req = json.loads(body)
        except ValueError:
            return self._json({"message": "bad batch request"}, status=422)
        # Every object "already present": an upload needs no action.
        objects = [{"oid": o.get("oid"), "size": o.get("size"), "authenticated": True}
                   for o in req.get("objects", [])]
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   "application/vnd.git-lfs+json")

    def _cgi(self, method: str, body: bytes) -> None:
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": ARGS.git_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type") or "",
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "x-access-token",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": ARGS.git_root,
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60)
        out = proc.stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers[k.strip()] = v.strip()
        ctype = headers.pop("Content-Type", "application/octet-stream")
        if proc.returncode != 0 and status == 200:
            status = 500
            sys.stderr.write("fake-apis: git http-backend: " + proc.stderr.decode("utf-8", "replace"))
        self._send(status, payload, ctype, headers)


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, handler, ctx: ssl.SSLContext):
        super().__init__(addr, handler)
        self.ctx = ctx

    def finish_request(self, request, client_address):
        request.settimeout(60)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            sys.stderr.write(f"fake-apis: TLS handshake failed from {client_address}: {e}\n")
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--record", required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--git-root", required=True)
    ap.add_argument("--github-token", action="append", required=True)
    ARGS = ap.parse_args()
    open(ARGS.record, "a").close()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(ARGS.cert, ARGS.key)
    ctx.set_alpn_protocols(["http/1.1"])
    srv = TLSServer(("127.0.0.1", 0), Handler, ctx)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    tmp = ARGS.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"port": srv.server_address[1]}, f)
    os.replace(tmp, ARGS.ready_file)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
