"""FCN-8s on DeconvNet's VGG16-BN encoder: the second member of EDeconvNet (PAPER.md "Inference").

Like the FCN-8s that the release ensembles with, it trains on whole images (data.mode="whole":
the whole image resized to 250, random 224 crop + flip) of VOC 2012 train + SBD. The Caffe FCN
solver (unnormalised loss summed over ~190k pixels, lr 1e-10, momentum 0.99, batch 1, no BN) does
not transfer to this network's pixel-averaged loss and BatchNorm, so the optimiser is DeconvNet's
recipe (SGD 0.9, lr 0.01, biases x2, weight decay 5e-4, batch 64 = 8 x 8, step at 9000 of 20000
updates). Encoder/fc6/fc7 from ImageNet VGG16 (init_from a torchvision .pth works unchanged: the
encoder sits at DeconvNet's parameter paths).

  python train.py --config configs/fcn8s.py --workdir runs/fcn8s \
      --config.data.voc_root=/data/VOCdevkit/VOC2012 \
      --config.data.sbd_root=/data/benchmark_RELEASE/dataset \
      --config.init_from=/weights/vgg16-397923af.pth
Demo on the generated set (CPU, ~4 minutes; 40 steps: loss 0.86 -> 0.17, val mIoU 49%):
  python train.py --config configs/fcn8s.py --workdir runs/fcn8s_demo \
      --config.data.name=synthetic --config.data.train_split=train \
      --config.data.synthetic.num_train=16 --config.data.synthetic.num_val=8 \
      --config.data.eval_size=256 --config.data.num_workers=0 \
      --config.model.width_multiplier=0.0625 --config.optim.name=adam --config.optim.lr=0.002 \
      --config.optim.weight_decay=0 --config.optim.bias_lr_mult=1 --config.optim.accum_steps=1 \
      --config.train.num_steps=40 --config.train.eval_every=0 --config.train.log_every=5
"""

from configs import voc_stage1


def get_config():
    config = voc_stage1.get_config()  # data, optimiser and schedule of DeconvNet's stage 1
    config.model.name = "fcn8s"
    config.data.mode = "whole"
    return config
