"""The component's imports, carried out with ``ops`` model calls.

Every method here is one WIT import (``wit/rollingops.wit``). The host decides nothing: it
performs the effect and reports the outcome verbatim, as the WIT value the component expects.
wasmtime-py maps WIT values to Python as follows, and the return values below follow it:

* ``result<T, error>`` is untagged: ``T`` itself on success, a ``Variant(case, message)`` on
  failure (the ``error`` variant is tagged because all its cases carry a string);
* ``option<T>`` is ``None`` or ``T``; ``bag-owner`` is ``None`` (this application) or the unit
  name;
* records are ``Record`` objects with the WIT field names (``timed-out``) as attributes.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import enum
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import ops
from wasmtime.component import Record, Variant

from ._errors import RollingOpsFileSystemError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._models import SyncLockBackend

logger = logging.getLogger('rollingops')

_LEVELS = {
    'debug': logging.DEBUG,
    'info': logging.INFO,
    'warning': logging.WARNING,
    'error': logging.ERROR,
}

# Hook names the library dispatches; anything else is refused (the name ends up in a shell
# command line run by juju-exec).
_HOOK_NAME = re.compile(r'^[a-z][a-z0-9_-]{0,63}$')

DISPATCH_LOG = 'rollingops_dispatch.log'
"""File under ``base_dir`` that receives the output of dispatched ``juju-exec`` runs."""

_JUJU_EXEC_FALLBACKS = ('/usr/bin/juju-exec', '/charm/bin/juju-exec')


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """What a manager in etcd mode knows about its etcd worker (see ``rollingops._worker``)."""

    peer_relation: str
    etcd_relation: str
    cluster_id: str


def _err(case: str, message: str) -> Variant:
    return Variant(case, message)


def find_juju_exec() -> str | None:
    """Locate ``juju-exec``: on ``PATH``, else where machine and Kubernetes agents install it."""
    found = shutil.which('juju-exec')
    if found:
        return found
    for candidate in _JUJU_EXEC_FALLBACKS:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def spawn_dispatch(
    unit_name: str, charm_dir: str, event_name: str, base_dir: str, delay_ms: int = 0
) -> None:
    """Start ``juju-exec`` detached so that it runs hook ``event_name`` after this hook.

    ``juju-exec`` waits for the unit's hook lock, so the new hook starts once the current one
    has finished; this function returns at once and never sleeps. With ``delay_ms``, the
    detached process first waits that long (``/bin/sh -c 'sleep "$0" && exec "$@"'``), so the
    hook starts no sooner than ``delay_ms`` milliseconds from now. The child gets a new
    session, no standard input, its output appended to ``<base_dir>/rollingops_dispatch.log``
    (or discarded when base_dir is not writable), and the hook's environment without
    ``JUJU_CONTEXT_ID``.

    Args:
        unit_name: The unit whose hook runs (``app/0``).
        charm_dir: The charm directory holding ``dispatch``.
        event_name: The hook name (checked by the caller).
        base_dir: Where the dispatch log goes.
        delay_ms: Milliseconds to wait before running ``juju-exec`` (0: at once).

    Raises:
        FileNotFoundError: ``juju-exec`` is not installed.
        OSError: the process could not be started.
    """
    juju_exec = find_juju_exec()
    if juju_exec is None:
        raise FileNotFoundError('juju-exec not found on PATH, in /usr/bin or in /charm/bin')
    command = dispatch_command(charm_dir, event_name)
    argv = [juju_exec, '-u', unit_name, command]
    if delay_ms > 0:
        seconds = f'{delay_ms // 1000}.{delay_ms % 1000:03d}'
        argv = ['/bin/sh', '-c', 'sleep "$0" && exec "$@"', seconds, *argv]
    env = {k: v for k, v in os.environ.items() if k != 'JUJU_CONTEXT_ID'}
    output: Any = subprocess.DEVNULL
    try:
        os.makedirs(base_dir, exist_ok=True)
        output = open(os.path.join(base_dir, DISPATCH_LOG), 'ab')  # noqa: SIM115
    except OSError as e:
        logger.warning(
            'Cannot open the dispatch log under %s (%s); discarding output.', base_dir, e
        )
    try:
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=env,
            cwd=charm_dir if os.path.isdir(charm_dir) else None,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        if output is not subprocess.DEVNULL:
            output.close()


def dispatch_command(charm_dir: str, event_name: str) -> str:
    """The shell command ``juju-exec`` runs: ``JUJU_DISPATCH_PATH=hooks/<event> <dir>/dispatch``.

    The charm directory is quoted only when it holds characters a shell would interpret.
    """
    return f'JUJU_DISPATCH_PATH=hooks/{event_name} {shlex.quote(f"{charm_dir}/dispatch")}'


@dataclasses.dataclass
class Seam:
    """Replacements for the clock and for ``juju-exec``, installed by ``rollingops.testing``.

    Attributes:
        now_micros: Returns the current time in microseconds since the epoch.
        dispatch: Receives ``(unit, event, delay_ms)`` instead of a ``juju-exec`` process.
        callback: Told ``(unit, callback_id, kwargs_json, outcome)`` after each callback, where
            ``outcome`` is the returned text (or None) or the raised exception.
    """

    now_micros: Callable[[], int] | None = None
    dispatch: Callable[[str, str, int], None] | None = None
    callback: Callable[[str, str, str, object], None] | None = None


SEAMS: list[Seam] = []
"""Installed seams, innermost last; empty outside ``rollingops.testing``."""


def _seam(name: str) -> Any:
    """The innermost installed replacement called ``name``, or None."""
    for seam in reversed(SEAMS):
        found = getattr(seam, name)
        if found is not None:
            return found
    return None


def _returned_text(value: object) -> str | None:
    """The string a callback returned (enum members by value), or None for anything else.

    Booleans become ``"true"``/``"false"``: health checks pass only on ``"true"``.
    """
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, enum.Enum):
        inner = value.value
        return inner if isinstance(inner, str) else None
    if isinstance(value, str):
        return str.__str__(value)
    return None


class Host:
    """One hook's view of the outside world, for one manager.

    Args:
        charm: The charm owning the manager.
        callback_targets: Callback id -> callable, kept by reference.
        sync_lock_targets: Sync-lock backend id -> backend, kept by reference.
        base_dir: Directory all file access is confined to.
        endpoints: Relation endpoints the component may ask about.
    """

    def __init__(
        self,
        charm: ops.CharmBase,
        callback_targets: Mapping[str, Callable[..., Any]],
        sync_lock_targets: Mapping[str, SyncLockBackend],
        base_dir: str,
        endpoints: Sequence[str],
    ):
        self._charm = charm
        self._model = charm.model
        self._callbacks = callback_targets
        self._sync_backends = sync_lock_targets
        self.base_dir = base_dir
        self._endpoints = tuple(endpoints)
        self._relations: dict[int, ops.Relation] = {}
        self.pending: BaseException | None = None
        """A non-``Exception`` throwable raised inside an import; re-raised after the call."""
        self.backend_error: BaseException | None = None
        """The last exception a sync-lock backend raised, to chain the library's error to it."""
        self.worker: WorkerSettings | None = None
        """How to start this unit's etcd worker; None when the manager has no etcd mode."""
        self._started: dict[int, _Background] = {}
        self._next_handle = 0

    # -- juju ------------------------------------------------------------------------------

    def unit_name(self) -> str:
        return self._model.unit.name

    def model_uuid(self) -> str:
        return self._model.uuid

    def is_leader(self) -> bool | Variant:
        try:
            return self._model.unit.is_leader()
        except ops.ModelError as e:
            return _err('host', f'is-leader failed: {e}')

    def relation_ids(self, endpoint: str) -> list[int] | Variant:
        try:
            relations = self._model.relations[endpoint]
        except (KeyError, ops.ModelError) as e:
            return _err('host', f'relation-ids {endpoint} failed: {e!r}')
        for relation in relations:
            self._relations[relation.id] = relation
        return [relation.id for relation in relations]

    def _relation(self, relation_id: int) -> ops.Relation:
        relation = self._relations.get(relation_id)
        if relation is not None:
            return relation
        for endpoint in self._endpoints:
            with contextlib.suppress(KeyError, ops.ModelError):
                found = self._model.get_relation(endpoint, relation_id)
                if found is not None:
                    self._relations[relation_id] = found
                    return found
        raise KeyError(f'relation {relation_id} not found')

    def relation_units(self, relation_id: int) -> list[str] | Variant:
        try:
            relation = self._relation(relation_id)
            return sorted(unit.name for unit in relation.units)
        except (KeyError, ops.ModelError) as e:
            return _err('host', f'relation-list -r {relation_id} failed: {e}')

    def _entity(self, relation: ops.Relation, owner: str | None) -> ops.Unit | ops.Application:
        if owner is None:
            # This application's bag (on a peer relation ``relation.app`` is the same app; on
            # other relations it is the remote one, read by ``relation_get_remote_app``).
            return self._model.app
        if owner == self._model.unit.name:
            return self._model.unit
        for unit in relation.units:
            if unit.name == owner:
                return unit
        raise KeyError(f'unit {owner} is not on relation {relation.id}')

    def relation_get(self, relation_id: int, owner: str | None) -> list[tuple[str, str]] | Variant:
        try:
            relation = self._relation(relation_id)
            bag = relation.data[self._entity(relation, owner)]
            return [(key, value) for key, value in bag.items()]
        except (KeyError, ops.ModelError) as e:
            who = 'app' if owner is None else owner
            return _err('host', f'relation-get -r {relation_id} ({who}) failed: {e}')

    def relation_set(
        self, relation_id: int, app: bool, pairs: list[tuple[str, str]]
    ) -> Variant | None:
        try:
            relation = self._relation(relation_id)
            entity: ops.Unit | ops.Application = self._model.app if app else self._model.unit
            relation.data[entity].update(dict(pairs))
        except (KeyError, ops.ModelError) as e:
            who = 'app' if app else 'unit'
            return _err('host', f'relation-set -r {relation_id} ({who}) failed: {e}')
        return None

    def secret_get(self, label_or_id: str) -> Record | Variant:
        try:
            if label_or_id.startswith('secret:'):
                secret = self._model.get_secret(id=label_or_id)
            else:
                secret = self._model.get_secret(label=label_or_id)
            content = secret.get_content(refresh=True)
        except ops.SecretNotFoundError:
            return _record(exists=False, content=[])
        except ops.ModelError as e:
            return _err('host', f'secret-get {label_or_id} failed: {e}')
        return _record(exists=True, content=sorted(content.items()))

    def secret_add(self, label: str, content: list[tuple[str, str]]) -> str | Variant:
        try:
            secret = self._model.app.add_secret(dict(content), label=label)
        except ops.ModelError as e:
            return _err('host', f'secret-add {label} failed: {e}')
        return secret.id or ''

    def secret_grant(self, secret_id: str, relation_id: int) -> Variant | None:
        try:
            secret = self._model.get_secret(id=secret_id)
            secret.grant(self._relation(relation_id))
        except (KeyError, ops.ModelError) as e:
            return _err('host', f'secret-grant {secret_id} -r {relation_id} failed: {e}')
        return None

    def relation_get_remote_app(self, relation_id: int) -> list[tuple[str, str]] | Variant:
        try:
            relation = self._relation(relation_id)
            if relation.app is None:
                return []
            return [(key, value) for key, value in relation.data[relation.app].items()]
        except (KeyError, ops.ModelError) as e:
            return _err('host', f'relation-get -r {relation_id} --app (remote) failed: {e}')

    def log(self, level: str, message: str) -> None:
        logger.log(_LEVELS.get(level, logging.INFO), '%s', message)

    def dispatch(self, event_name: str) -> Variant | None:
        return self.dispatch_after(event_name, 0)

    def dispatch_after(self, event_name: str, delay_ms: int) -> Variant | None:
        if not _HOOK_NAME.match(event_name):
            return _err('host', f'refusing to dispatch {event_name!r}: not a hook name')
        unit = self.unit_name()
        dispatch = _seam('dispatch')
        if dispatch is not None:
            dispatch(unit, event_name, delay_ms)
            return None
        try:
            if delay_ms > 0:
                spawn_dispatch(
                    unit, self.charm_dir(), event_name, self.base_dir, delay_ms=delay_ms
                )
            else:
                spawn_dispatch(unit, self.charm_dir(), event_name, self.base_dir)
        except OSError as e:
            return _err('host', f'juju-exec {event_name} could not be started: {e}')
        if delay_ms > 0:
            logger.debug('Dispatching %s through juju-exec in %d ms.', event_name, delay_ms)
        else:
            logger.debug('Dispatched %s through juju-exec.', event_name)
        return None

    # -- clock -----------------------------------------------------------------------------

    def now_micros(self) -> int:
        now_micros = _seam('now_micros')
        if now_micros is not None:
            return int(now_micros())
        return time.time_ns() // 1000

    def sleep_ms(self, ms: int) -> None:
        time.sleep(ms / 1000)

    # -- process ---------------------------------------------------------------------------

    def charm_dir(self) -> str:
        """The charm directory (holding ``dispatch`` and ``usr/bin/etcdctl``)."""
        return str(self._charm.charm_dir)

    def etcdctl_path(self) -> str:
        """The only program the component may run."""
        return os.path.join(self.charm_dir(), 'usr', 'bin', 'etcdctl')

    def start_worker(self) -> Variant | None:
        """Start this unit's etcd worker (``python -m rollingops._worker``) unless one runs.

        Returns at once; see :mod:`rollingops._worker` for the process and its lock.
        """
        from . import _worker  # here: the worker module imports this one

        settings = self.worker
        if settings is None:
            return _err(
                'etcd-not-configured',
                'this manager has no etcd relation and cluster id, so it runs no etcd worker',
            )
        launch = _worker.WorkerLaunch(
            unit_name=self.unit_name(),
            model_uuid=self.model_uuid(),
            charm_dir=self.charm_dir(),
            # A relative base_dir is relative to the hook's directory; the worker's is the same
            # (the charm directory), but an absolute path says so in `ps` and the lock's path.
            base_dir=os.path.abspath(self.base_dir),
            peer_relation=settings.peer_relation,
            etcd_relation=settings.etcd_relation,
            cluster_id=settings.cluster_id,
            callback_ids=tuple(self._callbacks),
        )
        try:
            pid = _worker.start(launch)
        except _worker.WorkerConfigError as e:
            return _err('etcd-not-configured', str(e))
        except OSError as e:
            return _err('host', f'cannot start the etcd worker: {e}')
        if pid is None:
            logger.debug('The etcd worker already runs.')
        else:
            logger.info('Started the etcd worker (pid %d).', pid)
        return None

    def run_etcdctl(
        self,
        args: list[str],
        env: list[tuple[str, str]],
        stdin: str | None,
        timeout_ms: int,
    ) -> Record | Variant:
        program = self._installed_etcdctl()
        if isinstance(program, Variant):
            return program
        try:
            done = subprocess.run(
                [program, *args],
                input=stdin if stdin is not None else '',
                capture_output=True,
                text=True,
                env=dict(env),
                timeout=timeout_ms / 1000 if timeout_ms else None,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            return _exec_output(-1, _text(e.stdout), _text(e.stderr), timed_out=True)
        except OSError as e:
            return _err('etcdctl', f'etcdctl could not be started: {e}')
        code = done.returncode if done.returncode >= 0 else -1
        return _exec_output(code, done.stdout, done.stderr, timed_out=False)

    def watch_etcdctl(
        self,
        args: list[str],
        env: list[tuple[str, str]],
        timeout_ms: int,
    ) -> Record | Variant:
        """Run etcdctl until its first complete stdout line, its exit, or the timeout.

        For ``etcdctl watch``, which never exits by itself: the first line is the first
        event. A process still running at that point is killed.
        """
        started = self._spawn_etcdctl(args, env, stdin=False)
        if isinstance(started, Variant):
            return started
        return started.wait(timeout_ms, first_line=True)

    def start_etcdctl(self, args: list[str], env: list[tuple[str, str]]) -> int | Variant:
        """Start etcdctl with its stdin open and leave it running; a handle.

        Returns before the process exists: a thread of its own forks and execs it, off the
        hook's path to its callback (see :class:`_Background`). Its output is drained
        meanwhile; it dies with this process (``PR_SET_PDEATHSIG``) or with
        :meth:`stop_etcdctl`.
        """
        program = self._installed_etcdctl()
        if isinstance(program, Variant):
            return program
        self._next_handle += 1
        self._started[self._next_handle] = _Background(
            lambda: _spawn(program, args, env, stdin=True, die_with_parent=True)
        )
        return self._next_handle

    def finish_etcdctl(self, handle: int, stdin: str | None, timeout_ms: int) -> Record | Variant:
        """Give a started etcdctl its stdin, wait for it to exit, return its output."""
        background = self._started.pop(handle, None)
        if background is None:
            return _err('etcdctl', f'no started etcdctl has handle {handle}')
        try:
            started = background.process()
            if isinstance(started, Variant):
                return started
            try:
                started.feed(stdin)
            except OSError as e:
                said = getattr(started.wait(timeout_ms, first_line=False), 'stderr', '')
                return _err('etcdctl', f'writing etcdctl stdin: {e}; etcdctl said: {said}')
            return started.wait(timeout_ms, first_line=False)
        finally:
            background.release()

    def read_etcdctl_line(self, handle: int, timeout_ms: int) -> str | Variant | None:
        """The next complete stdout line of a started etcdctl, or None after the timeout."""
        background = self._started.get(handle)
        if background is None:
            return _err('etcdctl', f'no started etcdctl has handle {handle}')
        started = background.process()
        if isinstance(started, Variant):
            return started
        try:
            return started.next_line(timeout_ms)
        except EOFError as e:
            return _err('etcdctl', f'etcdctl exited: {e}')

    def stop_etcdctl(self, handle: int) -> None:
        background = self._started.pop(handle, None)
        if background is not None:
            background.release()

    def _spawn_etcdctl(
        self, args: list[str], env: list[tuple[str, str]], *, stdin: bool
    ) -> _Drained | Variant:
        program = self._installed_etcdctl()
        if isinstance(program, Variant):
            return program
        return _spawn(program, args, env, stdin=stdin, die_with_parent=False)

    def _installed_etcdctl(self) -> str | Variant:
        """The etcdctl to run, or why there is none."""
        program = self.etcdctl_path()
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            return _err('etcdctl', f'etcdctl is not installed at {program}')
        return program

    # -- files -----------------------------------------------------------------------------

    def confine(self, path: str) -> str:
        """Resolve ``path`` under base_dir, refusing anything that would leave it.

        Raises:
            RollingOpsFileSystemError: an absolute path, a ``..`` component, an empty path,
                or a path that resolves (through symlinks) outside base_dir.
        """
        if not path or '\0' in path:
            raise RollingOpsFileSystemError(f'refused path {path!r}: empty or NUL')
        pure = PurePosixPath(path)
        if pure.is_absolute() or '..' in pure.parts:
            raise RollingOpsFileSystemError(f'refused path {path!r}: outside base_dir')
        base = os.path.realpath(self.base_dir)
        full = os.path.realpath(os.path.join(base, *pure.parts))
        if full == base or os.path.commonpath([base, full]) != base:
            raise RollingOpsFileSystemError(f'refused path {path!r}: resolves outside base_dir')
        return full

    def read(self, path: str) -> Record | Variant:
        try:
            full = self.confine(path)
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return _record(exists=False, data=b'')
        except RollingOpsFileSystemError as e:
            return _err('file-system', str(e))
        except OSError as e:
            return _err('file-system', f'cannot read {path}: {e}')
        with os.fdopen(fd, 'rb') as f:
            return _record(exists=True, data=f.read())

    def write(self, path: str, data: bytes, mode: int) -> Variant | None:
        try:
            full = self.confine(path)
            parent = os.path.dirname(full)
            os.makedirs(parent, exist_ok=True)
            base = os.path.realpath(self.base_dir)
            if os.path.commonpath([base, os.path.realpath(parent)]) != base:
                raise RollingOpsFileSystemError(
                    f'refused path {path!r}: resolves outside base_dir'
                )
            fd, temp = tempfile.mkstemp(dir=parent, prefix='.rollingops-')
            try:
                with os.fdopen(fd, 'wb') as f:
                    f.write(bytes(data))
                os.chmod(temp, mode & 0o7777)
                os.replace(temp, full)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except RollingOpsFileSystemError as e:
            return _err('file-system', str(e))
        except OSError as e:
            return _err('file-system', f'cannot write {path}: {e}')
        return None

    def remove(self, path: str) -> Variant | None:
        try:
            full = self.confine(path)
            os.unlink(full)
        except FileNotFoundError:
            return None
        except RollingOpsFileSystemError as e:
            return _err('file-system', str(e))
        except OSError as e:
            return _err('file-system', f'cannot remove {path}: {e}')
        return None

    # -- crypto ----------------------------------------------------------------------------

    def generate_client_identity(self, common_name: str) -> Record | Variant:
        try:
            # Imported here: only the leader's first etcd hook needs it.
            from ._crypto import generate_client_identity
        except ImportError as e:
            return _err('lib-missing', f'the cryptography package is not installed: {e}')
        try:
            identity = generate_client_identity(common_name)
        except (ValueError, TypeError) as e:
            return _err('host', f'generating the etcd client identity failed: {e}')
        return _record(
            ca_cert=identity.ca_cert,
            client_cert=identity.client_cert,
            client_key=identity.client_key,
        )

    # -- charm -----------------------------------------------------------------------------

    def run_callback(self, callback_id: str, kwargs_json: str) -> Variant:
        target = self._callbacks.get(callback_id)
        if target is None:
            return Variant('missing')
        observe = _seam('callback')
        try:
            kwargs = json.loads(kwargs_json)
            value = target(**kwargs)
        except Exception as e:
            if observe is not None:
                observe(self._model.unit.name, callback_id, kwargs_json, e)
            return Variant('raised', traceback.format_exc().rstrip())
        text = _returned_text(value)
        if observe is not None:
            observe(self._model.unit.name, callback_id, kwargs_json, text)
        return Variant('returned', text)

    def sync_backend_acquire(self, backend_id: str, timeout: int | None) -> Variant | None:
        backend = self._sync_backends.get(backend_id)
        if backend is None:
            return Variant('missing')
        self.backend_error = None
        try:
            backend.acquire(timeout=timeout)
        except TimeoutError as e:
            self.backend_error = e
            return Variant('timed-out')
        except Exception as e:
            self.backend_error = e
            return Variant('failed', f'{type(e).__name__}: {e}')
        return None

    def sync_backend_release(self, backend_id: str) -> Variant | None:
        backend = self._sync_backends.get(backend_id)
        if backend is None:
            return Variant('missing')
        self.backend_error = None
        try:
            backend.release()
        except Exception as e:
            self.backend_error = e
            if isinstance(e, TimeoutError):
                return Variant('timed-out')
            return Variant('failed', f'{type(e).__name__}: {e}')
        return None


def _record(**fields: object) -> Record:
    """A WIT record from keyword fields (underscores become the WIT's dashes)."""
    record = Record()
    for name, value in fields.items():
        setattr(record, name.replace('_', '-'), value)
    return record


# Output kept per stream of a started process: a keep-alive prints a line per renewal for
# as long as a lock is held, so only the tail is kept.
_KEEP_BYTES = 256 * 1024


def _spawn(
    program: str,
    args: list[str],
    env: list[tuple[str, str]],
    *,
    stdin: bool,
    die_with_parent: bool,
) -> _Drained | Variant:
    """Start ``program`` with ``args`` and exactly ``env``; its output drained."""
    try:
        child = subprocess.Popen(
            [program, *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            preexec_fn=_die_with_parent_hook() if die_with_parent else None,  # noqa: PLW1509
        )
    except OSError as e:
        return _err('etcdctl', f'etcdctl could not be started: {e}')
    return _Drained(child)


class _Background:
    """A process started by a thread of its own, which stays as its parent until released.

    Forking and exec'ing takes a millisecond or more on a busy machine, and a lock-granted
    hook starts three processes before its callback; started here, they cost it nothing.
    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, so that
    thread waits for :meth:`release` (or dies with this process, killing the child).
    """

    def __init__(self, spawn: Callable[[], _Drained | Variant]):
        self._spawned: _Drained | Variant | None = None
        self._ready = threading.Event()
        self._released = threading.Event()
        threading.Thread(target=self._own, args=(spawn,), daemon=True).start()

    def _own(self, spawn: Callable[[], _Drained | Variant]) -> None:
        try:
            self._spawned = spawn()
        finally:
            self._ready.set()
        self._released.wait()

    def process(self) -> _Drained | Variant:
        """The started process (waiting for its start), or why it could not start."""
        self._ready.wait()
        if self._spawned is None:
            return _err('etcdctl', 'the thread starting etcdctl failed')
        return self._spawned

    @property
    def pid(self) -> int:
        started = self.process()
        assert isinstance(started, _Drained), started
        return started.child.pid

    def release(self) -> None:
        """Kill the process if it still runs, and let its thread go."""
        started = self.process()
        if isinstance(started, _Drained):
            started.kill()
        self._released.set()


class _Drained:
    """A child etcdctl whose stdout and stderr are read by threads as they come."""

    def __init__(self, child: subprocess.Popen[bytes]):
        assert child.stdout is not None and child.stderr is not None
        self.child = child
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._first_line = threading.Event()
        self._eof = threading.Event()
        # Lines dropped from the front of `_out`, and how many lines `next_line` handed out
        # (both counted from the first line ever read).
        self._out_dropped = 0
        self._cursor = 0
        self._new_line = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(child.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(child.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _keep(chunks: list[bytes], line: bytes) -> int:
        """Append a line, dropping the older half past the cap; how many were dropped."""
        chunks.append(line)
        if sum(len(c) for c in chunks[-64:]) > _KEEP_BYTES:
            dropped = len(chunks) // 2
            del chunks[:dropped]
            return dropped
        return 0

    def _read_stdout(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b''):
            with self._new_line:
                self._out_dropped += self._keep(self._out, line)
                self._new_line.notify_all()
            if line.endswith(b'\n'):
                self._first_line.set()
        with self._new_line:
            self._eof.set()
            self._new_line.notify_all()
        self._first_line.set()

    def _read_stderr(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b''):
            self._keep(self._err, line)

    def next_line(self, timeout_ms: int) -> str | None:
        """The next complete stdout line (without its newline), None after the timeout.

        Raises:
            EOFError: The process has exited and every line was read (its stderr).
        """
        deadline = time.monotonic() + timeout_ms / 1000
        with self._new_line:
            while True:
                self._cursor = max(self._cursor, self._out_dropped)
                index = self._cursor - self._out_dropped
                if index < len(self._out) and self._out[index].endswith(b'\n'):
                    self._cursor += 1
                    return self._out[index][:-1].decode(errors='replace')
                if self._eof.is_set():
                    # Let the stderr reader catch up with a process that has just exited.
                    self._readers[1].join(timeout=0.5)
                    raise EOFError(b''.join(self._err).decode(errors='replace').strip())
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._new_line.wait(left)

    def feed(self, stdin: str | None) -> None:
        """Write ``stdin`` (if any) and close it."""
        pipe = self.child.stdin
        if pipe is None:
            return
        try:
            if stdin:
                pipe.write(stdin.encode())
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    def wait(self, timeout_ms: int, *, first_line: bool) -> Record:
        """Wait for the exit (or the first stdout line) or the timeout, then kill."""
        done = self._first_line if first_line else self._eof
        timed_out = not done.wait(timeout_ms / 1000)
        code: int | None
        if self._eof.is_set():
            # stdout closed: the process is exiting and its output is complete.
            code = self.child.wait()
            for reader in self._readers:
                reader.join()
        else:
            code = self.child.poll()
            if code is None:
                self.kill()
                code = -1
        out = b''.join(self._out).decode(errors='replace')
        err = b''.join(self._err).decode(errors='replace')
        return _exec_output(code if code >= 0 else -1, out, err, timed_out=timed_out)

    def kill(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait()
        if self.child.stdin is not None:
            with contextlib.suppress(OSError):
                self.child.stdin.close()


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to kill the child when this process dies.

    libc is loaded here, in the parent: the child, between fork and exec, only calls prctl.
    Elsewhere than Linux there is no such request, and the child outlives a killed parent.
    """
    if not sys.platform.startswith('linux'):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return hook


def _exec_output(code: int, stdout: str, stderr: str, *, timed_out: bool) -> Record:
    """The WIT ``exec-output`` record (field names as in the WIT, so set by name)."""
    output = Record()
    for name, value in (
        ('code', code),
        ('stdout', stdout),
        ('stderr', stderr),
        ('timed-out', timed_out),
    ):
        setattr(output, name, value)
    return output


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ''
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    return value
