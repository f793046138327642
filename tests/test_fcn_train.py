"""FCN-8s through the shared training step (train_lib.make_train_step + optim.make_optimizer)."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import fcn8s as fcn8s_config
from deconvnet_jax import optim, train_lib
from deconvnet_jax.models import build_model


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    config = fcn8s_config.get_config()
    config.model.num_classes = 3
    config.model.width_multiplier = 1 / 16
    config.optim.name = "adam"
    config.optim.lr = 0.01
    config.optim.weight_decay = 0.0
    config.optim.accum_steps = 1
    model = build_model(config.model)
    hw = (48, 64)
    tx = optim.make_optimizer(config.optim)
    state = train_lib.create_train_state(model, tx, seed=0, input_shape=(1, *hw, 3))

    # Two flat colours split at column 24 (labels 1 | 2), the top rows ignored.
    image = np.zeros((2, *hw, 3), np.float32)
    image[:, :, :24] = (50.0, -30.0, 10.0)
    image[:, :, 24:] = (-40.0, 20.0, 60.0)
    image += np.random.default_rng(0).normal(0, 5, image.shape).astype(np.float32)
    label = np.broadcast_to(np.where(np.arange(hw[1]) < 24, 1, 2), (2, *hw)).astype(np.int32)
    label[:, :4] = 255
    batch = {"image": jnp.asarray(image), "label": jnp.asarray(label)}

    step = jax.jit(train_lib.make_train_step(model, tx))
    losses = []
    for _ in range(6):
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
        assert int(metrics["valid_pixels"]) == 2 * (hw[0] - 4) * hw[1]
        losses.append(float(metrics["loss"]))
    # The score layers start at zero (as in the FCN release): uniform logits, loss = ln(3).
    np.testing.assert_allclose(losses[0], np.log(3), rtol=1e-6)
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(state.step) == 6
    # BN running statistics were updated by the train-mode passes.
    mean = state.batch_stats["block1"]["conv1_1_bn"]["mean"]
    assert float(jnp.abs(mean).max()) > 0
