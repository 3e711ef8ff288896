#!/usr/bin/env python3
"""Offline validation of the deploy manifests (run by .ci/run; needs kubernetes-validate, PyYAML).

- Core Kubernetes objects of deploy/kubernetes/ and deploy/batch-index/kubernetes/ are checked
  against the Kubernetes OpenAPI schemas shipped by kubernetes-validate, in strict mode (an
  unknown field is an error).
- Custom resources have no schema there. KEDA ScaledObject/TriggerAuthentication, the
  Prometheus Operator's ServiceMonitor and the Kustomization are checked here field by field,
  and against the objects they refer to. Any other kind is an error: nothing is skipped.
- Cross-checks: worker terminationGracePeriodSeconds above MODEL_RUNNER_SHUTDOWN_GRACE_SECS,
  each worker's MODEL_RUNNER_QUEUES equal to its ScaledObject's queues, no URL or token in the
  ConfigMap, batch-index map and reduce agreeing on FIRST_CHECKPOINT/LAST_LEDGER.
- deploy/batch-index/aws-batch/*.json parse as AWS Batch job definitions (RegisterJobDefinition
  fields only, containerProperties with image/command/resources/environment).

Exits 1 on any error, after printing every finding; prints each object it validated.
"""

import glob
import json
import os
import sys

import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
K8S_DIRS = ["deploy/kubernetes", "deploy/batch-index/kubernetes"]
AWS_BATCH_GLOB = "deploy/batch-index/aws-batch/*.json"

# Keys that hold passwords, keys or tokens: they belong in the Secret, never in a ConfigMap.
SECRET_KEYS = {
    "MODEL_RUNNER_STORE",
    "MODEL_RUNNER_QUEUE",
    "MODEL_RUNNER_SINK",
    "MODEL_RUNNER_CHAINS",
    "MODEL_RUNNER_API_TOKENS",
    "MODEL_RUNNER_API_READ_TOKENS",
}

errors = []
validated = []


def error(where, message):
    errors.append(f"{where}: {message}")


def ok(where, how):
    validated.append(f"{where} ({how})")


def get(obj, *path):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def name_of(doc):
    return f"{doc.get('kind')}/{get(doc, 'metadata', 'name')}"


def load_documents():
    docs = []
    for directory in K8S_DIRS:
        files = sorted(glob.glob(os.path.join(ROOT, directory, "*.yaml")))
        if not files:
            error(directory, "no manifests found")
        for path in files:
            rel = os.path.relpath(path, ROOT)
            try:
                with open(path) as f:
                    parsed = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                error(rel, f"invalid YAML: {e}")
                continue
            for doc in parsed:
                if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                    error(rel, "a document without apiVersion/kind")
                    continue
                docs.append((rel, doc))
    return docs


def env_of(container, configmaps):
    """A container's environment as the pod sees it: envFrom ConfigMaps, then env (wins)."""
    env = {}
    for source in container.get("envFrom") or []:
        ref = get(source, "configMapRef", "name")
        if ref is not None:
            env.update(configmaps.get(ref, {}))
    for var in container.get("env") or []:
        env[var["name"]] = var.get("value", "<from " + next(iter(var.get("valueFrom", {"?": 0}))) + ">")
    return env


def check_core(rel, doc):
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        error(rel, f"{name_of(doc)} ({doc['apiVersion']}): no Kubernetes schema and no check "
                   "in validate.py: add one rather than skip it")
        return
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path)
        error(rel, f"{name_of(doc)}: {path}: {e.message}")
        return
    ok(f"{rel} {name_of(doc)}", f"Kubernetes {KUBERNETES_VERSION} schema, strict")


