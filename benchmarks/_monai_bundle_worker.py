"""MONAI's ``lung_nodule_ct_detection`` bundle on one scan, timed; run by ``bench_vs_monai.py``
with the Python of its own MONAI virtual environment (never import LesionDetectorLib here).

    python _monai_bundle_worker.py SCAN --threads 2 --json OUT.json [--plan-only]
        [--roi 512 512 192 --spacing 0.703125 0.703125 1.25 --force-sliding-window]   (--smoke)
    python _monai_bundle_worker.py --fingerprint --threads 1 --json OUT.json

The network, detector and transforms follow the bundle's ``configs/inference.json`` (model-zoo,
bundle 0.6.8) for a raw scan (``whether_raw_luna16: true``: ITK reader with the LPS-to-RAS
affine, RAS orientation, resampling to 0.703125 x 0.703125 x 1.25 mm, HU -1024..300 scaled to
0..1). The weights are random (seeded): the bundle's checkpoint is not downloaded, and the speed
of a forward pass does not depend on the weights. The bundle's ``amp: true`` is CUDA autocast
in its evaluator, so on a CPU it runs in float32, as here.
"""
from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

# inference.json, for a raw (not pre-resampled) scan.
SPACING = (0.703125, 0.703125, 1.25)
HU_RANGE = (-1024.0, 300.0)
SIZE_DIVISIBLE = (16, 16, 8)
INFER_PATCH_SIZE = (512, 512, 192)
OVERLAP = 0.25
BASE_ANCHOR_SHAPES = ((6, 8, 4), (8, 6, 5), (10, 10, 6))
FEATURE_MAP_SCALES = (1, 2, 4)
RETURNED_LAYERS = (1, 2)
BOX_SELECTOR = dict(score_thresh=0.02, topk_candidates_per_level=1000, nms_thresh=0.22, detections_per_img=300)


def ensure_torchvision() -> str:
    """MONAI's feature extractor calls two pure-Python torchvision helpers. Every torchvision
    wheel on this machine's indexes is a CUDA build that cannot load on a CPU torch, so when
    torchvision does not import, stand in the same two helpers (same semantics, written here)."""
    try:
        import torchvision.models._utils  # noqa: F401
        import torchvision.models.detection.backbone_utils  # noqa: F401

        return torchvision.__version__
    except Exception as e:  # a CUDA build on a CPU torch raises RuntimeError, not ImportError
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
    import types
    from collections import OrderedDict

    import torch.nn as nn

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]

    class IntermediateLayerGetter(nn.ModuleDict):
        """The model's children in order up to the last one named in ``return_layers``; forward
        returns ``{return_layers[name]: output}`` of those (later children are never run)."""

        def __init__(self, model: nn.Module, return_layers: dict):
            wanted = {str(k): str(v) for k, v in return_layers.items()}
            children = OrderedDict(model.named_children())
            if not set(wanted) <= set(children):
                raise ValueError("return_layers are not present in model")
            layers, left = OrderedDict(), set(wanted)
            for name, module in children.items():
                layers[name] = module
                left.discard(name)
                if not left:
                    break
            super().__init__(layers)
            self.return_layers = wanted

        def forward(self, x):
            out = OrderedDict()
            for name, module in self.items():
                x = module(x)
                if name in self.return_layers:
                    out[self.return_layers[name]] = x
            return out

    def _validate_trainable_layers(is_trained, trainable_backbone_layers, max_value, default_value):
        if not is_trained:
            return max_value
        value = default_value if trainable_backbone_layers is None else trainable_backbone_layers
        if not 0 <= value <= max_value:
            raise ValueError(f"Trainable layers should be in the range [0,{max_value}], got {value}")
        return value

    modules = {n: types.ModuleType(n) for n in ("torchvision", "torchvision.models", "torchvision.models._utils",
                                                "torchvision.models.detection",
                                                "torchvision.models.detection.backbone_utils")}
    modules["torchvision.models._utils"].IntermediateLayerGetter = IntermediateLayerGetter
    modules["torchvision.models.detection.backbone_utils"]._validate_trainable_layers = _validate_trainable_layers
    for n, m in modules.items():
        parent, _, child = n.rpartition(".")
        if parent:
            setattr(modules[parent], child, m)
        sys.modules[n] = m
    return f"stand-in for its two pure-Python helpers used here ({reason})"


