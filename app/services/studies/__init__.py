"""Hyperparameter studies: validation, sampling, ASHA and the controller that runs trials."""