def check_scaled_object(rel, doc, by_kind):
    where = f"{rel} {name_of(doc)}"
    before = len(errors)
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return error(where, "spec missing")
    target = get(spec, "scaleTargetRef", "name")
    if not isinstance(target, str) or not target:
        error(where, "spec.scaleTargetRef.name missing")
    elif target not in by_kind.get("Deployment", {}):
        error(where, f"spec.scaleTargetRef.name {target} names no Deployment here")
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high and high >= 1):
        error(where, f"minReplicaCount {low} / maxReplicaCount {high} out of order")
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        return error(where, "spec.triggers must be a non-empty list")
    for i, trigger in enumerate(triggers):
        at = f"{where} triggers[{i}]"
        kind = trigger.get("type") if isinstance(trigger, dict) else None
        if not isinstance(kind, str) or not kind:
            error(at, "type missing")
            continue
        meta = trigger.get("metadata")
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            error(at, "metadata must map names to strings")
            continue
        if kind == "rabbitmq":
            if not meta.get("queueName"):
                error(at, "metadata.queueName missing")
            if meta.get("mode") != "QueueLength":
                error(at, f"metadata.mode is {meta.get('mode')!r}, expected QueueLength")
            try:
                if float(meta.get("value", "")) <= 0:
                    raise ValueError
            except ValueError:
                error(at, f"metadata.value {meta.get('value')!r} is not a positive number")
            if meta.get("protocol", "auto") not in ("auto", "amqp", "http"):
                error(at, f"metadata.protocol {meta.get('protocol')!r}")
            for secret in ("host", "password", "username"):
                if secret in meta:
                    error(at, f"metadata.{secret} in the manifest: take it from the TriggerAuthentication")
        auth = get(trigger, "authenticationRef", "name")
        if auth is None:
            if kind == "rabbitmq":
                error(at, "authenticationRef.name missing (the host comes from the Secret)")
        elif auth not in by_kind.get("TriggerAuthentication", {}):
            error(at, f"authenticationRef.name {auth} names no TriggerAuthentication here")
    if len(errors) == before:
        ok(where, "KEDA ScaledObject check")


def check_trigger_auth(rel, doc, by_kind):
    where = f"{rel} {name_of(doc)}"
    refs = get(doc, "spec", "secretTargetRef")
    if not isinstance(refs, list) or not refs:
        return error(where, "spec.secretTargetRef must be a non-empty list")
    before = len(errors)
    for i, ref in enumerate(refs):
        for field in ("parameter", "name", "key"):
            if not isinstance(get(ref, field), str) or not get(ref, field):
                error(where, f"spec.secretTargetRef[{i}].{field} missing")
    if len(errors) == before:
        ok(where, "KEDA TriggerAuthentication check")


def check_service_monitor(rel, doc, by_kind):
    where = f"{rel} {name_of(doc)}"
    before = len(errors)
    labels = get(doc, "spec", "selector", "matchLabels")
    if not isinstance(labels, dict) or not labels:
        return error(where, "spec.selector.matchLabels missing")
    endpoints = get(doc, "spec", "endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        return error(where, "spec.endpoints must be a non-empty list")
    services = [
        s for s in by_kind.get("Service", {}).values()
        if labels.items() <= (get(s, "metadata", "labels") or {}).items()
    ]
    if not services:
        error(where, f"spec.selector {labels} selects no Service here")
    for i, endpoint in enumerate(endpoints):
        port = get(endpoint, "port")
        if not isinstance(port, str) or not port:
            error(where, f"spec.endpoints[{i}].port (a port name) missing")
            continue
        for service in services:
            if port not in [p.get("name") for p in get(service, "spec", "ports") or []]:
                error(where, f"Service {get(service, 'metadata', 'name')} has no port named {port}")
    if len(errors) == before:
        ok(where, "ServiceMonitor check")


def check_kustomization(rel, doc, by_kind):
    where = f"{rel} {name_of(doc) if get(doc, 'metadata', 'name') else 'Kustomization'}"
    before = len(errors)
    directory = os.path.dirname(os.path.join(ROOT, rel))
    resources = doc.get("resources")
    if not isinstance(resources, list) or not resources:
        return error(where, "resources must be a non-empty list")
    for resource in resources:
        if not os.path.exists(os.path.join(directory, resource)):
            error(where, f"resource {resource} does not exist")
    present = {
        os.path.basename(p) for p in glob.glob(os.path.join(directory, "*.yaml"))
        if not p.endswith((".example.yaml", "kustomization.yaml"))
    }
    for missing in sorted(present - set(resources)):
        error(where, f"{missing} is not listed in resources (name it *.example.yaml if it must not be)")
    if len(errors) == before:
        ok(where, f"Kustomization check: {len(resources)} resources exist, every manifest listed")


CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): check_scaled_object,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): check_trigger_auth,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): check_kustomization,
}


