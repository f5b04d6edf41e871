"""Run the simulator as its own process: python -m novita_simulator --port 8090 --api-key KEY."""

import argparse
import signal
import threading
from types import FrameType

from novita_simulator.config import SimulatorConfig
from novita_simulator.simulator import NovitaSimulator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = SimulatorConfig()
    parser = argparse.ArgumentParser(prog="python -m novita_simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--api-key", required=True, help="the Bearer key clients must send")
    parser.add_argument(
        "--webhook-delay",
        "--image-delay",
        dest="image_delay",
        type=float,
        default=defaults.image_delay,
        help="seconds from a txt2img request to its result and webhook",
    )
    parser.add_argument(
        "--video-delay",
        type=float,
        default=defaults.video_delay,
        help="seconds from a Kling request to its result",
    )
    parser.add_argument(
        "--layout", choices=("extra", "top"), default=defaults.layout, help="where webhook results sit"
    )
    parser.add_argument(
        "--ttl", dest="media_ttl", type=int, default=defaults.media_ttl, help="media link lifetime (s)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = SimulatorConfig(
        image_delay=args.image_delay,
        video_delay=args.video_delay,
        layout=args.layout,
        media_ttl=args.media_ttl,
    )
    stop_requested = threading.Event()

    def request_stop(_signal: int, _frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    simulator = NovitaSimulator(api_key=args.api_key, host=args.host, port=args.port, config=config).start()
    print(f"novita-simulator listening on {simulator.base_url}", flush=True)
    stop_requested.wait()
    simulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
