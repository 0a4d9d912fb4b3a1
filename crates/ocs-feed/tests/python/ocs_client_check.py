"""Drives a Rust agent with the real ocs 0.12.1 OCSClient and prints one JSON object.

Usage: python ocs_client_check.py SITE_FILE INSTANCE_ID
The agent must have a task `delay_task` (param `delay`, sets data `requested_delay`) and a
process `acq` (sets data `count`).
"""
import json
import sys
import time

import ocs
from ocs.ocs_client import OCSClient


def reply(r):
    return {"status": int(r.status), "msg": r.msg, "session": r.session}


def main():
    site_file, instance_id = sys.argv[1], sys.argv[2]
    client = OCSClient(instance_id, args=["--site-file", site_file])
    out = {}
    api = client._client.get_api()
    out["agent_class"] = api["agent_class"]
    out["tasks"] = [t[0] for t in api["tasks"]]
    out["processes"] = [p[0] for p in api["processes"]]
    out["feeds"] = [f[0] for f in api["feeds"]]
    out["docstring"] = client.delay_task.start.__doc__
    out["status_never_run"] = reply(client.delay_task.status())
    out["task_start"] = reply(client.delay_task.start(delay=0.5))
    out["task_wait_short"] = reply(client.delay_task.wait(timeout=0.05))
    out["task_wait"] = reply(client.delay_task.wait(timeout=10))
    out["task_call"] = reply(client.delay_task(delay=0.1))
    out["abort_start"] = reply(client.delay_task.start(delay=30))
    out["abort"] = reply(client.delay_task.abort())
    out["abort_wait"] = reply(client.delay_task.wait(timeout=10))
    out["proc_start"] = reply(client.acq.start(interval=0.1))
    time.sleep(1.0)
    out["proc_status"] = reply(client.acq.status())
    out["proc_wait_timeout"] = reply(client.acq.wait(timeout=0.1))
    out["proc_stop"] = reply(client.acq.stop())
    out["proc_wait"] = reply(client.acq.wait(timeout=10))
    out["proc_stop_again"] = reply(client.acq.stop())
    out["ok_code"] = int(ocs.OK)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
