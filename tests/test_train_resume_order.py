"""Resume order (workdir latest > config.resume > config.init_from > scratch), init from a
torchvision VGG16 .pth / a DeconvNet or FCN-8s .pth / a stage-1 run, and the keep-last-N-plus-best
checkpoint policy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import default
from deconvnet_jax import checkpoint, optim, parallel, train_lib, weights
from deconvnet_jax.models import build_model
from deconvnet_jax.torch import weights as torch_weights


def _setup(name="deconvnet"):
    config = default.get_config()
    config.model.name = name
    config.model.width_multiplier = 1 / 32
    config.optim.accum_steps = 1
    mesh = parallel.make_mesh(config.mesh)
    model = build_model(config.model)
    shape = (1, 224, 224, 3)
    tx = optim.make_optimizer(config.optim)
    init = functools.partial(train_lib.create_train_state, model, tx, 0, shape)
    shapes = jax.eval_shape(init)
    shardings = parallel.state_shardings(shapes, mesh)
    abstract = checkpoint.abstract_state(shapes, shardings)
    return config, jax.jit(init, out_shardings=shardings), abstract


def _restore_or_init(config, ckpt, abstract, init):
    init_from = functools.partial(weights.init_state_from, model=config.model.name)
    return checkpoint.restore_or_init(config, ckpt, abstract, init, init_from)


def _shifted(state, delta, step):
    """A state whose params, momentum and step differ recognisably from `state`'s."""
    return state.replace(
        step=jnp.asarray(step, jnp.int32),
        params=jax.tree.map(lambda p: p + delta, state.params),
        opt_state=jax.tree.map(
            lambda o: o + delta if jnp.issubdtype(o.dtype, jnp.floating) else o, state.opt_state
        ),
    )


def _save(directory, state, step, metrics=None):
    ckpt = checkpoint.Checkpointer(directory, keep=2, async_save=False)
    ckpt.save(step, state, {"pos": step}, metrics=metrics)
    ckpt.close()


def _first(tree):
    return np.asarray(jax.tree.leaves(tree)[0])


def _first_float(tree):
    """The first floating leaf (an optimiser state also holds integer update counts)."""
    return np.asarray(
        next(x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating))
    )


def test_resume_order(tmp_path):
    config, init, abstract = _setup()
    fresh = init()
    _save(tmp_path / "stage1" / "checkpoints", _shifted(fresh, 1.0, 7), 7)
    _save(tmp_path / "other" / "checkpoints", _shifted(fresh, 2.0, 5), 5)

    def resolve(workdir, **kw):
        cfg = config.copy_and_resolve_references()
        for k, v in kw.items():
            setattr(cfg, k, v)
        ckpt = checkpoint.Checkpointer(workdir / "checkpoints", async_save=False)
        state, data, how = _restore_or_init(cfg, ckpt, abstract, init)
        ckpt.close()
        return state, data, how

    # nothing anywhere: scratch
    state, data, how = resolve(tmp_path / "a")
    assert how == "initialised from scratch" and data is None
    np.testing.assert_array_equal(_first(state.params), _first(fresh.params))
    # init_from a run directory: its params, a fresh optimiser and step 0 (stage 1 -> stage 2)
    state, data, how = resolve(tmp_path / "b", init_from=str(tmp_path / "stage1"))
    assert "initialised from" in how and data is None and int(state.step) == 0
    np.testing.assert_array_equal(_first(state.params), _first(fresh.params) + 1.0)
    np.testing.assert_array_equal(_first_float(state.opt_state), _first_float(fresh.opt_state))
    # config.resume beats init_from, and brings the optimiser, step and data position
    state, data, how = resolve(
        tmp_path / "c", resume=str(tmp_path / "other"), init_from=str(tmp_path / "stage1")
    )
    assert "config.resume" in how and int(state.step) == 5 and data == {"pos": 5}
    np.testing.assert_array_equal(
        _first_float(state.opt_state), _first_float(fresh.opt_state) + 2.0
    )
    # the workdir's own latest checkpoint beats everything
    _save(tmp_path / "d" / "checkpoints", _shifted(fresh, 3.0, 9), 9)
    state, data, how = resolve(
        tmp_path / "d", resume=str(tmp_path / "other"), init_from=str(tmp_path / "stage1")
    )
    assert how.startswith("resumed from") and int(state.step) == 9 and data == {"pos": 9}
    # a resume target without checkpoints is a clear error
    with pytest.raises(FileNotFoundError, match="config.resume"):
        resolve(tmp_path / "e", resume=str(tmp_path / "nothing_here"))


