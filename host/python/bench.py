"""Per-hook cost: this package against charmlibs-rollingops, on the same charm and hooks.

Every sample is a fresh Python process that imports ops and the library, builds the charm (so
the manager, and for this package the component, loaded from the cache under base_dir), and
handles one peer relation-changed hook through `ops.testing`. Two hooks are measured:

* leader: a 3-unit relation where charm/1 finished its turn and charm/2 waits; the leader
  releases and grants charm/2;
* holder: charm/2 (not leader) sees its grant and runs its callback.

The table shows medians of the library import, the hook (charm construction + manager +
component load + the event), their sum, and the whole process wall time; then the one-off
cold compile (no cache) and the warm in-process hook cost (repeated hooks, imports paid).

    host/python/.venv/bin/python host/python/bench.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
flavour, hook, base_dir, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import warnings
warnings.simplefilter('ignore')
import ops
from ops import testing
t_ops = time.perf_counter()
if flavour == 'new':
    import rollingops as lib
else:
    import charmlibs.rollingops as lib
t_lib = time.perf_counter()


class Charm(ops.CharmBase):
    def __init__(self, framework):
        super().__init__(framework)
        self.rollingops = lib.RollingOpsManager(
            charm=self,
            callback_targets={'restart': self._restart},
            peer_relation_name='restart',
            base_dir=base_dir,
        )

    def _restart(self, delay=None):
        return lib.OperationResult.RELEASE


META = {'name': 'charm', 'peers': {'restart': {'interface': 'rolling_op'}}}
OP = ('[{"callback_id":"restart","requested_at":"%s","max_retry":null,"attempt":0,'
      '"result":null,"kwargs":{"delay":2}}]')
now = time.time()
granted_at = repr(round(now - 5, 6))
executed_at = repr(round(now - 1, 6))
finished = {'operations': '[]', 'state': 'idle', 'executed_at': executed_at,
            'processing_backend': 'peer', 'etcd_cleanup_needed': 'true'}
waiting = {'operations': OP % repr(round(now - 60, 6)), 'state': 'request',
           'processing_backend': 'peer', 'etcd_cleanup_needed': 'true'}
if hook == 'leader':
    unit_id, leader = 0, True
    app = {'granted_unit': 'charm/1', 'granted_at': granted_at}
    local, peers = {'operations': '[]', 'state': 'idle'}, {1: finished, 2: waiting}
else:
    unit_id, leader = 2, False
    app = {'granted_unit': 'charm/2', 'granted_at': granted_at}
    local, peers = waiting, {0: {}, 1: finished}

times = []
for _ in range(repeat):
    ctx = testing.Context(Charm, meta=META, app_name='charm', unit_id=unit_id)
    peer = testing.PeerRelation('restart', local_app_data=app, local_unit_data=local,
                                peers_data=peers)
    t0 = time.perf_counter()
    out = ctx.run(ctx.on.relation_changed(peer, remote_unit=1),
                  testing.State(leader=leader, relations={peer}))
    times.append(time.perf_counter() - t0)
rel = out.get_relation(peer.id)
if hook == 'leader':
    assert rel.local_app_data.get('granted_unit') == 'charm/2', rel.local_app_data
else:
    assert rel.local_unit_data['state'] == 'idle', rel.local_unit_data
print(json.dumps({
    'ops': t_ops - t_start, 'lib': t_lib - t_ops, 'hook': times[0],
    'warm': sorted(times[1:])[len(times[1:]) // 2] if repeat > 1 else None,
}))
"""


def child(flavour: str, hook: str, base_dir: str, repeat: int = 1) -> dict[str, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, '-c', CHILD, flavour, hook, base_dir, str(repeat)],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f'{flavour}/{hook} failed:\n{done.stderr}')
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result['wall'] = wall
    return result


def ms(seconds: float) -> str:
    return f'{seconds * 1000:8.1f}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=15, help='fresh processes per cell')
    args = parser.parse_args()
    base_dir = tempfile.mkdtemp(prefix='rollingops-bench-')
    try:
        run(args.runs, base_dir)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


def run(runs: int, base_dir: str) -> None:

    # Cold: the first hook ever, compiling the component and writing the cache.
    cold = child('new', 'leader', base_dir)
    import wasmtime
    from wasmtime import component as wc

    import rollingops._runtime as runtime

    with open(runtime.wasm_path(), 'rb') as f:
        wasm = f.read()
    engine = wasmtime.Engine()
    started = time.perf_counter()
    wc.Component(engine, wasm)
    compile_only = time.perf_counter() - started
    cache = runtime.cache_file(base_dir, runtime._read_wasm(runtime.wasm_path())[1])
    started = time.perf_counter()
    for _ in range(20):
        wc.Component.deserialize_file(engine, cache)
    load_cached = (time.perf_counter() - started) / 20

    rows = []
    for hook in ('leader', 'holder'):
        for flavour in ('ref', 'new'):
            samples = [child(flavour, hook, base_dir) for _ in range(runs)]
            warm = child(flavour, hook, base_dir, repeat=30)['warm']
            med = {
                key: statistics.median(s[key] for s in samples)
                for key in ('ops', 'lib', 'hook', 'wall')
            }
            rows.append((hook, flavour, med, warm))

    print(f'per-hook cost, medians of {runs} fresh processes (ms)')
    header = f'{"hook":8} {"library":22} {"import":>8} {"hook":>8} {"imp+hook":>8}'
    print(header + f' {"process":>8} {"warm hook":>9}')
    names = {'ref': 'charmlibs-rollingops', 'new': 'rollingops (wasm)'}
    for hook, flavour, med, warm in rows:
        print(
            f'{hook:8} {names[flavour]:22} {ms(med["lib"])} {ms(med["hook"])} '
            f'{ms(med["lib"] + med["hook"])} {ms(med["wall"])} {ms(warm):>9}'
        )
    print(f'(import ops + ops.testing, common to both: {ms(rows[0][2]["ops"]).strip()} ms)')
    print()
    size = len(wasm) // 1024
    print(f'cold compile of rollingops.wasm ({size} KiB): {compile_only * 1000:.1f} ms')
    print(f'first hook ever (no cache: compile + write .cwasm): {cold["hook"] * 1000:.1f} ms')
    print(f'loading the cached .cwasm: {load_cached * 1000:.2f} ms')


if __name__ == '__main__':
    main()
