"""Bottleneck pruning: slice the relative-position embeddings (this project) or re-create them as zeros
(the original SlimSAM code)? Same model, same kept channels; the embedding error against the unpruned
model tells which start is closer for the distillation that follows.

    python benchmarks/relpos_after_pruning.py --model facebook/sam-vit-base --images DIR   # real weights
    python benchmarks/relpos_after_pruning.py --random sam-b --images DIR                  # no download

Random SAM weights have all-zero rel-pos (SAM initialises them so), so --random draws them from
N(0, --rel-pos-std^2): a stand-in for trained ones, which only real weights can replace.
"""
from __future__ import annotations

import argparse
import copy

import torch
from transformers import SamModel

import slimsam
from slimsam.data.images import iter_pixel_values, list_images
from slimsam.model.configs import processor_for, sam_config
from slimsam.pruning.importance import bottleneck_scores, embedding_scores
from slimsam.pruning.steps import prune_bottlenecks, prune_embedding_dim


def embeddings(model, pixel_values):
    with torch.inference_mode():
        return [model.vision_encoder(p).last_hidden_state for p in pixel_values]


def relative_mse(outputs, references) -> float:
    """sum ||out - ref||^2 / sum ||ref||^2 over images (0 = identical)."""
    num = sum(((o - r) ** 2).sum() for o, r in zip(outputs, references))
    return float(num / sum((r ** 2).sum() for r in references))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="alias, Hub id or folder with real weights")
    source.add_argument("--random", choices=["sam-b", "sam-l", "sam-h"], help="random weights of this size")
    parser.add_argument("--images", required=True)
    parser.add_argument("--num-images", type=int, default=2)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.77])
    parser.add_argument("--rel-pos-std", type=float, default=0.1)
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.model:
        model, processor = slimsam.load_model(args.model)
    else:
        model = SamModel(sam_config(args.random)).eval()
        processor = processor_for(model.config)
        with torch.no_grad():
            for name, param in model.vision_encoder.named_parameters():
                if "rel_pos" in name:
                    param.normal_(std=args.rel_pos_std)
    pixels = list(iter_pixel_values(list_images(args.images), processor, limit=args.num_images))
    reference = embeddings(model, pixels)
    print("| ratio | rel-pos | embedding rel. MSE vs unpruned |\n|---|---|---|")
    for ratio in args.ratios:
        step1 = copy.deepcopy(model)
        with torch.no_grad():
            prune_embedding_dim(step1, ratio, embedding_scores(step1, "magnitude"))
        for variant in ("sliced", "zeroed"):
            pruned = copy.deepcopy(step1)
            with torch.no_grad():
                prune_bottlenecks(pruned, ratio, *bottleneck_scores(pruned, "magnitude"))
                if variant == "zeroed":
                    for layer in pruned.vision_encoder.layers:
                        layer.attn.rel_pos_h.zero_()
                        layer.attn.rel_pos_w.zero_()
            print(f"| {ratio} | {variant} | {relative_mse(embeddings(pruned, pixels), reference):.4f} |", flush=True)


if __name__ == "__main__":
    main()
