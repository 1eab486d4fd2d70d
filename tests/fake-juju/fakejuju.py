"""A fake Juju for end-to-end tests: hook tools and the unit agent's hook runner.

The executables next to this file (``is-leader``, ``relation-get``, ``juju-exec``, …) are
named like Juju's hook tools. Most are Python and import this module; the ones every hook
calls (``is-leader``, ``relation-ids``, ``relation-list``, ``relation-get``, ``juju-log``)
are shell scripts that serve committed state from ``fast/`` and hand anything else (a
hook's own pending writes, errors) to this module (``python3 fakejuju.py <tool> …``). They
work on a state directory named by ``FAKE_JUJU_DIR``, shared by every unit of one model:

* ``model.json``   leader, units, the peer endpoint and relation id, config, per-unit
  environment and charm directories; written by the test driver.
* ``bags.json``    the committed databags of the peer relation (``app`` and ``units``).
* ``rel-<id>.json`` the committed databags of another relation named in ``model.json``'s
  ``relations`` (e.g. ``etcd``, to a remote application the test driver plays): ``app`` and
  ``units`` (this application's side), ``remote_app`` and ``remote_units``.
* ``secrets.json`` application secrets.
* ``faults.json``  injected failures, each consumed once (``relation-set`` only).
* ``state.lock``   flock taken by every writer of the files above (writes are atomic
  renames, so readers need no lock).
* ``ctx/<id>/``    one hook context: ``writes.json`` holds its buffered relation writes,
  ``action.json`` its action parameters.
* ``locks/<unit>.lock``  the unit's hook lock (flock): one hook at a time per unit.
* ``running/<unit>``     process group of the unit's running hook (to kill it).
* ``journal.jsonl``      one line per finished hook.
* ``fast/``              the committed state rendered for the shell fast paths of
  ``is-leader``, ``relation-ids``, ``relation-list``, ``relation-get`` (``leader``,
  ``relation``, ``units/<unit>``, ``others/<unit>.json``, ``bags/app.json``,
  ``bags/<unit>.json``); re-rendered by every commit and by the driver.
* ``logs/<unit>.log``    ``juju-log`` lines; ``logs/<unit>.hooks.log`` hook output.

Juju semantics kept: ``relation-set`` writes are buffered per hook, visible to the hook's
own ``relation-get``, and committed only when the hook exits 0 (and app-bag writes only
while the unit still leads); ``juju-exec`` waits for the unit's hook lock; hook tools work
only inside a hook context (``JUJU_CONTEXT_ID``).
"""

import fcntl
import json
import os
import sys
import time

STATE = os.environ.get('FAKE_JUJU_DIR', '')


def path(*parts):
    return os.path.join(STATE, *parts)


def load(name, default):
    try:
        with open(path(name)) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def save(name, data):
    temp = path(f'.{name}.{os.getpid()}.tmp')
    with open(temp, 'w') as f:
        json.dump(data, f, sort_keys=True)
    os.replace(temp, path(name))


