"""SlimSAM's two distillation losses and the schedule of their weight `a` (the official code's defaults).

Every term is a mean squared error between features of the same shape, so it is 0 when the student
computes exactly what its target computes. Per-block terms are averaged over blocks (and over q, k, v),
which keeps them on the scale of one MSE whatever the depth; the official code concatenates equal-shape
features before one MSE, which is the same average.

Step 1, bottleneck aligning (the embedding dim was pruned, the bottlenecks were kept, so the student's
q, k, v and MLP hidden features have the teacher's widths):
    (1 - a) * MSE(embedding, teacher) + a * (MSE(q, k, v features) + MSE(MLP hidden features)),
    a = 0.5 in the first N = 10 epochs, then 0.
Step 2, embedding aligning (the bottlenecks were pruned, the embedding dim was kept, so the student's
residual stream has the step-1 model's width):
    (1 - a) * MSE(embedding, teacher) + a * (MSE(stream features, step-1 model) + MSE(embedding, step-1 model)),
    a = (N - n - 1) / N in epoch n < N, then 0, with N = 11 as in the official code (the paper's text: 10).
The stream features (`step2_features`, one of STEP2_FEATURES) are "official": the 2 x depth + 1 points of
the residual stream the official code compares (patch embedding + pos_embed, and per block after attention
and after the MLP), or "block-outputs": the depth block outputs, as the paper's text describes them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from slimsam.distill.features import EncoderFeatures

BOTTLENECK_ALPHA = 0.5  # stage 1: weight of the bottleneck-feature term while it is on
# Stage 1: epochs with the feature term on (official prune_distill_step1.py); stage 2: N, the epochs over which
# `a` decays to 0 (official prune_distill_step2.py: 11; the paper's text says 10).
ALPHA_EPOCHS = {1: 10, 2: 11}
# The step-2 feature term: which captured features (slimsam.distill.features) it compares with the step-1 model.
STEP2_FEATURES = {"official": "stream", "block-outputs": "blocks"}


def alpha_schedule(stage: int, epoch: int, alpha_epochs: int | None = None,
                   bottleneck_alpha: float = BOTTLENECK_ALPHA) -> float:
    """Weight `a` of the intermediate-feature terms in (0-based) `epoch` of distillation stage 1 or 2.

    alpha_epochs: N (default ALPHA_EPOCHS[stage]).
    """
    if stage not in ALPHA_EPOCHS:
        raise ValueError(f"distillation stage must be 1 or 2, got {stage}")
    n = ALPHA_EPOCHS[stage] if alpha_epochs is None else alpha_epochs
    if stage == 1:
        return bottleneck_alpha if epoch < n else 0.0
    return (n - epoch - 1) / n if epoch < n else 0.0


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


def step2_features(features: EncoderFeatures, which: str = "official") -> list[torch.Tensor]:
    """The features the step-2 term compares: `which` is a key of STEP2_FEATURES (captured as its value)."""
    if which not in STEP2_FEATURES:
        raise ValueError(f"step-2 features must be one of {tuple(STEP2_FEATURES)}, got {which!r}")
    return features.residual_stream if STEP2_FEATURES[which] == "stream" else features.block_outputs


def embedding_aligning_loss(student: EncoderFeatures, teacher: EncoderFeatures, step1_model: EncoderFeatures | None,
                            alpha: float, which: str = "official") -> tuple[torch.Tensor, dict[str, float]]:
    """Step-2 loss; `step1_model` (features with STEP2_FEATURES[which] captured, as the student's) is needed only
    when alpha > 0. Returns (loss, its terms: "embedding", "step1_features", "step1_embedding").
    """
    embedding = F.mse_loss(student.embedding.float(), teacher.embedding.float())
    terms = {"embedding": embedding.item()}
    if alpha == 0:
        return embedding, terms
    if step1_model is None:
        raise ValueError("embedding aligning with alpha > 0 needs the step-1 model's features")
    features = mean_mse(step2_features(student, which), step2_features(step1_model, which))
    step1_embedding = F.mse_loss(student.embedding.float(), step1_model.embedding.float())
    terms.update(step1_features=features.item(), step1_embedding=step1_embedding.item())
    return (1 - alpha) * embedding + alpha * (features + step1_embedding), terms
