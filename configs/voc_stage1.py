"""Stage 1 of the release's recipe (PAPER.md "Training recipe"): object-centred crops.

VOC 2012 train + SBD (train_aug, ~10.5k images); crops around ground-truth boxes enlarged 1.2x,
resized to 250, random 224 crop + flip, BGR mean subtracted. Caffe SGD (lr inside the velocity)
momentum 0.9, weight decay 5e-4 on kernels and BN scale / shift, base lr 0.01 (biases x2, no
decay), step policy gamma 0.1 at 9000 of 20000 iterations, batch 64 = 8 x 8 accumulated (BN
statistics per micro-batch of 8). Encoder/fc6/fc7 from ImageNet VGG16.

  python train.py --config configs/voc_stage1.py --workdir runs/s1 \
      --config.data.voc_root=/data/VOCdevkit/VOC2012 \
      --config.data.sbd_root=/data/benchmark_RELEASE/dataset \
      --config.init_from=/weights/vgg16-397923af.pth
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.name = "voc"
    config.data.train_split = "train_aug"
    config.data.mode = "stage1"
    config.data.box_enlarge = 1.2
    config.data.normalization = "caffe_bgr"  # "imagenet" when init_from is a torchvision .pth
    config.data.num_workers = 8
    config.optim.name = "sgd"
    config.optim.lr = 0.01
    config.optim.momentum = 0.9
    config.optim.momentum_style = "caffe"  # lr inside the velocity, as Caffe's SGD
    config.optim.weight_decay = 5e-4
    config.optim.bn_weight_decay = True  # BN scale / shift decayed too (Caffe's default mult 1)
    config.optim.bias_lr_mult = 2.0
    config.optim.schedule = "step"
    config.optim.decay_steps = (9000,)  # optimiser updates (iterations of 64 images)
    config.optim.gamma = 0.1
    config.optim.accum_steps = 8
    config.train.batch_size = 8  # micro-batch; x accum_steps = 64 per update
    config.train.num_steps = 20000 * 8  # micro-steps
    config.train.eval_every = 2000 * 8
    config.train.checkpoint_every = 1000 * 8
    config.train.log_every = 100
    return config
