"""Ablations the paper discusses: the training crop mode and the unpooling formulation.

  python -m deconvnet_jax.sweep --config configs/voc_stage1.py --sweep configs/sweeps/ablation.py \
      --workdir runs/ablation --config.data.voc_root=...
"""


def get_sweep():
    for mode in ("stage1", "whole"):  # object-centred crops (the paper) vs whole images (ports)
        yield {"data.mode": mode}
    yield {"model.unpool_impl": "scatter"}
