"""Evaluate DeconvNet on a split: mIoU of every variant the paper reports, in one table.

  python eval.py --workdir runs/demo          # the demo run (train.py) on its generated val split
  python eval.py --workdir runs/s2 --config.data.voc_root=/data/VOCdevkit/VOC2012 \
      --config.infer.proposals=edge_boxes --config.infer.edge_model=/models/model.yml.gz \
      --ensemble runs/fcn8s --ensemble_rule product --save_predictions
  python eval.py --torch_weights deconvnet.pth --config.data.voc_root=... --config.infer.mode=whole
  python eval.py --caffe_weights DeconvNet_trainval_inference.caffemodel \
      --ensemble fcn-8s-pascal.caffemodel --config.data.voc_root=... --out runs/release_eval
  python eval.py --workdir runs/s2 --recompute_bn 500 ...   # the release's BN statistics first
Variants: DeconvNet, DeconvNet+CRF (pydensecrf2 installed), EDeconvNet and EDeconvNet+CRF
(--ensemble). Settings: configs/infer.py (config.infer.*). Output: <out>/results.md, results.json.
"""

import logging
import os
import sys

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from deconvnet_jax import errors

_HERE = os.path.dirname(os.path.abspath(__file__))
errors.define_config_file("config", os.path.join(_HERE, "configs", "infer.py"), "Config file.")
flags.DEFINE_string("workdir", "runs/demo", "Training run directory (checkpoints/, config.json).")
flags.DEFINE_string(
    "caffe_weights",
    "",
    "The release's DeconvNet caffemodel (e.g. DeconvNet_trainval_inference.caffemodel) instead "
    "of --workdir; --ensemble may then be fcn-8s-pascal.caffemodel.",
)
flags.DEFINE_string(
    "torch_weights", "", "A PyTorch DeconvNet state dict (.pth) instead of --workdir."
)
flags.DEFINE_string(
    "ensemble",
    "",
    "FCN-8s run directory or fcn-8s-pascal.caffemodel: adds EDeconvNet (config.infer.ensemble).",
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
flags.DEFINE_bool("debug", False, "Show tracebacks of user errors (bad flags, files, weights).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO
    logging.getLogger("deconvnet_jax").setLevel(logging.INFO)
    from deconvnet_jax import evaluation, inference, paths  # after flags: fast --help

    external = FLAGS.caffe_weights or FLAGS.torch_weights
    run_config = None if external else evaluation.load_run_config(FLAGS.workdir)
    config = evaluation.resolve_config(
        FLAGS.config, config_flags.get_override_values(FLAGS["config"]), run_config
    )
    if FLAGS.caffe_weights:
        config = evaluation.caffe_config(config)
    if FLAGS.ensemble:
        config.infer.ensemble = FLAGS.ensemble
    if FLAGS.ensemble_rule:
        config.infer.ensemble_rule = FLAGS.ensemble_rule
    if FLAGS.recompute_bn < 0:
        sys.exit(f"error: --recompute_bn must be >= 0, got {FLAGS.recompute_bn}")
    try:
        net = evaluation.load_net(
            config, external or FLAGS.workdir, config.infer.best, FLAGS.recompute_bn
        )
    except (FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"error: {e}")  # one line naming the file, no traceback
    extras = evaluation.load_extras(config)
    predictor = inference.Predictor(net, config.infer, fcn=extras["fcn"])
    default_out = paths.as_path(FLAGS.workdir or ".") / f"eval_{config.infer.split}"
    out = paths.as_path(FLAGS.out or default_out)
    evaluator = evaluation.Evaluator(
        config, predictor, extras["variants"], extras["combine"], extras["dense_crf"]
    )
    summary = evaluator.run(out, FLAGS.save_predictions)
    print((out / "results.md").read_text())
    for name, m in summary["variants"].items():
        print(
            f"{name}: mIoU {100 * m['miou']:.2f}  pixel acc {100 * m['pixel_acc']:.2f}  "
            f"mean class acc {100 * m['mean_class_acc']:.2f}"
        )
    print(f"{summary['images']} images ({len(summary['skipped'])} skipped) -> {out}")


if __name__ == "__main__":
    errors.run_app(main)
