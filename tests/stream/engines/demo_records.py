"""Records in the demo company's shapes (browse log lines, playback and members CDC, game logs),
drawn from a seeded generator with repeats, so the same keys are updated again and again."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from typing import Any

_DAY_US = 86_400_000_000
#: The records start yesterday at midnight UTC: recent enough that no write has outlived its
#: retention on arrival (an expired write is a dead letter), the same all day long.
START = (time.time_ns() // 1000 // _DAY_US - 1) * _DAY_US


def _iso(us: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).isoformat()


def _cdc(table: str, row: dict[str, Any], op: str, ts_us: int) -> dict[str, Any]:
    images = {"before": row, "after": None} if op == "d" else {"before": None, "after": row}
    source = {"connector": "postgresql", "table": table, "ts_us": ts_us, "ts_ms": ts_us // 1000}
    return {**images, "op": op, "source": source, "ts_ms": ts_us // 1000}


def demo_records(n: int, seed: int = 7, accounts: int = 200) -> dict[str, list[bytes]]:
    """``n`` records in all, by source name (``browse``, ``playback``, ``members``, ``games``)."""
    rng = random.Random(seed)
    out: dict[str, list[bytes]] = {"browse": [], "playback": [], "members": [], "games": []}
    for i in range(n):
        ts = START + i * 1000 + rng.randrange(1000)
        a = rng.randrange(accounts)
        profile = f"{a}-{rng.randrange(3)}"
        device = f"{a}-{rng.randrange(2)}"
        title = str(rng.randrange(300))
        kind = rng.random()
        if kind < 0.4:
            items = [{"type": "title", "id": str(rng.randrange(300))} for _ in range(3)]
            doc: dict[str, Any] = {
                "ts": _iso(ts),
                "method": "GET",
                "path": "/v1/browse",
                "status": 200,
                "request": {
                    "account_id": str(a),
                    "profile_id": profile,
                    "device_id": device,
                    "ip_country": rng.choice(["US", "FR", "BR"]),
                    "page": "home",
                    "row": rng.choice(["trending", "continue"]),
                },
                "response": {"items": items},
            }
            out["browse"].append(json.dumps(doc).encode())
        elif kind < 0.75:
            row = {
                "id": f"{profile}/{title}",
                "profile_id": profile,
                "title_id": title,
                "device_id": device,
                "position_s": rng.randrange(7200),
                "bitrate_kbps": rng.choice([800, 3000, 8000]),
                "updated_at": ts,
            }
            out["playback"].append(json.dumps(_cdc("playback", row, "u", ts)).encode())
        elif kind < 0.9:
            row = {
                "profile_id": profile,
                "account_id": str(a),
                "name": f"p{profile}",
                "kids": profile.endswith("-2"),
                "language": rng.choice(["en", "fr"]),
            }
            out["members"].append(json.dumps(_cdc("profiles", row, "u", ts)).encode())
        else:
            doc = {
                "event": "game_session_end",
                "ts_ms": ts // 1000,
                "profile_id": profile,
                "game_id": str(rng.randrange(40)),
                "device_id": device,
                "minutes": rng.randrange(1, 90),
            }
            out["games"].append(json.dumps(doc).encode())
    return out


def graph_dump(graph: Any) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every key and value of the graph's namespaces in an LMDB store (nodes, edges, their
    properties and indexes), to compare two stores exactly; checkpoints and dead letters are
    left out."""
    kv = graph.store.kv
    dump: dict[str, list[tuple[bytes, bytes]]] = {}
    for ns in kv.namespaces():
        if ns.startswith("dl."):
            continue
        db = kv._open_db(ns, create=False)
        with kv._env.begin(db=db) as txn:
            dump[ns] = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    return dump
