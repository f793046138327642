"""A tiny DeconvNet (1/16 width) for tests and laptop demos."""

from configs import default


def get_config():
    config = default.get_config()
    config.model.width_multiplier = 1 / 16
    return config
