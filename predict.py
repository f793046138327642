"""Segment one image or a folder: VOC-palette PNG masks and image | prediction overlays.

  python predict.py --workdir runs/demo --input photo.jpg --out preds/
  python predict.py --workdir runs/s2 --input folder/ --ensemble runs/fcn8s \
      --config.infer.proposals=edge_boxes --config.infer.edge_model=/models/model.yml.gz
Writes <out>/<name>.png and <out>/<name>_overlay.jpg for the most complete variant available
(EDeconvNet+CRF when --ensemble is given and pydensecrf2 is installed; see eval.py) or --variant.
"""

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from deconvnet_jax import errors

_HERE = os.path.dirname(os.path.abspath(__file__))
errors.define_config_file("config", os.path.join(_HERE, "configs", "infer.py"), "Config file.")
flags.DEFINE_string("input", None, "An image file or a folder of images.", required=True)
flags.DEFINE_string("out", "predictions", "Output folder.")
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
    "ensemble", "", "FCN-8s run directory or fcn-8s-pascal.caffemodel (EDeconvNet)."
)
flags.DEFINE_enum("ensemble_rule", None, ["product", "mean"], "EDeconvNet rule.")
flags.DEFINE_string("variant", "", "DeconvNet | DeconvNet+CRF | EDeconvNet | EDeconvNet+CRF.")
flags.DEFINE_bool("debug", False, "Show tracebacks of user errors (bad flags, files, weights).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("deconvnet_jax").setLevel(logging.INFO)
    from deconvnet_jax import evaluation, inference, prediction

    external = FLAGS.caffe_weights or FLAGS.torch_weights
    run_config = None if external else evaluation.load_run_config(FLAGS.workdir)
    config = evaluation.resolve_config(
        FLAGS.config, config_flags.get_override_values(FLAGS["config"]), run_config
    )
    if FLAGS.caffe_weights:
        config = evaluation.caffe_config(config)
    config.infer.ensemble = FLAGS.ensemble or config.infer.ensemble
    config.infer.ensemble_rule = FLAGS.ensemble_rule or config.infer.ensemble_rule
    try:
        net = evaluation.load_net(config, external or FLAGS.workdir, config.infer.best)
    except (FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"error: {e}")  # one line naming the file, no traceback
    extras = evaluation.load_extras(config)
    variant = FLAGS.variant or prediction.final_variant(extras["variants"])
    if variant not in extras["variants"]:
        raise app.UsageError(f"--variant {variant} is not available (have {extras['variants']})")
    predictor = inference.Predictor(net, config.infer, fcn=extras["fcn"])
    got = prediction.predict_files(
        predictor,
        prediction.list_images(FLAGS.input),
        FLAGS.out,
        variant,
        combine=extras["combine"],
        dense_crf=extras["dense_crf"],
        crf_params=dict(config.infer.crf_params),
        rule=config.infer.ensemble_rule,
    )
    print(f"{variant}: wrote {len(got['written'])} masks to {FLAGS.out}")
    for path, reason in got["failed"]:
        print(f"FAILED {path}: {reason}")
    if got["failed"]:
        raise SystemExit(errors.EXIT_SOME_FILES_FAILED)


if __name__ == "__main__":
    errors.run_app(main)
