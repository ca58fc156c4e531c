"""Export a trained VTFusion checkpoint to one ONNX graph (PyTorch and onnx needed).

The graph (:class:`DeployGraph`) is the whole inference of
:meth:`vtfusion.model.network.VTFusion.forward` for the checkpoint's config: image
normalisation, the frozen backbone's multi-level tokens, the AIE, the vision map against
the prototype bank (Eqs. 2-5), the text map against ``F^t`` (Eq. 6), the MPF (Eqs. 7-9),
the late fusions (``final_map``, with the kNN distance of the raw tokens to the memory
bank and its calibration), the upsampling and the image score (with the Gaussian of
``smoothed_max``). What was fixed at the end of training (prototypes, memory bank,
calibration statistics, ``F^t``, batch-norm statistics) becomes constants of the graph.

Inputs: ``images``, ``B x 3 x S x S`` uint8 in [0, 255] (``input_kind="uint8"``, the
default) or float32 in [0, 1] (``"float"``), ``B`` dynamic, ``S`` the trained image size.
Outputs: ``final`` (``M^f``, ``B x 1 x S x S`` float32) and ``score`` (``B`` float32).
The graph's ``metadata_props`` (:func:`deploy_metadata`) say what it is and what it takes.

What is and is not exported. Every ``ModelConfig`` option exports (the variants, each
``final_map``, ``fusion_input``, ``vision_skip``, ``text_skip``, ``ATEConfig.image_features``,
both image scores; ``tests/test_deploy.py`` compares a sample with PyTorch).
``BackboneConfig.precision="bf16"`` is a CUDA autocast: the graph computes in fp32, as
PyTorch does on a CPU. ``EvalConfig.smoothing_sigma``
belongs to evaluation, not to ``predict``, and is not in the graph either. A checkpoint
whose bank was never built, or an operator without an ONNX form, is a ``ValueError``
naming the option.

The exporter is PyTorch's TorchScript-based ``torch.onnx.export(..., dynamo=False)``:
the model's Python checks (shapes, ``bool(bank.built)``) run once while tracing, and the
batch size stays symbolic. The dynamo exporter (torch 2.13's default) stops at that check
on a buffer (a data-dependent branch for ``torch.export``) and would need onnxscript.
``opset`` 17.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from vtfusion import __version__
from vtfusion.deploy import FORMAT, INPUT_KINDS, INPUT_NAME, OUTPUT_NAMES
from vtfusion.io import atomic_write

OPSET = 17


def require_deploy_extra():
    """The ``onnx`` module, or a ``ValueError`` saying how to install the deploy extra."""
    try:
        import onnx  # local: the deploy extra is optional
    except ImportError:
        raise ValueError("onnx is not installed (needed by vtfusion export); pip install 'vtfusion[deploy]'") from None
    return onnx


class DeployGraph(nn.Module):
    """A trained VTFusion as one function of pixels: ``images -> (M^f, score)``.

    Shapes: ``B x 3 x S x S`` (uint8 in [0, 255], or float in [0, 1] with
    ``input_kind="float"``) -> ``B x 1 x S x S`` float32 and ``B`` float32, exactly what
    ``model.predict(images / 255)`` returns as ``final`` and ``score``.

    ``F^t`` is computed once here (the ATE adapter on the cached class embeddings) and
    kept as a buffer, so the text tower is not part of the graph.
    """

    def __init__(self, model: nn.Module, input_kind: str = "uint8"):
        super().__init__()
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")
        self.model = model.eval()
        self.input_kind = input_kind
        with torch.no_grad():
            self.register_buffer("text_features", model.text_features().detach().float().clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to(torch.float32)
        if self.input_kind == "uint8":
            x = x / 255.0
        tokens = self.model.backbone(x)
        out = self.model.maps_from_features(self.model.aie(tokens), tuple(images.shape[-2:]), tokens=tokens,
                                            text_features=self.text_features)
        return out["final"], out["score"]


@contextlib.contextmanager
def mha_fastpath(enabled: bool) -> Iterator[None]:
    """``nn.MultiheadAttention``'s fused inference kernel on or off, restored afterwards.

    The fused kernel (``aten::_native_multi_head_attention``) has no ONNX export; with it
    off the same attention is traced as plain matrix products and a softmax.
    """
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def check_exportable(model: nn.Module, config) -> None:
    """Raise ``ValueError`` naming the option when the checkpoint computes something the
    graph cannot reproduce."""
    if not bool(model.bank.built):
        raise ValueError("the checkpoint's prototype bank was never built (model.bank.built is False); "
                         "export a model trained with `vtfusion train`")
    if model.token_bank is not None and not bool(model.token_bank.built):
        raise ValueError("the checkpoint's memory bank for final_map='mpf_knn' was never built "
                         "(ModelConfig.final_map); export a model trained with `vtfusion train`")
    if model.backbone.image_size != config.data.image_size:
        raise ValueError(f"DataConfig.image_size={config.data.image_size} differs from the backbone's input "
                         f"size {model.backbone.image_size}; the exported graph takes one image size")


def deploy_metadata(config, extra: dict[str, Any], input_kind: str, object_name: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported graph, all strings.

    ``format``, ``vtfusion_version``, ``image_size``, ``input_kind`` (``uint8``/``float``),
    ``input_layout`` (NCHW RGB), ``precision`` (``fp32``; :func:`quantize_int8`: ``int8``), ``dataset``, ``category``, ``object_name``,
    ``config_hash`` (:func:`vtfusion.results.config_hash`) and the whole ``config`` as JSON.
    """
    from vtfusion.results import config_hash  # local: the results store is needed only here

    return {"format": FORMAT, "vtfusion_version": __version__, "image_size": str(config.data.image_size),
            "input_kind": input_kind, "input_layout": "NCHW RGB", "precision": "fp32",
            "dataset": str(extra.get("dataset", "")), "category": str(extra.get("category", "")),
            "object_name": object_name, "config_hash": config_hash(config),
            "config": json.dumps(config.to_dict(), sort_keys=True)}


