"""A stand-in Kubernetes for Trellis's tests. NOT a real kube-apiserver.

The API is kmock's in-memory emulator (PyPI `kmock`): objects stored as JSON, served on
get/list/create/patch/delete. Around it, this file plays the parts a real cluster has and
the emulator lacks, the way Trellis meets them:
- the API server's checks: every object a client creates is validated against the
  Kubernetes OpenAPI schema (`kubernetes-validate`, strict: unknown fields are errors) and
  refused with 422 when invalid; a namespace must exist (404); a namespace labelled
  `trellis.test/forbidden: "true"` refuses writes with 403, as RBAC would; uid and
  creationTimestamp are filled in;
- the Job controller: one pod per try (`backoffLimit`), `activeDeadlineSeconds`, the
  Complete/Failed conditions, the TTL after finished, and garbage collection of the pods
  of a deleted Job;
- the kubelet: runs a pod's container command as a local process (the image is not
  pulled: images on a `.invalid` registry fail with ErrImagePull/ImagePullBackOff), with
  env, envFrom, config maps and secrets resolved; serves `pods/<name>/log`, following;
  sends SIGTERM then SIGKILL after the grace period to the pod of a deleted Job. The pod
  annotation `trellis.test/fault` makes the kubelet report `oom-killed` or `evicted`.

Every validation is appended to `<dir>/validated.jsonl`; `<dir>/url` appears when it is up.

    python3 cluster.py DIR
"""
import asyncio
import base64
import datetime
import json
import os
import pathlib
import random
import signal
import string
import sys
import time
import uuid

import aiohttp
import aiohttp.web
import kmock
import kubernetes_validate

VERSION = "1.33.0"
DIR = pathlib.Path(sys.argv[1])
LOGS = DIR / "logs"
CONTROLLER = {"X-Trellis-Test": "controller"}
FORBIDDEN = "trellis.test/forbidden"
FAULT = "trellis.test/fault"


def now():
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ApiError(status, reason, message):
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


