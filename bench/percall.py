"""Per-call cost of the vault's hot path, measured in ways that hold on a busy machine.

``python -m bench.percall [--tree DIR ...] [--callgrind] [--rounds R]``

For each source tree (default: this one) the vault runs in its own process (that tree's ``.venv``,
SQLite, a shared real OpenBao, NATS off), and a client in this process drives phases at 16 callers:
PutRecord (cached subject), GetRecord, PutRecords x500. Per phase it prints the vault process's
CPU time per call (utime+stime from /proc) and, with ``--callgrind``, the instructions per call
(valgrind's callgrind, instrumentation switched on only for the measured phase: deterministic under
load). Trees are measured interleaved, round by round, so a load change hits all of them alike.
Warm-up calls are excluded.
"""

# ruff: noqa: ASYNC220, ASYNC240  -- a measuring script: blocking process and path calls between phases are fine

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from grpc import aio

from bench.vault_bench import _md, lead_data

SERVER = r"""
import asyncio, os, sys, tempfile
sys.path.insert(0, os.getcwd())
from pathlib import Path

if os.environ.get("PERCALL_COUNT"):
    # Deterministic Python call counts per function, switched on and dumped by signals.
    import collections, json, signal, threading
    counts = collections.Counter()
    on = [False]

    def prof(frame, event, arg):
        if on[0]:
            if event == "call":
                code = frame.f_code
                where = code.co_filename.split('site-packages/')[-1].replace(os.getcwd() + '/', '')
                counts[f"{where}:{code.co_name}"] += 1
            elif event == "c_call":
                counts[f"C:{getattr(arg, '__qualname__', '?')}"] += 1

    def toggle(*_):
        on[0] = not on[0]
        if on[0]:
            counts.clear()
        else:
            Path(os.environ["PERCALL_COUNT"]).write_text(json.dumps(counts))

    sys.setprofile(prof)
    threading.setprofile(prof)
    signal.signal(signal.SIGUSR1, toggle)

async def main():
    from services.vault.main import VaultSettings, create_server
    workdir = Path(tempfile.mkdtemp(prefix="steward-percall-"))
    settings = VaultSettings(
        database_url=f"sqlite:///{workdir / 'vault.db'}",
        tombstone_database_url=f"sqlite:///{workdir / 'ledger.db'}",
        transit={"url": os.environ["PERCALL_BAO_URL"], "token": os.environ["PERCALL_BAO_TOKEN"],
                 "key_prefix": os.environ["PERCALL_PREFIX"]},
        nats={"enabled": False},
        trust_identity_metadata=True,
        grpc={"max_message_bytes": 64 << 20},
    )
    app, port = await create_server(settings, port=0)
    Path(os.environ["PERCALL_PORT_FILE"]).write_text(str(port))
    await asyncio.Event().wait()

asyncio.run(main())
"""

