"""Linen modules per family; `research.registry.MODELS` names them and imports a module the first
time one of its networks is asked for."""
