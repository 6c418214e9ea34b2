"""Rollout: vLLM engines that sample responses and take weight updates."""
