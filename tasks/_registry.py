"""The dataset ("task") registry."""

from probebench.core.registry import Registry

TASKS = Registry("task", group="probebench.tasks", lazy_modules=("tasks.scenes", "tasks.loaders"))
