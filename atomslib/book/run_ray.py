"""Run the book's notebooks as Ray tasks: `atoms run --all --executor ray [--address ADDR]`.

Ray is an optional extra (`pip install .[ray]`, pinned in `requirements-ray.lock`); nothing here
imports it until a grid runs. The executor registers itself as `ray` with `atomslib.book.run`.

Where tasks run
---------------
`--address` (or `$RAY_ADDRESS`) connects to a running cluster: `auto` (the `ray start` cluster on
this machine), `HOST:6379` (a cluster's head node) or `ray://HOST:10001` (Ray Client). Without one,
a private single-machine cluster is started for the run, bound to 127.0.0.1 only, with `--jobs N`
CPUs (all cores if N = 1), and stopped when the driver exits. `--jobs N > 1` also caps the tasks in
flight; with the default 1 the cluster's resources decide. Each task asks for `num_gpus=1` when its
`device` parameter is `cuda...` (GPU profiles such as `paper`), else one CPU (`gpus_per_task`,
`cpus_per_task`). Every node needs the same environment as the driver (`pip install .[ray,book,models]`
at the same atomslib version: a worker with another version refuses the task, since the version
enters the run key).

Results come back to the driver
-------------------------------
The driver skips every task whose executed notebook and results file already carry its run key,
so a grid interrupted in any way (Ctrl-C, a killed driver, a lost cluster) resumes where it stopped.
A worker executes its notebook in a private temporary folder that mirrors the part of the driver's
tree the task needs: the files matching the notebook's declared `inputs` (front matter
`atoms: {inputs: [...]}`, e.g. stage-2 chapters reading `results/*.json`) are shipped with the task;
nothing else of the driver's tree is visible. The worker returns every file the notebook wrote there
(executed notebook, results JSON, figures, the partial notebook of a failed run) as bytes, and the
driver writes them atomically into its own output folder, results and executed notebook last, so a
notebook is "current" only once all of its outputs are in place. No shared filesystem is needed for
outputs, and none is assumed.

Large artefacts: `artifacts="shared"` or `"local"` (`--artifacts`)
----------------------------------------------------------------
Activation caches and trained TSAEs live in the notebooks' `cache_dir` and never travel through the
object store. `shared` (default): every worker uses the same `cache_dir`, made absolute on the driver
(`-p cache_dir=/shared/atoms-cache`, else `$ATOMS_CACHE/book`, `atomslib.paths.book_cache`): right on
one machine and on clusters with a shared filesystem mounted at the same path; a model's layers are
harvested once and reused by every chapter. `local`: each worker uses its own node-local cache
(`local_cache_dir`, else `$ATOMS_CACHE/book` on the worker) and harvests what
its tasks need; right on clusters without a shared filesystem (more GPU time, no shared storage).
`cache_dir` is excluded from the run key, so the choice never changes which runs are current.

Failures and retries (`retries`, default 2: at most 3 attempts)
-------------------------------------------------------------
- A worker or node that dies (worker crash, node lost, Ray's out-of-memory killer, a dead kernel) is
  retried, on whatever worker is free: these are properties of the machine, not of the task.
- A notebook that raises in a cell is retried only when the error is one of `retry_errors`
  (out-of-memory errors by default: another GPU may have room); any other cell error is
  deterministic given the run key (same source, parameters and seed), so retrying would only burn
  GPU time. So are errors outside cells (no results file written, results breaking the convention).
A task that still fails is reported (`RayTaskResult.message`: the notebook, the failing cell's first
line, the error, the partial notebook written to the driver's folder, the task's parameters and the
attempts), its previous outputs are left as they were, and the rest of the grid goes on.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .. import __version__
from .run import Executor, register_executor, safe_execute
from .tasks import OUT_RELATIVE, Task, TaskResult, is_current
from .._util import atomic_write_bytes
from ..paths import book_cache
from ..patches import ray_on_loopback

ARTIFACT_MODES = ("shared", "local")
# Parameters that decide which activation cache (and trained units) a task needs: tasks agreeing on
# all of them share artefacts, so the first of such a group runs alone (it builds them), the others after.
ARTEFACT_PARAMS = ("cache_dir", "model", "models", "layers", "site", "corpus", "tokens", "heldout_tokens", "seed")
RETRY_ERRORS = ("OutOfMemoryError", "MemoryError")  # cell errors worth another attempt (torch.cuda OOM is OutOfMemoryError)


@dataclass
class RayTaskResult(TaskResult):
    """A TaskResult with what the cluster did: attempts, the last worker host, time inside the worker
    (`seconds`, comparable to the local executor's) and on the driver (`wall_seconds`, from first
    submission to outputs written), and for a failure its kind and cell."""
    attempts: int = 0
    host: str = ""
    wall_seconds: float = 0.0
    error: dict | None = None  # {"kind": cell|kernel|worker|task, "cell", "ename", "evalue", "source"}


# ----------------------------------------------------------------------------------------------
# Cluster


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def start_local_cluster(num_cpus: int | None = None, *, temp_dir: str | None = None, **init_kwargs: Any):
    """Start a private Ray instance on this machine bound to 127.0.0.1 only (no dashboard, no usage
    stats); return `ray.init`'s context (`.address_info["gcs_address"]` lets other drivers connect).
    It stops with `ray.shutdown()` or when this process exits."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    kwargs = {"include_dashboard": False, "log_to_driver": False, **init_kwargs}
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    with ray_on_loopback():  # Ray's servers bind to the node IP it advertises: loopback here
        ctx = ray.init(address="local", num_cpus=num_cpus, **kwargs)
    ip = ctx.address_info.get("node_ip_address")
    if ip not in ("127.0.0.1", "localhost", "::1"):
        ray.shutdown()
        raise RuntimeError(f"the private Ray instance advertised {ip}, not 127.0.0.1; refusing to run a cluster "
                           "reachable from the network (pass --address to use a cluster you manage)")
    return ctx


