"""Evaluate DeconvNet on a split: mIoU of every variant the paper reports, in one table.

  python eval.py --workdir runs/demo          # the demo run (train.py) on its generated val split
  python eval.py --workdir runs/s2 --config.data.voc_root=/data/VOCdevkit/VOC2012 \
      --config.infer.proposals=edge_boxes --config.infer.edge_model=/models/model.yml.gz \
      --ensemble runs/fcn8s --ensemble_rule product --save_predictions
  python eval.py --torch_weights deconvnet.pth --config.data.voc_root=... --config.infer.mode=whole
  python eval.py --workdir runs/s2 --recompute_bn 500 ...   # the release's BN statistics first
Variants: DeconvNet, DeconvNet+CRF (pydensecrf2 installed), EDeconvNet and EDeconvNet+CRF
(--ensemble). Settings: configs/infer.py (config.infer.*). Output: <out>/results.md, results.json.
"""

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file(
    "config", os.path.join(_HERE, "configs", "infer.py"), "Config file."
)
flags.DEFINE_string("workdir", "runs/demo", "Training run directory (checkpoints/, config.json).")
flags.DEFINE_string(
    "torch_weights", "", "A PyTorch DeconvNet state dict (.pth) instead of --workdir."
)
flags.DEFINE_string(
    "ensemble", "", "FCN-8s run directory: adds EDeconvNet (config.infer.ensemble)."
)
flags.DEFINE_enum(
    "ensemble_rule",
    None,
    ["product", "mean"],
    "EDeconvNet rule: product (the release) or mean (the paper).",
)
flags.DEFINE_integer(
    "recompute_bn",
    0,
    "Recompute the BN statistics over N training batches first (the release's step; for "
    "weights without usable statistics, e.g. LEARN-mode Caffe stage results). 0 = keep them.",
)
flags.DEFINE_string("out", "", "Output folder (default <workdir>/eval_<split>).")
flags.DEFINE_bool(
    "save_predictions", False, "Write palette PNGs and image|truth|prediction overlays."
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO
    logging.getLogger("deconvnet_jax").setLevel(logging.INFO)
    from deconvnet_jax import evaluation, inference  # after flags: fast --help

    run_config = None if FLAGS.torch_weights else evaluation.load_run_config(FLAGS.workdir)
    config = evaluation.resolve_config(
        FLAGS.config, config_flags.get_override_values(FLAGS["config"]), run_config
    )
    if FLAGS.ensemble:
        config.infer.ensemble = FLAGS.ensemble
    if FLAGS.ensemble_rule:
        config.infer.ensemble_rule = FLAGS.ensemble_rule
    if FLAGS.recompute_bn < 0:
        sys.exit(f"eval.py: --recompute_bn must be >= 0, got {FLAGS.recompute_bn}")
    try:
        net = evaluation.load_net(
            config, FLAGS.torch_weights or FLAGS.workdir, config.infer.best, FLAGS.recompute_bn
        )
    except ValueError as e:  # bad weights / --recompute_bn on a net without BN: one line
        sys.exit(f"eval.py: {e}")
    extras = evaluation.load_extras(config)
    predictor = inference.Predictor(net, config.infer, fcn=extras["fcn"])
    out = FLAGS.out or os.path.join(FLAGS.workdir or ".", f"eval_{config.infer.split}")
    evaluator = evaluation.Evaluator(
        config, predictor, extras["variants"], extras["combine"], extras["dense_crf"]
    )
    summary = evaluator.run(out, FLAGS.save_predictions)
    print(open(os.path.join(out, "results.md")).read())
    for name, m in summary["variants"].items():
        print(
            f"{name}: mIoU {100 * m['miou']:.2f}  pixel acc {100 * m['pixel_acc']:.2f}  "
            f"mean class acc {100 * m['mean_class_acc']:.2f}"
        )
    print(f"{summary['images']} images ({len(summary['skipped'])} skipped) -> {out}")


if __name__ == "__main__":
    app.run(main)
