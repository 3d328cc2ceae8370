"""Mesh and shardings: data parallel and FSDP over a jax.sharding.Mesh with named shardings; multi-host setup.

`train.mesh` maps the axes `data` and `fsdp` to sizes (-1: every device left). `{}` (the default) is the plain
single-device loop, untouched. `{data: -1}` is data parallel: params and optimizer state replicated, the batch
split over every device. `{data: 2, fsdp: 4}` adds FSDP: every array of rank >= 2 in the train state (params and
Adam moments alike: the spec is a function of the shape alone) is split over `fsdp` along its largest dimension
that divides; vectors and what does not divide stay replicated. The batch is split over data x fsdp. XLA's
sharding propagation inserts the all-gathers and reduce-scatters.

Arrays become global jax.Arrays with `make_array_from_callback`: every process holds the same host value (the
same seed, the same step-addressed batch) and transfers only the slices its own devices hold. Checkpoints restore
onto whatever mesh the state was placed on (orbax reads the target sharding from the abstract state), so a run
saved on one mesh resumes on another. `train.mesh` and `train.distributed` are placement, not identity
(config.PLACEMENT_KEYS): the same run directory resumes under either.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from testbed import multihost
from testbed.config import MESH_AXES, Config, ConfigError
from testbed.data.base import LazyBatch

BATCH_AXES = MESH_AXES  # the batch dimension is split over data x fsdp


# --- multi-host ---------------------------------------------------------------------------------------------

def wants_distributed(mode: bool | None, env: Mapping[str, str] = os.environ) -> bool:
    """train.distributed=null: a coordinator is named, this process is one task of a multi-task SLURM job step
    (srun: SLURM_STEP_ID and SLURM_PROCID set), or a TPU VM has workers. An salloc shell also has SLURM_NTASKS > 1
    but no step: its processes train alone rather than wait for tasks that never start."""
    if mode is not None:
        return mode
    in_step = bool(env.get("SLURM_STEP_ID")) and bool(env.get("SLURM_PROCID"))
    slurm_tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
    return (bool(env.get("JAX_COORDINATOR_ADDRESS")) or (in_step and slurm_tasks.isdigit() and int(slurm_tasks) > 1)
            or "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def initialize(cfg: Config, env: Mapping[str, str] = os.environ) -> None:
    """jax.distributed.initialize() once per process, before any device is touched, when the run spans hosts.

    Never a hang: jax aborts the whole process (no Python exception) when its own timeout passes, so a process
    whose coordinator does not answer raises a ConfigError before calling it, and past TESTBED_DISTRIBUTED_TIMEOUT_S
    (default 300; testbed/multihost.py) the same one line is printed and the process exits 2 while jax still waits."""
    if jax.distributed.is_initialized() or not wants_distributed(cfg.train.distributed, env):
        return
    kw = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):  # explicit: coordinator, count and rank (no cluster auto-detection)
        kw["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
        for name, key in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
            if env.get(key):
                kw[name] = int(env[key])
    elif "SLURM_STEP_ID" in env:
        kw["local_device_ids"] = multihost.slurm_local_devices(env)
    timeout, t0 = multihost.timeout_s(env), time.monotonic()
    fail = multihost.failure(timeout, kw, env)
    if kw.get("coordinator_address") and kw.get("process_id", 0) != 0:
        multihost.reach(kw["coordinator_address"], timeout, fail)
    left = max(1, int(timeout - (time.monotonic() - t0)))
    watchdog = threading.Timer(left, multihost.give_up, (f"testbed train: error: {fail}",))
    watchdog.daemon = True
    watchdog.start()
    try:  # what is not given here jax detects from the SLURM, TPU or MPI environment
        jax.distributed.initialize(**kw, initialization_timeout=left + 60)
    finally:
        watchdog.cancel()


def is_primary() -> bool:
    """Process 0 writes the run directory's metrics, summary and config; orbax coordinates checkpoints."""
    return jax.process_index() == 0


# --- the mesh -------------------------------------------------------------------------------------------------

