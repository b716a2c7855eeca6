"""One recipe per seed model: the facts the five hand-made deployment guides encoded.

Each guide (docs/seed_pipelines.md) hard-wired a model's normalisation, its
shapes and batch sizes, and the graph edits each vendor needed. segc keeps those facts here as
plain data so that ``segc compile`` can use them on a machine without PyTorch: this module
must import nothing heavier than ``segc.recipe`` (a test imports it with ``torch`` blocked).

The exporter (segc.models.zoo) writes the recipe name into every exported model's metadata
(``segc.recipe``), so a later ``segc compile`` picks the right recipe without being told.

Selectors used below (see segc.selectors): ``Conv before output2`` is the nearest Conv
upstream of tensor ``output2``, i.e. the OCR head's classifier. Pruning names the two
classifier convolutions *structurally*, instead of the legacy exporter's numbered
``Conv_1380:0`` and ``Conv_1453:0`` that the 3D_HRNet guide passed to ATC and that break with
every re-export.
"""

from __future__ import annotations

from typing import Any

from segc.recipe import InputSpec, OutputSpec, Recipe, ResizeSpec, TargetRecipe

# --- normalisations --------------------------------------------------------------------------

#: mmsegmentation's Cityscapes normalisation (ImageNet statistics in 0..255, RGB).
MMSEG_RGB: dict[str, Any] = dict(
    mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), pixel_scale=255.0, channel_order="RGB"
)

#: HRNet-Semantic-Segmentation: ImageNet statistics on pixels scaled to 0..1.
HRNET_SEG_RGB: dict[str, Any] = dict(
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pixel_scale=1.0, channel_order="RGB"
)

#: ADVENT / IntraDA DeepLabv2 (Caffe ResNet): BGR, mean subtraction only, 0..255.
DEEPLAB_CAFFE_BGR: dict[str, Any] = dict(
    mean=(104.00698793, 116.66876762, 122.67891434), std=(1.0, 1.0, 1.0), pixel_scale=255.0, channel_order="BGR"
)

#: MhLiao/DB: subtract its RGB_MEAN and divide by 255.
DB_RGB: dict[str, Any] = dict(
    mean=(122.67891434, 116.66876762, 104.00698793), std=(255.0, 255.0, 255.0), pixel_scale=255.0, channel_order="RGB"
)

#: Dataset resizing as each guide did it (segc data / evaluate): the Cityscapes models take the
#: full 1024x2048 frame; IntraDA resized bicubically to 512x1024; DB's ic15 test scales the
#: short side to 736 with sides rounded up to multiples of 32.
FULL_CITYSCAPES = ResizeSpec(mode="fixed", size=(1024, 2048))
DEEPLAB_RESIZE = ResizeSpec(mode="fixed", size=(512, 1024), interpolation="bicubic")
DB_RESIZE = ResizeSpec(mode="keep_ratio", multiple=32, limit_side=736, limit_type="short")

# --- shared pass lists -----------------------------------------------------------------------

#: The DB_Dynamic guide's edit (fold the nearest-upsample scale chains into constants) plus
#: the dynamic range ATC and TensorRT were given.
DB_SHAPE_RANGE = "input:1,3,640~4096,640~4096"
DB_OPT_SHAPE = "input:1,3,1280,1280"
_DB_PASSES = ("simplify", "fold_resize_scales", "set_shape_range", "cleanup")


def _db_range_options() -> dict[str, dict[str, object]]:
    """Fresh option dicts per target, so no two recipes share a mutable list."""
    return {"set_shape_range": {"ranges": [DB_SHAPE_RANGE], "opt": [DB_OPT_SHAPE]}}


#: Where in the DB pipelines the deformable-conv rewrite goes: after simplify and the scale
#: folding (both reason about the standard DeformConv, whose shapes are known to ONNX) and
#: before the shape-range work.
_DB_DCN_PASSES = ("simplify", "fold_resize_scales", "rewrite_deform_conv", "set_shape_range", "cleanup")


def _db_dcn_target(form: str, *, opset: int | None = None, precision: str | None = None) -> TargetRecipe:
    """A DBNet-DCN target: the DB pipeline plus the deformable-conv rewrite in ``form``.

    ``opset``: convert the graph down afterwards (ATC's parser registers DeformableConv2D for
    opsets 9-16 only, while the exported DeformConv needs 19).
    """
    options = _db_range_options() | {"rewrite_deform_conv": {"form": form}}
    passes: tuple[str, ...] = _DB_DCN_PASSES
    if opset is not None:
        passes = passes[:-1] + ("convert_opset",) + passes[-1:]
        options["convert_opset"] = {"version": opset}
    return TargetRecipe(passes=passes, options=options, precision=precision)


#: The 3D_HRNet guide cut the graph at the auxiliary and the OCR classifier convolutions.
#: Each is named by the head output it feeds, which survives renumbering and any
#: post-processing an exporter appends after the classifiers.
HRNET_W48_CLASSIFIERS = ["Conv before output1", "Conv before output2"]

# --- the recipes -----------------------------------------------------------------------------

