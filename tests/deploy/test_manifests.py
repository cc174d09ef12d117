"""The deployment files under deploy/ and the Dockerfile: they parse, Kubernetes' schemas and Docker Compose accept
them, and what they name (settings, probe paths, ports, topics, files, versions) exists in the code and beside them.

Offline and fast. A tool that is missing here (kubernetes-validate, kubectl, the docker compose plugin, promtool)
skips its own test and says so; nothing else depends on it.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from streamrec.stream.health import Health, health_app
from streamrec.stream.settings import Settings, kafka_security_problems
from tests.paths import REPO

DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
CREATE_TOPICS = DEPLOY / "create-topics.sh"
STREAMREC_ENV = DEPLOY / "streamrec.env"
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

#: An old Kubernetes still widely run and the newest one kubernetes-validate bundles: both must accept the manifests.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
#: Kinds that no bundled schema covers; checked against KEDA's documentation below instead.
KEDA_API = "keda.sh/v1alpha1"

# KEDA 2.18's documentation (keda.sh/docs/2.18: scalers/apache-kafka, reference/scaledobject-spec): every field it
# defines for what scaledobject.yaml and triggerauthentication.yaml use. A misspelt field is silently ignored by
# KEDA, so this list is what catches it.
SCALED_OBJECT_FIELDS = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
    "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}  # fmt: skip
KAFKA_TRIGGER_FIELDS = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
    "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "version", "partitionLimitation", "sasl", "saslTokenProvider", "tls",
    "unsafeSsl", "awsRegion",
}  # fmt: skip
KAFKA_AUTH_PARAMETERS = {
    "sasl", "saslTokenProvider", "username", "password", "tls", "ca", "cert", "key", "keyPassword", "keytab", "realm",
    "kerberosConfig", "kerberosServiceName", "kerberosDisableFAST", "oauthTokenEndpointUri", "scopes",
    "oauthExtensions",
}  # fmt: skip
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


# --- reading the files ------------------------------------------------------------------------------------------


def documents(path: Path) -> list[Any]:
    return copy.deepcopy(_parsed(path))


@functools.cache
def _parsed(path: Path) -> list[Any]:
    return [document for document in yaml.safe_load_all(path.read_text(encoding="utf-8")) if document is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.iterdir() if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml")


def manifests() -> list[tuple[Path, dict]]:
    return [(path, document) for path in manifest_files() for document in documents(path)]


def the(kind: str) -> dict:
    found = [document for _, document in manifests() if document["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} under deploy/kubernetes, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def container(workload: dict) -> dict:
    (only,) = pod_spec(workload)["containers"]
    return only


def mount(workload: dict, volume_name: str) -> dict:
    (found,) = [m for m in container(workload)["volumeMounts"] if m["name"] == volume_name]
    return found


def volume(workload: dict, volume_name: str) -> dict:
    (found,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == volume_name]
    return found


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def compose() -> dict:
    (document,) = documents(COMPOSE)  # PyYAML resolves the `<<:` merges the file uses, as Compose does
    return document


def compose_environment(service: dict) -> dict[str, str]:
    """What a service's container gets: its env_file files, then `environment:`, which wins."""
    environment: dict[str, str] = {}
    files = service.get("env_file", [])
    for name in [files] if isinstance(files, str) else files:
        environment |= env_file(COMPOSE.parent / name)
    return environment | {name: str(value) for name, value in service.get("environment", {}).items()}


def streamrec_services() -> dict[str, dict]:
    return {name: s for name, s in compose()["services"].items() if s.get("image", "").startswith("streamrec:")}


def worker_services() -> dict[str, dict]:
    return {name: s for name, s in streamrec_services().items() if s.get("command") == ["worker"]}


def script_text() -> str:
    """create-topics.sh with its continued lines joined."""
    return CREATE_TOPICS.read_text(encoding="utf-8").replace("\\\n", " ")


