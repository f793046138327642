"""The paper's network (PAPER.md "Network") with the release's training recipe defaults.

Usage: ``python train.py --config configs/default.py``; override any field with
``--config.model.dtype=bfloat16`` etc. Other configs derive from this one.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # --- model -----------------------------------------------------------------
    config.model = ml_collections.ConfigDict()
    config.model.name = "deconvnet"  # or "fcn8s"
    config.model.num_classes = 21
    config.model.width_multiplier = 1.0
    config.model.dtype = "float32"  # compute dtype; "bfloat16" keeps float32 params
    config.model.remat = False  # per-block jax.checkpoint
    config.model.bn_momentum = 0.9  # flax convention (torch momentum 0.1)
    config.model.bn_epsilon = 1e-5  # the release used 1e-9
    config.model.bn_bias_init = 0.001  # the release's BN shift init
    config.model.unpool_impl = ""  # "" = pooling.DEFAULT_UNPOOL; "scatter" | "window"
    config.model.conv_impl = "auto"  # 3x3 layers: "direct" | "winograd" | "auto" (CPU: >=256 ch)
    # 3x3 kernel gradient: "xla" | "patches" | "shifted" | "auto" (CPU: patches); conv_grad.py
    config.model.conv_grad_impl = "auto"
    # DeconvNet's fc6_deconv / deconv / seg_score kernels: "release" (Gaussian std 0.01) | "he"
    config.model.decoder_init = "release"
    config.model.param_dtype = "float32"  # parameter dtype (float64 only for exactness checks)

    # --- data (deconvnet_jax/data) ----------------------------------------------
    config.data = ml_collections.ConfigDict()
    config.data.name = "voc"  # "voc" (VOCdevkit/VOC2012 [+ SBD]) | "synthetic" (generated demo set)
    config.data.voc_root = ""  # path to VOCdevkit/VOC2012
    config.data.sbd_root = ""  # path to SBD's benchmark_RELEASE/dataset (for train_aug)
    config.data.tfds_dir = ""  # a prepared TFDS voc2012_segmentation (data/tfds_voc.py) instead
    config.data.tfds_config = ""  # "plain" | "aug" ("" = "aug" when train_split is train_aug)
    config.data.cache_dir = ""  # where the synthetic set is generated ("" = ~/.cache/deconvnet_jax)
    config.data.train_split = "train_aug"  # VOC train + SBD train/val minus VOC val
    config.data.val_split = "val"
    config.data.mode = "stage1"  # "stage1" object crops | "stage2" proposal crops | "whole" image
    config.data.proposals = ""  # stage 2: proposals file (npz/JSON per image id)
    config.data.box_enlarge = 1.2  # stage-1 window = object box enlarged by this factor
    config.data.resize = 250  # crop window resized to this side, then...
    config.data.crop_size = 224  # ...randomly cropped to this side
    config.data.flip = True
    config.data.normalization = "caffe_bgr"  # BGR mean of the release | "imagenet" (torchvision)
    config.data.strict = True  # bad input raises; False skips, counts and reports
    config.data.num_workers = 0  # grain worker processes (0 = in-process)
    config.data.eval_size = 512  # validation images are padded (label 255) to this square side
    config.data.seed = 0
    config.data.synthetic = ml_collections.ConfigDict()  # the generated set (name="synthetic")
    config.data.synthetic.num_train = 200
    config.data.synthetic.num_val = 40
    config.data.synthetic.image_size = 256

    # --- optimiser (deconvnet_jax/optim.py): the release's recipe ------------------
    # (stage1_solver.prototxt + the lr / decay multipliers of stage1_train.prototxt, CAFFE.md)
    config.optim = ml_collections.ConfigDict()
    # "sgd" (momentum; the release) | "adam" (Adam, L2 added to the gradient) | "adamw" (decoupled
    # weight decay, optax.adamw)
    config.optim.name = "sgd"
    config.optim.lr = 0.01  # base_lr
    config.optim.momentum = 0.9
    # "caffe" (the release): v = momentum * v + lr * (g + wd * w), w -= v -- the lr sits inside
    # the velocity, so after a schedule step the old velocity decays at its old lr.
    # "optax" (optax.sgd): the velocity accumulates g + wd * w and lr multiplies it at each
    # update, so a schedule step rescales the whole velocity at once.
    config.optim.momentum_style = "caffe"
    config.optim.weight_decay = 5e-4  # conv/deconv kernels (decay_mult 1); never biases
    # BN scale and shift: the release's BN layers set no multipliers, so Caffe's defaults apply
    # (lr x1, decay x1): True decays them with weight_decay like kernels; False: no decay.
    config.optim.bn_weight_decay = True
    config.optim.bias_lr_mult = 2.0  # biases: lr x2, no decay (blobs_lr 2, weight_decay 0)
    config.optim.schedule = "step"  # "step" | "constant" | "cosine"
    config.optim.decay_steps = (9000,)
    config.optim.gamma = 0.1
    config.optim.warmup_steps = 0  # "cosine": linear warm-up from 0 over this many updates
    config.optim.accum_steps = 8  # 64 = 8 x 8 in the release (optax.MultiSteps)
    config.optim.clip_norm = 0.0  # 0 = off

    # --- training loop -----------------------------------------------------------
    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 8  # global micro-batch (BN statistics over it)
    config.train.num_steps = 20000 * 8  # micro-steps (20000 iterations x 8 accumulated)
    config.train.log_every = 50
    config.train.eval_every = 2000
    config.train.checkpoint_every = 1000
    config.train.keep_checkpoints = 3
    config.train.seed = 0
    config.train.eval_batch_size = 8
    config.train.eval_max_images = 0  # 0 = the whole validation split
    # The release's BN step: before testing, average batch statistics over this many training
    # batches and use them instead of the running averages (it used ~500; 0 = running averages).
    config.train.recompute_bn_batches = 0
    # Pixel-loss weights by true class: "none" (the paper's plain mean) | "median_frequency"
    # (SegNet's balancing, computed from the train split; saved as class_weights.json).
    config.train.class_weights = "none"
    # Adds dice_weight x (1 - mean soft Dice over the classes in the batch) to the pixel loss
    # (not in the paper, 0 = off; the CPU demo uses 1: configs/demo.py says why).
    config.train.dice_weight = 0.0

    # --- parallelism (deconvnet_jax/parallel.py) -------------------------------------
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # -1: the rest of the devices
    config.mesh.fsdp = 1
    config.mesh.shard_all = False  # shard every large kernel on 'fsdp', not only fc6/fc6_deconv

    # --- initialisation / resume (deconvnet_jax/checkpoint.py) ------------------------
    config.resume = ""  # a checkpoint dir to resume from when the workdir has none
    config.init_from = ""  # a run dir (e.g. stage 1 for stage 2) or a torchvision VGG16(-BN) .pth
    return config
