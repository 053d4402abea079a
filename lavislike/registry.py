"""One ``Registry`` class, one instance per kind of swappable component.

Components register themselves where they are defined::

    from lavislike.registry import IMAGE_ENCODERS

    @IMAGE_ENCODERS.register("my_vit", config=MyVitConfig)
    class MyVit(ImageEncoder):
        ...

Third-party packages add components through the ``lavislike.plugins`` entry-point
group (the entry point names a module to import or a callable to call); plugins and
the built-in modules are imported lazily, on the first lookup, so ``import lavislike``
stays cheap and a broken plugin only costs a warning.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from lavislike.common.suggest import did_you_mean
from lavislike.errors import RegistryError

logger = logging.getLogger(__name__)

PLUGIN_GROUP = "lavislike.plugins"

# Modules that hold lavislike's own registrations, imported on the first lookup.
_BUILTIN_MODULES = (
    "lavislike.models",
    "lavislike.processors",
    "lavislike.datasets",
    "lavislike.tasks",
    "lavislike.runners",
)


@dataclass(frozen=True)
class Entry:
    """What a registry holds for one name."""

    name: str
    obj: Any
    config: type | None  # dataclass schema of the component's YAML block, if any
    origin: str  # "module:line" of the definition, for duplicate errors


def _origin(obj: Any) -> str:
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (TypeError, OSError):
        return getattr(obj, "__module__", repr(obj))


class Registry:
    """Name -> component map for one kind (models, image encoders, ...).

    Unknown names raise :class:`RegistryError` listing the known names and the closest
    match; a second registration of a name raises and names both definitions.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    # -- registration -------------------------------------------------------------
    def register(
        self, name: str | None = None, obj: Any = None, *, config: type | None = None
    ) -> Callable[[Any], Any] | Any:
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator.

        Args:
            name: registry name; defaults to the object's ``__name__``.
            obj: the class or function to register (direct call form).
            config: dataclass that types this component's YAML block; the config
                loader validates user keys against it.
        """

        def add(target: Any) -> Any:
            key = name or target.__name__
            if key in self._entries:
                first = self._entries[key]
                if first.obj is target:  # re-import of the same module
                    return target
                raise RegistryError(
                    f"{self.kind} '{key}' is registered twice: first at {first.origin}, "
                    f"again at {_origin(target)}"
                )
            self._entries[key] = Entry(key, target, config, _origin(target))
            return target

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and interactive sessions re-registering a class)."""
        self._entries.pop(name, None)

    # -- lookup -------------------------------------------------------------------
    def entry(self, name: str) -> Entry:
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        """The one-line message for an unknown ``name``: near match or plugin hint, known names.

        A dotted name (``mypkg.my_vit``) or one close to no known name is more likely a
        plugin's component than a typo, so it gets the plugin hint instead of a guess.
        """
        known = self.names()
        near = did_you_mean(name, known)
        if "." in str(name) or ":" in str(name) or not near:
            near += (f" Is the plugin that provides it installed? (entry point group '{PLUGIN_GROUP}', "
                     "or name its module under 'imports:')")
        return f"unknown {self.kind} '{name}'.{near} Known {self.kind}s: {', '.join(known) or '(none)'}"

    def get(self, name: str) -> Any:
        """The component registered as ``name``."""
        return self.entry(name).obj

    def get_config(self, name: str) -> type | None:
        """The dataclass schema registered with ``name`` (None when it has none)."""
        return self.entry(name).config

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


MODELS = Registry("model")
IMAGE_ENCODERS = Registry("image encoder")
LLMS = Registry("LLM")
PROCESSORS = Registry("processor")
DATASETS = Registry("dataset")
TASKS = Registry("task")
RUNNERS = Registry("runner")
LR_SCHEDULERS = Registry("lr scheduler")

ALL = {
    "models": MODELS,
    "image_encoders": IMAGE_ENCODERS,
    "llms": LLMS,
    "processors": PROCESSORS,
    "datasets": DATASETS,
    "tasks": TASKS,
    "runners": RUNNERS,
    "lr_schedulers": LR_SCHEDULERS,
}

# -- plugins ----------------------------------------------------------------------
_loaded = False
_loading = False
_imported: set[str] = set()


def import_module_or_warn(spec: str, source: str) -> None:
    """Import ``module`` or call ``module:callable``; warn (never raise) on failure.

    Args:
        spec: ``"pkg.module"`` or ``"pkg.module:function"``.
        source: what asked for it, named in the warning (entry point, YAML file).
    """
    if spec in _imported:
        return
    _imported.add(spec)
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        if attr:
            target = module
            for part in attr.split("."):
                target = getattr(target, part)
            target()
    except Exception as exc:  # a broken plugin must not break the rest
        warnings.warn(
            f"lavislike: plugin '{spec}' from {source} failed to load and is skipped: "
            f"{type(exc).__name__}: {exc}",
            RuntimeWarning,
            stacklevel=3,
        )


def import_strict(spec: str, source: str) -> None:
    """Import a module named by the user (YAML ``imports:``); errors are clear lines."""
    from lavislike.errors import ConfigError

    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        if attr:
            getattr(module, attr)()
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{source}: cannot import '{spec}': {exc}") from None
    _imported.add(spec)


def load_plugins() -> None:
    """Import lavislike's own registrations and every ``lavislike.plugins`` entry point.

    Runs once; safe to call from anywhere (re-entrant calls during the import return).
    """
    global _loaded, _loading
    if _loaded or _loading:
        return
    _loading = True
    try:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        from importlib.metadata import entry_points

        for ep in entry_points(group=PLUGIN_GROUP):
            import_module_or_warn(ep.value, f"entry point '{ep.name}' ({PLUGIN_GROUP})")
        _loaded = True
    finally:
        _loading = False


class _LavisView:
    """LAVIS-style helpers (``registry.get_model_class`` ...) over the same registries."""

    def get_model_class(self, name: str) -> Any:
        return MODELS.get(name)

    def get_processor_class(self, name: str) -> Any:
        return PROCESSORS.get(name)

    def get_builder_class(self, name: str) -> Any:
        return DATASETS.get(name)

    def get_task_class(self, name: str) -> Any:
        return TASKS.get(name)

    def get_runner_class(self, name: str) -> Any:
        return RUNNERS.get(name)

    def get_lr_scheduler_class(self, name: str) -> Any:
        return LR_SCHEDULERS.get(name)

    def list_models(self) -> list[str]:
        return MODELS.names()

    def list_processors(self) -> list[str]:
        return PROCESSORS.names()

    def list_datasets(self) -> list[str]:
        return DATASETS.names()

    def list_tasks(self) -> list[str]:
        return TASKS.names()

    def list_runners(self) -> list[str]:
        return RUNNERS.names()

    def list_lr_schedulers(self) -> list[str]:
        return LR_SCHEDULERS.names()


registry = _LavisView()