def cross_checks(docs, by_kind):
    configmaps = {}
    for name, cm in by_kind.get("ConfigMap", {}).items():
        data = cm.get("data") or {}
        configmaps[name] = data
        for key, value in data.items():
            if key in SECRET_KEYS or "TOKEN" in key or "PASSWORD" in key:
                error(f"ConfigMap/{name}", f"{key} belongs in the Secret")
            elif "://" in str(value) and "@" in str(value):
                error(f"ConfigMap/{name}", f"{key} holds a URL with user info: move it to the Secret")
    queues_of = {}
    for so in by_kind.get("ScaledObject", {}).values():
        target = get(so, "spec", "scaleTargetRef", "name")
        queues_of[target] = sorted(
            get(t, "metadata", "queueName") for t in get(so, "spec", "triggers") or []
            if get(t, "type") == "rabbitmq"
        )
    for name, deployment in by_kind.get("Deployment", {}).items():
        pod = get(deployment, "spec", "template", "spec") or {}
        for container in pod.get("containers") or []:
            args = container.get("args") or []
            env = env_of(container, configmaps)
            if not args or args[0] != "worker":
                continue
            where = f"Deployment/{name}"
            grace = int(env.get("MODEL_RUNNER_SHUTDOWN_GRACE_SECS", "30"))
            kill = pod.get("terminationGracePeriodSeconds", 30)
            if kill <= grace:
                error(where, f"terminationGracePeriodSeconds {kill} must exceed "
                             f"MODEL_RUNNER_SHUTDOWN_GRACE_SECS {grace}")
            else:
                ok(where, f"terminationGracePeriodSeconds {kill} > shutdown grace {grace}")
            queues = sorted(q for q in env.get("MODEL_RUNNER_QUEUES", "").split(",") if q)
            if not queues:
                error(where, "a worker Deployment without MODEL_RUNNER_QUEUES consumes every queue")
            elif name not in queues_of:
                error(where, "no ScaledObject scales this worker group")
            elif queues != queues_of[name]:
                error(where, f"consumes {queues} but its ScaledObject watches {queues_of[name]}")
            else:
                ok(where, f"queues {','.join(queues)} = its ScaledObject's triggers")


def batch_index_env(env_list):
    return {e["name"]: e.get("value") for e in env_list or [] if isinstance(e, dict) and "name" in e}


def check_batch_index_ranges(where, envs):
    """map and reduce of one batch-index deployment agree on the range of the index."""
    for key in ("FIRST_CHECKPOINT", "LAST_LEDGER"):
        values = {phase: env.get(key) for phase, env in envs.items()}
        if len(set(values.values())) != 1 or None in values.values():
            error(where, f"{key} differs or is missing between map and reduce: {values}")
            return
    first = int(envs["map"]["FIRST_CHECKPOINT"])
    last = int(envs["map"]["LAST_LEDGER"])
    if last < first:
        error(where, f"LAST_LEDGER {last} < FIRST_CHECKPOINT {first}")
        return
    ok(where, f"map and reduce agree on ledgers {first}-{last}")
    return first, last


def check_batch_index_kubernetes(by_kind):
    jobs = by_kind.get("Job", {})
    envs, counts = {}, {}
    for phase in ("map", "reduce"):
        job = jobs.get(f"batch-index-{phase}")
        if job is None:
            return error("deploy/batch-index/kubernetes", f"Job batch-index-{phase} missing")
        envs[phase] = batch_index_env(get(job, "spec", "template", "spec", "containers")[0].get("env"))
        counts[phase] = get(job, "spec", "completions")
    span = check_batch_index_ranges("deploy/batch-index/kubernetes map/reduce", envs)
    if span is None:
        return
    first, last = span
    batch, map_jobs = int(envs["map"]["BATCH_SIZE"]), counts["map"]
    if first + map_jobs * batch - 1 < last:
        error("deploy/batch-index/kubernetes", f"{map_jobs} map jobs of {batch} ledgers from {first} "
                                               f"stop short of LAST_LEDGER {last}")
    if envs["reduce"].get("MAP_JOB_COUNT") != str(map_jobs):
        error("deploy/batch-index/kubernetes", f"reduce MAP_JOB_COUNT {envs['reduce'].get('MAP_JOB_COUNT')} "
                                               f"!= map completions {map_jobs}")
    if envs["reduce"].get("REDUCE_JOB_COUNT") != envs["map"].get("REDUCE_JOB_COUNT"):
        error("deploy/batch-index/kubernetes", "REDUCE_JOB_COUNT differs between map and reduce")


