"""Stage 2 of the release's recipe: crops at object proposals that overlap ground truth.

Initialised from stage 1 (a run directory: its params and BN statistics, fresh optimiser);
step at 10000 of 40000 iterations; otherwise as stage 1.

  python train.py --config configs/voc_stage2.py --workdir runs/s2 \
      --config.data.voc_root=/data/VOCdevkit/VOC2012 \
      --config.data.sbd_root=/data/benchmark_RELEASE/dataset \
      --config.data.proposals=/data/train_aug_edgeboxes.npz --config.init_from=runs/s1
"""

from configs import voc_stage1


def get_config():
    config = voc_stage1.get_config()
    config.data.mode = "stage2"
    config.data.proposals = ""  # required: .npz / .json of proposal boxes per image id
    config.optim.decay_steps = (10000,)
    config.train.num_steps = 40000 * 8
    config.init_from = "runs/s1"
    return config
