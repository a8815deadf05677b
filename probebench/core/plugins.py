"""Outside backbones, tasks and probes without packaging: plugins.

A *plugin* is a ``.py`` file or an importable module name; importing it runs its ``@BACKBONES.register`` (or
``TASKS``/``PROBES``) decorators. Plugins come from ``--plugin PATH`` on the command line and from the
environment variable ``PROBEBENCH_PLUGINS`` (``os.pathsep``-separated). Every registry loads the variable's
plugins before a lookup, and the command line adds its ``--plugin`` files to the variable, so child processes
(sweep workers, torchrun ranks, SLURM jobs) see the same backbones. A plugin is imported once per process
(loading again is a no-op), and one that fails to import raises ONE :class:`ProbebenchError` naming its file,
the line, and the original error.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from probebench.core.errors import ProbebenchError

ENV_VAR = "PROBEBENCH_PLUGINS"

_LOADED: dict[str, ModuleType] = {}  # plugin key (resolved path or module name) → module
_LOADING: set[str] = set()  # keys being imported (a plugin that looks names up while it loads)
_HERE = os.path.dirname(os.path.abspath(__file__))
_IMPORTLIB = os.path.dirname(os.path.abspath(importlib.__file__))


def is_file_plugin(spec: str) -> bool:
    """A path (ends in ``.py`` or holds a path separator) rather than a dotted module name."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def plugin_key(spec: str) -> str:
    """The identity under which a plugin is loaded once: its resolved path, or its module name."""
    spec = spec.strip()
    return str(Path(spec).expanduser().resolve()) if is_file_plugin(spec) else spec


def env_plugins() -> list[str]:
    """The plugins listed in ``$PROBEBENCH_PLUGINS`` (empty items ignored)."""
    return [s.strip() for s in os.environ.get(ENV_VAR, "").split(os.pathsep) if s.strip()]


def load_env_plugins() -> list[ModuleType]:
    """Import the plugins of ``$PROBEBENCH_PLUGINS`` not imported yet (cheap when there are none)."""
    specs = env_plugins()
    return load_plugins(specs, origin=ENV_VAR) if specs else []


def load_plugins(specs: Iterable[str], origin: str = "--plugin") -> list[ModuleType]:
    """Import each plugin in order (see :func:`load_plugin`)."""
    modules = [load_plugin(spec, origin=origin) for spec in specs]
    return [m for m in modules if m is not None]


def load_plugin(spec: str, origin: str = "--plugin") -> ModuleType | None:
    """Import one plugin, a ``.py`` file or a module name, once per process; ``origin`` (where the user wrote
    it) goes into error messages. Returns the module (``None`` while that plugin is still being imported)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ProbebenchError(
            f"A plugin ({origin}) must be a path to a .py file or a module name, got {spec!r}."
        )
    key = plugin_key(spec)
    if key in _LOADED:
        return _LOADED[key]
    if key in _LOADING:
        return None
    _LOADING.add(key)
    try:
        module = _import_file(Path(key), origin) if is_file_plugin(spec) else _import_module(key, origin)
    finally:
        _LOADING.discard(key)
    _LOADED[key] = module
    return module


def _import_file(path: Path, origin: str) -> ModuleType:
    if not path.exists():
        raise ProbebenchError(f"Plugin file not found: {path} ({origin}).")
    if path.is_dir() or path.suffix != ".py":
        raise ProbebenchError(
            f"Plugin {path} ({origin}) is not a .py file; pass a .py file, or put a package on PYTHONPATH and "
            "pass its module name."
        )
    for module in list(sys.modules.values()):  # already imported as a regular module: do not run it twice
        file = getattr(module, "__file__", None)
        if isinstance(file, str) and os.path.basename(file) == path.name and Path(file).resolve() == path:
            return module
    stem = re.sub(r"\W", "_", path.stem)
    name = f"probebench_plugin_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a source loader
        raise ProbebenchError(f"Plugin {path} ({origin}) cannot be imported.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and typing look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise ProbebenchError(f"Plugin {path} ({origin}) failed to import: {describe_import_error(e)}") from e
    return module


def _import_module(name: str, origin: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise ProbebenchError(
                f"Plugin module {name!r} ({origin}) not found: {e}. A plugin is a path to a .py file or the "
                "name of a module importable from sys.path."
            ) from e
        raise ProbebenchError(
            f"Plugin {name!r} ({origin}) failed to import: {describe_import_error(e)}"
        ) from e
    except Exception as e:
        raise ProbebenchError(
            f"Plugin {name!r} ({origin}) failed to import: {describe_import_error(e)}"
        ) from e


def _is_machinery(filename: str) -> bool:
    """Frames of the import system and of this loader, which say nothing about the user's code."""
    if filename.startswith("<frozen "):
        return True
    folder, base = os.path.split(os.path.abspath(filename))
    return folder == _IMPORTLIB or (folder == _HERE and base in ("plugins.py", "registry.py"))


def describe_import_error(exc: BaseException) -> str:
    """``"FILE, line N: Type: message"`` for an exception raised while importing user code: the first frame of
    that code (the plugin's own line), plus where the error was raised when that is elsewhere (a module the
    plugin imports, a library it calls). A syntax error names its own file and line."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _is_machinery(f.filename)]
    first = (frames[0].filename, frames[0].lineno) if frames else None
    last = (frames[-1].filename, frames[-1].lineno) if frames else None
    if isinstance(exc, SyntaxError) and exc.filename:
        last = (exc.filename, exc.lineno)
        first = first or last
        text = f"{exc.msg}" + (f": {exc.text.strip()}" if exc.text and exc.text.strip() else "")
    else:
        text = str(exc)
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if first is None:
        return message
    where = f"{first[0]}, line {first[1]}"
    if last is not None and last != first:
        where += f" (raised in {last[0]}, line {last[1]})"
    return f"{where}: {message}"


def add_to_env(specs: Iterable[str]) -> None:
    """Append plugins (as resolved paths for files) to ``$PROBEBENCH_PLUGINS`` so child processes load them."""
    current = env_plugins()
    known = {plugin_key(s) for s in current}
    extra = [plugin_key(s) for s in specs if plugin_key(s) not in known]
    if extra:
        os.environ[ENV_VAR] = os.pathsep.join([*current, *dict.fromkeys(extra)])
