"""Run a simulated lock: ``python -m simlock`` (``./dev simlock`` fills in the local stack's settings).

Options default to the environment the local stack writes to ``.local/stack.env``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from simlock.lock import LockConfig, SimulatedLock, provision

#: how long a one-shot run (``--once``, ``--say``) waits for the receipts of what it sent before it disconnects
CONFIRM_WAIT_S = 5.0


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(prog="simlock", description=__doc__)
    parser.add_argument("--host", default=env.get("MQTT_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("MQTT_PORT", "8883")))
    parser.add_argument("--ca-file", default=env.get("MQTT_CA_FILE"))
    parser.add_argument("--once", action="store_true", help="connect, publish state, disconnect")
    parser.add_argument("--pair", metavar="CODE", help="redeem this pairing code first (saves to --identity)")
    parser.add_argument(
        "--identity",
        type=Path,
        default=env.get("LOCKWISE_DEMO_LOCK_IDENTITY"),
        help="JSON file with a paired lock's identity (see --pair; default: the stack's demo lock)",
    )
    parser.add_argument("--devices-url", default=env.get("LOCKWISE_DEVICES_URL", "http://127.0.0.1:8083"))
    parser.add_argument("--verify-url", default=env.get("LOCKWISE_VERIFY_URL", "http://127.0.0.1:8082"))
    parser.add_argument("--say", type=Path, metavar="WAV", help="what the lock hears at the door: sent to verify")
    parser.add_argument("--again", type=Path, metavar="WAV", help="the second utterance, if verify says say_again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s simlock %(levelname)s %(message)s")
    if args.pair:
        if not args.identity or not args.ca_file:
            parser.error("--pair needs --identity (where to save the lock) and --ca-file")
        provision(args.devices_url, args.pair, args.ca_file, host=args.host).save(args.identity)
        logging.info("paired; identity saved to %s", args.identity)
    if not args.identity or not Path(args.identity).is_file():
        parser.error("no lock identity: pair with --pair CODE --identity FILE, or start ./dev stack (its demo lock)")
    config = LockConfig.load(Path(args.identity))
    lock = SimulatedLock(config, nonce_file=Path(args.identity).with_suffix(".nonces.json"))
    try:
        lock.start()
    except (ConnectionError, OSError) as exc:
        logging.error("could not connect: %s", exc)
        return 1
    logging.info(
        "lock %s connected over TLS as %s to %s:%d; state=%s",
        config.lock_id, config.identity, config.host, config.port, lock.state,
    )  # fmt: skip
    if args.say:
        answer = lock.hear(args.verify_url, args.say.read_bytes(), args.again.read_bytes() if args.again else None)
        logging.info("verify answered %s; door %s", json.dumps(answer, sort_keys=True), lock.state)
    if args.once or args.say:
        if lock.wait_confirmed(CONFIRM_WAIT_S):  # before it goes: what it sent is held by the back-end
            logging.info("lock %s: every report and ack confirmed by the back-end", config.lock_id)
        else:
            logging.warning("lock %s: no receipt for %d messages yet", config.lock_id, len(lock.unconfirmed.kept))
        lock.stop()
        return 0
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    lock.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
