"""The demo that `python train.py` runs: a 1/16-width DeconvNet on the generated dataset, on CPU.

Trains for a few minutes on 2 CPU cores and reports validation mIoU on the generated val split.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model.width_multiplier = 1 / 16
    config.data.name = "synthetic"
    config.data.train_split = "train"
    config.data.mode = "whole"
    config.data.normalization = "caffe_bgr"
    config.data.eval_size = 256
    config.optim.name = "adam"
    config.optim.lr = 0.02  # adam: the 4-channel tiny decoder needs large steps
    config.optim.weight_decay = 0.0
    config.optim.bias_lr_mult = 1.0
    config.optim.schedule = "step"
    config.optim.decay_steps = (240,)
    config.optim.accum_steps = 1
    config.train.batch_size = 8
    config.train.num_steps = 300
    config.train.log_every = 10
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    config.train.eval_batch_size = 8
    return config
