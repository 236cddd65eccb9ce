"""deploy/kubernetes/ agrees with the code, as docker-compose.yml does (tests/test_compose.py): every
manifest parses, every command's flags are in its script's real ``--help``, every secret a pod
reads is a key of the Secret, the consumer's drain and grace period follow the catalogue's longest
task timeout, and KEDA reads the backlog key of the queue the consumers serve. No cluster needed."""

from __future__ import annotations

import math
import re
import shlex

import pytest
import yaml

from task_def.registry import CATALOGUE
from tests.helpers import ROOT
from tests.test_compose import help_text
from workqueue import backlog
from workqueue.settings import HARD_KILL_GRACE

DEPLOY = ROOT / "deploy" / "kubernetes"
#: Seconds the consumer gets, beyond its workers' drain, to exit once they have stopped.
EXIT_MARGIN = 30
SCRIPTS = (
    "producer_main.py",
    "consumer_main.py",
    "dashboard_main.py",
    "gateway_main.py",
    "kill_thread/kill_workers.py",
)


def load() -> list[dict]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


DOCS = load()


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in DOCS if doc["kind"] == kind}


def containers() -> list[tuple[str, dict]]:
    found = []
    for doc in DOCS:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            found += [(doc["metadata"]["name"], c) for c in doc["spec"]["template"]["spec"]["containers"]]
    return found


def commands() -> list[tuple[str, list[str]]]:
    """Every command a container or its hooks runs, with ``sh -c`` strings split as the shell would."""
    found = []
    for name, container in containers():
        run = list(container.get("command") or []) + list(container.get("args") or [])
        hooks = [h.get("exec", {}).get("command") for h in (container.get("lifecycle") or {}).values()]
        for args in [run, *[h for h in hooks if h]]:
            if args[:2] == ["sh", "-c"]:
                args = shlex.split(args[2])
            found.append((name, [a for a in args if a != "exec"]))
    return found


def env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env") or []}


def app_containers() -> dict[str, dict]:
    return {name: c for name, c in containers() if name.startswith("workqueue-")}


def test_every_manifest_parses_and_names_its_kind():
    assert DOCS
    for doc in DOCS:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in DOCS}
    assert {
        ("Deployment", "workqueue-consumer"),
        ("Deployment", "workqueue-dashboard"),
        ("Deployment", "workqueue-gateway"),
        ("Service", "workqueue-dashboard"),
        ("Service", "workqueue-gateway"),
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("ScaledObject", "workqueue-consumer"),
        ("TriggerAuthentication", "workqueue-redis"),
        ("Secret", "workqueue"),
    } <= kinds


@pytest.mark.parametrize("name, args", [pytest.param(n, a, id=f"{n}:{' '.join(a[:2])}") for n, a in commands()])
def test_every_command_passes_only_flags_its_script_accepts(name, args):
    script = next((a for a in args if a.endswith(".py")), None)
    if script is None:
        assert name == "redis", f"{name} runs no script of ours: {args}"
        return
    assert script in SCRIPTS and (ROOT / script).is_file(), f"{name}: {script}"
    text = help_text(script)
    flags = [a.split("=", 1)[0] for a in args[args.index(script) + 1 :] if a.startswith("--")]
    assert flags, f"{name}: expected flags in {args!r}"
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{name}: {script} does not accept {flag}"


def test_secrets_are_referenced_never_written_in_the_pods():
    (secret,) = of_kind("Secret").values()
    keys = set(secret["stringData"])
    assert all(value.startswith("change-me") for value in secret["stringData"].values())  # placeholders only
    for name, container in containers():
        for var in env(container).values():
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys, f"{name}: {ref}"
            elif re.search(r"PASSWORD|SECRET|TOKEN", var["name"]):
                pytest.fail(f"{name}: {var['name']} is written in the manifest, not read from the Secret")
    for auth in of_kind("TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys


def test_every_app_uses_the_same_redis_url_on_the_redis_service():
    urls = {name: env(c)["REDIS_URL"]["value"] for name, c in app_containers().items()}
    assert len(set(urls.values())) == 1, urls
    url = next(iter(urls.values()))
    assert re.fullmatch(r"redis://:\$\(REDIS_PASSWORD\)@redis:6379/0", url), url
    for name, c in app_containers().items():  # $(REDIS_PASSWORD) is expanded only from an earlier variable
        names = list(env(c))
        assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL"), name
    assert "redis" in of_kind("Service")


def test_services_select_their_deployments_pods():
    deployments = {**of_kind("Deployment"), **of_kind("StatefulSet")}
    for name, service in of_kind("Service").items():
        pods = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pods.items(), name
        assert deployments[name]["spec"]["selector"]["matchLabels"].items() <= pods.items(), name


def test_redis_persists_its_append_only_file_on_a_volume():
    (redis,) = of_kind("StatefulSet").values()
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    line = " ".join(container["command"] + container["args"])
    assert "--appendonly yes" in line and "--appendfsync everysec" in line and "--dir /data" in line
    assert "--requirepass" in line and "maxmemory-policy" not in line  # noeviction, the default
    claims = [t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts.get(claims[0]) == "/data"


def test_the_consumer_drains_for_the_longest_task_timeout_before_it_is_killed():
    consumer = of_kind("Deployment")["workqueue-consumer"]
    pod = consumer["spec"]["template"]["spec"]
    drain = max(task.timeout for task in CATALOGUE.values()) + math.ceil(HARD_KILL_GRACE)
    (hook,) = [args for name, args in commands() if name == "workqueue-consumer" and "kill_workers.py" in str(args)]
    assert hook[hook.index("--host") + 1] == "$POD_NAME"
    assert float(hook[hook.index("--timeout") + 1]) == drain
    (container,) = pod["containers"]
    assert env(container)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert pod["terminationGracePeriodSeconds"] == drain + EXIT_MARGIN
    assert "--burst" not in container["command"]


def test_keda_scales_the_consumers_on_the_backlog_key_of_their_queue():
    (scaled,) = of_kind("ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "workqueue-consumer"
    command = app_containers()["workqueue-consumer"]["command"]
    queue, workers = command[command.index("--queue") + 1], int(command[command.index("--workers") + 1])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == backlog.key(queue)
    assert int(trigger["metadata"]["listLength"]) == workers  # one job per worker
    assert trigger["metadata"]["address"].startswith("redis.") and trigger["metadata"]["address"].endswith(":6379")
    assert trigger["authenticationRef"]["name"] in of_kind("TriggerAuthentication")
    assert scaled["spec"]["maxReplicaCount"] >= 1 and scaled["spec"]["minReplicaCount"] >= 0


@pytest.mark.parametrize("name, port", [("workqueue-dashboard", 9181), ("workqueue-gateway", 8000)])
def test_servers_bind_beyond_loopback_with_credentials_and_their_service_names(name, port):
    container = app_containers()[name]
    command = container["command"]
    assert command[command.index("--bind") + 1] == "0.0.0.0" and int(command[command.index("--port") + 1]) == port
    variables = env(container)
    needed = {"WORKQUEUE_DASHBOARD_PASSWORD"} if "dashboard" in name else {"WORKQUEUE_GATEWAY_TOKEN"}
    assert needed <= {n for n, v in variables.items() if "secretKeyRef" in (v.get("valueFrom") or {})}
    assert name in variables["WORKQUEUE_ALLOWED_HOSTS"]["value"].split(",")  # reached by its Service's name
    assert of_kind("Service")[name]["spec"]["ports"][0]["targetPort"] == port
