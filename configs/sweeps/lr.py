"""Learning-rate sweep: one run per base learning rate.

  python -m deconvnet_jax.sweep --config configs/demo.py --sweep configs/sweeps/lr.py \
      --workdir runs/sweep_lr
"""


def get_sweep():
    for lr in (0.005, 0.01, 0.02):
        yield {"optim.lr": lr}
