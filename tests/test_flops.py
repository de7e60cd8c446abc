"""Model FLOPs for MFU: matmuls only, from the jaxpr, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np

from dualenc import encoders, flops


def test_matmul_flops_equal_xla_cost_analysis_on_a_pure_matmul_program():
  a, b = jnp.ones((8, 16, 32)), jnp.ones((8, 32, 24))
  fn = lambda a, b: jnp.einsum("bij,bjk->bik", a, b) @ jnp.ones((24, 4))
  analysis = jax.jit(fn).lower(a, b).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  assert flops.matmul_flops(fn, a, b) == 2 * 8 * 16 * 32 * 24 + 2 * 8 * 16 * 24 * 4
  np.testing.assert_allclose(flops.matmul_flops(fn, a, b), analysis["flops"], rtol=0.01)


def test_training_counts_three_times_the_forward_and_scan_multiplies():
  x, w1, w2 = jnp.ones((32, 16)), jnp.ones((16, 64)), jnp.ones((64, 8))
  loss = lambda w1, w2: jnp.sum(jax.nn.gelu(x @ w1) @ w2)  # gelu, sum: not counted
  forward = 2 * 32 * 16 * 64 + 2 * 32 * 64 * 8
  assert flops.matmul_flops(loss, w1, w2) == forward
  # Weight gradients of both layers plus the input gradient of the second: 3x minus the first
  # layer's input gradient (x is a constant).
  assert flops.matmul_flops(jax.grad(loss, argnums=(0, 1)), w1, w2) == 3 * forward - 2 * 32 * 16 * 64
  looped = lambda w1: jax.lax.scan(lambda c, _: (jnp.tanh(c @ w1[:, :16]), None), x, None,
                                   length=5)[0]
  assert flops.matmul_flops(jax.jit(jax.checkpoint(looped)), w1) == 5 * 2 * 32 * 16 * 16


def test_bert_forward_matches_the_analytic_transformer_count():
  cfg = encoders.BertConfig(vocab_size=64, d_model=32, num_heads=4, num_layers=2, d_ff=48,
                            max_position_embeddings=16, dropout_rate=0.0,
                            attention_dropout_rate=0.0)
  module = encoders.BertEncoder(cfg)
  ids = jnp.ones((3, 16), jnp.int32)
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, ids))
  tokens, d, f, length = 3 * 16, 32, 48, 16
  per_layer = 2 * tokens * (4 * d * d + 2 * d * f) + 2 * 2 * tokens * length * d  # + QK, PV
  assert flops.matmul_flops(module.apply, variables, ids, ids) == 2 * per_layer
