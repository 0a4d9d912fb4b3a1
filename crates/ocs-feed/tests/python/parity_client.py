"""Drives a TwinAgent (Python tests/python/twin_agent.py or the Rust twin of tests/parity.rs)
with ocs 0.12.1's real clients and prints what they got, one JSON line per step, keys in the
order the agent sent them (Python dicts keep the wire's order), with times, PIDs, host names
and the instance id masked.

Usage: python parity_client.py SITE_FILE INSTANCE_ID SCENARIO [PASSWORD]
SCENARIO is "wire", "params" or "access".

Each step is {"step": name, "reply": ...} or {"step": name, "error": [uri, args]} when the
call raised (a handler exception reaches the client as a WAMP error).
"""
import json
import sys
import time

from ocs.ocs_client import OCSClient
from ocs.client_http import ControlClientError

site_file, instance_id, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
password = sys.argv[4] if len(sys.argv) > 4 else None

client = None
for _ in range(100):
    try:
        client = OCSClient(instance_id, args=['--site-file', site_file])
        break
    except Exception:
        time.sleep(0.2)
raw = client._client
address = raw.agent_addr
out = []


def step(name, fn):
    try:
        r = fn()
        if isinstance(r, tuple):
            r = list(r)
        out.append({'step': name, 'reply': r})
    except ControlClientError as e:
        out.append({'step': name, 'error': [e.args[0][4], e.args[0][5]]})


def ops(*args, **kwargs):
    return raw.call(address + '.ops', *args, **kwargs)


def wait_done(op):
    step(op + ' wait', lambda: ops('wait', op, {}, timeout=10))


if scenario == 'wire':
    step('get_api', lambda: raw.get_api())
    step('get_api extra kwargs', lambda: raw.call(address, 'get_api', extra=1, more='x'))
    step('get_agent_class', lambda: raw.call(address, 'get_agent_class', password='pw'))
    step('get_tasks', lambda: raw.call(address, 'get_tasks'))
    step('get_processes', lambda: raw.call(address, 'get_processes'))
    step('get_feeds', lambda: raw.call(address, 'get_feeds'))
    step('unknown query', lambda: raw.call(address, 'get_nothing'))
    step('mgmt no args', lambda: raw.call(address))
    step('mgmt two args', lambda: raw.call(address, 'get_api', 'more'))
    step('mgmt q twice', lambda: raw.call(address, 'get_api', q='get_api'))
    step('status never run', lambda: client.delay_task.status())
    step('wait never run', lambda: client.delay_task.wait(timeout=1))
    step('abort never run', lambda: client.delay_task.abort())
    step('stop never run', lambda: client.acq.stop())
    step('start task', lambda: client.delay_task.start(delay=0.5))
    step('start again', lambda: client.delay_task.start(delay=0.5))
    step('wait short', lambda: client.delay_task.wait(timeout=0.05))
    step('wait negative', lambda: client.delay_task.wait(timeout=-1))
    wait_done('delay_task')
    step('abort when done', lambda: client.delay_task.abort())
    step('start for abort', lambda: client.delay_task.start(delay=5.5))
    time.sleep(0.2)
    step('abort', lambda: client.delay_task.abort())
    step('abort again', lambda: client.delay_task.abort())
    wait_done('delay_task')
    step('start process', lambda: client.acq.start())
    time.sleep(0.2)
    step('status running', lambda: client.acq.status())
    step('abort a process', lambda: client.acq.abort() if hasattr(client.acq, 'abort')
         else ops('abort', 'acq', {}))
    step('stop a task', lambda: ops('stop', 'delay_task', {}))
    step('stop', lambda: client.acq.stop())
    step('stop again', lambda: client.acq.stop())
    wait_done('acq')
    step('echo', lambda: client.echo(x=5, label='abc'))
    step('status with password', lambda: ops('status', 'acq', {}, password='whatever'))
    step('start unknown op', lambda: ops('start', 'nope', {}))
    step('status unknown op', lambda: ops('status', 'nope', {}))
    step('wait unknown op', lambda: ops('wait', 'nope', {}))
    step('stop unknown op', lambda: ops('stop', 'nope', {}))
    step('unknown action', lambda: ops('frobnicate', 'acq', {}))
    step('ops missing op_name', lambda: ops('status'))
    step('ops extra kwarg', lambda: ops('status', 'acq', {}, bogus=1))
    step('ops too many args', lambda: ops('status', 'acq', {}, 1, 'pw', 'extra'))
    step('start params null', lambda: ops('start', 'echo', None))
    wait_done('echo')
    step('start params list', lambda: ops('start', 'echo', []))
    wait_done('echo')
    step('privileged', lambda: client.privileged.start())
    step('boot status', lambda: client.boot.status())
    step('get_api at end', lambda: raw.get_api())
