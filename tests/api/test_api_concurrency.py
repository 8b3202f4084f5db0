"""32 clients randomize 1,000 participants at once through the real server: no slot used twice,
none skipped, every completed block exactly balanced, every retry answered with the same kit."""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, defaultdict

import httpx
from apidata import add_eligible
from apiserver import Server
from sqlalchemy import select

from immunostrat.trial.audit import verify_chain
from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.models import Allocation, Kit, Stratum

CLIENTS = 32
PARTICIPANTS = 1000


def test_32_clients_randomize_1000_participants(server: Server) -> None:
    trial = server.new_trial(
        f"CONC-{server.kind}",
        slots_per_stratum=400,
        ratios={"mals": {"immunotherapy": 2, "placebo": 1}},
    )
    strata = [("S1", "mals"), ("S1", "immunoparalysis"), ("S2", "mals"), ("S2", "immunoparalysis")]
    plan = [strata[i % 4] if i % 7 else ("S1", "immunoparalysis") for i in range(PARTICIPANTS)]
    ids = add_eligible(server.db_url, trial["id"], plan)
    work: queue.Queue[int] = queue.Queue()
    for pid in ids:
        work.put(pid)
    token = server.token("investigator")
    kits: dict[int, str] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as c:
            while True:
                try:
                    pid = work.get_nowait()
                except queue.Empty:
                    return
                url = f"/trials/{trial['id']}/participants/{pid}/randomize"
                r = c.post(url, headers={"Idempotency-Key": f"rand-{pid}"})
                if r.status_code != 201 or "arm" in r.json():
                    with lock:
                        errors.append(f"{pid}: {r.status_code} {r.text[:200]}")
                    continue
                with lock:
                    kits[pid] = r.json()["kit_number"]

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    print(f"\n{server.kind}: {PARTICIPANTS} randomizations by {CLIENTS} clients in {elapsed:.1f} s")
    assert errors == []
    assert len(kits) == PARTICIPANTS and len(set(kits.values())) == PARTICIPANTS

    # a retry with the same key returns the same kit
    with server.client("investigator") as c:
        for pid in ids[:5]:
            r = c.post(
                f"/trials/{trial['id']}/participants/{pid}/randomize",
                headers={"Idempotency-Key": f"rand-{pid}"},
            )
            assert (r.status_code, r.json()["kit_number"], r.json()["replayed"]) == (200, kits[pid], True)

    with transaction(get_engine(server.db_url)) as s:
        allocations = list(s.scalars(select(Allocation).where(Allocation.trial_id == trial["id"])))
        assert len(allocations) == PARTICIPANTS
        assert sorted(a.sequence for a in allocations) == list(range(1, PARTICIPANTS + 1))
        assert len({a.kit_id for a in allocations}) == PARTICIPANTS
        by_kit = {a.kit_id: a for a in allocations}
        for stratum in s.scalars(select(Stratum).where(Stratum.trial_id == trial["id"])):
            slots = list(s.scalars(select(Kit).where(Kit.stratum_id == stratum.id).order_by(Kit.seq)))
            used = [k for k in slots if k.used]
            # none skipped: exactly the first next_seq - 1 slots are used, each by one allocation
            assert [k.seq for k in used] == list(range(1, stratum.next_seq))
            assert all(k.id in by_kit and by_kit[k.id].arm == k.arm for k in used)
            assert not any(k.id in by_kit for k in slots if not k.used)
            blocks: dict[int, list[Kit]] = defaultdict(list)
            for k in slots:
                blocks[k.block_no].append(k)
            unit = sum(stratum.ratio.values())
            for block in blocks.values():
                if all(k.used for k in block):  # completed block: exact ratio
                    m = len(block) // unit
                    assert Counter(k.arm for k in block) == Counter(
                        {a: w * m for a, w in stratum.ratio.items()}
                    )
        per_stratum = Counter(a.stratum_id for a in allocations)
        assert sorted(per_stratum.values()) == sorted(Counter(plan).values())
        assert verify_chain(s).ok
