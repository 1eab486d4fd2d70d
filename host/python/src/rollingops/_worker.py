"""This unit's etcd worker as an OS process: ``python -m rollingops._worker``.

A hook in etcd mode asks for the worker (the component's ``process.start-worker`` import);
:func:`start` launches this module detached and returns at once. The process loads the
component with a :class:`WorkerHost` (a host for running outside any hook) and calls the
component's ``run-worker`` export until it returns: when the unit has nothing left to do,
when etcd failed for good (it has then dispatched ``rollingops_etcd_failed``), or when a hook
left the stop file ``etcd/worker-stop``.

* Configuration travels on the command line, as ``--flag=value`` arguments (so values that
  start with ``-`` survive): unit name, model UUID, charm directory, base_dir, the peer and
  etcd endpoints, the cluster id and the callback ids. Nothing in it is secret; ``ps`` shows
  which unit a worker serves. The etcd connection itself is read by the component from
  ``<base_dir>/etcd/etcdctl.json``, written by the etcd relation's hooks.
* One worker per unit: the worker holds an exclusive ``flock`` on
  ``<base_dir>/etcd/worker.lock`` (the path the Rust host's ``rollingops worker`` locks, so
  mixed hosts agree) for its whole life, and writes its pid into it. :func:`start` starts
  nothing while the lock is held, and a worker that cannot take it exits at once with status 0.
  The kernel drops the lock when the process dies, however it dies.
* No request is lost to a worker that is finishing: :func:`start` leaves
  ``etcd/worker-wanted`` before it checks the lock, and a worker whose ``run-worker`` returned
  unlocks, then runs again (if it can take the lock back) when it finds that file.
* The process runs in a new session, with no standard input, its output appended to
  ``<base_dir>/rollingops_worker.log`` and the hook's environment without
  ``JUJU_CONTEXT_ID`` (so nothing in it is bound to the hook that started it).
* Outside a hook only some imports can work: etcdctl (run and watch), files, the clock, logs
  (to the worker's log file) and dispatch (``juju-exec`` works outside hooks). Hook tools
  (``is-leader``, ``relation-*``, ``secret-*``) return a ``host`` error naming the tool; the
  charm's callbacks and sync-lock backends are not in this process (``missing``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from wasmtime.component import Variant

from ._errors import RollingOpsError
from ._host import Host, _err
from ._runtime import Instance, load

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger('rollingops')

WORKER_LOCK = 'etcd/worker.lock'
"""The lock file the running worker holds, relative to base_dir (as the Rust host's)."""
WORKER_LOG = 'rollingops_worker.log'
"""The worker's log file under base_dir (its stdout and stderr)."""
WORKER_REQUEST = 'etcd/worker-wanted'
"""Left by :func:`start` for every request; a finishing worker that finds it runs again."""
MODULE = 'rollingops._worker'


class WorkerConfigError(RollingOpsError):
    """The worker cannot run with this configuration (it is not started)."""


@dataclasses.dataclass(frozen=True)
class WorkerLaunch:
    """Everything a worker process needs, passed to it on the command line."""

    unit_name: str
    model_uuid: str
    charm_dir: str
    base_dir: str
    peer_relation: str
    etcd_relation: str | None
    cluster_id: str | None
    callback_ids: tuple[str, ...] = ()

    def validate(self) -> None:
        """Refuse a configuration the worker cannot run with.

        Raises:
            WorkerConfigError: a missing unit name, model UUID, charm directory, base_dir,
                peer endpoint, etcd endpoint or cluster id, or a relative directory.
        """
        required = {
            'unit name': self.unit_name,
            'model UUID': self.model_uuid,
            'charm directory': self.charm_dir,
            'base_dir': self.base_dir,
            'peer relation name': self.peer_relation,
            'etcd relation name': self.etcd_relation,
            'cluster id': self.cluster_id,
        }
        missing = [name for name, value in required.items() if not value]
        if missing:
            raise WorkerConfigError(f'the etcd worker needs: {", ".join(missing)}')
        for name, path in (('charm directory', self.charm_dir), ('base_dir', self.base_dir)):
            if not os.path.isabs(path):
                raise WorkerConfigError(f'the etcd worker needs an absolute {name}, not {path!r}')

    def args(self) -> list[str]:
        """The worker's command-line arguments (after ``-m rollingops._worker``)."""
        args = [
            f'--unit={self.unit_name}',
            f'--model-uuid={self.model_uuid}',
            f'--charm-dir={self.charm_dir}',
            f'--base-dir={self.base_dir}',
            f'--peer-relation={self.peer_relation}',
        ]
        if self.etcd_relation is not None:
            args.append(f'--etcd-relation={self.etcd_relation}')
        if self.cluster_id is not None:
            args.append(f'--cluster-id={self.cluster_id}')
        args.extend(f'--callback-id={callback_id}' for callback_id in self.callback_ids)
        return args

    def config(self) -> dict[str, Any]:
        """The component's ``config`` record (kebab-case fields)."""
        return {
            'peer-relation-name': self.peer_relation,
            'etcd-relation-name': self.etcd_relation,
            'cluster-id': self.cluster_id,
            'base-dir': self.base_dir,
            'callback-ids': list(self.callback_ids),
            'sync-lock-ids': [],
        }


# -- the lock ---------------------------------------------------------------------------------


def take_worker_lock(base_dir: str) -> int | None:
    """Take the unit's worker lock if it is free.

    Returns:
        A file descriptor holding the lock until it is closed, or None when a worker runs.

    Raises:
        OSError: the lock file cannot be created or locked.
    """
    path = os.path.join(base_dir, WORKER_LOCK)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def worker_running(base_dir: str) -> bool:
    """Whether this unit's worker runs (some process holds the worker lock)."""
    fd = take_worker_lock(base_dir)
    if fd is None:
        return True
    os.close(fd)
    return False


def worker_pid(base_dir: str) -> int | None:
    """The pid the running (or last) Python worker wrote into the lock file, if any."""
    with contextlib.suppress(OSError, ValueError), open(os.path.join(base_dir, WORKER_LOCK)) as f:
        return int(f.read().strip())
    return None


# -- starting it ------------------------------------------------------------------------------


def start(launch: WorkerLaunch) -> int | None:
    """Start the worker detached unless one runs; returns its pid (None: one already runs).

    Never waits for the worker.

    Raises:
        WorkerConfigError: the configuration is incomplete (see :meth:`WorkerLaunch.validate`).
        OSError: the lock could not be checked or the process could not be started.
    """
    launch.validate()
    if not sys.executable:
        raise WorkerConfigError('no Python interpreter to run the etcd worker with')
    # The request first, then the lock: a worker that is finishing unlocks before it looks
    # for a request, so either it sees this one and runs again, or this call sees the lock
    # free and starts a worker. A new op in etcd is never left without a worker.
    _request(launch.base_dir)
    if worker_running(launch.base_dir):
        return None
    return spawn(launch)


def _request(base_dir: str) -> None:
    path = os.path.join(base_dir, WORKER_REQUEST)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _requested(base_dir: str) -> bool:
    return os.path.exists(os.path.join(base_dir, WORKER_REQUEST))


def _withdraw_request(base_dir: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(base_dir, WORKER_REQUEST))


def spawn(launch: WorkerLaunch) -> int:
    """Start ``python -m rollingops._worker`` in a new session and return its pid.

    The child has no standard input, its output appended to ``<base_dir>/rollingops_worker.log``,
    the current environment without ``JUJU_CONTEXT_ID``, and this package's directory first on
    ``PYTHONPATH`` (so it imports the same ``rollingops``).
    """
    os.makedirs(launch.base_dir, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != 'JUJU_CONTEXT_ID'}
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = env.get('PYTHONPATH')
    env['PYTHONPATH'] = package_root + (os.pathsep + path if path else '')
    with open(os.path.join(launch.base_dir, WORKER_LOG), 'ab') as log:
        child = subprocess.Popen(
            [sys.executable, '-m', MODULE, *launch.args()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=launch.charm_dir if os.path.isdir(launch.charm_dir) else None,
            start_new_session=True,
            close_fds=True,
        )
    return child.pid


# -- the worker's host ------------------------------------------------------------------------


class WorkerHost(Host):
    """The component's imports outside any hook, for ``run-worker``.

    Hook tools cannot run here (there is no hook context), so they answer a ``host`` error at
    once; everything that needs no hook (etcdctl, files, the clock, dispatch through
    ``juju-exec``, key generation) works as in :class:`Host`. Logs go to the worker's log.
    """

    def __init__(self, launch: WorkerLaunch):
        # Host.__init__ is not called: there is no charm (nor model) outside a hook.
        self.launch = launch
        self.base_dir = launch.base_dir
        self._callbacks = {}
        self._sync_backends = {}
        self._endpoints = tuple(e for e in (launch.peer_relation, launch.etcd_relation) if e)
        self._relations = {}
        self.pending = None
        self.backend_error = None
        self.worker = None
        self._started = {}
        self._next_handle = 0

    @staticmethod
    def _outside(tool: str) -> Variant:
        return _err('host', f'{tool} is not available to the etcd worker: it runs outside a hook')

    def unit_name(self) -> str:
        return self.launch.unit_name

    def model_uuid(self) -> str:
        return self.launch.model_uuid

    def charm_dir(self) -> str:
        return self.launch.charm_dir

    def is_leader(self) -> bool | Variant:
        return self._outside('is-leader')

    def relation_ids(self, endpoint: str) -> list[int] | Variant:
        return self._outside('relation-ids')

    def relation_units(self, relation_id: int) -> list[str] | Variant:
        return self._outside('relation-list')

    def relation_get(self, relation_id: int, owner: str | None) -> list[tuple[str, str]] | Variant:
        return self._outside('relation-get')

    def relation_set(
        self, relation_id: int, app: bool, pairs: list[tuple[str, str]]
    ) -> Variant | None:
        return self._outside('relation-set')

    def secret_get(self, label_or_id: str) -> Any:
        return self._outside('secret-get')

    def secret_add(self, label: str, content: list[tuple[str, str]]) -> str | Variant:
        return self._outside('secret-add')

    def secret_grant(self, secret_id: str, relation_id: int) -> Variant | None:
        return self._outside('secret-grant')

    def relation_get_remote_app(self, relation_id: int) -> list[tuple[str, str]] | Variant:
        return self._outside('relation-get --app')

    def start_worker(self) -> Variant | None:
        # This process is the unit's worker.
        return None

    def run_callback(self, callback_id: str, kwargs_json: str) -> Variant:
        # The charm's code runs in the dispatched hook, never in the worker.
        return Variant('missing')


# -- the process ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f'python -m {MODULE}',
        description="Run this unit's rollingops etcd worker (the component's run-worker).",
        epilog=(
            'Started detached by the library in etcd mode; one runs per base-dir (it holds '
            '<base-dir>/etcd/worker.lock), and a second one exits at once with status 0.'
        ),
    )
    parser.add_argument('--unit', required=True, help='the unit name, e.g. app/0')
    parser.add_argument('--model-uuid', required=True, help="the model's UUID")
    parser.add_argument('--charm-dir', required=True, help='the charm directory')
    parser.add_argument('--base-dir', required=True, help="the library's runtime directory")
    parser.add_argument('--peer-relation', required=True, help='the peer endpoint')
    parser.add_argument('--etcd-relation', help='the etcd endpoint')
    parser.add_argument('--cluster-id', help='the etcd lock scope')
    parser.add_argument(
        '--callback-id', action='append', default=[], help='a registered callback id'
    )
    return parser


def _configure_logging(unit: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f'%(asctime)s %(levelname)s rollingops-worker[{os.getpid()}] {unit}: %(message)s'
        )
    )
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def run(launch: WorkerLaunch) -> None:
    """Call the component's ``run-worker`` until it returns (the caller holds the lock).

    Raises:
        RollingOpsError: ``run-worker`` failed (or the component trapped).
    """
    host = WorkerHost(launch)
    instance = Instance(load(launch.base_dir), host, launch.config())
    instance.call('run-worker')


