"""The GPT train state, its jitted train step and validation loss (spec 4.2).

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
from flax import nnx

from gigatok_jax import parallel
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
  """Builds, shards, initialises and steps a GPT training run."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config = config
    self.mesh = mesh
    self.rules = tuple(tuple(r) for r in config.mesh.axis_rules)
    self.tx, self.schedule = optim.gpt_adamw(config.optim, config.total_steps)
    model = nnx.eval_shape(lambda: self.make_model(0))
    self.graph, abs_params = nnx.split(model, nnx.Param)
    param_sh = parallel.state_shardings(abs_params, mesh, self.rules)
    abstract = jax.eval_shape(self._init_state)
    self.state_shardings = GPTState(
        step=parallel.replicated(mesh), params=param_sh,
        opt=parallel.optimizer_shardings(self.tx, abstract.opt, param_sh, mesh))
    self.abstract_state = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract,
        self.state_shardings)
    self.num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    self.batch_shardings = {"tokens": parallel.batch_sharding(mesh, self.rules, 2),
                            "label": parallel.batch_sharding(mesh, self.rules, 1)}
    self._train_step = self._eval_step = None

  def make_model(self, seed: int) -> GPT:
    return GPT(self.config.model, rngs=nnx.Rngs(seed))

  def model(self, params) -> GPT:
    return nnx.merge(self.graph, params)

  def _init_state(self) -> GPTState:
    params = nnx.to_pure_dict(nnx.state(self.make_model(self.config.seed), nnx.Param))
    return GPTState(step=jnp.zeros((), jnp.int32), params=params, opt=self.tx.init(params))

  def init_state(self) -> GPTState:
    with jax.set_mesh(self.mesh):
      return jax.jit(self._init_state, out_shardings=self.state_shardings)()

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

  def jitted_train_step(self):
    if self._train_step is None:
      self._train_step = jax.jit(
          self.train_step, in_shardings=(self.state_shardings, self.batch_shardings),
          out_shardings=(self.state_shardings, parallel.replicated(self.mesh)), donate_argnums=(0,))
    return self._train_step

  def jitted_eval_step(self):
    """(params, batch) -> {'loss', 'accuracy'} without dropout (validation)."""
    if self._eval_step is None:
      def fn(params, batch):
        return token_metrics(self.model(params)(batch["tokens"], batch["label"]), batch["tokens"])
      self._eval_step = jax.jit(fn, in_shardings=(self.state_shardings.params, self.batch_shardings),
                                out_shardings=parallel.replicated(self.mesh))
    return self._eval_step
