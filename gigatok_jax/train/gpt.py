"""The GPT train state, its jitted train step and validation loss (docs/spec.md §4.2).

Teacher-forced cross-entropy on all image tokens; class/token/residual/FFN dropout from a key
folded from (seed, step), so a resumed run draws the same masks. Shardings come from the logical
axis names like the tokenizer's (`parallel.py`).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gigatok_jax import build, console, distributed, parallel
from gigatok_jax.models.gpt import GPT
from gigatok_jax.models.layers import block_output_sharding
from gigatok_jax.train import optim


@flax.struct.dataclass
class GPTState:
  step: jax.Array          # int32 scalar
  params: Any              # pure dict of GPT Params
  opt: Any                 # optax state


def token_metrics(logits: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
  """Mean cross-entropy (nats/token) and next-token accuracy; logits (B, T, V) float32."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == tokens)
  return {"loss": loss, "accuracy": accuracy}


class GPTTask:
  """Builds, shards, initialises and steps a GPT training run: the builder's GPT + AdamW."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config = config
    self.mesh = mesh
    self.rules = build.axis_rules(config)
    self.tx, self.schedule = optim.gpt_adamw(config.optim, config.total_steps)
    self.spec = build.gpt(config, mesh)
    abstract = jax.eval_shape(self._init_state)
    self.state_shardings = GPTState(
        step=parallel.replicated(mesh), params=self.spec.shardings,
        opt=parallel.optimizer_shardings(self.tx, abstract.opt, self.spec.shardings, mesh))
    self.abstract_state = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract,
        self.state_shardings)
    self.num_params = self.spec.num_params
    self.batch_shardings = {"tokens": parallel.batch_sharding(mesh, self.rules, 2),
                            "label": parallel.batch_sharding(mesh, self.rules, 1)}
    self._train_step = self._eval_step = None

  def describe(self) -> str:
    m = self.config.model
    return (f"GPT {self.num_params / 1e6:.2f}M params, {m.num_tokens} tokens, vocabulary "
            f"{m.vocab_size}")

  def model(self, params) -> GPT:
    return self.spec.merge(params)

  def _init_state(self) -> GPTState:
    params, _ = self.spec.init(self.config.seed)
    return GPTState(step=jnp.zeros((), jnp.int32), params=params, opt=self.tx.init(params))

  def init_state(self) -> GPTState:
    with jax.set_mesh(self.mesh):
      return jax.jit(self._init_state, out_shardings=self.state_shardings)()

  def phase(self, step: int) -> None:   # pylint: disable=unused-argument
    """The GPT step has no static switches: one executable for the whole run."""
    return None

  def phase_boundaries(self) -> tuple[int, ...]:
    return ()

  def steady_phase(self) -> None:
    return None

  def abstract_extra_args(self) -> tuple[Any, ...]:
    return ()

  def abstract_batch(self, batch_size: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """The train batch as shapes with their shardings (default: the global batch size)."""
    n = batch_size or self.config.global_batch_size
    return {"tokens": jax.ShapeDtypeStruct((n, self.config.model.num_tokens), jnp.int32,
                                           sharding=self.batch_shardings["tokens"]),
            "label": jax.ShapeDtypeStruct((n,), jnp.int32, sharding=self.batch_shardings["label"])}

  def train_step(self, state: GPTState, batch: dict[str, jax.Array]):
    """The pure step (un-jitted): (state, {'tokens', 'label'}) -> (state, metrics)."""
    with block_output_sharding(parallel.batch_axes(self.rules)):
      return self._train_step_body(state, batch)

  def _train_step_body(self, state: GPTState, batch: dict[str, jax.Array]):
    key = jax.random.fold_in(jax.random.key(self.config.seed + 1), state.step)

    def loss_fn(params):
      logits = self.model(params)(batch["tokens"], batch["label"], dropout_key=key)
      m = token_metrics(logits, batch["tokens"])
      return m["loss"], m

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt = self.tx.update(grads, state.opt, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=self.schedule(state.step))
    return GPTState(step=state.step + 1, params=params, opt=opt), metrics

  def jitted_train_step(self, phase: None = None):  # pylint: disable=unused-argument
    """The one jitted train step: training runs it, `--mode=aot` lowers it."""
    if self._train_step is None:
      self._train_step = jax.jit(
          self.train_step, in_shardings=(self.state_shardings, self.batch_shardings),
          out_shardings=(self.state_shardings, parallel.replicated(self.mesh)), donate_argnums=(0,))
    return self._train_step

  def jitted_eval_step(self):
    """(params, batch) -> {'loss', 'accuracy'} without dropout (validation)."""
    if self._eval_step is None:
      self._eval_step = jitted_eval_step(self.spec, self.mesh, self.rules)
    return self._eval_step


def jitted_eval_step(spec: build.ModelSpec, mesh: jax.sharding.Mesh, rules):
  """jit((params, batch) -> {'loss', 'accuracy'}) of the GPT `spec`, without dropout."""
  batch_sh = {"tokens": parallel.batch_sharding(mesh, rules, 2),
              "label": parallel.batch_sharding(mesh, rules, 1)}

  def fn(params, batch):
    return token_metrics(spec.merge(params)(batch["tokens"], batch["label"]), batch["tokens"])
  return jax.jit(fn, in_shardings=(spec.shardings, batch_sh),
                 out_shardings=parallel.replicated(mesh))


def validation(config, mesh, params, step_fn) -> dict[str, float] | None:
  """Mean loss / accuracy over the first `eval_num_batches` validation batches (None: no split)."""
  from gigatok_jax.data import codes  # pylint: disable=import-outside-toplevel
  if not config.data.eval_codes_path:
    return None
  it = codes.make_eval_iterator(config.data, global_batch_size=config.global_batch_size)
  rules = build.axis_rules(config)
  sums, n = {}, 0
  for batch in it:
    if n == config.eval_num_batches:
      break
    m = jax.device_get(step_fn(params, parallel.global_batch(batch, mesh, rules)))
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(v)
    n += 1
  return {f"val_{k}": v / max(n, 1) for k, v in sums.items()} if n else None


class GPTHooks:
  """What the loop does for a GPT: code batches, validation loss every `eval_every_steps`."""
  log_keys = ("loss", "accuracy")

  def __init__(self, task: GPTTask):
    self.task = task
    self.config = task.config
    self.tokens_per_image = task.config.model.num_tokens
    self.eval_step = None

  def load_extra_args(self) -> tuple[Any, ...]:
    return ()

  def train_iterator(self):
    from gigatok_jax.data import codes  # pylint: disable=import-outside-toplevel
    return codes.make_train_iterator(self.config.data,
                                     global_batch_size=self.config.global_batch_size,
                                     seed=self.config.seed)

  def start(self, state: GPTState, step: int, reporter) -> None:
    del state, step, reporter
    self.eval_step = distributed.StartTogether(self.task.jitted_eval_step(), "eval step",
                                               self.config)

  def after_step(self, state: GPTState, step: int, end: int, reporter) -> None:
    if step % self.config.eval_every_steps == 0 or step == end:
      val = validation(self.config, self.task.mesh, state.params, self.eval_step)
      if val is not None:
        reporter.extra_scalars(step, val)
        console.info(f"step {step}: validation loss {val['val_loss']:.4f}, "
                     f"accuracy {val['val_accuracy']:.4f}")

  def final_line(self, metrics) -> str:
    tokens_per_step = self.config.global_batch_size * self.tokens_per_image
    return (f"loss {float(metrics['loss']):.4f}, accuracy {float(metrics['accuracy']):.4f} "
            f"({tokens_per_step} tokens per step)")
