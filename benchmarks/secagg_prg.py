"""Mask expansion throughput of strategies.secagg.prg against raw AES-256-CTR on this machine.

    .venv/bin/python benchmarks/secagg_prg.py [--repeats 7] [--sizes 1000000 10000000]

For each vector size (model parameters) it times, best of ``--repeats``:

* ``raw AES-CTR``: OpenSSL's AES-256-CTR ``encryptor.update_into`` of the same number of
  bytes into a preallocated buffer — the keystream alone, the reference the goal names;
* ``raw AES-GCTR``: the same through OpenSSL's AES-256-GCM encryptor (its counter mode,
  GCTR, which ``prg`` uses: the same keystream family, computed by OpenSSL's VAES/AVX-512
  code where the CPU has it) — the ceiling for ``prg`` itself;
* ``expand u64`` / ``expand u32 (mod 2^30)``: ``prg.expand`` returning a fresh vector
  (the uint32 case includes the ``& (M−1)`` reduction pass);
* ``add_mask u64`` / ``add_mask u32``: ``prg.add_mask`` adding one mask into an existing
  accumulator in place — what a silo does once per peer and the coordinator once per seed;
* ``default_source`` / ``SystemSource``: ``read(4n)`` from ``strategies.randomness``' default
  (AES-256-CTR keyed from ``os.urandom``) and from ``os.urandom`` itself — the stochastic
  rounding coins of one update, and why the default is the keystream.

Throughput is mask bytes per second; "of CTR" is the ratio to raw AES-CTR for the same byte
count (goal: ≥ 50 %), "of GCTR" the ratio to raw AES-GCTR. A second table gives the
protocol's compute per round in memory (no transport): a silo's masked-input step and the coordinator's unmasking, for 10 silos,
threshold 6, 16-bit quantization, with and without one dropout. Writes
``benchmarks/out/secagg_prg.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cryptography import __version__ as cryptography_version
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from strategies.secagg import coordinator as co
from strategies.secagg import make_config, new_silo, silo_step
from strategies.randomness import SystemSource, default_source
from strategies.secagg.prg import add_mask, expand

OUT = Path(__file__).resolve().parent / "out" / "secagg_prg.json"
SEED = bytes(range(32))


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: page in buffers, load the cipher
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cases(n: int) -> dict[str, tuple[int, Callable[[], object]]]:
    """name → (bytes of mask produced, callable)."""
    def raw(nbytes: int, mode: Callable[[], object]) -> Callable[[], object]:
        zeros, buf = bytes(nbytes), bytearray(nbytes + 15)
        return lambda: Cipher(algorithms.AES(SEED), mode()).encryptor().update_into(zeros, buf)

    def ctr() -> object:
        return modes.CTR(bytes(16))

    def gctr() -> object:
        return modes.GCM(bytes(12))

    acc64, acc32 = np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=np.uint32)
    return {
        "raw AES-CTR (8n bytes)": (8 * n, raw(8 * n, ctr)),
        "raw AES-GCTR (8n bytes)": (8 * n, raw(8 * n, gctr)),
        "expand u64": (8 * n, lambda: expand(SEED, label=b"b", length=n, modulus_bits=64)),
        "add_mask u64": (8 * n, lambda: add_mask(acc64, SEED, label=b"b")),
        "raw AES-CTR (4n bytes)": (4 * n, raw(4 * n, ctr)),
        "raw AES-GCTR (4n bytes)": (4 * n, raw(4 * n, gctr)),
        "expand u32 (mod 2^30)": (4 * n, lambda: expand(SEED, label=b"b", length=n, modulus_bits=30)),
        "add_mask u32": (4 * n, lambda: add_mask(acc32, SEED, label=b"b")),
        "default_source (4n bytes)": (4 * n, lambda: default_source().read(4 * n)),
        "SystemSource (4n bytes)": (4 * n, lambda: SystemSource().read(4 * n)),
    }


def protocol_round(n_silos: int, length: int, *, dropped: int) -> dict[str, float]:
    """Median silo masking time and coordinator unmasking time for one in-memory round."""
    config = make_config(run_id="bench", roster=list(range(n_silos)), threshold=n_silos // 2 + 1,
                         length=length, clip=1.0, bits=16, max_weight=1000)
    state, requests = co.start_run(config)
    silos = {}
    for s, request in requests.items():
        silos[s], advert = silo_step(new_silo(s), request)
        state = co.receive_advert(state, advert)
    update = np.linspace(-1, 1, length, dtype=np.float32)
    state, requests = co.begin_round(state, round_=1)
    mask_times = []
    for s, request in requests.items():
        start = time.perf_counter()
        silos[s], masked = silo_step(silos[s], request, update=update, weight=100)
        mask_times.append(time.perf_counter() - start)
        if s >= dropped:
            state = co.receive_masked(state, masked)
    state, unmask_requests = co.request_unmask(state)
    for s, request in unmask_requests.items():
        silos[s], reply = silo_step(silos[s], request)
        state = co.receive_unmask(state, reply)
    start = time.perf_counter()
    co.finish_round(state)
    return {"silo_mask_ms": round(1e3 * sorted(mask_times)[len(mask_times) // 2], 1),
            "coordinator_unmask_ms": round(1e3 * (time.perf_counter() - start), 1)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    args = parser.parse_args()
    results = []
    for n in args.sizes:
        ceiling: dict[tuple[str, int], float] = {}  # (mode, bytes) → raw keystream rate
        for name, (nbytes, fn) in cases(n).items():
            seconds = best_time(fn, args.repeats)
            rate = nbytes / seconds
            if name.startswith("raw"):
                ceiling[(name.split()[1], nbytes)] = rate
            results.append({"params": n, "case": name, "bytes": nbytes,
                            "seconds": round(seconds, 5), "gb_per_s": round(rate / 1e9, 3),
                            "of_ctr": round(rate / ceiling[("AES-CTR", nbytes)], 3),
                            "of_gctr": round(rate / ceiling[("AES-GCTR", nbytes)], 3)
                            if ("AES-GCTR", nbytes) in ceiling else None})
    print(f"{'params':>10} {'case':26} {'ms':>8} {'GB/s':>7} {'of CTR':>7} {'of GCTR':>8}")
    for r in results:
        gctr = f"{r['of_gctr']:>8.0%}" if r["of_gctr"] is not None else f"{'':>8}"
        print(f"{r['params']:>10} {r['case']:26} {r['seconds'] * 1e3:>8.2f} {r['gb_per_s']:>7.2f} "
              f"{r['of_ctr']:>7.0%} {gctr}")
    protocol = []
    print(f"\n{'params':>10} {'silos':>5} {'dropped':>7} {'silo mask ms':>12} {'coord unmask ms':>15}")
    for n in args.sizes:
        for dropped in (0, 1):
            row = {"params": n, "silos": 10, "dropped": dropped, **protocol_round(10, n, dropped=dropped)}
            protocol.append(row)
            print(f"{n:>10} {10:>5} {dropped:>7} {row['silo_mask_ms']:>12} "
                  f"{row['coordinator_unmask_ms']:>15}")
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_model(),
            "cpus": os.cpu_count(), "repeats": args.repeats, "cryptography": cryptography_version,
            "openssl": openssl_backend.openssl_version_text(), "numpy": np.__version__,
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"meta": meta, "results": results, "protocol": protocol}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