elif scenario == 'params':
    def start_wait(name, op, params):
        step(name, lambda: ops('start', op, params))
        wait_done(op)

    start_wait('defaults', 'echo', {})
    start_wait('int for int', 'echo', {'x': 7, 'label': 'q'})
    start_wait('bool for int', 'echo', {'x': True})
    start_wait('float for int', 'echo', {'x': 7.5})
    start_wait('str for int', 'echo', {'x': '7'})
    start_wait('list for str', 'echo', {'label': [1, 'a', None, True, 2.5, {'k': 'v'}]})
    start_wait('none is missing', 'echo', {'x': None})
    start_wait('stray', 'echo', {'x': 1, 'zz': 2, 'aa': 3})
    start_wait('required missing', 'configure', {})
    start_wait('required none', 'configure', {'count': None})
    start_wait('all defaults', 'configure', {'count': 3})
    start_wait('int to float', 'configure', {'count': 3, 'gain': 2})
    start_wait('bool to float', 'configure', {'count': 3, 'gain': True})
    start_wait('check fails', 'configure', {'count': 3, 'gain': -1.5})
    start_wait('check fails zero', 'configure', {'count': 3, 'gain': 0})
    start_wait('str for float', 'configure', {'count': 3, 'gain': '2'})
    start_wait('cast lower', 'configure', {'count': 3, 'mode': 'SLOW'})
    start_wait('not a choice', 'configure', {'count': 3, 'mode': 'Medium'})
    start_wait('cast lower on int', 'configure', {'count': 3, 'mode': 5})
    start_wait('tags list', 'configure', {'count': 3, 'tags': ['a', 'b']})
    start_wait('tags dict', 'configure', {'count': 3, 'tags': {'a': 1}})
    start_wait('cast str int', 'configure', {'count': 3, 'name': 12})
    start_wait('cast str float', 'configure', {'count': 3, 'name': 1e16})
    start_wait('cast str small', 'configure', {'count': 3, 'name': 0.0001})
    start_wait('cast str bool', 'configure', {'count': 3, 'name': False})
    start_wait('cast str list', 'configure', {'count': 3, 'name': ["it's", 'a"b', 3]})
    start_wait('cast float str', 'configure', {'count': 3, 'ratio': ' 2.5 '})
    start_wait('cast float int', 'configure', {'count': 3, 'ratio': 4})
    start_wait('cast float bad', 'configure', {'count': 3, 'ratio': 'abc'})
    start_wait('cast float list', 'configure', {'count': 3, 'ratio': [1]})
    start_wait('none kept', 'configure', {'count': 3, 'maybe': None})
    start_wait('maybe float', 'configure', {'count': 3, 'maybe': 2.0})
    start_wait('big int', 'configure', {'count': 12345678901234567890})
    start_wait('negative float', 'configure', {'count': -0.0})
    start_wait('strays allowed', 'loose', {'level': 2, 'other': 'x'})
    start_wait('loose bad level', 'loose', {'level': 'high'})
    start_wait('manual ok', 'manual', {'speed': 3})
    start_wait('manual missing', 'manual', {})
    start_wait('manual bad type', 'manual', {'speed': 'fast'})
    start_wait('manual stray', 'manual', {'speed': 1, 'extra': 1})
elif scenario == 'access':
    kw = {} if password is None else {'password': password}
    step('get_api', lambda: raw.get_api()['access_control'])
    step('ops info', lambda: [[t[0], t[2]['min_privs']] for t in raw.get_api()['tasks']])
    step('echo', lambda: ops('start', 'echo', {}, **kw))
    wait_done('echo')
    step('privileged', lambda: ops('start', 'privileged', {}, **kw))
    wait_done('privileged')
    step('boot status', lambda: ops('status', 'boot', {}, **kw))
    step('start process', lambda: ops('start', 'acq', {}, **kw))
    step('stop process', lambda: ops('stop', 'acq', {}, **kw))
    wait_done('acq')
elif scenario == 'client':
    # The same calls as rust_client_gets_the_reply_triples_ocs_client_gets makes.
    step('status never run', lambda: client.delay_task.status())
    step('wait never run', lambda: client.delay_task.wait(timeout=1))
    step('start', lambda: client.echo.start(x=5, label='abc'))
    step('wait', lambda: client.echo.wait(timeout=10))
    step('bad param', lambda: client.configure.start())
    step('privileged', lambda: client.privileged.start())
    step('start process', lambda: client.acq.start())
    step('stop process', lambda: client.acq.stop())
    step('wait process', lambda: client.acq.wait(timeout=10))
    step('abort a process', lambda: ops('abort', 'acq', {}))
    step('run_task', lambda: client.echo())
elif scenario == 'ping':
    step('get_agent_class', lambda: raw.call(address, 'get_agent_class'))
elif scenario == 'wait_rules':
    # Until the agent has had rules from the Access Director (20 s at most).
    for _ in range(100):
        ac = raw.get_api()['access_control']
        if ac['update_count'] >= 1:
            break
        time.sleep(0.2)
    step('access_control', lambda: ac)
else:
    raise SystemExit('unknown scenario ' + scenario)

MASKED = {'start_time', 'end_time', 'update_timestamp', 'instance_pid', 'instance_hostname'}


def mask(v, key=None):
    """Masks what differs between two runs (times, PIDs, host names, the instance id)."""
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if (k in MASKED and x is not None) or (k == 'session_id' and isinstance(x, str)):
                out[k] = '<masked>'
            elif k == 'messages' and isinstance(x, list):
                out[k] = [['<t>', m[1]] for m in x]
            else:
                out[k] = mask(x)
        return out
    if isinstance(v, list):
        return [mask(x) for x in v]
    if isinstance(v, str):
        return v.replace(instance_id, '<id>')
    return v


# One line per step, masked, keys in the order the agent sent them: the test compares text.
for s in out:
    print(json.dumps(mask(s)))