def mesh_shape(mesh_cfg: Mapping[str, int], n_devices: int) -> tuple[int, ...]:
    """Axis sizes in MESH_AXES order, -1 filled with the devices left; ConfigError unless they use every device."""
    sizes = [mesh_cfg.get(a, 1) for a in MESH_AXES]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % fixed:
            raise ConfigError(f"train.mesh: {dict(mesh_cfg)} cannot fill {n_devices} devices (the fixed axes "
                              f"take {fixed}); pick sizes whose product divides {n_devices}")
        sizes = [n_devices // fixed if s == -1 else s for s in sizes]
    if math.prod(sizes) != n_devices:
        raise ConfigError(f"train.mesh: {dict(mesh_cfg)} needs {math.prod(sizes)} devices but {n_devices} are "
                          "visible; make the product of the sizes equal the device count, or set one axis to -1")
    return tuple(sizes)


def make_mesh(cfg: Config) -> Mesh | None:
    """The run's mesh over every visible device (all processes), or None for the plain single-device loop."""
    if not cfg.train.mesh:
        return None
    shape = mesh_shape(cfg.train.mesh, jax.device_count())
    micro = cfg.train.batch_size // cfg.train.grad_accum
    if micro % math.prod(shape):
        raise ConfigError(f"train.batch_size: {micro} sequences per microbatch do not split over the mesh's "
                          f"data x fsdp = {math.prod(shape)} devices; make batch_size / grad_accum a multiple of it")
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def param_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """FSDP: split the largest dimension that `fsdp` divides (the first on ties); vectors and the rest replicate."""
    dims = [d for d in range(len(shape)) if shape[d] % fsdp == 0] if fsdp > 1 and len(shape) >= 2 else []
    if not dims:
        return PartitionSpec()
    split = max(dims, key=lambda d: shape[d])
    return PartitionSpec(*("fsdp" if d == split else None for d in range(len(shape))))


def to_global(x, sharding: NamedSharding) -> jax.Array:
    """A host (or single-device) value as a global array: each process fills only its own devices' slices. A lazy
    view (testbed.data.base.LazyBatch: has .shape, reads what it is indexed with) is never materialized whole."""
    x_host = x if isinstance(x, LazyBatch) else np.asarray(x)
    return jax.make_array_from_callback(tuple(x_host.shape), sharding, lambda idx: np.asarray(x_host[idx]))


class Placement:
    """Where the loop's arrays live on a mesh: state by shape (param_spec), batches split, the rest replicated."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.fsdp = mesh.shape["fsdp"]
        self.ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self._any = jax.jit(jnp.any, out_shardings=self.replicated)

    def describe(self) -> dict:
        return {"mesh": dict(self.mesh.shape), "devices": self.mesh.size, "processes": jax.process_count()}

    def state_shardings(self, state):
        return jax.tree.map(lambda x: NamedSharding(self.mesh, param_spec(np.shape(x), self.fsdp)), state)

    def put(self, tree, shardings=None):
        """Places a tree (replicated unless `shardings`, a matching tree, says otherwise)."""
        if shardings is None:
            return jax.tree.map(lambda x: to_global(x, self.replicated), tree)
        return jax.tree.map(to_global, tree, shardings)

    def batch_sharding(self, shape: tuple[int, ...], axis: int) -> NamedSharding:
        """Rows of `axis` split over data x fsdp; replicated when they do not divide (a small eval set)."""
        if shape[axis] % self.ways:
            return self.replicated
        return NamedSharding(self.mesh, PartitionSpec(*(BATCH_AXES if d == axis else None for d in range(len(shape)))))

    def batch(self, x, axis: int) -> jax.Array:
        return to_global(x, self.batch_sharding(np.shape(x), axis))

    def jit_step(self, step: Callable, state, batch_shape: tuple[int, ...]) -> Callable:
        """The pure step jitted with the state's shardings in and out (so donation keeps the layout)."""
        s = self.state_shardings(state)
        b = self.batch_sharding(batch_shape, axis=1)
        return jax.jit(step, donate_argnums=0, in_shardings=(s, b), out_shardings=(s, self.replicated))

    def vote(self, flag: bool) -> jax.Array:
        """Any process's flag, as a replicated device scalar: read with the step's metrics, so every process
        agrees on the step to stop at without an extra host sync."""
        flags = np.full((self.mesh.size,), flag)
        return self._any(to_global(flags, NamedSharding(self.mesh, PartitionSpec(BATCH_AXES))))


def placement(cfg: Config) -> Placement | None:
    mesh = make_mesh(cfg)
    return None if mesh is None else Placement(mesh)