class Cluster(kmock.KubernetesEmulator):
    """The emulator with the API server's checks and the kubelet's log endpoint."""

    namespaces: dict = {"default": {}, "kube-system": {}}
    processes: dict = {}  # (namespace, pod) -> asyncio.subprocess.Process
    graces: dict = {}  # (namespace, job) -> grace seconds asked for by its deletion

    async def __call__(self, raw):
        # kmock cannot parse /api/v1/namespaces[/<name>] (it reads "namespaces" as the
        # start of a namespaced path): namespaces are kept here.
        parts = [p for p in raw.path.split("/") if p]
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
            return await self.serve_namespaces(raw, parts[3] if len(parts) == 4 else None)
        return await super().__call__(raw)

    async def _render_error(self, exc):
        # The API server's reasons (kmock's own are prose), which clients test for.
        if isinstance(exc, kmock.KubernetesNotFoundError) and exc.reason != "NotFound":
            exc = ApiError(404, "NotFound", "the server could not find the requested resource")
        elif isinstance(exc, kmock.KubernetesError) and exc.status == 409:
            exc = ApiError(409, "AlreadyExists", "object already exists")
        return await super()._render_error(exc)

    async def serve_namespaces(self, raw, name):
        def obj(ns):
            return {"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "labels": self.namespaces[ns]}, "status": {"phase": "Active"}}
        if raw.method == "POST":
            body = await raw.json()
            ns = body.get("metadata", {}).get("name")
            self.namespaces[ns] = body.get("metadata", {}).get("labels") or {}
            return aiohttp.web.json_response(obj(ns), status=201)
        if name is None:
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {},
                                              "items": [obj(ns) for ns in self.namespaces]})
        if name not in self.namespaces:
            return await self._render_error(ApiError(404, "NotFound", f'namespaces "{name}" not found'))
        return aiohttp.web.json_response(obj(name))

    async def _handle(self, request):
        res = request.resource
        plural = res.plural if res is not None else None
        if plural == "pods" and request.subresource == "log":
            return await self.serve_log(request)
        if request.action == kmock.action.CREATE and res is not None:
            self.admit(request, plural)
        if request.action == kmock.action.DELETE and plural == "jobs" and request.name:
            grace = (request.data or {}).get("gracePeriodSeconds")
            if grace is not None:
                self.graces[(request.namespace, request.name)] = grace
        if request.action in (kmock.action.UPDATE, kmock.action.DELETE) and request.namespace:
            if request.headers.get("X-Trellis-Test") != "controller":
                self.authorize(request.namespace, plural, request.action)
        return await super()._handle(request)

    def authorize(self, namespace, plural, verb):
        if namespace not in self.namespaces:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
        if self.namespaces[namespace].get(FORBIDDEN) == "true":
            raise ApiError(
                403,
                "Forbidden",
                f'{plural} is forbidden: User "system:serviceaccount:default:trellis" '
                f'cannot {str(verb).lower()} resource "{plural}" in the namespace "{namespace}"',
            )

    def admit(self, request, plural):
        obj = request.data if isinstance(request.data, dict) else {}
        meta = obj.setdefault("metadata", {})
        namespace = request.namespace or meta.get("namespace")
        if namespace is not None and request.headers.get("X-Trellis-Test") != "controller":
            self.authorize(namespace, plural, "create")
        if request.headers.get("X-Trellis-Test") != "controller":
            try:
                kubernetes_validate.validate(obj, VERSION, strict=True)
                error = None
            except kubernetes_validate.ValidationError as e:
                error = f"{obj.get('kind')}.{plural} is invalid: {e.message} at {list(e.path)}"
            except kubernetes_validate.SchemaNotFoundError as e:
                error = f"no schema for {obj.get('kind')}: {e}"
            with open(DIR / "validated.jsonl", "a") as f:
                f.write(json.dumps({"kind": obj.get("kind"), "name": meta.get("name"), "at": time.time(),
                                    "error": error, "object": obj}) + "\n")
            if error:
                raise ApiError(422, "Invalid", error)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        meta.setdefault("resourceVersion", "1")
        if namespace is not None:
            meta.setdefault("namespace", namespace)

    async def serve_log(self, request):
        namespace, name = request.namespace, request.name
        path = LOGS / f"{namespace}_{name}.log"
        key = (namespace, name)
        if not path.exists():
            pods = [o for (r, ns, n), o in self.objects.items()
                    if r.plural == "pods" and ns == namespace and n == name and not o.deleted]
            if not pods:
                raise ApiError(404, "NotFound", f'pods "{name}" not found')
            raise ApiError(400, "BadRequest",
                           f'container "step" in pod "{name}" is waiting to start: ContainerCreating')
        follow = request.params.get("follow") in ("true", "1")
        raw = request._raw_request
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(raw)
        offset = 0
        while True:
            running = key in self.processes and self.processes[key].returncode is None
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk:
                offset += len(chunk)
                await response.write(chunk)
            elif not follow or not running:
                break
            else:
                await asyncio.sleep(0.05)
        await response.write_eof()
        return response