def export_model(model: nn.Module, config, out: str | Path, extra: dict[str, Any] | None = None,
                 input_kind: str = "uint8", opset: int = OPSET) -> Path:
    """Write ``model`` (a trained :class:`~vtfusion.model.network.VTFusion`) as one ONNX
    graph to ``out`` (atomically); returns the path. See the module docstring."""
    onnx = require_deploy_extra()
    check_exportable(model, config)
    graph = DeployGraph(model.cpu(), input_kind).eval()
    size = config.data.image_size
    dtype = torch.uint8 if input_kind == "uint8" else torch.float32
    example = torch.zeros(2, 3, size, size, dtype=dtype)
    buffer = io.BytesIO()
    with torch.no_grad(), mha_fastpath(False), warnings.catch_warnings():
        # The tracer's notes (Python shape checks frozen at the traced size, constant
        # folding skipped for strided slices) are expected here and say nothing wrong.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(graph, (example,), buffer, input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES),
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"},
                                            OUTPUT_NAMES[1]: {0: "batch"}},
                              opset_version=opset, dynamo=False, do_constant_folding=True)
        except torch.onnx.OnnxExporterError as err:  # an operator of this config without an ONNX form
            raise ValueError(f"this checkpoint's graph cannot be exported to ONNX opset {opset} (BackboneConfig.arch="
                             f"{config.backbone.arch!r}, ModelConfig.variant={config.model.variant!r}, "
                             f"final_map={config.model.final_map!r}): {str(err).splitlines()[0]}") from err
    proto = onnx.load_from_string(buffer.getvalue())
    meta = deploy_metadata(config, extra or {}, input_kind, model.object_name)
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda path: onnx.save(proto, path))


def export_checkpoint(checkpoint: str | Path, out: str | Path, input_kind: str = "uint8") -> Path:
    """``vtfusion export``: load a checkpoint (:func:`vtfusion.checkpoint.load_checkpoint`)
    and write its graph to ``out``."""
    from vtfusion.checkpoint import load_checkpoint  # local: builds the backbone

    model, config, extra = load_checkpoint(checkpoint, device="cpu")
    return export_model(model, config, out, extra, input_kind)


def quantize_int8(src: str | Path, out: str | Path) -> Path:
    """An int8 copy of an exported graph: weights of MatMul/Gemm quantised per channel,
    activations quantised on the fly (``onnxruntime.quantization.quantize_dynamic``).

    The metadata is kept, with ``precision`` set to ``int8``. The accuracy change is
    measured, not assumed: ``bench/bench_onnx.py``.
    """
    onnx = require_deploy_extra()
    from onnxruntime.quantization import QuantType, quantize_dynamic  # local: the deploy extra is optional

    src, out = Path(src), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".quant")
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process is printed on the root logger
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
        proto = onnx.load(str(tmp))
    finally:
        logging.getLogger().setLevel(quiet)
        tmp.unlink(missing_ok=True)
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    meta["precision"] = "int8"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    return atomic_write(out, lambda path: onnx.save(proto, path))
