"""Post N messages into a room through ``hubbub.publish.post_message`` (Hubbub's own service path:
stored, numbered, published), from a process with the servers' environment.

    python -m bench.seed ROOM N     # prints {"posted": N, "seconds": S, "last_id": ID}
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    room, count = args[0], int(args[1])
    from hubbub.publish import post_message

    t0 = time.monotonic()
    event: dict[str, object] = {}
    for i in range(count):
        event = post_message(room, f"catch-up message {i} " + "x" * 60, name="bench-seed", wait=0)
    seconds = time.monotonic() - t0
    json.dump({"posted": count, "seconds": round(seconds, 2), "last_id": event.get("id")}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
