"""`instseg-studio`: label a recorded bag in the browser with four clicks per object.

    instseg-studio BAG [--topic T] [--out DIR] [--port 8080] [--host 127.0.0.1]
                   [--segmenter auto|service|inprocess] [--service /extreme_point_node/segment]
                   [--model-file extreme_unet_int8.onnx] [--labels FILE] [--proposals MODEL]
                   [--attributes "*=occluded,truncated,crowd;car=occluded,truncated"]

BAG is a rosbag2 directory (MCAP or sqlite3) or a single .mcap file; --topic is needed when it has several image
topics. The session (every object, saved on each change) and the export live under --out (default:
`<BAG>.studio` beside the bag). Open the printed address in a browser; `?` in the page lists the keys.

Segmentation: `service` calls extreme_point_node's SegmentObject (start the node first, or use
launch/labelling.launch.py); `inprocess` runs the same model in this process, for machines without a ROS graph;
`auto` (default) uses the service when it answers within --service-wait seconds, else in-process. --labels
replaces the Cityscapes instance classes by the Cityscapes class names listed in FILE (one per line).
--attributes says which boolean attributes (occluded, truncated, crowd) each class offers: entries CLASS=ATTR,...
separated by ';', '*' for the classes not named, 'none' for no attribute (default: all three for every class;
crowd objects are exported as COCO iscrowd and Cityscapes group regions). --proposals
MODEL lets the operator ask for proposals: `semantic` (the shipped Spatial Embeddings instances that its real-data
ESPNetv2 Cityscapes branch confirms, and that branch's person / vehicle regions they leave, each segmented by the
extreme-point network; one graph, exported once into ~/.cache/instseg), or a streaming model's instances
(spatial_embeddings, box2pix or dcme). A session
pre-labelled by `instseg-fleet prelabel` (--out DIR/<bag>) offers its stored proposals on the frames that have them
(P), and the --proposals model's on the others.

The server binds 127.0.0.1 unless --host says otherwise (with a warning: the studio has no login). Exit status
(instseg_core.base.command_exit): 0 after SIGINT or SIGTERM stopped the server; 2 with one line on stderr for a
bag, topic, session, model, port or file that cannot be used (nothing is written then: the bag's frame index is
cached in --out only once the studio has started); 1 with one line for an internal error, its traceback in a log
file (or on stderr with --debug).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from instseg_core.base.classes import INSTANCE_CLASSES
from instseg_core.base.command_exit import (
    EXIT_DONE,
    InputError,
    add_debug_argument,
    debug_requested,
    describe,
    failure_status,
    run_command,
)

COMMAND = "instseg-studio"

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def read_labels(path: Path) -> tuple[str, ...]:
    """Class names from a label file: one Cityscapes class name per line, '#' starts a comment."""
    names = []
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name and name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"label file {path} lists no class")
    return tuple(names)


def make_segmenter(args: argparse.Namespace) -> object:
    """The segmenter chosen by --segmenter (see the module docstring)."""
    from instseg_core.annotate.segmenter import create_annotation_segmenter
    from instseg_studio.segmenters import InProcessSegmenter

    if args.segmenter in ("service", "auto"):
        from instseg_studio.segmenters import ServiceSegmenter

        wait = args.service_wait if args.segmenter == "auto" else max(args.service_wait, 30.0)
        try:
            return ServiceSegmenter(args.service, wait_for_service=wait)
        except RuntimeError as exc:
            if args.segmenter == "service":
                raise
            print(f"instseg-studio: {exc}; segmenting in-process instead", file=sys.stderr, flush=True)
    return InProcessSegmenter(create_annotation_segmenter(args.model_file, threads=args.threads, spin_wait=False,
                                                          refine=args.refine, flip=args.flip))


def build_studio(args: argparse.Namespace) -> object:
    """The Studio of the command line's arguments; raises the errors main() reports."""
    from tqdm import tqdm

    from instseg_studio.app import Studio
    from instseg_studio.bag_frames import BagFrames
    from instseg_studio.session import SESSION_FILE, Session, parse_attribute_config

    out = Path(args.out) if args.out else Path(args.bag).with_name(Path(args.bag).name + ".studio")
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="indexing frames", unit="frame", file=sys.stderr)
        bar.n = done
        bar.refresh()

    frames = BagFrames(args.bag, args.topic or None, cache_dir=out, progress=progress, defer_cache_write=True)
    if bar is not None:
        bar.close()
    classes = read_labels(Path(args.labels)) if args.labels else tuple(INSTANCE_CLASSES)
    attributes = parse_attribute_config(getattr(args, "attributes", None), classes)  # callers building a Namespace
    session = Session(out / SESSION_FILE, str(Path(args.bag).resolve()), frames.topic, classes, attributes)
    streaming = None
    if args.proposals == "semantic":
        from instseg_core.annotate.segmenter import create_annotation_segmenter
        from instseg_studio.segmenters import CombinedProposals, prepare_combined_graph

        prepare_combined_graph()  # the first P then need not wait for the one-time export

        def streaming() -> object:
            return CombinedProposals(create_annotation_segmenter(args.model_file, threads=args.threads,
                                                                 spin_wait=False), threads=args.threads)
    elif args.proposals:
        from instseg_core.runtime.segmenter import create_segmenter

        def streaming() -> object:
            return create_segmenter(args.proposals, threads=args.threads, score_threshold=0.3)
    if session.proposed_frames():  # pre-labelled by instseg-fleet: P shows the stored proposals first
        from instseg_studio.assist import StoredProposals

        live = streaming

        def streaming() -> object:
            return StoredProposals(session, live)
    segmenter = make_segmenter(args)
    studio = Studio(frames, session, segmenter, out, streaming)  # type: ignore[arg-type]
    frames.save_index_cache()  # only now: a start that fails writes nothing into --out
    return studio


