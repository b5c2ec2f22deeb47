"""Node meta keys that say what a tensor of a training graph is, where no graph signature spec says so.

Passes that consume gradients inside the program (the fused update) set them; the memory profile reads them.
Node meta survives ``to_executorch``, so the keys reach the planned graph the profile reads.
"""

GRADIENT_OF = "memwall_gradient_of"  # the parameter (fully qualified name) whose gradient the node computes
OPTIMIZER_STATE_OF = "memwall_optimizer_state_of"  # on an optimizer state buffer: the parameter it belongs to
