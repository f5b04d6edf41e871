"""Run the simulator as its own process: python -m novita_simulator --port 8090 --api-key KEY.

Every setting, fault switches included, can be changed while it runs with POST /_sim/config; POST
/_sim/reset restores the settings given here, GET /_sim/stats shows counters and settings, and GET
/_sim/ledger every paid call.
"""

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
        "--personality",
        choices=("guide", "reference"),
        default=defaults.personality,
        help="which Novita to be: the integration guide's (any txt2img model, multipart Kling with a"
        " webhook) or the public reference's (checkpoints only on txt2img, JSON Kling without a webhook,"
        " results at the top of the payload with string TTLs)",
    )
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
        "--seedream-delay",
        type=float,
        default=defaults.seedream_delay,
        help="seconds the synchronous Seedream 3.0 endpoint takes to answer with its image",
    )
    parser.add_argument(
        "--task-result-delay",
        type=float,
        default=defaults.task_result_delay,
        help="seconds task-result takes to answer",
    )
    parser.add_argument(
        "--layout",
        choices=("extra", "top"),
        default=defaults.layout,
        help="where webhook results sit under the guide personality (the reference's are always on top)",
    )
    parser.add_argument(
        "--ttl", dest="media_ttl", type=int, default=defaults.media_ttl, help="media link lifetime (s)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = SimulatorConfig(
        personality=args.personality,
        image_delay=args.image_delay,
        video_delay=args.video_delay,
        seedream_delay=args.seedream_delay,
        task_result_delay=args.task_result_delay,
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
