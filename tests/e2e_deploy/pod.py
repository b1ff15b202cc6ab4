#!/usr/bin/env python3
"""The Kubernetes manifests of deploy/, read the way the kubelet would.

    pod.py policy RENDERED
        Checks the rendered output (kubectl kustomize) against the sidecar's
        security contract; prints one line per rule, exits 1 if any fails.

    pod.py materialize SOURCE COMPONENT_DIR ROOT --proxy P --admin A
                       --upstream U --test-ca FILE --openai-key K --agent-token T
        Lays the pod's volumes out under ROOT (each mountPath prefixed with
        ROOT): the clavis config from the ConfigMap (or the component's
        clavis.yaml when SOURCE is not rendered output), the Secrets' files,
        empty shared and private directories. Writes ROOT/pod.json with the
        agent's environment ($(VAR) expanded as the kubelet does, paths under
        ROOT) and the probe commands. Loopback ports 8080/1984 become P/A, and
        an `upstream:` section sends api.openai.com to the fake upstream U.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import yaml


def load(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def deployment(docs):
    deps = [d for d in docs if d.get("kind") == "Deployment"]
    if len(deps) != 1:
        sys.exit(f"expected one Deployment, found {len(deps)}")
    return deps[0]


def containers(dep):
    spec = dep["spec"]["template"]["spec"]
    clavis = [c for c in spec.get("initContainers", []) if c["name"] == "clavis"]
    agent = [c for c in spec.get("containers", []) if c["name"] == "agent"]
    if len(clavis) != 1 or len(agent) != 1:
        sys.exit("expected the init container `clavis` and the container `agent`")
    return spec, clavis[0], agent[0]


def policy(args):
    docs = load(args.rendered)
    dep = deployment(docs)
    spec, clavis, agent = containers(dep)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    sc = clavis.get("securityContext", {})
    agent_mounts = {m["name"]: m for m in agent.get("volumeMounts", [])}
    agent_env = {e["name"]: e for e in agent.get("env", [])}
    config = next((d for d in docs if d.get("kind") == "ConfigMap"
                   and "clavis.yaml" in d.get("data", {})), None)
    cfg = yaml.safe_load(config["data"]["clavis.yaml"]) if config else {}
    clavis_mounts = {m["name"]: m["mountPath"] for m in clavis.get("volumeMounts", [])}

    def mount_of(path):
        """The volume holding PATH in the clavis container (longest prefix)."""
        best = None
        for name, mp in clavis_mounts.items():
            if path == mp or path.startswith(mp.rstrip("/") + "/"):
                if best is None or len(mp) > len(clavis_mounts[best]):
                    best = name
        return best

    probe = ["clavis", "health", "--admin", cfg.get("admin", {}).get("listen", "")]
    proxy_url = re.compile(r"^http://agent:\$\(CLAVIS_AGENT_TOKEN\)@127\.0\.0\.1:(\d+)$")
    shared = mount_of(cfg.get("ca", {}).get("cert", ""))
    rules = [
        ("clavis is a native sidecar (init container, restartPolicy: Always)",
         clavis.get("restartPolicy") == "Always"),
        ("the startup probe runs `clavis health` against the config's admin.listen",
         clavis.get("startupProbe", {}).get("exec", {}).get("command") == probe),
        ("readiness and liveness probes run `clavis health` too",
         all(clavis.get(p, {}).get("exec", {}).get("command") == probe
             for p in ("readinessProbe", "livenessProbe"))),
        ("clavis runs as non-root 65532 without privilege escalation",
         sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 65532
         and sc.get("allowPrivilegeEscalation") is False),
        ("clavis drops every capability, read-only root, seccomp RuntimeDefault",
         sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("readOnlyRootFilesystem") is True
         and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"),
        ("clavis has a memory limit and no CPU limit (no throttling)",
         "memory" in clavis.get("resources", {}).get("limits", {})
         and "cpu" not in clavis.get("resources", {}).get("limits", {})),
        ("the agent runs as another user than clavis",
         agent.get("securityContext", {}).get("runAsUser") not in (None, 0, sc.get("runAsUser"))),
        ("no service account token and no shared process namespace",
         spec.get("automountServiceAccountToken") is False and spec.get("shareProcessNamespace") is False),
        ("the agent mounts no clavis volume but the CA certificates, read-only",
         set(agent_mounts) & {n for n in clavis_mounts} == {shared}
         and agent_mounts[shared].get("readOnly") is True),
        ("the CA key, the admin token and the real keys are outside the shared volume",
         shared is not None and mount_of(cfg["ca"]["key"]) not in (None, shared)
         and "clavis-secrets" not in agent_mounts),
        ("the shared CA volume is in memory",
         volumes.get(shared, {}).get("emptyDir", {}).get("medium") == "Memory"),
        ("the agent's only secret is its proxy token",
         [e["valueFrom"]["secretKeyRef"]["name"] for e in agent.get("env", []) if "valueFrom" in e]
         == ["clavis-agent"]),
        ("the token is defined before the proxy variables that use it",
         list(agent_env).index("CLAVIS_AGENT_TOKEN") < list(agent_env).index("HTTPS_PROXY")),
        ("both cases of HTTPS_PROXY/HTTP_PROXY point at the sidecar's proxy port",
         all(proxy_url.match(agent_env.get(k, {}).get("value", "")) for k in
             ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"))
         and {proxy_url.match(agent_env[k]["value"]).group(1) for k in ("HTTPS_PROXY", "http_proxy")}
         == {cfg.get("proxy", {}).get("listen", "").rsplit(":", 1)[-1]}),
        ("NO_PROXY (both cases) keeps loopback and the cluster off the proxy",
         all({"localhost", "127.0.0.1", ".svc", ".cluster.local"}
             <= set(agent_env.get(k, {}).get("value", "").split(",")) for k in ("NO_PROXY", "no_proxy"))),
        ("replacing CA variables get the bundle, NODE_EXTRA_CA_CERTS the certificate",
         all(agent_env.get(k, {}).get("value") == cfg.get("ca", {}).get("bundle")
             for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE"))
         and agent_env.get("NODE_EXTRA_CA_CERTS", {}).get("value") == cfg.get("ca", {}).get("cert")),
        ("the proxy requires the agent's token and both ports stay on loopback",
         cfg.get("proxy", {}).get("require_auth") is True
         and all(cfg.get(s, {}).get("listen", "").startswith("127.0.0.1:") for s in ("proxy", "admin"))),
    ]
    if cfg.get("vault"):
        jwt_volume = volumes.get(mount_of(cfg["vault"]["auth"].get("kubernetes", {}).get("jwt_file", "")), {})
        sources = jwt_volume.get("projected", {}).get("sources", [])
        rules += [
            ("Vault: the service account token is projected for audience vault into clavis only",
             any(s.get("serviceAccountToken", {}).get("audience") == "vault" for s in sources)
             and not set(agent_mounts) & {v for v in volumes if "projected" in volumes[v]}),
            ("Vault: the pod runs as the service account the Vault role is bound to",
             spec.get("serviceAccountName") == "clavis"),
            ("Vault: every service credential is a ${vault:...} reference",
             all(str(v).startswith("${vault:") for s in cfg.get("services", [])
                 for v in s.get("credentials", {}).values())),
        ]
    failed = 0
    for name, ok in rules:
        print(("ok    " if ok else "FAIL  ") + name)
        failed += not ok
    return 1 if failed else 0


def materialize(args):
    docs = load(args.source)
    dep = deployment(docs)
    spec, clavis, agent = containers(dep)
    root = Path(args.root)
    config = next((d["data"]["clavis.yaml"] for d in docs if d.get("kind") == "ConfigMap"
                   and "clavis.yaml" in d.get("data", {})), None)
    if config is None:
        config = (Path(args.component) / "clavis.yaml").read_text()
    mounts = sorted({m["mountPath"] for c in (clavis, agent) for m in c.get("volumeMounts", [])},
                    key=len, reverse=True)

    at_mount = re.compile(r"(?<![\w/.-])(" + "|".join(map(re.escape, mounts)) + r")(?=/|$|[^\w.-])")

    def here(text):
        text = at_mount.sub(lambda m: str(root) + m.group(1), text)
        return (text.replace("127.0.0.1:8080", f"127.0.0.1:{args.proxy}")
                .replace("127.0.0.1:1984", f"127.0.0.1:{args.admin}"))

    secrets = {"clavis-secrets": {"admin-token": args.admin_token, "openai-api-key": args.openai_key},
               "clavis-agent": {"token": args.agent_token}}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in clavis["volumeMounts"]:
        d = root / m["mountPath"].lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        secret = volumes[m["name"]].get("secret")
        if secret:
            for key, value in secrets[secret["secretName"]].items():
                (d / key).write_text(value + "\n")
    cfg_path = root / "etc/clavis/clavis.yaml"
    cfg_path.write_text(here(config) + (
        "upstream:\n"
        f"  extra_ca: [\"{args.test_ca}\"]\n"
        f"  resolve: {{ \"api.openai.com:443\": \"127.0.0.1:{args.upstream}\" }}\n"))

    env = {}
    for e in agent.get("env", []):
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
        else:  # $(VAR) refers to variables defined earlier in the list
            env[e["name"]] = here(re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"]))
    probes = {p: [here(a) for a in clavis[p]["exec"]["command"]]
              for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    (root / "pod.json").write_text(json.dumps({"agent_env": env, "probes": probes}, indent=2))
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("policy")
    p.add_argument("rendered")
    m = sub.add_parser("materialize")
    for a in ("source", "component", "root"):
        m.add_argument(a)
    for a in ("--proxy", "--admin", "--upstream", "--test-ca", "--openai-key", "--agent-token", "--admin-token"):
        m.add_argument(a, required=True)
    args = ap.parse_args()
    return policy(args) if args.cmd == "policy" else materialize(args)


if __name__ == "__main__":
    sys.exit(main())