class Locked:
    """flock on a file for the duration of a ``with`` block."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        os.makedirs(os.path.dirname(self.name), exist_ok=True)
        self.file = open(self.name, 'a')
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def state_lock():
    return Locked(path('state.lock'))


def fail(message, code=1):
    sys.stderr.write(f'ERROR {message}\n')
    sys.exit(code)


def micros():
    return time.time_ns() // 1000


# -- hook context -------------------------------------------------------------------------


class Context:
    def __init__(self):
        if not STATE:
            fail('FAKE_JUJU_DIR is not set')
        self.id = os.environ.get('JUJU_CONTEXT_ID', '')
        self.unit = os.environ.get('JUJU_UNIT_NAME', '')
        if not self.id or not os.path.isdir(path('ctx', self.id)):
            fail('JUJU_CONTEXT_ID is not set or stale: hook tools only work inside a hook')
        self.model = load('model.json', {})

    @property
    def app(self):
        return self.unit.split('/')[0]

    def leader(self):
        return self.model.get('leader') == self.unit

    def writes(self, other=None):
        """This hook's buffered writes: the peer relation's, or ``other``'s (a relation
        entry) under ``rel:<id>``."""
        try:
            with open(path('ctx', self.id, 'writes.json')) as f:
                writes = json.load(f)
        except FileNotFoundError:
            writes = {'app': {}, 'unit': {}}
        if other is None:
            return writes
        return writes.get(f'rel:{other["id"]}', {'app': {}, 'unit': {}})

    def save_writes(self, writes):
        temp = path('ctx', self.id, 'writes.json.tmp')
        with open(temp, 'w') as f:
            json.dump(writes, f)
        os.replace(temp, path('ctx', self.id, 'writes.json'))

    def relation(self, text):
        """Check a ``-r`` value (``restart:3`` or ``3``) names a relation of this unit:
        ``None`` for the peer relation, else the other relation's entry in ``model.json``."""
        endpoint, _, number = text.rpartition(':')
        if self.unit in self.model.get('units', []):
            if number == str(self.model.get('relation_id')) and endpoint in (
                '',
                self.model.get('endpoint'),
            ):
                return None
            for other in self.model.get('relations', []):
                if number == str(other['id']) and endpoint in ('', other['endpoint']):
                    return other
        fail(f'invalid value "{text}" for option -r: relation not found', 2)

    def log_call(self, tool):
        with open(path('calls.log'), 'a') as f:
            f.write(f'{self.id} {tool}\n')


def parse(args, flags=(), options=()):
    """Minimal argv parsing: returns (flags set, options dict, positionals)."""
    seen, values, positional = set(), {}, []
    it = iter(args)
    for arg in it:
        if arg == '--':
            positional.extend(it)
            break
        name, eq, inline = arg.partition('=')
        if name in options:
            values[name] = inline if eq else next(it, '')
        elif arg in flags:
            seen.add(arg)
        else:
            positional.append(arg)
    return seen, values, positional


def out(value):
    sys.stdout.write(json.dumps(value) + '\n')


# -- tools ---------------------------------------------------------------------------------


def is_leader(args):
    ctx = Context()
    ctx.log_call('is-leader')
    out(ctx.leader())


def relation_ids(args):
    ctx = Context()
    ctx.log_call('relation-ids')
    _, _, positional = parse(args, flags=('--format=json',))
    endpoint = positional[0] if positional else ''
    model = ctx.model
    others = [r for r in model.get('relations', []) if r['endpoint'] == endpoint]
    if endpoint == model.get('endpoint') and ctx.unit in model.get('units', []):
        out([f'{endpoint}:{model["relation_id"]}'])
    elif others and ctx.unit in model.get('units', []):
        out([f'{endpoint}:{r["id"]}' for r in others])
    else:
        out([])


def relation_list(args):
    ctx = Context()
    ctx.log_call('relation-list')
    flags, opts, _ = parse(args, flags=('--format=json', '--app'), options=('-r',))
    other = ctx.relation(opts.get('-r', ''))
    if other is not None:
        out(other['remote_app'] if '--app' in flags else other.get('remote_units', []))
    elif '--app' in flags:
        out(ctx.app)  # a peer relation's remote application is this one
    else:
        out([u for u in ctx.model['units'] if u != ctx.unit])


def relation_get(args):
    ctx = Context()
    ctx.log_call('relation-get')
    flags, opts, positional = parse(args, flags=('--format=json', '--app'), options=('-r',))
    other = ctx.relation(opts.get('-r', ''))
    key = positional[0] if positional else '-'
    member = positional[1] if len(positional) > 1 else ''
    if other is not None:
        bag = other_relation_bag(ctx, other, member, '--app' in flags)
        bag = {k: v for k, v in bag.items() if v != ''}
        out(bag if key == '-' else bag.get(key))
        return
    bags = load('bags.json', {'app': {}, 'units': {}})
    writes = ctx.writes()
    if '--app' in flags:
        if member.split('/')[0] != ctx.app:
            fail(f'cannot read application settings of "{member}"')
        bag = dict(bags.get('app', {}))
        bag.update(writes['app'])
    else:
        if member != ctx.unit and member not in ctx.model['units']:
            fail(
                f'cannot read settings for unit "{member}" in relation '
                f'"{opts["-r"]}": unit "{member}": settings not found'
            )
        bag = dict(bags.get('units', {}).get(member, {}))
        if member == ctx.unit:
            bag.update(writes['unit'])
    bag = {k: v for k, v in bag.items() if v != ''}
    out(bag if key == '-' else bag.get(key))


