"""Reads a running pysmurf-monitor through the real ocs OCSClient and prints one JSON object.

Usage: python monitor_client.py SITE_FILE INSTANCE_ID
Waits for the startup `init` task to finish and for the `run` process to report counters.
"""
import json
import sys
import time

from ocs.ocs_client import OCSClient


def reply(r):
    return {"status": int(r.status), "msg": r.msg, "session": r.session}


def main():
    site_file, instance_id = sys.argv[1], sys.argv[2]
    client = OCSClient(instance_id, args=["--site-file", site_file])
    api = client._client.get_api()
    out = {
        "agent_class": api["agent_class"],
        "tasks": [t[0] for t in api["tasks"]],
        "processes": [p[0] for p in api["processes"]],
        "feeds": sorted(f[0] for f in api["feeds"]),
        "init": reply(client.init.wait(timeout=20)),
    }
    deadline = time.time() + 20
    while True:
        run = reply(client.run.status())
        data = run["session"].get("data") or {}
        if data.get("files_registered", 0) >= 1 or time.time() > deadline:
            break
        time.sleep(0.2)
    out["run"] = run
    print(json.dumps(out))


if __name__ == "__main__":
    main()
