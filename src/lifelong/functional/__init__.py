"""Pure tensor maths shared by the methods."""

from .distillation import distillation_loss
from .fisher import diagonal_fisher
from .projection import dot, project_away_from_conflict_
from .quadratic import add_quadratic_gradient_, gradients_of, quadratic_value

__all__ = ["add_quadratic_gradient_", "diagonal_fisher", "distillation_loss", "dot",
           "gradients_of", "project_away_from_conflict_", "quadratic_value"]