def test_init_from_torchvision_vgg16_pth(tmp_path):
    config, init, abstract = _setup()
    fresh = jax.device_get(init())
    params = fresh.params
    rng = np.random.default_rng(0)
    sd = {}
    convs = [
        (block, name)
        for block in ("block1", "block2", "block3", "block4", "block5")
        for name in params[block]
        if not name.endswith("_bn")
    ]
    for (block, name), idx in zip(convs, torch_weights.VGG_PLAIN_IDX):
        k = params[block][name]["kernel"]  # [3, 3, in, out]
        sd[f"features.{idx}.weight"] = rng.standard_normal((k.shape[3], k.shape[2], 3, 3))
        sd[f"features.{idx}.bias"] = rng.standard_normal(k.shape[3])
    k6, k7 = params["fc"]["fc6"]["kernel"], params["fc"]["fc7"]["kernel"]
    sd["classifier.0.weight"] = rng.standard_normal((k6.shape[3], k6.shape[2] * 49))
    sd["classifier.0.bias"] = rng.standard_normal(k6.shape[3])
    sd["classifier.3.weight"] = rng.standard_normal((k7.shape[3], k7.shape[2]))
    sd["classifier.3.bias"] = rng.standard_normal(k7.shape[3])
    sd["classifier.6.weight"] = rng.standard_normal((1000, k7.shape[3]))  # ignored
    torch.save(
        {k: torch.tensor(v, dtype=torch.float32) for k, v in sd.items()}, tmp_path / "vgg.pth"
    )
    config.init_from = str(tmp_path / "vgg.pth")
    ckpt = checkpoint.Checkpointer(tmp_path / "w", async_save=False)
    state, _, how = _restore_or_init(config, ckpt, abstract, init)
    ckpt.close()
    got = jax.device_get(state.params)
    np.testing.assert_allclose(
        got["block1"]["conv1_1"]["kernel"], sd["features.0.weight"].transpose(2, 3, 1, 0), rtol=1e-6
    )
    # torchvision flattens pool5 as (C, H, W): fc6's kernel[y, x, c, o] == W[o, c * 49 + y * 7 + x]
    w6 = sd["classifier.0.weight"]
    assert np.isclose(got["fc"]["fc6"]["kernel"][2, 5, 1, 3], w6[3, 1 * 49 + 2 * 7 + 5])
    # the decoder keeps its fresh initialisation
    np.testing.assert_array_equal(got["seg_score"]["kernel"], params["seg_score"]["kernel"])


@pytest.mark.parametrize("name", ["deconvnet", "fcn8s"])
def test_init_from_full_model_pth(tmp_path, name):
    config, init, abstract = _setup(name)
    fresh = jax.device_get(init())
    target = jax.tree.map(lambda p: p + 0.5, fresh.params)
    variables = {"params": target, "batch_stats": fresh.batch_stats}
    sd = torch_weights.to_torch_state_dict(variables, name)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    torch.save(sd, tmp_path / "model.pth")
    config.init_from = str(tmp_path / "model.pth")
    ckpt = checkpoint.Checkpointer(tmp_path / "w", async_save=False)
    state, _, _ = _restore_or_init(config, ckpt, abstract, init)
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), target)


def test_keeps_last_n_plus_best(tmp_path):
    _, init, _ = _setup()
    state = init()
    ckpt = checkpoint.Checkpointer(tmp_path, keep=2, async_save=False)
    for step, miou in [(1, 0.2), (2, 0.6), (3, 0.3), (4, 0.1), (5, 0.25)]:
        ckpt.save(step, state, {}, metrics={"miou": miou})
    ckpt.wait()
    assert ckpt.steps() == [2, 4, 5] and ckpt.best_step() == 2
    ckpt.close()
    # after a restart the metrics come from disk: the best is still known and still kept
    again = checkpoint.Checkpointer(tmp_path, keep=2, async_save=False)
    assert again.best_step() == 2
    again.save(6, state, {}, metrics={"miou": 0.05})
    again.save(7, state, {})  # a save without metrics (preemption) is kept as one of the last 2
    again.wait()
    assert again.steps() == [2, 6, 7] and again.best_step() == 2
    again.close()
