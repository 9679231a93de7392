"""Plugin loading, policy (``plugins.toml``) and the component registry.

Core code asks a :class:`PluginSet` for components by name and never touches ``pm.hook``.
Plugins come from the ``fgm`` entry-point group (built-ins use it too) and from local
module paths; each is loaded and registered on its own, so one broken plugin is reported
by name and skipped while everything else keeps working.

Environment:
- ``FGM_PLUGINS``: comma-separated plugin names; only these are loaded (reproducible runs,
  tests). ``FGM_PLUGINS=""`` is not a restriction; use ``FGM_PLUGINS=none`` to load none.
- ``FGM_STRICT_PLUGINS=1``: a plugin failure is fatal.
- ``FGM_PLUGINS_TOML``: path of the plugin policy file.

Run and export directories are data, never code: a ``plugins.toml`` is read only where the
user named it (``--plugins-toml``, ``$FGM_PLUGINS_TOML``), in the working directory, or beside
a config file given with ``-c``, and never from a run or export directory (see
:meth:`PluginPolicy.discover`). ``blocked`` and ``enabled`` apply to local plugins too.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from fgm_core import env, hookspecs
from fgm_core.errors import PLUGIN_FAILURES, FGMError, PluginError, unknown_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENTRY_POINT_GROUP = "fgm"
COMPONENT_KINDS = ("divergences", "architectures", "priors", "datasets", "exporters")
BUILTIN_DIST = "fgm"
POLICY_FILE = "plugins.toml"


# --------------------------------------------------------------------------- policy
@dataclass
class PluginPolicy:
    """The parsed ``plugins.toml``: which plugins load, which must, and their settings."""

    enabled: list[str] | None = None  # None: every installed plugin
    blocked: list[str] = field(default_factory=list)
    required: dict[str, str] = field(default_factory=dict)  # name -> version specifier
    local: dict[str, Path] = field(default_factory=dict)  # name -> module path
    strict: bool = False
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: Path | None = None

    @classmethod
    def load(cls, path: Path) -> PluginPolicy:
        """Read and validate a policy file; unknown keys are errors."""
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise FGMError(f"cannot read plugin policy {path}: {e.strerror}", "check the path") from e
        except tomllib.TOMLDecodeError as e:
            raise FGMError(f"plugin policy {path} is not valid TOML: {e}", "fix the syntax") from e
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> PluginPolicy:
        where = str(path or "plugins.toml")
        unknown = set(data) - {"plugins", "settings"}
        if unknown:
            raise FGMError(f"{where}: unknown table [{sorted(unknown)[0]}]", "allowed: [plugins], [settings.NAME]")
        p = data.get("plugins", {})
        allowed = {"enabled", "blocked", "required", "local", "strict"}
        bad = set(p) - allowed
        if bad:
            raise FGMError(f"{where}: unknown key plugins.{sorted(bad)[0]}", f"allowed: {', '.join(sorted(allowed))}")

        def names(key: str) -> list[str] | None:
            v = p.get(key)
            if v is None:
                return None
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise FGMError(f"{where}: plugins.{key} must be a list of plugin names", 'e.g. ["mlp"]')
            return v

        required = p.get("required", {})
        if not isinstance(required, dict):
            raise FGMError(f"{where}: plugins.required must be a table", 'e.g. divergences = ">=0.1"')
        for name, spec in required.items():
            try:
                SpecifierSet(spec)
            except (InvalidSpecifier, TypeError) as e:
                raise FGMError(
                    f"{where}: plugins.required.{name} = {spec!r} is not a version specifier",
                    'use e.g. ">=1.0,<2"',
                ) from e
        base = path.parent if path else Path.cwd()
        local = {}
        if not isinstance(p.get("local", {}), dict):
            raise FGMError(f"{where}: plugins.local must be a table", 'e.g. [plugins.local] mine = "my_plugin.py"')
        for name, mod in p.get("local", {}).items():
            local[name] = (base / str(mod)).resolve()
        settings = data.get("settings", {})
        if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
            raise FGMError(f"{where}: [settings] must hold one table per plugin", "use [settings.NAME]")
        strict = p.get("strict", False)
        if not isinstance(strict, bool):
            raise FGMError(f"{where}: plugins.strict must be true or false", "e.g. strict = true")
        return cls(
            enabled=names("enabled"),
            blocked=names("blocked") or [],
            required=dict(required),
            local=local,
            strict=strict,
            settings=settings,
            source=path,
        )

    @classmethod
    def discover(cls, explicit: Path | None = None, near: Path | None = None) -> PluginPolicy:
        """Find the policy: explicit path, ``$FGM_PLUGINS_TOML``, beside ``near`` (the folder of
        a config file the user named), then the working directory. A ``plugins.toml`` found in
        a run or export directory is ignored: it came with data, and could import any code."""
        if explicit is None and os.environ.get("FGM_PLUGINS_TOML"):
            explicit = Path(os.environ["FGM_PLUGINS_TOML"])
        if explicit is not None:
            if not explicit.is_file():
                raise FGMError(f"plugin policy {explicit} not found", "check --plugins-toml / FGM_PLUGINS_TOML")
            return cls.load(explicit)
        for d in [near, Path.cwd()]:
            if d is not None and (d / POLICY_FILE).is_file() and not is_data_folder(d):
                return cls.load(d / POLICY_FILE)
        return cls()


def is_data_folder(folder: Path) -> bool:
    """True for a run directory (``fgm.json``) or an export directory (an fgm ``manifest.json``)."""
    if (folder / "fgm.json").exists():
        return True
    try:
        m = json.loads((folder / "manifest.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and "exporter" in m and "files" in m


# --------------------------------------------------------------------------- registry
@dataclass
class Component:
    kind: str
    name: str
    factory: Any
    plugin: str
    description: str = ""


@dataclass
class PluginInfo:
    """What ``fgm plugins`` shows about one plugin."""

    name: str
    version: str
    source: str  # "builtin" | "third-party" | "local"
    origin: str  # distribution name or file path
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    #: kind -> component name -> the description given to ``register()`` (empty ones left out)
    descriptions: dict[str, dict[str, str]] = field(default_factory=dict)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. a misspelled hook name
    clashes: list[str] = field(default_factory=list)  # components another plugin registers too

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "origin": self.origin,
            "hooks": self.hooks,
            "components": self.components,
            "descriptions": self.descriptions,
            "error": self.error,
            "warnings": self.warnings,
            "clashes": self.clashes,
        }


class PluginSet:
    """The loaded plugins and the components they registered (a typed facade over pluggy)."""

    def __init__(
        self,
        policy: PluginPolicy | None = None,
        *,
        strict: bool | None = None,
        only: list[str] | None = None,
        extra_local: dict[str, Path] | None = None,
    ) -> None:
        self.policy = policy or PluginPolicy()
        env_strict = env.flag("FGM_STRICT_PLUGINS")
        self.strict = bool(strict) or env_strict or self.policy.strict
        env_only = os.environ.get("FGM_PLUGINS")
        if only is None and env_only:
            only = [] if env_only.strip().lower() == "none" else [s.strip() for s in env_only.split(",") if s.strip()]
        self.only = only
        self.pm = pluggy.PluginManager("fgm")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[str] = []
        self.components: dict[str, dict[str, Component]] = {k: {} for k in COMPONENT_KINDS}
        #: names registered by several plugins -> their components; an error only when used
        self.clashes: dict[str, dict[str, list[Component]]] = {k: {} for k in COMPONENT_KINDS}
        local = dict(self.policy.local)
        local.update(extra_local or {})
        self._load_entry_points()
        for name, path in local.items():
            self._load_local(name, path)
        self._check_required()
        for kind in COMPONENT_KINDS:
            self._register_all(kind)
        for kind, clashes in self.clashes.items():
            for name, comps in clashes.items():
                for c in comps:
                    others = " and ".join(sorted(repr(o.plugin) for o in comps if o is not c))
                    self.infos[c.plugin].clashes.append(f"{kind[:-1]} {name!r} (also registered by {others})")

    # -- loading -------------------------------------------------------------------------
    def _wanted(self, name: str) -> bool:
        """Whether to load plugin ``name`` (installed or local): ``FGM_PLUGINS``, ``blocked``, ``enabled``."""
        return self._unwanted_why(name) is None

    def _unwanted_why(self, name: str) -> str | None:
        if self.only is not None and name not in self.only:
            return "FGM_PLUGINS does not list it"
        if name in self.policy.blocked:
            return f"{self.policy.source or 'the plugin policy'} blocks it"
        if self.policy.enabled is not None and name not in self.policy.enabled and name not in self.policy.required:
            return f"{self.policy.source or 'the plugin policy'} does not enable it"
        return None

    def _fail(self, name: str, what: str, exc: BaseException) -> None:
        detail = " ".join(str(exc).split())  # one line, whatever the exception's message
        msg = f"plugin {name!r} {what}: {type(exc).__name__}: {detail}"
        if self.strict:
            raise PluginError(msg, "fix or uninstall the plugin, or run without --strict-plugins") from exc
        self.failures.append(msg)
        if name in self.infos:
            self.infos[name].error = msg

    def _add(self, name: str, module: ModuleType, info: PluginInfo) -> None:
        if name in self.infos and self.infos[name].error is None:
            prev = self.infos[name]
            raise PluginError(
                f"two plugins are named {name!r}: {prev.origin} and {info.origin}",
                "uninstall one of them or block it in plugins.toml",
            )
        self.infos[name] = info
        try:
            self.pm.register(module, name=name)
        except PLUGIN_FAILURES as e:  # noqa: BLE001 - e.g. a hookimpl whose arguments match no hookspec
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self._fail(name, "has invalid hooks", e)
            return
        callers = self.pm.get_hookcallers(module) or []
        info.hooks = sorted(h.name for h in callers if h.has_spec())
        for h in callers:  # what pluggy's check_pending finds, per plugin and with a suggestion
            if not h.has_spec() and not all(i.optionalhook for i in h.get_hookimpls() if i.plugin is module):
                known = [n for n, c in vars(self.pm.hook).items() if not n.startswith("_") and c.has_spec()]
                close = difflib.get_close_matches(h.name, known, n=1)
                msg = f"plugin {name!r} implements {h.name!r}, which is not an fgm hook" + (
                    f" (did you mean {close[0]!r}?)" if close else ""
                )
                if self.strict:
                    raise PluginError(msg, "rename the hook, or run without --strict-plugins")
                info.warnings.append(msg)

    def _load_entry_points(self) -> None:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: e.name):
            if not self._wanted(ep.name):
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            version = dist.version if dist is not None else "?"
            source = "builtin" if dist_name == BUILTIN_DIST else "third-party"
            info = PluginInfo(ep.name, version, source, dist_name)
            try:
                module = ep.load()
            except BaseException as e:  # noqa: BLE001 - any import failure, sys.exit() too, is reported
                if isinstance(e, KeyboardInterrupt):
                    raise
                self.infos.setdefault(ep.name, info)
                self._fail(ep.name, "failed to import", e)
                continue
            self._add(ep.name, module, info)

    def _load_local(self, name: str, path: Path) -> None:
        if not self._wanted(name):
            return
        info = PluginInfo(name, "local", "local", str(path))
        try:
            module = load_module_from_path(name, path)
        except FGMError:
            raise
        except BaseException as e:  # noqa: BLE001 - sys.exit() at import too; Ctrl-C still stops
            if isinstance(e, KeyboardInterrupt):
                raise
            self.infos.setdefault(name, info)
            self._fail(name, "failed to import", e)
            return
        info.version = str(getattr(module, "__version__", "local"))
        self._add(name, module, info)

    def _check_required(self) -> None:
        for name, spec in self.policy.required.items():
            info = self.infos.get(name)
            if info is None or info.error:
                raise PluginError(
                    f"required plugin {name!r} ({spec}) is not installed" + (" (it failed to load)" if info else ""),
                    "pip install the package that provides it, or remove it from [plugins.required]",
                )
            try:
                ok = Version(info.version) in SpecifierSet(spec)
            except InvalidVersion:
                ok = False
            if not ok:
                raise PluginError(
                    f"required plugin {name!r} is version {info.version}, policy asks {spec}",
                    "install a matching version or change [plugins.required]",
                )

    def _register_all(self, kind: str) -> None:
        hook = getattr(self.pm.hook, f"register_{kind}")
        for impl in reversed(hook.get_hookimpls()):
            plugin = impl.plugin_name
            if self.infos[plugin].error:
                continue
            staged: list[Component] = []

            def register(
                name: str, factory: Any, description: str = "", *, _p: str = plugin, _staged: list[Component] = staged
            ) -> None:
                if not isinstance(name, str) or not name:
                    raise TypeError(f"component name must be a non-empty string, got {name!r}")
                if not callable(factory):
                    raise TypeError(f"factory for {name!r} is not callable")
                if not isinstance(description, str):
                    raise TypeError(f"description of {name!r} must be a string, got {type(description).__name__}")
                _staged.append(Component(kind, name, factory, _p, description))

            kwargs = {"register": register, "settings": self.settings(plugin)}
            kwargs = {k: v for k, v in kwargs.items() if k in impl.argnames}
            try:
                impl.function(**kwargs)
            except PLUGIN_FAILURES as e:  # noqa: BLE001
                self._fail(plugin, f"raised in register_{kind}", e)
                self._drop_components(plugin)
                continue
            for c in staged:
                self.infos[plugin].components.setdefault(kind, []).append(c.name)
                if c.description:
                    self.infos[plugin].descriptions.setdefault(kind, {})[c.name] = c.description
                prev = self.components[kind].pop(c.name, None)
                if prev is None and c.name not in self.clashes[kind]:
                    self.components[kind][c.name] = c
                    continue
                self.clashes[kind].setdefault(c.name, [prev] if prev else []).append(c)
                if self.strict:
                    raise self._clash_error(kind, c.name)

    def _clash_error(self, kind: str, name: str) -> PluginError:
        owners = sorted(c.plugin for c in self.clashes[kind][name])
        return PluginError(
            f"{kind[:-1]} {name!r} is registered by {len(owners)} plugins: {' and '.join(map(repr, owners))}",
            "block one of them in plugins.toml ([plugins] blocked = [...])",
        )

    def _drop_components(self, plugin: str) -> None:
        """Forget what a plugin registered through its other hooks: a failed plugin is skipped whole."""
        for kind in COMPONENT_KINDS:
            self.components[kind] = {n: c for n, c in self.components[kind].items() if c.plugin != plugin}
            for name, comps in list(self.clashes[kind].items()):
                comps[:] = [c for c in comps if c.plugin != plugin]
                if len(comps) < 2:  # the clash is gone with the failed plugin
                    del self.clashes[kind][name]
                    self.components[kind].update({c.name: c for c in comps})
        self.infos[plugin].components = {}
        self.infos[plugin].descriptions = {}

    # -- queries -------------------------------------------------------------------------
    def settings(self, plugin: str) -> dict[str, Any]:
        return dict(self.policy.settings.get(plugin, {}))

    def names(self, kind: str) -> list[str]:
        """Usable component names (a name two plugins register is not usable until one is blocked)."""
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> Component:
        if name in self.clashes[kind]:
            raise self._clash_error(kind, name)
        try:
            return self.components[kind][name]
        except KeyError:
            raise unknown_name(kind[:-1], name, self.components[kind]) from None

    def preset(self, plugin: str) -> dict[str, Any]:
        """The configuration plugin ``plugin`` selects (``fgm train --plugin``)."""
        if plugin not in self.infos or self.infos[plugin].error:
            if plugin in self.infos:
                raise PluginError(
                    f"plugin {plugin!r} failed to load: {self.infos[plugin].error}", "fix or reinstall it"
                )
            why = self._unwanted_why(plugin)
            if why:
                raise PluginError(f"plugin {plugin!r} is not loaded: {why}", "change the plugin policy to use it")
            raise unknown_name("plugin", plugin, [n for n, i in self.infos.items() if not i.error])
        module = self.pm.get_plugin(plugin)
        fn = getattr(module, "plugin_preset", None)
        if fn is None:
            return {}
        try:
            preset = fn(settings=self.settings(plugin)) if "settings" in _argnames(fn) else fn()
        except PLUGIN_FAILURES as e:  # noqa: BLE001
            raise PluginError(f"plugin {plugin!r} raised in plugin_preset: {e}", "fix the plugin") from e
        return preset or {}

    def add_commands(self, cli: Any) -> None:
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except PLUGIN_FAILURES as e:  # noqa: BLE001
                self._fail(impl.plugin_name, "raised in register_commands", e)

    def run_finished(self, run: Any, bundle: Any) -> dict[str, Any]:
        """The summary fields every plugin's ``run_finished`` adds (a failing plugin adds ``<name>_error``)."""
        out: dict[str, Any] = {}
        for impl in reversed(self.pm.hook.run_finished.get_hookimpls()):
            try:
                fields = cast("dict[str, Any] | None", impl.function(run=run, bundle=bundle))
            except PLUGIN_FAILURES as e:  # noqa: BLE001 - a report failure must not lose a finished run
                out[f"{impl.plugin_name}_error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
                continue
            out.update(fields or {})
        return out

    def write_samples(self, samples: Any, model: Any, path: Path) -> Path | None:
        """Write ``samples`` to ``path`` through the first plugin that handles its suffix (None if none does)."""
        try:
            written = self.pm.hook.write_samples(samples=samples, model=model, path=path)
        except FGMError:
            raise
        except PLUGIN_FAILURES as e:  # noqa: BLE001
            raise PluginError(
                f"writing {path.name} failed: {type(e).__name__}: {e}", "check the plugin that writes it"
            ) from e
        return None if written is None else Path(written)

    def resolved(self) -> list[dict[str, str]]:
        """Name, version and source of every loaded plugin, for run directories and exports."""
        return [
            {"name": i.name, "version": i.version, "source": i.source}
            for i in sorted(self.infos.values(), key=lambda i: i.name)
            if not i.error
        ]

    def plugin_of(self, kind: str, name: str) -> str:
        return self.get(kind, name).plugin


def _argnames(fn: Any) -> tuple[str, ...]:
    code = getattr(fn, "__code__", None)
    return code.co_varnames[: code.co_argcount] if code else ()


def load_module_from_path(name: str, path: Path) -> ModuleType:
    """Import a local plugin from a ``.py`` file or a package directory."""
    path = Path(path)
    target = path / "__init__.py" if path.is_dir() else path
    if not target.is_file():
        raise FGMError(f"local plugin {name!r}: {path} not found", "give a .py file or a package directory")
    mod_name = f"fgm_local_{name.replace('-', '_').replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(
        mod_name, target, submodule_search_locations=[str(path)] if path.is_dir() else None
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return module


def is_module_path(value: str) -> bool:
    """True when ``--plugin`` names a file or directory rather than an installed plugin."""
    return value.endswith(".py") or os.sep in value or "/" in value or Path(value).is_dir()


def split_presets(presets: list[str] | None) -> tuple[list[str], dict[str, Path]]:
    """``--plugin`` values -> plugin names, and the local module paths among them by name."""
    names: list[str] = []
    local: dict[str, Path] = {}
    for p in presets or []:
        if is_module_path(p):
            path = Path(p)
            name = path.stem if path.suffix == ".py" else path.name
            local[name] = path.resolve()
            p = name
        names.append(p)
    return names, local


_CACHE: dict[tuple, PluginSet] = {}


def get_plugins(
    policy_path: Path | None = None,
    *,
    strict: bool | None = None,
    extra_local: dict[str, Path] | None = None,
    near: Path | None = None,
) -> PluginSet:
    """The plugin set for this process (cached per policy, strictness and local modules)."""
    key = (
        str(policy_path),
        strict,
        tuple(sorted((extra_local or {}).items())),
        str(near),
        os.environ.get("FGM_PLUGINS"),
        os.environ.get("FGM_STRICT_PLUGINS"),
        os.environ.get("FGM_PLUGINS_TOML"),
        str(Path.cwd()),
    )
    if key not in _CACHE:
        policy = PluginPolicy.discover(policy_path, near)
        _CACHE[key] = PluginSet(policy, strict=strict, extra_local=extra_local)
    return _CACHE[key]


def clear_cache() -> None:
    """Forget loaded plugin sets (tests; after installing a plugin in-process)."""
    _CACHE.clear()
    importlib.invalidate_caches()