def other_relation_bag(ctx, other, member, app):
    """A bag of a non-peer relation as this hook sees it (its own writes included)."""
    bags = load(f'rel-{other["id"]}.json', {})
    writes = ctx.writes(other)
    if app and member.split('/')[0] == ctx.app:
        bag = dict(bags.get('app', {}))
        bag.update(writes['app'])
    elif app and member.split('/')[0] == other['remote_app']:
        bag = dict(bags.get('remote_app', {}))
    elif app:
        fail(f'cannot read application settings of "{member}"')
    elif member == ctx.unit:
        bag = dict(bags.get('units', {}).get(member, {}))
        bag.update(writes['unit'])
    elif member in other.get('remote_units', []):
        bag = dict(bags.get('remote_units', {}).get(member, {}))
    else:
        fail(f'cannot read settings for unit "{member}" in relation "{other["endpoint"]}:'
             f'{other["id"]}": unit "{member}": settings not found')
    return bag


def take_fault(ctx, tool, app):
    """Consume the first matching injected fault, if any."""
    with state_lock():
        faults = load('faults.json', [])
        dispatch = os.environ.get('JUJU_DISPATCH_PATH', '')
        for index, fault in enumerate(faults):
            if fault.get('tool') != tool:
                continue
            if fault.get('unit') not in (None, ctx.unit):
                continue
            if fault.get('app') is not None and fault['app'] != app:
                continue
            if not dispatch.startswith(fault.get('dispatch_prefix', '')):
                continue
            faults.pop(index)
            save('faults.json', faults)
            return fault.get('message', 'injected failure')
    return None


def relation_set(args):
    ctx = Context()
    ctx.log_call('relation-set')
    flags, opts, positional = parse(args, flags=('--app',), options=('-r', '--file'))
    other = ctx.relation(opts.get('-r', ''))
    app = '--app' in flags
    fault = take_fault(ctx, 'relation-set', app)
    if fault:
        fail(f'cannot write relation settings: {fault}')
    if app and not ctx.leader():
        fail('cannot write relation settings: this unit is not the leader')
    if opts.get('--file') == '-':
        text = sys.stdin.read()
    elif '--file' in opts:
        with open(opts['--file']) as f:
            text = f.read()
    else:
        text = json.dumps(dict(p.split('=', 1) for p in positional))
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as e:
        fail(f'cannot parse settings: {e}')
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        fail('settings must be a map of strings')
    writes = ctx.writes()
    if other is None:
        writes['app' if app else 'unit'].update(data)
    else:
        writes.setdefault(f'rel:{other["id"]}', {'app': {}, 'unit': {}})[
            'app' if app else 'unit'
        ].update(data)
    ctx.save_writes(writes)


def juju_log(args):
    ctx = Context()
    ctx.log_call('juju-log')
    _, opts, positional = parse(args, options=('--log-level', '-l'))
    level = opts.get('--log-level', opts.get('-l', 'INFO'))
    hook = os.environ.get('JUJU_DISPATCH_PATH', '')
    stamp = time.strftime('%H:%M:%S', time.gmtime()) + f'.{micros() % 1_000_000:06d}'
    with open(path('logs', f'{ctx.unit.replace("/", "-")}.log'), 'a') as f:
        f.write(f'{stamp} {level} {ctx.unit} {hook}: {" ".join(positional)}\n')


def config_get(args):
    ctx = Context()
    ctx.log_call('config-get')
    _, _, positional = parse(args, flags=('--format=json', '--all'))
    config = ctx.model.get('config', {})
    out(config.get(positional[0]) if positional else config)


def action_get(args):
    ctx = Context()
    ctx.log_call('action-get')
    _, _, positional = parse(args, flags=('--format=json',))
    try:
        with open(path('ctx', ctx.id, 'action.json')) as f:
            params = json.load(f)
    except FileNotFoundError:
        fail('not running an action')
    out(params.get(positional[0]) if positional else params)