def main(argv: Sequence[str] | None = None) -> int:
    """The worker process: parse, lock, run; returns the exit status."""
    args = _parser().parse_args(argv)
    launch = WorkerLaunch(
        unit_name=args.unit,
        model_uuid=args.model_uuid,
        charm_dir=args.charm_dir,
        base_dir=args.base_dir,
        peer_relation=args.peer_relation,
        etcd_relation=args.etcd_relation,
        cluster_id=args.cluster_id,
        callback_ids=tuple(args.callback_id),
    )
    _configure_logging(launch.unit_name)
    try:
        launch.validate()
    except WorkerConfigError as e:
        logger.error('Not starting: %s.', e)
        return 2
    try:
        lock = take_worker_lock(launch.base_dir)
    except OSError as e:
        logger.error('Cannot take the worker lock under %s: %s.', launch.base_dir, e)
        return 1
    if lock is None:
        logger.info("This unit's etcd worker is already running; exiting.")
        return 0
    return _serve(launch, lock)


def _serve(launch: WorkerLaunch, lock: int) -> int:
    """Run ``run-worker`` while holding ``lock`` (closed on return), again on a late request."""
    while True:
        try:
            _withdraw_request(launch.base_dir)
            with contextlib.suppress(OSError):
                os.ftruncate(lock, 0)
                os.pwrite(lock, f'{os.getpid()}\n'.encode(), 0)
            logger.info('Worker started (cluster %s).', launch.cluster_id)
            try:
                run(launch)
            except RollingOpsError as e:
                logger.error('The etcd worker stopped: %s: %s', type(e).__name__, e)
                return 1
            except Exception:
                logger.exception('The etcd worker crashed.')
                return 1
            logger.info('Worker finished.')
        finally:
            # Unlock first, then look for a request: a hook that found the lock held has
            # already left its request (start() writes it before checking the lock).
            os.close(lock)
        if not _requested(launch.base_dir):
            return 0
        try:
            again = take_worker_lock(launch.base_dir)
        except OSError as e:
            logger.error('Cannot take the worker lock again: %s.', e)
            return 1
        if again is None:
            return 0  # a worker started by that hook has taken over
        lock = again
        logger.info('A hook asked for the worker while it was finishing; running again.')


if __name__ == '__main__':
    # Run the package's own copy of this module (``-m`` loads a second one as __main__).
    from rollingops._worker import main as _main

    sys.exit(_main())
