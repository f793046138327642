"""Inference settings (eval.py, predict.py): configs/default.py plus a ``config.infer`` section.

  python eval.py --workdir runs/s2 --config.infer.proposals=edge_boxes \
      --config.infer.edge_model=/path/to/model.yml.gz
When the run directory has the trainer's config.json, its model and data sections are used
(the checkpoint's architecture and normalisation); ``config.infer`` and every ``--config.*`` given
on the command line apply on top.
"""

import ml_collections

from configs import default


def infer_config() -> ml_collections.ConfigDict:
    """The ``config.infer`` section (PAPER.md "Inference"; release values by default)."""
    c = ml_collections.ConfigDict()
    c.mode = "proposals"  # "proposals" (the paper) | "whole" (network on the whole padded image)
    # proposal source: "selective_search" | "edge_boxes" (the release; needs edge_model) |
    # "precomputed" (proposals_file) | "ground_truth" (oracle) | "grid"
    c.proposals = "selective_search"
    c.edge_model = ""  # structured edge model file (opencv_extra testdata/cv/ximgproc/model.yml.gz)
    c.proposals_file = ""  # .npz / .json per image id (deconvnet_jax/proposals/sources.py)
    c.max_proposals = 2000  # raw proposals per image before selection (the paper: top 2000)
    c.ss_mode = "fast"  # selective search: "fast" | "quality"
    c.gt_enlarge = 1.2  # ground-truth boxes enlarged like the stage-1 training crops
    c.grid_sizes = (224, 336, 448)  # sliding grid window sides
    c.grid_overlap = 0.5
    c.top_k = 50  # proposals kept per image (the release)
    c.min_size = 112  # proposals with a shorter side are dropped (the release)
    c.aggregate = "max"  # "max" against a zero map (the release) | "mean"
    c.canvas_sizes = (512,)  # square canvases (multiples of 32, >= 224); larger images shrink
    c.chunk_size = 25  # crops per network call (CPU: larger batches run the convs faster)
    # crop/paste resampling: "gather" (two-tap gathers; 7x less crop/paste time on CPU) or
    # "matmul" (dense interpolation matrices, Ry @ x @ Rx^T); the same numbers
    c.resize_impl = "gather"
    c.batch_size = 1  # images per jitted call
    c.num_workers = 2  # host threads reading images and computing proposals ahead
    c.split = "val"
    c.max_images = 0  # 0 = the whole split
    c.best = False  # restore the best-mIoU checkpoint instead of the latest
    c.ensemble = ""  # FCN-8s run directory: adds the EDeconvNet variants
    c.ensemble_rule = "product"  # "product" (the release) | "mean" (the paper)
    c.crf = True  # add the +CRF variants when pydensecrf2 is installed
    c.crf_params = ml_collections.ConfigDict(
        dict(
            iterations=10,
            gaussian_sxy=3,
            gaussian_weight=3,
            bilateral_sxy=20,
            bilateral_srgb=3,
            bilateral_weight=5,
        )
    )
    return c


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.infer = infer_config()
    return config
