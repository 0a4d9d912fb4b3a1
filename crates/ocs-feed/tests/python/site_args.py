"""Resolves agent arguments with ocs 0.12.1's own site_config.parse_args and prints the
result as JSON, for comparison with ocs_feed::parse_args_from (tests/parity.rs).

Usage: python site_args.py AGENT_CLASS [ARG ...]
The agent's own options are FakeDataAgent's. Prints {"error": ExceptionName} on failure.
"""
import argparse
import json
import sys

from ocs import site_config

parser = argparse.ArgumentParser()
pgroup = parser.add_argument_group('Agent Options')
pgroup.add_argument('--mode', default='idle', choices=['idle', 'acq'])
pgroup.add_argument('--num-channels', default=2, type=int)
pgroup.add_argument('--sample-rate', default=9.5, type=float)
pgroup.add_argument('--frame-length', default=60, type=int)

try:
    args = site_config.parse_args(agent_class=sys.argv[1], parser=parser, args=sys.argv[2:])
except BaseException as e:  # argparse exits with SystemExit
    print(json.dumps({'error': type(e).__name__}))
    sys.exit(0)
keys = ['site_hub', 'site_http', 'site_realm', 'address_root', 'instance_id',
        'crossbar_timeout', 'log_dir', 'access_policy', 'mode', 'num_channels',
        'sample_rate', 'frame_length']
print(json.dumps({k: getattr(args, k) for k in keys}))