def content_args(args):
    content = {}
    for arg in args:
        key, _, value = arg.partition('=')
        if key.endswith('#file'):
            with open(value) as f:
                content[key[: -len('#file')]] = f.read()
        else:
            content[key] = value
    return content


def secret_get(args):
    ctx = Context()
    ctx.log_call('secret-get')
    _, opts, positional = parse(args, flags=('--format=json', '--refresh', '--peek'), options=('--label',))
    secrets = load('secrets.json', {})
    for secret_id, secret in secrets.items():
        if (positional and secret_id == positional[0]) or (
            not positional and secret.get('label') == opts.get('--label')
        ):
            out(secret['content'])
            return
    fail(f'secret "{positional[0] if positional else opts.get("--label")}" not found')


def secret_add(args):
    ctx = Context()
    ctx.log_call('secret-add')
    _, opts, positional = parse(args, options=('--label', '--owner', '--description'))
    if opts.get('--owner', 'application') == 'application' and not ctx.leader():
        fail('permission denied: only the leader can add application secrets')
    with state_lock():
        secrets = load('secrets.json', {})
        secret_id = f'secret:fake{len(secrets) + 1:04d}'
        secrets[secret_id] = {'label': opts.get('--label'), 'content': content_args(positional)}
        save('secrets.json', secrets)
    print(secret_id)


def secret_grant(args):
    ctx = Context()
    ctx.log_call('secret-grant')
    _, opts, positional = parse(args, options=('-r', '--relation', '--unit'))
    ctx.relation(opts.get('-r', opts.get('--relation', '')))
    with state_lock():
        secrets = load('secrets.json', {})
        if not positional or positional[0] not in secrets:
            fail('secret not found')
        secrets[positional[0]].setdefault('grants', []).append(opts.get('-r', opts.get('--relation')))
        save('secrets.json', secrets)


def secret_set(args):
    ctx = Context()
    ctx.log_call('secret-set')
    _, _, positional = parse(args, options=('--label', '--description'))
    with state_lock():
        secrets = load('secrets.json', {})
        if not positional or positional[0] not in secrets:
            fail('secret not found')
        secrets[positional[0]]['content'] = content_args(positional[1:])
        save('secrets.json', secrets)


# -- the unit agent's hook runner ------------------------------------------------------------


def slug(unit):
    return unit.replace('/', '-')


def write_file(name, text):
    temp = f'{name}.{os.getpid()}.tmp'
    with open(temp, 'w') as f:
        f.write(text)
    os.replace(temp, name)


def render_fast(model, bags):
    """Render the committed state for the shell fast paths (caller holds state.lock)."""
    fast = path('fast')
    for sub in ('units', 'others', 'bags'):
        os.makedirs(os.path.join(fast, sub), exist_ok=True)
    units = model.get('units', [])
    write_file(os.path.join(fast, 'leader'), model.get('leader', ''))
    write_file(os.path.join(fast, 'relation'), f'{model.get("endpoint", "")} {model.get("relation_id", "")}')
    for other in model.get('relations', []):
        write_file(os.path.join(fast, f'rel-{other["endpoint"]}'), f'{other["endpoint"]}:{other["id"]}')
    write_file(os.path.join(fast, 'bags', 'app.json'), json.dumps(bags.get('app', {})))
    members = {slug(u) for u in units}
    for unit in units:
        write_file(os.path.join(fast, 'units', slug(unit)), unit)
        write_file(os.path.join(fast, 'others', slug(unit) + '.json'),
                   json.dumps([u for u in units if u != unit]))
        write_file(os.path.join(fast, 'bags', slug(unit) + '.json'),
                   json.dumps(bags.get('units', {}).get(unit, {})))
    for sub, suffix in (('units', ''), ('others', '.json'), ('bags', '.json')):
        for name in os.listdir(os.path.join(fast, sub)):
            stem = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
            if stem not in members and not (sub == 'bags' and stem == 'app'):
                os.remove(os.path.join(fast, sub, name))