RECIPES: dict[str, Recipe] = {
    "ocrnet_hrnetw18": Recipe(
        name="ocrnet_hrnetw18",
        description="OCRNet with an HRNetV2-W18 backbone (Cityscapes, 19 classes); argmax inside the graph",
        inputs=(InputSpec("x", **MMSEG_RGB, resize=FULL_CITYSCAPES),),
        output_names=("output",),
        seed_shape=(1, 3, 1024, 2048),
        batch_sizes=(1, 4, 8, 16),
        spatial_multiple=32,
        num_classes=19,
        label_outputs=("output",),
        output=OutputSpec(kind="labels", name="output"),
        targets={
            # guide 000: ~14 chosen Resize nodes linear -> nearest (mIoU 80.67 -> 79.89)
            "ascend": TargetRecipe(
                # ATC wants constant Resize scales: fold the shape-computed ones first
                passes=("simplify", "fold_resize_scales", "resize_to_nearest", "cleanup"),
                options={"resize_to_nearest": {"preset": "hrnet_branches"}},
                batch_sizes=(1, 4, 8, 16),  # one .om per batch size, as the guide built
            ),
            # guide 001: graph_shape_mutable with dim_range batch 1..16
            "magicmind": TargetRecipe(passes=("simplify", "cleanup"), batch_range=(1, 16)),
            # guide 000: trtexec --fp16 --workspace=15000
            "tensorrt": TargetRecipe(
                passes=("simplify", "cleanup"), precision="fp16", flags={"workspace_mb": 15000}
            ),
            "onnxruntime": TargetRecipe(),
        },
    ),
    "hrnet_w48_ocr": Recipe(
        name="hrnet_w48_ocr",
        description="HRNetV2-W48 + OCR head (HRNet-Semantic-Segmentation, Cityscapes); aux and OCR logits at 1/4",
        inputs=(InputSpec("image", **HRNET_SEG_RGB, resize=FULL_CITYSCAPES),),
        output_names=("output1", "output2"),
        seed_shape=(1, 3, 1024, 2048),
        batch_sizes=(1, 4),  # the guide: memory limits the model to bs1 / bs4
        spatial_multiple=32,
        num_classes=19,
        output=OutputSpec(kind="logits", name="output2"),
        targets={
            # guide 003: four Resize nodes to nearest, then ATC --out_nodes at the two classifiers
            "ascend": TargetRecipe(
                passes=("simplify", "fold_resize_scales", "resize_to_nearest", "prune_outputs", "cleanup"),
                options={
                    "resize_to_nearest": {"preset": "hrnet_branches"},
                    "prune_outputs": {"outputs": list(HRNET_W48_CLASSIFIERS)},
                },
            ),
            "tensorrt": TargetRecipe(passes=("simplify", "cleanup"), precision="fp16"),
            "onnxruntime": TargetRecipe(),
        },
    ),
    "deeplabv2_r101": Recipe(
        name="deeplabv2_r101",
        description="IntraDA DeepLabv2 (ResNet-101 + ASPP, stride 8, multi-level); two logit outputs",
        inputs=(InputSpec("image", **DEEPLAB_CAFFE_BGR, resize=DEEPLAB_RESIZE),),
        output_names=("output1", "output2"),
        seed_shape=(1, 3, 512, 1024),
        batch_sizes=(1, 2, 4, 8, 16, 32, 64),
        spatial_multiple=8,
        num_classes=19,
        # the second output is the prediction, upsampled bilinearly with align_corners
        output=OutputSpec(kind="logits", name="output2", align_corners=True),
        # guide 002 made no graph edit: every target runs its default pipeline; ATC got one
        # static model per batch size (the export has a dynamic batch)
        targets={"ascend": TargetRecipe(batch_sizes=(1, 2, 4, 8, 16, 32, 64))},
    ),
    "dbnet_r50": Recipe(
        name="dbnet_r50",
        description="DBNet text detector, ResNet-50 (plain convs), dynamic H and W; sigmoid probability map",
        inputs=(InputSpec("input", **DB_RGB, resize=DB_RESIZE),),
        output_names=("output",),
        seed_shape=(1, 3, 640, 640),
        batch_sizes=(1,),
        shape_range=DB_SHAPE_RANGE,
        opt_shape=DB_OPT_SHAPE,
        spatial_multiple=32,
        task="text_detection",
        output=OutputSpec(kind="probability", name="output"),
        targets={
            "ascend": TargetRecipe(passes=_DB_PASSES, options=_db_range_options()),
            "tensorrt": TargetRecipe(passes=_DB_PASSES, options=_db_range_options(), precision="fp16"),
            "magicmind": TargetRecipe(passes=_DB_PASSES, options=_db_range_options()),
        },
    ),
    "dbnet_r50_dcn": Recipe(
        name="dbnet_r50_dcn",
        description="DBNet text detector, ResNet-50 with deformable conv v2 (stages 3-5), dynamic H and W",
        inputs=(InputSpec("input", **DB_RGB, resize=DB_RESIZE),),
        output_names=("output",),
        seed_shape=(1, 3, 640, 640),
        batch_sizes=(1,),
        shape_range=DB_SHAPE_RANGE,
        opt_shape=DB_OPT_SHAPE,
        spatial_multiple=32,
        task="text_detection",
        output=OutputSpec(kind="probability", name="output"),
        targets={
            # Ascend's DeformableConv2D (x/y/mask channel layout, data_format NCHW)
            "ascend": _db_dcn_target("ascend", opset=16),
            # TensorRT and onnxruntime take the standard ONNX DeformConv (opset 19)
            "tensorrt": _db_dcn_target("onnx", precision="fp16"),
            "onnxruntime": TargetRecipe(
                passes=("simplify", "rewrite_deform_conv", "cleanup"),
                options={"rewrite_deform_conv": {"form": "onnx"}},
            ),
            # MagicMind: no deformable op, so decompose into gather + matmul
            "magicmind": _db_dcn_target("decomposed"),
        },
    ),
}
