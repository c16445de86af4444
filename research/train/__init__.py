"""The one training system: state, step, sharding, checkpoints and loop, shared by every family."""