def commit(unit, writes):
    """Apply a finished hook's writes; returns (committed, changed, refusal, grant) where
    ``grant`` is the new ``granted_unit`` when the commit changed it ('' = released)."""
    with state_lock():
        model = load('model.json', {})
        if unit not in model.get('units', []):
            return False, False, 'the unit was removed', None
        others = {f'rel:{r["id"]}': r for r in model.get('relations', [])}
        other_app_writes = any(w.get('app') for k, w in writes.items() if k in others)
        if (writes['app'] or other_app_writes) and model.get('leader') != unit:
            refusal = 'cannot commit application settings: this unit is not the leader'
            return False, False, refusal, None
        bags = load('bags.json', {'app': {}, 'units': {}})
        before = bags.get('app', {}).get('granted_unit', '')
        changed = False
        for bag, data in ((bags.setdefault('app', {}), writes['app']),
                          (bags.setdefault('units', {}).setdefault(unit, {}), writes['unit'])):
            for key, value in data.items():
                if value == '':
                    changed |= bag.pop(key, None) is not None
                elif bag.get(key) != value:
                    bag[key] = value
                    changed = True
        if changed:
            save('bags.json', bags)
            render_fast(model, bags)
        for name, other in others.items():
            if name in writes:
                commit_other(unit, other, writes[name])
        after = bags['app'].get('granted_unit', '')
        return True, changed, None, (after if after != before else None)


def commit_other(unit, other, writes):
    """Apply a finished hook's writes to a non-peer relation (caller holds state.lock).
    Only the remote side would see them change, so nothing is fanned out here."""
    name = f'rel-{other["id"]}.json'
    bags = load(name, {})
    for bag, data in ((bags.setdefault('app', {}), writes.get('app', {})),
                      (bags.setdefault('units', {}).setdefault(unit, {}), writes.get('unit', {}))):
        for key, value in data.items():
            if value == '':
                bag.pop(key, None)
            else:
                bag[key] = value
    save(name, bags)


def run_hook(unit, dispatch_path, command, extra_env, params, cause, source, label):
    """Take the unit's hook lock, run one hook, commit on success, journal it.

    An agent hook (``dispatch_path`` set, no ``command``) runs ``<charm_dir>/dispatch`` with
    its output appended to the unit's hook log; a ``juju-exec`` command runs in a shell with
    the caller's stdio. Returns the hook's exit code (negative: killed by that signal).
    """
    import shutil
    import subprocess

    stdio = 'inherit' if command else None
    os.makedirs(path('pending'), exist_ok=True)
    pending = path('pending', f'{os.getpid()}')
    open(pending, 'w').close()
    try:
        with Locked(path('locks', unit.replace('/', '-') + '.lock')):
            model = load('model.json', {})
            if unit not in model.get('units', []):
                sys.stderr.write(f'ERROR unit "{unit}" not found\n')
                return 1
            context = f'{unit.replace("/", "-")}-{time.time_ns()}-{os.getpid()}'
            os.makedirs(path('ctx', context))
            if params is not None:
                with open(path('ctx', context, 'action.json'), 'w') as f:
                    json.dump(params, f)
            env = {k: v for k, v in os.environ.items() if not k.startswith('JUJU_')}
            charm_dir = model['charm_dirs'][unit]
            env.update(model.get('unit_env', {}).get(unit, {}))
            env.update(
                JUJU_UNIT_NAME=unit,
                JUJU_MODEL_UUID=model.get('model_uuid', ''),
                JUJU_CHARM_DIR=charm_dir,
                JUJU_CONTEXT_ID=context,
                FAKE_JUJU_HOOK=context,
                FAKE_JUJU_DIR=STATE,
            )
            if dispatch_path:
                env['JUJU_DISPATCH_PATH'] = dispatch_path
                kind, _, name = dispatch_path.partition('/')
                env['JUJU_HOOK_NAME' if kind == 'hooks' else 'JUJU_ACTION_NAME'] = name
            env.update(extra_env)
            start = micros()
            log_name = path('logs', f'{unit.replace("/", "-")}.hooks.log')
            with open(log_name, 'a') as log:
                log.write(f'--- {context} {dispatch_path or command} (cause {cause})\n')
                log.flush()
                child = subprocess.Popen(
                    command if command else [os.path.join(charm_dir, 'dispatch')],
                    shell=bool(command),
                    env=env,
                    cwd=charm_dir,
                    stdin=subprocess.DEVNULL if stdio is None else None,
                    stdout=log if stdio is None else None,
                    stderr=log if stdio is None else None,
                    start_new_session=True,
                )
                os.makedirs(path('running'), exist_ok=True)
                running = path('running', unit.replace('/', '-'))
                with open(running, 'w') as f:
                    f.write(str(child.pid))
                code = child.wait()
                try:
                    os.remove(running)
                except FileNotFoundError:
                    pass
                writes = {'app': {}, 'unit': {}}
                try:
                    with open(path('ctx', context, 'writes.json')) as f:
                        writes = json.load(f)
                except FileNotFoundError:
                    pass
                committed, changed, refusal, grant = False, False, None, None
                if code == 0:
                    committed, changed, refusal, grant = commit(unit, writes)
                    if refusal:
                        code = 1
                        log.write(f'ERROR {refusal}\n')
                log.write(f'--- {context} exit {code}\n')
            entry = {
                'ctx': context,
                'unit': unit,
                'path': label,
                'source': source,
                'cause': cause,
                'start': start,
                'end': micros(),
                'exit': code,
                'committed': committed,
                'changed': changed,
                'refusal': refusal,
                'grant': grant,
            }
            with open(path('journal.jsonl'), 'a') as f:
                f.write(json.dumps(entry) + '\n')
            shutil.rmtree(path('ctx', context), ignore_errors=True)
            return code
    finally:
        os.remove(pending)