def created_topics() -> dict[str, str]:
    """Topic name -> the rest of its `create` line in create-topics.sh."""
    return {m[1]: m[2] for m in re.finditer(r"^create (\S+) (.*)$", script_text(), re.MULTILINE)}


def script_default(variable: str) -> str:
    match = re.search(rf"^{variable}=\$\{{{variable}:-([^}}]*)\}}", script_text(), re.MULTILINE)
    assert match, f"create-topics.sh sets no default for {variable}"
    return match[1]


def pyproject_version() -> str:
    return PYPROJECT["project"]["version"]


def setting_problem(name: str) -> str | None:
    """Why the environment variable ``name`` is no streamrec setting, or None when it is one."""
    if not name.startswith("STREAMREC_"):
        return f"{name} lacks the STREAMREC_ prefix"
    field, _, nested = name.removeprefix("STREAMREC_").lower().partition("__")
    if field not in Settings.model_fields:
        return f"{name}: Settings has no field {field!r}"
    if nested:
        model = Settings.model_fields[field].annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return f"{name}: Settings.{field} has no fields to set with __"
        if nested not in model.model_fields:
            return f"{name}: {model.__name__} has no field {nested!r}"
    return None


def settings_from(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a process with exactly these STREAMREC_* variables would read."""
    for name in [n for n in os.environ if n.startswith("STREAMREC_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return Settings()


def metrics_port() -> int:
    return Settings.model_fields["metrics_port"].default


def run(command: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)


def docker_compose_available() -> bool:
    return shutil.which("docker") is not None and run(["docker", "compose", "version"]).returncode == 0


def container_environment(workload: dict) -> dict[str, str]:
    """The STREAMREC_* variables a pod of ``workload`` gets: the ConfigMap, then `env:` with the Secret's values."""
    config_maps = {the("ConfigMap")["metadata"]["name"]: the("ConfigMap")["data"]}
    secrets = {the("Secret")["metadata"]["name"]: the("Secret")["stringData"]}
    spec = container(workload)
    environment = {}
    for source in spec.get("envFrom", []):
        environment |= config_maps[source["configMapRef"]["name"]]
    for variable in spec.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        else:
            reference = variable["valueFrom"]["secretKeyRef"]
            environment[variable["name"]] = secrets[reference["name"]][reference["key"]]
    return environment


# --- every file parses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(DEPLOY)) if isinstance(p, Path) else p
)
def test_every_yaml_file_under_deploy_parses(path: Path) -> None:
    parsed = documents(path)
    assert parsed, f"{path} holds no YAML document"
    assert all(isinstance(document, dict) for document in parsed), f"{path}: every document should be a mapping"


# --- Kubernetes -------------------------------------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest_in_the_folder() -> None:
    (kustomization,) = documents(KUBERNETES / "kustomization.yaml")
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a manifest is listed twice"
    assert set(listed) == {p.name for p in manifest_files()}


def test_every_manifest_object_is_namespace_agnostic_and_named() -> None:
    for path, document in manifests():
        assert "namespace" not in document["metadata"], f"{path.name}: namespace comes from `kubectl apply -n`"
        assert document["metadata"].get("name"), f"{path.name}: {document['kind']} without a name"


BUILT_IN = [(path, document) for path, document in manifests() if document["apiVersion"] != KEDA_API]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    ("path", "document"), BUILT_IN, ids=[f"{p.name}:{d['kind']}" for p, d in BUILT_IN]
)  # fmt: skip
def test_built_in_objects_validate_against_the_kubernetes_schemas(path: Path, document: dict, version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[dev]')"
    )
    # strict: a misspelt field (readinesProbe) is an error, where Kubernetes would drop it without a word
    kubernetes_validate.validate(document, version, strict=True)


def test_kustomize_renders_every_object() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    rendered = run(["kubectl", "kustomize", str(KUBERNETES)])
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d)
    assert kinds == sorted(document["kind"] for _, document in manifests())


def served_status(path: str) -> str:
    statuses: list[str] = []
    health_app(Health(), CollectorRegistry())({"PATH_INFO": path}, lambda status, _headers: statuses.append(status))
    return statuses[0]


