"""Cost of DLP redaction on the gateway's hot path: microseconds per `Redactor.redact` call.

Each case is a CallToolResult-shaped dict whose text content is a JSON array of order rows (ids,
UUIDs, names, amounts, ISO timestamps), as a SQL tool would return:

- clean_2kb: about 2 KB of rows with nothing sensitive (the common case);
- clean_2kb_structured: the same rows also as `structuredContent` (about 200 short strings);
- findings_5: 2 KB with an email, a phone number, a card number, an AWS key and a password;
- clean_200kb: about 200 KB of clean rows;
- findings_200kb: 200 KB with the 5 findings spread through it.

Prints one JSON document; `reference_json_loads_2kb_us` (json.loads of the 2 KB text) puts the
numbers in proportion to the machine.

    python benchmarks/dlp_speed.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import timeit
import uuid
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contextlab.extension.dlp import Redactor  # noqa: E402

FINDINGS = [
    "contact: jane.roe@example.com",
    "phone: +1 (415) 555-2671",
    "card: 4111 1111 1111 1111",
    "key: AKIAIOSFODNN7EXAMPLE",
    "password=Tr0ub4dor&3",
]


def rows(count: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    start = datetime(2024, 1, 15, 10, 30)
    return [
        {
            "id": 1_000_000_000 + i * 7919,
            "order_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "customer": rng.choice(["Alice Martin", "Bob Chen", "Carla Diaz", "Dev Patel"]),
            "status": rng.choice(["shipped", "pending", "cancelled"]),
            "amount": round(rng.uniform(1, 5000), 2),
            "created_at": (start + timedelta(minutes=37 * i)).isoformat() + "Z",
            "note": "Delivered to the front desk, signed by reception.",
        }
        for i in range(count)
    ]


def sized_rows(size: int) -> list[dict]:
    count = 1
    while len(json.dumps(rows(count + 1))) <= size:
        count += 1
    return rows(count)


def with_findings(data: list[dict]) -> list[dict]:
    data = [dict(row) for row in data]
    step = max(1, len(data) // len(FINDINGS))
    for n, finding in enumerate(FINDINGS):
        data[min(n * step, len(data) - 1)]["note"] = finding
    return data


def result(data: list[dict], structured: bool = False) -> dict:
    out: dict = {"content": [{"type": "text", "text": json.dumps(data)}], "isError": False}
    if structured:
        out["structuredContent"] = {"rows": data}
    return out


def per_call_us(redactor: Redactor, value: object, repeat: int) -> float:
    timer = timeit.Timer(lambda: redactor.redact(value))
    number, _ = timer.autorange()
    return round(min(timer.repeat(repeat, number)) / number * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    redactor = Redactor()
    small, large = sized_rows(2048), sized_rows(200 * 1024)
    cases = {
        "clean_2kb": result(small),
        "clean_2kb_structured": result(small, structured=True),
        "findings_5": result(with_findings(small)),
        "clean_200kb": result(large),
        "findings_200kb": result(with_findings(large)),
    }
    report: dict = {"python": platform.python_version(), "machine": platform.machine(), "unit": "us_per_call"}
    for name, value in cases.items():
        redacted, counts = redactor.redact(value)
        report[name] = {
            "text_bytes": len(value["content"][0]["text"]),
            "us": per_call_us(redactor, value, args.repeat),
            "redactions": dict(counts),
        }
        if name.startswith("clean"):
            assert redacted is value and not counts, f"{name}: unexpected findings {counts}"
        else:
            assert sum(counts.values()) == len(FINDINGS), f"{name}: expected {len(FINDINGS)} findings, got {counts}"
    # A machine-independent yardstick: parsing the same 2 KB JSON text with the C json module.
    text = cases["clean_2kb"]["content"][0]["text"]
    timer = timeit.Timer(lambda: json.loads(text))
    number, _ = timer.autorange()
    report["reference_json_loads_2kb_us"] = round(min(timer.repeat(args.repeat, number)) / number * 1e6, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
