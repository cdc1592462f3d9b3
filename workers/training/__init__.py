"""The framework-free training skeleton: the epoch loop and the job from data to downloads."""