class Controllers:
    """The Job controller, the garbage collector and the kubelet, over HTTP."""

    def __init__(self, url, cluster):
        self.url, self.cluster = url, cluster
        self.started = {}  # (namespace, pod) -> task

    async def run(self):
        async with aiohttp.ClientSession(base_url=self.url, headers=CONTROLLER) as http:
            self.http = http
            while True:
                # kmock keeps every request for assertions, and its reactions scan them:
                # this stand-in asserts nothing on them, so they are dropped.
                self.cluster._requests.clear()
                try:
                    await self.pass_once()
                except Exception as e:  # keep going: a controller never dies of one object
                    print("controller:", repr(e), file=sys.stderr, flush=True)
                await asyncio.sleep(0.05)

    async def get(self, path):
        async with self.http.get(path) as r:
            return await r.json() if r.status == 200 else None

    async def patch(self, path, body):
        async with self.http.patch(path, json=body) as r:
            return r.status

    async def pass_once(self):
        jobs = (await self.get("/apis/batch/v1/jobs") or {}).get("items", [])
        pods = (await self.get("/api/v1/pods") or {}).get("items", [])
        live = {(j["metadata"]["namespace"], j["metadata"]["name"]): j for j in jobs}
        for pod in pods:
            meta = pod["metadata"]
            owner = (meta["namespace"], (meta.get("labels") or {}).get("job-name"))
            if owner[1] and owner not in live:
                await self.collect(pod, self.cluster.graces.get(owner))
        for key, job in live.items():
            await self.reconcile(key, job, [p for p in pods if p["metadata"]["namespace"] == key[0]
                                            and (p["metadata"].get("labels") or {}).get("job-name") == key[1]])

    async def reconcile(self, key, job, pods):
        namespace, name = key
        spec, status = job.get("spec", {}), job.get("status") or {}
        base = f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
        conditions = status.get("conditions") or []
        if conditions:
            ttl = spec.get("ttlSecondsAfterFinished")
            done = status.get("completionTime") or conditions[-1].get("lastTransitionTime")
            if ttl is not None and done and age(done) >= ttl:
                async with self.http.delete(base, json={"propagationPolicy": "Background"}):
                    pass
            return
        if not status.get("startTime"):
            await self.patch(base + "/status", {"status": {"startTime": now(), "active": 0}})
            status["startTime"] = now()
        phases = [p.get("status", {}).get("phase") for p in pods]
        succeeded, failed = phases.count("Succeeded"), phases.count("Failed")
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and age(status["startTime"]) >= deadline:
            for pod in pods:
                await self.collect(pod, 0)
            return await self.finish(base, "Failed", "DeadlineExceeded",
                                     "Job was active longer than specified deadline", succeeded, failed)
        if succeeded:
            return await self.finish(base, "Complete", None, None, succeeded, failed)
        if failed > spec.get("backoffLimit", 6):
            return await self.finish(base, "Failed", "BackoffLimitExceeded",
                                     "Job has reached the specified backoff limit", succeeded, failed)
        active = [p for p in pods if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
        if not active:
            await self.create_pod(namespace, name, job)
        await self.patch(base + "/status", {"status": {"active": len(active), "failed": failed}})

    async def finish(self, base, kind, reason, message, succeeded, failed):
        condition = {"type": kind, "status": "True", "lastTransitionTime": now()}
        if reason:
            condition.update(reason=reason, message=message)
        status = {"active": 0, "succeeded": succeeded, "failed": failed, "conditions": [condition]}
        if kind == "Complete":
            status["completionTime"] = now()
        await self.patch(base + "/status", {"status": status})

    async def create_pod(self, namespace, job_name, job):
        template = job["spec"]["template"]
        meta = dict(template.get("metadata") or {})
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        meta["name"] = f"{job_name}-{suffix}"
        meta["namespace"] = namespace
        meta["labels"] = {**(meta.get("labels") or {}), "job-name": job_name,
                          "batch.kubernetes.io/job-name": job_name}
        meta["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                    "uid": job["metadata"].get("uid", ""), "controller": True}]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"],
               "status": {"phase": "Pending"}}
        async with self.http.post(f"/api/v1/namespaces/{namespace}/pods", json=pod) as r:
            if r.status != 200:
                return
        key = (namespace, meta["name"])
        self.started[key] = asyncio.create_task(self.kubelet(pod))

    async def collect(self, pod, grace):
        """Stops a pod's process (SIGTERM, SIGKILL after the grace) and deletes the pod."""
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        process = self.cluster.processes.get((namespace, name))
        if process is not None and process.returncode is None:
            if grace is None:
                grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            try:
                os.killpg(process.pid, signal.SIGTERM)
                await asyncio.wait_for(process.wait(), timeout=grace)
            except (asyncio.TimeoutError, ProcessLookupError):
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await process.wait()
        async with self.http.delete(f"/api/v1/namespaces/{namespace}/pods/{name}"):
            pass

    async def kubelet(self, pod):
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        base = f"/api/v1/namespaces/{namespace}/pods/{name}/status"
        container = pod["spec"]["containers"][0]
        image = container.get("image", "")
        if image.split("/")[0].endswith(".invalid"):
            for reason in ("ErrImagePull", "ImagePullBackOff"):
                await self.patch(base, {"status": {"phase": "Pending", "containerStatuses": [
                    waiting(container, reason, f'Back-off pulling image "{image}"')]}})
                await asyncio.sleep(0.05)
            return
        try:
            env = await self.environment(namespace, name, container)
        except LookupError as e:
            await self.patch(base, {"status": {"phase": "Pending", "containerStatuses": [
                waiting(container, "CreateContainerConfigError", str(e))]}})
            return
        argv = (container.get("command") or []) + (container.get("args") or [])
        if not argv:
            argv = ["true"]  # the image's own command: there is no image here
        cwd = container.get("workingDir")
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(LOGS / f"{namespace}_{name}.log", "wb")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=log, stderr=log, env=env, start_new_session=True,
                cwd=cwd if cwd and os.path.isdir(cwd) else None)
        except OSError as e:
            log.write(f"exec failed: {e}\n".encode())
            log.close()
            await self.terminated(base, container, pod, 128, "StartError", str(e))
            return
        self.cluster.processes[(namespace, name)] = process
        await self.patch(base, {"status": {"phase": "Running", "startTime": now(), "containerStatuses": [
            {"name": container["name"], "image": image, "imageID": "", "ready": True,
             "restartCount": 0, "started": True, "state": {"running": {"startedAt": now()}}}]}})
        code = await process.wait()
        log.close()
        code = 128 - code if code < 0 else code
        await self.terminated(base, container, pod, code, "Completed" if code == 0 else "Error", None)

    async def terminated(self, base, container, pod, code, reason, message):
        fault = (pod["metadata"].get("annotations") or {}).get(FAULT)
        status = {"phase": "Succeeded" if code == 0 else "Failed"}
        if fault == "oom-killed":
            code, reason, status["phase"] = 137, "OOMKilled", "Failed"
        if fault == "evicted":
            code, reason = 137, "ContainerStatusUnknown"
            status.update(phase="Failed", reason="Evicted",
                          message="The node was low on resource: memory. Threshold quantity: 100Mi.")
        state = {"exitCode": code, "reason": reason, "startedAt": now(), "finishedAt": now()}
        if message:
            state["message"] = message
        status["containerStatuses"] = [{"name": container["name"], "image": container.get("image", ""),
                                        "imageID": "", "ready": False, "restartCount": 0,
                                        "state": {"terminated": state}}]
        await self.patch(base, {"status": status})

    async def environment(self, namespace, pod_name, container):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSTNAME": pod_name}

        async def source(kind, name):
            plural = "configmaps" if kind == "configmap" else "secrets"
            obj = await self.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
            if obj is None:
                raise LookupError(f'{kind} "{name}" not found')
            data = obj.get("data") or {}
            if plural == "secrets":
                data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            return data

        for item in container.get("envFrom") or []:
            ref = item.get("configMapRef") or item.get("secretRef")
            kind = "configmap" if "configMapRef" in item else "secret"
            for k, v in (await source(kind, ref["name"])).items():
                env[item.get("prefix", "") + k] = v
        for item in container.get("env") or []:
            if "valueFrom" not in item:
                env[item["name"]] = item.get("value", "")
                continue
            frm = item["valueFrom"]
            if "fieldRef" in frm:
                path = frm["fieldRef"]["fieldPath"]
                env[item["name"]] = {"metadata.name": pod_name, "metadata.namespace": namespace}.get(path, "")
                continue
            ref = frm.get("configMapKeyRef") or frm.get("secretKeyRef")
            kind = "configmap" if "configMapKeyRef" in frm else "secret"
            data = await source(kind, ref["name"])
            if ref["key"] not in data:
                raise LookupError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
            env[item["name"]] = data[ref["key"]]
        return env


def waiting(container, reason, message):
    return {"name": container["name"], "image": container.get("image", ""), "imageID": "",
            "ready": False, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}


def age(stamp):
    then = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return (datetime.datetime.now(tz=datetime.UTC) - then).total_seconds()


async def main():
    DIR.mkdir(parents=True, exist_ok=True)
    async with Cluster(strict=False) as cluster, kmock.Server(cluster, host="127.0.0.1", port=0) as srv:
        (DIR / "url.tmp").write_text(str(srv.url))
        (DIR / "url.tmp").rename(DIR / "url")
        controllers = asyncio.create_task(Controllers(str(srv.url), cluster).run())
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        controllers.cancel()
        for process in cluster.processes.values():
            if process.returncode is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


asyncio.run(main())
