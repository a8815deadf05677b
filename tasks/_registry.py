"""The dataset ("task") registry."""

from probebench.registry import Registry

TASKS = Registry("task", group="probebench.tasks", lazy_modules=("tasks.scenes", "tasks.loaders"))