# ----------------------------------------------------------------------------------------------
# Worker side


def _error_cell(nb_bytes: bytes) -> dict | None:
    """The first cell of an executed notebook with an error output: index, ename, evalue, first line."""
    try:
        nb = json.loads(nb_bytes)
    except (ValueError, TypeError):
        return None
    cells = [c for c in nb.get("cells", [])  # less the banner papermill adds on failure
             if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    for i, cell in enumerate(cells):
        for out in cell.get("outputs", []) or []:
            if out.get("output_type") == "error":
                src = "".join(cell.get("source", "")) if isinstance(cell.get("source"), list) else cell.get("source", "")
                first = next((ln.strip() for ln in src.splitlines() if ln.strip()), "")
                return {"cell": i, "ename": out.get("ename", ""), "evalue": out.get("evalue", ""), "source": first}
    return None


def _depth(relpaths: Sequence[str]) -> int:
    """How many folders above the output folder the mirrored tree must reach (leading '..')."""
    depth = 0
    for p in relpaths:
        parts = PurePosixPath(os.path.normpath(p).replace(os.sep, "/")).parts
        depth = max(depth, next((i for i, x in enumerate(parts) if x != ".."), len(parts)))
    return depth


def execute_on_worker(payload: dict) -> dict:
    """Run one task in a private temporary tree on this machine; return its outputs as bytes.

    `payload` (built by the driver): `task` (a `Task` as a dict, with driver paths), `files`
    (`{path relative to the output folder: bytes}`, the declared inputs), `depth`, `rel_notebook`,
    `rel_results`, `artifacts`, `local_cache_dir`, `version`.
    """
    t0 = time.monotonic()
    host = socket.gethostname()
    base = {"host": host, "pid": os.getpid(), "files": {}, "error": None}
    if payload["version"] != __version__:
        return {**base, "status": "failed", "seconds": 0.0, "kind": "task",
                "message": f"worker {host} has atomslib {__version__}, the driver {payload['version']}; install the "
                           "same version on every node (the version is part of the run key)"}
    root = Path(tempfile.mkdtemp(prefix="atoms-task-"))
    try:
        out = root.joinpath(*["t"] * payload["depth"], "out")
        out.mkdir(parents=True)
        shipped = {}
        for rel, data in payload["files"].items():
            dest = Path(os.path.normpath(out / rel))
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            shipped[str(dest)] = data
        task = Task(**payload["task"])
        params = dict(task.params)
        if payload["artifacts"] == "local" and "cache_dir" in params:
            params["cache_dir"] = str(book_cache(payload["local_cache_dir"]))
        nb_path, res_path = out / payload["rel_notebook"], out / payload["rel_results"]
        local = dataclasses.replace(task, params=params, out_dir=str(out), notebook_path=str(nb_path),
                                    results_path=str(os.path.normpath(res_path)), force=True, progress=False)
        r = safe_execute(local)
        files = {}
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            data = f.read_bytes()
            if shipped.get(str(f)) != data:  # the inputs come back only if the notebook changed them
                files[os.path.relpath(f, out)] = data
        error = kind = None
        if r.status == "failed":
            partial = nb_path.with_name(f"{task.name}.partial.ipynb")
            error = _error_cell(partial.read_bytes()) if partial.exists() else None
            if error:
                kind = "cell"
            elif any(s in r.message for s in ("DeadKernelError", "Kernel died", "kernel died")):
                kind = "kernel"
            else:
                kind = "task"
        return {**base, "status": r.status, "seconds": time.monotonic() - t0, "kind": kind, "error": error,
                "message": r.message.replace(str(out), "{out}"), "files": files}
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Driver side


class RayExecutor(Executor):
    """Tasks as Ray tasks on a cluster (see the module docstring for resources, outputs, artefacts
    and retries). `init_kwargs` go to `ray.init` (e.g. `runtime_env`, `log_to_driver=True`)."""

    def __init__(self, jobs: int = 1, address: str | None = None, *, retries: int = 2, artifacts: str = "shared",
                 local_cache_dir: str | None = None, cpus_per_task: float = 1, gpus_per_task: float = 1,
                 retry_errors: Sequence[str] = RETRY_ERRORS, max_return_mb: float = 1024,
                 warm_first: bool = True, init_kwargs: dict | None = None):
        super().__init__(jobs, address)
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0 (attempts after the first), got {retries!r}")
        if artifacts not in ARTIFACT_MODES:
            raise ValueError(f"artifacts must be one of {', '.join(ARTIFACT_MODES)} (where workers find activation "
                             f"caches and trained TSAEs), got {artifacts!r}")
        if cpus_per_task <= 0 or gpus_per_task <= 0:
            raise ValueError("cpus_per_task and gpus_per_task must be > 0")
        self.retries, self.artifacts, self.local_cache_dir = retries, artifacts, local_cache_dir
        self.cpus_per_task, self.gpus_per_task = cpus_per_task, gpus_per_task
        self.retry_errors, self.max_return_mb = tuple(retry_errors), max_return_mb
        self.warm_first = warm_first
        self.init_kwargs = dict(init_kwargs or {})

    # -- cluster -------------------------------------------------------------------------------
    def connect(self):
        """Connect to `address` / `$RAY_ADDRESS`, or start a private local cluster; reuse an existing
        connection of this process."""
        try:
            import ray
        except ImportError as e:
            raise RuntimeError("the ray executor needs Ray: pip install 'atomslib[ray]' (or the extra group of "
                               "requirements-ray.lock)") from e
        if ray.is_initialized():
            return ray
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address and address != "local":
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs = {"log_to_driver": False, **self.init_kwargs}
            if _is_loopback(address):  # a cluster bound to 127.0.0.1 on this machine (start_local_cluster)
                with ray_on_loopback():
                    ray.init(address=address, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        else:
            start_local_cluster(self.jobs if self.jobs > 1 else None, **self.init_kwargs)
        return ray

    def resources(self, task: Task) -> dict:
        """Ray resource request of a task: a GPU when its `device` parameter is cuda, else CPUs."""
        gpu = str(task.params.get("device", "cpu")).startswith("cuda")
        return {"num_cpus": self.cpus_per_task, "num_gpus": self.gpus_per_task if gpu else 0}

    # -- payloads and outputs ------------------------------------------------------------------
    def payload(self, task: Task) -> dict:
        """What travels to the worker: the task, its declared input files and where outputs go."""
        out = Path(task.out_dir)
        params = dict(task.params)
        for k in OUT_RELATIVE & set(params):
            if params[k] is not None and os.path.isabs(str(params[k])):
                raise ValueError(f"{k}={params[k]} is outside the output folder {out}: with a cluster executor "
                                 f"{k} must be relative to it (results come back there)")
        if self.artifacts == "shared" and params.get("cache_dir") is not None:
            params["cache_dir"] = str((out / str(params["cache_dir"])).resolve())
        meta = json.loads(task.notebook_json).get("metadata", {}).get("atoms", {}) or {}
        files: dict[str, bytes] = {}
        res_path = Path(task.results_path).resolve()
        for pattern in meta.get("inputs", []):  # the same files make_task hashed into the key
            for f in map(Path, sorted(glob.glob(os.path.normpath(out / pattern.format(**task.params))))):
                if f.is_file() and f.resolve() != res_path:
                    files[os.path.relpath(f, out)] = f.read_bytes()
        rel_nb = os.path.relpath(task.notebook_path, out)
        rel_res = os.path.relpath(task.results_path, out)
        return {"task": dataclasses.asdict(dataclasses.replace(task, params=params)), "files": files,
                "depth": _depth([*files, rel_nb, rel_res]), "rel_notebook": rel_nb, "rel_results": rel_res,
                "artifacts": self.artifacts, "local_cache_dir": self.local_cache_dir, "version": __version__}

    def write_outputs(self, task: Task, files: dict[str, bytes], ok: bool) -> None:
        """Write a worker's files into the driver's output folder, atomically, results and notebook last."""
        out = Path(task.out_dir)
        nb_path, res_path = Path(task.notebook_path).resolve(), Path(task.results_path).resolve()
        partial = nb_path.with_name(f"{task.name}.partial.ipynb")
        dests = {Path(os.path.normpath(out / rel)).resolve(): data for rel, data in files.items()}
        if not ok:  # only the partial notebook; the previous outputs stay as they were
            if partial in dests:
                atomic_write_bytes(partial, dests[partial])
            return
        import nbformat

        nb = nbformat.reads(dests.pop(nb_path).decode(), as_version=4)
        nb.metadata.setdefault("papermill", {})["output_path"] = str(task.notebook_path)  # as the local executor
        results = dests.pop(res_path)
        for dest, data in dests.items():
            if dest != partial:
                atomic_write_bytes(dest, data)
        atomic_write_bytes(res_path, results)
        atomic_write_bytes(nb_path, nbformat.writes(nb).encode())
        partial.unlink(missing_ok=True)

    def artefact_group(self, task: Task) -> str | None:
        """Tasks with the same group need the same activation cache: only for notebooks with a cache_dir."""
        if not self.warm_first or "cache_dir" not in task.params:
            return None
        return json.dumps({k: task.params.get(k) for k in ARTEFACT_PARAMS}, sort_keys=True, default=str)

    def _retryable(self, kind: str | None, error: dict | None) -> bool:
        return kind in ("worker", "kernel") or (kind == "cell" and bool(error) and error["ename"] in self.retry_errors)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, tasks: Sequence[Task], on_result: Callable[[TaskResult], None] | None = None):
        done: list[TaskResult] = []

        def finish(r: TaskResult):
            done.append(r)
            if on_result:
                on_result(r)

        todo = deque()
        for t in tasks:
            if not t.force and is_current(t.notebook_path, t.results_path, t.key):
                finish(RayTaskResult(t.name, "skipped", 0.0, t.key, notebook_path=t.notebook_path,
                                     results_path=t.results_path))
            else:
                todo.append(t)
        if not todo:
            return done
        ray = self.connect()
        from ray import exceptions as rx

        remote = ray.remote(execute_on_worker)
        if any(self.resources(t)["num_gpus"] for t in todo) and not ray.cluster_resources().get("GPU"):
            print(f"atoms run: warning: {sum(bool(self.resources(t)['num_gpus']) for t in todo)} task(s) ask for a "
                  "GPU (device: cuda) but the Ray cluster has none yet; they wait until a GPU node joins "
                  "(Ctrl-C stops; finished tasks are kept)", file=sys.stderr)
        cap = self.jobs if self.jobs > 1 else float("inf")
        in_flight: dict[Any, tuple[Task, int]] = {}
        started: dict[str, float] = {}
        self._t0 = started
        attempts: dict[str, int] = {}

        def submit(t: Task):
            try:
                payload = self.payload(t)
            except Exception as e:  # noqa: BLE001 -- reported, the grid goes on
                if (g := self.artefact_group(t)) is not None and warmer.get(g) == t.key:
                    del warmer[g]  # the next task of the group builds the artefacts
                finish(RayTaskResult(t.name, "failed", 0.0, t.key, f"notebook {t.name}: {type(e).__name__}: {e}",
                                     t.notebook_path, t.results_path, error={"kind": "task"}))
                return
            attempts[t.key] = attempts.get(t.key, 0) + 1
            started.setdefault(t.key, time.monotonic())
            ref = remote.options(**self.resources(t), max_retries=0, retry_exceptions=False,
                                 name=f"atoms:{t.name}").remote(payload)
            in_flight[ref] = (t, attempts[t.key])

        # The first task of an artefact group runs alone (it harvests into the shared cache); the
        # rest of the group waits for it, so two workers never build the same cache at once.
        warm: set[str] = set()
        warmer: dict[str, str] = {}  # group -> key of the task building its artefacts

        def next_task() -> Task | None:
            for i, t in enumerate(todo):
                g = self.artefact_group(t)
                if g is None or g in warm or warmer.get(g, t.key) == t.key:
                    del todo[i]
                    if g is not None and g not in warm:
                        warmer[g] = t.key
                    return t
            return None

        try:
            while todo or in_flight:
                while len(in_flight) < cap and (t := next_task()) is not None:
                    submit(t)
                if not in_flight:
                    warm.update(warmer)  # nothing is building artefacts any more: release every group
                    continue
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    t, attempt = in_flight.pop(ref)
                    try:
                        res = ray.get(ref)
                        kind = res["kind"]
                    except (rx.RayTaskError, rx.RuntimeEnvSetupError, rx.TaskUnschedulableError) as e:
                        res, kind = {"status": "failed", "message": f"{type(e).__name__}: {e}", "error": None}, "task"
                    except rx.RayError as e:  # the worker, its node or its objects were lost
                        res, kind = {"status": "failed", "message": f"worker lost: {type(e).__name__}: "
                                     f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}", "error": None}, "worker"
                    if res["status"] == "failed" and self._retryable(kind, res.get("error")) and attempt <= self.retries:
                        todo.appendleft(t)
                        continue
                    g = self.artefact_group(t)
                    if g is not None and warmer.get(g) == t.key:  # built; or failed: the next one tries
                        warm.add(g) if res["status"] == "ok" else warmer.pop(g)
                    finish(self._result(t, res, kind, attempt))
        except KeyboardInterrupt:
            for ref in in_flight:
                ray.cancel(ref, force=True)
            raise
        return done

    def _result(self, t: Task, res: dict, kind: str | None, attempt: int) -> RayTaskResult:
        wall = time.monotonic() - self._started_at(t)
        files = res.get("files", {})
        size = sum(len(b) for b in files.values()) / 2 ** 20
        ok = res["status"] == "ok"
        r = RayTaskResult(t.name, res["status"], res.get("seconds", 0.0), t.key, "", t.notebook_path, t.results_path,
                          attempts=attempt, host=res.get("host", ""), wall_seconds=wall,
                          error=({"kind": kind, **(res.get("error") or {})} if not ok else None))
        if ok and size > self.max_return_mb:
            ok, r.status = False, "failed"
            res = {**res, "message": f"notebook {t.name} wrote {size:.0f} MiB of outputs (limit {self.max_return_mb:g} "
                                     "MiB); write large artefacts under cache_dir, not the output folder"}
        try:
            self.write_outputs(t, files, ok)
        except Exception as e:  # noqa: BLE001
            ok, r.status = False, "failed"
            res = {**res, "message": f"notebook {t.name}: its outputs could not be written: {type(e).__name__}: {e}"}
        if not ok:
            msg = str(res.get("message") or "failed").replace("{out}", str(t.out_dir))
            msg = msg if msg.startswith(f"notebook {t.name}") else f"notebook {t.name}: {msg}"
            params = json.dumps(t.params, sort_keys=True, default=str)
            where = f" (last on {r.host})" if r.host else ""
            r.message = (f"{msg}\n  parameters: {params}\n  attempts: {attempt} of at most {self.retries + 1}{where}; "
                         f"failure kind: {kind}" + (" (retries exhausted)" if self._retryable(kind, r.error)
                                                     else " (not retried: deterministic)"))
        return r

    def _started_at(self, t: Task) -> float:
        return getattr(self, "_t0", {}).get(t.key, time.monotonic())


register_executor("ray", RayExecutor)
