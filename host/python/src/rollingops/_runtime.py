"""Loading and calling ``rollingops.wasm``: the engine, the compile cache and the call facade.

* The component is compiled once and its serialized form cached under ``base_dir`` as
  ``rollingops-<sha256 of the wasm>-wasmtime<version>-<machine>.cwasm`` (temp file + rename).
  A later hook deserializes it instead of compiling; a stale or corrupt file is rebuilt; a
  ``base_dir`` that is not writable means compiling in memory, with a warning.
* The component gets WASI with no preopened directories, no environment, no arguments and no
  network; its stderr (a panic message) goes to the ``rollingops`` logger.
* :class:`Instance` is the one facade over the exported ``manager`` resource: it unwraps WIT
  results and raises the library's exceptions for the ``error`` variant, and after a trap it
  drops the instance so that the next call instantiates the component again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import tempfile
from importlib import metadata
from typing import TYPE_CHECKING, Any

import wasmtime
from wasmtime import component as wc

from ._errors import RollingOpsError, RollingOpsLibMissingError, error_from_wit

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._host import Host

logger = logging.getLogger('rollingops')

WASM_ENV = 'ROLLINGOPS_WASM'
"""Environment variable that overrides the path of ``rollingops.wasm`` (for development)."""

_PACKAGE = 'juju:rollingops'
_VERSION = '0.1.0'
_API = f'{_PACKAGE}/api@{_VERSION}'

# WIT import name -> Host method implementing it.
_IMPORTS: dict[str, dict[str, str]] = {
    'juju': {
        'unit-name': 'unit_name',
        'model-uuid': 'model_uuid',
        'is-leader': 'is_leader',
        'relation-ids': 'relation_ids',
        'relation-units': 'relation_units',
        'relation-get': 'relation_get',
        'relation-set': 'relation_set',
        'secret-get': 'secret_get',
        'secret-add': 'secret_add',
        'secret-grant': 'secret_grant',
        'relation-get-remote-app': 'relation_get_remote_app',
        'log': 'log',
        'dispatch': 'dispatch',
        'dispatch-after': 'dispatch_after',
    },
    'clock': {'now-micros': 'now_micros', 'sleep-ms': 'sleep_ms'},
    'process': {
        'run-etcdctl': 'run_etcdctl',
        'watch-etcdctl': 'watch_etcdctl',
        'start-etcdctl': 'start_etcdctl',
        'finish-etcdctl': 'finish_etcdctl',
        'read-etcdctl-line': 'read_etcdctl_line',
        'stop-etcdctl': 'stop_etcdctl',
        'start-worker': 'start_worker',
    },
    'files': {'read': 'read', 'write': 'write', 'remove': 'remove'},
    'crypto': {'generate-client-identity': 'generate_client_identity'},
    'charm': {
        'run-callback': 'run_callback',
        'sync-backend-acquire': 'sync_backend_acquire',
        'sync-backend-release': 'sync_backend_release',
    },
}

_METHODS = (
    'request-async-lock',
    'request-lock',
    'set-policy',
    'set-rank',
    'control',
    'start-roll',
    'handle-event',
    'state',
    'is-waiting',
    'acquire-sync-lock',
    'release-sync-lock',
    'run-worker',
    'describe',
)

# Hosts whose component call is in progress, innermost last. Imports are linked once per
# engine and act for the host on top.
_ACTIVE: list[Host] = []


def wasm_path() -> str:
    """Where ``rollingops.wasm`` is: ``$ROLLINGOPS_WASM``, else next to this module."""
    override = os.environ.get(WASM_ENV)
    if override:
        return override
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'rollingops.wasm')


def wasmtime_version() -> str:
    """The installed wasmtime-py version (part of the cache key).

    Read from the ``wasmtime-<version>.dist-info`` directory next to the package, which costs
    one directory listing; ``importlib.metadata`` (a scan of every path entry) is the fallback.
    """
    site = os.path.dirname(os.path.dirname(os.path.abspath(wasmtime.__file__)))
    with contextlib.suppress(OSError):
        for entry in os.listdir(site):
            if entry.startswith('wasmtime-') and entry.endswith('.dist-info'):
                return entry[len('wasmtime-') : -len('.dist-info')]
    try:
        return metadata.version('wasmtime')
    except metadata.PackageNotFoundError:  # pragma: no cover - vendored wasmtime
        return 'unknown'


class Compiled:
    """A compiled component with its engine, linker and export indices (one per process)."""

    def __init__(self, engine: wasmtime.Engine, component: wc.Component, key: str, source: str):
        self.engine = engine
        self.component = component
        self.key = key
        self.source = source
        """How the component was obtained: ``cache``, ``compiled`` or ``memory``."""
        self.linker = _make_linker(engine)
        api = component.get_export_index(_API)
        if api is None:
            raise RollingOpsLibMissingError(f'rollingops.wasm does not export {_API}')
        self.exports: dict[str, wc.ExportIndex] = {}
        for name in ('[static]manager.create', *(f'[method]manager.{m}' for m in _METHODS)):
            index = component.get_export_index(name, api)
            if index is None:
                raise RollingOpsLibMissingError(f'rollingops.wasm does not export {name}')
            self.exports[name] = index


_ENGINE: wasmtime.Engine | None = None
_COMPILED: dict[tuple[str, str], Compiled] = {}
_KEYS: dict[tuple[str, int, int], tuple[bytes, str]] = {}


def _engine() -> wasmtime.Engine:
    global _ENGINE  # noqa: PLW0603 - one engine per process
    if _ENGINE is None:
        _ENGINE = wasmtime.Engine()
    return _ENGINE


def _read_wasm(path: str) -> tuple[bytes, str]:
    """The component bytes and its cache key, remembered per file version in this process."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise RollingOpsLibMissingError(
            f'rollingops.wasm not found at {path}; build it with host/python/build_wasm.sh'
        ) from e
    memo = (path, st.st_size, st.st_mtime_ns)
    found = _KEYS.get(memo)
    if found is None:
        with open(path, 'rb') as f:
            wasm = f.read()
        digest = hashlib.sha256(wasm).hexdigest()
        key = f'{digest[:32]}-wasmtime{wasmtime_version()}-{platform.machine()}'
        found = _KEYS[memo] = (wasm, key)
    return found


