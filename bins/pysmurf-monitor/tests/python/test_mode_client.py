"""Drives a pysmurf-monitor started with socs 0.6's --test-mode through the real ocs OCSClient
and prints one JSON object: its feeds, `run` before any start, and `run(test_mode=True)`.

Usage: python test_mode_client.py SITE_FILE INSTANCE_ID
"""
import json
import sys

from ocs.ocs_client import OCSClient


def reply(r):
    return {"status": int(r.status), "msg": r.msg, "session": r.session}


def main():
    site_file, instance_id = sys.argv[1], sys.argv[2]
    client = OCSClient(instance_id, args=["--site-file", site_file])
    api = client._client.get_api()
    out = {
        "feeds": sorted(f[0] for f in api["feeds"]),
        "before": reply(client.run.status()),
        "start": reply(client.run.start(test_mode=True)),
    }
    out["run"] = reply(client.run.wait(timeout=30))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
