"""Knowledge distillation: forward KL of the teacher's next-token distribution to the student's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repulse.losses.reductions import masked_mean


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v)).

    Args:
        student_logits, teacher_logits: [B, T, V] at the same positions.
        mask: [B, T] positions that count (the response tokens' predictions).
    The teacher term is detached; the loss is 0 exactly when the two distributions agree.
    """
    teacher_logp = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    student_logp = F.log_softmax(student_logits.float(), dim=-1)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    return masked_mean(kl, mask)