# RegisterJobDefinition's request fields (AWS Batch API reference).
JOB_DEFINITION_FIELDS = {
    "jobDefinitionName", "type", "parameters", "schedulingPriority", "containerProperties",
    "nodeProperties", "retryStrategy", "propagateTags", "timeout", "tags",
    "platformCapabilities", "eksProperties", "ecsProperties", "consumableResourceProperties",
}
CONTAINER_FIELDS = {
    "image", "vcpus", "memory", "command", "jobRoleArn", "executionRoleArn", "volumes",
    "environment", "mountPoints", "readonlyRootFilesystem", "privileged", "ulimits", "user",
    "instanceType", "resourceRequirements", "linuxParameters", "logConfiguration", "secrets",
    "networkConfiguration", "fargatePlatformConfiguration", "ephemeralStorage",
    "runtimePlatform", "repositoryCredentials", "enableExecuteCommand",
}


def check_aws_batch():
    envs = {}
    files = sorted(glob.glob(os.path.join(ROOT, AWS_BATCH_GLOB)))
    if not files:
        error(AWS_BATCH_GLOB, "no job definitions found")
    for path in files:
        rel = os.path.relpath(path, ROOT)
        before = len(errors)
        try:
            with open(path) as f:
                jd = json.load(f)
        except json.JSONDecodeError as e:
            error(rel, f"invalid JSON: {e}")
            continue
        if not isinstance(jd, dict):
            error(rel, "not a JSON object")
            continue
        for field in sorted(set(jd) - JOB_DEFINITION_FIELDS):
            error(rel, f"unknown top-level field {field} (RegisterJobDefinition would refuse it)")
        if not isinstance(jd.get("jobDefinitionName"), str) or not jd["jobDefinitionName"]:
            error(rel, "jobDefinitionName missing")
        if jd.get("type") not in ("container", "multinode"):
            error(rel, f"type {jd.get('type')!r}, expected container or multinode")
        container = jd.get("containerProperties")
        if not isinstance(container, dict):
            error(rel, "containerProperties missing")
            continue
        for field in sorted(set(container) - CONTAINER_FIELDS):
            error(rel, f"unknown containerProperties field {field}")
        if not isinstance(container.get("image"), str) or not container["image"]:
            error(rel, "containerProperties.image missing")
        command = container.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            error(rel, "containerProperties.command must be a non-empty list of strings")
        resources = {r.get("type"): r.get("value") for r in container.get("resourceRequirements") or []}
        if not ({"VCPU", "MEMORY"} <= resources.keys() or {"vcpus", "memory"} <= container.keys()):
            error(rel, "containerProperties needs VCPU and MEMORY resourceRequirements")
        env = container.get("environment") or []
        names = [e.get("name") for e in env if isinstance(e, dict)]
        if len(names) != len(env) or not all(
            isinstance(e.get("name"), str) and isinstance(e.get("value"), str) for e in env
        ):
            error(rel, "environment entries must be {name, value} strings")
        elif len(set(names)) != len(names):
            error(rel, "environment names a variable twice")
        if len(errors) == before:
            ok(f"{rel} {jd['jobDefinitionName']}", "AWS Batch job definition check")
            if isinstance(command, list) and command[0] in ("map", "reduce"):
                envs[command[0]] = batch_index_env(env)
    if set(envs) == {"map", "reduce"}:
        check_batch_index_ranges("deploy/batch-index/aws-batch map/reduce", envs)


def main():
    docs = load_documents()
    by_kind = {}
    for rel, doc in docs:
        by_kind.setdefault(doc["kind"], {})[get(doc, "metadata", "name")] = doc
    for rel, doc in docs:
        custom = CUSTOM.get((doc["apiVersion"], doc["kind"]))
        if custom is not None:
            custom(rel, doc, by_kind)
        else:
            check_core(rel, doc)
    cross_checks(docs, by_kind)
    check_batch_index_kubernetes(by_kind)
    check_aws_batch()
    for line in validated:
        print(f"ok    {line}")
    for line in errors:
        print(f"ERROR {line}")
    print(f"{len(validated)} checks passed, {len(errors)} errors "
          f"({len(docs)} Kubernetes objects, schemas of Kubernetes {KUBERNETES_VERSION})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