def exit_code(code):
    return code if code >= 0 else 128 - code


def run_hook_main(args):
    """``run-hook --unit U --path hooks/x [--cause C] [--params-file F] [--env K=V]...``."""
    unit, dispatch_path, cause, params, env = '', '', None, None, {}
    it = iter(args)
    for arg in it:
        if arg == '--unit':
            unit = next(it)
        elif arg == '--path':
            dispatch_path = next(it)
        elif arg == '--cause':
            cause = next(it)
        elif arg == '--params-file':
            with open(next(it)) as f:
                params = json.load(f)
        elif arg == '--env':
            key, _, value = next(it).partition('=')
            env[key] = value
        else:
            fail(f'run-hook: unexpected argument {arg!r}', 2)
    code = run_hook(unit, dispatch_path, None, env, params, cause, 'agent', dispatch_path)
    sys.exit(exit_code(code))


def juju_exec(args):
    """``juju-exec -u <unit> <command>``: wait for the unit's hook lock, run the command in
    a hook context, commit on success; the command's output is passed through."""
    _, opts, positional = parse(args, options=('-u', '--unit'))
    unit = opts.get('-u', opts.get('--unit', ''))
    if not unit and positional:
        unit = positional.pop(0)
    if not unit or not positional:
        fail('usage: juju-exec -u <unit> <command>', 2)
    command = ' '.join(positional)
    # Journal entries name the hook a dispatch runs, else the command.
    label = command
    for word in command.split():
        if word.startswith('JUJU_DISPATCH_PATH='):
            label = word.partition('=')[2]
    cause = os.environ.get('FAKE_JUJU_HOOK')
    code = run_hook(unit, None, command, {}, None, cause, 'juju-exec', label)
    sys.exit(exit_code(code))


TOOLS = {
    'is-leader': is_leader,
    'relation-ids': relation_ids,
    'relation-list': relation_list,
    'relation-get': relation_get,
    'relation-set': relation_set,
    'juju-log': juju_log,
    'config-get': config_get,
    'action-get': action_get,
    'secret-get': secret_get,
    'secret-add': secret_add,
    'secret-set': secret_set,
    'secret-grant': secret_grant,
    'juju-exec': juju_exec,
    'run-hook': run_hook_main,
}


def render(args):
    """``fakejuju.py render``: re-render ``fast/`` (the driver holds state.lock)."""
    render_fast(load('model.json', {}), load('bags.json', {'app': {}, 'units': {}}))


TOOLS['render'] = render


def main(tool, args=None):
    TOOLS[tool](sys.argv[1:] if args is None else args)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2:])
