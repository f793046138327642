"""The initial state's random stream: the one `python train.py` has drawn since the first release
(init key = the first half of split(PRNGKey(seed))), so earlier runs' results reproduce for the same
seed. Issue 15's refactor had switched to key(seed) itself, which changed every initial weight and
the demo's final val mIoU (32.93 -> 43.57 on the same machine)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from deconvnet_jax import train_lib


class _Tiny(nn.Module):
    """Any module with the DeconvNet call signature: the derivation of the key is what is tested."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3))(x)
        return nn.BatchNorm(use_running_average=not train)(x)


def test_initial_params_follow_the_release_stream():
    model, shape = _Tiny(), (1, 8, 8, 3)
    state = jax.jit(lambda: train_lib.create_train_state(model, optax.sgd(0.1), 7, shape))()
    # The pre-refactor derivation, written with the raw-uint32 key API (not jitted: allow ulps).
    init_key, _ = jax.random.split(jax.random.PRNGKey(7))
    want = model.init(init_key, jnp.zeros(shape, jnp.float32), train=False)
    np.testing.assert_allclose(
        np.asarray(state.params["Conv_0"]["kernel"]),
        np.asarray(want["params"]["Conv_0"]["kernel"]),
        rtol=1e-6,
        atol=1e-9,
    )
    assert float(np.abs(np.asarray(state.params["Conv_0"]["kernel"])).max()) > 0.05
    assert jax.tree.structure(state.batch_stats) == jax.tree.structure(want["batch_stats"])
