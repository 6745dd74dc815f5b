"""deploy/k8s: the Kubernetes manifests are valid objects and agree with the code.

Core objects are validated with ``kubernetes-validate`` (the Kubernetes 1.30 OpenAPI
schemas, strict: an unknown field is an error). KEDA's ScaledObject is a custom
resource outside those schemas, and KEDA's CRD is not vendored here: its objects are
checked against the fields KEDA documents as required and their types (``SCALED_OBJECT``
below), and against the code (a queue per ScaledObject, the list it watches, the
Deployment it scales).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as k8s

from pipelines import registry
from tests.support.handlers import ISOLATED_QUEUE

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"
NO_CORE_SCHEMA = {"ScaledObject", "Kustomization"}

# What KEDA requires of a ScaledObject (keda.sh/v1alpha1) with a redis trigger, as its
# documentation states: a target by name, at least one trigger with a type and string
# metadata; the redis scaler needs the list and an address.
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"],
                                   "properties": {"name": {"type": "string"}}},
                **{k: {"type": "integer", "minimum": 0} for k in
                   ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod")},
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "redis"},
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                                "required": ["listName", "listLength"],
                                "oneOf": [{"required": ["address"]}, {"required": ["addressFromEnv"]},
                                          {"required": ["host"]}, {"required": ["hostFromEnv"]}],
                            },
                        },
                    },
                },
            },
        },
    },
}


def _objects() -> list[dict[str, Any]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


OBJECTS = _objects()


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == kind}


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, obj["metadata"]["name"]
    return dict(containers[0])


@pytest.mark.parametrize("obj", [o for o in OBJECTS if o["kind"] not in NO_CORE_SCHEMA],
                         ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_core_objects_are_valid_kubernetes(obj: dict[str, Any]) -> None:
    k8s.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_a_misspelt_field() -> None:
    # (the check above can fail: a typo in a Deployment's spec is an error)
    web = copy.deepcopy(_of_kind("Deployment")["sluice-web"])
    web["spec"]["replica"] = web["spec"].pop("replicas")
    with pytest.raises(k8s.ValidationError):
        k8s.validate(web, KUBERNETES_VERSION, strict=True)


def test_every_queue_has_a_worker_deployment_scaled_on_its_redis_list() -> None:
    deployments, scaled = _of_kind("Deployment"), _of_kind("ScaledObject")
    config = _of_kind("ConfigMap")["sluice-config"]["data"]
    redis = urlsplit(config["REDIS_URL"])
    queues = []
    for obj in scaled.values():
        jsonschema.validate(obj, SCALED_OBJECT)
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        env = {e["name"]: e.get("value") for e in _container(target).get("env", [])}
        for trigger in obj["spec"]["triggers"]:
            meta = trigger["metadata"]
            # the list KEDA watches is the queue the Deployment's workers consume
            assert meta["listName"] == env["WORKER_QUEUES"], obj["metadata"]["name"]
            assert "$(WORKER_QUEUES)" in _container(target)["command"]
            assert config[meta["addressFromEnv"]] == redis.netloc
            assert meta["databaseIndex"] == redis.path.strip("/")
            queues.append(meta["listName"])
        assert obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]
    # every queue of the registered job types (the test job types' own queue aside)
    assert sorted(queues) == sorted(q for q in registry.queues() if q != ISOLATED_QUEUE)
    # the reaper and the purge run on "default": its workers never scale to zero
    assert scaled["sluice-worker-default"]["spec"]["minReplicaCount"] >= 1


def test_one_beat_never_two() -> None:
    beat = _of_kind("Deployment")["sluice-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"  # the old pod is gone before the new one starts
    assert not _of_kind("ScaledObject").get("sluice-beat")


def test_no_secret_in_the_manifests_only_references() -> None:
    assert not _of_kind("Secret")
    assert not any(word in key for key in _of_kind("ConfigMap")["sluice-config"]["data"]
                   for word in ("SECRET", "PASSWORD", "DATABASE_URL"))
    for obj in [*_of_kind("Deployment").values(), *_of_kind("Job").values()]:
        refs = [r["secretRef"]["name"] for r in _container(obj).get("envFrom", []) if "secretRef" in r]
        assert refs == ["sluice-secrets"], obj["metadata"]["name"]


def test_every_pod_stores_files_in_the_bucket_and_shares_no_volume() -> None:
    # Uploads go to S3 (docs/STORAGE.md): a worker on any node reads what any web pod stored
    config = _of_kind("ConfigMap")["sluice-config"]["data"]
    assert config["SLUICE_STORAGE"] == "s3" and config["SLUICE_S3_BUCKET"]
    assert "SLUICE_MEDIA_ROOT" not in config
    assert not _of_kind("PersistentVolumeClaim")
    for obj in [*_of_kind("Deployment").values(), *_of_kind("Job").values()]:
        refs = [r["configMapRef"]["name"] for r in _container(obj).get("envFrom", []) if "configMapRef" in r]
        assert refs == ["sluice-config"], obj["metadata"]["name"]
        assert not _container(obj).get("volumeMounts") and not obj["spec"]["template"]["spec"].get("volumes")


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    # (the migration Job is applied apart, once per release, before the rest)
    expected = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "migrate-job.yaml"}
    assert set(kustomization["resources"]) == expected
