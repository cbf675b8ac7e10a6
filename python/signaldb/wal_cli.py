"""`signaldb-wal`: look inside a WAL directory without changing it.

    signaldb-wal inspect DIR   segments, entry counts, unprocessed entries, damage
    signaldb-wal verify DIR    verify every CRC; exit status 1 on corruption
    signaldb-wal dump DIR      print entries (unprocessed only unless --all)

Everything here is read-only and takes no lock, so it is safe on a WAL that a
live service holds open. On a live WAL the active segment may end in a record
being written: that shows as a torn tail, which is not corruption (a restart
erases it; it was never acknowledged).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signaldb import _native

if TYPE_CHECKING:  # typing-only names of the stub (no runtime classes)
    from signaldb._native import SegmentScan, WalMetadata

EXIT_OK = 0
EXIT_CORRUPT = 1
EXIT_USAGE = 2


@dataclass
class SegmentView:
    name: str
    path: Path
    report: SegmentScan
    processed_in_range: int = 0

    @property
    def corrupt(self) -> list[tuple[str, int, int]]:
        return [d for d in self.report["damages"] if d[0] == "corrupt"]

    @property
    def torn(self) -> list[tuple[str, int, int]]:
        return [d for d in self.report["damages"] if d[0] == "torn_tail"]


@dataclass
class WalView:
    path: Path
    metadata: WalMetadata | None
    segments: list[SegmentView] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    spares: list[str] = field(default_factory=list)  # the next segment, made ahead: all zero, no entries
    scanned_bytes: int = 0
    seconds: float = 0.0

    @property
    def watermark(self) -> int:
        return int(self.metadata["processed_watermark"]) if self.metadata else 0

    @property
    def unprocessed(self) -> int:
        return sum(s.report["entries_above_id"] - s.processed_in_range for s in self.segments)

    @property
    def corruption(self) -> list[tuple[str, str, int, int]]:
        out = []
        for s in self.segments:
            if not s.report["header_ok"] and s.report["header"] != "zero":
                out.append((s.name, f"header {s.report['header']}", 0, 32))
            out += [(s.name, "records", off, n) for _, off, n in s.corrupt]
        return out


def _segment_files(wal_dir: Path) -> list[Path]:
    seg_dir = wal_dir / "segments"
    if not seg_dir.is_dir():
        raise SystemExit(f"signaldb-wal: {wal_dir} is not a WAL directory (no segments/)")
    names = sorted(p.name for p in seg_dir.iterdir() if p.suffix == ".wal" and p.name[0].isdigit())
    return [seg_dir / n for n in names]


def _all_zero(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                if chunk.strip(b"\0"):
                    return False
    except FileNotFoundError:  # used or deleted by the live WAL meanwhile
        return False
    return True


def load_view(wal_dir: Path) -> WalView:
    """Scans every segment of `wal_dir` (read-only)."""
    meta = _native.read_metadata(str(wal_dir))
    view = WalView(path=wal_dir, metadata=meta)
    processed_ids = sorted(meta["processed_ids"]) if meta else []
    files = _segment_files(wal_dir)
    # A spare made ahead (all zero) follows the newest segment: leave it out,
    # so that segment counts as the newest (an append in flight there is a torn tail).
    while files and _all_zero(files[-1]):
        view.spares.insert(0, files.pop().name)
    started = time.perf_counter()
    for i, path in enumerate(files):
        try:
            report = _native.scan_segment(str(path), i == len(files) - 1, view.watermark)
        except _native.WalError as e:
            if not path.exists():  # deleted by the live WAL meanwhile: processed
                continue
            raise SystemExit(f"signaldb-wal: {e}") from None
        seg = SegmentView(name=path.name, path=path, report=report)
        first, last = report["first_id"], report["last_id"]
        if first is not None and last is not None and processed_ids:
            seg.processed_in_range = sum(1 for pid in processed_ids if first <= pid <= last)
        view.segments.append(seg)
        view.scanned_bytes += int(report["file_len"])
    view.seconds = time.perf_counter() - started
    qdir = wal_dir / "quarantine"
    if qdir.is_dir():
        view.quarantined = sorted(p.name for p in qdir.iterdir())
    return view


def _fmt_ids(first: int | None, last: int | None) -> str:
    return "-" if first is None else f"{first}..{last}"


def cmd_inspect(view: WalView, as_json: bool) -> int:
    if as_json:
        print(json.dumps(_view_json(view), indent=2))
        return EXIT_OK
    meta = view.metadata
    print(f"WAL {view.path}")
    if meta is None:
        print("  metadata.json: missing or invalid (a service replays every entry on open)")
    else:
        print(
            f"  next id {meta['next_id']}, processed watermark {meta['processed_watermark']}, "
            f"{len(meta['processed_ids'])} processed above it, last flush {meta['last_flush']}"
        )
    total = sum(int(s.report["entries"]) for s in view.segments)
    print(
        f"  {len(view.segments)} segments, {total} entries, {view.unprocessed} unprocessed, "
        f"{view.scanned_bytes} bytes on disk"
    )
    print(f"  {'segment':<14}{'bytes':>10}{'entries':>9}{'ids':>22}{'traces':>8}{'logs':>7}{'metrics':>8}  state")
    for s in view.segments:
        r = s.report
        state = "ok"
        if s.corrupt or not r["header_ok"]:
            state = f"CORRUPT ({len(s.corrupt) + (not r['header_ok'])} regions)"
        elif s.torn:
            state = f"torn tail at offset {s.torn[0][1]}"
        print(
            f"  {s.name:<14}{r['file_len']:>10}{r['entries']:>9}"
            f"{_fmt_ids(r['first_id'], r['last_id']):>22}{r['traces']:>8}{r['logs']:>7}"
            f"{r['metrics']:>8}  {state}"
        )
    if view.spares:
        print(f"  spare (next segment, made ahead): {', '.join(view.spares)}")
    if view.quarantined:
        print(f"  quarantine/: {len(view.quarantined)} files")
    return EXIT_OK


def cmd_verify(view: WalView, as_json: bool) -> int:
    corruption = view.corruption
    torn = [(s.name, off, n) for s in view.segments for _, off, n in s.torn]
    rate = view.scanned_bytes / view.seconds / 1e6 if view.seconds > 0 else 0.0
    if as_json:
        doc = _view_json(view)
        doc["ok"] = not corruption
        print(json.dumps(doc, indent=2))
        return EXIT_CORRUPT if corruption else EXIT_OK
    for name, what, off, n in corruption:
        print(f"CORRUPT {name} {what} at offset {off}: {n} bytes")
    for name, off, n in torn:
        print(f"torn tail {name} at offset {off}: {n} bytes (an unacknowledged write; erased on next open)")
    entries = sum(int(s.report["entries"]) for s in view.segments)
    verdict = "FAILED" if corruption else "OK"
    print(
        f"verify {verdict}: {len(view.segments)} segments, {entries} entries, "
        f"{len(corruption)} corrupt regions, {view.scanned_bytes} bytes in {view.seconds:.3f}s "
        f"({rate:.0f} MB/s)"
    )
    return EXIT_CORRUPT if corruption else EXIT_OK


def _payload_text(payload: bytes, mode: str, width: int) -> str:
    if mode == "none":
        return ""
    if mode == "base64":
        return base64.b64encode(payload).decode()
    if mode == "hex":
        return payload.hex()
    shown = payload[:width]
    text = shown.decode("utf-8", "backslashreplace")
    return text + ("…" if len(payload) > width else "")


def cmd_dump(view: WalView, show_all: bool, limit: int | None, payload_mode: str, width: int) -> int:
    processed = set(view.metadata["processed_ids"]) if view.metadata else set()
    printed = 0
    for i, s in enumerate(view.segments):
        offset, last_id = 0, 0
        # Not the last: the next segment's header may say where this one's data ends.
        is_last = i == len(view.segments) - 1
        while True:
            # Each page goes on from the last one's id: ids increase, as recovery reads them.
            entries, offset, last_id = _native.read_segment(str(s.path), offset, last_id, 1024, is_last)
            if not entries:
                break
            for e in entries:
                done = e.id <= view.watermark or e.id in processed
                if done and not show_all:
                    continue
                ts = dt.datetime.fromtimestamp(e.timestamp_ns / 1e9, tz=dt.UTC)
                flag = "processed" if done else "unprocessed"
                print(
                    f"{e.id}\t{e.kind}\t{ts.isoformat()}\t{len(e.payload)}\t{flag}\t"
                    f"{_payload_text(e.payload, payload_mode, width)}"
                )
                printed += 1
                if limit is not None and printed >= limit:
                    return EXIT_OK
    return EXIT_OK


def _view_json(view: WalView) -> dict[str, Any]:
    return {
        "path": str(view.path),
        "metadata": view.metadata,
        "unprocessed_entries": view.unprocessed,
        "segments": [
            {"name": s.name, **{k: v for k, v in s.report.items()}, "damages": [list(d) for d in s.report["damages"]]}
            for s in view.segments
        ],
        "corruption": [list(c) for c in view.corruption],
        "quarantined": view.quarantined,
        "scanned_bytes": view.scanned_bytes,
        "seconds": view.seconds,
    }


def _resolve_dir(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    env = {"acceptor": "ACCEPTOR_WAL_DIR", "writer": "WRITER_WAL_DIR"}[args.service]
    if os.environ.get(env):
        return Path(os.environ[env])
    config = args.config or os.environ.get("SIGNALDB_CONFIG")
    if config:
        import tomllib

        with open(config, "rb") as f:
            doc = tomllib.load(f)
        wal_dir = doc.get("wal", {}).get(args.service, {}).get("wal_dir")
        if wal_dir:
            return Path(wal_dir)
    return Path(f".wal/{args.service}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signaldb-wal",
        description="Read-only tools for a SignalDB WAL directory (safe on a live WAL).",
    )
    parser.add_argument("--config", help="TOML config; its [wal.<service>] wal_dir is used when DIR is omitted")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("inspect", "segments, entry counts, unprocessed entries and damage"),
        ("verify", "verify every CRC; exit status 1 on corruption"),
        ("dump", "print entries: id, kind, time, length, state, payload"),
    ]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("dir", nargs="?", help="the WAL directory (default: from --config / env / .wal/<service>)")
        p.add_argument(
            "--service",
            choices=["acceptor", "writer"],
            default="acceptor",
            help="whose WAL when DIR is omitted (default acceptor)",
        )
        p.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name in ("inspect", "verify"):
            p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "dump":
            p.add_argument("--all", action="store_true", help="include processed entries")
            p.add_argument("--limit", type=int, help="stop after N entries")
            p.add_argument("--payload", choices=["text", "hex", "base64", "none"], default="text")
            p.add_argument("--width", type=int, default=80, help="payload characters shown in text mode")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    wal_dir = _resolve_dir(args)
    if not wal_dir.is_dir():
        print(f"signaldb-wal: no such WAL directory: {wal_dir}", file=sys.stderr)
        return EXIT_USAGE
    view = load_view(wal_dir)
    try:
        if args.command == "inspect":
            return cmd_inspect(view, args.json)
        if args.command == "verify":
            return cmd_verify(view, args.json)
        return cmd_dump(view, args.all, args.limit, args.payload, args.width)
    except BrokenPipeError:  # `signaldb-wal dump DIR | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
