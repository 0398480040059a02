"""Knowledge distillation (Hinton et al. 2015), as LwF uses it (Li & Hoiem 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor,
                      temperature: float = 2.0, *, padded: bool = False) -> Tensor:
    """T² · KL(softmax(z_teacher/T) || softmax(z_student/T)), averaged over all leading dims.

    With `padded`, units masked to -inf in the teacher (padding of a smaller head) carry no
    probability and are left out. The T² factor keeps gradient magnitudes independent of T.
    """
    log_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    if not padded:  # the common case, in one fused kernel
        per_row = F.kl_div(log_student, log_teacher, log_target=True, reduction="sum")
        return per_row / (log_teacher.numel() // log_teacher.shape[-1]) * temperature**2
    teacher = log_teacher.exp()
    valid = teacher > 0
    terms = torch.where(valid, teacher * (log_teacher - log_student.masked_fill(~valid, 0)), 0)
    return terms.sum(-1).mean() * temperature**2