def cache_file(base_dir: str, key: str) -> str:
    """Path of the serialized component for ``key`` under ``base_dir``."""
    return os.path.join(base_dir, f'rollingops-{key}.cwasm')


def load(base_dir: str) -> Compiled:
    """The compiled component, from this process's memory, the cache file, or a compile.

    Args:
        base_dir: The manager's runtime directory, which holds the cache.
    """
    wasm, key = _read_wasm(wasm_path())
    memo = (key, base_dir)
    compiled = _COMPILED.get(memo)
    if compiled is None:
        engine = _engine()
        component, source = _load_component(engine, wasm, key, base_dir)
        compiled = _COMPILED[memo] = Compiled(engine, component, key, source)
    return compiled


def _load_component(
    engine: wasmtime.Engine, wasm: bytes, key: str, base_dir: str
) -> tuple[wc.Component, str]:
    path = cache_file(base_dir, key)
    if os.path.isfile(path):
        try:
            # Only our own cache file, written by this code under base_dir, is deserialized:
            # deserializing runs native code, and wasmtime checks version and configuration.
            return wc.Component.deserialize_file(engine, path), 'cache'
        except wasmtime.WasmtimeError as e:
            logger.warning('Ignoring unusable compiled component %s (%s); recompiling.', path, e)
            with contextlib.suppress(OSError):
                os.unlink(path)
    component = wc.Component(engine, wasm)
    try:
        _store_cache(base_dir, path, component.serialize())
    except OSError as e:
        logger.warning(
            'Cannot cache the compiled component under %s (%s); compiling in memory on every '
            'hook.',
            base_dir,
            e,
        )
        return component, 'memory'
    return component, 'compiled'


def _store_cache(base_dir: str, path: str, data: bytes | bytearray) -> None:
    os.makedirs(base_dir, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=base_dir, prefix='.rollingops-', suffix='.cwasm.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    # Drop caches this host left for other component or wasmtime versions. Other hosts'
    # files (the Rust CLI's end in an engine hash, not the machine name) are not ours.
    name = os.path.basename(path)
    ours = f'-{platform.machine()}.cwasm'
    for entry in os.listdir(base_dir):
        if entry.startswith('rollingops-') and entry.endswith(ours) and entry != name:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(base_dir, entry))