def n_windows(image_size, roi, overlap):
    """Windows MONAI's sliding window visits (it pads an image smaller than the ROI up to it)."""
    total = 1
    for size, r in zip(image_size, roi):
        size = max(size, r)
        interval = max(int(r * (1 - overlap)), 1)
        total *= 1 if size <= r else math.ceil((size - r) / interval) + 1
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scan", nargs="?", help="DICOM series folder or scan file ITK reads")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--json", required=True, help="write the timings here")
    p.add_argument("--roi", type=int, nargs=3, default=list(INFER_PATCH_SIZE),
                   help="sliding-window ROI (the bundle's 512 512 192; smaller only for --smoke)")
    p.add_argument("--force-sliding-window", action="store_true",
                   help="use the sliding window even on an image smaller than the ROI (the bundle does not)")
    p.add_argument("--spacing", type=float, nargs=3, default=list(SPACING),
                   help="resampling spacing in mm (the bundle's 0.703125 0.703125 1.25; coarser only for --smoke)")
    p.add_argument("--plan-only", action="store_true",
                   help="read and preprocess only; report the input size and the windows a run would take")
    p.add_argument("--fingerprint", action="store_true",
                   help="no scan: the network's size, module names and outputs on a seeded 64x64x32 input, to "
                        "compare venvs (torchvision or the stand-in, torch versions)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.scan is None and not args.fingerprint:
        p.error("SCAN is required")

    import torch

    torch.set_num_threads(args.threads)
    torchvision_used = ensure_torchvision()      # before MONAI: its optional imports resolve at import
    import monai
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
    from monai.apps.detection.transforms.dictionary import (AffineBoxToWorldCoordinated, ClipBoxToImaged,
                                                            ConvertBoxModed)
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.nets import resnet
    from monai.transforms import (Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, Orientationd,
                                  ScaleIntensityRanged, Spacingd)
    t_import = time.perf_counter()

    torch.manual_seed(args.seed)
    backbone = resnet.resnet50(spatial_dims=3, n_input_channels=1, conv1_t_stride=[2, 2, 1], conv1_t_size=[7, 7, 7])
    # inference.json: resnet_fpn_feature_extractor(@backbone, 3, False, [1,2], None)
    feature_extractor = resnet_fpn_feature_extractor(backbone, 3, False, list(RETURNED_LAYERS), None)
    network = RetinaNet(spatial_dims=3, num_classes=1, num_anchors=3, feature_extractor=feature_extractor,
                        size_divisible=list(SIZE_DIVISIBLE), use_list_output=False).eval()
    anchor_generator = AnchorGeneratorWithAnchorShape(feature_map_scales=list(FEATURE_MAP_SCALES),
                                                      base_anchor_shapes=[list(s) for s in BASE_ANCHOR_SHAPES])
    detector = RetinaNetDetector(network=network, anchor_generator=anchor_generator, debug=False, spatial_dims=3,
                                 num_classes=1, size_divisible=list(SIZE_DIVISIBLE))
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(**BOX_SELECTOR)
    detector.set_sliding_window_inferer(roi_size=list(args.roi), overlap=OVERLAP, sw_batch_size=1, mode="constant",
                                        device="cpu")
    detector.eval()
    n_params = sum(p.numel() for p in network.parameters())
    t_build = time.perf_counter()
    if args.fingerprint:
        import hashlib

        x = torch.rand(1, 1, 64, 64, 32, generator=torch.Generator().manual_seed(args.seed + 1))
        with torch.no_grad():
            maps = network(x)
        names = "\n".join(n for n, _ in network.named_modules())
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "torchvision": torchvision_used, "parameters": n_params,
                       "modules_sha256": hashlib.sha256(names.encode()).hexdigest(),
                       "backbone_children": list(network.feature_extractor.body.keys()),
                       "output_sums": {k: [round(float(t.double().sum()), 3) for t in v] for k, v in maps.items()}},
                      f, indent=2)
        return 0

    preprocessing = Compose([
        LoadImaged(keys="image", reader="itkreader", affine_lps_to_ras=True),
        EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=list(args.spacing)),
        ScaleIntensityRanged(keys="image", a_min=HU_RANGE[0], a_max=HU_RANGE[1], b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped(keys="image"),
    ])
    postprocessing = Compose([
        ClipBoxToImaged(box_keys="box", label_keys="label", box_ref_image_keys="image", remove_empty=True),
        AffineBoxToWorldCoordinated(box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=True),
        ConvertBoxModed(box_keys="box", src_mode="xyzxyz", dst_mode="cccwhd"),
    ])
    data = preprocessing({"image": args.scan})
    image = data["image"]
    t_pre = time.perf_counter()

    size = list(image.shape[1:])
    windows = n_windows(size, args.roi, OVERLAP)
    # The bundle's RetinaNetInferer: the sliding window only when the image is at least one ROI.
    use_inferer = args.force_sliding_window or image[0].numel() >= math.prod(args.roi)
    print(f"MONAI input {size[0]}x{size[1]}x{size[2]} (RAS, {' x '.join(f'{v:g}' for v in args.spacing)} mm); "
          f"{'sliding window: ' + str(windows) + ' windows of ' + 'x'.join(map(str, args.roi)) if use_inferer else 'one forward pass (image smaller than the ROI)'}",
          flush=True)
    if args.plan_only:
        with open(args.json, "w") as f:
            json.dump({"input_size_ras": size, "use_sliding_window": bool(use_inferer),
                       "windows": windows if use_inferer else 1, "roi": list(args.roi),
                       "spacing_mm": list(args.spacing), "read_and_preprocess_s": round(t_pre - t_build, 2)}, f)
        return 0
    with torch.no_grad():
        outputs = detector([image], use_inferer=use_inferer)
    t_model = time.perf_counter()
    out = outputs[0]
    result = postprocessing({"box": out["box"], "label": out["label"], "image": image})
    t_post = time.perf_counter()

    stats = {
        "monai": monai.__version__, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "threads": torch.get_num_threads(), "python": sys.version.split()[0],
        "network_parameters": n_params, "torchvision": torchvision_used, "input_size_ras": size, "use_sliding_window": bool(use_inferer),
        "windows": windows if use_inferer else 1, "roi": list(args.roi),
        "spacing_mm": list(args.spacing), "boxes": int(len(result["box"])),
        "seconds": {"import": round(t_import - T_START, 2), "build_network": round(t_build - t_import, 2),
                    "read_and_preprocess": round(t_pre - t_build, 2), "model": round(t_model - t_pre, 2),
                    "postprocess": round(t_post - t_model, 2), "in_process_total": round(t_post - T_START, 2)},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")},
    }
    with open(args.json, "w") as f:
        json.dump(stats, f, indent=2)
    print(json.dumps(stats["seconds"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
