"""SlimSAM's two distillation losses and the schedule of their weight `a` (paper defaults).

Every term is a mean squared error between features of the same shape, so it is 0 when the student
computes exactly what its target computes. Per-block terms are averaged over blocks (and over q, k, v),
which keeps them on the scale of one MSE whatever the depth; the original code concatenates the blocks'
features before one MSE, which is the same average.

Step 1, bottleneck aligning (the embedding dim was pruned, the bottlenecks were kept, so the student's
q, k, v and MLP hidden features have the teacher's widths):
    (1 - a) * MSE(embedding, teacher) + a * (MSE(q, k, v features) + MSE(MLP hidden features)),
    a = 0.5 for the first 10 epochs, then 0.
Step 2, embedding aligning (the bottlenecks were pruned, the embedding dim was kept, so the student's block
outputs have the step-1 model's width):
    (1 - a) * MSE(embedding, teacher) + a * (MSE(block outputs, step-1 model) + MSE(embedding, step-1 model)),
    a = (N - n - 1) / N in epoch n < N, N = 10, then 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from slimsam.distill.features import EncoderFeatures

BOTTLENECK_ALPHA = 0.5  # stage 1: weight of the bottleneck-feature term while it is on
ALPHA_EPOCHS = 10  # stage 1: epochs with the feature term on; stage 2: N, epochs over which `a` decays to 0


def alpha_schedule(stage: int, epoch: int, alpha_epochs: int = ALPHA_EPOCHS,
                   bottleneck_alpha: float = BOTTLENECK_ALPHA) -> float:
    """Weight `a` of the intermediate-feature terms in (0-based) `epoch` of distillation stage 1 or 2."""
    if stage == 1:
        return bottleneck_alpha if epoch < alpha_epochs else 0.0
    if stage == 2:
        return (alpha_epochs - epoch - 1) / alpha_epochs if epoch < alpha_epochs else 0.0
    raise ValueError(f"distillation stage must be 1 or 2, got {stage}")


def mean_mse(students: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Average over pairs of MSE(student_i, target_i); pairs must have equal shapes."""
    if len(students) != len(targets) or not students:
        raise ValueError(f"need the same non-zero number of student and target features, got {len(students)} "
                         f"and {len(targets)}")
    return torch.stack([F.mse_loss(s.float(), t.float()) for s, t in zip(students, targets)]).mean()


def bottleneck_aligning_loss(student: EncoderFeatures, teacher: EncoderFeatures, alpha: float
                             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Step-1 loss; features need "qkv" and "mlp" captured (when alpha > 0). Returns (loss, its terms)."""
    embedding = F.mse_loss(student.embedding.float(), teacher.embedding.float())
    terms = {"embedding": embedding.item()}
    if alpha == 0:
        return embedding, terms
    qkv = (mean_mse(student.queries, teacher.queries) + mean_mse(student.keys, teacher.keys)
           + mean_mse(student.values, teacher.values)) / 3
    mlp = mean_mse(student.mlp_hidden, teacher.mlp_hidden)
    terms.update(qkv=qkv.item(), mlp=mlp.item())
    return (1 - alpha) * embedding + alpha * (qkv + mlp), terms


def embedding_aligning_loss(student: EncoderFeatures, teacher: EncoderFeatures, step1_model: EncoderFeatures | None,
                            alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Step-2 loss; `step1_model` (features with "blocks" captured) is needed only when alpha > 0.

    Returns (loss, its terms).
    """
    embedding = F.mse_loss(student.embedding.float(), teacher.embedding.float())
    terms = {"embedding": embedding.item()}
    if alpha == 0:
        return embedding, terms
    if step1_model is None:
        raise ValueError("embedding aligning with alpha > 0 needs the step-1 model's features")
    blocks = mean_mse(student.block_outputs, step1_model.block_outputs)
    step1_embedding = F.mse_loss(student.embedding.float(), step1_model.embedding.float())
    terms.update(blocks=blocks.item(), step1_embedding=step1_embedding.item())
    return (1 - alpha) * embedding + alpha * (blocks + step1_embedding), terms
