"""Watches a running pysmurf-monitor's `run` process through the real ocs OCSClient.

Usage: python run_status_client.py SITE_FILE INSTANCE_ID
Prints `ready` once `run` is running, then polls `run.status()` until its
session data carries a `pipeline_error`, and prints that session as one JSON
object (or `timeout` after 60 s).
"""
import json
import sys
import time

from ocs.ocs_client import OCSClient


def main():
    site_file, instance_id = sys.argv[1], sys.argv[2]
    deadline = time.time() + 60
    client = None
    while client is None:
        try:
            client = OCSClient(instance_id, args=["--site-file", site_file])
        except Exception:
            if time.time() > deadline:
                print("timeout", flush=True)
                return
            time.sleep(0.2)
    while client.run.status().session.get("status") != "running":
        if time.time() > deadline:
            print("timeout", flush=True)
            return
        time.sleep(0.1)
    print("ready", flush=True)
    while time.time() < deadline:
        session = client.run.status().session
        if (session.get("data") or {}).get("pipeline_error"):
            print(json.dumps(session), flush=True)
            return
        time.sleep(0.05)
    print("timeout", flush=True)


if __name__ == "__main__":
    main()
