"""`distributed.StartTogether`: 2 local processes (2 CPU devices each) run one psum program.

Process 1 compiles "slowly" (its on_compiled hook sleeps): process 0 must wait at the barrier
until process 1 has compiled, then both run the collective. Without the barrier, gloo gives a late
peer a fixed ~30 s to build the communicator (the CI failure this guards against); with a barrier
timeout shorter than the delay, process 0 stops with an error that names the config key.
"""

import subprocess
import sys

from helpers import REPO, subprocess_env
from test_multihost import free_port

WORKER = r'''
import sys, time
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from gigatok_jax import distributed

pid, port, delay, timeout = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
config = ml_collections.ConfigDict({"distributed": {
    "coordinator_address": f"127.0.0.1:{port}", "num_processes": 2, "process_id": pid,
    "initialization_timeout_s": timeout, "heartbeat_timeout_s": 10}})
distributed.initialize(config)
mesh = Mesh(np.asarray(jax.devices()), ("batch",))
x = jax.make_array_from_callback((8,), NamedSharding(mesh, P("batch")),
                                 lambda i: np.arange(8, dtype=np.float32)[i])
real_barrier = distributed.barrier
def barrier(name, timeout_s):
  real_barrier(name, timeout_s)
  print(f"barrier '{name}' passed after {time.time() - t0:.1f} s", flush=True)
distributed.barrier = barrier
def slow_compile(compiled, seconds):
  if pid == 1:
    time.sleep(delay)
total = distributed.StartTogether(jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P())),
                                  "sum", config, on_compiled=slow_compile)
t0 = time.time()
try:
  print("sum", float(total(x)), flush=True)
except Exception as e:
  distributed.abort_on_failure(e, 3)
'''


def run_pair(delay_s: float, timeout_s: float):
  port = str(free_port())
  env = subprocess_env(JAX_NUM_CPU_DEVICES=2)
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), port, str(delay_s),
                             str(timeout_s)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=180)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  return [p.returncode for p in procs], outs


def test_the_fast_process_waits_for_the_slow_compile():
  victim_delay_s = 6.0
  codes, outs = run_pair(victim_delay_s, timeout_s=120)
  assert codes == [0, 0], outs
  for out in outs:
    assert "sum 28.0" in out, out
  waited = float(outs[0].split("barrier 'compiled sum' passed after ")[1].split(" s")[0])
  assert waited >= victim_delay_s - 0.5, outs[0]


def test_a_barrier_timeout_names_the_config_key():
  codes, outs = run_pair(8.0, timeout_s=2)
  assert codes[0] == 3, outs
  assert ("error: process 0 of 2: the other processes did not reach 'compiled sum' within 2 s "
          "(distributed.initialization_timeout_s)") in outs[0], outs[0]
  assert codes[1] != 0, outs[1]     # process 1 is stopped too (JAX's error poller), not left hanging


def test_a_background_compile_is_the_one_the_first_call_uses():
  """compile_in_background (the loop's later phases): the first call waits for it and compiles
  nothing more; an error in the background compile is raised by the first call."""
  import jax
  import numpy as np
  import pytest
  from gigatok_jax import distributed

  backend_compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, _secs, **kw: backend_compiles.append(event)
      if event.endswith("backend_compile_duration") else None)
  mesh = jax.make_mesh((1,), ("d",), devices=jax.devices()[:1])
  logged = []
  step = distributed.StartTogether(jax.jit(lambda x, y: (x * 2 + y, x.sum()), donate_argnums=0),
                                   "step", on_compiled=lambda c, s: logged.append(s))
  # Committed arrays, as the loop's state and batches are (jit out_shardings, device_put).
  # (Uncommitted ones, e.g. a fresh jnp.arange, would make the call compile again.)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  x = jax.device_put(np.arange(6.0, dtype=np.float32).reshape(2, 3), replicated)
  y = jax.device_put(np.ones((2, 3), np.float32), replicated)
  jax.block_until_ready((x, y))
  step.compile_in_background(mesh, *distributed.abstract_like((x, y)))
  step._background.join()
  assert len(logged) == 1 and len(backend_compiles) == 1
  with jax.set_mesh(mesh):
    out, total = step(x, y)
    assert float(total) == 15.0 and out.shape == (2, 3)
    out, _ = step(out, y)
  assert len(logged) == 1 and len(backend_compiles) == 1, backend_compiles

  def broken(x):
    raise ValueError("no such layer")
  failing = distributed.StartTogether(jax.jit(broken), "broken")
  failing.compile_in_background(mesh, distributed.abstract_like(x))
  with pytest.raises(ValueError, match="no such layer"):
    failing(x)
