"""Where an RPC spends the server's CPU: py-spy samples `storefront serve` under bench/load.py.

For each --rpc, as `make bench` does: a fresh SQLite database (or a throwaway PostgreSQL one with
--postgres), migrated and seeded, `storefront serve` with its default settings, 32 callers for
2 s + 10 s, while py-spy (a dev dependency) samples the thread holding the GIL (`--gil`).
Prints per RPC the calls/s and CPU per call of that run, the samples by layer (the file of the
innermost Python frame: our interceptors, servicers, domain, models; grpc's Python runtime;
Peewee; sqlite3; protobuf; PyJWT; logging; prometheus_client; ...), the share spent inside the
servicer (a `...Servicer.` frame on the stack) against the plumbing around it, and the
functions with the most samples of their own. `--output DIR` keeps py-spy's collapsed stacks
(flame graphs: `py-spy`'s speedscope or any collapsed-stack viewer). The figures are for
docs/performance.md; sampling slows the server a little, so `make bench` stays the judge.
"""

# Runs py-spy and the load generator, with arguments this module builds itself.

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import RPCS, measure, postgres_database, prepare, storefront_server

PY_SPY = Path(sys.executable).with_name("py-spy")
# (layer, a pattern of the frame's file); the first that matches names the layer.
LAYERS = (
    ("interceptors", r"server/interceptors/|(^|/)contextlib\.py"),
    ("servicers + converters", r"(^|/)\w+_service\.py$|(^|/)converters\.py$"),
    ("domain", r"server/domain/"),
    ("models", r"server/models/"),
    ("storefront, other", r"(^|/)server/"),
    ("grpc (Python runtime)", r"(^|/)grpc/"),
    ("protobuf", r"(^|/)(google/)?protobuf/"),
    ("peewee", r"(^|/)(peewee|playhouse)"),
    ("sqlite3", r"(^|/)sqlite3/"),
    ("psycopg", r"(^|/)psycopg"),
    ("PyJWT + cryptography", r"(^|/)(jwt|cryptography)/"),
    ("logging + json", r"(^|/)(logging|json)/"),
    ("prometheus_client", r"(^|/)prometheus_client/"),
    ("limits", r"(^|/)limits/"),
    ("thread pool + threading", r"(^|/)(concurrent/futures/|threading\.py|queue\.py)"),
)
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")


def layer_of(frame: str) -> str:
    """The layer a "function (file:line)" frame belongs to."""
    match = FRAME.match(frame)
    file = match["file"] if match else frame
    for name, pattern in LAYERS:
        if re.search(pattern, file):
            return name
    return "other"


def short(frame: str) -> str:
    """The frame as "function (file)" with the file relative to the repository or site-packages."""
    match = FRAME.match(frame)
    if not match:
        return frame
    file = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", match["file"])
    return f"{match['function']} ({file})"


def summarise(collapsed: str, top: int) -> str:
    """Markdown: samples by layer, inside vs around the servicer, and the top self-time frames."""
    layers: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inside = total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if frame]
        # py-spy writes the thread first when asked to; the innermost frame is the last.
        innermost = frames[-1]
        layers[layer_of(innermost)] += count
        own[short(innermost)] += count
        if any("Servicer." in frame for frame in frames):
            inside += count
        total += count
    if not total:
        return "no samples\n"
    lines = [
        f"{total} samples; inside the servicer {inside / total:.0%}, around it "
        f"{1 - inside / total:.0%}.",
        "",
        "| layer (innermost frame) | share |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {count / total:.1%} |" for name, count in layers.most_common()]
    lines += ["", "| function (own samples) | share |", "|---|---:|"]
    lines += [f"| `{frame}` | {count / total:.1%} |" for frame, count in own.most_common(top)]
    return "\n".join(lines) + "\n"


def profile(
    rpc: str, target: str, server_pid: int, options: argparse.Namespace, files: tuple[Path, str]
) -> tuple[dict[str, object], str]:
    """Runs the load for `rpc` while py-spy samples the server; returns the load's figures and
    the collapsed stacks."""
    ids_file, token = files
    with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
        sampler = subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "--pid",
                str(server_pid),
                "--format",
                "raw",
                "--rate",
                str(options.rate),
                "--duration",
                str(int(options.warmup + options.duration)),
                "--nonblocking",
                "--gil",  # only the thread holding the GIL: Python's CPU, not threads waiting
                "--output",
                raw.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        figures = measure([], rpc, target, server_pid, options, ids_file, token)
        _, errors = sampler.communicate(timeout=60)
        if sampler.returncode != 0:
            sys.exit(f"profile: py-spy failed for {rpc}:\n{errors}")
        return figures, Path(raw.name).read_text()


def main(argv: Sequence[str] | None = None) -> int:
    """Profiles each RPC and prints the breakdowns as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = sorted({name for name, _, _ in RPCS} - {"echo"})
    parser.add_argument("--rpc", action="append", choices=names, help="(repeatable; default all)")
    parser.add_argument("--postgres", action="store_true", help="on PostgreSQL, not SQLite")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15, help="functions listed per RPC")
    parser.add_argument("--output", type=Path, help="keep the collapsed stacks here")
    options = parser.parse_args(argv)
    if not PY_SPY.exists() and shutil.which("py-spy") is None:
        parser.error("py-spy is missing: make venv installs the development set")
    rpcs = options.rpc or names
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="storefront-prof-")))
        url = None
        if options.postgres:
            url = stack.enter_context(postgres_database(options.postgres_url))
        target, server, _ = stack.enter_context(storefront_server([], tmp, url))
        prepared = prepare(target, tmp, options.concurrency)
        ids_file = tmp / "product-ids.txt"
        ids_file.write_text("\n".join(prepared.product_ids) + "\n")
        for rpc in rpcs:
            print(f"profile: {rpc} ...", file=sys.stderr, flush=True)
            tokens = prepared.customer_tokens if rpc == "PlaceOrder" else [prepared.admin_token]
            figures, collapsed = profile(
                rpc, target, server.pid, options, (ids_file, ",".join(tokens))
            )
            if options.output:
                options.output.mkdir(parents=True, exist_ok=True)
                (options.output / f"{rpc}.collapsed.txt").write_text(collapsed)
            print(
                f"### {rpc}{', PostgreSQL' if url else ''}\n\n"
                f"{figures['throughput_per_s']:,.0f} calls/s, "
                f"{figures['server_cpu_ms_per_call'] or 0:.3f} ms server CPU per call while "
                f"sampled.\n\n{summarise(collapsed, options.top)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