def port_number(text: str) -> int:
    """--port: a TCP port, 0 to 65535 (argparse refuses anything else with status 2; socket.bind raised
    OverflowError for 70000)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0 to 65535; 0: any free port)")
    return port


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="instseg-studio", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("bag")
    parser.add_argument("--topic", default=None, help="image topic (empty or absent: the bag's only one)")
    parser.add_argument("--out", default=None, help="session and export folder (empty or absent: BAG.studio)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=8080, help="0: any free port")
    parser.add_argument("--segmenter", choices=("auto", "service", "inprocess"), default="auto")
    parser.add_argument("--service", default="/extreme_point_node/segment")
    parser.add_argument("--service-wait", type=float, default=5.0, help="seconds to wait for the service (auto)")
    parser.add_argument("--model-file", default=None, help="in-process annotation model (default: the shipped one)")
    parser.add_argument("--labels", default=None, help="file of class names, one per line")
    parser.add_argument("--proposals", default=None, choices=("semantic", "spatial_embeddings", "box2pix", "dcme"),
                        help="semantic: Spatial Embeddings instances confirmed by its real-data ESPNetv2 semantic "
                             "branch and that branch's person/vehicle regions, segmented by the extreme-point network "
                             "(real frames); the others: a streaming model's instances")
    parser.add_argument("--attributes", default=None,
                        help="attributes per class: 'CLASS=ATTR,ATTR;*=ATTR,...' (default: occluded, truncated, "
                             "crowd for every class)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flip", choices=("union", "none"), default="union",
                        help="union: also segment the mirrored crop and keep the larger probability per pixel "
                             "(default; ~3 ms more per object); none: one network pass")
    parser.add_argument("--refine", choices=("none", "grabcut"), default="none",
                        help="in-process: GrabCut refinement of the network's border (the service has its own "
                             "`refine` parameter)")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="instseg-studio: %(message)s")
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)

    import uvicorn

    from instseg_core.base.model_files import ModelFileError
    from instseg_core.runtime.backends import BackendUnavailableError
    from instseg_studio.app import create_app
    from instseg_studio.bag_frames import BagFramesError
    from instseg_studio.segmenters import ServiceUnavailableError
    from instseg_studio.session import SessionError

    def start() -> tuple[socket.socket, object]:
        try:
            sock = bind(args.host, args.port)
        except OSError as exc:
            raise InputError(f"cannot listen on {args.host}:{args.port}: {describe(exc)}") from exc
        try:
            return sock, build_studio(args)
        except BaseException:
            sock.close()
            raise

    sock, studio = run_command(COMMAND, start, debug=debug_requested(args),
                               input_errors=(BagFramesError, SessionError, ModelFileError, BackendUnavailableError,
                                             ServiceUnavailableError, ValueError))
    port = sock.getsockname()[1]
    names = {args.host, *(LOOPBACK_HOSTS if args.host in LOOPBACK_HOSTS else ())}
    allowed = {f"{name}:{port}" for name in names} | {f"[{name}]:{port}" for name in names if ":" in name}
    if args.host not in LOOPBACK_HOSTS:
        print(f"instseg-studio: WARNING: listening on {args.host}, not only on this machine; the studio has no "
              "login: anyone who can reach this address can read the bag and change the labels",
              file=sys.stderr, flush=True)
    app = create_app(studio, allowed)  # type: ignore[arg-type]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"instseg-studio: {len(studio.frames)} frames of {studio.frames.topic}, segmenter "  # type: ignore[attr-defined]
          f"{studio.segmenter.name}; serving http://{shown}:{port}/", flush=True)  # type: ignore[attr-defined]
    studio.prepare_proposals_in_background()  # type: ignore[attr-defined]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    # uvicorn stops on SIGINT/SIGTERM and then raises the signal again with the handler it found: with these, a
    # requested stop ends here with status 0 instead of a KeyboardInterrupt traceback or death by SIGTERM
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: None)
    status = EXIT_DONE
    try:
        server.run(sockets=[sock])
    except Exception as exc:
        status = failure_status(COMMAND, exc, debug=debug_requested(args))
    finally:
        studio.segmenter.close()  # type: ignore[attr-defined]
        studio.frames.close()  # type: ignore[attr-defined]
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)  # rclpy/ONNX Runtime threads must not hold the exit (see instseg_ros.spinning)


if __name__ == "__main__":
    main()