CONCURRENCY = 16


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, tree: Path, bao: Any, callgrind: bool, out: Path, count: bool = False) -> None:
        self.tree = tree
        self.callgrind = callgrind
        self.out = out
        port_file = Path(tempfile.mktemp(prefix="percall-port-"))
        env = {
            **os.environ,
            "PERCALL_BAO_URL": bao.url,
            "PERCALL_BAO_TOKEN": bao.token,
            "PERCALL_PREFIX": f"pc{uuid.uuid4().hex[:6]}-",
            "PERCALL_PORT_FILE": str(port_file),
            "PYTHONPATH": str(tree),
        }
        self.count_file = out / f"counts.{tree.name}.json" if count else None
        if self.count_file is not None:
            env["PERCALL_COUNT"] = str(self.count_file)
        python = str(tree / ".venv/bin/python")
        command = [python, "-c", SERVER]
        if callgrind:
            self.prefix = str(out / f"callgrind.{tree.name}")
            command = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={self.prefix}.%p",
                *command,
            ]
        self.proc = subprocess.Popen(command, cwd=tree, env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while not port_file.exists() or not port_file.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vault in {tree} did not start")
            time.sleep(0.2)
        time.sleep(0.2)
        self.port = int(port_file.read_text())

    def control(self, *args: str) -> None:
        if self.callgrind:
            subprocess.run(["callgrind_control", *args, str(self.proc.pid)], check=True, capture_output=True)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def _drive(port: int, tenant: str, phase: str, n: int, state: dict[str, Any]) -> None:
    from steward.vault.v1 import vault_pb2 as pb
    from steward.vault.v1 import vault_pb2_grpc

    md = _md(tenant)
    async with aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = vault_pb2_grpc.VaultServiceStub(channel)
        counter = iter(range(n))
        subjects, records = state.setdefault("subjects", []), state.setdefault("records", [])

        async def one(i: int) -> None:
            if phase == "new":
                reply = await stub.PutRecord(
                    pb.PutRecordRequest(
                        record=pb.NewRecord(
                            kind=pb.RECORD_KIND_LEAD_CONTACT,
                            data=lead_data(i),
                            identifiers=pb.SubjectIdentifiers(email=f"l{i}-{uuid.uuid4().hex[:6]}@example.com"),
                        )
                    ),
                    metadata=md,
                )
                subjects.append(reply.record.subject_id)
                records.append(reply.record.id)
            elif phase == "put":
                await stub.PutRecord(
                    pb.PutRecordRequest(
                        record=pb.NewRecord(
                            kind=pb.RECORD_KIND_INTERACTION, subject_id=subjects[i % len(subjects)], data=lead_data(i)
                        )
                    ),
                    metadata=md,
                )
            elif phase == "get":
                await stub.GetRecord(pb.GetRecordRequest(record_id=records[i % len(records)]), metadata=md)
            else:
                items = [
                    pb.NewRecord(
                        kind=pb.RECORD_KIND_INTERACTION, data=lead_data(j), subject_id=subjects[j % len(subjects)]
                    )
                    for j in range(500)
                ]
                await stub.PutRecords(pb.PutRecordsRequest(records=items), metadata=md)

        async def worker() -> None:
            for i in counter:
                await one(i)

        await asyncio.gather(*(worker() for _ in range(2 if phase == "puts" else CONCURRENCY)))


async def _tenant(port: int) -> str:
    from steward.vault.v1 import vault_pb2 as pb
    from steward.vault.v1 import vault_pb2_grpc

    tenant = f"pc-{uuid.uuid4().hex[:8]}"
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await vault_pb2_grpc.VaultAdminServiceStub(channel).CreateTenant(pb.CreateTenantRequest(), metadata=_md(tenant))
    return tenant


def _total_ir(path: str) -> int:
    report = subprocess.run(["callgrind_annotate", path], capture_output=True, text=True, check=True).stdout
    for line in report.splitlines():
        if "PROGRAM TOTALS" in line:
            return int(line.split()[0].replace(",", ""))
    return 0


PHASES = {"put": 400, "get": 400, "puts": 6}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", action="append", default=[])
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--pyspy", action="store_true", help="py-spy --native profile of each measured phase")
    parser.add_argument("--count", action="store_true", help="Python call counts per function (slow)")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "percall"))
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.tree] or [Path(__file__).resolve().parent.parent]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from tests.plugins.infra import OpenBaoDev

    bao = OpenBaoDev()
    bao.start()
    servers = []
    try:
        servers = [Server(tree, bao, args.callgrind, out, args.count) for tree in trees]
        states: list[dict[str, Any]] = []
        for server in servers:
            tenant = await _tenant(server.port)
            state: dict[str, Any] = {"tenant": tenant}
            await _drive(server.port, tenant, "new", 200, state)
            for phase in PHASES:  # warm-up, not measured
                await _drive(server.port, tenant, phase, 2 if phase == "puts" else 100, state)
            states.append(state)
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for round_no in range(args.rounds):
            for phase in args.phases.split(","):
                n = max(1, int(PHASES[phase] * args.scale))
                for server, state in zip(servers, states, strict=True):
                    server.control("--zero")
                    server.control("--instr=on")
                    spy = None
                    if args.pyspy:
                        spy = subprocess.Popen(
                            [
                                str(Path(sys.executable).parent / "py-spy"),
                                "record",
                                "--native",
                                "--idle",
                                "-r",
                                "200",
                                "--format",
                                "raw",
                                "-o",
                                str(out / f"pyspy.{server.tree.name}.{phase}.{round_no}.txt"),
                                "--pid",
                                str(server.proc.pid),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        await asyncio.sleep(1.0)
                    if server.count_file is not None:
                        server.proc.send_signal(10)
                    cpu = _cpu_s(server.proc.pid)
                    await _drive(server.port, state["tenant"], phase, n, state)
                    cpu = _cpu_s(server.proc.pid) - cpu
                    if server.count_file is not None:
                        server.proc.send_signal(10)
                        await asyncio.sleep(1.0)
                        server.count_file.rename(server.count_file.with_suffix(f".{phase}.{round_no}.json"))
                    if spy is not None:
                        spy.send_signal(2)
                        spy.wait(60)
                    server.control("--instr=off")
                    ir = 0.0
                    if server.callgrind:
                        before = set(glob.glob(server.prefix + "*"))
                        server.control(f"--dump={phase}-{round_no}")
                        for _ in range(100):
                            new = set(glob.glob(server.prefix + "*")) - before
                            if new:
                                break
                            await asyncio.sleep(0.1)
                        await asyncio.sleep(0.5)
                        ir = _total_ir(sorted(new, key=lambda p: int(p.rsplit(".", 1)[1]))[-1]) / n
                    results.setdefault((server.tree.name, phase), []).append((cpu / n * 1000, ir))
                    print(
                        f"round {round_no} {server.tree.name:<12} {phase:<5} n={n:<4} cpu {cpu / n * 1000:8.3f} ms/call"
                        + (f"  {ir / 1e6:8.2f} M instr/call" if ir else ""),
                        flush=True,
                    )
        print("\nsummary (median over rounds; 'puts' is per 500-record call)")
        for (name, phase), values in results.items():
            cpus = sorted(v[0] for v in values)
            irs = sorted(v[1] for v in values)
            line = f"{name:<12} {phase:<5} cpu {cpus[len(cpus) // 2]:8.3f} ms/call"
            if irs[-1]:
                line += f"  {irs[len(irs) // 2] / 1e6:8.2f} M instr/call"
            print(line)
    finally:
        for server in servers:
            server.stop()
        if bao.proc is not None:
            bao.proc.terminate()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
