"""Train DeconvNet. `python train.py` trains the demo (tiny model, generated data), prints val mIoU.

  python train.py --config configs/voc_stage1.py --workdir runs/s1 --config.data.voc_root=... \
      --config.optim.lr=0.01
Multi-host: run the same command on every host with --coordinator host:port --num_processes N
--process_id i (or let jax.distributed pick up SLURM / Open MPI / TPU environments).
"""

import logging
import os

from absl import flags
from absl import logging as absl_logging

from deconvnet_jax import errors

_HERE = os.path.dirname(os.path.abspath(__file__))
errors.define_config_file("config", os.path.join(_HERE, "configs", "demo.py"), "Config file.")
flags.DEFINE_string("workdir", "runs/demo", "Run directory: checkpoints, metrics, plots.")
flags.DEFINE_string(
    "coordinator", "", "jax.distributed coordinator address host:port (multi-host)."
)
flags.DEFINE_integer("num_processes", 0, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", -1, "This process's index (multi-host).")
flags.DEFINE_bool("debug", False, "Show tracebacks of user errors (bad config, data, checkpoints).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO
    logging.getLogger("deconvnet_jax").setLevel(logging.INFO)
    from deconvnet_jax import parallel, trainer  # after flags: fast --help

    parallel.init_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    final = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if final.get("preempted"):
        print(f"preempted at step {final['step']}; rerun the same command to resume")
        raise SystemExit(errors.EXIT_PREEMPTED)
    print(
        f"final val mIoU: {100 * final['miou']:.2f}  (pixel acc {100 * final['pixel_acc']:.2f}) "
        f"-- {FLAGS.workdir}"
    )


if __name__ == "__main__":
    errors.run_app(main)
