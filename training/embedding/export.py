"""ONNX export of a sentence encoder, int8 dynamic quantisation, and an ONNX Runtime encoder to measure them.

sentence-transformers' own ONNX backend (``export_dynamic_quantized_onnx_model``) needs ``optimum-onnx``,
whose releases pin transformers < 4.58, which our stack (transformers 5) cannot take. The same two steps are
done here with the libraries under it: ``torch.onnx.export`` of the whole encoder (transformer, pooling,
normalisation) as one graph, then ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, one scale
per channel, activations quantised at run time), the recipe that backend applies on CPUs. Files are written to a temporary
name and renamed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.embedding.errors import EmbeddingSetupError

logger = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Whole(nn.Module):
    """The sentence-transformers pipeline as a function of the three tokenizer tensors."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        out = self.model({"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids})
        return out["sentence_embedding"]


def _atomic(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def export_onnx(model: Any, path: str | Path, opset: int = 17) -> Path:
    """Write ``model`` (a SentenceTransformer) as one ONNX graph, inputs named as its tokenizer's, with
    dynamic batch and sequence axes; the float32 model on the CPU."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    whole = _Whole(model).to("cpu").eval()
    example = model.preprocess(["an example sentence for tracing", "a second one"])
    args = tuple(example.get(k, torch.zeros_like(example["input_ids"])).to("cpu") for k in INPUTS)
    tmp = _atomic(path)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            whole, args, str(tmp), input_names=list(INPUTS), output_names=["sentence_embedding"], opset_version=opset,
            dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in INPUTS}, "sentence_embedding": {0: "batch"}}, dynamo=False,
        )
    os.replace(tmp, path)
    return path


def quantize_int8(src: str | Path, dst: str | Path, per_channel: bool = True) -> Path:
    """int8 dynamic quantisation of an ONNX file (weights int8, activations quantised at run time).

    Per channel by default: one scale per output row. With one scale per tensor (onnxruntime's default)
    the 2x student lost 0.011 fidelity and the teacher 0.023; per channel the student lost 0.001
    (docs/embedding.md), at the same size."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    tmp = _atomic(dst)
    quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel)
    os.replace(tmp, dst)
    return dst


class OnnxEncoder:
    """An Encoder (``encode(texts, batch_size) -> (N, D)``) on ONNX Runtime with the model's own tokenizer."""

    def __init__(self, onnx_path: str | Path, tokenizer: Any, max_seq_length: int, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not Path(onnx_path).is_file():
            raise EmbeddingSetupError(f"{onnx_path}: no ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.names = {i.name for i in self.session.get_inputs()}
        self.tokenizer, self.max_seq_length = tokenizer, max_seq_length

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np")
            feed = {k: enc[k].astype("int64") for k in INPUTS if k in self.names and k in enc}
            if "token_type_ids" in self.names and "token_type_ids" not in feed:
                feed["token_type_ids"] = (enc["input_ids"] * 0).astype("int64")
            out.append(torch.from_numpy(self.session.run(["sentence_embedding"], feed)[0]).float())
        return torch.cat(out) if out else torch.empty(0)


def export_all(model: Any, folder: str | Path) -> dict[str, Path]:
    """``folder/model.onnx`` and ``folder/model_int8.onnx`` of ``model``."""
    folder = Path(folder)
    fp32 = export_onnx(model, folder / "model.onnx")
    int8 = quantize_int8(fp32, folder / "model_int8.onnx")
    return {"onnx": fp32, "onnx_int8": int8}
