"""A longer fuzz run than the suite's hypothesis tests: frame decoder and protocol-file parser.

    python benchmarks/fuzz.py [--seconds 60] [--seed 1] [--json out.json]

Random and mutated inputs (byte flips, insertions, deletions, truncations, splices of valid
frames and of the example protocol files), fed for a time budget. Fails (exit 1) on any
exception other than the project's own, a decoded frame that was not sent as such, or one input
taking longer than 1 s (a hang).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.codec import FrameDecoder, encode_frame
from firmware_bridge.errors import ProtocolError
from firmware_bridge.protocol import MESSAGE_TYPES, decode_message
from sessions.protocol import ProtocolFileError, parse_protocol

SLOW_INPUT_S = 1.0
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 8))):
        op = int(rng.integers(0, 5))
        pos = int(rng.integers(0, len(out) + 1))
        if op == 0 and out:
            out[min(pos, len(out) - 1)] ^= int(rng.integers(1, 256))
        elif op == 1:
            out[pos:pos] = bytes(
                rng.integers(0, 256, size=int(rng.integers(1, 16)), dtype=np.uint8)
            )
        elif op == 2 and out:
            del out[pos : pos + int(rng.integers(1, 16))]
        elif op == 3:
            del out[pos:]
        elif op == 4 and out:
            start = int(rng.integers(0, len(out)))
            out[pos:pos] = out[start : start + int(rng.integers(1, 64))]
    return bytes(out)


def valid_stream(rng: np.random.Generator) -> bytes:
    types = sorted(MESSAGE_TYPES)
    parts = []
    for seq in range(int(rng.integers(1, 12))):
        frame_type = types[int(rng.integers(0, len(types)))]
        payload = bytes(rng.integers(0, 256, size=int(rng.integers(0, 80)), dtype=np.uint8))
        parts.append(encode_frame(frame_type, seq, payload))
    return b"".join(parts)


def fuzz_decoder(seconds: float, rng: np.random.Generator) -> dict[str, Any]:
    inputs = frames = messages = 0
    slowest = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        data = (
            mutate(valid_stream(rng), rng)
            if rng.random() < 0.8
            else bytes(rng.integers(0, 256, size=int(rng.integers(0, 600)), dtype=np.uint8))
        )
        began = time.perf_counter()
        decoder = FrameDecoder()
        cuts = sorted(int(c) for c in rng.integers(0, len(data) + 1, size=3))
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            for frame in decoder.feed(data[a:b]):
                # every frame the decoder yields must be exactly what a sender could have sent
                wire = encode_frame(frame.frame_type, frame.seq, frame.payload)
                if wire[:-1] not in data:
                    raise AssertionError(
                        f"decoder yielded a frame that was not on the wire: {frame}"
                    )
                frames += 1
                try:
                    decode_message(frame)
                    messages += 1
                except ProtocolError:
                    pass
        slowest = max(slowest, time.perf_counter() - began)
        if slowest > SLOW_INPUT_S:
            raise AssertionError(f"one input took {slowest:.2f} s")
        inputs += 1
    return {"inputs": inputs, "frames": frames, "messages": messages, "slowest_s": slowest}


def fuzz_protocol(seconds: float, rng: np.random.Generator) -> dict[str, Any]:
    examples = [p.read_bytes() for p in sorted(EXAMPLES.glob("*.yaml"))]
    inputs = accepted = refused = 0
    slowest = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        source = examples[int(rng.integers(0, len(examples)))]
        text = mutate(source, rng).decode("utf-8", errors="replace")
        began = time.perf_counter()
        try:
            parse_protocol(text, "<fuzz>")
            accepted += 1
        except ProtocolFileError:
            refused += 1
        slowest = max(slowest, time.perf_counter() - began)
        if slowest > SLOW_INPUT_S:
            raise AssertionError(f"one protocol took {slowest:.2f} s")
        inputs += 1
    return {"inputs": inputs, "accepted": accepted, "refused": refused, "slowest_s": slowest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="budget for each target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    try:
        results = {
            "frame_decoder": fuzz_decoder(args.seconds, rng),
            "protocol_file": fuzz_protocol(args.seconds, rng),
        }
    except Exception as exc:  # the point of the script: report anything unexpected
        print(f"FUZZ FAILURE: {type(exc).__name__}: {exc}")
        return 1
    print(f"{'target':<16} {'inputs':>10} {'slowest input':>14}  detail")
    for name, r in results.items():
        detail = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("inputs", "slowest_s"))
        print(f"{name:<16} {r['inputs']:>10} {r['slowest_s'] * 1000:>11.1f} ms  {detail}")
    print("no unexpected exception, no frame that was not sent, no hang")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "seconds": args.seconds,
                                         "results": results}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
