"""FSDP2 learner ranks: model inputs, the policy module, and the training step."""
