"""The public FCN-8s (Long et al.; the release's ``fcn-8s-pascal``, the second member of the
paper's EDeconvNet): ``FCN8s(batch_norm=False)``, no BN, dropout 0.5 after fc6/fc7, score2 with a
bias, ``upsample`` frozen bilinear (models/fcn.py). Use it to evaluate the authors' FCN-8s weights
or to fine-tune that net; train from scratch with configs/fcn8s.py (the BN variant) instead.

Data as configs/fcn8s.py (whole images, BGR 0-255 minus the release's mean: the input of every
release model). The optimiser is DeconvNet's recipe of configs/fcn8s.py, not the FCN solver (lr
1e-10 on a loss summed over the pixels, momentum 0.99, batch 1), which does not transfer to the
pixel-averaged loss here.

  python train.py --config configs/fcn8s_caffe.py --workdir runs/fcn8s_caffe \\
      --config.data.voc_root=/data/VOCdevkit/VOC2012 \\
      --config.data.sbd_root=/data/benchmark_RELEASE/dataset
"""

from configs import fcn8s


def get_config():
    config = fcn8s.get_config()
    config.model.name = "fcn8s_caffe"
    config.data.normalization = "caffe_bgr"
    return config
