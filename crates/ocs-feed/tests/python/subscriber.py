"""A real autobahn subscriber. Prints one JSON line per event, after a {"ready": true} line.

Usage: python subscriber.py WS_URL REALM SECONDS TOPIC [TOPIC ...]
Exits after SECONDS, or when stdin gets a line (the test says it has seen enough).
"""
import asyncio
import json
import sys

from autobahn.asyncio.wamp import ApplicationSession, ApplicationRunner

URL, REALM, SECONDS, TOPICS = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Subscriber(ApplicationSession):
    async def onJoin(self, details):
        for topic in TOPICS:
            def handler(*args, _topic=topic, **kwargs):
                emit({"topic": _topic, "args": list(args), "kwargs": kwargs})
            await self.subscribe(handler, topic)
        emit({"ready": True})
        loop = asyncio.get_running_loop()
        stdin_line = loop.run_in_executor(None, sys.stdin.readline)
        try:
            await asyncio.wait_for(stdin_line, SECONDS)
        except asyncio.TimeoutError:
            pass
        self.leave()

    def onDisconnect(self):
        asyncio.get_event_loop().stop()


if __name__ == "__main__":
    ApplicationRunner(URL, REALM).run(Subscriber)
