"""PyTorch -> ONNX exports, run as a script by the throwaway conversion venv's python.

Not imported by the analyzer: it needs torch, transformers, sentence-transformers and
efficientnet-lite-pytorch, which only the conversion venv has (see ``build_text`` and
``build_classifier``). It imports nothing from this repository for the same reason.

    python torch_export.py text --model-dir DIR --output M.onnx --sentences S.json --reference R.npy
    python torch_export.py classifier --weights W.pth --output M.onnx --inputs X.npy --reference R.npy

Each writes the ONNX file and the reference implementation's answer on the given inputs, so that
the build can check the exported model, run by onnxruntime through the analyzer's own wrapper,
against it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

# Opset 17 has LayerNormalization as one op (BERT) and is run by every onnxruntime >= 1.14.
OPSET = 17


class _TokenEmbeddings(torch.nn.Module):
    """BERT's last hidden state as one named output; pooling happens at run time."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


def export_text(model_dir: Path, output: Path, sentences_path: Path, reference_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    # Eager attention exports as plain MatMul/Softmax ops; how the SDPA path exports varies with torch.
    bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    sample = tokenizer(["a dog", "two people near the door"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        torch.onnx.export(
            _TokenEmbeddings(bert),
            tuple(sample[name] for name in names),
            str(output),
            input_names=names,
            output_names=["token_embeddings"],
            dynamic_axes={
                **{name: {0: "batch", 1: "sequence"} for name in names},
                "token_embeddings": {0: "batch", 1: "sequence"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
        )
    # The reference: sentence-transformers itself (Transformer -> mean pooling -> Normalize,
    # as the package's modules.json declares), on the build's sentences.
    sentences = json.loads(sentences_path.read_text())
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(
        sentences, convert_to_numpy=True, normalize_embeddings=True
    )
    np.save(reference_path, reference.astype(np.float32))
    print(f"exported {output} ({output.stat().st_size / 1e6:.1f} MB); reference {reference.shape}")


def export_classifier(weights: Path, output: Path, inputs_path: Path, reference_path: Path) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    # The package's own loader calls torch.load without map_location; load on the CPU ourselves.
    state = torch.load(str(weights), map_location="cpu", weights_only=False)
    result = model.load_state_dict(state, strict=True)
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(f"weights do not fit efficientnet-lite0: {result}")
    # No set_swish(): it would replace Lite's ReLU6 (the Lite variants drop swish) with swish.
    if not isinstance(model._swish, torch.nn.ReLU6):
        raise SystemExit(f"efficientnet-lite0 should use ReLU6, found {model._swish!r}")
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 224, 224),),
            str(output),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
        reference = model(torch.from_numpy(np.load(inputs_path))).numpy()
    np.save(reference_path, reference.astype(np.float32))
    print(f"exported {output} ({output.stat().st_size / 1e6:.1f} MB); reference {reference.shape}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    text = commands.add_parser("text")
    text.add_argument("--model-dir", type=Path, required=True)
    text.add_argument("--output", type=Path, required=True)
    text.add_argument("--sentences", type=Path, required=True)
    text.add_argument("--reference", type=Path, required=True)
    classifier = commands.add_parser("classifier")
    classifier.add_argument("--weights", type=Path, required=True)
    classifier.add_argument("--output", type=Path, required=True)
    classifier.add_argument("--inputs", type=Path, required=True)
    classifier.add_argument("--reference", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.command == "text":
        export_text(args.model_dir, args.output, args.sentences, args.reference)
    else:
        export_classifier(args.weights, args.output, args.inputs, args.reference)


if __name__ == "__main__":
    main()