def test_the_probes_ask_paths_that_the_worker_serves_on_its_metrics_port() -> None:
    assert served_status("/no-such-path").startswith("404")  # the check below can tell a served path from another
    worker = container(the("Deployment"))
    probes = {name: worker[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port_names = {port["name"]: port["containerPort"] for port in worker["ports"]}
    for name, probe in probes.items():
        assert not served_status(probe["httpGet"]["path"]).startswith("404"), f"{name} asks a path nobody serves"
        assert port_names[probe["httpGet"]["port"]] == metrics_port(), f"{name} asks another port"


def test_the_worker_listens_where_the_service_and_the_settings_say() -> None:
    worker = container(the("Deployment"))
    (port,) = worker["ports"]
    assert port["containerPort"] == metrics_port()
    assert int(the("ConfigMap")["data"]["STREAMREC_METRICS_PORT"]) == metrics_port()
    assert the("ConfigMap")["data"]["STREAMREC_METRICS_HOST"] == "0.0.0.0"  # probes cannot reach a loopback
    service = the("Service")
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == metrics_port()
    assert service_port["targetPort"] == port["name"]
    pod_labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert the("Deployment")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_worker_stops_within_its_grace_period_and_leaves_the_replica_count_to_keda() -> None:
    deployment = the("Deployment")
    shutdown = Settings.model_fields["shutdown_timeout_s"].default
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > shutdown
    assert "replicas" not in deployment["spec"], "the HPA KEDA creates owns the replica count"


@pytest.mark.parametrize("kind", ["Deployment", "CronJob"])
def test_workloads_run_the_release_image_as_the_image_user_on_a_read_only_root(kind: str) -> None:
    workload = the(kind)
    assert container(workload)["image"].endswith(f"/streamrec:{pyproject_version()}")
    security = pod_spec(workload)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == int(dockerfile_user())
    assert container(workload)["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volume(workload, "tmp") and mount(workload, "tmp")["mountPath"] == "/tmp"
    # Kubernetes' service variables would share streamrec's STREAMREC_ prefix.
    assert pod_spec(workload)["enableServiceLinks"] is False


def test_workers_read_the_models_that_the_retraining_job_writes() -> None:
    claim = the("PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    worker, retrain = the("Deployment"), the("CronJob")
    for workload in (worker, retrain):
        assert volume(workload, "models")["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert mount(worker, "models")["readOnly"] is True
    assert volume(worker, "models")["persistentVolumeClaim"]["readOnly"] is True
    assert not mount(retrain, "models").get("readOnly", False)
    artifacts = the("ConfigMap")["data"]["STREAMREC_ARTIFACTS_DIR"]
    assert PurePosixPath(artifacts).is_relative_to(mount(worker, "models")["mountPath"])
    args = container(retrain)["args"]
    assert args[0] == "retrain"
    assert args[args.index("--out") + 1] == artifacts
    assert retrain["spec"]["concurrencyPolicy"] == "Forbid"


def test_the_sasl_password_reaches_the_workers_as_a_mounted_file() -> None:
    secret = the("Secret")
    password_file = PurePosixPath(the("ConfigMap")["data"]["STREAMREC_SASL_PASSWORD_FILE"])
    for kind in ("Deployment", "CronJob"):
        workload = the(kind)
        credentials = volume(workload, "kafka-credentials")["secret"]
        assert credentials["secretName"] == secret["metadata"]["name"]
        assert str(password_file.parent) == mount(workload, "kafka-credentials")["mountPath"]
        assert password_file.name in secret["stringData"]
        assert not any("PASSWORD" in v["name"] and "value" in v for v in container(workload).get("env", []))


def test_the_configmap_carries_streamrec_env_unchanged() -> None:
    data = the("ConfigMap")["data"]
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values must be strings"
    assert env_file(STREAMREC_ENV).items() <= data.items()


def test_the_topics_streamrec_would_create_match_create_topics_and_the_autoscaler() -> None:
    partitions = script_default("PARTITIONS")
    assert the("ConfigMap")["data"]["STREAMREC_TOPIC_PARTITIONS"] == partitions
    assert the("ScaledObject")["spec"]["maxReplicaCount"] == int(partitions)


def test_the_scaled_object_uses_kedas_documented_fields_and_the_workers_kafka_settings() -> None:
    scaled, authentication = the("ScaledObject"), the("TriggerAuthentication")
    assert scaled["apiVersion"] == authentication["apiVersion"] == KEDA_API
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_FIELDS
    assert spec["scaleTargetRef"]["name"] == the("Deployment")["metadata"]["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert set(metadata) <= KAFKA_TRIGGER_FIELDS
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA trigger metadata values are strings"
    assert int(metadata["lagThreshold"]) > Settings.model_fields["batch_max_events"].default
    assert metadata["allowIdleConsumers"] == "false"
    assert metadata["offsetResetPolicy"] == Settings.model_fields["auto_offset_reset"].default  # a new group's lag

    config = the("ConfigMap")["data"]
    assert metadata["bootstrapServers"] == config["STREAMREC_BOOTSTRAP_SERVERS"]
    assert metadata["consumerGroup"] == config["STREAMREC_CONSUMER_GROUP"]
    assert metadata["topic"] == config.get("STREAMREC_EVENTS_TOPIC", Settings.model_fields["events_topic"].default)
    protocol = config.get("STREAMREC_SECURITY_PROTOCOL", "PLAINTEXT")
    assert metadata.get("tls", "disable") == ("enable" if protocol in ("SSL", "SASL_SSL") else "disable")
    if protocol.startswith("SASL_"):
        assert metadata["sasl"] == KEDA_SASL[config["STREAMREC_SASL_MECHANISM"]]

    assert trigger["authenticationRef"]["name"] == authentication["metadata"]["name"]
    references = authentication["spec"]["secretTargetRef"]
    assert {reference["parameter"] for reference in references} <= KAFKA_AUTH_PARAMETERS
    secret = the("Secret")
    for reference in references:
        assert reference["name"] == secret["metadata"]["name"]
        assert reference["key"] in secret["stringData"]


# --- settings named anywhere ------------------------------------------------------------------------------------


def dockerfile_environment() -> dict[str, str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    return dict(re.findall(r"\b(STREAMREC_[A-Z0-9_]+)=(\S+)", text))


def environment_sources() -> dict[str, dict[str, str]]:
    sources = {
        "deploy/streamrec.env": env_file(STREAMREC_ENV),
        # The ConfigMap through the pods that read it: alone it lacks the user name from the Secret.
        "Deployment": container_environment(the("Deployment")),
        "CronJob": container_environment(the("CronJob")),
        "Dockerfile": dockerfile_environment(),
    }
    for name, service in streamrec_services().items():
        sources[f"compose:{name}"] = compose_environment(service)
    return sources


@pytest.mark.parametrize("source", sorted(environment_sources()))
def test_every_streamrec_variable_is_a_setting_with_a_valid_value(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = environment_sources()[source]
    assert environment, f"{source} sets no variable"
    problems = [problem for name in environment if (problem := setting_problem(name))]
    assert problems == []
    if "STREAMREC_SASL_PASSWORD_FILE" in environment:  # as the Secret volume would hold it
        password = tmp_path / PurePosixPath(environment["STREAMREC_SASL_PASSWORD_FILE"]).name
        password.write_text(the("Secret")["stringData"][password.name] + "\n", encoding="utf-8")
        environment = environment | {"STREAMREC_SASL_PASSWORD_FILE": str(password)}
    # Settings checks each value's type and the Kafka security settings together (protocol, mechanism, user name,
    # password file): a pod with these variables would start.
    settings = settings_from(environment, monkeypatch)
    assert kafka_security_problems(settings) == []


def test_the_setting_check_tells_a_setting_from_a_typo() -> None:
    assert setting_problem("STREAMREC_METRICS_PORT") is None
    assert setting_problem("STREAMREC_TRAIN__TORCH_THREADS") is None
    assert setting_problem("STREAMREC_METRIC_PORT") is not None
    assert setting_problem("STREAMREC_TRAIN__TORCH_THREAD") is not None
    assert setting_problem("STREAMREC_TOP_K__X") is not None


# --- Docker Compose ---------------------------------------------------------------------------------------------


def test_docker_compose_accepts_the_file() -> None:
    if not docker_compose_available():
        pytest.skip("the docker compose plugin is not installed")
    checked = run(["docker", "compose", "-f", str(COMPOSE), "--profile", "train", "--profile", "demo", "config", "-q"])
    assert checked.returncode == 0, checked.stderr


def bind_mounts() -> list[tuple[str, Path]]:
    found = []
    for name, service in compose()["services"].items():
        for entry in service.get("volumes", []):
            source = entry.split(":")[0]
            if source.startswith("."):
                found.append((name, (COMPOSE.parent / source).resolve()))
    return found


@pytest.mark.parametrize(("service", "source"), bind_mounts(), ids=[f"{s}:{p.name}" for s, p in bind_mounts()])
def test_every_file_the_compose_file_mounts_exists(service: str, source: Path) -> None:
    # Docker would create a missing source as an empty directory and the container would fail in a puzzling way.
    assert source.exists(), f"{service} mounts {source.relative_to(REPO)}, which does not exist"


def test_compose_builds_the_repository_image() -> None:
    for name, service in streamrec_services().items():
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == REPO, name
        assert build["dockerfile"] == DOCKERFILE.name, name
        assert service["image"] == f"streamrec:{pyproject_version()}", name


def test_compose_workers_reach_the_broker_and_the_model_of_the_other_services() -> None:
    services = compose()["services"]
    workers = worker_services()
    assert len(workers) >= 2
    for name, worker in workers.items():
        environment = compose_environment(worker)
        assert environment["STREAMREC_BOOTSTRAP_SERVERS"] == "kafka:9092", name
        assert environment["STREAMREC_REPLICATION_FACTOR"] == "1", name  # one broker
        assert "models:/models:ro" in worker["volumes"], name
        conditions = {dependency: d["condition"] for dependency, d in worker["depends_on"].items()}
        assert conditions == {
            "topics": "service_completed_successfully",
            "bootstrap-model": "service_completed_successfully",
        }
        assert f"127.0.0.1:{metrics_port()}/readyz" in " ".join(worker["healthcheck"]["test"]), name
    artifacts = compose_environment(services["trainer"])["STREAMREC_ARTIFACTS_DIR"]
    assert services["trainer"]["profiles"] == ["train"]
    assert services["trainer"]["command"][:3] == ["retrain", "--out", artifacts]
    assert f"--out {artifacts}" in " ".join(services["bootstrap-model"]["command"])
    assert f"{artifacts}/LATEST" in " ".join(services["bootstrap-model"]["command"])


def test_the_compose_topics_service_runs_create_topics_as_it_expects() -> None:
    services = compose()["services"]
    topics = services["topics"]
    script = CREATE_TOPICS.read_text(encoding="utf-8")
    read_by_script = set(re.findall(r"\$\{([A-Z_]+):[-?]", script))
    assert set(topics["environment"]) <= read_by_script, "the service sets a variable the script ignores"
    assert "BOOTSTRAP" in topics["environment"]  # the one the script requires

    (target,) = [entry.split(":")[1] for entry in topics["volumes"] if entry.startswith("./create-topics.sh:")]
    command = " ".join(topics["command"])
    assert f"bash {target}" in command
    assert topics["environment"]["KAFKA_TOPICS"].startswith("/opt/kafka/bin/")
    assert topics["image"] == services["kafka"]["image"]

    # The script creates the topics streamrec uses; on one broker (one replica) min.insync.replicas must be 1.
    topics_used = {field.default for name, field in Settings.model_fields.items() if name.endswith("_topic")}
    assert set(created_topics()) == topics_used
    assert topics["environment"]["MIN_ISR"] == topics["environment"]["RF"] == "1"
    assert all("min.insync.replicas=$MIN_ISR" in rest for rest in created_topics().values() if "insync" in rest)

    for name, worker in worker_services().items():
        environment = compose_environment(worker)
        assert environment["STREAMREC_TOPIC_PARTITIONS"] == topics["environment"]["PARTITIONS"], name
        assert environment["STREAMREC_REPLICATION_FACTOR"] == topics["environment"]["RF"], name
        assert environment["STREAMREC_BOOTSTRAP_SERVERS"] == topics["environment"]["BOOTSTRAP"], name


def test_compose_prometheus_scrapes_every_worker_and_grafana_reads_that_prometheus() -> None:
    (config,) = documents(DEPLOY / "prometheus" / "compose.yml")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "streamrec"  # what the alert rules and the dashboard select
    (targets,) = [static["targets"] for static in job["static_configs"]]
    assert sorted(targets) == sorted(f"{name}:{metrics_port()}" for name in worker_services())

    services = compose()["services"]
    mounts = dict(entry.split(":")[:2] for entry in services["prometheus"]["volumes"] if entry.startswith("."))
    assert mounts["./prometheus/compose.yml"] == "/etc/prometheus/prometheus.yml"
    assert config["rule_files"] == [mounts["./prometheus/alerts.yml"]]

    (datasources,) = documents(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = datasources["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services
    assert datasource["isDefault"] is True  # the dashboard's data source variable picks the default
    (providers,) = documents(DEPLOY / "grafana" / "provisioning" / "dashboards" / "streamrec.yml")
    (provider,) = providers["providers"]
    grafana = dict(entry.split(":")[:2] for entry in services["grafana"]["volumes"] if entry.startswith("."))
    assert PurePosixPath(grafana["./grafana/streamrec.json"]).parent == PurePosixPath(provider["options"]["path"])
    assert grafana["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    # The rules path as the container sees it, pointed at the file in the repository.
    config = (DEPLOY / "prometheus" / "compose.yml").read_text(encoding="utf-8")
    local = tmp_path / "prometheus.yml"
    local.write_text(config.replace("/etc/prometheus/alerts.yml", str(DEPLOY / "prometheus" / "alerts.yml")))
    checked = run(["promtool", "check", "config", str(local)])
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- Dockerfile -------------------------------------------------------------------------------------------------


def dockerfile_user() -> str:
    (user,) = re.findall(r"^USER (\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    return user.split(":")[0]


def test_the_dockerfile_installs_the_pinned_cpu_torch_and_runs_the_cli_as_a_numeric_user() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    (torch,) = [r for r in PYPROJECT["project"]["dependencies"] if re.match(r"torch\b", r)]
    assert re.search(rf"--index-url https://download\.pytorch\.org/whl/cpu {re.escape(torch)}\s", text)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert dockerfile_user().isdigit()  # runAsNonRoot can only verify a numeric user
    assert re.search(rf"^EXPOSE {metrics_port()}$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["streamrec"]' in text and "streamrec" in PYPROJECT["project"]["scripts"]
    assert re.search(rf"^ARG VERSION={re.escape(pyproject_version())}$", text, re.MULTILINE)
    assert "HF_HUB_OFFLINE=1" in text


def test_the_docker_build_context_holds_what_pip_install_needs() -> None:
    rules = [line for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines() if line.strip()]
    rules = [line for line in rules if not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore should exclude everything, then name what the build needs"
    included = {line.removeprefix("!").rstrip("/") for line in rules if line.startswith("!")}
    needed = {
        "pyproject.toml",
        PYPROJECT["project"]["readme"],
        *PYPROJECT["tool"]["setuptools"]["package-dir"].values(),
    }
    assert needed <= included
    copied = set()
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(source.rstrip("/") for source in line.split()[1:-1])
    assert needed <= copied
