"""Model families as tasks for the shared trainer, one module each; `research.registry.TASKS` names
them and imports a family's module the first time its name is asked for."""
