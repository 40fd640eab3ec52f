"""Tasks: each task type's data modules, evaluators, model head and what distillation compares (`base.Task`)."""