def _import(method: str) -> Callable[..., Any]:
    def call(_store: object, *args: Any) -> Any:
        host = _ACTIVE[-1]
        try:
            return getattr(host, method)(*args)
        except Exception as e:
            # Traps the call; Instance.call re-raises it to the charm.
            host.pending = e
            raise
        except BaseException as e:
            # wasmtime-py only carries `Exception` across the boundary: keep the throwable
            # (KeyboardInterrupt, SystemExit…) and trap with a stand-in.
            host.pending = e
            raise RollingOpsError(f'interrupted by {type(e).__name__}') from None

    return call


def _make_linker(engine: wasmtime.Engine) -> wc.Linker:
    linker = wc.Linker(engine)
    linker.add_wasip2()
    with linker.root() as root:
        for interface, functions in _IMPORTS.items():
            with root.add_instance(f'{_PACKAGE}/{interface}@{_VERSION}') as instance:
                for name, method in functions.items():
                    instance.add_func(name, _import(method))
    return linker


def record(fields: dict[str, Any]) -> wc.Record:
    """A WIT record value from its fields (kebab-case names, as in the WIT)."""
    return _record(fields)


def _record(fields: dict[str, Any]) -> wc.Record:
    record = wc.Record()
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def _guest_stderr(data: bytes) -> None:
    text = data.decode('utf-8', 'replace').rstrip()
    if text:
        logger.error('rollingops component: %s', text)


class Instance:
    """One instantiation of the component holding one ``manager`` resource.

    Args:
        compiled: The loaded component.
        host: The imports' implementation for this manager.
        config: The WIT ``config`` record fields (kebab-case names).
    """

    def __init__(self, compiled: Compiled, host: Host, config: dict[str, Any]):
        self._compiled = compiled
        self._host = host
        self._config = config
        self.store = wasmtime.Store(compiled.engine)
        wasi = wasmtime.WasiConfig()
        wasi.stderr_custom = _guest_stderr
        self.store.set_wasi(wasi)
        self._instance = compiled.linker.instantiate(self.store, compiled.component)
        self._funcs: dict[str, wc.Func] = {}
        self.busy = False
        self.broken = False
        self._handle = self._unwrap(self._invoke('[static]manager.create', _record(config)))

    def _func(self, name: str) -> wc.Func:
        func = self._funcs.get(name)
        if func is None:
            found = self._instance.get_func(self.store, self._compiled.exports[name])
            if found is None:  # pragma: no cover - checked at load
                raise RollingOpsLibMissingError(f'rollingops.wasm does not export {name}')
            func = self._funcs[name] = found
        return func

    def _invoke(self, name: str, *args: Any) -> Any:
        host = self._host
        host.pending = None
        _ACTIVE.append(host)
        self.busy = True
        try:
            return self._func(name)(self.store, *args)
        except BaseException as e:
            self.broken = True
            pending, host.pending = host.pending, None
            if pending is not None and pending is not e:
                raise pending from None
            if isinstance(e, wasmtime.WasmtimeError):
                raise RollingOpsError(f'rollingops component trapped in {name}: {e}') from e
            raise
        finally:
            self.busy = False
            _ACTIVE.pop()

    @staticmethod
    def _unwrap(value: Any) -> Any:
        if isinstance(value, wc.Variant):
            raise error_from_wit(value.tag, value.payload)
        return value

    def call(self, method: str, *args: Any) -> Any:
        """Call ``manager.<method>`` and return its ``ok`` value, raising for its ``error``.

        Raises:
            RollingOpsError: or the subclass (``ValueError``, ``TimeoutError``) the WIT error
                case maps to; any exception an import raised; ``RollingOpsError`` for a trap.
        """
        return self._unwrap(self._invoke(f'[method]manager.{method}', self._handle, *args))


def variant(case: str, payload: Any = None) -> wc.Variant:
    """A WIT variant value (for ``event``)."""
    return wc.Variant(case, payload)
